/*
 * Astro Agent Edge (AAE) -- stand-in for a header that the apache-tvm wheel does not ship.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Written for AAE from what the including TVM runtime sources need (Tensor::Save/Load,
 * VMExecutable and WebGPU module (de)serialisation, the RPC event handler).
 *
 * `tvm::support::Stream` is an abstract byte stream with two virtual primitives
 * (`Read(void*, size_t)` / `Write(const void*, size_t)`, both returning the number of bytes
 * moved) and typed helpers on top: `Read(T*)`, `Write(const T&)`, `ReadArray`, `WriteArray`.
 * The typed helpers dispatch to `tvm::support::Serializer<T>` (see serializer.h), which fixes the
 * wire format. That format must be byte-identical to what the Python-side TVM (libtvm.so) writes
 * when it exports a model, because this runtime reads those bytes back in the browser.
 */
#ifndef AAE_TVM_SUPPORT_IO_H_
#define AAE_TVM_SUPPORT_IO_H_

#include <tvm/ffi/endian.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace tvm {
namespace support {

// Primary template declared here, defined in serializer.h (included at the end of this file).
template <typename T>
struct Serializer;

/*! \brief Abstract binary stream. */
class Stream {
 public:
  virtual ~Stream() = default;

  /*!
   * \brief Read up to `size` bytes into `ptr`.
   * \return The number of bytes actually read (less than `size` at end of stream).
   */
  virtual size_t Read(void* ptr, size_t size) = 0;

  /*!
   * \brief Write `size` bytes from `ptr`.
   * \return The number of bytes written.
   */
  virtual size_t Write(const void* ptr, size_t size) = 0;

  /*! \brief Read one value in the serialised format. \return false on a short/invalid read. */
  template <typename T>
  bool Read(T* out) {
    return Serializer<T>::Read(this, out);
  }

  /*! \brief Write one value in the serialised format. */
  template <typename T>
  void Write(const T& value) {
    Serializer<T>::Write(this, value);
  }

  /*!
   * \brief Read `num` consecutive values (no length prefix).
   * \return false when the stream ends early.
   */
  template <typename T>
  bool ReadArray(T* data, size_t num) {
    if (num == 0) return true;
    if constexpr (kIsRawBlock<T>) {
      // One block read is both faster and what the writer produced.
      return Read(static_cast<void*>(data), sizeof(T) * num) == sizeof(T) * num;
    } else {
      for (size_t i = 0; i < num; ++i) {
        if (!Serializer<T>::Read(this, data + i)) return false;
      }
      return true;
    }
  }

  /*! \brief Write `num` consecutive values (no length prefix). */
  template <typename T>
  void WriteArray(const T* data, size_t num) {
    if (num == 0) return;
    if constexpr (kIsRawBlock<T>) {
      Write(static_cast<const void*>(data), sizeof(T) * num);
    } else {
      for (size_t i = 0; i < num; ++i) Serializer<T>::Write(this, data[i]);
    }
  }

 private:
  // Arrays of arithmetic values can move as one memcpy when the host byte order already is the
  // little-endian wire order; otherwise each element goes through its byte-swapping serializer.
  template <typename T>
  static constexpr bool kIsRawBlock =
      (std::is_arithmetic<T>::value || std::is_enum<T>::value) && TVM_FFI_IO_NO_ENDIAN_SWAP;
};

}  // namespace support
}  // namespace tvm

// Serializer specialisations must be visible wherever Stream's templates are instantiated.
#include <tvm/support/serializer.h>

#endif  // AAE_TVM_SUPPORT_IO_H_
