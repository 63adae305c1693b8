// SPDX-License-Identifier: Apache-2.0
// trainmoverd: the coordinator of one TrainMover job (docs/operator.md, docs/protocol.md).
//
//   trainmoverd [--listen host:port] [--metrics-listen host:port] [--heartbeat-timeout-ms N]
//               [--token-file F] [--straggler-* ...]
//
// Prints the bound control address as the first line of stdout (then the metrics address, when
// --metrics-listen is given), and serves until SIGINT/SIGTERM.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include "base/config.h"
#include "control/coordinator.h"
#include "migration/engine.h"
#include "migration/recovery_engine.h"

namespace {

trainmover::control::Coordinator* g_coord = nullptr;

void OnSignal(int) {
  if (g_coord) g_coord->Stop();
}

int Usage(const char* msg) {
  if (msg) std::fprintf(stderr, "trainmoverd: %s\n", msg);
  std::fprintf(stderr,
               "usage: trainmoverd [--listen host:port] [--metrics-listen host:port]\n"
               "                   [--heartbeat-timeout-ms N] [--token-file FILE]\n"
               "  --listen               control address (default 127.0.0.1:0; the bound address is printed first)\n"
               "  --metrics-listen       Prometheus endpoint, GET /metrics (default: none)\n"
               "  --heartbeat-timeout-ms a process silent this long is marked lost (default 10000)\n"
               "  --token-file           file holding the job's shared secret (else TRAINMOVER_TOKEN)\n");
  for (const trainmover::control::StragglerFlag& f : trainmover::control::StragglerFlags()) {
    std::fprintf(stderr, "  %s %s\n      %s\n", f.name, f.metavar, f.help);
  }
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  trainmover::control::Coordinator::Options opt;
  std::string token_file;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      if (i + 1 >= argc) return nullptr;
      (void)name;
      return argv[++i];
    };
    const char* v = nullptr;
    if (a == "--help" || a == "-h") {
      Usage(nullptr);
      return 0;
    } else if (a == "--listen") {
      if (!(v = value("--listen"))) return Usage("--listen needs host:port");
      opt.listen = v;
    } else if (a == "--metrics-listen") {
      if (!(v = value("--metrics-listen"))) return Usage("--metrics-listen needs host:port");
      opt.metrics_listen = v;
    } else if (a == "--heartbeat-timeout-ms") {
      if (!(v = value("--heartbeat-timeout-ms"))) return Usage("--heartbeat-timeout-ms needs a number");
      char* end = nullptr;
      long n = std::strtol(v, &end, 10);
      if (*end || n <= 0 || n > 86400000) return Usage("--heartbeat-timeout-ms must be a positive number of ms");
      opt.heartbeat_timeout_ms = static_cast<int>(n);
    } else if (a == "--token-file") {
      if (!(v = value("--token-file"))) return Usage("--token-file needs a path");
      token_file = v;
    } else if (a.rfind("--straggler-", 0) == 0) {
      if (!(v = value(a.c_str()))) return Usage((a + " needs a value").c_str());
      std::string err;
      int r = trainmover::control::ParseStragglerFlag(a, v, &opt.straggler, &err);
      if (r < 0) return Usage(err.c_str());
      if (r == 0) return Usage(("unknown argument '" + a + "'").c_str());
    } else {
      return Usage(("unknown argument '" + a + "'").c_str());
    }
  }
  if (!token_file.empty()) {
    std::ifstream f(token_file, std::ios::binary);
    if (!f) return Usage(("cannot read token file '" + token_file + "'").c_str());
    opt.token.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    while (!opt.token.empty() && (opt.token.back() == '\n' || opt.token.back() == '\r')) opt.token.pop_back();
  } else if (const char* t = std::getenv("TRAINMOVER_TOKEN")) {
    opt.token = t;
  }
  if (opt.token.empty()) return Usage("no token: set TRAINMOVER_TOKEN or pass --token-file FILE");
  // A joiner started with --spawn gets the token from this process's environment: it never travels in REGISTER.
  setenv("TRAINMOVER_TOKEN", opt.token.c_str(), 1);

  // A daemon logs what happens to the job (registrations, losses, migrations) unless told otherwise.
  if (trainmover::base::Status st = trainmover::shim::LogConfigureFromEnv(trainmover::base::LogLevel::kInfo);
      !st.ok()) {
    return Usage(st.message().c_str());
  }
  trainmover::control::Coordinator coord(opt);
  trainmover::control::AddJobEngines(coord, opt.straggler.spare_hosts);
  if (trainmover::base::Status st = coord.Start(); !st.ok()) {
    std::fprintf(stderr, "trainmoverd: %s\n", st.message().c_str());
    return 1;
  }
  std::printf("%s\n", coord.address().c_str());
  if (!coord.metrics_address().empty()) std::printf("%s\n", coord.metrics_address().c_str());
  std::fflush(stdout);
  g_coord = &coord;
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
  signal(SIGPIPE, SIG_IGN);
  coord.Run();
  g_coord = nullptr;
  return 0;
}
