// SPDX-License-Identifier: Apache-2.0
// hostnccl_bench: a collective benchmark in the shape of nccl-tests, multi-process (one forked process per
// rank), using only the nccl.h API and linked by SONAME (libnccl.so.2: hostnccl here, any NCCL in
// principle), with ucx_perftest's tag_bw bandwidth at the same sizes in the same run for a ratio.
//
//   hostnccl_bench [-n ranks] [-b minbytes] [-e maxbytes] [-f factor] [--iters N] [--warmup N] [--repeat R]
//                  [--op allreduce|allgather|reducescatter|broadcast|reduce|alltoall|sendrecv|all]
//                  [--quick] [--no-perftest] [--tls T] [--algo A,B,...] [--wait W,V,...] [--json FILE]
//
// Side by side: each size of each op is measured --repeat times (default 3), and after each measurement, while
// the ranks wait (blocked in read, not spinning), ucx_perftest tag_bw runs at the same size; the row shows the medians
// and the ratio of the medians, with the range of the per-repeat ratios, so that a load change on a shared
// machine moves both figures alike. The last line is the verdict on the goal of docs/benchmarks.md: AllReduce
// busbw at >= 4 MiB >= 50% of tag_bw. First line(s): the CPU time a rank uses while it waits 500 ms in a receive
// (what a waiting rank takes from the others when ranks outnumber cores), one per communicator.
//
// Columns as nccl-tests: size (bytes, the total buffer as nccl-tests counts it), count (elements), type,
// redop, root, then out-of-place and in-place time (us, the slowest rank's average over the timed loop,
// which starts and ends with a one-element allreduce as a barrier), algbw = size/time and
// busbw = algbw * factor (allreduce 2(n-1)/n; allgather, reducescatter, alltoall (n-1)/n; others 1), and
// #wrong (elements not bit-identical to the exact expected value, summed over ranks). Inputs are small
// integers in float so every sum is exact. GB = 1e9 bytes.
//
// --algo A,B,...: one communicator per value of HOSTNCCL_ALGO (hostnccl's algorithm choice; another NCCL ignores
// it), each made by a split after setting the variable; every repeat of every size then measures them in turn,
// each followed by its ucx_perftest, so the algorithms are compared side by side under the same load.
// --wait W,V,...: the same with HOSTNCCL_WAIT (spin, block: how a waiting operation idles); with --algo too, one
// communicator per pair. Each communicator's row is labelled with its values (e.g. "ring/block").
#include <nccl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iomanip>
#include <map>
#include <sstream>
#include <vector>

#include "perf_util.h"

