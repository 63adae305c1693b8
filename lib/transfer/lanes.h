// SPDX-License-Identifier: Apache-2.0
// Lanes: a few owned threads that run one job together (parallel reads on the same-host path, parallel
// hashing in Seal), started once ahead of time so that the switch point pays a wake-up, not a thread start.
#ifndef TRAINMOVER_LIB_TRANSFER_LANES_H_
#define TRAINMOVER_LIB_TRANSFER_LANES_H_

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace trainmover::transfer::detail {

// Every thread lib/transfer starts goes through here (named, owned by the caller, joined, never
// detached), so that the switch to lib/base/thread.h's StartThread is one line.
std::thread StartLaneThread(const char* name, std::function<void()> fn);

// Default parallelism: `requested` when > 0, else min(4, hardware threads).
int DefaultLanes(int requested);

// A fixed set of helper threads. Run(fn, n) calls fn(lane) for lane 0..n-1 at once, lane 0 on the calling
// thread, and returns when every call returned. fn must bound its own time (the callers check their
// deadlines between blocks); Run adds no wait of its own beyond fn's. The destructor stops and joins.
class LanePool {
 public:
  LanePool(int helpers, const char* name);
  ~LanePool();
  LanePool(const LanePool&) = delete;
  LanePool& operator=(const LanePool&) = delete;

  int lanes() const { return static_cast<int>(threads_.size()) + 1; }
  // n is capped at lanes(). Not reentrant: one Run at a time.
  void Run(const std::function<void(int lane)>& fn, int n);

 private:
  void Loop(int lane);

  std::mutex mu_;
  std::condition_variable wake_, done_;
  const std::function<void(int)>* job_ = nullptr;
  int job_lanes_ = 0;
  uint64_t generation_ = 0;
  int running_ = 0;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace trainmover::transfer::detail

#endif  // TRAINMOVER_LIB_TRANSFER_LANES_H_
