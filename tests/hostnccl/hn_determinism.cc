// SPDX-License-Identifier: Apache-2.0
// Determinism: float sums of non-exact inputs give the same bits on every rank, on every run, through
// AllReduce, Reduce and ReduceScatter alike, and equal the sum taken in rank order 0..n-1 (the documented
// algorithm), whatever the timing (one run is perturbed with random delays).
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
  if (h[0] != h[1]) {
    fprintf(stderr, "run hashes differ: %016llx %016llx\n", static_cast<unsigned long long>(h[0]),
            static_cast<unsigned long long>(h[1]));
    ++f;
  }
  printf("%s: %d failures (hash %016llx)\n", f ? "FAIL" : "PASS", f, static_cast<unsigned long long>(h[0]));
  return f ? 1 : 0;
}
