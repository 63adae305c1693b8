// SPDX-License-Identifier: Apache-2.0
// The joiner's sandbox answers as the leaver's real communicators do, for every creation path, from the table of
// the replaced rank (lib/core/shim_state.h, SetReplacedComms; docs/migration.md, "The sandbox"). The shim is
// linked into this program with nullnccl as the real library, and the process is a joiner with a coordinator
// (TRAINMOVER_ROLE=joiner, TRAINMOVER_COORDINATOR set by meson): this build has no agent, so the table is handed
// over by the test itself, as the agent does on REGISTER_ACK.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "core/shim_state.h"

using namespace trainmover::shim;

namespace {

ReplacedComm Entry(uint64_t index, CommKind kind, int nranks, int rank, int device, bool blocking = true) {
  return ReplacedComm{index, kind, nranks, rank, device, blocking};
}

struct Answers {
  int count = -1, rank = -1, device = -1;
  ncclResult_t async = ncclInternalError;
};
Answers Ask(ncclComm_t c) {
  Answers a;
  CHECK(ncclCommCount(c, &a.count) == ncclSuccess);
  CHECK(ncclCommUserRank(c, &a.rank) == ncclSuccess);
  CHECK(ncclCommCuDevice(c, &a.device) == ncclSuccess);
  CHECK(ncclCommGetAsyncError(c, &a.async) == ncclSuccess);
  return a;
}

uint64_t IndexOf(ncclComm_t c) { return AsVComm(c)->lineage.index; }

}  // namespace

