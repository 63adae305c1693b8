// SPDX-License-Identifier: Apache-2.0
// One rank as its own program, for tests that place ranks in different network namespaces (or hosts).
// Rank 0 creates the unique id and writes it to IDFILE; the others wait for the file. Every rank checks an
// AllReduce, an AllGather and a send/recv ring, then destroys the communicator.
//   usage: hn_rank RANK NRANKS IDFILE
// HN_RANK_KILL_AFTER_INIT_MS=N: instead, N ms after init (its worker not progressed meanwhile), the rank kills
// itself (SIGKILL), as a process that dies or leaves while its peers are still connecting to it.
#include <fstream>

#include "hn_harness.h"

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: hn_rank RANK NRANKS IDFILE\n");
    return 2;
  }
  int rank = atoi(argv[1]), n = atoi(argv[2]), failures = 0;
  std::string path = argv[3];
  ncclUniqueId id;
  if (rank == 0) {
    HT_NCCL(ncclGetUniqueId(&id));
    std::string tmp = path + ".tmp";
    std::ofstream(tmp, std::ios::binary).write(id.internal, sizeof(id.internal));
    if (rename(tmp.c_str(), path.c_str()) != 0) return 1;
  } else {
    for (int i = 0;; ++i) {
      std::ifstream f(path, std::ios::binary);
      if (f && f.read(id.internal, sizeof(id.internal))) break;
      if (i > 3000) {
        fprintf(stderr, "rank %d: no id file %s\n", rank, path.c_str());
        return 1;
      }
      usleep(10000);
    }
  }
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, n, id, rank));
  if (const char* kill_ms = getenv("HN_RANK_KILL_AFTER_INIT_MS")) {
    usleep(static_cast<useconds_t>(atoi(kill_ms)) * 1000);
    raise(SIGKILL);
  }
  std::vector<int64_t> x(1000, rank + 1), g(1000 * n);
  HT_NCCL(ncclAllReduce(x.data(), x.data(), x.size(), ncclInt64, ncclSum, comm, nullptr));
  int bad = 0;
  for (int64_t v : x) bad += v != static_cast<int64_t>(n) * (n + 1) / 2;
  std::vector<int64_t> mine(1000, rank);
  HT_NCCL(ncclAllGather(mine.data(), g.data(), 1000, ncclInt64, comm, nullptr));
  for (int r = 0; r < n; ++r)
    for (int i = 0; i < 1000; ++i) bad += g[r * 1000 + i] != r;
  int32_t out = rank, in = -1;
  HT_NCCL(ncclGroupStart());
  HT_NCCL(ncclSend(&out, 1, ncclInt32, (rank + 1) % n, comm, nullptr));
  HT_NCCL(ncclRecv(&in, 1, ncclInt32, (rank + n - 1) % n, comm, nullptr));
  HT_NCCL(ncclGroupEnd());
  bad += in != (rank + n - 1) % n;
  HT_EXPECT(bad == 0, "rank %d: %d wrong", rank, bad);
  HT_NCCL(ncclCommDestroy(comm));
  printf("rank %d: %s\n", rank, failures ? "FAIL" : "ok");
  return failures ? 1 : 0;
}
