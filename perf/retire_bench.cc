// SPDX-License-Identifier: Apache-2.0
// retire_bench: the first operations on a new communicator while the old one is destroyed beside them, as after a
// live migration's switch (docs/migration.md: tm-retire destroys the old communicators while the application
// runs on the replacements). One forked process per rank. Each round: a new communicator is made (the
// "replacement"), the ranks meet on the old one, then the old one is destroyed on a second thread while the main
// thread runs --ops AllReduces on the new one ("beside"), or destroyed only after them ("after"); rounds alternate
// the two, so both see the same machine. Prints, per placement, the medians over rounds of the slowest rank's
// first operation, of its --ops operations, of its destroy (wall and CPU) and of its communicator init.
// Run it once per setting to compare settings (HOSTNCCL_UCX=lean|ucx, docs/hostnccl.md "What a worker costs").
//
// --nice N runs the destroying thread at nice N (19: the idle-priority retire docs/hostnccl.md decided against).
//
//   retire_bench [-n ranks] [--rounds R] [--ops K] [--count floats] [--nice N]
#include <nccl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Args {
  int nranks = 4, rounds = 10, ops = 10;
  size_t count = 20000;  // floats: tm-train's default gradient
  int nice = 0;          // the destroying thread's nice value (19: it runs when nothing else wants the core)
};

// What one rank measured in one round (ms).
struct Sample {
  int round = 0;
  double first_ms = 0, ops_ms = 0, destroy_ms = 0, destroy_cpu_ms = 0, init_ms = 0;
};

