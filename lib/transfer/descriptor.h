// SPDX-License-Identifier: Apache-2.0
// The descriptor blob a StateServer hands to a StateClient (internal; exposed for tests).
//
// Layout, little-endian, every length checked on decode:
//   u32 magic "TMXD", u16 version (3), u16 reserved 0
//   host identity: 16 bytes kernel boot id, u64 pid-namespace inode, u32 pid (same host and pid namespace
//   when the first two match; then the joiner may read with process_vm_readv)
//   u32 worker address length, bytes
//   control block: u64 address, u64 size, u32 rkey length, rkey bytes
//   u32 region count, then per region:
//     u8 name length (1..255), name bytes, u64 address, u64 size, u8 memory type, u32 rkey length, rkey
// The control block is host memory on the server: u64 magic, u64 sealed (0/1), u64 client_done
// (0 running, 1 verified, 2 failed), u64 region count, then one u64 checksum per region in order.
#ifndef TRAINMOVER_LIB_TRANSFER_DESCRIPTOR_H_
#define TRAINMOVER_LIB_TRANSFER_DESCRIPTOR_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "transfer.h"

namespace trainmover::transfer::detail {

inline constexpr uint32_t kDescriptorMagic = 0x44584d54;  // "TMXD"
// 3: the checksum became CRC32C lanes over 256 KiB blocks; a leaver and a joiner of different versions are
// refused as a bad descriptor instead of failing later with a checksum mismatch.
inline constexpr uint16_t kDescriptorVersion = 3;
inline constexpr uint64_t kControlMagic = 0x4c5254434d54ULL;  // "TMCTRL"
inline constexpr size_t kControlHeaderWords = 4;
inline constexpr size_t kControlSealed = 1, kControlClientDone = 2, kControlCount = 3;
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
  HostIdentity host;
  std::vector<uint8_t> worker_address;
  RemoteRegion control;  // name unused
  std::vector<RemoteRegion> regions;
};

// The checks every region list gets (names 1..255 bytes and unique, null only when empty, a known type).
Status ValidateRegions(const std::vector<Region>& regions);

Status EncodeDescriptor(const DescriptorData& data, std::vector<uint8_t>* out);
Status DecodeDescriptor(std::span<const uint8_t> blob, DescriptorData* out);

}  // namespace trainmover::transfer::detail

#endif  // TRAINMOVER_LIB_TRANSFER_DESCRIPTOR_H_
