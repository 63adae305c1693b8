// SPDX-License-Identifier: Apache-2.0
// The bootstrap's wire formats (hn_core.cc, Bootstrap and Rendezvous): what a rank tells the rendezvous (Hello,
// then its UCX worker address) and the table the rendezvous sends back to every rank. Both come from the
// network, so both are decoded here with a bound on every field: malformed bytes give an error, never a crash
// or an allocation the sender chose. Pure functions, no sockets (fuzzed by tests/hostnccl/fuzz_bootstrap.cc).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace hn {

inline constexpr uint64_t kHelloMagic = 0x4f4c4c4548434e48ull;
// Bounds of what a rendezvous accepts: ranks of one communicator, bytes of one UCX worker address (UCX's are
// a few hundred bytes).
inline constexpr int32_t kMaxBootstrapRanks = 1 << 16;
inline constexpr uint32_t kMaxUcxAddress = 1u << 16;

// What each rank tells the rendezvous (host byte order: both ends run this code on one job's hosts).
struct Hello {
  uint64_t magic, nonce;
  int32_t nranks, rank;
  uint32_t live_addr;
  uint16_t live_port, pad;
  uint32_t addr_len;
};

// One rank's entry of the table.
struct RankInfo {
  uint32_t live_addr = 0;
  uint16_t live_port = 0;
  std::vector<char> ucx_addr;
};

// Whether a Hello is for this rendezvous (`nonce`) and within the bounds; `nranks` is what earlier Hellos said
// (-1 before the first). Empty when it fits, else why not.
std::string CheckHello(const Hello& h, uint64_t nonce, int32_t nranks);

// Per rank: u32 live address, u16 live port, u32 address length, address bytes.
std::vector<char> EncodeTable(const std::vector<RankInfo>& infos);
// The largest table `nranks` ranks can send (what a rank may receive before it decodes).
uint64_t MaxTableBytes(int32_t nranks);
// Exactly `nranks` entries, every address 1..kMaxUcxAddress bytes, nothing left over; else false and *why.
bool DecodeTable(const char* data, size_t size, int32_t nranks, std::vector<RankInfo>* out, std::string* why);

}  // namespace hn
