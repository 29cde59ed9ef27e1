/*
 * Astro Agent Edge (AAE) -- stand-in for a header that the apache-tvm wheel does not ship.
 * SPDX-License-Identifier: Apache-2.0
 *
 * In-memory streams used to (de)serialise runtime modules:
 *   - BytesInStream reads from a byte buffer it does NOT own (a std::string, ffi::Bytes or raw
 *     pointer); the caller keeps the buffer alive while the stream is used, which is how every
 *     call site in the TVM runtime uses it (a local stream over a function argument).
 *   - BytesOutStream appends to a std::string it does not own.
 */
#ifndef AAE_TVM_SRC_SUPPORT_BYTES_IO_H_
#define AAE_TVM_SRC_SUPPORT_BYTES_IO_H_

#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <algorithm>
#include <cstring>
#include <string>

namespace tvm {
namespace support {

/*! \brief Read-only stream over a borrowed byte buffer. */
class BytesInStream : public Stream {
 public:
  BytesInStream(const void* data, size_t size)
      : data_(static_cast<const char*>(data)), size_(size) {}
  explicit BytesInStream(const std::string& bytes) : BytesInStream(bytes.data(), bytes.size()) {}
  explicit BytesInStream(const ffi::Bytes& bytes) : BytesInStream(bytes.data(), bytes.size()) {}
  explicit BytesInStream(const ffi::String& bytes) : BytesInStream(bytes.data(), bytes.size()) {}

  using Stream::Read;
  using Stream::Write;

  size_t Read(void* ptr, size_t size) final {
    const size_t n = std::min(size, size_ - pos_);
    if (n != 0) std::memcpy(ptr, data_ + pos_, n);
    pos_ += n;
    return n;
  }

  size_t Write(const void* /*ptr*/, size_t /*size*/) final {
    TVM_FFI_THROW(InternalError) << "BytesInStream is read-only";
    return 0;
  }

  /*! \brief Current read offset. */
  size_t Tell() const { return pos_; }
  /*! \brief Move the read offset (clamped to the end of the buffer). */
  void Seek(size_t pos) { pos_ = std::min(pos, size_); }
  /*! \brief Whether every byte has been consumed. */
  bool AtEnd() const { return pos_ == size_; }

 private:
  const char* data_;
  size_t size_;
  size_t pos_{0};
};

/*! \brief Append-only stream into a borrowed std::string. */
class BytesOutStream : public Stream {
 public:
  explicit BytesOutStream(std::string* out) : out_(out) {}

  using Stream::Read;
  using Stream::Write;

  size_t Write(const void* ptr, size_t size) final {
    out_->append(static_cast<const char*>(ptr), size);
    return size;
  }

  size_t Read(void* /*ptr*/, size_t /*size*/) final {
    TVM_FFI_THROW(InternalError) << "BytesOutStream is write-only";
    return 0;
  }

 private:
  std::string* out_;
};

}  // namespace support
}  // namespace tvm

#endif  // AAE_TVM_SRC_SUPPORT_BYTES_IO_H_
