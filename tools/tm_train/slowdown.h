// SPDX-License-Identifier: Apache-2.0
// slowdown.h: a straggler you can make, and noise (docs/tm-train.md, docs/stragglers.md).
//
// The slowdown is tied to the process, never to the rank: a replacement started with the same command line
// and environment (a joiner gets TRAINMOVER_ROLE=joiner on top) is not slow, so moving the rank to a new
// process cures it the way moving it off a slow machine would.
//   --slow-rank R --slowdown F [--slow-from-step S]  the process started as rank R's worker (not a joiner)
//                                                    computes F times as long from step S on
//   SIGUSR1                                          toggles the slowdown in the process that receives it
//                                                    (factor F, 2 without --slowdown)
//   --step-jitter MS                                 every step of every rank sleeps a further uniform
//                                                    0..MS ms (a pure function of rank and step)
// "Takes F times as long": after each step the process sleeps (F - 1) times what the step took (the iteration,
// its NCCL calls included, plus --step-ms; a straggler hardly waits in them). Sleeping, not spinning, so a slow rank does not take CPU from the
// others on a small machine. Nothing here touches the training state: results stay bit-identical.
#ifndef TOOLS_TM_TRAIN_SLOWDOWN_H_
#define TOOLS_TM_TRAIN_SLOWDOWN_H_

#include <chrono>
#include <cstdint>

namespace tm_train {

class Slowdown {
 public:
  struct Options {
    int slow_rank = -1;      // -1: no rank is slow from the start
    double factor = 0;       // 0: not given (SIGUSR1 then uses 2)
    int64_t from_step = 0;
    double jitter_ms = 0;
  };
  // `original_worker`: this process was started as a worker (not a joiner or standby). Installs the SIGUSR1
  // handler (once per process).
  void Start(const Options& o, int rank, bool original_worker);
  // Brackets the step's own computation (may be called several times per step; the spans add up).
  void ComputeBegin() { t0_ = std::chrono::steady_clock::now(); }
  void ComputeEnd() { computed_ += std::chrono::steady_clock::now() - t0_; }
  // At the end of step `step` (emulated_ms: the --step-ms the step slept, counted as computation): sleeps
  // the slowdown and the jitter, and starts the next step's count.
  void EndStep(int64_t step, int64_t emulated_ms);

 private:
  Options o_;
  int rank_ = 0;
  bool slow_from_start_ = false;
  std::chrono::steady_clock::time_point t0_{};
  std::chrono::steady_clock::duration computed_{};
};

}  // namespace tm_train

#endif  // TOOLS_TM_TRAIN_SLOWDOWN_H_
