// SPDX-License-Identifier: Apache-2.0
// Failures give errors, never hangs: abort from another thread unblocks a waiting operation (and its peer);
// a peer that dies is reported as ncclRemoteError; the survivors shrink it away with NCCL_SHRINK_ABORT; a
// frozen peer (no EOF) is detected by HOSTNCCL_TIMEOUT_MS, also while the transport is busy with other messages;
// a rank that never shows up fails the bootstrap.
// Each case would hang forever without the behaviour it tests; the harness kills it after 50 s.
#include <sys/mman.h>

#include <atomic>
#include <new>

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
// with a message, is not aborted and does not hang. On one host UCX's cma reads the dying peer's memory; UCX 1.13
// makes that read's failure (ESRCH) an abort of the survivor unless the endpoint has an error callback (before
// 2026-12-02 only peer-failure mode endpoints had one, and the default mode aborted the survivor about one run in
// three; docs/hostnccl.md, "Transport"). peer_errors (HOSTNCCL_PEER_ERRORS, or nullptr for the default), algo
// (HOSTNCCL_ALGO, or nullptr) and victim choose the endpoints' mode, the algorithm and the rank that dies: with
// "ring" and a middle rank, the chain AllReduce loses a link while its neighbours wait on it and on each other.
int KilledMidOpBody(int rank, int n, const ncclUniqueId& id, int victim, const char* peer_errors, const char* algo) {
  int failures = 0;
  if (peer_errors) setenv("HOSTNCCL_PEER_ERRORS", peer_errors, 1);
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

// What the ranks of one case share (an anonymous MAP_SHARED page mapped before the fork, reset per case).
struct Shared {
  std::atomic<int> sent{0};        // messages rank 2 has sent to rank 0
  std::atomic<int> rank0_done{0};  // rank 0's operation has returned
  std::atomic<int> finished{0};    // ranks done with their part (the communicators are aborted after all)
  std::atomic<int> rank0_pid{0};   // set when rank 0 is about to wait
};

bool BoundedWait(const std::atomic<int>& v, int at_least, int seconds) {
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  while (v.load() < at_least && std::chrono::steady_clock::now() < end) usleep(1000);
  return v.load() >= at_least;
}

// The transport stays busy but the operation gets none of its data: rank 0's ring AllReduce waits on rank 1 (alive
// and silent: it never joins) and on rank 2, which keeps sending point-to-point messages to rank 0 instead, every
// 10 ms. Rank 0's UCX worker therefore finds work on nearly every pass (as it did towards a ring peer that was
// SIGKILLed but whose TCP connections were not closed yet: docs/reliability.md). HOSTNCCL_TIMEOUT_MS counts only the
// operation's own completed requests, so rank 0 fails with ncclRemoteError ("no progress") while rank 2 is still
// sending. When worker activity counted as progress, rank 0 waited until rank 2 gave up after 30 s (rank 2 fails).
int BusyTransportBody(int rank, int n, const ncclUniqueId& id, Shared* sh) {
  int failures = 0;
  setenv("HOSTNCCL_TIMEOUT_MS", "1500", 1);
  setenv("HOSTNCCL_ALGO", "ring", 1);
  setenv("UCX_LOG_LEVEL", "error", 1);  // rank 0's teardown warns once per unmatched message otherwise
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, n, id, rank));
  if (rank == 0) {
    HT_EXPECT(BoundedWait(sh->sent, 1, 30), "rank 2 sent nothing");
    int32_t x = 1;
    ncclResult_t r = ncclAllReduce(&x, &x, 1, ncclInt32, ncclSum, comm, nullptr);
    const int sent_by_then = sh->sent.load();
    sh->rank0_done = 1;
    HT_EXPECT(r == ncclRemoteError, "allreduce with a silent peer and a busy transport returned %d", r);
    HT_EXPECT(strstr(ncclGetLastError(comm), "no progress") != nullptr, "last error: %s", ncclGetLastError(comm));
    HT_EXPECT(sent_by_then > 1, "rank 2 sent %d messages while rank 0 waited", sent_by_then);
  } else if (rank == 2) {
    const int32_t token = 7;
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!sh->rank0_done.load() && std::chrono::steady_clock::now() < end) {
      HT_NCCL(ncclSend(&token, 1, ncclInt32, 0, comm, nullptr));  // eager: completes without a receive
      ++sh->sent;
      usleep(10000);
    }
    HT_EXPECT(sh->rank0_done.load(), "rank 0 still waiting after 30 s of traffic that was not its operation's");
  }
  ++sh->finished;
  HT_EXPECT(BoundedWait(sh->finished, n, 40), "ranks did not finish");
  HT_NCCL(ncclCommAbort(comm));
  return failures;
}

