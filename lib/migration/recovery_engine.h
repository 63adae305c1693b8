// SPDX-License-Identifier: Apache-2.0
// recovery_engine.h: the coordinator's side of failure recovery (docs/recovery.md). It keeps the book of every
// rank's snapshots (which steps each rank holds itself, which verified copies its buddies hold), picks the buddies,
// and when a worker is lost (its connection closed, or no heartbeat within the timeout) it declares the failure
// with a new epoch, fences the survivors, picks the newest snapshot step complete everywhere, starts a replacement
// with the dead rank's command line (a joiner, driven with the planned migration's commands), and rolls everyone
// back to that step once the replacement is built in and holds the dead rank's state. What cannot be recovered is
// refused with the reason (the survivors end with it). Coordinator thread only.
#ifndef TRAINMOVER_LIB_MIGRATION_RECOVERY_ENGINE_H_
#define TRAINMOVER_LIB_MIGRATION_RECOVERY_ENGINE_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine.h"

namespace trainmover::control {

// The failure-recovery engine (kind "recover"), to hand to Coordinator::AddEngine after the migration engine
// (a failure during a planned migration first aborts the migration, then is recovered). Without a launcher it
// uses MakeProcessLauncher() (only the coordinator's host); with MakeNodeLauncher it spawns replacements through
// node agents, on the hosts ReplacementHosts names. `spare_hosts`: the job's spare hosts (--straggler-spare-hosts).
std::unique_ptr<Engine> MakeRecoveryEngine(std::unique_ptr<JoinerLauncher> launcher = nullptr,
                                           std::vector<std::string> spare_hosts = {});

// The engines of a coordinator that serves a job (trainmoverd, tmrun's embedded one), in their order: the directory of
// node agents, the migration engine, then the recovery engine (a failure during a planned migration first aborts it,
// then is recovered). Both spawn through node agents (a migration's target host; the failed process's host or a spare
// host: docs/recovery.md). `spare_hosts`: the job's spare hosts (--straggler-spare-hosts).
void AddJobEngines(Coordinator& coord, const std::vector<std::string>& spare_hosts);

// Where the replacement of a failed rank is spawned when no standby takes its place (docs/recovery.md, "Where a
// spawned replacement runs"): the hosts to try, in order, each once. `dead_host`: the failed process's host;
// `own_failure`: the failure was the process's own (its connection closed: it exited, was killed or crashed), not
// its host's silence (no heartbeat, no answer to a probe: the host may be down or cut off); `can_start(host)`: a
// replacement can be started there now (an alive node agent; the coordinator's host always can); `spares`: the
// job's spare hosts in the operator's order; `here`: the coordinator's host. The dead process's host first when
// the failure was its own and it can start one (its device is free, its host-local settings fit), then each spare
// host other than the dead one that can, and always `here` last. Pure.
std::vector<std::string> ReplacementHosts(const std::string& dead_host, bool own_failure,
                                          const std::function<bool(const std::string&)>& can_start,
                                          const std::vector<std::string>& spares, const std::string& here);

// A member of a communicator that a process's background poll reported failed (COMM_FAULT) is probed; one that does
// not answer within this long (its agent thread answers at once when the process runs) is declared failed.
inline constexpr int kProbeMs = 2000;

// Replacements tried for one failure: a replacement (spawned or a standby) lost before the switch, or a replacement
// communicator that failed to build, abandons the recovery for a new epoch of the same ranks with another standby or
// a spawned process; after this many in all, the recovery fails with the last reason (docs/recovery.md).
inline constexpr int kReplacementAttempts = 3;

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_MIGRATION_RECOVERY_ENGINE_H_
