// SPDX-License-Identifier: Apache-2.0
// Joiners started through node agents (engine.h, MakeNodeLauncher).
#include <string>

#include "base/host.h"
#include "engine.h"

namespace trainmover::control {
namespace {

// A process a node agent started is named by its directory id offset beyond any Linux pid (pid_max is at
// most 2^22), so that the engine keeps one kind of handle for both.
constexpr pid_t kRemoteBase = pid_t{1} << 30;

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
    const uint64_t id = nodes_->Start(host, sp, err);
    if (id == 0) return 0;
    *log = host + ":" + s.log;
    return kRemoteBase + static_cast<pid_t>(id);
  }

  bool Exited(pid_t pid, std::string* how) override {
    return pid >= kRemoteBase ? nodes_->Exited(static_cast<uint64_t>(pid - kRemoteBase), how)
                              : local_->Exited(pid, how);
  }

  void Stop(pid_t pid) override {
    if (pid >= kRemoteBase) {
      nodes_->Stop(static_cast<uint64_t>(pid - kRemoteBase));
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
