// SPDX-License-Identifier: Apache-2.0
// driver.h: what both of tm-train's workloads share: errors, the store of unique ids, the timeline, and the
// training loop around one iteration (safe point, checkpoint, pacing, progress lines).
#ifndef TOOLS_TM_TRAIN_DRIVER_H_
#define TOOLS_TM_TRAIN_DRIVER_H_

#include <nccl.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/kv_store.h"
#include "flags.h"
#include "state.h"

namespace tm_train {

// The rank printed in error lines (set once in main).
void SetErrorRank(int rank);
// Prints "[rank r] tm-train: error: ..." to stderr and exits 1.
[[noreturn]] void Die(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

#define NCCLCHECK(call)                                                                                       \
  do {                                                                                                        \
    ncclResult_t res_ = (call);                                                                               \
    if (res_ != ncclSuccess) {                                                                                \
      ::tm_train::Die("%s failed at %s:%d: %s (%d); last error: %s", #call, __FILE__, __LINE__,               \
                      ncclGetErrorString(res_), static_cast<int>(res_), ncclGetLastError(nullptr));           \
    }                                                                                                         \
  } while (0)

// An integer from the environment (dflt when unset); exits naming the variable when it is not one.
int EnvInt(const char* name, int dflt);
double MsSince(std::chrono::steady_clock::time_point t0);

// Unique ids through tmrun's store (TMRUN_STORE), as torch.distributed's store does for every group: the
// publisher calls ncclGetUniqueId and SETs the id under its key; the others GET it (waiting up to
// --store-timeout-ms). Without TMRUN_STORE only a world of one works (the id is made locally).
class IdStore {
 public:
  IdStore(int world, const Flags& f);
  ncclUniqueId Get(const std::string& key, bool publisher);

 private:
  tm_tools::KvClient kv_;
  bool connected_ = false;
  uint32_t timeout_ms_;
};

// Who runs the loop: its rank (the launcher's, then what tmRank says after each safe point) and world.
struct RankInfo {
  int rank = 0, world = 1;
  const char* role = "worker";  // TRAINMOVER_ROLE, echoed in the init line and the timeline
};

// One iteration numbered `step`: returns the loss to log (the mean over the job).
using Iteration = std::function<float(int64_t step)>;

// The loop: `step = tmSafePoint(step)` at the top of every iteration, then `who.rank = tmRank(who.rank)` (unless
// --fixed-rank: a standby that took a failed rank's place reads that rank there, and the iteration uses it), the
// timeline mark, the checkpoint at --checkpoint-at, `iteration(step)`, --step-ms of emulated compute, a progress
// line every --log-every. Returns when the step reaches --steps (or after the checkpoint with
// --exit-after-checkpoint).
void TrainLoop(const Flags& f, RankInfo& who, const CheckpointMeta& meta, const std::vector<Region>& regions,
               int64_t step, const Iteration& iteration);

// Registers every region with tmRegister (exits on failure).
void RegisterRegions(const std::vector<Region>& regions);
// With --resume: loads the rank's checkpoint into the regions and returns its step; else 0. With
// --checkpoint-at: creates the checkpoint directory.
int64_t PrepareCheckpoint(const Flags& f, const CheckpointMeta& meta, const std::vector<Region>& regions);

// The two workloads (docs/tm-train.md): data parallel over one communicator, and tensor x pipeline x data
// parallel (parallel.cc). Each returns main's exit code.
int RunDataParallel(const Flags& f, const RankInfo& who, std::chrono::steady_clock::time_point t_start);
int RunParallel3D(const Flags& f, const RankInfo& who, std::chrono::steady_clock::time_point t_start);

}  // namespace tm_train

#endif  // TOOLS_TM_TRAIN_DRIVER_H_
