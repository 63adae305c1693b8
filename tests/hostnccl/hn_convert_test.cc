// SPDX-License-Identifier: Apache-2.0
// Unit tests of hostnccl's internals: the half/bfloat16/fp8 conversions and the rank-ordered reductions.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cmath>

#include "hn_types.h"

using namespace hn;

TEST_CASE("half: rounding to nearest even, overflow, subnormals") {
  CHECK(FloatToHalf(1.0f) == 0x3c00);
  CHECK(FloatToHalf(-2.0f) == 0xc000);
  CHECK(FloatToHalf(65504.0f) == 0x7bff);
  CHECK(FloatToHalf(65519.0f) == 0x7bff);
  CHECK(FloatToHalf(65520.0f) == 0x7c00);                          // rounds to infinity
  CHECK(FloatToHalf(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);      // tie -> even
  CHECK(FloatToHalf(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);  // tie -> even (up)
  CHECK(FloatToHalf(std::ldexp(1.0f, -24)) == 0x0001);
  CHECK(FloatToHalf(std::ldexp(1.0f, -25)) == 0x0000);
  CHECK(FloatToHalf(3 * std::ldexp(1.0f, -25)) == 0x0002);
  CHECK(FloatToHalf(INFINITY) == 0x7c00);
  CHECK(std::isnan(HalfToFloat(FloatToHalf(NAN))));
  for (uint32_t h = 0; h < 0x10000; ++h) {
    if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue;  // NaN
    REQUIRE(FloatToHalf(HalfToFloat(static_cast<uint16_t>(h))) == h);
  }
}

TEST_CASE("bfloat16: rounding to nearest even") {
  CHECK(FloatToBf16(1.0f) == 0x3f80);
  CHECK(FloatToBf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);
  CHECK(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);
  for (uint32_t b = 0; b < 0x10000; ++b) {
    if ((b & 0x7f80) == 0x7f80 && (b & 0x7f)) continue;
    REQUIRE(FloatToBf16(Bf16ToFloat(static_cast<uint16_t>(b))) == b);
  }
}

TEST_CASE("fp8: saturation to the largest finite value, NaN, subnormals") {
  CHECK(FloatToE4m3(1.0f) == 0x38);
  CHECK(FloatToE4m3(448.0f) == 0x7e);
  CHECK(FloatToE4m3(480.0f) == 0x7e);
  CHECK(FloatToE4m3(1e9f) == 0x7e);
  CHECK(FloatToE4m3(INFINITY) == 0x7e);
  CHECK(FloatToE4m3(-INFINITY) == 0xfe);
  CHECK(FloatToE4m3(NAN) == 0x7f);
  CHECK(FloatToE4m3(std::ldexp(1.0f, -9)) == 0x01);
  CHECK(FloatToE4m3(std::ldexp(1.0f, -10)) == 0x00);
  CHECK(FloatToE4m3(17.0f) == FloatToE4m3(16.0f));  // tie -> even
  CHECK(FloatToE5m2(1.0f) == 0x3c);
  CHECK(FloatToE5m2(57344.0f) == 0x7b);
  CHECK(FloatToE5m2(1e9f) == 0x7b);
  CHECK(FloatToE5m2(INFINITY) == 0x7b);
  for (uint32_t b = 0; b < 0x100; ++b) {
    if ((b & 0x7f) != 0x7f) REQUIRE(FloatToE4m3(E4m3ToFloat(static_cast<uint8_t>(b))) == b);
    if ((b & 0x7c) != 0x7c) REQUIRE(FloatToE5m2(E5m2ToFloat(static_cast<uint8_t>(b))) == b);
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
