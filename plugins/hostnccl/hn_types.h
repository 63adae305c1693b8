// SPDX-License-Identifier: Apache-2.0
// Element types and reductions of hostnccl. half/bfloat16/fp8 are stored as raw bits and reduced in float,
// rounding to nearest even after every step, as NCCL's kernels do (fp8 goes through half, like __hadd on
// __half(fp8), and converts back with saturation to the largest finite value, like __NV_SATFINITE).
#pragma once

#include <nccl.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace hn {

// Encodes |f| (sign handled by the caller) in a small float format with `mbits` mantissa bits and exponent
// bias `bias`; `max_code` is the largest finite code; overflow gives inf_code (or max_code when saturating).
inline uint32_t EncodeSmall(float f, int mbits, int bias, uint32_t max_code, uint32_t inf_code, bool saturate) {
  const int emin = 1 - bias;
  if (std::isinf(f)) return saturate ? max_code : inf_code;
  if (f < std::ldexp(1.0f, emin)) {
    // Subnormal range: multiples of 2^(emin-mbits); nearbyint rounds to nearest even.
    return static_cast<uint32_t>(std::nearbyint(std::ldexp(f, mbits - emin)));
  }
  int e;
  float m = std::frexp(f, &e);  // f = m * 2^e, m in [0.5, 1)
  e -= 1;                       // f = (2m) * 2^e, 2m in [1, 2)
  uint32_t q = static_cast<uint32_t>(std::nearbyint(std::ldexp(m, mbits + 1)));
  if (q == (2u << mbits)) {
    q = 1u << mbits;
    e += 1;
  }
  int64_t code = (static_cast<int64_t>(e + bias) << mbits) | (q - (1u << mbits));
  if (code > max_code) return saturate ? max_code : inf_code;
  return static_cast<uint32_t>(code);
}

inline float DecodeSmall(uint32_t code, int mbits, int bias) {
  const uint32_t e = code >> mbits, m = code & ((1u << mbits) - 1);
  if (e == 0) return std::ldexp(static_cast<float>(m), 1 - bias - mbits);
  return std::ldexp(static_cast<float>((1u << mbits) | m), static_cast<int>(e) - bias - mbits);
}

inline float HalfToFloat(uint16_t h) {
  uint32_t sign = h >> 15, mag = h & 0x7fff;
  float v;
  if ((mag >> 10) == 0x1f)
    v = (mag & 0x3ff) ? NAN : INFINITY;
  else
    v = DecodeSmall(mag, 10, 15);
  return sign ? -v : v;
}
inline uint16_t FloatToHalf(float f) {
  uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return 0x7e00;
  return sign | static_cast<uint16_t>(EncodeSmall(std::fabs(f), 10, 15, 0x7bff, 0x7c00, false));
}
inline float Bf16ToFloat(uint16_t b) {
  uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
inline uint16_t FloatToBf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((x >> 16) | 0x40);
  x += 0x7fff + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}
// e4m3: bias 7, no infinity, 0x7f is NaN, 448 (0x7e) the largest finite value.
inline float E4m3ToFloat(uint8_t b) {
  if ((b & 0x7f) == 0x7f) return NAN;
  float v = DecodeSmall(b & 0x7f, 3, 7);
  return (b & 0x80) ? -v : v;
}
inline uint8_t FloatToE4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  return sign | static_cast<uint8_t>(EncodeSmall(std::fabs(f), 3, 7, 0x7e, 0x7e, true));
}
// e5m2: bias 15, IEEE-like infinities and NaNs, 57344 (0x7b) the largest finite value.
inline float E5m2ToFloat(uint8_t b) { return HalfToFloat(static_cast<uint16_t>(b) << 8); }
inline uint8_t FloatToE5m2(float f) {
  if (std::isnan(f)) return 0x7f;
  uint8_t sign = std::signbit(f) ? 0x80 : 0;
  return sign | static_cast<uint8_t>(EncodeSmall(std::fabs(f), 2, 15, 0x7b, 0x7b, true));
}

inline size_t TypeSize(ncclDataType_t t) {
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
      return 0;
  }
}

// What a reduction does, resolved from ncclRedOp_t (built-in, avg or a user PreMulSum op).
enum class RedKind { kSum, kProd, kMax, kMin, kPreMulSum, kSumPostDiv };
struct RedOpFull {
  RedKind kind = RedKind::kSum;
  uint64_t scalar = 0;               // immediate scalar bits (datatype's own encoding)
  const void* scalar_ptr = nullptr;  // device-residence scalar: read when the operation executes
  int divisor = 1;                   // kSumPostDiv
};

// Reduces inputs[0..n-1] (in that order) elementwise into out: acc = pre(in0); acc = op(acc, pre(in_r)).
void ReduceInOrder(ncclDataType_t type, const RedOpFull& op, const void* const* inputs, int n, void* out, size_t count);

}  // namespace hn
