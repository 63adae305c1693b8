// SPDX-License-Identifier: Apache-2.0
// Failures give errors, never hangs: abort from another thread unblocks a waiting operation (and its peer);
// a peer that dies is reported as ncclRemoteError; the survivors shrink it away with NCCL_SHRINK_ABORT; a
// frozen peer (no EOF) is detected by HOSTNCCL_TIMEOUT_MS; a rank that never shows up fails the bootstrap.
// Each case would hang forever without the behaviour it tests; the harness kills it after 50 s.
#include "hn_harness.h"

namespace {

int AbortBody(int rank, int n, const ncclUniqueId& id) {
  int failures = 0;
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, n, id, rank));
  int32_t x = 0;
  if (rank == 0) {
    std::thread aborter([comm] {
      usleep(300000);
      ncclCommAbort(comm);
    });
    ncclResult_t r = ncclRecv(&x, 1, ncclInt32, 1, comm, nullptr);  // rank 1 never sends
    aborter.join();
    HT_EXPECT(r != ncclSuccess, "recv on aborted comm returned success");
  } else {
    ncclResult_t r = ncclRecv(&x, 1, ncclInt32, 0, comm, nullptr);  // the aborting peer never sends either
    HT_EXPECT(r == ncclRemoteError, "recv from aborted peer returned %d", r);
    ncclResult_t a = ncclSuccess;
    HT_NCCL(ncclCommGetAsyncError(comm, &a));
    HT_EXPECT(a == ncclRemoteError, "async error %d", a);
    HT_NCCL(ncclCommAbort(comm));
  }
  return failures;
}

int DeadPeerBody(int rank, int n, const ncclUniqueId& id) {
  int failures = 0;
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, n, id, rank));
  int32_t x = 1, y = 0;
  HT_NCCL(ncclAllReduce(&x, &y, 1, ncclInt32, ncclSum, comm, nullptr));
  if (rank == n - 1) raise(SIGKILL);  // killed: dies without a word to anyone
  // Noticed between operations too: ncclCommGetAsyncError turns to ncclRemoteError.
  ncclResult_t a = ncclSuccess;
  for (int i = 0; i < 20000 && a == ncclSuccess; ++i) {
    HT_NCCL(ncclCommGetAsyncError(comm, &a));
    if (a == ncclSuccess) usleep(1000);
  }
  HT_EXPECT(a == ncclRemoteError, "async error after a peer died: %d", a);
  ncclResult_t r = ncclAllReduce(&x, &y, 1, ncclInt32, ncclSum, comm, nullptr);
  HT_EXPECT(r == ncclRemoteError, "allreduce with a dead peer returned %d", r);
  HT_EXPECT(strlen(ncclGetLastError(comm)) > 0, "no last error");
  // Survivors shrink the dead rank away; it takes no part.
  int ex[] = {n - 1};
  ncclComm_t sh;
  HT_NCCL(ncclCommShrink(comm, ex, 1, &sh, nullptr, NCCL_SHRINK_ABORT));
  x = rank + 1;
  HT_NCCL(ncclAllReduce(&x, &y, 1, ncclInt32, ncclSum, sh, nullptr));
  HT_EXPECT(y == (n - 1) * n / 2, "allreduce after shrink: %d", y);
  HT_NCCL(ncclCommAbort(comm));
  HT_NCCL(ncclCommDestroy(sh));
  return failures;
}

