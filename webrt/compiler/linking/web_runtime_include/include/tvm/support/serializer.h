/*
 * webrt: support::Serializer<T>, the binary encoding behind support::Stream.
 *
 * Written for webrt from the call sites in tvm/src/runtime and tvm/web/emcc. The layout must
 * match what the TVM compiler writes (the VM executable, the WebGPU shader table, tensors):
 *   - arithmetic and enum values: their bytes, little endian;
 *   - std::string / ffi::String: uint64 length, then the bytes;
 *   - std::vector / ffi::Array: uint64 count, then each element;
 *   - std::map / std::unordered_map / ffi::Map: uint64 count, then key, value, key, value...;
 *   - std::pair: first, then second;
 *   - DLDataType: uint8 code, uint8 bits, uint16 lanes; DLDevice: int32 type, int32 id.
 * Other types get a Serializer specialization next to their definition (TVM does this for
 * runtime::FunctionInfo and vm::VMFuncInfo).
 */
#ifndef WEBRT_TVM_SUPPORT_SERIALIZER_H_
#define WEBRT_TVM_SUPPORT_SERIALIZER_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
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

namespace detail {
/*! \brief Whether T is written as its own bytes (possibly byte-swapped). */
template <typename T>
inline constexpr bool kIsRawScalar = std::is_arithmetic_v<T> || std::is_enum_v<T>;
}  // namespace detail

/*! \brief Arithmetic and enum types: their bytes in little-endian order. */
template <typename T>
struct Serializer {
  static_assert(detail::kIsRawScalar<T>,
                "support::Serializer has no encoding for this type; specialize it");
  static constexpr bool enabled = true;

  static void Write(Stream* strm, const T& value) {
    if constexpr (TVM_FFI_IO_NO_ENDIAN_SWAP) {
      strm->Write(static_cast<const void*>(&value), sizeof(T));
    } else {
      T copy = value;
      ffi::ByteSwap(&copy, sizeof(T), 1);
      strm->Write(static_cast<const void*>(&copy), sizeof(T));
    }
  }

  static bool Read(Stream* strm, T* out) {
    if (strm->Read(static_cast<void*>(out), sizeof(T)) != sizeof(T)) return false;
    if constexpr (!TVM_FFI_IO_NO_ENDIAN_SWAP) ffi::ByteSwap(out, sizeof(T), 1);
    return true;
  }
};

namespace detail {

template <typename T>
void WriteSeq(Stream* strm, const T* data, size_t count) {
  if constexpr (kIsRawScalar<T> && TVM_FFI_IO_NO_ENDIAN_SWAP) {
    if (count != 0) strm->Write(static_cast<const void*>(data), sizeof(T) * count);
  } else {
    for (size_t i = 0; i < count; ++i) Serializer<T>::Write(strm, data[i]);
  }
}

template <typename T>
bool ReadSeq(Stream* strm, T* data, size_t count) {
  if constexpr (kIsRawScalar<T> && TVM_FFI_IO_NO_ENDIAN_SWAP) {
    if (count == 0) return true;
    size_t nbytes = sizeof(T) * count;
    return strm->Read(static_cast<void*>(data), nbytes) == nbytes;
  } else {
    for (size_t i = 0; i < count; ++i) {
      if (!Serializer<T>::Read(strm, data + i)) return false;
    }
    return true;
  }
}

/*! \brief Write a uint64 element count. */
inline void WriteCount(Stream* strm, size_t count) {
  Serializer<uint64_t>::Write(strm, static_cast<uint64_t>(count));
}

/*! \brief Read a uint64 element count. */
inline bool ReadCount(Stream* strm, size_t* count) {
  uint64_t n = 0;
  if (!Serializer<uint64_t>::Read(strm, &n)) return false;
  *count = static_cast<size_t>(n);
  return true;
}

/*! \brief Read a length-prefixed byte string into any resizable char container. */
template <typename S>
bool ReadBytes(Stream* strm, S* out) {
  size_t n = 0;
  if (!ReadCount(strm, &n)) return false;
  out->resize(n);
  return n == 0 || strm->Read(static_cast<void*>(&(*out)[0]), n) == n;
}

/*! \brief Write count + key/value pairs of any map-like range. */
template <typename K, typename V, typename M>
void WriteMap(Stream* strm, const M& map) {
  WriteCount(strm, map.size());
  for (const auto& kv : map) {
    Serializer<K>::Write(strm, kv.first);
    Serializer<V>::Write(strm, kv.second);
  }
}

}  // namespace detail

template <>
struct Serializer<std::string> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::string& s) {
    detail::WriteCount(strm, s.size());
    if (!s.empty()) strm->Write(static_cast<const void*>(s.data()), s.size());
  }
  static bool Read(Stream* strm, std::string* out) { return detail::ReadBytes(strm, out); }
};

