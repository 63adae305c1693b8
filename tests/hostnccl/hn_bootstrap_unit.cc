// SPDX-License-Identifier: Apache-2.0
// hostnccl's bootstrap decoders (plugins/hostnccl/hn_bootstrap.h): round trip, and every malformed table or
// hello refused with a reason (the fuzzer, fuzz_bootstrap.cc, tries the rest).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "hn_bootstrap.h"

namespace {

std::vector<hn::RankInfo> Three() {
  std::vector<hn::RankInfo> v(3);
  for (int r = 0; r < 3; ++r) {
    v[r].live_addr = 0x0100007f;
    v[r].live_port = static_cast<uint16_t>(4000 + r);
    v[r].ucx_addr.assign(static_cast<size_t>(5 + r), static_cast<char>('a' + r));
  }
  return v;
}

}  // namespace

TEST_CASE("the table round-trips; every truncation, a wrong rank count and trailing bytes are refused") {
  const std::vector<char> t = hn::EncodeTable(Three());
  std::vector<hn::RankInfo> out;
  std::string why;
  REQUIRE(hn::DecodeTable(t.data(), t.size(), 3, &out, &why));
  REQUIRE(out.size() == 3);
  CHECK(out[2].live_port == 4002);
  CHECK(out[2].ucx_addr == std::vector<char>(7, 'c'));
  for (size_t n = 0; n < t.size(); ++n) {
    CHECK_FALSE(hn::DecodeTable(t.data(), n, 3, &out, &why));
    CHECK(out.empty());
  }
  CHECK_FALSE(hn::DecodeTable(t.data(), t.size(), 2, &out, &why));  // 2 ranks: bytes left over
  CHECK(why.find("after the last rank") != std::string::npos);
  CHECK_FALSE(hn::DecodeTable(t.data(), t.size(), 4, &out, &why));
  CHECK_FALSE(hn::DecodeTable(t.data(), t.size(), 0, &out, &why));
  CHECK_FALSE(hn::DecodeTable(t.data(), t.size(), -1, &out, &why));
  // An address length that points past the table (it used to be read out of bounds) or is zero.
  std::vector<char> bad = t;
  bad[6] = 0x7f;
  bad[9] = 0x7f;
  CHECK_FALSE(hn::DecodeTable(bad.data(), bad.size(), 3, &out, &why));
  CHECK(why.find("rank 0") != std::string::npos);
  bad = t;
  bad[6] = 0;
  CHECK_FALSE(hn::DecodeTable(bad.data(), bad.size(), 3, &out, &why));
  CHECK(hn::MaxTableBytes(3) >= t.size());
  CHECK(hn::MaxTableBytes(0) == 0);
}

TEST_CASE("a hello out of bounds is refused before anything is allocated for it") {
  hn::Hello h{hn::kHelloMagic, 7, 4, 1, 0, 0, 0, 100};
  CHECK(hn::CheckHello(h, 7, -1).empty());
  CHECK(hn::CheckHello(h, 7, 4).empty());
  CHECK_FALSE(hn::CheckHello(h, 8, -1).empty());  // another id
  CHECK_FALSE(hn::CheckHello(h, 7, 5).empty());   // another nranks than the first rank's
  for (int32_t nranks : {0, -1, hn::kMaxBootstrapRanks + 1}) {
    hn::Hello x = h;
    x.nranks = nranks;
    CHECK_FALSE(hn::CheckHello(x, 7, -1).empty());
  }
  for (int32_t rank : {-1, 4}) {
    hn::Hello x = h;
    x.rank = rank;
    CHECK_FALSE(hn::CheckHello(x, 7, -1).empty());
  }
  for (uint32_t len : {0u, hn::kMaxUcxAddress + 1}) {
    hn::Hello x = h;
    x.addr_len = len;
    CHECK_FALSE(hn::CheckHello(x, 7, -1).empty());
  }
}
