// SPDX-License-Identifier: Apache-2.0
// Determinism: float sums of non-exact inputs give the same bits on every rank, on every run, through
// AllReduce, Reduce and ReduceScatter alike, and equal the sum taken in rank order 0..n-1 (the documented
// algorithm), whatever the timing (one run is perturbed with random delays), whatever the pipeline segment
// size and algorithm (HOSTNCCL_CHUNK_BYTES, HOSTNCCL_ALGO), and whichever process holds a rank: a split with
// reversed keys puts every rank in another process, and ncclCommInitAll puts all ranks in one process.
//   usage: hn_determinism NRANKS
#include <random>

#include "hn_harness.h"

namespace {

constexpr size_t kCount = 100003;
int g_pipe[2];

float Input(int rank, size_t i) {
  uint64_t h = (rank + 1) * 0x9e3779b97f4a7c15ull ^ (i * 0xbf58476d1ce4e5b9ull);
  h ^= h >> 31;
  return static_cast<float>(static_cast<double>(h % 2000003) / 7919.0 - 100.0);
}

uint64_t Hash(const void* p, size_t bytes) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < bytes; ++i) h = (h ^ static_cast<const unsigned char*>(p)[i]) * 1099511628211ull;
  return h;
}

int Body(int rank, int n, const ncclUniqueId& id, bool jitter) {
  int failures = 0;
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, n, id, rank));
  std::vector<float> in(kCount), ar(kCount), red(kCount), rs(kCount * 1), ag(kCount);
  for (size_t i = 0; i < kCount; ++i) in[i] = Input(rank, i);
  std::mt19937 rng(getpid());
  if (jitter) usleep(rng() % 20000);
  HT_NCCL(ncclAllReduce(in.data(), ar.data(), kCount, ncclFloat32, ncclSum, comm, nullptr));
  if (jitter) usleep(rng() % 20000);
  HT_NCCL(ncclReduce(in.data(), red.data(), kCount, ncclFloat32, ncclSum, 0, comm, nullptr));
  // ReduceScatter over n*chunk elements then AllGather gives the AllReduce of the first n*chunk elements.
  const size_t chunk = kCount / n;
  HT_NCCL(ncclReduceScatter(in.data(), rs.data(), chunk, ncclFloat32, ncclSum, comm, nullptr));
  HT_NCCL(ncclAllGather(rs.data(), ag.data(), chunk, ncclFloat32, comm, nullptr));
  int bad_ref = 0, bad_red = 0, bad_rs = 0;
  for (size_t i = 0; i < kCount; ++i) {
    float acc = Input(0, i);
    for (int r = 1; r < n; ++r) acc += Input(r, i);
    bad_ref += memcmp(&acc, &ar[i], 4) != 0;
    if (rank == 0) bad_red += memcmp(&red[i], &ar[i], 4) != 0;
    if (i < chunk * n) bad_rs += memcmp(&ag[i], &ar[i], 4) != 0;
  }
  HT_EXPECT(bad_ref == 0, "allreduce differs from the rank-ordered sum in %d elements", bad_ref);
  HT_EXPECT(bad_red == 0, "reduce differs from allreduce in %d elements", bad_red);
  HT_EXPECT(bad_rs == 0, "reducescatter+allgather differs from allreduce in %d elements", bad_rs);
  uint64_t h = Hash(ar.data(), kCount * 4);
  std::vector<uint64_t> all(n);
  HT_NCCL(ncclAllGather(&h, all.data(), 1, ncclUint64, comm, nullptr));
  for (int r = 0; r < n; ++r) HT_EXPECT(all[r] == h, "rank %d result hash differs", r);
  if (rank == 0 && write(g_pipe[1], &h, sizeof(h)) != sizeof(h)) ++failures;
  // Other placement, other segmentation: child rank k is held by the process of parent rank n-1-k, takes rank
  // k's inputs, and runs with 4 KiB segments (every block is many segments) and the ring.
  setenv("HOSTNCCL_CHUNK_BYTES", "4096", 1);
  setenv("HOSTNCCL_ALGO", "ring", 1);
  ncclComm_t rev = nullptr;
  HT_NCCL(ncclCommSplit(comm, 0, n - 1 - rank, &rev, nullptr));
  int rr = -1;
  HT_NCCL(ncclCommUserRank(rev, &rr));
  HT_EXPECT(rr == n - 1 - rank, "reversed split rank %d", rr);
  for (size_t i = 0; i < kCount; ++i) in[i] = Input(rr, i);
  std::vector<float> ar2(kCount), red2(kCount), rs2(kCount), ag2(kCount);
  HT_NCCL(ncclAllReduce(in.data(), ar2.data(), kCount, ncclFloat32, ncclSum, rev, nullptr));
  HT_NCCL(ncclReduce(in.data(), red2.data(), kCount, ncclFloat32, ncclSum, n - 1, rev, nullptr));
  HT_NCCL(ncclReduceScatter(in.data(), rs2.data(), chunk, ncclFloat32, ncclSum, rev, nullptr));
  HT_NCCL(ncclAllGather(rs2.data(), ag2.data(), chunk, ncclFloat32, rev, nullptr));
  HT_EXPECT(Hash(ar2.data(), kCount * 4) == h, "allreduce bits differ with another placement and segment size");
  if (rr == n - 1) HT_EXPECT(memcmp(red2.data(), ar.data(), kCount * 4) == 0, "reduce differs (other placement)");
  HT_EXPECT(memcmp(ag2.data(), ar.data(), chunk * n * 4) == 0, "reducescatter+allgather differ (other placement)");
  HT_NCCL(ncclCommDestroy(rev));
  unsetenv("HOSTNCCL_CHUNK_BYTES");
  unsetenv("HOSTNCCL_ALGO");
  HT_NCCL(ncclCommDestroy(comm));
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? atoi(argv[1]) : 4;
  if (pipe(g_pipe) != 0) return 1;
  int f = 0;
  uint64_t h[2] = {0, 0};
  for (int run = 0; run < 2; ++run) {
    if (run == 1) setenv("HOSTNCCL_SOCKET_IFADDR", "127.0.0.1", 1);  // an explicit advertised address
    f += ht::RunRanks(n, [run](int r, int nr, const ncclUniqueId& id) { return Body(r, nr, id, run == 1); });
    if (read(g_pipe[0], &h[run], sizeof(h[run])) != sizeof(h[run])) ++f;
  }
  // All ranks in this one process (ncclCommInitAll, one thread per rank in a group): the same bits again.
  {
    std::vector<ncclComm_t> comms(n);
    std::vector<std::vector<float>> in(n, std::vector<float>(kCount)), out(n, std::vector<float>(kCount));
    if (ncclCommInitAll(comms.data(), n, nullptr) != ncclSuccess) {
      fprintf(stderr, "ncclCommInitAll failed: %s\n", ncclGetLastError(nullptr));
      ++f;
    } else {
      for (int r = 0; r < n; ++r)
        for (size_t i = 0; i < kCount; ++i) in[r][i] = Input(r, i);
      ncclGroupStart();
      for (int r = 0; r < n; ++r) ncclAllReduce(in[r].data(), out[r].data(), kCount, ncclFloat32, ncclSum, comms[r], 0);
      if (ncclGroupEnd() != ncclSuccess) {
        fprintf(stderr, "InitAll allreduce failed: %s\n", ncclGetLastError(nullptr));
        ++f;
      }
      for (int r = 0; r < n; ++r) {
        if (Hash(out[r].data(), kCount * 4) != h[0]) {
          fprintf(stderr, "InitAll rank %d: allreduce bits differ from the one-process-per-rank run\n", r);
          ++f;
        }
        ncclCommDestroy(comms[r]);
      }
    }
  }
  if (h[0] != h[1]) {
    fprintf(stderr, "run hashes differ: %016llx %016llx\n", static_cast<unsigned long long>(h[0]),
            static_cast<unsigned long long>(h[1]));
    ++f;
  }
  printf("%s: %d failures (hash %016llx)\n", f ? "FAIL" : "PASS", f, static_cast<unsigned long long>(h[0]));
  return f ? 1 : 0;
}
