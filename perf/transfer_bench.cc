// SPDX-License-Identifier: Apache-2.0
// transfer_bench: the state hand-off's throughput (lib/transfer) for a sweep of sizes, side by side in one
// run with ucx_perftest's ucp_get (and ucp_put) bandwidth on the same machine, transports and sizes.
//
//   transfer_bench [--quick] [--sizes 1M,4M,...] [--iters N] [--chunk 4M] [--outstanding 16] [--lanes N]
//                  [--tls T] [--path auto|ucx|cma] [--no-peer-errors] [--no-verify] [--no-perftest] [--json FILE]
//                  [--csv FILE]
//
// Each size: a forked leaver exposes one region of that size and seals it; the parent (joiner) N times
// prepares (StateClient::Prepare: what a migration does before the switch) and reads (PreparedFetch::Read:
// the switch's critical path; verify on: every block hashed as it lands, the leaver's checksums read from its
// control block and compared). Reported per size, medians of N: the data phase (GB/s, and best), the whole
// Read call including verification ("Read GB/s"), the Prepare time, and the ratios of the data phase and of
// the whole Read to ucx_perftest ucp_get at the same size, run in the same invocation. GB = 1e9 bytes.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <memory>

#include "perf_util.h"
#include "transfer/transfer.h"

namespace tt = trainmover::transfer;

