// SPDX-License-Identifier: Apache-2.0
// Reductions in a fixed order, one template per element family.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "hn_types.h"

namespace hn {
namespace {

// Integers: sums and products wrap (computed unsigned), max/min compare in the signed or unsigned type.
template <typename T>
struct IntOps {
  using U = std::make_unsigned_t<T>;
  static T Sum(T a, T b) { return static_cast<T>(static_cast<U>(static_cast<U>(a) + static_cast<U>(b))); }
  static T Prod(T a, T b) { return static_cast<T>(static_cast<U>(static_cast<U>(a) * static_cast<U>(b))); }
};

// The element-wise kernel behind the integer and native float reductions. It works on tiles of one cache line
// of elements: the tile's accumulator starts as pre(in[0]), takes one input after the other in rank order,
// and is then written out. Every element therefore sees exactly acc = pre(x0); acc = step(acc, x_r) for
// r = 1..n-1 (the documented order, bit for bit). The tile is a compile-time size, so the compiler keeps the
// accumulator in vector registers and vectorises the loops (-O2 included); each input is read once and the
// output written once, with no copy through a buffer. All inputs of a tile are read before its output is
// written, so out may be any one of the inputs (in place).
template <typename T, size_t kM, typename Pre, typename Step, typename Post>
inline void Tile(const void* const* in, int n, T* out, size_t base, Pre pre, Step step, Post post) {
  T acc[kM];
  const T* x0 = static_cast<const T*>(in[0]) + base;
  for (size_t j = 0; j < kM; ++j) acc[j] = pre(x0[j]);
  for (int r = 1; r < n; ++r) {
    const T* x = static_cast<const T*>(in[r]) + base;
    for (size_t j = 0; j < kM; ++j) acc[j] = step(acc[j], x[j]);
  }
  for (size_t j = 0; j < kM; ++j) out[base + j] = post(acc[j]);
}

template <typename T, typename Pre, typename Step, typename Post>
void TileLoop(const void* const* in, int n, void* outv, size_t count, Pre pre, Step step, Post post) {
  constexpr size_t kM = 64 / sizeof(T);
  T* out = static_cast<T*>(outv);
  size_t base = 0;
  for (; base + kM <= count; base += kM) Tile<T, kM>(in, n, out, base, pre, step, post);
  for (; base < count; ++base) Tile<T, 1>(in, n, out, base, pre, step, post);
}

// A part of the fold (FoldPart): an accumulator input skips pre, an unfinished one skips post.
template <typename T, typename Pre, typename Step, typename Post>
void TileReduce(const void* const* in, int n, void* out, size_t count, FoldPart part, Pre pre, Step step, Post post) {
  auto id = [](T a) { return a; };
  if (part.acc_in && !part.finish) return TileLoop<T>(in, n, out, count, id, step, id);
  if (part.acc_in) return TileLoop<T>(in, n, out, count, id, step, post);
  if (!part.finish) return TileLoop<T>(in, n, out, count, pre, step, id);
  TileLoop<T>(in, n, out, count, pre, step, post);
}

template <typename T>
void ReduceInt(const RedOpFull& op, T scalar, const void* const* in, int n, void* out, size_t count, FoldPart part) {
  using O = IntOps<T>;
  auto id = [](T a) { return a; };
  switch (op.kind) {
    case RedKind::kSum:
      return TileReduce<T>(
          in, n, out, count, part, id, [](T a, T b) { return O::Sum(a, b); }, id);
    case RedKind::kSumPostDiv: {
      const T d = static_cast<T>(op.divisor);
      return TileReduce<T>(
          in, n, out, count, part, id, [](T a, T b) { return O::Sum(a, b); }, [d](T a) { return static_cast<T>(a / d); });
    }
    case RedKind::kPreMulSum:
      return TileReduce<T>(
          in, n, out, count, part, [scalar](T a) { return O::Prod(a, scalar); },
          [scalar](T a, T b) { return O::Sum(a, O::Prod(b, scalar)); }, id);
    case RedKind::kProd:
      return TileReduce<T>(
          in, n, out, count, part, id, [](T a, T b) { return O::Prod(a, b); }, id);
    case RedKind::kMax:
      return TileReduce<T>(
          in, n, out, count, part, id, [](T a, T b) { return std::max(a, b); }, id);
    case RedKind::kMin:
      return TileReduce<T>(
          in, n, out, count, part, id, [](T a, T b) { return std::min(a, b); }, id);
  }
}

// Native floating point (float, double): each step in the type itself.
template <typename T>
void ReduceFloat(const RedOpFull& op, T scalar, const void* const* in, int n, void* out, size_t count,
                 FoldPart part) {
  auto id = [](T a) { return a; };
  switch (op.kind) {
    case RedKind::kSum:
    case RedKind::kSumPostDiv:
      return TileReduce<T>(
          in, n, out, count, part, id, [](T a, T b) { return a + b; }, id);
    case RedKind::kPreMulSum:
      return TileReduce<T>(
          in, n, out, count, part, [scalar](T a) { return a * scalar; }, [scalar](T a, T b) { return a + b * scalar; }, id);
    case RedKind::kProd:
      return TileReduce<T>(
          in, n, out, count, part, id, [](T a, T b) { return a * b; }, id);
    case RedKind::kMax:
      return TileReduce<T>(
          in, n, out, count, part, id, [](T a, T b) { return std::fmax(a, b); }, id);
    case RedKind::kMin:
      return TileReduce<T>(
          in, n, out, count, part, id, [](T a, T b) { return std::fmin(a, b); }, id);
  }
}

// Small formats: decode to float, compute the step in float, round to the format after every step.
// fp8 formats round through half first (NCCL computes fp8 arithmetic with half instructions).
template <typename S, float (*Dec)(S), S (*Enc)(float), bool kViaHalf>
void ReduceSmall(const RedOpFull& op, float scalar, const void* const* in, int n, void* outv, size_t count,
                 FoldPart part) {
  auto round = [](float v) -> S {
    if constexpr (kViaHalf) v = HalfToFloat(FloatToHalf(v));
    return Enc(v);
  };
  S* out = static_cast<S*>(outv);
  for (size_t i = 0; i < count; ++i) {
    S acc = static_cast<const S*>(in[0])[i];
    if (op.kind == RedKind::kPreMulSum && !part.acc_in) acc = round(Dec(acc) * scalar);
    for (int r = 1; r < n; ++r) {
      S x = static_cast<const S*>(in[r])[i];
      float a = Dec(acc), b = Dec(x);
      switch (op.kind) {
        case RedKind::kSum:
        case RedKind::kSumPostDiv:
          acc = round(a + b);
          break;
        case RedKind::kPreMulSum:
          acc = round(a + Dec(round(b * scalar)));
          break;
        case RedKind::kProd:
          acc = round(a * b);
          break;
        case RedKind::kMax:
          acc = round(std::fmax(a, b));
          break;
        case RedKind::kMin:
          acc = round(std::fmin(a, b));
          break;
      }
    }
    out[i] = acc;
  }
}

template <typename T>
T ScalarAs(const RedOpFull& op) {
  T v{};
  if (op.scalar_ptr)
    std::memcpy(&v, op.scalar_ptr, sizeof(T));
  else
    std::memcpy(&v, &op.scalar, sizeof(T));
  return v;
}

}  // namespace

void ReduceInOrder(ncclDataType_t type, const RedOpFull& op, const void* const* in, int n, void* out, size_t count,
                   FoldPart part) {
  switch (type) {
    case ncclInt8:
      return ReduceInt<int8_t>(op, ScalarAs<int8_t>(op), in, n, out, count, part);
    case ncclUint8:
      return ReduceInt<uint8_t>(op, ScalarAs<uint8_t>(op), in, n, out, count, part);
    case ncclInt32:
      return ReduceInt<int32_t>(op, ScalarAs<int32_t>(op), in, n, out, count, part);
    case ncclUint32:
      return ReduceInt<uint32_t>(op, ScalarAs<uint32_t>(op), in, n, out, count, part);
    case ncclInt64:
      return ReduceInt<int64_t>(op, ScalarAs<int64_t>(op), in, n, out, count, part);
    case ncclUint64:
      return ReduceInt<uint64_t>(op, ScalarAs<uint64_t>(op), in, n, out, count, part);
    case ncclFloat32:
      return ReduceFloat<float>(op, ScalarAs<float>(op), in, n, out, count, part);
    case ncclFloat64:
      return ReduceFloat<double>(op, ScalarAs<double>(op), in, n, out, count, part);
    case ncclFloat16:
      return ReduceSmall<uint16_t, HalfToFloat, FloatToHalf, false>(op, HalfToFloat(ScalarAs<uint16_t>(op)), in, n, out, count, part);
    case ncclBfloat16:
      return ReduceSmall<uint16_t, Bf16ToFloat, FloatToBf16, false>(op, Bf16ToFloat(ScalarAs<uint16_t>(op)), in, n, out, count, part);
    case ncclFloat8e4m3:
      return ReduceSmall<uint8_t, E4m3ToFloat, FloatToE4m3, true>(op, E4m3ToFloat(ScalarAs<uint8_t>(op)), in, n, out, count, part);
    case ncclFloat8e5m2:
      return ReduceSmall<uint8_t, E5m2ToFloat, FloatToE5m2, true>(op, E5m2ToFloat(ScalarAs<uint8_t>(op)), in, n, out, count, part);
    default:
      return;
  }
}

}  // namespace hn
