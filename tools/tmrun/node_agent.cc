// SPDX-License-Identifier: Apache-2.0
#include "node_agent.h"

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "base/host.h"
#include "base/spawn_process.h"
#include "control/agent.h"
#include "control/node.h"

namespace tmrun {

namespace node = trainmover::control::node;

namespace {

// Starts a process for the coordinator: the requested environment, with this host's own values of the host-local
// variables (node.h) unless it is already of a process on this host, in its own session, output appended to its
// log. Its pid, or 0 with *why.
pid_t SpawnForNode(const node::Spawn& s, std::string* why) {
  const std::vector<std::string> env = s.keep_host_env ? s.env : node::WithThisHostsEnv(s.env);
  struct stat st;
  const bool dir_ok = stat(s.dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
  std::string log = s.log;
  if (!dir_ok && !log.empty()) log = log.substr(log.rfind('/') + 1);  // the leaver's folder is not here
  pid_t pid = 0;
  trainmover::base::Status started = trainmover::base::SpawnProcess(
      {s.argv, env, dir_ok ? s.dir : "", log, /*append=*/true, /*new_session=*/true}, &pid);
  if (!started.ok()) {
    *why = started.message();
    return 0;
  }
  return pid;
}

}  // namespace

std::string DescribeStatus(int status) {
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  if (WIFSIGNALED(status)) return std::string("killed by signal ") + strsignal(WTERMSIG(status));
  return "stopped";
}

NodeAgent::NodeAgent() = default;

NodeAgent::~NodeAgent() { Stop(); }

void NodeAgent::Start(const std::string& coordinator, const std::string& token, int world) {
  trainmover::control::Agent::Options o;
  o.coordinator = coordinator;
  o.token = token;
  o.self = trainmover::control::DescribeSelf(node::kRole, -1, world, -1);
  agent_ = std::make_unique<trainmover::control::Agent>(o);
  trainmover::control::Agent* agent = agent_.get();
  agent->SetCommandHandler([this, agent](const trainmover::control::Command& c) {
    trainmover::control::Reader r(c.body.data(), c.body.size());
    if (c.kind == static_cast<uint16_t>(node::Cmd::kSpawn)) {
      node::Spawn s;
      if (!s.Decode(r)) return;
      node::Child done{s.id, 0, ""};
      {
        // Spawned and recorded under the lock: the caller's Reaped of a child that ends at once waits for it.
        std::lock_guard<std::mutex> lock(mu_);
        done.pid = SpawnForNode(s, &done.how);
        if (done.pid > 0) children_[done.pid] = s.id;
      }
      fprintf(stderr, "tmrun: node: %s %s (id %llu)%s%s\n", done.pid > 0 ? "started" : "could not start",
              s.argv[0].c_str(), static_cast<unsigned long long>(s.id), done.pid > 0 ? ", pid " : ": ",
              done.pid > 0 ? std::to_string(done.pid).c_str() : done.how.c_str());
      agent->SendEvent(node::MakeChildEvent(node::Ev::kSpawned, done));
    } else if (c.kind == static_cast<uint16_t>(node::Cmd::kStop)) {
      node::Child who;
      if (!who.Decode(r)) return;
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [pid, id] : children_) {
        if (id == who.id) kill(-pid, SIGTERM);
      }
    }
  });
  agent->Start();
  fprintf(stderr, "tmrun: node agent for host %s, coordinator %s\n", trainmover::base::HostName().c_str(),
          coordinator.c_str());
}

bool NodeAgent::Reaped(pid_t pid, int status) {
  uint64_t id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = children_.find(pid);
    if (it == children_.end()) return false;
    id = it->second;
    children_.erase(it);
  }
  node::Child ended{id, pid, DescribeStatus(status)};
  fprintf(stderr, "tmrun: node: pid %d (id %llu) %s\n", pid, static_cast<unsigned long long>(id), ended.how.c_str());
  if (agent_) agent_->SendEvent(node::MakeChildEvent(node::Ev::kExited, ended));
  return true;
}

void NodeAgent::SignalAll(int signo) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [pid, id] : children_) kill(-pid, signo);
}

void NodeAgent::Stop() {
  if (agent_) agent_->Stop(/*bye=*/true);
  agent_.reset();
}

}  // namespace tmrun
