// SPDX-License-Identifier: Apache-2.0
// libFuzzer target of hostnccl's bootstrap decoders (plugins/hostnccl/hn_bootstrap.h): the rendezvous's check
// of a rank's Hello and a rank's decoding of the table the rendezvous sends back, both bytes from the network.
// Any input must be refused with a reason or decode into exactly nranks entries with bounded addresses that
// re-encode to the same bytes.
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "hn_bootstrap.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 3) return 0;
  const int32_t nranks = static_cast<int16_t>(data[1] | data[2] << 8);  // negative and zero included
  const char* rest = reinterpret_cast<const char*>(data + 3);
  const size_t n = size - 3;
  if (data[0] & 1) {
    hn::Hello h;
    if (n < sizeof(h)) return 0;
    std::memcpy(&h, rest, sizeof(h));
    const std::string why = hn::CheckHello(h, h.nonce, nranks);
    if (why.empty() && (h.rank < 0 || h.rank >= h.nranks || h.addr_len == 0 || h.addr_len > hn::kMaxUcxAddress ||
                        (nranks >= 0 && h.nranks != nranks))) {
      abort();
    }
    return 0;
  }
  std::vector<hn::RankInfo> infos;
  std::string why;
  if (!hn::DecodeTable(rest, n, nranks, &infos, &why)) {
    if (why.empty() || !infos.empty()) abort();
    return 0;
  }
  if (static_cast<int32_t>(infos.size()) != nranks || n > hn::MaxTableBytes(nranks)) abort();
  for (const hn::RankInfo& ri : infos) {
    if (ri.ucx_addr.empty() || ri.ucx_addr.size() > hn::kMaxUcxAddress) abort();
  }
  const std::vector<char> again = hn::EncodeTable(infos);
  if (again.size() != n || std::memcmp(again.data(), rest, n) != 0) abort();
  return 0;
}
