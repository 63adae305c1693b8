// SPDX-License-Identifier: Apache-2.0
// Joiners started through node agents (engine.h, MakeNodeLauncher).
#include <string>

#include "base/host.h"
#include "engine.h"

namespace trainmover::control {
namespace {

class NodeLauncher final : public JoinerLauncher {
 public:
  NodeLauncher(node::Directory* nodes, std::unique_ptr<JoinerLauncher> local)
      : nodes_(nodes), local_(std::move(local)) {}

  pid_t Start(const Spec& s, std::string* log, std::string* err) override {
    // No host named: this one. A node agent there starts it; without one, only this host can start it here.
    const std::string host = s.host.empty() ? base::HostName() : s.host;
    if (host == base::HostName() && nodes_->AgentOn(host) == 0) return local_->Start(s, log, err);
    node::Spawn sp;
    sp.argv = s.argv;
    sp.env = s.env;
    sp.dir = s.dir;
    sp.log = s.log;  // on that host
    sp.keep_host_env = !s.from_host.empty() && s.from_host == host;
    const uint64_t id = nodes_->Start(host, sp, err);
    if (id == 0) return 0;
    *log = host + ":" + s.log;
    return kRemoteChild + static_cast<pid_t>(id);
  }

  bool Exited(pid_t pid, std::string* how) override {
    return pid >= kRemoteChild ? nodes_->Exited(static_cast<uint64_t>(pid - kRemoteChild), how)
                              : local_->Exited(pid, how);
  }

  bool CanStartOn(const std::string& host) override {
    return host.empty() || host == base::HostName() || nodes_->AgentOn(host) != 0;
  }

  bool IsChild(pid_t started, const std::string& host, uint32_t pid) override {
    return started >= kRemoteChild ? nodes_->Is(static_cast<uint64_t>(started - kRemoteChild), host, pid)
                                  : local_->IsChild(started, host, pid);
  }

  void Stop(pid_t pid) override {
    if (pid >= kRemoteChild) {
      nodes_->Stop(static_cast<uint64_t>(pid - kRemoteChild));
    } else {
      local_->Stop(pid);
    }
  }

 private:
  node::Directory* nodes_;
  std::unique_ptr<JoinerLauncher> local_;
};

}  // namespace

std::unique_ptr<JoinerLauncher> MakeNodeLauncher(node::Directory* nodes, std::unique_ptr<JoinerLauncher> local) {
  return std::make_unique<NodeLauncher>(nodes, std::move(local));
}

}  // namespace trainmover::control
