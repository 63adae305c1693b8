// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the benchmarks: size parsing, a free TCP port for ucx_perftest, running
// ucx_perftest (server and client on this machine) and reading its final bandwidth.
#ifndef TRAINMOVER_PERF_PERF_UTIL_H_
#define TRAINMOVER_PERF_PERF_UTIL_H_

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace perf {

inline size_t ParseSize(const std::string& s) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  std::string unit = end ? end : "";
  if (unit == "K" || unit == "k") v *= 1024;
  if (unit == "M" || unit == "m") v *= 1024 * 1024;
  if (unit == "G" || unit == "g") v *= 1024.0 * 1024 * 1024;
  return static_cast<size_t>(v);
}

inline std::string FormatSize(size_t n) {
  char buf[32];
  if (n >= (size_t{1} << 30) && n % (size_t{1} << 30) == 0)
    snprintf(buf, sizeof(buf), "%zuG", n >> 30);
  else if (n >= (size_t{1} << 20) && n % (size_t{1} << 20) == 0)
    snprintf(buf, sizeof(buf), "%zuM", n >> 20);
  else if (n >= 1024 && n % 1024 == 0)
    snprintf(buf, sizeof(buf), "%zuK", n >> 10);
  else
    snprintf(buf, sizeof(buf), "%zu", n);
  return buf;
}

// A port that was free a moment ago (bound to 0 and released): ucx_perftest only takes a number.
inline int FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(a);
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  close(fd);
  return ntohs(a.sin_port);
}

// Runs `ucx_perftest -t <test> -s <size> -n <iters>` as server + client on localhost with the given
// UCX_TLS (empty: default) and returns the overall bandwidth in GB/s (1e9 bytes), or a negative value
// (with *error) when ucx_perftest is missing or fails. `extra` is appended to the client's arguments.
inline double UcxPerftest(const std::string& test, size_t size, int iters, const std::string& tls,
                          const std::string& extra, std::string* error) {
  int port = FreePort();
  if (port < 0) {
    *error = "no free port";
    return -1;
  }
  std::string env = tls.empty() ? "" : "UCX_TLS=" + tls + " ";
  std::string common = " -t " + test + " -s " + std::to_string(size) + " -n " + std::to_string(iters) + " -w " +
                       std::to_string(std::max(1, iters / 10)) + " -p " + std::to_string(port) + " -f " + extra;
  std::string server = env + "timeout 120 ucx_perftest -p " + std::to_string(port) + " >/dev/null 2>&1 &";
  if (std::system(server.c_str()) != 0) {
    *error = "cannot start ucx_perftest server";
    return -1;
  }
  std::string out;
  for (int attempt = 0; attempt < 50 && out.empty(); ++attempt) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::string client = env + "timeout 120 ucx_perftest 127.0.0.1" + common + " 2>/dev/null";
    FILE* p = popen(client.c_str(), "r");
    if (p == nullptr) break;
    char line[1024];
    while (fgets(line, sizeof(line), p) != nullptr) {
      // With -f the only data line is the final one: numbers only.
      std::string l(line);
      size_t k = l.find_first_not_of(' ');
      if (k != std::string::npos && l[k] >= '0' && l[k] <= '9') out = l;
    }
    pclose(p);
  }
  if (out.empty()) {
    *error = "ucx_perftest gave no result (missing, or the test failed with UCX_TLS=" + tls + ")";
    return -1;
  }
  // iters lat50 lat_avg lat_overall bw_avg(MB/s) bw_overall(MB/s) rate_avg rate_overall; MB = 2^20
  std::vector<double> f;
  char* s = out.data();
  for (char* end; *s != '\0'; s = end) {
    double v = std::strtod(s, &end);
    if (end == s) break;
    f.push_back(v);
  }
  if (f.size() < 6) {
    *error = "cannot parse: " + out;
    return -1;
  }
  return f[5] * 1048576.0 / 1e9;
}

}  // namespace perf

#endif  // TRAINMOVER_PERF_PERF_UTIL_H_
