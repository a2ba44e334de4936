/*
 * webrt: IEEE-754 widening conversion used by TVM's sort kernels (__extendXfYf2__).
 *
 * Written for webrt from the call site in tvm/src/runtime/extra/contrib/sort/sort.cc:
 *   __extendXfYf2__<uint16_t, uint16_t, 10, float, uint32_t, 23>(half_bits) -> float.
 * The name is compiler-rt's; the implementation is webrt's own.
 */
#ifndef WEBRT_BUILTIN_FP16_H_
#define WEBRT_BUILTIN_FP16_H_

#include <cstdint>
#include <cstring>

/*!
 * \brief Convert a binary floating-point value to a wider one, exactly.
 * \tparam SrcT storage type of the source, SrcRepT its integer bit pattern type,
 *         SrcSigBits its stored significand bits; DstT/DstRepT/DstSigBits likewise.
 *         The exponent width is what is left of the bit pattern after sign and significand.
 */
template <typename SrcT, typename SrcRepT, int SrcSigBits, typename DstT, typename DstRepT,
          int DstSigBits>
static inline DstT __extendXfYf2__(SrcT a) {
  static_assert(sizeof(SrcT) == sizeof(SrcRepT) && sizeof(DstT) == sizeof(DstRepT), "bad reps");
  constexpr int kSrcBits = static_cast<int>(sizeof(SrcRepT) * 8);
  constexpr int kDstBits = static_cast<int>(sizeof(DstRepT) * 8);
  constexpr int kSrcExpBits = kSrcBits - SrcSigBits - 1;
  constexpr int kDstExpBits = kDstBits - DstSigBits - 1;
  constexpr int kSrcBias = (1 << (kSrcExpBits - 1)) - 1;
  constexpr int kDstBias = (1 << (kDstExpBits - 1)) - 1;
  constexpr int kSrcExpMax = (1 << kSrcExpBits) - 1;
  constexpr int kDstExpMax = (1 << kDstExpBits) - 1;
  static_assert(DstSigBits >= SrcSigBits && kDstExpBits >= kSrcExpBits, "not a widening");

  SrcRepT src_bits;
  std::memcpy(&src_bits, &a, sizeof(src_bits));
  const DstRepT sign = static_cast<DstRepT>((src_bits >> (kSrcBits - 1)) & 1u);
  int exp = static_cast<int>((src_bits >> SrcSigBits) & static_cast<SrcRepT>(kSrcExpMax));
  DstRepT sig = static_cast<DstRepT>(src_bits & ((static_cast<SrcRepT>(1) << SrcSigBits) - 1));

  DstRepT dst_exp;
  if (exp == kSrcExpMax) {  // infinity or NaN (payload kept, shifted to the top)
    dst_exp = static_cast<DstRepT>(kDstExpMax);
    sig = static_cast<DstRepT>(sig << (DstSigBits - SrcSigBits));
  } else if (exp != 0) {  // normal
    dst_exp = static_cast<DstRepT>(exp - kSrcBias + kDstBias);
    sig = static_cast<DstRepT>(sig << (DstSigBits - SrcSigBits));
  } else if (sig == 0) {  // signed zero
    dst_exp = 0;
  } else {  // subnormal source: normalize (always normal in the wider format)
    int shift = 0;
    while ((sig & (static_cast<DstRepT>(1) << SrcSigBits)) == 0) {
      sig = static_cast<DstRepT>(sig << 1);
      ++shift;
    }
    sig &= static_cast<DstRepT>((static_cast<DstRepT>(1) << SrcSigBits) - 1);
    dst_exp = static_cast<DstRepT>(1 - shift - kSrcBias + kDstBias);
    sig = static_cast<DstRepT>(sig << (DstSigBits - SrcSigBits));
  }
  DstRepT dst_bits = static_cast<DstRepT>((sign << (kDstBits - 1)) |
                                          (dst_exp << DstSigBits) | sig);
  DstT out;
  std::memcpy(&out, &dst_bits, sizeof(out));
  return out;
}

#endif  // WEBRT_BUILTIN_FP16_H_
