// SPDX-License-Identifier: Apache-2.0
// Unit tests of hostnccl's internals: the half/bfloat16/fp8 conversions and the rank-ordered reductions.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>

#include "hn_types.h"
#include "nccl_dtype.h"

using namespace hn;
using namespace trainmover::common;

// Known values of common/nccl_dtype.h's conversions (hostnccl and the shim share them); its round trips over
// every code are in tests/lib/shim_unit.
TEST_CASE("half: rounding to nearest even, overflow, subnormals") {
  CHECK(Encode(kHalf, 1.0f) == 0x3c00);
  CHECK(Encode(kHalf, -2.0f) == 0xc000);
  CHECK(Encode(kHalf, -0.0) == 0x8000);
  CHECK(Encode(kHalf, 65504.0f) == 0x7bff);
  CHECK(Encode(kHalf, 65519.0f) == 0x7bff);
  CHECK(Encode(kHalf, 65520.0f) == 0x7c00);                          // rounds to infinity
  CHECK(Encode(kHalf, 1.0f + std::ldexp(1.0f, -11)) == 0x3c00);      // tie -> even
  CHECK(Encode(kHalf, 1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie -> even (up)
  CHECK(Encode(kHalf, std::ldexp(1.0f, -24)) == 0x0001);             // smallest subnormal
  CHECK(Encode(kHalf, std::ldexp(1.0f, -25)) == 0x0000);
  CHECK(Encode(kHalf, 3 * std::ldexp(1.0f, -25)) == 0x0002);
  CHECK(Encode(kHalf, INFINITY) == 0x7c00);
  CHECK(Encode(kHalf, -INFINITY) == 0xfc00);
  CHECK(Encode(kHalf, NAN) == 0x7e00);
  CHECK(std::isnan(Decode(kHalf, 0x7e00)));
  CHECK(Decode(kHalf, 0xfc00) == -INFINITY);
}

TEST_CASE("bfloat16: rounding to nearest even, overflow") {
  CHECK(Encode(kBf16, 1.0f) == 0x3f80);
  CHECK(Encode(kBf16, 1.0f + std::ldexp(1.0f, -8)) == 0x3f80);
  CHECK(Encode(kBf16, 1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);
  CHECK(Encode(kBf16, 3.0e38) == 0x7f62);
  CHECK(Encode(kBf16, 3.4e38f) == 0x7f80);  // past the largest finite 0x7f7f: infinity
  CHECK(Encode(kBf16, NAN) == 0x7fc0);
  CHECK(Decode(kBf16, 0x7f80) == INFINITY);
}

TEST_CASE("fp8: saturation to the largest finite value, NaN, subnormals") {
  CHECK(Encode(kE4m3, 1.0f) == 0x38);
  CHECK(Encode(kE4m3, 448.0f) == 0x7e);
  CHECK(Encode(kE4m3, 480.0f) == 0x7e);
  CHECK(Encode(kE4m3, 1e9f) == 0x7e);  // saturates, never NaN
  CHECK(Encode(kE4m3, -1.0e6) == 0xfe);
  CHECK(Encode(kE4m3, INFINITY) == 0x7e);
  CHECK(Encode(kE4m3, -INFINITY) == 0xfe);
  CHECK(Encode(kE4m3, NAN) == 0x7f);
  CHECK(std::isnan(Decode(kE4m3, 0x7f)));
  CHECK(Encode(kE4m3, std::ldexp(1.0f, -9)) == 0x01);
  CHECK(Encode(kE4m3, std::ldexp(1.0f, -10)) == 0x00);
  CHECK(Encode(kE4m3, 17.0f) == Encode(kE4m3, 16.0f));  // tie -> even
  CHECK(Encode(kE5m2, 1.0f) == 0x3c);
  CHECK(Encode(kE5m2, 57344.0f) == 0x7b);
  CHECK(Encode(kE5m2, 1e9f) == 0x7b);
  CHECK(Encode(kE5m2, INFINITY) == 0x7b);
  CHECK(Encode(kE5m2, NAN) == 0x7f);
  CHECK(Decode(kE5m2, 0x7c) == INFINITY);
}

TEST_CASE("hostnccl's float names are the shared conversions") {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const uint16_t h = static_cast<uint16_t>(b);
    if (!std::isnan(Decode(kHalf, h))) REQUIRE(HalfToFloat(h) == Decode(kHalf, h));
    if (!std::isnan(Decode(kBf16, h))) REQUIRE(Bf16ToFloat(h) == Decode(kBf16, h));
    const float f = HalfToFloat(h);  // every half value, as a float input
    REQUIRE(FloatToHalf(f) == Encode(kHalf, f));
    REQUIRE(FloatToBf16(f) == Encode(kBf16, f));
    REQUIRE(FloatToE4m3(f) == Encode(kE4m3, f));
    REQUIRE(FloatToE5m2(f) == Encode(kE5m2, f));
    if (b < 0x100) {
      const uint8_t e = static_cast<uint8_t>(b);
      if (!std::isnan(Decode(kE4m3, e))) REQUIRE(E4m3ToFloat(e) == Decode(kE4m3, e));
      if (!std::isnan(Decode(kE5m2, e))) REQUIRE(E5m2ToFloat(e) == Decode(kE5m2, e));
    }
  }
}

TEST_CASE("reductions round after every step, in rank order") {
  RedOpFull sum;
  // half: 2048 + 1 = 2049 rounds to 2048 at each step (a float accumulator would give 2050).
  uint16_t h[3] = {FloatToHalf(2048), FloatToHalf(1), FloatToHalf(1)}, hout;
  const void* hin[3] = {&h[0], &h[1], &h[2]};
  ReduceInOrder(ncclFloat16, sum, hin, 3, &hout, 1);
  CHECK(HalfToFloat(hout) == 2048.0f);
  // e4m3: 16 + 1 = 17 -> 16 (tie to even), twice.
  uint8_t e[3] = {FloatToE4m3(16), FloatToE4m3(1), FloatToE4m3(1)}, eout;
  const void* ein[3] = {&e[0], &e[1], &e[2]};
  ReduceInOrder(ncclFloat8e4m3, sum, ein, 3, &eout, 1);
  CHECK(E4m3ToFloat(eout) == 16.0f);
  // e4m3 sums saturate.
  uint8_t big[2] = {FloatToE4m3(448), FloatToE4m3(448)};
  const void* bin[2] = {&big[0], &big[1]};
  ReduceInOrder(ncclFloat8e4m3, sum, bin, 2, &eout, 1);
  CHECK(eout == 0x7e);
  // integer average: sum then truncating division.
  RedOpFull avg;
  avg.kind = RedKind::kSumPostDiv;
  avg.divisor = 2;
  int32_t a[2] = {-3, 0}, aout;
  const void* ain[2] = {&a[0], &a[1]};
  ReduceInOrder(ncclInt32, avg, ain, 2, &aout, 1);
  CHECK(aout == -1);
  // PreMulSum with a scalar read through a pointer at execution time.
  float s = 3.0f, f[2] = {1.0f, 2.0f}, fout;
  RedOpFull pm;
  pm.kind = RedKind::kPreMulSum;
  pm.scalar_ptr = &s;
  const void* fin[2] = {&f[0], &f[1]};
  ReduceInOrder(ncclFloat32, pm, fin, 2, &fout, 1);
  CHECK(fout == 9.0f);
  // int8 sums wrap.
  int8_t i8[2] = {100, 100}, i8out;
  const void* iin[2] = {&i8[0], &i8[1]};
  ReduceInOrder(ncclInt8, sum, iin, 2, &i8out, 1);
  CHECK(i8out == static_cast<int8_t>(200));
}

// The chain AllReduce computes the fold in links of two inputs (FoldPart): link 1 folds x0 and x1, link r folds
// the accumulator and x_r, in place, and only the last link finishes. Over random bit patterns (NaN, infinities,
// subnormals included) of every type and every operation, for 2..6 ranks and counts across the tile widths,
// the links give the bits of the whole fold.
TEST_CASE("a fold computed in chain links equals the whole fold, bit for bit") {
  const ncclDataType_t types[] = {ncclInt8,    ncclUint8,    ncclInt32,      ncclUint32,
                                  ncclInt64,   ncclUint64,   ncclFloat16,    ncclFloat32,
                                  ncclFloat64, ncclBfloat16, ncclFloat8e4m3, ncclFloat8e5m2};
  const RedKind kinds[] = {RedKind::kSum, RedKind::kProd,      RedKind::kMax,
                           RedKind::kMin, RedKind::kPreMulSum, RedKind::kSumPostDiv};
  uint64_t state = 0x9e3779b97f4a7c15ull;
  auto next = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  int mismatches = 0, cases = 0;
  for (ncclDataType_t t : types) {
    const size_t es = TypeSize(t);
    for (RedKind k : kinds) {
      for (int n = 2; n <= 6; ++n) {
        for (size_t count : {size_t{1}, size_t{63}, size_t{200}}) {
          RedOpFull op;
          op.kind = k;
          op.divisor = n;
          op.scalar = next();  // bits of the type's scalar (the low es bytes are read)
          std::vector<std::vector<unsigned char>> x(n, std::vector<unsigned char>(count * es));
          for (auto& v : x)
            for (auto& b : v) b = static_cast<unsigned char>(next());
          std::vector<const void*> in(n);
          for (int r = 0; r < n; ++r) in[r] = x[r].data();
          std::vector<unsigned char> whole(count * es), acc(count * es);
          ReduceInOrder(t, op, in.data(), n, whole.data(), count);
          const void* first[2] = {x[0].data(), x[1].data()};
          ReduceInOrder(t, op, first, 2, acc.data(), count, FoldPart{false, n == 2});
          for (int r = 2; r < n; ++r) {
            const void* link[2] = {acc.data(), x[r].data()};
            ReduceInOrder(t, op, link, 2, acc.data(), count, FoldPart{true, r == n - 1});
          }
          ++cases;
          if (whole != acc) {
            ++mismatches;
            MESSAGE("type " << static_cast<int>(t) << " kind " << static_cast<int>(k) << " n " << n << " count "
                            << count);
          }
        }
      }
    }
  }
  CHECK(cases == 12 * 6 * 5 * 3);
  CHECK(mismatches == 0);
}
