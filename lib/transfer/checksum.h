// SPDX-License-Identifier: Apache-2.0
// The checksum's internals (the public functions are in transfer.h): the portable and hardware CRC32C lanes,
// and the multi-region checksum used by Seal and by the device-memory path of the client.
#ifndef TRAINMOVER_LIB_TRANSFER_CHECKSUM_H_
#define TRAINMOVER_LIB_TRANSFER_CHECKSUM_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "transfer.h"

namespace trainmover::transfer::detail {

class LanePool;

// BlockHash computed without SSE4.2 (table CRC32C); equal to BlockHash by definition (tests compare them).
uint64_t BlockHashPortable(const void* data, size_t size);

// Number of checksum blocks of a region of `size` bytes.
inline size_t BlockCount(uint64_t size) { return static_cast<size_t>((size + kChecksumBlock - 1) / kChecksumBlock); }

// Checksums of many regions at once: the blocks of all regions are shared among the pool's lanes (host
// memory hashed in place, device memory staged through host). `pool` may be null: then `threads` (0:
// DefaultLanes) threads are started for this call.
Status ChecksumRegions(const std::vector<Region>& regions, int threads, LanePool* pool, std::vector<uint64_t>* out);

}  // namespace trainmover::transfer::detail

#endif  // TRAINMOVER_LIB_TRANSFER_CHECKSUM_H_
