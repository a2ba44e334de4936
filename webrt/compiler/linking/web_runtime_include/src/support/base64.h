/*
 * webrt: base64 support::Stream adapters (Base64OutStream, Base64InStream).
 *
 * Written for webrt from the call sites in tvm/src/runtime/tensor.cc (tensor <-> JSON).
 * Standard alphabet (RFC 4648) with '=' padding; the reader skips ASCII whitespace.
 */
#ifndef WEBRT_TVM_SRC_SUPPORT_BASE64_H_
#define WEBRT_TVM_SRC_SUPPORT_BASE64_H_

#include <tvm/ffi/error.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

namespace base64 {
inline constexpr char kAlphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/*! \brief The 6-bit value of a base64 digit, or -1. */
inline int DigitValue(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

inline bool IsSpace(char c) {
  return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\f' || c == '\v';
}
}  // namespace base64

/*! \brief Encodes everything written as base64 into another stream; call Finish() at the end. */
class Base64OutStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64OutStream(Stream* out) : out_(out) {}

  size_t Write(const void* ptr, size_t size) final {
    const uint8_t* p = static_cast<const uint8_t*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      pending_[npending_++] = p[i];
      if (npending_ == 3) EmitGroup();
    }
    return size;
  }

  size_t Read(void* /*ptr*/, size_t /*size*/) final {
    TVM_FFI_THROW(InternalError) << "Base64OutStream is write-only";
    TVM_FFI_UNREACHABLE();
  }

  /*! \brief Flush the last partial group (with '=' padding) to the underlying stream. */
  void Finish() {
    if (npending_ != 0) EmitGroup();
    Flush();
  }

 private:
  void EmitGroup() {
    uint32_t v = 0;
    for (int i = 0; i < 3; ++i) v = (v << 8) | (i < npending_ ? pending_[i] : 0);
    const int nchars = npending_ + 1;  // 1 byte -> 2 digits, 2 -> 3, 3 -> 4
    for (int i = 0; i < 4; ++i) {
      encoded_ += i < nchars ? base64::kAlphabet[(v >> (18 - 6 * i)) & 63] : '=';
    }
    npending_ = 0;
    if (encoded_.size() >= 4096) Flush();
  }

  void Flush() {
    if (!encoded_.empty()) out_->Write(encoded_.data(), encoded_.size());
    encoded_.clear();
  }

  Stream* out_;
  uint8_t pending_[3] = {0, 0, 0};
  int npending_{0};
  std::string encoded_;
};

/*! \brief Decodes base64 text read from another stream. Call InitPosition() first. */
class Base64InStream : public Stream {
 public:
  using Stream::Read;
  using Stream::Write;

  explicit Base64InStream(Stream* in) : in_(in) {}

  /*! \brief Skip leading whitespace before the encoded text. */
  void InitPosition() {
    int c;
    while ((c = PeekChar()) >= 0 && base64::IsSpace(static_cast<char>(c))) ++chunk_pos_;
  }

  size_t Read(void* ptr, size_t size) final {
    uint8_t* out = static_cast<uint8_t*>(ptr);
    size_t n = 0;
    while (n < size) {
      if (decoded_pos_ == decoded_len_ && !DecodeGroup()) break;
      out[n++] = decoded_[decoded_pos_++];
    }
    return n;
  }

  size_t Write(const void* /*ptr*/, size_t /*size*/) final {
    TVM_FFI_THROW(InternalError) << "Base64InStream is read-only";
    TVM_FFI_UNREACHABLE();
  }

 private:
  /*! \brief The next raw character without consuming it, or -1 at the end. */
  int PeekChar() {
    if (chunk_pos_ == chunk_.size()) {
      chunk_.resize(4096);
      size_t got = in_->Read(&chunk_[0], chunk_.size());
      chunk_.resize(got);
      chunk_pos_ = 0;
      if (got == 0) return -1;
    }
    return static_cast<unsigned char>(chunk_[chunk_pos_]);
  }

  /*! \brief The next non-whitespace character, consumed, or -1 at the end. */
  int NextDigitChar() {
    int c;
    while ((c = PeekChar()) >= 0) {
      ++chunk_pos_;
      if (!base64::IsSpace(static_cast<char>(c))) return c;
    }
    return -1;
  }

  /*! \brief Decode the next 4-character group into decoded_; false at the end of the data. */
  bool DecodeGroup() {
    if (finished_) return false;
    uint32_t v = 0;
    int ndigits = 0;
    for (int i = 0; i < 4; ++i) {
      int c = NextDigitChar();
      int d = c < 0 ? -1 : base64::DigitValue(static_cast<char>(c));
      if (d < 0) {
        TVM_FFI_ICHECK(c < 0 || c == '=') << "invalid base64 character " << c;
        finished_ = true;
        break;
      }
      v = (v << 6) | static_cast<uint32_t>(d);
      ++ndigits;
    }
    if (ndigits < 2) return false;  // "" or a lone digit carries no whole byte
    v <<= 6 * (4 - ndigits);
    decoded_len_ = static_cast<size_t>(ndigits - 1);
    for (size_t i = 0; i < decoded_len_; ++i) decoded_[i] = static_cast<uint8_t>(v >> (16 - 8 * i));
    decoded_pos_ = 0;
    return true;
  }

  Stream* in_;
  std::string chunk_;
  size_t chunk_pos_{0};
  uint8_t decoded_[3] = {0, 0, 0};
  size_t decoded_len_{0};
  size_t decoded_pos_{0};
  bool finished_{false};
};

}  // namespace support
}  // namespace tvm

#endif  // WEBRT_TVM_SRC_SUPPORT_BASE64_H_
