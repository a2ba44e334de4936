/*
 * webrt: binary stream interface used by TVM's runtime sources (support::Stream).
 *
 * Written for webrt from the call sites in tvm/src/runtime and tvm/web/emcc.
 * A Stream moves raw bytes (the two virtual functions) and typed values; the typed
 * helpers encode through support::Serializer<T> (see serializer.h).
 */
#ifndef WEBRT_TVM_SUPPORT_IO_H_
#define WEBRT_TVM_SUPPORT_IO_H_

#include <cstddef>
#include <cstdint>

namespace tvm {
namespace support {

template <typename T>
struct Serializer;

class Stream;

namespace detail {
template <typename T>
void WriteSeq(Stream* strm, const T* data, size_t count);
template <typename T>
bool ReadSeq(Stream* strm, T* data, size_t count);
}  // namespace detail

/*! \brief A byte stream with typed, serializer-backed helpers. */
class Stream {
 public:
  virtual ~Stream() = default;
  /*! \brief Read up to `size` bytes into `ptr`; return the number of bytes read. */
  virtual size_t Read(void* ptr, size_t size) = 0;
  /*! \brief Write `size` bytes from `ptr`; return the number of bytes written. */
  virtual size_t Write(const void* ptr, size_t size) = 0;

  /*! \brief Write one value through its Serializer. */
  template <typename T>
  void Write(const T& value) {
    Serializer<T>::Write(this, value);
  }
  /*! \brief Read one value through its Serializer; false when the stream ran short. */
  template <typename T>
  bool Read(T* out) {
    return Serializer<T>::Read(this, out);
  }
  /*! \brief Write `count` values one after another (no length prefix). */
  template <typename T>
  void WriteArray(const T* data, size_t count) {
    detail::WriteSeq<T>(this, data, count);
  }
  /*! \brief Read `count` values written by WriteArray; false when the stream ran short. */
  template <typename T>
  bool ReadArray(T* data, size_t count) {
    return detail::ReadSeq<T>(this, data, count);
  }
};

}  // namespace support
}  // namespace tvm

#include <tvm/support/serializer.h>

#endif  // WEBRT_TVM_SUPPORT_IO_H_
