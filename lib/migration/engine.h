// SPDX-License-Identifier: Apache-2.0
// engine.h: the coordinator's side of a live migration (docs/migration.md). The program that owns a
// Coordinator installs one (trainmoverd, tmrun's embedded coordinator) with Coordinator::AddEngine; it
// validates MIGRATE requests, drives each migration's state machine from the events the agents send
// (lib/migration/msgs.h) and keeps its timeline. Coordinator thread only.
//
// --spawn starts the joiner from the coordinator's process (JoinerLauncher), with the leaver's command
// line, working directory and environment plus TRAINMOVER_ROLE=joiner and TRAINMOVER_REPLACE=R; its
// stdout and stderr go to <leaver cwd>/joiner-<R>.log (joiner-<R>-m<id>.log when that exists), which the
// MIGRATE reply names. The child is reaped by the coordinator's process (tmrun reaps every child).
#ifndef TRAINMOVER_LIB_MIGRATION_ENGINE_H_
#define TRAINMOVER_LIB_MIGRATION_ENGINE_H_

#include <sys/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "base/host.h"
#include "control/coordinator.h"
#include "control/node.h"

namespace trainmover::control {

// Start's handles of processes started on another host (a node agent's) are this plus a number: beyond any Linux pid
// (pid_max is at most 2^22), so that an engine keeps one kind of handle for both.
inline constexpr pid_t kRemoteChild = pid_t{1} << 30;

// How the reason begins with which the migration engine declares failed a process that is out of step after a switch
// (docs/reliability.md, "The commit point"): the failure recovery tells such a failure from others by it.
inline constexpr char kOutOfStep[] = "out of step after the switch of migration ";

// What --spawn needs of the operating system, so that the engine's unit tests can run without processes.
// Coordinator thread only.
class JoinerLauncher {
 public:
  struct Spec {
    std::vector<std::string> argv, env;
    std::string dir;                 // working directory
    std::string log, log_if_exists;  // stdout+stderr go to `log`, or to `log_if_exists` when `log` exists
    std::string host;                // where: the migration's target host (tmctl migrate --to), "" = any
    std::string from_host;           // the host whose environment `env` is (the leaver's)
  };
  virtual ~JoinerLauncher() = default;
  // Starts the joiner: its pid (on another host: kRemoteChild plus a number) and the log it writes to, or 0 with
  // *err.
  virtual pid_t Start(const Spec& s, std::string* log, std::string* err) = 0;
  // Whether `pid` has exited (it is reaped then); *how says "status N" or "signal N".
  virtual bool Exited(pid_t pid, std::string* how) = 0;
  // Asks a child that never became a joiner to stop (SIGTERM).
  virtual void Stop(pid_t pid) = 0;
  // Whether Start can start a process on `host` now ("": the coordinator's own). Here: only this host.
  virtual bool CanStartOn(const std::string& host) { return host.empty() || host == base::HostName(); }
  // Whether the process that registered from `host` with `pid` is the child `started` (what Start returned).
  virtual bool IsChild(pid_t started, const std::string& /*host*/, uint32_t pid) {
    return pid == static_cast<uint32_t>(started);
  }
};

// posix_spawn, waitpid(WNOHANG), kill: on the coordinator's host.
std::unique_ptr<JoinerLauncher> MakeProcessLauncher();

// Through node agents: a joiner whose Spec names a host with a node agent is started there by it
// (docs/operator.md, "Node agents"); one for the coordinator's own host (or for no host in particular)
// with `local`; one for another host without a node agent is refused, naming the host. CanStartOn: a host with
// an alive node agent, or this one; IsChild knows a started process by the pid and host its node agent reported.
std::unique_ptr<JoinerLauncher> MakeNodeLauncher(node::Directory* nodes, std::unique_ptr<JoinerLauncher> local);

// Matching a joiner with the process it replaces (planned migration and failure recovery alike):
// the i-th communicator of each in creation order (kind, nranks, rank, split color/key, child index, excluded
// list, mapped parent); the first difference, or empty (then *j2l maps each joiner comm_key to the other's).
// `any_rank`: a standby of a program that reads its rank through tmRank, warmed up as another rank (docs/recovery.md,
// "Standbys"): the rank and the split color/key, which depend on the rank, are not compared.
std::string CompareLineages(const std::vector<CommCreated>& joiner, const std::vector<const CommCreated*>& leaver,
                            std::map<uint64_t, uint64_t>* j2l, bool any_rank = false);
// The state tables by name and size: the first difference, or empty.
std::string CompareRegions(const std::vector<Region>& leaver, const std::vector<Region>& joiner);
// A joiner of `rank` made from `l`: its command line, cwd and environment plus TRAINMOVER_ROLE=joiner and
// TRAINMOVER_REPLACE=rank; output to <cwd>/joiner-<rank>.log (joiner-<rank>-m<id>.log when that exists).
JoinerLauncher::Spec JoinerSpec(const Migration& m, const ProcessRec& l, int32_t rank);

// The engine's deadlines (docs/reliability.md): a migration in spawning, sandbox, ready, building or agreeing
// for longer than `phase_ms`, or switching for longer than `switch_ms` after COMMIT without SWITCH sent, is
// aborted (training continues on the old communicators); SWITCH is never sent past that point. Members that
// have not confirmed SWITCHED `switch_ms` after SWITCH are named in the migration's reason, and it is done; when
// a stayer is known to have switched, they are out of step (declared failed for the failure recovery).
struct MigrationDeadlines {
  uint64_t phase_ms = 600000;  // TRAINMOVER_PHASE_TIMEOUT_MS
  uint64_t switch_ms = 60000;  // TRAINMOVER_HOLD_TIMEOUT_MS / 2
  uint64_t commit_delay_ms = 0;  // test knob TRAINMOVER_FAULT=slow-commit: COMMIT 3 s after the last ACCEPT
};
// From this process's TRAINMOVER_PHASE_TIMEOUT_MS and TRAINMOVER_HOLD_TIMEOUT_MS (defaults when invalid).
MigrationDeadlines DeadlinesFromConfig();

// The planned-migration engine (kind "migrate"), to hand to Coordinator::AddEngine before Run(). Without a
// launcher it uses MakeProcessLauncher().
std::unique_ptr<Engine> MakeMigrationEngine(std::unique_ptr<JoinerLauncher> launcher = nullptr,
                                            MigrationDeadlines deadlines = DeadlinesFromConfig());

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_MIGRATION_ENGINE_H_
