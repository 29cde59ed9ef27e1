/*
 * Astro Agent Edge (AAE) -- stand-in for a header that the apache-tvm wheel does not ship.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Streaming base64 (RFC 4648 standard alphabet, '=' padding) layered over another Stream.
 * TVM uses it to embed tensors in JSON (`__data_to_json__` / `__data_from_json__`):
 *
 *   BytesOutStream raw(&text);  Base64OutStream b64(&raw);  SaveDLTensor(&b64, t);  b64.Finish();
 *   BytesInStream raw(text);    Base64InStream b64(&raw);   b64.InitPosition();     t.Load(&b64);
 *
 * Decoding skips ASCII whitespace between characters and stops at padding or at the first byte
 * that is not part of the alphabet, so text that follows the payload is left unread.
 */
#ifndef AAE_TVM_SRC_SUPPORT_BASE64_H_
#define AAE_TVM_SRC_SUPPORT_BASE64_H_

#include <tvm/ffi/error.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <string>

namespace tvm {
namespace support {
namespace base64 {

inline const char* Alphabet() {
  return "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
}

/*! \return the 6-bit value of an alphabet character, or -1. */
inline int DecodeChar(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

inline bool IsSpace(int c) {
  return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\f' || c == '\v';
}

}  // namespace base64

/*! \brief Decodes base64 text read from an underlying stream. */
class Base64InStream : public Stream {
 public:
  explicit Base64InStream(Stream* in) : in_(in) {}

  using Stream::Read;
  using Stream::Write;

  /*!
   * \brief Skip leading whitespace so the first Read starts on the payload.
   * Must be called once before reading (kept as a separate step to mirror the call sites).
   */
  void InitPosition() {
    int c = NextRawChar();
    while (c != kEnd && base64::IsSpace(c)) c = NextRawChar();
    pushback_ = c;
  }

  /*! \brief Whether the encoded payload is exhausted. */
  bool IsEOF() const { return finished_ && buffered_ == 0; }

  size_t Read(void* ptr, size_t size) final {
    uint8_t* out = static_cast<uint8_t*>(ptr);
    size_t done = 0;
    while (done < size) {
      if (buffered_ == 0 && !DecodeQuantum()) break;
      // Decoded bytes sit right-aligned in buffer_, so the next one is at 3 - buffered_.
      out[done++] = buffer_[3 - buffered_];
      --buffered_;
    }
    return done;
  }

  size_t Write(const void* /*ptr*/, size_t /*size*/) final {
    TVM_FFI_THROW(InternalError) << "Base64InStream is read-only";
    return 0;
  }

 private:
  static constexpr int kEnd = -1;

  int NextRawChar() {
    if (pushback_ != kNone) {
      int c = pushback_;
      pushback_ = kNone;
      return c;
    }
    unsigned char c;
    if (in_->Read(&c, 1) != 1) return kEnd;
    return c;
  }

  /*! \brief Next payload character, skipping whitespace. */
  int NextChar() {
    int c = NextRawChar();
    while (c != kEnd && base64::IsSpace(c)) c = NextRawChar();
    return c;
  }

  /*! \brief Decode up to four characters into up to three bytes. \return false at the end. */
  bool DecodeQuantum() {
    if (finished_) return false;
    uint32_t acc = 0;
    int nchar = 0;
    while (nchar < 4) {
      int c = NextChar();
      int v = c == kEnd ? -1 : base64::DecodeChar(c);
      if (v < 0) {
        // '=' padding, end of input, or a foreign byte: the payload ends here.
        if (c != kEnd && c != '=') pushback_ = c;
        finished_ = true;
        break;
      }
      acc = (acc << 6) | static_cast<uint32_t>(v);
      ++nchar;
    }
    if (nchar < 2) {
      TVM_FFI_ICHECK(nchar == 0) << "Base64InStream: truncated base64 payload";
      return false;
    }
    const int nbytes = nchar - 1;  // 2 chars -> 1 byte, 3 -> 2, 4 -> 3
    acc <<= 6 * (4 - nchar);
    uint8_t bytes[3] = {static_cast<uint8_t>(acc >> 16), static_cast<uint8_t>(acc >> 8),
                        static_cast<uint8_t>(acc)};
    for (int i = 0; i < nbytes; ++i) buffer_[3 - nbytes + i] = bytes[i];
    buffered_ = nbytes;
    return true;
  }

  static constexpr int kNone = -2;
  Stream* in_;
  int pushback_{kNone};
  uint8_t buffer_[3] = {0, 0, 0};
  int buffered_{0};
  bool finished_{false};
};

/*! \brief Encodes bytes as base64 text into an underlying stream; call Finish() at the end. */
class Base64OutStream : public Stream {
 public:
  explicit Base64OutStream(Stream* out) : out_(out) {}

  using Stream::Read;
  using Stream::Write;

  size_t Write(const void* ptr, size_t size) final {
    const uint8_t* data = static_cast<const uint8_t*>(ptr);
    for (size_t i = 0; i < size; ++i) {
      pending_[npending_++] = data[i];
      if (npending_ == 3) EmitQuantum();
    }
    return size;
  }

  size_t Read(void* /*ptr*/, size_t /*size*/) final {
    TVM_FFI_THROW(InternalError) << "Base64OutStream is write-only";
    return 0;
  }

  /*!
   * \brief Flush the last partial group with '=' padding.
   * \param endch Optional character appended after the payload (e.g. '\n'); -1 for none.
   */
  void Finish(int endch = -1) {
    if (npending_ != 0) EmitQuantum();
    if (endch >= 0) {
      char c = static_cast<char>(endch);
      out_->Write(&c, 1);
    }
  }

 private:
  void EmitQuantum() {
    const char* alpha = base64::Alphabet();
    uint32_t acc = static_cast<uint32_t>(pending_[0]) << 16;
    if (npending_ > 1) acc |= static_cast<uint32_t>(pending_[1]) << 8;
    if (npending_ > 2) acc |= static_cast<uint32_t>(pending_[2]);
    char text[4] = {alpha[(acc >> 18) & 63], alpha[(acc >> 12) & 63],
                    npending_ > 1 ? alpha[(acc >> 6) & 63] : '=',
                    npending_ > 2 ? alpha[acc & 63] : '='};
    out_->Write(text, 4);
    npending_ = 0;
  }

  Stream* out_;
  uint8_t pending_[3] = {0, 0, 0};
  int npending_{0};
};

}  // namespace support
}  // namespace tvm

#endif  // AAE_TVM_SRC_SUPPORT_BASE64_H_