namespace {

struct Args {
  std::vector<size_t> sizes;
  int iters = 5;
  size_t chunk = size_t{4} << 20;
  int outstanding = 16;
  int lanes = 0;  // FetchOptions::hash_threads (0: the library's default)
  std::string tls;
  bool peer_errors = true;
  bool perftest = true;
  bool verify = true;
  tt::FetchPath path = tt::FetchPath::kAuto;
  std::string json, csv;
};

struct Row {
  size_t size;
  double best_gbps = 0, median_gbps = 0, e2e_median_s = 0, verify_median_s = 0;
  double read_call_gbps = 0, prepare_median_s = 0;
  double get_gbps = -1, put_gbps = -1;
  bool ok = true;
  std::string error;
  std::string path;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

Row Measure(const Args& a, size_t size) {
  Row row{size};
  int to_child[2], from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0) {
    row.ok = false;
    row.error = "pipe";
    return row;
  }
  pid_t pid = fork();
  if (pid == 0) {
    close(to_child[1]);
    close(from_child[0]);
    std::vector<unsigned char> buf(size);
    for (size_t i = 0; i < size; i += 4096) buf[i] = static_cast<unsigned char>(i / 4096);
    std::unique_ptr<tt::StateServer> server;
    tt::ServerOptions so;
    so.transports = a.tls;
    if (!tt::StateServer::Create(so, &server).ok() || !server->Expose({{"state", buf.data(), size}}).ok() ||
        !server->Seal().ok()) {
      _exit(1);
    }
    uint64_t n = server->Descriptor().size();
    if (write(from_child[1], &n, 8) != 8 ||
        write(from_child[1], server->Descriptor().data(), n) != static_cast<ssize_t>(n)) {
      _exit(1);
    }
    char c;
    while (read(to_child[0], &c, 1) > 0) {
    }
    server->Close();
    _exit(0);
  }
  close(to_child[0]);
  close(from_child[1]);
  uint64_t n = 0;
  std::vector<uint8_t> desc;
  if (read(from_child[0], &n, 8) == 8) {
    desc.resize(n);
    size_t got = 0;
    while (got < n) {
      ssize_t r = read(from_child[0], desc.data() + got, n - got);
      if (r <= 0) break;
      got += static_cast<size_t>(r);
    }
    if (got != n) desc.clear();
  }
  std::vector<unsigned char> dst(size);
  std::memset(dst.data(), 1, size);  // fault the pages in before timing
  std::unique_ptr<tt::StateClient> client;
  tt::ClientOptions co;
  co.transports = a.tls;
  co.peer_error_handling = a.peer_errors;
  tt::Status s =
      desc.empty() ? tt::Status(tt::Code::kPeerFailure, "no descriptor") : tt::StateClient::Create(co, &client);
  std::vector<double> gbps, e2e, verify, prepare, read_call;
  for (int i = 0; i < a.iters && s.ok(); ++i) {
    tt::FetchOptions o;
    o.chunk_bytes = a.chunk;
    o.max_outstanding = a.outstanding;
    o.hash_threads = a.lanes;
    o.verify = a.verify;
    o.path = a.path;
    tt::FetchResult r;
    std::unique_ptr<tt::PreparedFetch> prepared;
    auto t0 = std::chrono::steady_clock::now();
    s = client->Prepare(desc, {{"state", dst.data(), size}}, o, &prepared);
    auto t1 = std::chrono::steady_clock::now();
    if (s.ok()) s = prepared->Read(o, &r);
    auto t2 = std::chrono::steady_clock::now();
    prepared.reset();
    prepare.push_back(std::chrono::duration<double>(t1 - t0).count());
    read_call.push_back(std::chrono::duration<double>(t2 - t1).count());
    e2e.push_back(std::chrono::duration<double>(t2 - t0).count());
    gbps.push_back(r.gbps);
    verify.push_back(r.verify_seconds);
    row.path = tt::FetchPathName(r.path);
  }
  client.reset();
  close(to_child[1]);
  close(from_child[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!s.ok()) {
    row.ok = false;
    row.error = s.ToString();
    return row;
  }
  row.best_gbps = *std::max_element(gbps.begin(), gbps.end());
  row.median_gbps = Median(gbps);
  row.e2e_median_s = Median(e2e);
  row.verify_median_s = Median(verify);
  row.prepare_median_s = Median(prepare);
  double read_s = Median(read_call);
  row.read_call_gbps = read_s > 0 ? static_cast<double>(size) / read_s / 1e9 : 0;
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  Args a;
  std::string sizes = "1M,4M,16M,64M,256M,1G";
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (k == "--quick") {
      sizes = "1M,16M,64M";
      a.iters = 3;
    } else if (k == "--sizes")
      sizes = val();
    else if (k == "--iters")
      a.iters = std::max(1, std::atoi(val().c_str()));
    else if (k == "--chunk")
      a.chunk = perf::ParseSize(val());
    else if (k == "--outstanding")
      a.outstanding = std::max(1, std::atoi(val().c_str()));
    else if (k == "--lanes")
      a.lanes = std::max(0, std::atoi(val().c_str()));
    else if (k == "--tls")
      a.tls = val();
    else if (k == "--no-peer-errors")
      a.peer_errors = false;
    else if (k == "--path") {
      std::string p = val();
      a.path = p == "ucx" ? tt::FetchPath::kUcx : p == "cma" ? tt::FetchPath::kCma : tt::FetchPath::kAuto;
    } else if (k == "--no-verify")
      a.verify = false;
    else if (k == "--no-perftest")
      a.perftest = false;
    else if (k == "--json")
      a.json = val();
    else if (k == "--csv")
      a.csv = val();
    else {
      fprintf(stderr,
              "usage: %s [--quick] [--sizes L] [--iters N] [--chunk S] [--outstanding N] [--lanes N] [--tls T] "
              "[--path auto|ucx|cma] [--no-peer-errors] [--no-verify] [--no-perftest] [--json F] [--csv F]\n",
              argv[0]);
      return 2;
    }
  }
  for (size_t p = 0; p < sizes.size();) {
    size_t q = sizes.find(',', p);
    if (q == std::string::npos) q = sizes.size();
    a.sizes.push_back(perf::ParseSize(sizes.substr(p, q - p)));
    p = q + 1;
  }
  printf(
      "# transfer_bench: StateClient::Prepare + PreparedFetch::Read (path %s, %s chunks, %d outstanding, lanes %d, "
      "verify %s) vs ucx_perftest, UCX_TLS=%s, peer error handling %s, %d iterations, hash %s\n",
      tt::FetchPathName(a.path), perf::FormatSize(a.chunk).c_str(), a.outstanding, a.lanes, a.verify ? "on" : "off",
      a.tls.empty() ? "(default)" : a.tls.c_str(), a.peer_errors ? "on" : "off", a.iters,
      tt::HardwareCrc32c() ? "crc32c (sse4.2)" : "crc32c (table)");
  printf("# %10s %5s %10s %10s %10s %10s %10s %10s %13s %13s %7s %7s\n", "size", "path", "data GB/s", "best GB/s",
         "Read GB/s", "verify s", "prepare s", "e2e s", "perftest get", "perftest put", "ratio", "ratioR");
  std::vector<Row> rows;
  bool failed = false;
  for (size_t size : a.sizes) {
    Row row = Measure(a, size);
    if (a.perftest && row.ok) {
      std::string err;
      int iters = static_cast<int>(std::clamp<size_t>((size_t{1} << 30) / size, 3, 1000));
      row.get_gbps = perf::UcxPerftest("ucp_get", size, iters, a.tls, "", &err);
      row.put_gbps = perf::UcxPerftest("ucp_put_bw", size, iters, a.tls, "", &err);
      if (row.get_gbps < 0) fprintf(stderr, "transfer_bench: %s\n", err.c_str());
    }
    if (!row.ok) {
      printf("  %10s  FAILED: %s\n", perf::FormatSize(size).c_str(), row.error.c_str());
      failed = true;
    } else {
      char ratio[16] = "n/a", ratio_read[16] = "n/a";
      if (row.get_gbps > 0) snprintf(ratio, sizeof(ratio), "%.2f", row.median_gbps / row.get_gbps);
      if (row.get_gbps > 0) snprintf(ratio_read, sizeof(ratio_read), "%.2f", row.read_call_gbps / row.get_gbps);
      printf("  %10s %5s %10.3f %10.3f %10.3f %10.5f %10.5f %10.5f %13.3f %13.3f %7s %7s\n",
             perf::FormatSize(size).c_str(), row.path.c_str(), row.median_gbps, row.best_gbps, row.read_call_gbps,
             row.verify_median_s, row.prepare_median_s, row.e2e_median_s, row.get_gbps, row.put_gbps, ratio,
             ratio_read);
    }
    fflush(stdout);
    rows.push_back(row);
  }
  if (!a.json.empty()) {
    std::ofstream j(a.json);
    j << "{\"bench\":\"transfer_bench\",\"tls\":\"" << a.tls << "\",\"chunk\":" << a.chunk
      << ",\"outstanding\":" << a.outstanding << ",\"iters\":" << a.iters
      << ",\"peer_error_handling\":" << (a.peer_errors ? "true" : "false") << ",\"rows\":[";
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      j << (i ? "," : "") << "{\"size\":" << r.size << ",\"path\":\"" << r.path
        << "\",\"ok\":" << (r.ok ? "true" : "false") << ",\"read_gbps_median\":" << r.median_gbps
        << ",\"read_gbps_best\":" << r.best_gbps << ",\"verify_s\":" << r.verify_median_s
        << ",\"e2e_s\":" << r.e2e_median_s << ",\"prepare_s\":" << r.prepare_median_s
        << ",\"read_call_gbps\":" << r.read_call_gbps << ",\"perftest_get_gbps\":" << r.get_gbps
        << ",\"perftest_put_gbps\":" << r.put_gbps
        << ",\"ratio_to_get\":" << (r.get_gbps > 0 ? r.median_gbps / r.get_gbps : 0)
        << ",\"read_call_ratio_to_get\":" << (r.get_gbps > 0 ? r.read_call_gbps / r.get_gbps : 0) << "}";
    }
    j << "]}\n";
  }
  if (!a.csv.empty()) {
    std::ofstream c(a.csv);
    c << "size,path,read_gbps_median,read_gbps_best,read_call_gbps,verify_s,prepare_s,e2e_s,perftest_get_gbps,"
         "perftest_put_gbps,ratio,read_call_ratio\n";
    for (const Row& r : rows) {
      c << r.size << "," << r.path << "," << r.median_gbps << "," << r.best_gbps << "," << r.read_call_gbps << ","
        << r.verify_median_s << "," << r.prepare_median_s << "," << r.e2e_median_s << "," << r.get_gbps << ","
        << r.put_gbps << "," << (r.get_gbps > 0 ? r.median_gbps / r.get_gbps : 0) << ","
        << (r.get_gbps > 0 ? r.read_call_gbps / r.get_gbps : 0) << "\n";
    }
  }
  return failed ? 1 : 0;
}