namespace {

enum class Op { kAllReduce, kAllGather, kReduceScatter, kBroadcast, kReduce, kAlltoAll, kSendRecv };
const char* kOpNames[] = {"allreduce", "allgather", "reducescatter", "broadcast", "reduce", "alltoall", "sendrecv"};

struct Args {
  int nranks = 2;
  size_t min_bytes = 1 << 10, max_bytes = size_t{64} << 20;
  int factor = 4;
  int iters = 20, warmup = 3, repeat = 3;
  std::vector<Op> ops = {Op::kAllReduce};
  bool perftest = true;
  std::string tls, json;
  // One communicator per variant: the HOSTNCCL_ALGO and HOSTNCCL_WAIT values to set before making it by a split, and
  // its label. Empty: the environment's, one communicator, label "-".
  struct Variant {
    std::string label, algo, wait;
  };
  std::vector<Variant> variants;
};

std::vector<std::string> SplitList(const std::string& v) {
  std::vector<std::string> out;
  std::istringstream list(v);
  for (std::string x; std::getline(list, x, ',');)
    if (!x.empty()) out.push_back(x);
  return out;
}

// Every pair of --algo and --wait values (one list may be empty).
std::vector<Args::Variant> Variants(const std::vector<std::string>& algos, const std::vector<std::string>& waits) {
  std::vector<Args::Variant> out;
  for (size_t i = 0; i < std::max<size_t>(algos.size(), 1); ++i) {
    for (size_t j = 0; j < std::max<size_t>(waits.size(), 1); ++j) {
      Args::Variant v{"", i < algos.size() ? algos[i] : "", j < waits.size() ? waits[j] : ""};
      v.label = v.algo.empty() ? v.wait : v.wait.empty() ? v.algo : v.algo + "/" + v.wait;
      out.push_back(v);
    }
  }
  if (algos.empty() && waits.empty()) out.clear();
  return out;
}

double BusFactor(Op op, int n) {
  switch (op) {
    case Op::kAllReduce:
      return 2.0 * (n - 1) / n;
    case Op::kAllGather:
    case Op::kReduceScatter:
    case Op::kAlltoAll:
      return static_cast<double>(n - 1) / n;
    default:
      return 1.0;
  }
}

// Input element i of rank r, and the exact expected outputs. Values are small integers: sums are exact.
float In(int rank, size_t i) { return static_cast<float>((rank + 1) * static_cast<int>(i % 7 + 1)); }

struct Sizes {
  size_t send_count, recv_count;  // elements per rank
};

// nccl-tests' convention: `bytes` is the larger buffer (allgather: recv, reducescatter: send).
Sizes CountsFor(Op op, size_t bytes, int n) {
  size_t count = bytes / sizeof(float);
  switch (op) {
    case Op::kAllGather:
      return {count / n, (count / n) * n};
    case Op::kReduceScatter:
      return {(count / n) * n, count / n};
    case Op::kAlltoAll:
      return {(count / n) * n, (count / n) * n};
    default:
      return {count, count};
  }
}

struct Result {
  double time_us[2] = {0, 0};  // out-of-place, in-place
  uint64_t wrong[2] = {0, 0};
};

#define NCCL_OK(call)                                                                        \
  do {                                                                                       \
    ncclResult_t r_ = (call);                                                                \
    if (r_ != ncclSuccess) {                                                                 \
      fprintf(stderr, "hostnccl_bench: %s failed: %s (%s)\n", #call, ncclGetErrorString(r_), \
              ncclGetLastError(nullptr));                                                    \
      _exit(3);                                                                              \
    }                                                                                        \
  } while (0)

void Issue(Op op, ncclComm_t comm, int rank, int n, const float* send, float* recv, const Sizes& s) {
  switch (op) {
    case Op::kAllReduce:
      NCCL_OK(ncclAllReduce(send, recv, s.send_count, ncclFloat32, ncclSum, comm, nullptr));
      break;
    case Op::kAllGather:
      NCCL_OK(ncclAllGather(send, recv, s.send_count, ncclFloat32, comm, nullptr));
      break;
    case Op::kReduceScatter:
      NCCL_OK(ncclReduceScatter(send, recv, s.recv_count, ncclFloat32, ncclSum, comm, nullptr));
      break;
    case Op::kBroadcast:
      NCCL_OK(ncclBroadcast(send, recv, s.send_count, ncclFloat32, 0, comm, nullptr));
      break;
    case Op::kReduce:
      NCCL_OK(ncclReduce(send, recv, s.send_count, ncclFloat32, ncclSum, 0, comm, nullptr));
      break;
    case Op::kAlltoAll:
      NCCL_OK(ncclAlltoAll(send, recv, s.send_count / n, ncclFloat32, comm, nullptr));
      break;
    case Op::kSendRecv: {
      NCCL_OK(ncclGroupStart());
      NCCL_OK(ncclSend(send, s.send_count, ncclFloat32, (rank + 1) % n, comm, nullptr));
      NCCL_OK(ncclRecv(recv, s.recv_count, ncclFloat32, (rank + n - 1) % n, comm, nullptr));
      NCCL_OK(ncclGroupEnd());
      break;
    }
  }
}

void Barrier(ncclComm_t comm) {
  float x = 0, y = 0;
  NCCL_OK(ncclAllReduce(&x, &y, 1, ncclFloat32, ncclSum, comm, nullptr));
}

float Expected(Op op, int rank, int n, size_t j, const Sizes& s) {
  float tri = static_cast<float>(n * (n + 1) / 2);
  switch (op) {
    case Op::kAllReduce:
      return tri * static_cast<float>(j % 7 + 1);
    case Op::kReduce:
      return rank == 0 ? tri * static_cast<float>(j % 7 + 1) : NAN;  // NAN: not checked
    case Op::kAllGather:
      return In(static_cast<int>(j / s.send_count), j % s.send_count);
    case Op::kReduceScatter:
      return tri * static_cast<float>((rank * s.recv_count + j) % 7 + 1);
    case Op::kBroadcast:
      return In(0, j);
    case Op::kAlltoAll: {
      size_t per = s.send_count / n;
      int src = static_cast<int>(j / per);
      return In(src, rank * per + j % per);
    }
    case Op::kSendRecv:
      return In((rank + n - 1) % n, j);
  }
  return 0;
}

// One size of one op on this rank: out-of-place then in-place. Returns the rank's own figures.
Result RunSize(Op op, ncclComm_t comm, int rank, int n, size_t bytes, const Args& a) {
  Sizes s = CountsFor(op, bytes, n);
  size_t buf_count = std::max(s.send_count, s.recv_count);
  std::vector<float> send(buf_count), recv(buf_count);
  Result res;
  for (int inplace = 0; inplace < 2; ++inplace) {
    auto fill = [&] {
      for (size_t i = 0; i < s.send_count; ++i) send[i] = In(rank, i);
      std::fill(recv.begin(), recv.end(), -1.0f);
    };
    // In place, nccl-tests' layout: allgather's input is this rank's slice of the output; reducescatter's
    // output is this rank's slice of the input; others share one buffer.
    float* rbuf = recv.data();
    const float* sbuf = send.data();
    if (inplace) {
      rbuf = send.data();
      if (op == Op::kAllGather) sbuf = send.data() + rank * s.send_count;
      if (op == Op::kReduceScatter) rbuf = send.data() + rank * s.recv_count;
    }
    auto prepare = [&] {
      fill();
      if (inplace && op == Op::kAllGather) {
        send.assign(buf_count, -1.0f);
        for (size_t i = 0; i < s.send_count; ++i) send[rank * s.send_count + i] = In(rank, i);
      }
    };
    // NCCL does not allow in-place alltoall; an in-place send/recv pair would race on one buffer.
    if ((op == Op::kAlltoAll || op == Op::kSendRecv) && inplace) {
      res.time_us[1] = NAN;
      continue;
    }
    prepare();
    for (int i = 0; i < a.warmup; ++i) Issue(op, comm, rank, n, sbuf, rbuf, s);
    // Start together and stop when every rank is done: a rooted operation can return on the root before
    // the others have received (eager sends), so the timed loop ends with a one-element barrier.
    Barrier(comm);
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < a.iters; ++i) Issue(op, comm, rank, n, sbuf, rbuf, s);
    Barrier(comm);
    double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / a.iters;
    res.time_us[inplace] = us;
    // Check once more from fresh inputs (repeated reductions in place would compound).
    prepare();
    Issue(op, comm, rank, n, sbuf, rbuf, s);
    uint64_t wrong = 0;
    for (size_t j = 0; j < s.recv_count; ++j) {
      float e = Expected(op, rank, n, j, s);
      if (std::isnan(e)) continue;
      if (std::memcmp(&rbuf[j], &e, sizeof(float)) != 0) ++wrong;
    }
    res.wrong[inplace] = wrong;
  }
  return res;
}

