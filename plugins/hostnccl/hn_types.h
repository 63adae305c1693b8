// SPDX-License-Identifier: Apache-2.0
// Element types and reductions of hostnccl. half/bfloat16/fp8 are stored as raw bits and reduced in float,
// rounding to nearest even after every step, as NCCL's kernels do (fp8 goes through half, like __hadd on
// __half(fp8), and converts back with saturation to the largest finite value, like __NV_SATFINITE).
#pragma once

#include <nccl.h>

#include <cstddef>
#include <cstdint>

#include "nccl_dtype.h"

namespace hn {

namespace common = trainmover::common;

// The conversions are common/nccl_dtype.h's; these name them in float, the type hostnccl computes in (every
// small-format value is a float, and a float converts to double exactly, so nothing rounds twice).
inline float HalfToFloat(uint16_t h) { return static_cast<float>(common::Decode(common::kHalf, h)); }
inline uint16_t FloatToHalf(float f) { return static_cast<uint16_t>(common::Encode(common::kHalf, f)); }
inline float Bf16ToFloat(uint16_t b) { return static_cast<float>(common::Decode(common::kBf16, b)); }
inline uint16_t FloatToBf16(float f) { return static_cast<uint16_t>(common::Encode(common::kBf16, f)); }
inline float E4m3ToFloat(uint8_t b) { return static_cast<float>(common::Decode(common::kE4m3, b)); }
inline uint8_t FloatToE4m3(float f) { return static_cast<uint8_t>(common::Encode(common::kE4m3, f)); }
inline float E5m2ToFloat(uint8_t b) { return static_cast<float>(common::Decode(common::kE5m2, b)); }
inline uint8_t FloatToE5m2(float f) { return static_cast<uint8_t>(common::Encode(common::kE5m2, f)); }

inline size_t TypeSize(ncclDataType_t t) { return common::DtypeSize(t); }

// What a reduction does, resolved from ncclRedOp_t (built-in, avg or a user PreMulSum op).
enum class RedKind { kSum, kProd, kMax, kMin, kPreMulSum, kSumPostDiv };
struct RedOpFull {
  RedKind kind = RedKind::kSum;
  uint64_t scalar = 0;               // immediate scalar bits (datatype's own encoding)
  const void* scalar_ptr = nullptr;  // device-residence scalar: read when the operation executes
  int divisor = 1;                   // kSumPostDiv
};

// Which part of a rank-ordered fold a call computes. A whole reduction is acc = pre(x0); acc = step(acc, x_r) for
// r = 1..n-1; out = post(acc). A chain (AllReduce, hn_algo.h) computes it in links, one per rank: with acc_in,
// inputs[0] is the accumulator of the previous link (taken as is, no pre); without finish, out is the accumulator
// (no post), in the element type, which holds it exactly. Every split gives the bits of the whole.
struct FoldPart {
  bool acc_in = false;
  bool finish = true;
};

// Reduces inputs[0..n-1] (in that order) elementwise into out: acc = pre(in0); acc = op(acc, pre(in_r)).
void ReduceInOrder(ncclDataType_t type, const RedOpFull& op, const void* const* inputs, int n, void* out, size_t count,
                   FoldPart part = {});

}  // namespace hn
