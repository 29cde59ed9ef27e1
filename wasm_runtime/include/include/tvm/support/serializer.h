/*
 * Astro Agent Edge (AAE) -- stand-in for a header that the apache-tvm wheel does not ship.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Written for AAE from what the including TVM runtime sources need, and checked byte for byte
 * against blobs that apache-tvm 0.27's libtvm.so writes (VMExecutable, WebGPU module).
 *
 * `tvm::support::Serializer<T>` defines the binary wire format used by `Stream::Read/Write`:
 *   - arithmetic and enum values: their bytes, little-endian (swapped on big-endian hosts);
 *   - other trivially copyable structs: their raw bytes;
 *   - DLDataType / DLDevice: field by field (same bytes as raw on little-endian hosts);
 *   - strings (std::string, ffi::String): uint64 length, then the characters;
 *   - sequences (std::vector, ffi::Array): uint64 count, then each element;
 *   - maps (std::map, std::unordered_map, ffi::Map): uint64 count, then key, value pairs;
 *   - std::pair: first, then second.
 * Every specialisation has `static constexpr bool enabled`, `Write(Stream*, const T&)` and
 * `bool Read(Stream*, T*)` (false on a short read), the shape TVM's own specialisations
 * (e.g. for FunctionInfo and VMFuncInfo) follow.
 */
#ifndef AAE_TVM_SUPPORT_SERIALIZER_H_
#define AAE_TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/dtype.h>  // TypeTraits<DLDataType>, so ffi::Array<DLDataType> works
#include <tvm/ffi/endian.h>
#include <tvm/ffi/string.h>
#include <tvm/support/io.h>

#include <cstdint>
#include <map>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tvm {
namespace support {

/*!
 * \brief Fallback: values written as their raw bytes.
 * Arithmetic and enum values are byte-swapped when the host is big-endian so the wire stays
 * little-endian. Anything that is not trivially copyable needs its own specialisation.
 */
template <typename T>
struct Serializer {
  static constexpr bool enabled = std::is_trivially_copyable<T>::value;
  static constexpr bool kSwap =
      !TVM_FFI_IO_NO_ENDIAN_SWAP && (std::is_arithmetic<T>::value || std::is_enum<T>::value);

  static void Write(Stream* strm, const T& value) {
    static_assert(enabled, "tvm::support::Serializer<T>: T needs a specialisation");
    if constexpr (kSwap) {
      T copy = value;
      ffi::ByteSwap(&copy, sizeof(T), 1);
      strm->Write(static_cast<const void*>(&copy), sizeof(T));
    } else {
      strm->Write(static_cast<const void*>(&value), sizeof(T));
    }
  }

  static bool Read(Stream* strm, T* out) {
    static_assert(enabled, "tvm::support::Serializer<T>: T needs a specialisation");
    if (strm->Read(static_cast<void*>(out), sizeof(T)) != sizeof(T)) return false;
    if constexpr (kSwap) ffi::ByteSwap(out, sizeof(T), 1);
    return true;
  }
};

/*! \brief DLDataType as code (u8), bits (u8), lanes (u16). */
template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDataType& v) {
    strm->Write(v.code);
    strm->Write(v.bits);
    strm->Write(v.lanes);
  }
  static bool Read(Stream* strm, DLDataType* v) {
    return strm->Read(&v->code) && strm->Read(&v->bits) && strm->Read(&v->lanes);
  }
};

/*! \brief DLDevice as device_type (i32), device_id (i32). */
template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDevice& v) {
    strm->Write(static_cast<int32_t>(v.device_type));
    strm->Write(static_cast<int32_t>(v.device_id));
  }
  static bool Read(Stream* strm, DLDevice* v) {
    int32_t type = 0, id = 0;
    if (!strm->Read(&type) || !strm->Read(&id)) return false;
    v->device_type = static_cast<DLDeviceType>(type);
    v->device_id = id;
    return true;
  }
};

