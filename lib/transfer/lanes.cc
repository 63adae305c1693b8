// SPDX-License-Identifier: Apache-2.0
#include "lanes.h"

#include <pthread.h>

#include <algorithm>

#include "base/thread.h"

namespace trainmover::transfer::detail {

std::thread StartLaneThread(const char* name, std::function<void()> fn) {
  std::thread t = base::StartThread(name, std::move(fn));
  return t;
}

int DefaultLanes(int requested) {
  if (requested > 0) return requested;
  return static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 4u));
}

int DefaultReadLanes(int requested, uint64_t bytes) {
  if (requested > 0) return requested;
  uint64_t by_cpus = std::clamp(std::thread::hardware_concurrency() / 4, 1u, 4u);
  uint64_t by_size = std::max<uint64_t>(bytes / (uint64_t{4} << 20), 1);
  return static_cast<int>(std::min(by_cpus, by_size));
}

LanePool::LanePool(int helpers, const char* name) {
  for (int i = 0; i < helpers; ++i) threads_.push_back(StartLaneThread(name, [this, i] { Loop(i + 1); }));
}

LanePool::~LanePool() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  wake_.notify_all();
  for (std::thread& t : threads_) t.join();
}

void LanePool::Run(const std::function<void(int)>& fn, int n) {
  n = std::clamp(n, 1, lanes());
  if (n > 1) {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = &fn;
    job_lanes_ = n;
    next_lane_ = 1;
    job_open_ = true;
    ++generation_;
  }
  if (n > 1) wake_.notify_all();
  fn(0);
  if (n > 1) {
    std::unique_lock<std::mutex> lk(mu_);
    job_open_ = false;  // helpers not yet inside fn stay out
    done_.wait(lk, [&] { return running_ == 0; });
    job_ = nullptr;
  }
}

void LanePool::Loop(int) {
  uint64_t seen = 0;
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    wake_.wait(lk, [&] { return stop_ || generation_ != seen; });
    if (stop_) return;
    seen = generation_;
    if (!job_open_ || next_lane_ >= job_lanes_) continue;  // finished without us, or needs fewer lanes
    const int lane = next_lane_++;
    const std::function<void(int)>* job = job_;
    ++running_;
    lk.unlock();
    (*job)(lane);
    lk.lock();
    if (--running_ == 0) done_.notify_all();
  }
}

}  // namespace trainmover::transfer::detail
