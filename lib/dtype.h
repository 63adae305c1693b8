// SPDX-License-Identifier: Apache-2.0
// Element types of NCCL: size, and conversion of the floating-point ones to and from double.
// half (IEEE binary16), bfloat16, fp8 e4m3 and e5m2 are stored as raw bits. Encoding rounds once, to
// nearest even. Overflow: half/bfloat16 give infinity (IEEE); fp8 saturates to the largest finite value
// (as NCCL's __NV_SATFINITE conversions do), so emulated results never become NaN from finite inputs.
#pragma once

#include <nccl.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace trainmover::shim {

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

// A binary floating-point format with `mbits` stored mantissa bits and exponent bias `bias`.
struct SmallFloat {
  int bits, mbits, bias;
  uint32_t max_finite;  // largest finite magnitude code
  uint32_t inf;         // infinity magnitude code, 0 when the format has none
  uint32_t nan;         // a quiet NaN code
  bool saturate;        // overflow (and infinity) encode as max_finite
};
inline constexpr SmallFloat kHalf{16, 10, 15, 0x7bff, 0x7c00, 0x7e00, false};
inline constexpr SmallFloat kBf16{16, 7, 127, 0x7f7f, 0x7f80, 0x7fc0, false};
inline constexpr SmallFloat kE4m3{8, 3, 7, 0x7e, 0, 0x7f, true};
inline constexpr SmallFloat kE5m2{8, 2, 15, 0x7b, 0x7c, 0x7e, true};

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

// Loads element i of a floating-point array as double / stores double rounded once to the type.
inline double LoadFloat(ncclDataType_t t, const void* p, size_t i) {
  switch (t) {
    case ncclFloat32: {
      float v;
      std::memcpy(&v, static_cast<const char*>(p) + 4 * i, 4);
      return v;
    }
    case ncclFloat64: {
      double v;
      std::memcpy(&v, static_cast<const char*>(p) + 8 * i, 8);
      return v;
    }
    case ncclFloat16: {
      uint16_t b;
      std::memcpy(&b, static_cast<const char*>(p) + 2 * i, 2);
      return Decode(kHalf, b);
    }
    case ncclBfloat16: {
      uint16_t b;
      std::memcpy(&b, static_cast<const char*>(p) + 2 * i, 2);
      return Decode(kBf16, b);
    }
    case ncclFloat8e4m3:
      return Decode(kE4m3, static_cast<const uint8_t*>(p)[i]);
    case ncclFloat8e5m2:
      return Decode(kE5m2, static_cast<const uint8_t*>(p)[i]);
    default:
      return 0;
  }
}
inline void StoreFloat(ncclDataType_t t, void* p, size_t i, double x) {
  switch (t) {
    case ncclFloat32: {
      float v = static_cast<float>(x);
      std::memcpy(static_cast<char*>(p) + 4 * i, &v, 4);
      return;
    }
    case ncclFloat64:
      std::memcpy(static_cast<char*>(p) + 8 * i, &x, 8);
      return;
    case ncclFloat16: {
      uint16_t b = Encode(kHalf, x);
      std::memcpy(static_cast<char*>(p) + 2 * i, &b, 2);
      return;
    }
    case ncclBfloat16: {
      uint16_t b = Encode(kBf16, x);
      std::memcpy(static_cast<char*>(p) + 2 * i, &b, 2);
      return;
    }
    case ncclFloat8e4m3:
      static_cast<uint8_t*>(p)[i] = Encode(kE4m3, x);
      return;
    case ncclFloat8e5m2:
      static_cast<uint8_t*>(p)[i] = Encode(kE5m2, x);
      return;
    default:
      return;
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

}  // namespace trainmover::shim
