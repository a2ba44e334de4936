/*
 * webrt: in-memory support::Stream implementations (BytesInStream, BytesOutStream).
 *
 * Written for webrt from the call sites in tvm/src/runtime and tvm/web/emcc.
 */
#ifndef WEBRT_TVM_SRC_SUPPORT_BYTES_IO_H_
#define WEBRT_TVM_SRC_SUPPORT_BYTES_IO_H_

#include <tvm/ffi/error.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

/*!
 * \brief Reads from a byte buffer the caller keeps alive (a std::string) or that the stream
 *        holds a reference to (an ffi::Bytes).
 */
class BytesInStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit BytesInStream(const std::string& buffer)
      : data_(buffer.data()), size_(buffer.size()) {}
  explicit BytesInStream(const ffi::Bytes& buffer)
      : keep_alive_(buffer), data_(keep_alive_.data()), size_(keep_alive_.size()) {}
  BytesInStream(const void* data, size_t size)
      : data_(static_cast<const char*>(data)), size_(size) {}

  size_t Read(void* ptr, size_t size) final {
    size_t n = std::min(size, size_ - pos_);
    if (n != 0) std::memcpy(ptr, data_ + pos_, n);
    pos_ += n;
    return n;
  }

  size_t Write(const void* /*ptr*/, size_t /*size*/) final {
    TVM_FFI_THROW(InternalError) << "BytesInStream is read-only";
    TVM_FFI_UNREACHABLE();
  }

  /*! \brief Move the read position to `pos` (clamped to the end). */
  void Seek(size_t pos) { pos_ = std::min(pos, size_); }
  /*! \brief The current read position. */
  size_t Tell() const { return pos_; }

 private:
  ffi::Bytes keep_alive_;
  const char* data_;
  size_t size_;
  size_t pos_{0};
};

/*! \brief Appends everything written to a std::string owned by the caller. */
class BytesOutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit BytesOutStream(std::string* out) : out_(out) {}

  size_t Write(const void* ptr, size_t size) final {
    out_->append(static_cast<const char*>(ptr), size);
    return size;
  }

  size_t Read(void* /*ptr*/, size_t /*size*/) final {
    TVM_FFI_THROW(InternalError) << "BytesOutStream is write-only";
    TVM_FFI_UNREACHABLE();
  }

 private:
  std::string* out_;
};

}  // namespace support
}  // namespace tvm

#endif  // WEBRT_TVM_SRC_SUPPORT_BYTES_IO_H_
