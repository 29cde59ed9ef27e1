/*
 * Astro Agent Edge (AAE) -- stand-in for a header that the apache-tvm wheel does not ship.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Small string and hashing helpers the TVM runtime sources call as `support::...`:
 * StartsWith (RPC error mapping), IsNumber (thread pool CPU lists), HashCombine (CUDA graph
 * cache keys), plus the obvious neighbours (EndsWith, Split, Strip) for our own code.
 */
#ifndef AAE_TVM_SRC_SUPPORT_UTILS_H_
#define AAE_TVM_SRC_SUPPORT_UTILS_H_

#include <cctype>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tvm {
namespace support {

/*! \return whether `str` begins with `prefix`. */
inline bool StartsWith(const std::string& str, const std::string& prefix) {
  return str.size() >= prefix.size() && str.compare(0, prefix.size(), prefix) == 0;
}

/*! \return whether `str` ends with `suffix`. */
inline bool EndsWith(const std::string& str, const std::string& suffix) {
  return str.size() >= suffix.size() &&
         str.compare(str.size() - suffix.size(), suffix.size(), suffix) == 0;
}

/*! \return whether `str` is a non-empty run of decimal digits. */
inline bool IsNumber(const std::string& str) {
  if (str.empty()) return false;
  for (char c : str) {
    if (!std::isdigit(static_cast<unsigned char>(c))) return false;
  }
  return true;
}

/*! \brief Split on every occurrence of `delim` (empty fields are kept). */
inline std::vector<std::string> Split(const std::string& str, char delim) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t pos = str.find(delim, start);
    if (pos == std::string::npos) {
      parts.push_back(str.substr(start));
      return parts;
    }
    parts.push_back(str.substr(start, pos - start));
    start = pos + 1;
  }
}

/*! \return `str` without leading and trailing ASCII whitespace. */
inline std::string Strip(const std::string& str) {
  size_t begin = 0, end = str.size();
  while (begin < end && std::isspace(static_cast<unsigned char>(str[begin]))) ++begin;
  while (end > begin && std::isspace(static_cast<unsigned char>(str[end - 1]))) --end;
  return str.substr(begin, end - begin);
}

/*!
 * \brief Mix `value` into the running hash `seed` (in place) and return the new seed.
 * Uses the 64-bit golden-ratio constant plus shifts so that equal values at different
 * positions of a sequence produce different hashes.
 */
inline size_t HashCombine(size_t& seed, size_t value) {
  seed ^= value + static_cast<size_t>(0x9e3779b97f4a7c15ULL) + (seed << 6) + (seed >> 2);
  return seed;
}

}  // namespace support
}  // namespace tvm

#endif  // AAE_TVM_SRC_SUPPORT_UTILS_H_
