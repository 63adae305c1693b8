// SPDX-License-Identifier: Apache-2.0
// Groups: send/recv ring exchange, all-pairs exchange (self included), collectives fused with send/recv in a
// group (in different orders on different ranks), several collectives in one group, nested groups, and
// ncclGroupSimulateEnd.
//   usage: hn_groups NRANKS
#include "hn_harness.h"

namespace {

int Body(int rank, int n, const ncclUniqueId& id) {
  int failures = 0;
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, n, id, rank));
  const size_t count = 1031;
  auto val = [](int from, int to, size_t i) { return static_cast<int32_t>(from * 100000 + to * 1000 + i % 997); };

  // Ring: send to rank+1, receive from rank-1, in one group; receive posted first on even ranks.
  {
    std::vector<int32_t> sb(count), rb(count, -1);
    int next = (rank + 1) % n, prev = (rank + n - 1) % n;
    for (size_t i = 0; i < count; ++i) sb[i] = val(rank, next, i);
    HT_NCCL(ncclGroupStart());
    if (rank % 2) {
      HT_NCCL(ncclSend(sb.data(), count, ncclInt32, next, comm, nullptr));
      HT_NCCL(ncclRecv(rb.data(), count, ncclInt32, prev, comm, nullptr));
    } else {
      HT_NCCL(ncclRecv(rb.data(), count, ncclInt32, prev, comm, nullptr));
      HT_NCCL(ncclSend(sb.data(), count, ncclInt32, next, comm, nullptr));
    }
    HT_NCCL(ncclGroupEnd());
    int bad = 0;
    for (size_t i = 0; i < count; ++i) bad += rb[i] != val(prev, rank, i);
    HT_EXPECT(bad == 0, "ring: %d wrong", bad);
  }
  // All pairs, self included, two rounds (message order between a pair is preserved).
  for (int round = 0; round < 2; ++round) {
    std::vector<int32_t> sb(count * n), rb(count * n, -1);
    for (int p = 0; p < n; ++p)
      for (size_t i = 0; i < count; ++i) sb[p * count + i] = val(rank, p, i) + round;
    HT_NCCL(ncclGroupStart());
    for (int k = 0; k < n; ++k) {
      int p = (rank + k) % n;
      HT_NCCL(ncclSend(sb.data() + p * count, count, ncclInt32, p, comm, nullptr));
      HT_NCCL(ncclRecv(rb.data() + p * count, count, ncclInt32, p, comm, nullptr));
    }
    HT_NCCL(ncclGroupEnd());
    int bad = 0;
    for (int p = 0; p < n; ++p)
      for (size_t i = 0; i < count; ++i) bad += rb[p * count + i] != val(p, rank, i) + round;
    HT_EXPECT(bad == 0, "all-pairs round %d: %d wrong", round, bad);
  }
  // Collectives fused with send/recv, nested groups; the send comes before the allreduce on odd ranks only.
  {
    std::vector<float> a(count), b(count);
    std::vector<int64_t> ga(3), gb(3 * n);
    std::vector<int32_t> sb(count), rb(count, -1);
    int next = (rank + 1) % n, prev = (rank + n - 1) % n;
    for (size_t i = 0; i < count; ++i) {
      a[i] = static_cast<float>(rank + 1);
      sb[i] = val(rank, next, i);
    }
    for (int k = 0; k < 3; ++k) ga[k] = rank * 10 + k;
    HT_NCCL(ncclGroupStart());
    if (rank % 2) HT_NCCL(ncclSend(sb.data(), count, ncclInt32, next, comm, nullptr));
    HT_NCCL(ncclGroupStart());
    HT_NCCL(ncclAllReduce(a.data(), b.data(), count, ncclFloat32, ncclSum, comm, nullptr));
    HT_NCCL(ncclGroupStart());
    HT_NCCL(ncclRecv(rb.data(), count, ncclInt32, prev, comm, nullptr));
    HT_NCCL(ncclGroupEnd());
    HT_NCCL(ncclAllGather(ga.data(), gb.data(), 3, ncclInt64, comm, nullptr));
    HT_NCCL(ncclGroupEnd());
    if (rank % 2 == 0) HT_NCCL(ncclSend(sb.data(), count, ncclInt32, next, comm, nullptr));
    HT_NCCL(ncclGroupEnd());
    int bad = 0;
    for (size_t i = 0; i < count; ++i) bad += b[i] != static_cast<float>(n * (n + 1) / 2);
    for (size_t i = 0; i < count; ++i) bad += rb[i] != val(prev, rank, i);
    for (int r = 0; r < n; ++r)
      for (int k = 0; k < 3; ++k) bad += gb[r * 3 + k] != r * 10 + k;
    HT_EXPECT(bad == 0, "fused group: %d wrong", bad);
  }
  // Group error: a bad argument inside a group is reported by the call and by ncclGroupEnd.
  {
    int32_t x = 0;
    HT_NCCL(ncclGroupStart());
    ncclResult_t r1 = ncclSend(&x, 1, ncclInt32, n + 5, comm, nullptr);
    ncclResult_t r2 = ncclGroupEnd();
    HT_EXPECT(r1 == ncclInvalidArgument && r2 == ncclInvalidArgument, "bad peer in group: %d %d", r1, r2);
    HT_EXPECT(ncclGroupEnd() == ncclInvalidUsage, "GroupEnd without GroupStart");
  }
  // GroupSimulateEnd: ends the group without running it.
  {
    std::vector<float> a(count, 1.0f);
    ncclSimInfo_t sim = NCCL_SIM_INFO_INITIALIZER;
    HT_NCCL(ncclGroupStart());
    HT_NCCL(ncclAllReduce(a.data(), a.data(), count, ncclFloat32, ncclSum, comm, nullptr));
    HT_NCCL(ncclGroupSimulateEnd(&sim));
    HT_EXPECT(sim.estimatedTime >= 0 && a[0] == 1.0f, "simulate: time %f a0 %f", sim.estimatedTime, a[0]);
    ncclSimInfo_t bad{};
    HT_NCCL(ncclGroupStart());
    HT_EXPECT(ncclGroupSimulateEnd(&bad) == ncclInvalidArgument, "uninitialised simInfo");
    HT_EXPECT(ncclGroupSimulateEnd(&sim) == ncclInvalidUsage, "simulate end outside a group");
    HT_NCCL(ncclGroupStart());  // NULL: a plain ncclGroupEnd
    HT_NCCL(ncclAllReduce(a.data(), a.data(), count, ncclFloat32, ncclSum, comm, nullptr));
    HT_NCCL(ncclGroupSimulateEnd(nullptr));
    HT_EXPECT(a[0] == static_cast<float>(n), "GroupSimulateEnd(NULL) ran the group: a0 %f", a[0]);
  }
  // The communicator still works after all that.
  {
    int32_t x = rank, y = -1;
    HT_NCCL(ncclAllReduce(&x, &y, 1, ncclInt32, ncclSum, comm, nullptr));
    HT_EXPECT(y == n * (n - 1) / 2, "final allreduce %d", y);
  }
  HT_NCCL(ncclCommDestroy(comm));
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? atoi(argv[1]) : 2;
  int f = ht::RunRanks(n, Body, 55);
  printf("%s: %d failures\n", f ? "FAIL" : "PASS", f);
  return f ? 1 : 0;
}
