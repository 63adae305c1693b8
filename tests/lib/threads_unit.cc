// SPDX-License-Identifier: Apache-2.0
// The shim under several application threads (docs/shim.md, "Threads"), on hostnccl (TRAINMOVER_NCCL_LIBRARY, set
// by meson), whose ncclCommGetAsyncError and ncclCommCount answer ncclInvalidArgument for a destroyed communicator:
//   - watchdog threads poll ncclCommGetAsyncError / ncclCommCount on a communicator while its real communicator is
//     switched again and again under them (the migration switch) and the old one destroyed at once: no call may
//     ever reach a destroyed one;
//   - a process holding several ranks (ncclCommInitAll), one thread per rank, in every communication feature.
// Meant to run under ThreadSanitizer too (./run test --sanitize thread shim_threads).
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "core/binding.h"
#include "core/shim_state.h"

using namespace trainmover::shim;

namespace {

// A 1-rank real communicator made directly on the real library (what a migration's replacement is).
ncclComm_t RealComm() {
  ncclUniqueId id;
  REQUIRE(g_real.GetUniqueId(&id) == ncclSuccess);
  ncclComm_t c = nullptr;
  REQUIRE(g_real.CommInitRank(&c, 1, id, 0) == ncclSuccess);
  return c;
}

// A 1-rank communicator made through the shim (a VComm), and its VComm.
ncclComm_t ShimComm(VComm** v) {
  ncclUniqueId id;
  REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
  ncclComm_t c = nullptr;
  REQUIRE(ncclCommInitRank(&c, 1, id, 0) == ncclSuccess);
  *v = AsVComm(c);
  REQUIRE(*v != nullptr);
  return c;
}

}  // namespace

TEST_CASE("watchdog threads poll through switches under load: no call ever sees a destroyed communicator") {
  VComm* v = nullptr;
  ncclComm_t comm = ShimComm(&v);

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> polls{0}, bad{0};
  std::vector<std::thread> watchdogs;
  for (int t = 0; t < 3; ++t) {
    watchdogs.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        ncclResult_t async = ncclInternalError;
        int n = 0;
        if (ncclCommGetAsyncError(comm, &async) != ncclSuccess || async != ncclSuccess) bad.fetch_add(1);
        if (ncclCommCount(comm, &n) != ncclSuccess || n != 1) bad.fetch_add(1);
        polls.fetch_add(1, std::memory_order_relaxed);
      }
    });
  }
  // The application thread: operations between switches; each switch as the migration does it (stage, rebind,
  // switch, destroy the old communicator at once).
  constexpr int kSwitches = 80;
  float x = 1.0f, y = 0.0f;
  for (int i = 0; i < kSwitches; ++i) {
    for (int k = 0; k < 20; ++k) CHECK(ncclAllReduce(&x, &y, 1, ncclFloat, ncclSum, comm, nullptr) == ncclSuccess);
    CHECK(y == 1.0f);
    SetNextComm(v, RealComm());
    REQUIRE(RebindObjects(v) == ncclSuccess);
    ncclComm_t old = SwitchToNext(v);
    REQUIRE(old != nullptr);  // drained: no call can still see it
    CHECK(g_real.CommDestroy(old) == ncclSuccess);
  }
  stop = true;
  for (auto& t : watchdogs) t.join();
  CHECK(bad.load() == 0);
  CHECK(polls.load() > 0);
  CHECK(v->calls[0].load() == 0);
  CHECK(v->calls[1].load() == 0);
  CHECK(ncclCommDestroy(comm) == ncclSuccess);
}

TEST_CASE("a call still inside the old communicator holds the switch; past the deadline it is never freed") {
  VComm* v = nullptr;
  ncclComm_t comm = ShimComm(&v);
  ncclComm_t first = v->real.load();
  std::atomic<bool> release{false}, holding{false};
  std::thread caller([&] {
    RealUse use(v);  // what an entry point holds during its real call
    CHECK(use.real() == first);
    holding = true;
    while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  });
  while (!holding.load()) std::this_thread::yield();
  SetNextComm(v, RealComm());
  REQUIRE(RebindObjects(v) == ncclSuccess);
  std::thread releaser([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    release = true;
  });
  const auto t0 = std::chrono::steady_clock::now();
  ncclComm_t old = SwitchToNext(v);
  CHECK(std::chrono::steady_clock::now() - t0 >= std::chrono::milliseconds(250));  // waited for the call
  CHECK(old == first);
  releaser.join();
  caller.join();
  {
    RealUse after(v);
    CHECK(after.real() != first);  // later calls see the replacement
  }
  CHECK(g_real.CommDestroy(old) == ncclSuccess);
  CHECK(ncclCommDestroy(comm) == ncclSuccess);
}

TEST_CASE("ncclCommInitAll: one thread per rank, collectives, groups, point-to-point, queries") {
  constexpr int kRanks = 3;
  ncclComm_t comms[kRanks] = {};
  int devs[kRanks] = {0, 1, 2};
  REQUIRE(ncclCommInitAll(comms, kRanks, devs) == ncclSuccess);
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int r = 0; r < kRanks; ++r) {
    threads.emplace_back([&, r] {
      int n = 0, me = -1, dev = -1;
      if (ncclCommCount(comms[r], &n) != ncclSuccess || n != kRanks) ++wrong;
      if (ncclCommUserRank(comms[r], &me) != ncclSuccess || me != r) ++wrong;
      if (ncclCommCuDevice(comms[r], &dev) != ncclSuccess) ++wrong;
      for (int step = 0; step < 20; ++step) {
        std::vector<float> in(8, static_cast<float>(r + 1)), sum(8), all(8 * kRanks);
        if (ncclAllReduce(in.data(), sum.data(), 8, ncclFloat, ncclSum, comms[r], nullptr) != ncclSuccess) ++wrong;
        if (sum[0] != 6.0f || sum[7] != 6.0f) ++wrong;
        if (ncclAllGather(in.data(), all.data(), 8, ncclFloat, comms[r], nullptr) != ncclSuccess) ++wrong;
        for (int k = 0; k < kRanks; ++k) wrong += all[static_cast<size_t>(k) * 8] != static_cast<float>(k + 1);
        // A ring of grouped Send/Recv.
        float out = static_cast<float>(10 * r), got = -1.0f;
        ncclGroupStart();
        ncclSend(&out, 1, ncclFloat, (r + 1) % kRanks, comms[r], nullptr);
        ncclRecv(&got, 1, ncclFloat, (r + kRanks - 1) % kRanks, comms[r], nullptr);
        if (ncclGroupEnd() != ncclSuccess) ++wrong;
        if (got != static_cast<float>(10 * ((r + kRanks - 1) % kRanks))) ++wrong;
        ncclResult_t async = ncclInternalError;
        if (ncclCommGetAsyncError(comms[r], &async) != ncclSuccess || async != ncclSuccess) ++wrong;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(wrong.load() == 0);
  // One thread driving every rank in one group (the other way InitAll is used).
  std::vector<float> in(4, 2.0f), out(4 * kRanks);
  ncclGroupStart();
  for (int r = 0; r < kRanks; ++r) {
    ncclAllReduce(in.data(), out.data() + 4 * r, 4, ncclFloat, ncclSum, comms[r], nullptr);
  }
  CHECK(ncclGroupEnd() == ncclSuccess);
  for (float f : out) CHECK(f == 6.0f);
  for (ncclComm_t c : comms) CHECK(ncclCommDestroy(c) == ncclSuccess);
}
