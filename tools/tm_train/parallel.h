// SPDX-License-Identifier: Apache-2.0
// parallel.h: the 3D-parallel workload's layout and communicators (docs/tm-train.md, "3D parallel").
#ifndef TOOLS_TM_TRAIN_PARALLEL_H_
#define TOOLS_TM_TRAIN_PARALLEL_H_

#include <nccl.h>

#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace tm_train {

// Where a rank sits in a TP x PP x DP grid, Megatron's order: TP innermost, then DP, then the pipeline stage
// (rank = stage * DP * TP + dp * TP + tp), so a TP group is consecutive ranks and a stage is a block of them.
struct Grid {
  int tp = 1, pp = 1, dp = 1;                  // degrees
  int tp_rank = 0, stage = 0, dp_rank = 0;     // this rank's coordinates
  Grid(int rank, int world, int tp_degree, int pp_degree);
  bool FirstStage() const { return stage == 0; }
  bool LastStage() const { return stage == pp - 1; }
};

// A communicator and what the watchdog calls it.
struct NamedComm {
  const char* name;
  ncclComm_t comm;
};

// The watchdog thread ("tm-watchdog"), as PyTorch's ProcessGroupNCCL runs one: every period it polls
// ncclCommGetAsyncError on each communicator while the main thread trains, and ends the process (exit 1,
// naming the communicator) on an asynchronous error. Owned by its creator: the destructor stops and joins it.
class Watchdog {
 public:
  Watchdog(std::vector<NamedComm> comms, int64_t period_ms);
  ~Watchdog();
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  // Stops and joins the thread; returns the number of polling rounds it made.
  int64_t Stop();

 private:
  void Run();

  const std::vector<NamedComm> comms_;
  const int64_t period_ms_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  int64_t rounds_ = 0;
  std::thread thread_;
};

}  // namespace tm_train

#endif  // TOOLS_TM_TRAIN_PARALLEL_H_
