// SPDX-License-Identifier: Apache-2.0
// Regression test for a race between communicator teardown and a following split: after a parity split
// (color = rank % 2) has been used and destroyed, a split in which rank 0 opts out (NCCL_SPLIT_NOCOLOR) and a
// shrink that excludes rank 0 must succeed with correct results, every time, also when the new communicator is
// destroyed right after it was made. The whole sequence is repeated many times in one set of processes, with
// rank 0 racing ahead into the next iteration (it takes no part in the second split and the shrink) so that
// teardown and bootstrap of different communicators overlap.
//   usage: hn_split_race NRANKS ITERATIONS   (NRANKS >= 3)
#include "hn_harness.h"

namespace {

// AllReduce of (rank + 1 + iteration) on comm, checked against the closed form; also a 3-element AllGather.
int Check(ncclComm_t comm, int expect_n, int iter, const char* what) {
  int failures = 0, n = -1, rank = -1;
  HT_NCCL(ncclCommCount(comm, &n));
  HT_NCCL(ncclCommUserRank(comm, &rank));
  HT_EXPECT(n == expect_n, "iteration %d %s: count %d expected %d", iter, what, n, expect_n);
  if (n != expect_n) return failures;
  int64_t x = rank + 1 + iter, y = -1;
  HT_NCCL(ncclAllReduce(&x, &y, 1, ncclInt64, ncclSum, comm, nullptr));
  const int64_t want = static_cast<int64_t>(n) * (n + 1) / 2 + static_cast<int64_t>(n) * iter;
  HT_EXPECT(y == want, "iteration %d %s: allreduce %lld expected %lld", iter, what, static_cast<long long>(y),
            static_cast<long long>(want));
  int32_t mine[3] = {rank, iter, -rank}, all[3 * 8] = {};
  if (n > 8) return failures + 1;
  HT_NCCL(ncclAllGather(mine, all, 3, ncclInt32, comm, nullptr));
  for (int r = 0; r < n; ++r) {
    HT_EXPECT(all[3 * r] == r && all[3 * r + 1] == iter && all[3 * r + 2] == -r, "iteration %d %s: allgather slot %d",
              iter, what, r);
  }
  return failures;
}

int Body(int rank, int n, const ncclUniqueId& id, int iterations) {
  int failures = 0;
  ncclComm_t world = nullptr;
  HT_NCCL(ncclCommInitRank(&world, n, id, rank));
  for (int it = 0; it < iterations && failures == 0; ++it) {
    // 1. Parity split, used and destroyed.
    ncclComm_t par = nullptr;
    HT_NCCL(ncclCommSplit(world, rank % 2, rank, &par, nullptr));
    HT_EXPECT(par != nullptr, "iteration %d: parity split gave no communicator", it);
    if (!par) break;
    failures += Check(par, (n + 1 - rank % 2) / 2, it, "parity split");
    HT_NCCL(ncclCommDestroy(par));
    // 2. Rank 0 opts out; the others form one communicator (keys reversed on odd iterations). On even
    //    iterations they destroy it at once: its rank 0 used to return from init, and tear down its worker's
    //    shared-memory segment, before its peer had attached it. On odd iterations it is used.
    const bool use = it % 2 == 1;
    ncclComm_t rest = reinterpret_cast<ncclComm_t>(0x1);
    HT_NCCL(ncclCommSplit(world, rank == 0 ? NCCL_SPLIT_NOCOLOR : 7, use ? n - rank : rank, &rest, nullptr));
    if (rank == 0) {
      HT_EXPECT(rest == nullptr, "iteration %d: NOCOLOR rank got a communicator", it);
      continue;  // rank 0 races ahead into the next parity split
    }
    HT_EXPECT(rest != nullptr, "iteration %d: split without rank 0 gave no communicator", it);
    if (!rest) break;
    if (use) {
      int srank = -1;
      HT_NCCL(ncclCommUserRank(rest, &srank));
      HT_EXPECT(srank == n - 1 - rank, "iteration %d: split rank %d expected %d", it, srank, n - 1 - rank);
      failures += Check(rest, n - 1, it, "split without rank 0");
    }
    HT_NCCL(ncclCommDestroy(rest));
    // 3. Shrink without rank 0 (rank 0 takes no part, as NCCL requires of excluded ranks): used when the split
    //    was not, destroyed at once when it was.
    int ex[] = {0};
    ncclComm_t sh = nullptr;
    HT_NCCL(ncclCommShrink(world, ex, 1, &sh, nullptr, NCCL_SHRINK_DEFAULT));
    HT_EXPECT(sh != nullptr, "iteration %d: shrink gave no communicator", it);
    if (!sh) break;
    if (!use) failures += Check(sh, n - 1, it, "shrink");
    HT_NCCL(ncclCommDestroy(sh));
  }
  // Everyone is still in step on the parent.
  failures += Check(world, n, iterations, "world");
  HT_NCCL(ncclCommDestroy(world));
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  const int n = argc > 1 ? atoi(argv[1]) : 3;
  const int iterations = argc > 2 ? atoi(argv[2]) : 50;
  if (n < 3 || n > 8 || iterations < 1) {
    fprintf(stderr, "usage: hn_split_race NRANKS(3..8) ITERATIONS\n");
    return 2;
  }
  const auto t0 = std::chrono::steady_clock::now();
  int f = ht::RunRanks(
      n, [iterations](int r, int nr, const ncclUniqueId& id) { return Body(r, nr, id, iterations); }, 55);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  printf("%s: %d ranks, %d iterations, %d failures, %.1f s\n", f ? "FAIL" : "PASS", n, iterations, f, s);
  return f ? 1 : 0;
}