// The waiting rank itself did not run: rank 0 waits in a receive and is stopped (SIGSTOP) by rank 1 for 1.5 times
// HOSTNCCL_TIMEOUT_MS (hostnccl excuses up to twice), continued, and only then sent its message (as when a whole job stood still on a loaded host
// or a paused VM). The time rank 0 did not run is not counted against its peers, so the receive succeeds; counted,
// rank 0 failed with "no progress" on its first pass after SIGCONT.
int StoppedWaiterBody(int rank, int n, const ncclUniqueId& id, Shared* sh) {
  int failures = 0;
  setenv("HOSTNCCL_TIMEOUT_MS", "2000", 1);
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, n, id, rank));
  int32_t x = 0;
  if (rank == 0) {
    sh->rank0_pid = getpid();
    ncclResult_t r = ncclRecv(&x, 1, ncclInt32, 1, comm, nullptr);
    HT_EXPECT(r == ncclSuccess && x == 42, "recv after being stopped returned %d (%s), value %d", r,
              ncclGetLastError(comm), x);
  } else {
    HT_EXPECT(BoundedWait(sh->rank0_pid, 1, 30), "rank 0 never got to its receive");
    usleep(300000);  // rank 0 is in its wait loop by now (were it not yet, the case would only be weaker)
    kill(sh->rank0_pid, SIGSTOP);
    usleep(3000000);
    kill(sh->rank0_pid, SIGCONT);
    usleep(200000);  // rank 0 runs again before there is anything to receive
    x = 42;
    HT_NCCL(ncclSend(&x, 1, ncclInt32, 0, comm, nullptr));
  }
  ++sh->finished;
  HT_EXPECT(BoundedWait(sh->finished, n, 40), "ranks did not finish");
  HT_NCCL(ncclCommDestroy(comm));
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

// hn_faults [NAME ROUNDS]: without arguments every case, each its usual number of rounds (the suite); with them
// only the cases whose name contains NAME, ROUNDS times each (to loop one case, e.g. "chain" 100).
int main(int argc, char** argv) {
  auto* sh = static_cast<Shared*>(
      mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (sh == MAP_FAILED) return 1;
  struct Case {
    const char* name;
    int rounds;
    std::function<int()> run;
  };
  const Case cases[] = {
      {"abort from another thread", 1, [] { return ht::RunRanks(2, AbortBody); }},
      {"dead peer + shrink(ABORT)", 1, [] { return ht::RunRanks(4, DeadPeerBody, 50, 1u << 3); }},
      {"peer killed mid-allreduce", 3,
       [] {
         return ht::RunRanks(
             2, [](int r, int n, const ncclUniqueId& id) { return KilledMidOpBody(r, n, id, 1, nullptr, nullptr); }, 50,
             1u << 1);
       }},
      {"peer killed mid-allreduce, peer-failure mode", 1,
       [] {
         return ht::RunRanks(
             2, [](int r, int n, const ncclUniqueId& id) { return KilledMidOpBody(r, n, id, 1, "all", nullptr); }, 50,
             1u << 1);
       }},
      {"middle of the chain killed mid-allreduce", 2,
       [] {
         return ht::RunRanks(
             3, [](int r, int n, const ncclUniqueId& id) { return KilledMidOpBody(r, n, id, 1, nullptr, "ring"); }, 50,
             1u << 1);
       }},
      {"frozen peer timeout", 1, [] { return ht::RunRanks(2, FrozenPeerBody); }},
      {"busy transport, silent operation", 1,
       [sh] {
         new (sh) Shared();
         return ht::RunRanks(3, [sh](int r, int n, const ncclUniqueId& id) { return BusyTransportBody(r, n, id, sh); });
       }},
      {"waiter stopped, its peer on time", 1,
       [sh] {
         new (sh) Shared();
         return ht::RunRanks(2, [sh](int r, int n, const ncclUniqueId& id) { return StoppedWaiterBody(r, n, id, sh); });
       }},
      {"missing rank at bootstrap", 1, [] { return ht::RunRanks(1, MissingRankBody); }},
  };
  const char* only = argc > 2 ? argv[1] : nullptr;
  const int rounds = argc > 2 ? atoi(argv[2]) : 0;
  int f = 0, ran = 0;
  for (const Case& c : cases) {
    if (only && !strstr(c.name, only)) continue;
    for (int round = 0; round < (only ? rounds : c.rounds); ++round, ++ran) {
      auto start = std::chrono::steady_clock::now();
      int k = c.run();
      f += k;
      printf("%s (round %d, %.1f s): %s\n", c.name, round,
             std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), k ? "FAIL" : "ok");
      fflush(stdout);
    }
  }
  if (ran == 0) f = 1;  // a NAME that matches nothing is an error, not a pass
  printf("%s: %d failures in %d runs\n", f ? "FAIL" : "PASS", f, ran);
  return f ? 1 : 0;
}