// Rank 0 hands each measurement's row to the parent; every rank then waits for its go (a byte on go_fd, shared)
// before the next one, so the parent's ucx_perftest at that size runs while the ranks are blocked in read().
int RunRank(int rank, const Args& a, int id_read_fd, int id_write_fds[], int out_fd, int go_fd) {
  ncclUniqueId id;
  if (rank == 0) {
    NCCL_OK(ncclGetUniqueId(&id));
    for (int r = 1; r < a.nranks; ++r) {
      if (write(id_write_fds[r], &id, sizeof(id)) != sizeof(id)) return 1;
    }
  } else if (read(id_read_fd, &id, sizeof(id)) != sizeof(id)) {
    return 1;
  }
  ncclComm_t comm;
  NCCL_OK(ncclCommInitRank(&comm, a.nranks, id, rank));
  std::vector<ncclComm_t> comms;  // one per variant, else just comm
  for (const Args::Variant& v : a.variants) {
    if (!v.algo.empty()) setenv("HOSTNCCL_ALGO", v.algo.c_str(), 1);
    if (!v.wait.empty()) setenv("HOSTNCCL_WAIT", v.wait.c_str(), 1);
    comms.emplace_back();
    NCCL_OK(ncclCommSplit(comm, 0, rank, &comms.back(), nullptr));
  }
  if (comms.empty()) comms.push_back(comm);
  // Idle wait, on each communicator: rank 0 waits kIdleMs in a receive that rank 1 satisfies late; the CPU time
  // rank 0 used meanwhile is what a waiting rank takes from the others when ranks outnumber cores.
  char go = 0;
  for (size_t k = 0; k < comms.size() && a.nranks > 1; ++k) {
    Barrier(comms[k]);
    if (rank < 2) {
      constexpr int kIdleMs = 500;
      int32_t x = 0;
      if (rank == 1) {
        usleep(kIdleMs * 1000);
        NCCL_OK(ncclSend(&x, 1, ncclInt32, 0, comms[k], nullptr));
      } else {
        timespec c0, c1;
        auto w0 = std::chrono::steady_clock::now();
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c0);
        NCCL_OK(ncclRecv(&x, 1, ncclInt32, 1, comms[k], nullptr));
        clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &c1);
        double cpu_ms = (c1.tv_sec - c0.tv_sec) * 1e3 + (c1.tv_nsec - c0.tv_nsec) / 1e6;
        double wall_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - w0).count();
        std::ostringstream line;
        line << "idle " << (a.variants.empty() ? "-" : a.variants[k].label) << ' ' << wall_ms << ' ' << cpu_ms << '\n';
        const std::string out = line.str();
        if (write(out_fd, out.data(), out.size()) != static_cast<ssize_t>(out.size())) return 1;
      }
    }
    if (read(go_fd, &go, 1) != 1) return 1;
  }
  for (Op op : a.ops) {
    for (size_t bytes = a.min_bytes; bytes <= a.max_bytes; bytes *= a.factor) {
      for (int rep = 0; rep < a.repeat; ++rep) {
       for (size_t k = 0; k < comms.size(); ++k) {
        Result r = RunSize(op, comms[k], rank, a.nranks, bytes, a);
        // Slowest rank's time, total #wrong: reduced with the library under test (as nccl-tests uses MPI).
        double t[2] = {r.time_us[0], std::isnan(r.time_us[1]) ? 0 : r.time_us[1]}, tmax[2];
        double w[2] = {static_cast<double>(r.wrong[0]), static_cast<double>(r.wrong[1])}, wsum[2];
        NCCL_OK(ncclAllReduce(t, tmax, 2, ncclFloat64, ncclMax, comm, nullptr));
        NCCL_OK(ncclAllReduce(w, wsum, 2, ncclFloat64, ncclSum, comm, nullptr));
        if (rank == 0) {  // every rank then waits for the go, so no rank runs while ucx_perftest does
          std::ostringstream line;
          line << kOpNames[static_cast<int>(op)] << ' ' << (a.variants.empty() ? "-" : a.variants[k].label) << ' '
               << bytes << ' ' << CountsFor(op, bytes, a.nranks).recv_count
               << ' ' << tmax[0] << ' ' << (std::isnan(r.time_us[1]) ? -1.0 : tmax[1]) << ' '
               << static_cast<uint64_t>(wsum[0]) << ' ' << static_cast<uint64_t>(wsum[1]) << '\n';
          const std::string out = line.str();
          if (write(out_fd, out.data(), out.size()) != static_cast<ssize_t>(out.size())) return 1;
        }
        if (read(go_fd, &go, 1) != 1) return 1;
       }
      }
      if (bytes > a.max_bytes / a.factor) break;
    }
  }
  for (ncclComm_t c : comms) {
    if (c != comm) NCCL_OK(ncclCommDestroy(c));
  }
  NCCL_OK(ncclCommDestroy(comm));
  return 0;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  std::vector<std::string> algos, waits;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string { return i + 1 < argc ? argv[++i] : "0"; };
    if (k == "-n" || k == "--nranks")
      a.nranks = std::atoi(val().c_str());
    else if (k == "-b")
      a.min_bytes = perf::ParseSize(val());
    else if (k == "-e")
      a.max_bytes = perf::ParseSize(val());
    else if (k == "-f")
      a.factor = std::max(2, std::atoi(val().c_str()));
    else if (k == "--iters")
      a.iters = std::max(1, std::atoi(val().c_str()));
    else if (k == "--warmup")
      a.warmup = std::max(0, std::atoi(val().c_str()));
    else if (k == "--repeat")
      a.repeat = std::max(1, std::atoi(val().c_str()));
    else if (k == "--quick") {
      a.min_bytes = 1 << 10;
      a.max_bytes = size_t{4} << 20;
      a.factor = 16;
      a.iters = 5;
      a.repeat = 1;
    } else if (k == "--no-perftest")
      a.perftest = false;
    else if (k == "--tls")
      a.tls = val();
    else if (k == "--json")
      a.json = val();
    else if (k == "--algo")
      algos = SplitList(val());
    else if (k == "--wait")
      waits = SplitList(val());
    else if (k == "--op") {
      std::string o = val();
      a.ops.clear();
      for (int j = 0; j < 7; ++j) {
        if (o == "all" || o == kOpNames[j]) a.ops.push_back(static_cast<Op>(j));
      }
      if (a.ops.empty()) {
        fprintf(stderr, "unknown op %s\n", o.c_str());
        return 2;
      }
    } else {
      fprintf(stderr,
              "usage: %s [-n ranks] [-b min] [-e max] [-f factor] [--iters N] [--warmup N] [--repeat R] [--op NAME|all] "
              "[--quick] [--no-perftest] [--tls T] [--algo A,B] [--wait W,V] [--json FILE]\n",
              argv[0]);
      return 2;
    }
  }
  a.variants = Variants(algos, waits);
  if (a.nranks < 1 || a.min_bytes < sizeof(float) * a.nranks || a.max_bytes < a.min_bytes) {
    fprintf(stderr, "hostnccl_bench: need ranks >= 1 and %zu <= -b <= -e\n", sizeof(float) * a.nranks);
    return 2;
  }
  if (!a.tls.empty()) setenv("UCX_TLS", a.tls.c_str(), 1);
  int ver = 0;
  ncclGetVersion(&ver);
  // Fork the ranks; rank 0 hands the unique id to the others through pipes and its rows to us.
  std::vector<int> id_r(a.nranks, -1), id_w(a.nranks, -1);
  for (int r = 1; r < a.nranks; ++r) {
    int p[2];
    if (pipe(p) != 0) return 1;
    id_r[r] = p[0];
    id_w[r] = p[1];
  }
  int out[2], go[2];
  if (pipe(out) != 0 || pipe(go) != 0) return 1;
  std::vector<pid_t> pids;
  for (int r = 0; r < a.nranks; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      close(out[0]);
      close(go[1]);
      _exit(RunRank(r, a, id_r[r], id_w.data(), out[1], go[0]));
    }
    pids.push_back(pid);
  }
  close(out[1]);
  close(go[0]);
  FILE* rows = fdopen(out[0], "r");

  printf("# hostnccl_bench: nranks %d (processes), NCCL version %d, iters %d, warmup %d, repeat %d, UCX_TLS=%s\n",
         a.nranks, ver, a.iters, a.warmup, a.repeat, a.tls.empty() ? "(default)" : a.tls.c_str());
  printf("# each row: medians of %d measurements, each followed by ucx_perftest tag_bw at its size; ratio = median "
         "busbw / median tag_bw [range of the per-measurement ratios]\n",
         a.repeat);
  printf("# %-20s %12s %6s %6s %5s  %9s %8s %8s %6s  %9s %8s %8s %6s  %10s %7s %13s\n", "op/size [algo]", "count", "type",
         "redop", "root", "oop us", "algbw", "busbw", "#wrong", "ip us", "algbw", "busbw", "#wrong", "tag_bw GB/s",
         "ratio", "range");
  fflush(stdout);
  uint64_t wrong_total = 0;
  std::ostringstream json;
  json << "{\"bench\":\"hostnccl_bench\",\"nranks\":" << a.nranks << ",\"nccl_version\":" << ver
       << ",\"iters\":" << a.iters << ",\"repeat\":" << a.repeat << ",\"tls\":\"" << a.tls << "\",";
  bool first = true;
  std::map<std::string, std::vector<std::pair<size_t, double>>> goal;  // per algo, allreduce at >= 4 MiB: (size, ratio)
  char line[512];
  const std::string gos(static_cast<size_t>(a.nranks), 'g');
  struct Acc {  // the measurements of one size so far, per algorithm
    std::vector<double> t0s, t1s, tags, ratios;
    uint64_t w0 = 0, w1 = 0;
  };
  std::map<std::string, Acc> accs;
  while (fgets(line, sizeof(line), rows) != nullptr) {
    std::istringstream in(line);
    std::string opname, algo;
    size_t bytes = 0, count = 0;
    double t0 = 0, t1 = 0;
    uint64_t rw0 = 0, rw1 = 0;
    if (!(in >> opname)) break;
    if (opname == "idle") {
      std::string variant;
      double wall_ms = 0, cpu_ms = 0;
      in >> variant >> wall_ms >> cpu_ms;
      printf("# idle wait%s: rank 0 waited %.0f ms in ncclRecv and used %.1f ms of CPU (%.0f%% of a core)\n",
             variant == "-" ? "" : (" [" + variant + "]").c_str(), wall_ms, cpu_ms,
             wall_ms > 0 ? 100 * cpu_ms / wall_ms : 0);
      fflush(stdout);
      const std::string suffix = variant == "-" ? "" : "_" + variant;  // idle_wait_ms, or idle_wait_ms_block, ...
      json << "\"idle_wait_ms" << suffix << "\":" << wall_ms << ",\"idle_wait_cpu_ms" << suffix << "\":" << cpu_ms
           << ",";
      if (write(go[1], gos.data(), gos.size()) != static_cast<ssize_t>(gos.size())) break;
      continue;
    }
    if (!(in >> algo >> bytes >> count >> t0 >> t1 >> rw0 >> rw1)) break;
    auto& [t0s, t1s, tags, ratios, w0, w1] = accs[algo];
    int opi = static_cast<int>(std::find(std::begin(kOpNames), std::end(kOpNames), opname) - std::begin(kOpNames));
    double f = BusFactor(static_cast<Op>(opi), a.nranks);
    double tag = -1;
    if (a.perftest) {
      std::string err;
      int iters = static_cast<int>(std::clamp<size_t>((size_t{1} << 30) / bytes, 10, 100000));
      tag = perf::UcxPerftest("tag_bw", bytes, iters, a.tls, "", &err);
      if (tag < 0) fprintf(stderr, "hostnccl_bench: %s\n", err.c_str());
    }
    // One byte per rank: each rank reads one (a pipe read of one byte takes one), and all go on.
    if (write(go[1], gos.data(), gos.size()) != static_cast<ssize_t>(gos.size())) break;
    t0s.push_back(t0);
    t1s.push_back(t1);
    w0 += rw0;
    w1 += rw1;
    if (tag > 0) {
      tags.push_back(tag);
      ratios.push_back(bytes / (t0 * 1e3) * f / tag);
    }
    if (static_cast<int>(t0s.size()) < a.repeat) continue;
    // The last measurement of this size: print the medians.
    const double mt0 = Median(t0s), mt1 = Median(t1s), mtag = tags.empty() ? -1 : Median(tags);
    const double alg0 = bytes / (mt0 * 1e3), alg1 = mt1 > 0 ? bytes / (mt1 * 1e3) : 0;
    const double ratio = mtag > 0 ? alg0 * f / mtag : 0;
    char rs[16] = "n/a", range[32] = "";
    if (mtag > 0) {
      snprintf(rs, sizeof(rs), "%.3f", ratio);
      snprintf(range, sizeof(range), "[%.2f-%.2f]", *std::min_element(ratios.begin(), ratios.end()),
               *std::max_element(ratios.begin(), ratios.end()));
    }
    const std::string label = opname + " " + perf::FormatSize(bytes) + (algo == "-" ? "" : " " + algo);
    printf("  %-20s %12zu %6s %6s %5s  %9.1f %8.3f %8.3f %6llu  %9.1f %8.3f %8.3f %6llu  %10.3f %7s %13s\n",
           label.c_str(), count, "float",
           (opi == 0 || opi == 2 || opi == 4) ? "sum" : "none", (opi == 3 || opi == 4) ? "0" : "-1", mt0, alg0,
           alg0 * f, static_cast<unsigned long long>(w0), mt1, alg1, alg1 * f, static_cast<unsigned long long>(w1),
           mtag, rs, range);
    fflush(stdout);
    if (opi == 0 && bytes >= (size_t{4} << 20) && mtag > 0) goal[algo].emplace_back(bytes, ratio);
    wrong_total += w0 + w1;
    json << (first ? "\"rows\":[" : ",") << "{\"op\":\"" << opname << "\",\"algo\":\"" << algo << "\",\"size\":" << bytes << ",\"count\":" << count
         << ",\"oop_time_us\":" << mt0 << ",\"oop_algbw\":" << alg0 << ",\"oop_busbw\":" << alg0 * f
         << ",\"oop_wrong\":" << w0 << ",\"ip_time_us\":" << mt1 << ",\"ip_algbw\":" << alg1
         << ",\"ip_busbw\":" << alg1 * f << ",\"ip_wrong\":" << w1 << ",\"perftest_tag_bw_gbps\":" << mtag
         << ",\"ratio_busbw_to_tag_bw\":" << ratio << ",\"ratio_min\":"
         << (ratios.empty() ? 0 : *std::min_element(ratios.begin(), ratios.end())) << ",\"ratio_max\":"
         << (ratios.empty() ? 0 : *std::max_element(ratios.begin(), ratios.end())) << "}";
    first = false;
    t0s.clear();
    t1s.clear();
    tags.clear();
    ratios.clear();
    w0 = w1 = 0;
  }
  fclose(rows);
  close(go[1]);
  int failures = 0;
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    failures += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  if (failures) fprintf(stderr, "hostnccl_bench: %d rank(s) failed\n", failures);
  json << (first ? "\"rows\":[" : "") << "],\"wrong_total\":" << wrong_total << ",\"failed_ranks\":" << failures << "}\n";
  printf("# Out of bounds values : %llu %s\n", static_cast<unsigned long long>(wrong_total),
         wrong_total ? "FAILED" : "OK");
  for (const auto& [algo, pts] : goal) {  // one verdict per algorithm
    bool met = true;
    std::ostringstream list;
    for (auto& [sz, r] : pts) {
      met = met && r >= 0.5;
      list << ' ' << perf::FormatSize(sz) << ' ' << std::fixed << std::setprecision(2) << r;
    }
    printf("# goal: allreduce busbw >= 50%% of ucx_perftest tag_bw at >= 4 MiB%s: %s (%s)\n",
           algo == "-" ? "" : (" [" + algo + "]").c_str(), met ? "met" : "NOT met", list.str().substr(1).c_str());
  }
  if (!a.json.empty()) std::ofstream(a.json) << json.str();
  return (failures || wrong_total) ? 1 : 0;
}