// A peer SIGKILLed in the middle of large AllReduces (rendezvous transfers in flight): the survivor gets an error
// with a message, is not aborted and does not hang. HOSTNCCL_PEER_ERRORS=all: on one host UCX's cma would read the
// dead peer's memory, which UCX 1.13 turns into an abort of the survivor unless the endpoint is in peer-failure
// mode (the default puts only endpoints to other hosts in it; docs/hostnccl.md, "Liveness and timeouts").
// algo (HOSTNCCL_ALGO, or nullptr for the default) and victim choose the algorithm and the rank that dies: with
// "ring" and a middle rank, the chain AllReduce loses a link while its neighbours wait on it and on each other.
int KilledMidOpBody(int rank, int n, const ncclUniqueId& id, int victim, const char* algo) {
  int failures = 0;
  setenv("HOSTNCCL_PEER_ERRORS", "all", 1);
  if (algo) setenv("HOSTNCCL_ALGO", algo, 1);
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, n, id, rank));
  const size_t count = size_t{16} << 20;  // 64 MiB of floats: each operation takes milliseconds
  std::vector<float> a(count, 1.0f), b(count, 0.0f);
  HT_NCCL(ncclAllReduce(a.data(), b.data(), count, ncclFloat32, ncclSum, comm, nullptr));
  if (rank == victim) {
    std::thread([] {
      usleep(20000);
      raise(SIGKILL);
    }).detach();
  }
  ncclResult_t r = ncclSuccess;
  for (int i = 0; i < 2000 && r == ncclSuccess; ++i) {
    r = ncclAllReduce(a.data(), b.data(), count, ncclFloat32, ncclSum, comm, nullptr);
  }
  HT_EXPECT(r == ncclRemoteError || r == ncclSystemError, "allreduce with a peer killed mid-operation returned %d",
            r);
  HT_EXPECT(strlen(ncclGetLastError(comm)) > 0, "no last error");
  HT_NCCL(ncclCommAbort(comm));
  return failures;
}

int FrozenPeerBody(int rank, int n, const ncclUniqueId& id) {
  int failures = 0;
  setenv("HOSTNCCL_TIMEOUT_MS", "1500", 1);
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, n, id, rank));
  int32_t pids[2] = {0, 0}, me = getpid();
  HT_NCCL(ncclAllGather(&me, pids, 1, ncclInt32, comm, nullptr));
  if (rank == 1) {
    raise(SIGSTOP);  // frozen: its sockets stay open, nothing moves
    _exit(0);
  }
  int32_t x = 1;
  ncclResult_t r = ncclAllReduce(&x, &x, 1, ncclInt32, ncclSum, comm, nullptr);
  HT_EXPECT(r == ncclRemoteError, "allreduce with a frozen peer returned %d", r);
  kill(pids[1], SIGCONT);
  HT_NCCL(ncclCommAbort(comm));
  return failures;
}

int MissingRankBody(int, int, const ncclUniqueId& id) {
  int failures = 0;
  setenv("HOSTNCCL_TIMEOUT_MS", "1000", 1);
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRank(&comm, 2, id, 0);  // rank 1 never comes
  HT_EXPECT(r != ncclSuccess && r != ncclInProgress, "init without rank 1 returned %d", r);
  return failures;
}

}  // namespace

int main() {
  int f = 0, k;
  f += k = ht::RunRanks(2, AbortBody);
  printf("abort from another thread: %s\n", k ? "FAIL" : "ok");
  f += k = ht::RunRanks(4, DeadPeerBody, 50, 1u << 3);
  printf("dead peer + shrink(ABORT): %s\n", k ? "FAIL" : "ok");
  for (int round = 0; round < 3; ++round) {
    f += k = ht::RunRanks(
        2, [](int r, int n, const ncclUniqueId& id) { return KilledMidOpBody(r, n, id, 1, nullptr); }, 50, 1u << 1);
    printf("peer killed mid-allreduce (round %d): %s\n", round, k ? "FAIL" : "ok");
  }
  for (int round = 0; round < 2; ++round) {
    f += k = ht::RunRanks(
        3, [](int r, int n, const ncclUniqueId& id) { return KilledMidOpBody(r, n, id, 1, "ring"); }, 50, 1u << 1);
    printf("middle of the chain killed mid-allreduce (round %d): %s\n", round, k ? "FAIL" : "ok");
  }
  f += k = ht::RunRanks(2, FrozenPeerBody);
  printf("frozen peer timeout: %s\n", k ? "FAIL" : "ok");
  f += k = ht::RunRanks(1, MissingRankBody);
  printf("missing rank at bootstrap: %s\n", k ? "FAIL" : "ok");
  printf("%s: %d failures\n", f ? "FAIL" : "PASS", f);
  return f ? 1 : 0;
}