double NowMs() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double ThreadCpuMs() {
  timespec t{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

#define RB_OK(call)                                                                                           \
  do {                                                                                                        \
    ncclResult_t r_ = (call);                                                                                 \
    if (r_ != ncclSuccess) {                                                                                  \
      fprintf(stderr, "rank %d: %s: %s (%s)\n", rank, #call, ncclGetErrorString(r_), ncclGetLastError(nullptr)); \
      return 1;                                                                                               \
    }                                                                                                         \
  } while (0)

// Rank 0 makes each communicator's id and writes it to every other rank's pipe.
int NewComm(int rank, const Args& a, int id_read_fd, const std::vector<int>& id_write_fds, ncclComm_t* comm) {
  ncclUniqueId id;
  if (rank == 0) {
    RB_OK(ncclGetUniqueId(&id));
    for (int r = 1; r < a.nranks; ++r) {
      if (write(id_write_fds[r], &id, sizeof id) != static_cast<ssize_t>(sizeof id)) return 1;
    }
  } else if (read(id_read_fd, &id, sizeof id) != static_cast<ssize_t>(sizeof id)) {
    return 1;
  }
  RB_OK(ncclCommInitRank(comm, a.nranks, id, rank));
  return 0;
}

int RunRank(int rank, const Args& a, int id_read_fd, const std::vector<int>& id_write_fds, int out_fd) {
  std::vector<float> buf(a.count, 1.0f);
  ncclComm_t old_comm = nullptr;
  if (NewComm(rank, a, id_read_fd, id_write_fds, &old_comm)) return 1;
  for (int i = 0; i < 5; ++i) RB_OK(ncclAllReduce(buf.data(), buf.data(), a.count, ncclFloat32, ncclSum, old_comm, nullptr));
  for (int round = 0; round < a.rounds; ++round) {
    Sample s;
    s.round = round;
    const double t_init = NowMs();
    ncclComm_t comm = nullptr;
    if (NewComm(rank, a, id_read_fd, id_write_fds, &comm)) return 1;
    s.init_ms = NowMs() - t_init;
    // The switch: every rank is here (the last operation on the old communicator), then the old one goes.
    RB_OK(ncclAllReduce(buf.data(), buf.data(), 1, ncclFloat32, ncclSum, old_comm, nullptr));
    const bool beside = round % 2 == 0;
    auto destroy = [&s, &a, old_comm] {
      if (a.nice != 0) setpriority(PRIO_PROCESS, static_cast<id_t>(gettid()), a.nice);
      const double t = NowMs(), c = ThreadCpuMs();
      ncclCommDestroy(old_comm);
      s.destroy_cpu_ms = ThreadCpuMs() - c;
      s.destroy_ms = NowMs() - t;
    };
    std::thread retire;
    if (beside) retire = std::thread(destroy);
    const double t0 = NowMs();
    for (int i = 0; i < a.ops; ++i) {
      RB_OK(ncclAllReduce(buf.data(), buf.data(), a.count, ncclFloat32, ncclSum, comm, nullptr));
      if (i == 0) s.first_ms = NowMs() - t0;
    }
    s.ops_ms = NowMs() - t0;
    if (beside) {
      retire.join();
    } else {
      destroy();
    }
    old_comm = comm;
    if (write(out_fd, &s, sizeof s) != static_cast<ssize_t>(sizeof s)) return 1;
  }
  RB_OK(ncclCommDestroy(old_comm));
  return 0;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[(v.size() - 1) / 2];
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto next = [&] { return i + 1 < argc ? std::atoi(argv[++i]) : -1; };
    if (k == "-n") {
      a.nranks = next();
    } else if (k == "--rounds") {
      a.rounds = next();
    } else if (k == "--ops") {
      a.ops = next();
    } else if (k == "--nice") {
      a.nice = next();
    } else if (k == "--count") {
      a.count = static_cast<size_t>(next());
    } else {
      fprintf(stderr, "usage: retire_bench [-n ranks] [--rounds R] [--ops K] [--count floats] [--nice N]\n");
      return 2;
    }
  }
  if (a.nranks < 2 || a.rounds < 2 || a.ops < 1 || a.count < 1) {
    fprintf(stderr, "retire_bench: need -n >= 2, --rounds >= 2, --ops >= 1, --count >= 1\n");
    return 2;
  }
  std::vector<int> id_r(a.nranks), id_w(a.nranks);
  for (int r = 0; r < a.nranks; ++r) {
    int p[2];
    if (pipe(p) != 0) return 1;
    id_r[r] = p[0];
    id_w[r] = p[1];
  }
  int out[2];
  if (pipe(out) != 0) return 1;
  std::vector<pid_t> pids;
  for (int r = 0; r < a.nranks; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      close(out[0]);
      _exit(RunRank(r, a, id_r[r], id_w, out[1]));
    }
    pids.push_back(pid);
  }
  close(out[1]);
  // The slowest rank of each round, per measure.
  std::vector<Sample> worst(a.rounds);
  Sample s;
  while (read(out[0], &s, sizeof s) == static_cast<ssize_t>(sizeof s)) {
    if (s.round < 0 || s.round >= a.rounds) continue;
    Sample& w = worst[s.round];
    w.first_ms = std::max(w.first_ms, s.first_ms);
    w.ops_ms = std::max(w.ops_ms, s.ops_ms);
    w.destroy_ms = std::max(w.destroy_ms, s.destroy_ms);
    w.destroy_cpu_ms = std::max(w.destroy_cpu_ms, s.destroy_cpu_ms);
    w.init_ms = std::max(w.init_ms, s.init_ms);
  }
  int failed = 0;
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    failed += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  const char* ucx = getenv("HOSTNCCL_UCX");
  printf("# retire_bench: %d ranks, %d rounds, %d AllReduces of %zu floats per round, HOSTNCCL_UCX=%s, destroy at "
         "nice %d; medians over rounds of the slowest rank (ms)\n",
         a.nranks, a.rounds, a.ops, a.count, ucx ? ucx : "(default)", a.nice);
  printf("# %-7s %8s %8s %9s %12s %8s\n", "destroy", "1st op", "ops", "destroy", "destroy cpu", "init");
  for (int beside = 1; beside >= 0; --beside) {
    std::vector<double> f, o, d, c, in;
    for (int r = beside ? 0 : 1; r < a.rounds; r += 2) {
      f.push_back(worst[r].first_ms);
      o.push_back(worst[r].ops_ms);
      d.push_back(worst[r].destroy_ms);
      c.push_back(worst[r].destroy_cpu_ms);
      in.push_back(worst[r].init_ms);
    }
    printf("  %-7s %8.2f %8.2f %9.2f %12.2f %8.1f\n", beside ? "beside" : "after", Median(f), Median(o), Median(d),
           Median(c), Median(in));
  }
  if (failed) fprintf(stderr, "retire_bench: %d rank(s) failed\n", failed);
  return failed ? 1 : 0;
}
