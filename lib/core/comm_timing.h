// SPDX-License-Identifier: Apache-2.0
// comm_timing.h: how long this process waits inside NCCL, measured for free on the hot path
// (docs/stragglers.md, "Measuring").
//
// Every blocking NCCL call the shim forwards (collectives, point-to-point, ncclGroupEnd) is bracketed by two
// reads of a tick counter; the difference is added to one process-wide relaxed counter. Nothing else happens
// on the hot path: no lock, no system call, no allocation. At each safe point (state.cc) the application
// thread turns the ticks spent inside NCCL since the previous safe point into nanoseconds (by the ratio of
// ticks to CLOCK_MONOTONIC over the same interval, so no calibration is needed) and adds the step's wall
// time and wait time to the totals in SafePointRecord, which the agent reads at each heartbeat.
//
// Ticks: the time-stamp counter on x86-64 (about 20 ns a read here, half of clock_gettime through the vDSO;
// constant and non-stop on every CPU of the last decade), CLOCK_MONOTONIC nanoseconds elsewhere.
//
// What it means where: on hostnccl (and any NCCL whose calls block until done) the time inside a call is
// the time the rank waited for its peers plus the transfer itself; the rest of the step is compute. With a
// real NCCL on a GPU a call only enqueues work, so this split says nothing; the GPU design (events recorded
// on the stream around each collective) is in docs/stragglers.md and not built yet.
#pragma once

#include <time.h>

#include <atomic>
#include <cstdint>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

namespace trainmover::shim {

inline uint64_t ReadTicks() {
#if defined(__x86_64__)
  return __rdtsc();
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
#endif
}

// Ticks spent inside blocking NCCL calls, by every thread of the process, since the start.
constinit inline std::atomic<uint64_t> g_comm_wait_ticks{0};

// Whether calls are timed (TRAINMOVER_STEP_TIMING, set once when the shim initialises, before any
// communicator exists). Off: no tick is read and no step is accounted (state.cc), so the agent sends no window.
constinit inline std::atomic<bool> g_comm_timing{true};
inline bool CommTiming() { return g_comm_timing.load(std::memory_order_relaxed); }

// Brackets one forwarded call: construct before it, destroy after. Off: one predictable branch each way
// (t0_ 0 means not timed: a tick count is never 0).
class CommWaitScope {
 public:
  CommWaitScope() : t0_(CommTiming() ? ReadTicks() : 0) {}
  ~CommWaitScope() {
    if (t0_) g_comm_wait_ticks.fetch_add(ReadTicks() - t0_, std::memory_order_relaxed);
  }
  CommWaitScope(const CommWaitScope&) = delete;
  CommWaitScope& operator=(const CommWaitScope&) = delete;

 private:
  uint64_t t0_;
};

}  // namespace trainmover::shim
