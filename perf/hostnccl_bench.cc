// SPDX-License-Identifier: Apache-2.0
// hostnccl_bench: a collective benchmark in the shape of nccl-tests, multi-process (one forked process per
// rank), using only the nccl.h API and linked by SONAME (libnccl.so.2: hostnccl here, any NCCL in
// principle), with ucx_perftest's tag_bw bandwidth at the same sizes in the same run for a ratio.
//
//   hostnccl_bench [-n ranks] [-b minbytes] [-e maxbytes] [-f factor] [--iters N] [--warmup N]
//                  [--op allreduce|allgather|reducescatter|broadcast|reduce|alltoall|sendrecv|all]
//                  [--quick] [--no-perftest] [--tls T] [--json FILE]
//
// Columns as nccl-tests: size (bytes, the total buffer as nccl-tests counts it), count (elements), type,
// redop, root, then out-of-place and in-place time (us, the slowest rank's average over the timed loop,
// which starts and ends with a one-element allreduce as a barrier), algbw = size/time and
// busbw = algbw * factor (allreduce 2(n-1)/n; allgather, reducescatter, alltoall (n-1)/n; others 1), and
// #wrong (elements not bit-identical to the exact expected value, summed over ranks). Inputs are small
// integers in float so every sum is exact. GB = 1e9 bytes.
#include <nccl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
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
  int iters = 20, warmup = 3;
  std::vector<Op> ops = {Op::kAllReduce};
  bool perftest = true;
  std::string tls, json;
};

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