// One program's communicators in creation order, as the leaver made them on 8 ranks as rank 5: a world (device
// 3), a TP split of 2 (rank 1), a NOCOLOR split (no communicator), a non-blocking DP split of 4 (rank 2), a
// non-blocking InitRankConfig of 8, a Scalable one, a Shrink of the world without ranks 0 and 1 (rank 3 of 6),
// and InitAll of 2 devices.
TEST_CASE("every creation path answers as the leaver's real communicator") {
  CHECK(ProcessSandboxed());  // the joiner role
  const std::vector<ReplacedComm> table = {
      Entry(0, CommKind::kInitRank, 8, 5, 3),          Entry(1, CommKind::kSplit, 2, 1, 3),
      Entry(2, CommKind::kSplit, 4, 2, 3, false),      Entry(3, CommKind::kInitRankConfig, 8, 5, 3, false),
      Entry(4, CommKind::kInitRankScalable, 8, 5, 3),  Entry(5, CommKind::kShrink, 6, 3, 3),
      Entry(6, CommKind::kInitAll, 2, 0, 0),           Entry(7, CommKind::kInitAll, 2, 1, 1),
  };
  // The first sandboxed creation waits for the table (the agent delivers it at registration).
  std::thread agent([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    SetReplacedComms(table, true);
  });
  const auto t0 = std::chrono::steady_clock::now();
  ncclUniqueId id;
  REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);  // a joiner for rank 0 makes its own id: local, random
  ncclComm_t world = nullptr;
  REQUIRE(ncclCommInitRank(&world, 8, id, 5) == ncclSuccess);
  const auto waited = std::chrono::steady_clock::now() - t0;
  agent.join();
  CHECK(waited >= std::chrono::milliseconds(150));
  CHECK(IndexOf(world) == 0);
  Answers a = Ask(world);
  CHECK(a.count == 8);
  CHECK(a.rank == 5);
  CHECK(a.device == 3);  // the leaver's device
  CHECK(a.async == ncclSuccess);

  ncclComm_t tp = nullptr, none = reinterpret_cast<ncclComm_t>(1), dp = nullptr;
  REQUIRE(ncclCommSplit(world, 5 / 2, 5, &tp, nullptr) == ncclSuccess);
  a = Ask(tp);
  CHECK(a.count == 2);  // not the parent's 8
  CHECK(a.rank == 1);
  CHECK(a.device == 3);
  REQUIRE(ncclCommSplit(world, NCCL_SPLIT_NOCOLOR, 0, &none, nullptr) == ncclSuccess);
  CHECK(none == nullptr);  // and no creation index used: the next communicator is the leaver's #2
  ncclConfig_t nb = NCCL_CONFIG_INITIALIZER;
  nb.blocking = 0;
  CHECK(ncclCommSplit(world, 5 % 2, 5, &dp, &nb) == ncclInProgress);  // as the leaver's non-blocking split
  REQUIRE(dp != nullptr);
  CHECK(IndexOf(dp) == 2);
  ncclResult_t async = ncclInProgress;
  CHECK(ncclCommGetAsyncError(dp, &async) == ncclSuccess);
  CHECK(async == ncclSuccess);  // completed by the first poll
  a = Ask(dp);
  CHECK(a.count == 4);
  CHECK(a.rank == 2);
  CHECK_FALSE(AsVComm(dp)->lineage.blocking);

  // A buffer sized from ncclCommCount takes exactly what the emulated AllGather writes.
  std::vector<float> send(16, 1.5f), recv(16 * 4 + 8, -7.0f);
  REQUIRE(ncclAllGather(send.data(), recv.data(), 16, ncclFloat, dp, nullptr) == ncclSuccess);
  for (int i = 0; i < 16 * 4; ++i) CHECK(recv[i] == 1.5f);
  for (int i = 16 * 4; i < 16 * 4 + 8; ++i) CHECK(recv[i] == -7.0f);  // nothing past nranks * count
  std::vector<float> rs(16, 0.0f);
  REQUIRE(ncclReduceScatter(send.data(), rs.data(), 4, ncclFloat, ncclSum, dp, nullptr) == ncclSuccess);
  CHECK(rs[0] == 6.0f);  // as if all 4 ranks contributed this rank's input
  CHECK(rs[4] == 0.0f);  // untouched past recvcount

  ncclComm_t cfg = nullptr, scal = nullptr, shr = nullptr, all[2] = {};
  CHECK(ncclCommInitRankConfig(&cfg, 8, id, 5, &nb) == ncclInProgress);
  CHECK(IndexOf(cfg) == 3);
  a = Ask(cfg);
  CHECK(a.async == ncclSuccess);
  CHECK(a.count == 8);
  CHECK(a.rank == 5);
  ncclUniqueId ids[2];
  memset(ids, 9, sizeof(ids));
  REQUIRE(ncclCommInitRankScalable(&scal, 8, 5, 2, ids, nullptr) == ncclSuccess);
  a = Ask(scal);
  CHECK(a.count == 8);
  CHECK(a.device == 3);
  int excl[2] = {0, 1};
  REQUIRE(ncclCommShrink(world, excl, 2, &shr, nullptr, NCCL_SHRINK_DEFAULT) == ncclSuccess);
  a = Ask(shr);
  CHECK(a.count == 6);
  CHECK(a.rank == 3);
  int devs[2] = {0, 1};
  REQUIRE(ncclCommInitAll(all, 2, devs) == ncclSuccess);
  CHECK(Ask(all[1]).rank == 1);
  CHECK(Ask(all[1]).device == 1);
  CHECK(ncclCommFinalize(tp) == ncclSuccess);
  for (ncclComm_t c : {all[0], all[1], shr, scal, cfg, dp, tp, world}) CHECK(ncclCommDestroy(c) == ncclSuccess);
}

TEST_CASE("a communicator the leaver's table does not have, or has as another kind, keeps the emulated sizes") {
  // A new table replaces the previous one; a later registration without one keeps it. Creation #8 is
  // beyond it; #9 is given as a Shrink where the program splits.
  SetReplacedComms({Entry(9, CommKind::kShrink, 2, 0, 1)}, true);
  SetReplacedComms({}, false);
  ncclUniqueId id;
  REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
  ncclComm_t world = nullptr, child = nullptr;
  REQUIRE(ncclCommInitRank(&world, 4, id, 1) == ncclSuccess);
  REQUIRE(IndexOf(world) == 8);
  Answers a = Ask(world);
  CHECK(a.count == 4);
  CHECK(a.device == 0);  // no entry: the emulated answer
  REQUIRE(ncclCommSplit(world, 0, 0, &child, nullptr) == ncclSuccess);
  a = Ask(child);
  CHECK(a.count == 4);  // the fallback: as if every rank chose this color (READY will refuse it)
  CHECK(a.rank == 1);
  CHECK(a.device == 0);
  CHECK(ncclCommDestroy(child) == ncclSuccess);
  CHECK(ncclCommDestroy(world) == ncclSuccess);
}