namespace detail {

/*! \brief Write a uint64 length then the characters of a string-like value. */
inline void WriteChars(Stream* strm, const char* data, size_t size) {
  strm->Write(static_cast<uint64_t>(size));
  if (size != 0) strm->Write(static_cast<const void*>(data), size);
}

/*! \brief Read a uint64-length-prefixed string. */
inline bool ReadChars(Stream* strm, std::string* out) {
  uint64_t size = 0;
  if (!strm->Read(&size)) return false;
  out->resize(static_cast<size_t>(size));
  if (size == 0) return true;
  return strm->Read(static_cast<void*>(&(*out)[0]), static_cast<size_t>(size)) == size;
}

}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::string& v) {
    detail::WriteChars(strm, v.data(), v.size());
  }
  static bool Read(Stream* strm, std::string* v) { return detail::ReadChars(strm, v); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::String& v) {
    detail::WriteChars(strm, v.data(), v.size());
  }
  static bool Read(Stream* strm, ffi::String* v) {
    std::string tmp;
    if (!detail::ReadChars(strm, &tmp)) return false;
    *v = ffi::String(std::move(tmp));
    return true;
  }
};

template <typename T, typename Alloc>
struct Serializer<std::vector<T, Alloc>> {
  static constexpr bool enabled = Serializer<T>::enabled;
  static void Write(Stream* strm, const std::vector<T, Alloc>& v) {
    strm->Write(static_cast<uint64_t>(v.size()));
    strm->WriteArray(v.data(), v.size());
  }
  static bool Read(Stream* strm, std::vector<T, Alloc>* v) {
    uint64_t size = 0;
    if (!strm->Read(&size)) return false;
    v->resize(static_cast<size_t>(size));
    return strm->ReadArray(v->data(), v->size());
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = Serializer<A>::enabled && Serializer<B>::enabled;
  static void Write(Stream* strm, const std::pair<A, B>& v) {
    strm->Write(v.first);
    strm->Write(v.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* v) {
    return strm->Read(&v->first) && strm->Read(&v->second);
  }
};

namespace detail {

/*! \brief Shared implementation for associative containers: count, then key/value pairs. */
template <typename MapT>
struct StdMapSerializer {
  using K = typename MapT::key_type;
  using V = typename MapT::mapped_type;
  static constexpr bool enabled = Serializer<K>::enabled && Serializer<V>::enabled;
  static void Write(Stream* strm, const MapT& m) {
    strm->Write(static_cast<uint64_t>(m.size()));
    for (const auto& kv : m) {
      strm->Write(kv.first);
      strm->Write(kv.second);
    }
  }
  static bool Read(Stream* strm, MapT* m) {
    uint64_t size = 0;
    if (!strm->Read(&size)) return false;
    m->clear();
    for (uint64_t i = 0; i < size; ++i) {
      K key;
      V value;
      if (!strm->Read(&key) || !strm->Read(&value)) return false;
      (*m)[std::move(key)] = std::move(value);
    }
    return true;
  }
};

}  // namespace detail

template <typename K, typename V, typename Cmp, typename Alloc>
struct Serializer<std::map<K, V, Cmp, Alloc>>
    : detail::StdMapSerializer<std::map<K, V, Cmp, Alloc>> {};

template <typename K, typename V, typename Hash, typename Eq, typename Alloc>
struct Serializer<std::unordered_map<K, V, Hash, Eq, Alloc>>
    : detail::StdMapSerializer<std::unordered_map<K, V, Hash, Eq, Alloc>> {};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = Serializer<T>::enabled;
  static void Write(Stream* strm, const ffi::Array<T>& v) {
    strm->Write(static_cast<uint64_t>(v.size()));
    for (const T& item : v) strm->Write(item);
  }
  static bool Read(Stream* strm, ffi::Array<T>* v) {
    uint64_t size = 0;
    if (!strm->Read(&size)) return false;
    ffi::Array<T> result;
    result.reserve(static_cast<int64_t>(size));
    for (uint64_t i = 0; i < size; ++i) {
      T item;
      if (!strm->Read(&item)) return false;
      result.push_back(std::move(item));
    }
    *v = std::move(result);
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = Serializer<K>::enabled && Serializer<V>::enabled;
  static void Write(Stream* strm, const ffi::Map<K, V>& m) {
    strm->Write(static_cast<uint64_t>(m.size()));
    for (const auto& kv : m) {
      strm->Write(kv.first);
      strm->Write(kv.second);
    }
  }
  static bool Read(Stream* strm, ffi::Map<K, V>* m) {
    uint64_t size = 0;
    if (!strm->Read(&size)) return false;
    ffi::Map<K, V> result;
    for (uint64_t i = 0; i < size; ++i) {
      K key;
      V value;
      if (!strm->Read(&key) || !strm->Read(&value)) return false;
      result.Set(std::move(key), std::move(value));
    }
    *m = std::move(result);
    return true;
  }
};

}  // namespace support
}  // namespace tvm

#endif  // AAE_TVM_SUPPORT_SERIALIZER_H_
