// SPDX-License-Identifier: Apache-2.0
// flags.h: tm-train's command line (docs/tm-train.md, "Flags").
#ifndef TOOLS_TM_TRAIN_FLAGS_H_
#define TOOLS_TM_TRAIN_FLAGS_H_

#include <cstdint>
#include <string>

#include "slowdown.h"

namespace tm_train {

struct Flags {
  int64_t steps = 100;
  int64_t params = 10000;
  uint64_t seed = 1;
  int64_t init_ms = 0;
  int64_t step_ms = 0;
  int64_t extra_state_mb = 0;
  int64_t log_every = 10;
  int64_t checkpoint_at = -1;
  int64_t store_timeout_ms = 120000;
  bool exit_after_checkpoint = false;
  bool resume = false;
  bool no_safe_points = false;  // never call tmSafePoint (a program without the optional call)
  bool fixed_rank = false;  // --fixed-rank: the rank read once from RANK, never through tmRank
  bool device_state = false;  // --device-state: `extra` in CUDA device memory (device_state.h)
  std::string checkpoint_dir;
  std::string timeline;
  // The 3D-parallel workload (parallel.h): chosen when --tp or --pp is given.
  int64_t tp = 0;                 // --tp T: tensor-parallel degree (0: not given)
  int64_t pp = 0;                 // --pp P: pipeline stages (0: not given)
  int64_t micro_batches = 2;      // --micro-batches M: per step and pipeline
  int64_t watchdog_ms = 20;       // --watchdog-ms: the watchdog thread's polling period
  Slowdown::Options slow;         // --slow-rank, --slowdown, --slow-from-step, --step-jitter (slowdown.h)
  bool Parallel3D() const { return tp > 0 || pp > 0; }
};

// Parses argv; prints the usage and exits 0 on --help; exits 1 naming the flag on bad input.
Flags ParseFlags(int argc, char** argv);

}  // namespace tm_train

#endif  // TOOLS_TM_TRAIN_FLAGS_H_
