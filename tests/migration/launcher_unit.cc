// SPDX-License-Identifier: Apache-2.0
// The coordinator's own joiner launcher (lib/migration/engine.cc, MakeProcessLauncher): a joiner it starts here
// for a leaver on another host takes this host's host-local variables (lib/control/node.h, kHostLocalEnv), not
// the leaver's address and devices; one for a leaver on this host keeps the leaver's environment as it was.
// Starts /usr/bin/env and reads what it printed.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "base/host.h"
#include "migration/engine.h"

using namespace trainmover::control;

namespace {

// The environment a joiner started for a leaver on `from_host` with `env` sees, one NAME=value a line.
std::set<std::string> JoinerEnv(const std::vector<std::string>& env, const std::string& from_host) {
  char dir[] = "/tmp/launcher-unit-XXXXXX";
  REQUIRE(mkdtemp(dir) != nullptr);
  JoinerLauncher::Spec s;
  s.argv = {"/usr/bin/env"};
  s.env = env;
  s.dir = dir;
  s.log = std::string(dir) + "/joiner.log";
  s.log_if_exists = s.log + ".2";
  s.from_host = from_host;
  std::unique_ptr<JoinerLauncher> launcher = MakeProcessLauncher();
  std::string log, err, how;
  const pid_t pid = launcher->Start(s, &log, &err);
  REQUIRE_MESSAGE(pid > 0, err);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (!launcher->Exited(pid, &how)) {
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(how == "status 0");
  std::set<std::string> lines;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) lines.insert(line);
  unlink(log.c_str());
  rmdir(dir);
  return lines;
}

}  // namespace

TEST_CASE("a joiner started here for a leaver on another host takes this host's host-local variables") {
  // This process is "here" with its own address; it has no UCX_NET_DEVICES.
  setenv("TRAINMOVER_HOST", "here", 1);
  setenv("HOSTNCCL_SOCKET_IFADDR", "10.0.0.1", 1);
  unsetenv("UCX_NET_DEVICES");
  REQUIRE(trainmover::base::HostName() == "here");
  const std::vector<std::string> leaver = {"TRAINMOVER_HOST=there", "HOSTNCCL_SOCKET_IFADDR=10.0.0.2",
                                           "UCX_NET_DEVICES=eth9", "CUDA_VISIBLE_DEVICES=3", "JOB_SETTING=kept"};
  SUBCASE("from another host") {
    std::set<std::string> env = JoinerEnv(leaver, "there");
    CHECK(env.count("TRAINMOVER_HOST=here"));
    CHECK(env.count("HOSTNCCL_SOCKET_IFADDR=10.0.0.1"));
    CHECK(env.count("JOB_SETTING=kept"));
    for (const std::string& kv : env) {
      CHECK_MESSAGE(kv.rfind("UCX_NET_DEVICES=", 0) != 0, kv);  // the leaver's device, none here
      CHECK_MESSAGE(kv.rfind("CUDA_VISIBLE_DEVICES=", 0) != 0, kv);
      CHECK_MESSAGE(kv != "TRAINMOVER_HOST=there", kv);
    }
  }
  SUBCASE("from this host: the leaver's own environment, its devices included") {
    std::vector<std::string> same = leaver;
    same[0] = "TRAINMOVER_HOST=here";
    std::set<std::string> env = JoinerEnv(same, "here");
    CHECK(env.count("HOSTNCCL_SOCKET_IFADDR=10.0.0.2"));
    CHECK(env.count("UCX_NET_DEVICES=eth9"));
    CHECK(env.count("CUDA_VISIBLE_DEVICES=3"));
  }
}
