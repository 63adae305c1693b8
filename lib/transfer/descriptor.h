// SPDX-License-Identifier: Apache-2.0
// The descriptor blob a StateServer hands to a StateClient (internal; exposed for tests).
//
// Layout, little-endian, every length checked on decode:
//   u32 magic "TMXD", u16 version (4), u16 reserved 0
//   16 bytes nonce (random per Expose; binds the control block's checksum MAC to this exposure)
//   host identity: 16 bytes kernel boot id, u64 pid-namespace inode, u32 pid (same host and pid namespace
//   when the first two match; then the joiner may read with process_vm_readv)
//   u32 worker address length, bytes
//   control block: u64 address, u64 size, u32 rkey length, rkey bytes
//   u32 region count, then per region:
//     u8 name length (1..255), name bytes, u64 address, u64 size, u8 memory type, u32 rkey length, rkey
//   32 bytes HMAC-SHA256(key, "trainmover transfer descriptor v4" || everything before it)
// The MAC is checked before any other byte is parsed. The key is the job's (ServerOptions/ClientOptions
// auth_key); a descriptor made with another key, or changed in transit, is refused as kBadDescriptor.
// The control block is host memory on the server, registered remote-read-only like the regions: u64 magic,
// u64 sealed (0, 1, or kSealFailed), u64 region count, one u64 checksum per region in order, then 32 bytes
// HMAC-SHA256(key, "trainmover transfer checksums v4" || nonce || count || checksums), which the joiner checks:
// where a transport cannot enforce the read-only registration (UCX emulates RMA over tcp with active messages,
// docs/transfer.md), a peer that writes the block still cannot make the joiner accept other checksums.
#ifndef TRAINMOVER_LIB_TRANSFER_DESCRIPTOR_H_
#define TRAINMOVER_LIB_TRANSFER_DESCRIPTOR_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "transfer.h"

namespace trainmover::transfer::detail {

inline constexpr uint32_t kDescriptorMagic = 0x44584d54;  // "TMXD"
// 3: the checksum became CRC32C lanes over 256 KiB blocks; 4: the MACs, the nonce, no client-done word. A leaver
// and a joiner of different versions are refused as a bad descriptor instead of failing later.
inline constexpr uint16_t kDescriptorVersion = 4;
inline constexpr size_t kMacBytes = 32, kNonceBytes = 16;
inline constexpr uint64_t kControlMagic = 0x4c5254434d54ULL;  // "TMCTRL"
inline constexpr size_t kControlHeaderWords = 3;
inline constexpr size_t kControlSealed = 1, kControlCount = 2;
inline constexpr size_t kControlMacWords = kMacBytes / 8;
// Bytes of the control block of `regions` regions.
inline constexpr uint64_t ControlBytes(uint64_t regions) { return 8 * (kControlHeaderWords + regions + kControlMacWords); }
inline constexpr uint64_t kSealFailed = 2;  // value of the sealed word when Seal failed (1: sealed)

struct RemoteRegion {
  std::string name;
  uint64_t address = 0;
  uint64_t size = 0;
  uint8_t memory_type = 0;  // MemoryType as found at mapping time
  std::vector<uint8_t> rkey;
};

struct HostIdentity {
  uint8_t boot_id[16] = {};
  uint64_t pid_namespace = 0;
  uint32_t pid = 0;
};
// This process's identity (boot id from /proc/sys/kernel/random/boot_id, pid namespace inode). Read from
// /proc once per process id (a forked child reads its own), not on every fetch.
HostIdentity LocalIdentity();
bool SameHostAndPidNamespace(const HostIdentity& a, const HostIdentity& b);

struct DescriptorData {
  uint8_t nonce[kNonceBytes] = {};
  HostIdentity host;
  std::vector<uint8_t> worker_address;
  RemoteRegion control;  // name unused
  std::vector<RemoteRegion> regions;
};

// The checks every region list gets (names 1..255 bytes and unique, null only when empty, a known type).
Status ValidateRegions(const std::vector<Region>& regions);

// Encode appends the MAC made with `key`; Decode checks it first (constant time), then parses the rest with
// DecodeDescriptorBody, which is exposed for the fuzzer (it parses the bytes before the MAC).
Status EncodeDescriptor(const DescriptorData& data, std::string_view key, std::vector<uint8_t>* out);
Status DecodeDescriptor(std::span<const uint8_t> blob, std::string_view key, DescriptorData* out);
Status DecodeDescriptorBody(std::span<const uint8_t> body, DescriptorData* out);

// The control block's MAC over its checksums (layout above).
void ChecksumMac(std::string_view key, const uint8_t (&nonce)[kNonceBytes], std::span<const uint64_t> checksums,
                 uint8_t (&mac)[kMacBytes]);
bool MacEqual(const uint8_t* a, const uint8_t* b);  // constant time, kMacBytes

}  // namespace trainmover::transfer::detail

#endif  // TRAINMOVER_LIB_TRANSFER_DESCRIPTOR_H_
