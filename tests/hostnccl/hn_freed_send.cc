// SPDX-License-Identifier: Apache-2.0
// A peer's memory that disappears under a same-host read. Rank 1 sends 4 MiB to rank 0 (a rendezvous message: on
// one host rank 0's UCX reads it straight out of rank 1's memory with cma, process_vm_readv); rank 0 posts its
// receive only after rank 1's send has failed or rank 1 has died, so the read always meets the hazard:
// - default: rank 1 revokes its communicator while the send waits (an abort of a joiner's communicator or a failed
//   collective stops it the same way). UCX cannot cancel the send, so hostnccl drains it (HOSTNCCL_DRAIN_MS) before
//   the failed ncclSend returns and rank 1 unmaps the buffer: rank 0 receives the data intact.
// - "nodrain": the same with HOSTNCCL_DRAIN_MS=0 (the behaviour before the drain): rank 0's read of the unmapped
//   buffer fails (EFAULT), which shows that the first case exercises the hazard; rank 0 gets an error, not the data.
// - "killed": rank 1 is SIGKILLed while its send waits; rank 0 posts the receive once rank 1's memory is gone
//   (ESRCH). No drain can help: rank 0 gets an error (ncclRemoteError and a message) and carries on, not aborted.
// - "killed_none": the same with HOSTNCCL_PEER_ERRORS=none (no UCX error callback): UCX 1.13 aborts rank 0
//   (SIGABRT, "process_vm_readv ... No such process"), the proof that "killed" exercises the hazard.
// (docs/hostnccl.md, "Transport".)
#include <poll.h>
#include <sys/mman.h>

#include <string>

#include "hn_harness.h"

namespace {

constexpr size_t kBytes = size_t{4} << 20;
int g_pipe[2] = {-1, -1};  // rank 1 -> rank 0: "the abort comes now" / "buffer unmapped"; EOF: rank 1 is gone
std::string g_mode;

bool ReadByte(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  char b;
  return poll(&p, 1, timeout_ms) == 1 && read(fd, &b, 1) == 1;
}

// Rank 1 is dead and its memory gone once every end of the pipe it held is closed: the kernel releases a dying
// process's memory (exit_mm) before its files (exit_files).
bool ReadEof(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  char b;
  return poll(&p, 1, timeout_ms) == 1 && read(fd, &b, 1) == 0;
}

int Receiver(const ncclUniqueId& id) {
  int failures = 0;
  close(g_pipe[1]);
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, 2, id, 0));
  const bool killed = g_mode.rfind("killed", 0) == 0;
  // The receive is posted after rank 1's operation failed (drain: while it drains; nodrain: after the unmap) or
  // after rank 1 died.
  if (killed)
    HT_EXPECT(ReadEof(g_pipe[0], 30000), "rank 1 did not die");
  else
    HT_EXPECT(ReadByte(g_pipe[0], 30000), "rank 1 never signalled");
  if (!killed) usleep(300000);
  std::vector<uint8_t> in(kBytes, 0);
  ncclResult_t r = ncclRecv(in.data(), kBytes, ncclUint8, 1, comm, nullptr);
  size_t bad = 0;
  for (size_t i = 0; i < kBytes; ++i) bad += in[i] != static_cast<uint8_t>(i * 7 + 1);
  if (g_mode.empty()) {
    HT_EXPECT(r == ncclSuccess, "receive from the aborting peer: %d (%s)", r, ncclGetLastError(comm));
    HT_EXPECT(bad == 0, "%zu of %zu bytes differ", bad, kBytes);
  } else {
    HT_EXPECT(r == ncclRemoteError, "receive of a vanished buffer: %d (%s)", r, ncclGetLastError(comm));
    HT_EXPECT(strlen(ncclGetLastError(comm)) > 0, "no last error");
    printf("rank 0: ncclRecv -> %s (%s)\n", ncclGetErrorString(r), ncclGetLastError(comm));
  }
  // Still usable as a process: the communicator goes, a new one could come (the shim's recovery does that).
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
  const bool drain = g_mode.empty(), killed = g_mode.rfind("killed", 0) == 0;
  std::thread aborter([comm, drain, killed] {
    usleep(200000);  // the send is posted and waits: rank 0 has not posted its receive
    if (killed) raise(SIGKILL);
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
  g_mode = argc > 1 ? argv[1] : "";
  if (g_mode != "" && g_mode != "nodrain" && g_mode != "killed" && g_mode != "killed_none") {
    fprintf(stderr, "usage: %s [nodrain|killed|killed_none]\n", argv[0]);
    return 2;
  }
  setenv("HOSTNCCL_DRAIN_MS", g_mode == "nodrain" ? "0" : "20000", 1);
  setenv("HOSTNCCL_CONNECT", "eager", 1);  // wire-up done in init: rank 1's send reaches rank 0 unprogressed
  if (g_mode == "killed_none") setenv("HOSTNCCL_PEER_ERRORS", "none", 1);
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
  close(g_pipe[0]);
  close(g_pipe[1]);  // rank 1 holds the last write end: rank 0 sees EOF when it dies
  int st[2];
  for (int r = 0; r < 2; ++r) waitpid(pids[r], &st[r], 0);  // the meson timeout bounds this
  for (int r = 0; r < 2; ++r) {
    printf("rank %d: %s %d\n", r, WIFEXITED(st[r]) ? "exit" : "signal",
           WIFEXITED(st[r]) ? WEXITSTATUS(st[r]) : WTERMSIG(st[r]));
  }
  auto exited_ok = [](int s) { return WIFEXITED(s) && WEXITSTATUS(s) == 0; };
  bool ok;
  const char* what;
  if (g_mode == "killed" || g_mode == "killed_none") {
    ok = WIFSIGNALED(st[1]) && WTERMSIG(st[1]) == SIGKILL;
    if (g_mode == "killed") {
      ok = ok && exited_ok(st[0]);
      what = "sender killed: the receiver gets an error and carries on";
    } else {
      ok = ok && WIFSIGNALED(st[0]) && WTERMSIG(st[0]) == SIGABRT;
      what = "sender killed, no UCX error callback: the receiver is aborted by UCX";
    }
  } else {
    ok = exited_ok(st[1]) && exited_ok(st[0]);
    what = g_mode.empty() ? "drained: the receiver gets the data" : "no drain: the receiver gets an error";
  }
  printf("%s: %s\n", what, ok ? "ok" : "FAIL");
  return ok ? 0 : 1;
}
