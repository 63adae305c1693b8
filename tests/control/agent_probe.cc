// SPDX-License-Identifier: Apache-2.0
// agent_probe: a stand-in for a training process that runs the control agent only (no NCCL), for the
// coordinator tests: it registers, reports one communicator and a region, then a safe point every
// --step-ms until killed (or --steps N are done, then it says BYE).
//   agent_probe COORDINATOR RANK WORLD COMM_KEY [--steps N] [--step-ms M] [--silence-ms S] [--fork-child]
// token: TRAINMOVER_TOKEN. --fork-child: once registered, forks a child that sleeps 10 s (a data-loader worker
// that outlives the process). --silence-ms: the agent's silence timeout (Agent::Options::silence_timeout_ms).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "control/agent.h"

using namespace trainmover::control;

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: agent_probe COORDINATOR RANK WORLD COMM_KEY [--steps N] [--step-ms M]\n");
    return 2;
  }
  int rank = std::atoi(argv[2]), world = std::atoi(argv[3]);
  uint64_t key = std::strtoull(argv[4], nullptr, 0);
  long steps = -1, step_ms = 20, silence_ms = 0;
  for (int i = 5; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--steps") steps = std::atol(argv[i + 1]);
    if (a == "--step-ms") step_ms = std::atol(argv[i + 1]);
    if (a == "--silence-ms") silence_ms = std::atol(argv[i + 1]);
  }
  bool fork_child = false;
  for (int i = 5; i < argc; ++i) fork_child |= std::string(argv[i]) == "--fork-child";
  const char* tok = std::getenv("TRAINMOVER_TOKEN");
  Agent::Options o;
  o.coordinator = argv[1];
  o.token = tok ? tok : "";
  o.self = DescribeSelf("worker", rank, world, -1);
  if (silence_ms > 0) o.silence_timeout_ms = static_cast<int>(silence_ms);
  Agent agent(o);
  agent.Start();
  CommCreated c;
  c.comm_key = key;
  c.lineage.kind = static_cast<uint8_t>(LineageKind::kInitRank);
  c.rank = rank;
  c.nranks = world;
  agent.ReportCommCreated(c);
  agent.ReportRegions({{"weights", 4096}});
  if (fork_child) {
    while (!agent.connected()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (fork() == 0) {
      for (int fd = 0; fd < 3; ++fd) close(fd);  // holds nothing of its starter's
      sleep(10);
      _exit(0);
    }
  }
  for (long s = 0; steps < 0 || s < steps; ++s) {
    agent.ReportSafePoint(s);
    std::this_thread::sleep_for(std::chrono::milliseconds(step_ms));
  }
  agent.Stop(true);
  return 0;
}
