// SPDX-License-Identifier: Apache-2.0
// A failed operation never frees a buffer that a live peer's transport may still read. Rank 1 sends 4 MiB to rank 0
// (a rendezvous message: on one host rank 0's UCX reads it straight out of rank 1's memory with cma,
// process_vm_readv) and revokes its communicator while the send waits (an abort of a joiner's
// communicator or a failed collective stops it the same way); rank 0 posts its receive only then. UCX cannot
// cancel the send, so hostnccl drains it (HOSTNCCL_DRAIN_MS) before the failed ncclSend returns and rank 1 unmaps
// the buffer: rank 0 receives the data intact. Argument "nodrain" runs the same with HOSTNCCL_DRAIN_MS=0 (the
// behaviour before the drain) and expects rank 0 to be aborted by its UCX ("process_vm_readv ... Bad address"),
// which shows that the first case exercises the hazard (docs/hostnccl.md, "Liveness and timeouts").
#include <poll.h>
#include <sys/mman.h>

#include "hn_harness.h"

namespace {

constexpr size_t kBytes = size_t{4} << 20;
int g_pipe[2] = {-1, -1};  // rank 1 -> rank 0: "the send is posted and the abort comes now" / "buffer unmapped"

bool ReadByte(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  char b;
  return poll(&p, 1, timeout_ms) == 1 && read(fd, &b, 1) == 1;
}

int Receiver(const ncclUniqueId& id) {
  int failures = 0;
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, 2, id, 0));
  // The receive is posted after rank 1's operation failed (drain: while it drains; nodrain: after the unmap).
  HT_EXPECT(ReadByte(g_pipe[0], 30000), "rank 1 never signalled");
  usleep(300000);
  std::vector<uint8_t> in(kBytes, 0);
  ncclResult_t r = ncclRecv(in.data(), kBytes, ncclUint8, 1, comm, nullptr);
  HT_EXPECT(r == ncclSuccess, "receive from the aborting peer: %d (%s)", r, ncclGetLastError(comm));
  size_t bad = 0;
  for (size_t i = 0; i < kBytes; ++i) bad += in[i] != static_cast<uint8_t>(i * 7 + 1);
  HT_EXPECT(bad == 0, "%zu of %zu bytes differ", bad, kBytes);
  HT_NCCL(ncclCommAbort(comm));
  return failures;
}

int Sender(const ncclUniqueId& id) {
  int failures = 0;
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, 2, id, 1));
  void* mem = mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return failures + 1;
  auto* out = static_cast<uint8_t*>(mem);
  for (size_t i = 0; i < kBytes; ++i) out[i] = static_cast<uint8_t>(i * 7 + 1);
  const bool drain = atoi(getenv("HOSTNCCL_DRAIN_MS")) > 0;
  std::thread aborter([comm, drain] {
    usleep(200000);  // the send is posted and waits: rank 0 has not posted its receive
    if (drain) (void)!write(g_pipe[1], "a", 1);
    ncclCommRevoke(comm, 0);  // stops the waiting send, keeps the communicator (and rank 1 alive for rank 0)
  });
  ncclResult_t r = ncclSend(out, kBytes, ncclUint8, 0, comm, nullptr);
  aborter.join();
  HT_EXPECT(r != ncclSuccess, "the send on an aborted communicator returned success");
  munmap(mem, kBytes);  // what the application may do once its failed operation returned
  if (!drain) (void)!write(g_pipe[1], "u", 1);
  usleep(3000000);  // alive, so a read of the unmapped buffer fails with EFAULT (not ESRCH)
  HT_NCCL(ncclCommAbort(comm));
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  const bool nodrain = argc > 1 && strcmp(argv[1], "nodrain") == 0;
  setenv("HOSTNCCL_DRAIN_MS", nodrain ? "0" : "20000", 1);
  setenv("HOSTNCCL_CONNECT", "eager", 1);  // wire-up done in init: rank 1's send reaches rank 0 unprogressed
  if (pipe(g_pipe) != 0) return 1;
  ncclUniqueId id;
  if (ncclGetUniqueId(&id) != ncclSuccess) return 1;
  fflush(stdout);
  fflush(stderr);
  pid_t pids[2];
  for (int r = 0; r < 2; ++r) {
    pids[r] = fork();
    if (pids[r] == 0) _exit(std::min(r == 0 ? Receiver(id) : Sender(id), 100));
  }
  int st[2];
  for (int r = 0; r < 2; ++r) waitpid(pids[r], &st[r], 0);  // the meson timeout bounds this
  for (int r = 0; r < 2; ++r) {
    printf("rank %d: %s %d\n", r, WIFEXITED(st[r]) ? "exit" : "signal",
           WIFEXITED(st[r]) ? WEXITSTATUS(st[r]) : WTERMSIG(st[r]));
  }
  bool ok = WIFEXITED(st[1]) && WEXITSTATUS(st[1]) == 0;
  if (nodrain)
    ok = ok && WIFSIGNALED(st[0]) && WTERMSIG(st[0]) == SIGABRT;
  else
    ok = ok && WIFEXITED(st[0]) && WEXITSTATUS(st[0]) == 0;
  printf("%s: %s\n", nodrain ? "no drain: the receiver is aborted by UCX" : "drained: the receiver gets the data",
         ok ? "ok" : "FAIL");
  return ok ? 0 : 1;
}
