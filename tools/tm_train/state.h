// SPDX-License-Identifier: Apache-2.0
// state.h: tm-train's registered state as a list of named regions, its digest and its checkpoint file.
#ifndef TOOLS_TM_TRAIN_STATE_H_
#define TOOLS_TM_TRAIN_STATE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "base/status.h"

namespace tm_train {

// A region of training state; the memory is owned by the caller.
struct Region {
  std::string name;
  void* ptr = nullptr;
  size_t bytes = 0;
};

// SHA-256 over the regions' bytes in order, as lowercase hex.
std::string StateDigest(const std::vector<Region>& regions);

// What a checkpoint must agree on with the program that loads it.
struct CheckpointMeta {
  uint64_t seed = 0;
  int64_t params = 0;  // number of model parameters
  int rank = 0, world = 0;
};

// Writes step + the regions to path atomically (a temporary file in the same directory, fsync, rename).
// File: "TMCKPT01", seed:u64, params:i64, rank:i32, world:i32, step:i64, nregions:u32, then per region
// name_len:u32 name bytes:u64 data, then the SHA-256 of everything before it (32 bytes). Host byte order.
trainmover::base::Status SaveCheckpoint(const std::string& path, const CheckpointMeta& meta, int64_t step,
                                        const std::vector<Region>& regions);
// Reads a checkpoint written by SaveCheckpoint into the regions (same names and sizes, same meta) and sets
// *step. Verifies the trailing hash. On failure the regions may be partly written.
trainmover::base::Status LoadCheckpoint(const std::string& path, const CheckpointMeta& meta,
                                        const std::vector<Region>& regions, int64_t* step);

// "<dir>/rank-<rank>.ckpt"
std::string CheckpointPath(const std::string& dir, int rank);

}  // namespace tm_train

#endif  // TOOLS_TM_TRAIN_STATE_H_
