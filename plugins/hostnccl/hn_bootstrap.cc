// SPDX-License-Identifier: Apache-2.0
#include "hn_bootstrap.h"

#include <cstring>

namespace hn {

std::string CheckHello(const Hello& h, uint64_t nonce, int32_t nranks) {
  if (h.magic != kHelloMagic || h.nonce != nonce) return "not a hello for this id";
  if (h.nranks < 1 || h.nranks > kMaxBootstrapRanks) return "nranks " + std::to_string(h.nranks) + " out of range";
  if (nranks >= 0 && h.nranks != nranks) {
    return "nranks " + std::to_string(h.nranks) + " differs from the first rank's " + std::to_string(nranks);
  }
  if (h.rank < 0 || h.rank >= h.nranks) return "rank " + std::to_string(h.rank) + " out of range";
  if (h.addr_len == 0 || h.addr_len > kMaxUcxAddress) return "address length " + std::to_string(h.addr_len);
  return "";
}

namespace {
constexpr size_t kEntryHeader = 10;  // u32 address, u16 port, u32 length
}

std::vector<char> EncodeTable(const std::vector<RankInfo>& infos) {
  std::vector<char> table;
  for (const RankInfo& ri : infos) {
    const uint32_t len = static_cast<uint32_t>(ri.ucx_addr.size());
    char head[kEntryHeader];
    std::memcpy(head, &ri.live_addr, 4);
    std::memcpy(head + 4, &ri.live_port, 2);
    std::memcpy(head + 6, &len, 4);
    table.insert(table.end(), head, head + kEntryHeader);
    table.insert(table.end(), ri.ucx_addr.begin(), ri.ucx_addr.end());
  }
  return table;
}

uint64_t MaxTableBytes(int32_t nranks) {
  return nranks < 1 ? 0 : static_cast<uint64_t>(nranks) * (kEntryHeader + kMaxUcxAddress);
}

bool DecodeTable(const char* data, size_t size, int32_t nranks, std::vector<RankInfo>* out, std::string* why) {
  out->clear();
  if (nranks < 1 || nranks > kMaxBootstrapRanks) {
    *why = "nranks " + std::to_string(nranks) + " out of range";
    return false;
  }
  // Every entry takes at least its header and one address byte: a table too short for nranks is refused before
  // anything is allocated for them.
  if (size / (kEntryHeader + 1) < static_cast<size_t>(nranks)) {
    *why = "table of " + std::to_string(size) + " bytes cannot hold " + std::to_string(nranks) + " ranks";
    return false;
  }
  std::vector<RankInfo> infos(static_cast<size_t>(nranks));
  size_t off = 0;
  for (int32_t r = 0; r < nranks; ++r) {
    if (size - off < kEntryHeader) {
      *why = "table truncated at rank " + std::to_string(r);
      return false;
    }
    uint32_t len = 0;
    std::memcpy(&infos[r].live_addr, data + off, 4);
    std::memcpy(&infos[r].live_port, data + off + 4, 2);
    std::memcpy(&len, data + off + 6, 4);
    off += kEntryHeader;
    if (len == 0 || len > kMaxUcxAddress || size - off < len) {
      *why = "rank " + std::to_string(r) + ": address length " + std::to_string(len) + " does not fit";
      return false;
    }
    infos[r].ucx_addr.assign(data + off, data + off + len);
    off += len;
  }
  if (off != size) {
    *why = std::to_string(size - off) + " bytes after the last rank";
    return false;
  }
  *out = std::move(infos);
  return true;
}

}  // namespace hn
