// SPDX-License-Identifier: Apache-2.0
// node_agent.h: this host's node agent (docs/operator.md, "Node agents"). It registers the host with the job's
// coordinator as a process of role "node" and starts what the coordinator asks for here (a planned migration's
// joiner, a failed rank's replacement: docs/recovery.md), each in its own session with its output appended to its
// log file, and reports when each ends. `tmrun --node` is nothing else; tmrun on node K > 0 of a job with a
// coordinator runs one beside its ranks, so that every host of a multi-host job can take a replacement.
#ifndef TRAINMOVER_TOOLS_TMRUN_NODE_AGENT_H_
#define TRAINMOVER_TOOLS_TMRUN_NODE_AGENT_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <mutex>
#include <string>

namespace trainmover::control {
class Agent;
}

namespace tmrun {

class NodeAgent {
 public:
  NodeAgent();
  ~NodeAgent();  // Stop()
  // Registers with `coordinator` (token: the job's) as the node agent of this host for a job of `world` ranks and
  // serves its commands on the agent's thread. The processes it starts are children of this process: the caller
  // reaps them (waitpid) and passes each to Reaped.
  void Start(const std::string& coordinator, const std::string& token, int world);
  // A child the caller reaped: true when this agent started it (its end is reported to the coordinator).
  bool Reaped(pid_t pid, int status);
  // Sends `signo` to the process group of every process it started that has not been reaped.
  void SignalAll(int signo);
  // Says goodbye to the coordinator (BYE); what it started keeps running. Idempotent.
  void Stop();
  // Between Start and Stop.
  bool started() const { return agent_ != nullptr; }

 private:
  std::unique_ptr<trainmover::control::Agent> agent_;
  std::mutex mu_;
  std::map<pid_t, uint64_t> children_;  // pid -> the coordinator's id for it
};

// How a child ended, for people: "exited with status N" / "killed by signal NAME".
std::string DescribeStatus(int status);

}  // namespace tmrun

#endif  // TRAINMOVER_TOOLS_TMRUN_NODE_AGENT_H_
