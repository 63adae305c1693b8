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
// Reader lanes for the same-host read of `bytes`: `requested` when > 0; else one lane per 4 hardware threads (at
// most 4) and per 4 MiB of state. On the 2-core VM shared with other jobs, two lanes re-reading the same pages ran
// 1.5-2x slower than one (they compete for the CPUs and the leaver's page tables), and on a first read of the
// pages (a migration's case, 0.4-0.7 GB/s at 64 MiB here: the guest pays for every first touch) two lanes made no
// consistent difference; a lane is worth its wake-up only with cores to spare and enough blocks to share.
int DefaultReadLanes(int requested, uint64_t bytes);

// A fixed set of helper threads for work-sharing jobs. Run(fn, n) calls fn(0) on the calling thread and
// fn(lane) on up to n - 1 helpers, each with its own lane number, and returns when every call returned. A
// helper that wakes only after fn(0) returned is not given the job: fn must take its work from a shared
// counter, so that lane 0 alone finishes the job when the helpers are slow to be scheduled (a loaded host),
// instead of waiting for them. fn must bound its own time (the callers check their deadlines between
// blocks); Run adds no wait beyond the calls it started. The destructor stops and joins.
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
  int job_lanes_ = 0;  // lanes the open job may still take (lane numbers 1..job_lanes_ - 1)
  int next_lane_ = 1;  // the next lane number a waking helper takes
  bool job_open_ = false;
  uint64_t generation_ = 0;
  int running_ = 0;  // helpers inside fn
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace trainmover::transfer::detail

#endif  // TRAINMOVER_LIB_TRANSFER_LANES_H_
