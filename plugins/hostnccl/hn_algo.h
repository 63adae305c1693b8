// SPDX-License-Identifier: Apache-2.0
// Chunked, pipelined collective algorithms (see docs/hostnccl.md, "Algorithms and determinism").
// Every buffer is cut into segments of HOSTNCCL_CHUNK_BYTES (the comm's env.chunk_bytes) and up to kDepth
// segments per peer are in flight, so transfers overlap each other and the reductions.
#pragma once

#include <vector>

#include "hn_core.h"

namespace hn {

// Segments in flight per peer and direction.
constexpr int kPipelineDepth = 4;

// Collective tags: the 40-bit sequence is [collective:26][phase:2][segment:12]. The segment number wraps, which
// is safe: UCX matches messages of one sender in order, and far fewer than 4096 segments of one stream are ever
// posted at once.
inline uint64_t CollTag(const Comm* c, int src, int phase, uint64_t seg = 0) {
  return MakeTag(kTagColl, src,
                 ((c->coll_seq & 0x3ffffffull) << 14) | (static_cast<uint64_t>(phase & 3) << 12) | (seg & 0xfffull));
}

// One rank's block, in elements.
struct Block {
  size_t off = 0, len = 0;
};

// Rank-ordered reduction of blocks (AllReduce, ReduceScatter, Reduce). blocks[b] is the same on every rank: rank b
// receives block b of every rank's send buffer, segment by segment, reduces each segment in rank order 0..n-1 with
// ReduceInOrder and writes it to out (blocks[me].len elements). With allgather, rank b then sends each reduced
// segment to every rank, which receives it at all + blocks[b].off (AllReduce: out == all + blocks[me].off).
[[nodiscard]] ncclResult_t PipelinedReduce(Comm* c, const void* send, void* out, void* all,
                                           const std::vector<Block>& blocks, ncclDataType_t type, const RedOpFull& op,
                                           bool allgather);

// AllReduce as a pipelined chain (n >= 2): segment s of the partial sum travels 0 -> 1 -> ... -> n-1, each rank
// folding its own input into it (ReduceInOrder's FoldPart links, so the bits are those of the rank-ordered
// reduction), and the final segment travels on n-1 -> 0 -> 1 -> ... -> n-2. Every rank talks to its ring
// neighbours only, sends and receives at most 2x the buffer, and reduces it once (rank 0 never).
[[nodiscard]] ncclResult_t ChainAllReduce(Comm* c, const void* send, void* recv, size_t count, ncclDataType_t type,
                                          const RedOpFull& op);

// AllGather of `bytes` per rank around the ring me -> me+1: every segment is forwarded as soon as it arrives.
[[nodiscard]] ncclResult_t RingAllGather(Comm* c, const void* send, void* recv, size_t bytes);

// Broadcast down the chain root -> root+1 -> ... -> root-1 (mod n), segment by segment.
[[nodiscard]] ncclResult_t ChainBroadcast(Comm* c, const void* send, void* recv, size_t bytes, int root);

}  // namespace hn
