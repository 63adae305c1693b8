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

#include <memory>

#include "engine.h"

namespace trainmover::control {

// The failure-recovery engine (kind "recover"), to hand to Coordinator::AddEngine after the migration engine
// (a failure during a planned migration first aborts the migration, then is recovered). Without a launcher it
// uses MakeProcessLauncher().
std::unique_ptr<Engine> MakeRecoveryEngine(std::unique_ptr<JoinerLauncher> launcher = nullptr);

// A member of a communicator that a process's background poll reported failed (COMM_FAULT) is probed; one that does
// not answer within this long (its agent thread answers at once when the process runs) is declared failed.
inline constexpr int kProbeMs = 2000;

// Replacements tried for one failure: a replacement (spawned or a standby) lost before the switch, or a replacement
// communicator that failed to build, abandons the recovery for a new epoch of the same ranks with another standby or
// a spawned process; after this many in all, the recovery fails with the last reason (docs/recovery.md).
inline constexpr int kReplacementAttempts = 3;

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_MIGRATION_RECOVERY_ENGINE_H_
