// SPDX-License-Identifier: Apache-2.0
// node.h: the node agent's messages (docs/protocol.md, "Node agents").
//
// A node agent (`tmrun --node --master ADDR:PORT`) is a process of role "node" on a host: it registers
// with the coordinator like any agent (rank -1) and starts processes on its host when told (a joiner for a
// migration to that host; later standbys and replacements). Commands and events travel as COMMAND and
// EVENT frames with the kinds below (a range of their own; the migration engine's are 1..99) and the
// `migration` field 0.
#ifndef TRAINMOVER_LIB_CONTROL_NODE_H_
#define TRAINMOVER_LIB_CONTROL_NODE_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "coordinator.h"
#include "messages.h"

namespace trainmover::control::node {

inline constexpr const char* kRole = "node";

enum class Cmd : uint16_t {
  kSpawn = 101,  // start a process (body: Spawn)
  kStop = 102,   // SIGTERM the process of that id (body: Child, pid and how unused)
};
enum class Ev : uint16_t {
  kSpawned = 101,  // started (body: Child: id, pid) or could not start (pid 0, how = the reason)
  kExited = 102,   // a started process ended (body: Child: id, pid, how = "status N" or "signal N")
};

// Variables that describe the host a process runs on, not the job: a node agent replaces them with its own
// values (or drops them when it has none) in the environment of a process it starts, since the spawn
// request carries the environment of a process on another host.
inline constexpr const char* kHostLocalEnv[] = {"TRAINMOVER_HOST", "HOSTNCCL_SOCKET_IFADDR", "NCCL_SOCKET_IFNAME",
                                                "UCX_NET_DEVICES", "CUDA_VISIBLE_DEVICES"};

// `env` (NAME=value) of a process on another host, made fit for this one: each host-local variable takes this
// process's value, or is dropped when this process has none.
std::vector<std::string> WithThisHostsEnv(const std::vector<std::string>& env);

struct Spawn {
  uint64_t id = 0;                // the coordinator's name for the process
  std::vector<std::string> argv;  // argv[0] is looked up in PATH
  std::vector<std::string> env;   // NAME=value, the whole environment
  std::string dir;                // working directory
  std::string log;                // stdout and stderr go there (created or appended), relative to dir
  // `env` is of a process on this very host (a failed rank's replacement on its own host, a joiner for a leaver
  // of this host): its host-local variables are right here (the failed process's devices are free) and are kept.
  // Otherwise the node agent puts its own in (WithThisHostsEnv).
  bool keep_host_env = false;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct Child {
  uint64_t id = 0;
  int32_t pid = 0;
  std::string how;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

Command MakeSpawn(const Spawn& s);
Command MakeStop(uint64_t id);
Event MakeChildEvent(Ev kind, const Child& c);

// The coordinator's side: which node agent serves which host, and the processes they started for it. An
// Engine of kind "node" so that it sees the node agents' events and losses; it takes no requests.
// Coordinator thread only.
class Directory final : public Engine {
 public:
  const char* kind() const override { return "node"; }
  std::string Validate(EngineHost&, const Migration&) override { return "node agents take no requests"; }
  void OnRequest(EngineHost&, Migration&) override {}
  void OnCancel(EngineHost&, Migration&) override {}
  void OnEvent(EngineHost& h, uint64_t process, const Event& e) override;
  void OnProcessLost(EngineHost& h, uint64_t process) override;
  void OnTick(EngineHost& h) override;

  // How long an ended process stays known after its end, for the engine that started it to learn how it ended
  // (engines poll Exited every tick while they care). Then it is forgotten (Exited: true with no reason), so a
  // job that migrates for weeks does not keep one entry per process it ever started.
  static constexpr uint64_t kForgetEndedNs = 60'000'000'000ull;
  // Forgets the processes that ended before now_ns - kForgetEndedNs (OnTick's, with the monotonic clock).
  void ForgetEnded(uint64_t now_ns);
  size_t known() const { return children_.size(); }

  // The alive node agent of `host` (its process id), or 0.
  uint64_t AgentOn(const std::string& host) const;
  // Asks the node agent of `host` to start `s` (its id is assigned here). The id (> 0), or 0 with *err.
  uint64_t Start(const std::string& host, Spawn s, std::string* err);
  // Whether process `id` has ended (or its node agent was lost: its fate is unknown); *how says how.
  bool Exited(uint64_t id, std::string* how);
  // Asks its node agent to stop process `id` (SIGTERM).
  void Stop(uint64_t id);
  // Whether process `id` is the one its node agent reported started with `pid` on `host`.
  bool Is(uint64_t id, const std::string& host, uint32_t pid) const;

 private:
  struct Child {
    uint64_t agent = 0;  // the node agent's process id
    int32_t pid = 0;
    bool ended = false;
    uint64_t ended_ns = 0;  // when it was first known ended (monotonic); 0 until ForgetEnded saw it ended
    std::string how;
  };
  EngineHost* host_ = nullptr;  // the coordinator, known from its first tick
  std::map<uint64_t, Child> children_;
  uint64_t next_id_ = 1;
};

}  // namespace trainmover::control::node

#endif  // TRAINMOVER_LIB_CONTROL_NODE_H_
