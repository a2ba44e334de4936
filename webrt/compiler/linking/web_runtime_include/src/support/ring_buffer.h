/*
 * webrt: support::RingBuffer, the byte FIFO behind TVM's RPC endpoint.
 *
 * Written for webrt from the call sites in tvm/src/runtime/rpc/rpc_endpoint.{h,cc}.
 */
#ifndef WEBRT_TVM_SRC_SUPPORT_RING_BUFFER_H_
#define WEBRT_TVM_SRC_SUPPORT_RING_BUFFER_H_

#include <tvm/ffi/error.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace tvm {
namespace support {

/*! \brief A growable FIFO of bytes stored in a circular buffer. */
class RingBuffer {
 public:
  RingBuffer() : buf_(kInitialCapacity) {}

  /*! \brief Number of bytes written and not yet read. */
  size_t bytes_available() const { return size_; }

  /*! \brief Make room for at least `n` bytes in total (never shrinks, keeps the contents). */
  void Reserve(size_t n) {
    if (n <= buf_.size()) return;
    std::vector<char> grown(std::max(n, buf_.size() * 2));
    CopyOut(grown.data(), size_);
    buf_.swap(grown);
    head_ = 0;
  }

  /*! \brief Remove `size` bytes (they must be available) and copy them to `data`. */
  void Read(void* data, size_t size) {
    TVM_FFI_ICHECK_LE(size, size_) << "RingBuffer: read past the available bytes";
    CopyOut(static_cast<char*>(data), size);
    Consume(size);
  }

  /*! \brief Append `size` bytes, growing the buffer if needed. */
  void Write(const void* data, size_t size) {
    Reserve(size_ + size);
    const char* src = static_cast<const char*>(data);
    size_t tail = (head_ + size_) % buf_.size();
    size_t first = std::min(size, buf_.size() - tail);
    std::memcpy(buf_.data() + tail, src, first);
    std::memcpy(buf_.data(), src + first, size - first);
    size_ += size;
  }

  /*!
   * \brief Hand up to `max_nbytes` stored bytes to `fsend(const void* data, size_t n) -> size_t`
   *        (contiguous pieces, oldest first) and drop what it reports as taken.
   * \return The number of bytes taken.
   */
  template <typename FSend>
  size_t ReadWithCallback(FSend fsend, size_t max_nbytes) {
    size_t total = 0;
    size_t want = std::min(max_nbytes, size_);
    while (total < want) {
      size_t piece = std::min(want - total, buf_.size() - head_);
      size_t taken = fsend(static_cast<const void*>(buf_.data() + head_), piece);
      TVM_FFI_ICHECK_LE(taken, piece);
      Consume(taken);
      total += taken;
      if (taken < piece) break;
    }
    return total;
  }

  /*!
   * \brief Let `frecv(void* data, size_t n) -> size_t` fill up to `max_nbytes` bytes at the end
   *        of the buffer (one contiguous region) and keep what it reports as written.
   * \return The number of bytes written.
   */
  template <typename FRecv>
  size_t WriteWithCallback(FRecv frecv, size_t max_nbytes) {
    if (max_nbytes == 0) return 0;
    Reserve(size_ + max_nbytes);
    size_t tail = head_ + size_;
    if (tail >= buf_.size()) {
      tail -= buf_.size();  // the free region [tail, head_) is already contiguous
    } else if (buf_.size() - tail < max_nbytes) {
      Linearize();  // move the contents to the front so the free space is one region
      tail = size_;
    }
    size_t got = frecv(static_cast<void*>(buf_.data() + tail), max_nbytes);
    TVM_FFI_ICHECK_LE(got, max_nbytes);
    size_ += got;
    return got;
  }

 private:
  static constexpr size_t kInitialCapacity = 1024;

  /*! \brief Copy the oldest `n` bytes to `dst` without consuming them. */
  void CopyOut(char* dst, size_t n) const {
    size_t first = std::min(n, buf_.size() - head_);
    std::memcpy(dst, buf_.data() + head_, first);
    std::memcpy(dst + first, buf_.data(), n - first);
  }

  void Consume(size_t n) {
    head_ = (head_ + n) % buf_.size();
    size_ -= n;
    if (size_ == 0) head_ = 0;
  }

  void Linearize() {
    std::vector<char> flat(buf_.size());
    CopyOut(flat.data(), size_);
    buf_.swap(flat);
    head_ = 0;
  }

  std::vector<char> buf_;
  size_t head_{0};
  size_t size_{0};
};

}  // namespace support
}  // namespace tvm

#endif  // WEBRT_TVM_SRC_SUPPORT_RING_BUFFER_H_
