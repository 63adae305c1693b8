// SPDX-License-Identifier: Apache-2.0
// Reductions in a fixed order, one template per element family.
#include <algorithm>
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

template <typename T>
void ReduceInt(const RedOpFull& op, T scalar, const void* const* in, int n, void* outv, size_t count) {
  T* out = static_cast<T*>(outv);
  for (size_t i = 0; i < count; ++i) {
    T acc = static_cast<const T*>(in[0])[i];
    if (op.kind == RedKind::kPreMulSum) acc = IntOps<T>::Prod(acc, scalar);
    for (int r = 1; r < n; ++r) {
      T x = static_cast<const T*>(in[r])[i];
      switch (op.kind) {
        case RedKind::kSum:
        case RedKind::kSumPostDiv:
          acc = IntOps<T>::Sum(acc, x);
          break;
        case RedKind::kPreMulSum:
          acc = IntOps<T>::Sum(acc, IntOps<T>::Prod(x, scalar));
          break;
        case RedKind::kProd:
          acc = IntOps<T>::Prod(acc, x);
          break;
        case RedKind::kMax:
          acc = std::max(acc, x);
          break;
        case RedKind::kMin:
          acc = std::min(acc, x);
          break;
      }
    }
    if (op.kind == RedKind::kSumPostDiv) acc = static_cast<T>(acc / static_cast<T>(op.divisor));
    out[i] = acc;
  }
}

// Native floating point (float, double): each step in the type itself.
template <typename T>
void ReduceFloat(const RedOpFull& op, T scalar, const void* const* in, int n, void* outv, size_t count) {
  T* out = static_cast<T*>(outv);
  for (size_t i = 0; i < count; ++i) {
    T acc = static_cast<const T*>(in[0])[i];
    if (op.kind == RedKind::kPreMulSum) acc = acc * scalar;
    for (int r = 1; r < n; ++r) {
      T x = static_cast<const T*>(in[r])[i];
      switch (op.kind) {
        case RedKind::kSum:
        case RedKind::kSumPostDiv:
          acc = acc + x;
          break;
        case RedKind::kPreMulSum:
          acc = acc + x * scalar;
          break;
        case RedKind::kProd:
          acc = acc * x;
          break;
        case RedKind::kMax:
          acc = std::fmax(acc, x);
          break;
        case RedKind::kMin:
          acc = std::fmin(acc, x);
          break;
      }
    }
    out[i] = acc;
  }
}

// Small formats: decode to float, compute the step in float, round to the format after every step.
// fp8 formats round through half first (NCCL computes fp8 arithmetic with half instructions).
template <typename S, float (*Dec)(S), S (*Enc)(float), bool kViaHalf>
void ReduceSmall(const RedOpFull& op, float scalar, const void* const* in, int n, void* outv, size_t count) {
  auto round = [](float v) -> S {
    if constexpr (kViaHalf) v = HalfToFloat(FloatToHalf(v));
    return Enc(v);
  };
  S* out = static_cast<S*>(outv);
  for (size_t i = 0; i < count; ++i) {
    S acc = static_cast<const S*>(in[0])[i];
    if (op.kind == RedKind::kPreMulSum) acc = round(Dec(acc) * scalar);
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

void ReduceInOrder(ncclDataType_t type, const RedOpFull& op, const void* const* in, int n, void* out, size_t count) {
  switch (type) {
    case ncclInt8:
      return ReduceInt<int8_t>(op, ScalarAs<int8_t>(op), in, n, out, count);
    case ncclUint8:
      return ReduceInt<uint8_t>(op, ScalarAs<uint8_t>(op), in, n, out, count);
    case ncclInt32:
      return ReduceInt<int32_t>(op, ScalarAs<int32_t>(op), in, n, out, count);
    case ncclUint32:
      return ReduceInt<uint32_t>(op, ScalarAs<uint32_t>(op), in, n, out, count);
    case ncclInt64:
      return ReduceInt<int64_t>(op, ScalarAs<int64_t>(op), in, n, out, count);
    case ncclUint64:
      return ReduceInt<uint64_t>(op, ScalarAs<uint64_t>(op), in, n, out, count);
    case ncclFloat32:
      return ReduceFloat<float>(op, ScalarAs<float>(op), in, n, out, count);
    case ncclFloat64:
      return ReduceFloat<double>(op, ScalarAs<double>(op), in, n, out, count);
    case ncclFloat16:
      return ReduceSmall<uint16_t, HalfToFloat, FloatToHalf, false>(op, HalfToFloat(ScalarAs<uint16_t>(op)), in, n, out,
                                                                    count);
    case ncclBfloat16:
      return ReduceSmall<uint16_t, Bf16ToFloat, FloatToBf16, false>(op, Bf16ToFloat(ScalarAs<uint16_t>(op)), in, n, out,
                                                                    count);
    case ncclFloat8e4m3:
      return ReduceSmall<uint8_t, E4m3ToFloat, FloatToE4m3, true>(op, E4m3ToFloat(ScalarAs<uint8_t>(op)), in, n, out,
                                                                  count);
    case ncclFloat8e5m2:
      return ReduceSmall<uint8_t, E5m2ToFloat, FloatToE5m2, true>(op, E5m2ToFloat(ScalarAs<uint8_t>(op)), in, n, out,
                                                                  count);
    default:
      return;
  }
}

}  // namespace hn