int RunRank(int rank, const Args& a, int id_read_fd, int id_write_fds[], int out_fd) {
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
  std::ostringstream lines;  // rank 0's rows, sent to the parent
  for (Op op : a.ops) {
    for (size_t bytes = a.min_bytes; bytes <= a.max_bytes; bytes *= a.factor) {
      Result r = RunSize(op, comm, rank, a.nranks, bytes, a);
      // Slowest rank's time, total #wrong: reduced with the library under test (as nccl-tests uses MPI).
      double t[2] = {r.time_us[0], std::isnan(r.time_us[1]) ? 0 : r.time_us[1]}, tmax[2];
      double w[2] = {static_cast<double>(r.wrong[0]), static_cast<double>(r.wrong[1])}, wsum[2];
      NCCL_OK(ncclAllReduce(t, tmax, 2, ncclFloat64, ncclMax, comm, nullptr));
      NCCL_OK(ncclAllReduce(w, wsum, 2, ncclFloat64, ncclSum, comm, nullptr));
      if (rank == 0) {
        lines << kOpNames[static_cast<int>(op)] << ' ' << bytes << ' ' << CountsFor(op, bytes, a.nranks).recv_count
              << ' ' << tmax[0] << ' ' << (std::isnan(r.time_us[1]) ? -1.0 : tmax[1]) << ' '
              << static_cast<uint64_t>(wsum[0]) << ' ' << static_cast<uint64_t>(wsum[1]) << '\n';
      }
      if (bytes > a.max_bytes / a.factor) break;
    }
  }
  NCCL_OK(ncclCommDestroy(comm));
  std::string out = lines.str();
  if (rank == 0 && write(out_fd, out.data(), out.size()) != static_cast<ssize_t>(out.size())) return 1;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
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
    else if (k == "--quick") {
      a.min_bytes = 1 << 10;
      a.max_bytes = size_t{4} << 20;
      a.factor = 16;
      a.iters = 5;
    } else if (k == "--no-perftest")
      a.perftest = false;
    else if (k == "--tls")
      a.tls = val();
    else if (k == "--json")
      a.json = val();
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
              "usage: %s [-n ranks] [-b min] [-e max] [-f factor] [--iters N] [--warmup N] [--op NAME|all] "
              "[--quick] [--no-perftest] [--tls T] [--json FILE]\n",
              argv[0]);
      return 2;
    }
  }
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
  int out[2];
  if (pipe(out) != 0) return 1;
  std::vector<pid_t> pids;
  for (int r = 0; r < a.nranks; ++r) {
    pid_t pid = fork();
    if (pid == 0) {
      close(out[0]);
      _exit(RunRank(r, a, id_r[r], id_w.data(), out[1]));
    }
    pids.push_back(pid);
  }
  close(out[1]);
  std::string rows;
  char buf[4096];
  for (ssize_t k; (k = read(out[0], buf, sizeof(buf))) > 0;) rows.append(buf, static_cast<size_t>(k));
  int failures = 0;
  for (pid_t p : pids) {
    int st = 0;
    waitpid(p, &st, 0);
    failures += !(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  }
  if (failures) fprintf(stderr, "hostnccl_bench: %d rank(s) failed\n", failures);

  printf("# hostnccl_bench: nranks %d (processes), NCCL version %d, iters %d, warmup %d, UCX_TLS=%s\n", a.nranks, ver,
         a.iters, a.warmup, a.tls.empty() ? "(default)" : a.tls.c_str());
  printf("# %13s %12s %6s %6s %5s  %9s %8s %8s %6s  %9s %8s %8s %6s  %10s %7s\n", "op/size", "count", "type", "redop",
         "root", "oop us", "algbw", "busbw", "#wrong", "ip us", "algbw", "busbw", "#wrong", "tag_bw GB/s", "ratio");
  std::istringstream in(rows);
  std::string opname;
  size_t bytes, count;
  double t0, t1;
  uint64_t w0, w1, wrong_total = 0;
  std::ostringstream json;
  json << "{\"bench\":\"hostnccl_bench\",\"nranks\":" << a.nranks << ",\"nccl_version\":" << ver
       << ",\"iters\":" << a.iters << ",\"tls\":\"" << a.tls << "\",\"rows\":[";
  bool first = true;
  while (in >> opname >> bytes >> count >> t0 >> t1 >> w0 >> w1) {
    int opi = static_cast<int>(std::find(std::begin(kOpNames), std::end(kOpNames), opname) - std::begin(kOpNames));
    double f = BusFactor(static_cast<Op>(opi), a.nranks);
    double alg0 = bytes / (t0 * 1e3), alg1 = t1 > 0 ? bytes / (t1 * 1e3) : 0;
    double tag = -1;
    if (a.perftest) {
      std::string err;
      int iters = static_cast<int>(std::clamp<size_t>((size_t{1} << 30) / bytes, 10, 100000));
      tag = perf::UcxPerftest("tag_bw", bytes, iters, a.tls, "", &err);
      if (tag < 0) fprintf(stderr, "hostnccl_bench: %s\n", err.c_str());
    }
    char ratio[16] = "n/a";
    if (tag > 0) snprintf(ratio, sizeof(ratio), "%.3f", alg0 * f / tag);
    printf("  %-13s %12zu %6s %6s %5s  %9.1f %8.3f %8.3f %6llu  %9.1f %8.3f %8.3f %6llu  %10.3f %7s\n",
           (opname + " " + perf::FormatSize(bytes)).c_str(), count, "float",
           (opi == 0 || opi == 2 || opi == 4) ? "sum" : "none", (opi == 3 || opi == 4) ? "0" : "-1", t0, alg0, alg0 * f,
           static_cast<unsigned long long>(w0), t1, alg1, alg1 * f, static_cast<unsigned long long>(w1), tag, ratio);
    fflush(stdout);
    wrong_total += w0 + w1;
    json << (first ? "" : ",") << "{\"op\":\"" << opname << "\",\"size\":" << bytes << ",\"count\":" << count
         << ",\"oop_time_us\":" << t0 << ",\"oop_algbw\":" << alg0 << ",\"oop_busbw\":" << alg0 * f
         << ",\"oop_wrong\":" << w0 << ",\"ip_time_us\":" << t1 << ",\"ip_algbw\":" << alg1
         << ",\"ip_busbw\":" << alg1 * f << ",\"ip_wrong\":" << w1 << ",\"perftest_tag_bw_gbps\":" << tag
         << ",\"ratio_busbw_to_tag_bw\":" << (tag > 0 ? alg0 * f / tag : 0) << "}";
    first = false;
  }
  json << "],\"wrong_total\":" << wrong_total << ",\"failed_ranks\":" << failures << "}\n";
  printf("# Out of bounds values : %llu %s\n", static_cast<unsigned long long>(wrong_total),
         wrong_total ? "FAILED" : "OK");
  if (!a.json.empty()) std::ofstream(a.json) << json.str();
  return (failures || wrong_total) ? 1 : 0;
}
