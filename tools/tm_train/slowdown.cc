// SPDX-License-Identifier: Apache-2.0
#include "slowdown.h"

#include <signal.h>

#include <atomic>
#include <thread>

#include "model.h"

namespace tm_train {

namespace {

std::atomic<bool> g_toggled{false};  // flipped by SIGUSR1

void OnSigusr1(int) { g_toggled.store(!g_toggled.load(std::memory_order_relaxed), std::memory_order_relaxed); }

constexpr uint64_t kJitterStream = 0x6a1773721ull;  // the jitter's random stream (model.h Hash)

}  // namespace

void Slowdown::Start(const Options& o, int rank, bool original_worker) {
  o_ = o;
  rank_ = rank;
  slow_from_start_ = original_worker && o.slow_rank == rank && o.factor > 1;
  struct sigaction sa {};
  sa.sa_handler = OnSigusr1;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, nullptr);
}

void Slowdown::EndStep(int64_t step, int64_t emulated_ms) {
  using Ms = std::chrono::duration<double, std::milli>;
  const double computed = Ms(computed_).count() + static_cast<double>(emulated_ms);
  computed_ = {};
  bool slow = slow_from_start_ && step >= o_.from_step;
  if (g_toggled.load(std::memory_order_relaxed)) slow = !slow;
  const double factor = o_.factor > 1 ? o_.factor : 2.0;
  double sleep_ms = slow ? (factor - 1) * computed : 0;
  if (o_.jitter_ms > 0) {
    const uint64_t h = Hash(kJitterStream, static_cast<uint64_t>(rank_), static_cast<uint64_t>(step), 0, 0);
    sleep_ms += o_.jitter_ms * static_cast<double>(h >> 11) / 9007199254740992.0;  // uniform [0, 1)
  }
  if (sleep_ms > 0) std::this_thread::sleep_for(Ms(sleep_ms));
}

}  // namespace tm_train