template <>
struct Serializer<ffi::String> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::String& s) {
    detail::WriteCount(strm, s.size());
    if (s.size() != 0) strm->Write(static_cast<const void*>(s.data()), s.size());
  }
  static bool Read(Stream* strm, ffi::String* out) {
    std::string tmp;
    if (!detail::ReadBytes(strm, &tmp)) return false;
    *out = ffi::String(std::move(tmp));
    return true;
  }
};

template <typename T, typename A>
struct Serializer<std::vector<T, A>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::vector<T, A>& vec) {
    detail::WriteCount(strm, vec.size());
    detail::WriteSeq<T>(strm, vec.data(), vec.size());
  }
  static bool Read(Stream* strm, std::vector<T, A>* out) {
    size_t n = 0;
    if (!detail::ReadCount(strm, &n)) return false;
    out->resize(n);
    return detail::ReadSeq<T>(strm, out->data(), n);
  }
};

template <typename A, typename B>
struct Serializer<std::pair<A, B>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const std::pair<A, B>& p) {
    Serializer<A>::Write(strm, p.first);
    Serializer<B>::Write(strm, p.second);
  }
  static bool Read(Stream* strm, std::pair<A, B>* out) {
    return Serializer<A>::Read(strm, &out->first) && Serializer<B>::Read(strm, &out->second);
  }
};

namespace detail {
/*! \brief Shared code for std::map and std::unordered_map. */
template <typename M, typename K, typename V>
struct StdMapSerializer {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const M& map) { detail::WriteMap<K, V>(strm, map); }
  static bool Read(Stream* strm, M* out) {
    size_t n = 0;
    if (!detail::ReadCount(strm, &n)) return false;
    out->clear();
    for (size_t i = 0; i < n; ++i) {
      K key;
      V value;
      if (!Serializer<K>::Read(strm, &key) || !Serializer<V>::Read(strm, &value)) return false;
      (*out)[std::move(key)] = std::move(value);
    }
    return true;
  }
};
}  // namespace detail

template <typename K, typename V, typename C, typename A>
struct Serializer<std::map<K, V, C, A>> : detail::StdMapSerializer<std::map<K, V, C, A>, K, V> {};

template <typename K, typename V, typename H, typename E, typename A>
struct Serializer<std::unordered_map<K, V, H, E, A>>
    : detail::StdMapSerializer<std::unordered_map<K, V, H, E, A>, K, V> {};

template <typename T>
struct Serializer<ffi::Array<T>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Array<T>& arr) {
    detail::WriteCount(strm, arr.size());
    for (const T& item : arr) Serializer<T>::Write(strm, item);
  }
  static bool Read(Stream* strm, ffi::Array<T>* out) {
    size_t n = 0;
    if (!detail::ReadCount(strm, &n)) return false;
    ffi::Array<T> arr;
    arr.reserve(static_cast<int64_t>(n));
    for (size_t i = 0; i < n; ++i) {
      T item;
      if (!Serializer<T>::Read(strm, &item)) return false;
      arr.push_back(std::move(item));
    }
    *out = std::move(arr);
    return true;
  }
};

template <typename K, typename V>
struct Serializer<ffi::Map<K, V>> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const ffi::Map<K, V>& map) {
    detail::WriteMap<K, V>(strm, map);
  }
  static bool Read(Stream* strm, ffi::Map<K, V>* out) {
    size_t n = 0;
    if (!detail::ReadCount(strm, &n)) return false;
    ffi::Map<K, V> map;
    for (size_t i = 0; i < n; ++i) {
      K key;
      V value;
      if (!Serializer<K>::Read(strm, &key) || !Serializer<V>::Read(strm, &value)) return false;
      map.Set(std::move(key), std::move(value));
    }
    *out = std::move(map);
    return true;
  }
};

template <>
struct Serializer<DLDataType> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDataType& t) {
    Serializer<uint8_t>::Write(strm, t.code);
    Serializer<uint8_t>::Write(strm, t.bits);
    Serializer<uint16_t>::Write(strm, t.lanes);
  }
  static bool Read(Stream* strm, DLDataType* out) {
    return Serializer<uint8_t>::Read(strm, &out->code) &&
           Serializer<uint8_t>::Read(strm, &out->bits) &&
           Serializer<uint16_t>::Read(strm, &out->lanes);
  }
};

template <>
struct Serializer<DLDevice> {
  static constexpr bool enabled = true;
  static void Write(Stream* strm, const DLDevice& d) {
    Serializer<int32_t>::Write(strm, static_cast<int32_t>(d.device_type));
    Serializer<int32_t>::Write(strm, d.device_id);
  }
  static bool Read(Stream* strm, DLDevice* out) {
    int32_t type = 0;
    if (!Serializer<int32_t>::Read(strm, &type)) return false;
    out->device_type = static_cast<DLDeviceType>(type);
    return Serializer<int32_t>::Read(strm, &out->device_id);
  }
};

}  // namespace support
}  // namespace tvm

#endif  // WEBRT_TVM_SUPPORT_SERIALIZER_H_
