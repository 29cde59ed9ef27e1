/*
 * Astro Agent Edge (AAE) -- stand-in for a header that the apache-tvm wheel does not ship.
 * SPDX-License-Identifier: Apache-2.0
 *
 * Written for AAE from what the including TVM sources need; not derived from compiler-rt.
 *
 * TVM's runtime sources include this header for two reasons:
 *   - src/runtime/extra/contrib/sort/sort.cc only needs it to exist (it uses clang's native
 *     `__fp16` storage type, whose conversions the toolchain's own compiler-rt provides);
 *   - src/runtime/builtin_fp16.cc and contrib/random instantiate the two conversion templates
 *     below as `__truncXfYf2__<SrcT, SrcRepT, SrcSigBits, DstT, DstRepT, DstSigBits>(x)` and
 *     `__extendXfYf2__<...>(x)` to convert between IEEE-754 binary formats.
 *
 * Both names map onto one generic converter: it decodes the source bit pattern into
 * (sign, exponent, significand), then re-encodes it in the destination format with
 * round-to-nearest-even, producing subnormals, infinities and quiet NaNs as IEEE-754 requires.
 * The reserved-looking names are kept because that is the API the TVM sources call.
 */
#ifndef AAE_WASM_RUNTIME_BUILTIN_FP16_H_
#define AAE_WASM_RUNTIME_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace aae_fp_detail {

/*! \brief Layout of an IEEE-754 binary format whose bit pattern is stored in RepT. */
template <typename RepT, int SigBits>
struct IeeeFormat {
  static_assert(std::is_unsigned<RepT>::value, "bit representation must be unsigned");
  static constexpr int kTotalBits = static_cast<int>(sizeof(RepT) * 8);
  static constexpr int kSigBits = SigBits;
  static constexpr int kExpBits = kTotalBits - SigBits - 1;
  static constexpr int kExpMax = (1 << kExpBits) - 1;  // all-ones exponent: Inf/NaN
  static constexpr int kBias = (1 << (kExpBits - 1)) - 1;
  static constexpr uint64_t kSigMask = (uint64_t{1} << SigBits) - 1;
};

/*! \brief Shift right by `shift` bits, rounding to nearest, ties to even. */
inline uint64_t ShiftRightRoundEven(uint64_t value, int shift) {
  if (shift <= 0) return value << (-shift);
  if (shift >= 64) return 0;  // every bit is below half of the last kept bit
  const uint64_t kept = value >> shift;
  const uint64_t rest = value & ((uint64_t{1} << shift) - 1);
  const uint64_t half = uint64_t{1} << (shift - 1);
  if (rest > half || (rest == half && (kept & 1))) return kept + 1;
  return kept;
}

/*! \brief Convert the bit pattern `src` of format Src into the bit pattern of format Dst. */
template <typename SrcRep, int SrcSig, typename DstRep, int DstSig>
inline DstRep ConvertBits(SrcRep src) {
  using S = IeeeFormat<SrcRep, SrcSig>;
  using D = IeeeFormat<DstRep, DstSig>;
  static_assert(S::kSigBits < 63 && D::kSigBits < 63, "significand too wide");

  const uint64_t bits = static_cast<uint64_t>(src);
  const uint64_t dst_sign = ((bits >> (S::kTotalBits - 1)) & 1) << (D::kTotalBits - 1);
  const int exp_field = static_cast<int>((bits >> S::kSigBits) & static_cast<uint64_t>(S::kExpMax));
  uint64_t sig = bits & S::kSigMask;
  const uint64_t dst_inf = static_cast<uint64_t>(D::kExpMax) << D::kSigBits;

  if (exp_field == S::kExpMax) {
    if (sig == 0) return static_cast<DstRep>(dst_sign | dst_inf);
    // NaN: keep the top payload bits and force the quiet bit so the payload never becomes 0.
    uint64_t payload;
    if constexpr (S::kSigBits >= D::kSigBits) {
      payload = sig >> (S::kSigBits - D::kSigBits);
    } else {
      payload = sig << (D::kSigBits - S::kSigBits);
    }
    payload |= uint64_t{1} << (D::kSigBits - 1);
    return static_cast<DstRep>(dst_sign | dst_inf | (payload & D::kSigMask));
  }
  if (exp_field == 0 && sig == 0) return static_cast<DstRep>(dst_sign);  // signed zero

  // value = sig * 2^(exp - SrcSig), with sig normalised so that bit SrcSig is the leading one.
  int exp;
  if (exp_field == 0) {
    exp = 1 - S::kBias;
    while ((sig >> S::kSigBits) == 0) {
      sig <<= 1;
      --exp;
    }
  } else {
    exp = exp_field - S::kBias;
    sig |= uint64_t{1} << S::kSigBits;
  }

  const int dst_exp_field = exp + D::kBias;
  if (dst_exp_field >= D::kExpMax) return static_cast<DstRep>(dst_sign | dst_inf);  // overflow

  uint64_t out;
  if (dst_exp_field >= 1) {
    // Normal result. The significand keeps its implicit leading one at bit DstSig, so adding it
    // to (field - 1) << DstSig yields the right exponent field, and a rounding carry that turns
    // the significand into 2.0 bumps the exponent (up to Inf) for free.
    const uint64_t rounded = ShiftRightRoundEven(sig, S::kSigBits - D::kSigBits);
    out = (static_cast<uint64_t>(dst_exp_field - 1) << D::kSigBits) + rounded;
  } else {
    // Subnormal result (exponent field 0): shift further right by how far we are below 2^(1-bias).
    // A rounding carry into bit DstSig produces the smallest normal number, which is correct.
    out = ShiftRightRoundEven(sig, S::kSigBits - D::kSigBits + (1 - dst_exp_field));
  }
  if (out >= dst_inf) out = dst_inf;
  return static_cast<DstRep>(dst_sign | out);
}

template <typename To, typename From>
inline To BitCast(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "bit cast between types of different size");
  To to;
  std::memcpy(&to, &from, sizeof(To));
  return to;
}

template <typename SrcT, typename SrcRepT, int SrcSigBits, typename DstT, typename DstRepT,
          int DstSigBits>
inline DstT Convert(SrcT a) {
  const SrcRepT src_bits = BitCast<SrcRepT>(a);
  const DstRepT dst_bits = ConvertBits<SrcRepT, SrcSigBits, DstRepT, DstSigBits>(src_bits);
  return BitCast<DstT>(dst_bits);
}

}  // namespace aae_fp_detail

/*! \brief Narrowing conversion (e.g. float -> half bits), round to nearest even. */
template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
static inline DST_T __truncXfYf2__(SRC_T a) {
  return aae_fp_detail::Convert<SRC_T, SRC_REP_T, SRC_SIG_BITS, DST_T, DST_REP_T, DST_SIG_BITS>(a);
}

/*! \brief Widening conversion (e.g. half bits -> float); always exact. */
template <typename SRC_T, typename SRC_REP_T, int SRC_SIG_BITS, typename DST_T, typename DST_REP_T,
          int DST_SIG_BITS>
static inline DST_T __extendXfYf2__(SRC_T a) {
  return aae_fp_detail::Convert<SRC_T, SRC_REP_T, SRC_SIG_BITS, DST_T, DST_REP_T, DST_SIG_BITS>(a);
}

#endif  // AAE_WASM_RUNTIME_BUILTIN_FP16_H_
