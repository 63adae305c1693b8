// SPDX-License-Identifier: Apache-2.0
// NCCL's element types (ncclDataType_t): their size, and the one conversion of the floating-point ones to and
// from double. Shared by the shim (lib/, its sandbox emulation) and hostnccl (plugins/hostnccl, its reductions);
// header-only, no state, every function is pure and thread-safe.
//
// half (IEEE binary16), bfloat16, fp8 e4m3 and fp8 e5m2 are stored as raw bits (uint16_t / uint8_t).
// - Encode rounds once, to nearest, ties to even, from a double (a float argument converts exactly, so
//   encoding a float rounds exactly as a direct float conversion would).
// - Overflow (a finite value that rounds past the largest finite code) and infinities:
//     half, bfloat16: infinity (IEEE);
//     e4m3, e5m2:     the largest finite value of the sign (448, 57344), as NCCL's __NV_SATFINITE
//                     conversions do, so results never turn into NaN or infinity from finite inputs.
// - NaN encodes as one quiet code per format whatever the sign and payload of the input:
//     half 0x7e00, bfloat16 0x7fc0, e4m3 0x7f (its only NaN magnitude), e5m2 0x7f.
// - Decode is exact (every code is a double); e4m3 has no infinity (0x7f/0xff are NaN), e5m2 is the top byte
//   of a half (0x7c infinity, 0x7d..0x7f NaN).
#pragma once

#include <nccl.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace trainmover::common {

// Bytes per element of t; 0 for an invalid type.
inline size_t DtypeSize(ncclDataType_t t) {
  switch (t) {
    case ncclInt8:
    case ncclUint8:
    case ncclFloat8e4m3:
    case ncclFloat8e5m2:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
    default:
      return 0;  // invalid
  }
}

inline bool DtypeIsFloat(ncclDataType_t t) {
  return t == ncclFloat16 || t == ncclFloat32 || t == ncclFloat64 || t == ncclBfloat16 || t == ncclFloat8e4m3 ||
         t == ncclFloat8e5m2;
}

// A binary floating-point format of `bits` bits with `mbits` stored mantissa bits and exponent bias `bias`.
struct SmallFloat {
  int bits, mbits, bias;
  uint32_t max_finite;  // largest finite magnitude code
  uint32_t inf;         // infinity magnitude code, 0 when the format has none
  uint32_t nan;         // the quiet NaN code Encode gives
  bool saturate;        // overflow (and infinity) encode as max_finite
};
inline constexpr SmallFloat kHalf{16, 10, 15, 0x7bff, 0x7c00, 0x7e00, false};
inline constexpr SmallFloat kBf16{16, 7, 127, 0x7f7f, 0x7f80, 0x7fc0, false};
inline constexpr SmallFloat kE4m3{8, 3, 7, 0x7e, 0, 0x7f, true};
inline constexpr SmallFloat kE5m2{8, 2, 15, 0x7b, 0x7c, 0x7f, true};

// x rounded once to format f (see the top of this file); the code is in the low f.bits bits.
inline uint32_t Encode(const SmallFloat& f, double x) {
  const int sign_shift = f.bits - 1;
  const uint32_t sign = std::signbit(x) ? (1u << sign_shift) : 0u;
  if (std::isnan(x)) return f.nan;
  double a = std::fabs(x);
  uint32_t code;
  if (std::isinf(a)) {
    code = f.saturate ? f.max_finite : f.inf;
  } else {
    const int emin = 1 - f.bias;
    int e = (a == 0.0) ? emin : std::max(std::ilogb(a), emin);
    double q = std::nearbyint(std::ldexp(a, f.mbits - e));  // a / quantum, rounded to nearest even
    const double one = std::ldexp(1.0, f.mbits);
    if (q >= 2 * one) {  // rounded up into the next binade
      q = one;
      e += 1;
    }
    if (q < one) {
      code = static_cast<uint32_t>(q);  // subnormal (e == emin) or zero
    } else {
      code = (static_cast<uint32_t>(e + f.bias) << f.mbits) | static_cast<uint32_t>(q - one);
    }
    if (code > f.max_finite) code = f.saturate ? f.max_finite : f.inf;
  }
  return sign | code;
}

// The exact value of code `bits` of format f (NaN codes give NaN).
inline double Decode(const SmallFloat& f, uint32_t bits) {
  const int sign_shift = f.bits - 1;
  const bool neg = (bits >> sign_shift) & 1;
  const uint32_t mag = bits & ((1u << sign_shift) - 1);
  double v;
  if (f.inf && mag == f.inf)
    v = INFINITY;
  else if (mag > f.max_finite)
    v = NAN;
  else {
    const uint32_t e = mag >> f.mbits, m = mag & ((1u << f.mbits) - 1);
    v = (e == 0) ? std::ldexp(static_cast<double>(m), 1 - f.bias - f.mbits)
                 : std::ldexp(static_cast<double>((1u << f.mbits) | m), static_cast<int>(e) - f.bias - f.mbits);
  }
  return neg ? -v : v;
}

// The small format of a 1- or 2-byte floating-point type, nullptr for the others.
inline const SmallFloat* SmallFormat(ncclDataType_t t) {
  switch (t) {
    case ncclFloat16:
      return &kHalf;
    case ncclBfloat16:
      return &kBf16;
    case ncclFloat8e4m3:
      return &kE4m3;
    case ncclFloat8e5m2:
      return &kE5m2;
    default:
      return nullptr;
  }
}

// Loads element i of a floating-point array of type t as double (exact); 0 for a non-float type.
inline double LoadFloat(ncclDataType_t t, const void* p, size_t i) {
  const char* at = static_cast<const char*>(p) + DtypeSize(t) * i;
  if (t == ncclFloat32) {
    float v;
    std::memcpy(&v, at, 4);
    return v;
  }
  if (t == ncclFloat64) {
    double v;
    std::memcpy(&v, at, 8);
    return v;
  }
  const SmallFloat* f = SmallFormat(t);
  if (!f) return 0;
  uint32_t b = 0;
  std::memcpy(&b, at, DtypeSize(t));  // little-endian
  return Decode(*f, b);
}

// Stores x rounded once to type t as element i of a floating-point array; nothing for a non-float type.
inline void StoreFloat(ncclDataType_t t, void* p, size_t i, double x) {
  char* at = static_cast<char*>(p) + DtypeSize(t) * i;
  if (t == ncclFloat32) {
    const float v = static_cast<float>(x);
    std::memcpy(at, &v, 4);
  } else if (t == ncclFloat64) {
    std::memcpy(at, &x, 8);
  } else if (const SmallFloat* f = SmallFormat(t)) {
    const uint32_t b = Encode(*f, x);
    std::memcpy(at, &b, DtypeSize(t));  // little-endian
  }
}

// Integers are handled as their unsigned bit pattern (arithmetic modulo 2^bits, as NCCL's wraps).
inline uint64_t LoadInt(ncclDataType_t t, const void* p, size_t i) {
  const size_t n = DtypeSize(t);
  uint64_t v = 0;
  std::memcpy(&v, static_cast<const char*>(p) + n * i, n);  // little-endian
  return v;
}
inline void StoreInt(ncclDataType_t t, void* p, size_t i, uint64_t v) {
  std::memcpy(static_cast<char*>(p) + DtypeSize(t) * i, &v, DtypeSize(t));
}

}  // namespace trainmover::common
