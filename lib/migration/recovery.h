// SPDX-License-Identifier: Apache-2.0
// recovery.h: the process side of failure recovery (docs/recovery.md): snapshots of the registered state shipped to
// a buddy, the fence of communicators that contain a dead rank, the hold and rollback at one safe point that every
// survivor reaches (HOLD_AFTER), and a buddy's exposure of its copy of the dead rank's state to the replacement. The
// coordinator's side is recovery_engine.h; the replacement itself is a joiner driven by the planned migration's
// machine (process.h).
//
// Threads: RecoveryCommand runs on the agent thread and never blocks for long (reads, hashes and exposures run
// on the owned `tm-snapshot` thread, in order); RecoverySafePoint on the application thread inside tmSafePoint
// (snapshots are copied there, the hold and the rollback happen there); the operation-failure hook on any
// application thread (it waits, bounded, for the coordinator's verdict).
#ifndef TRAINMOVER_LIB_MIGRATION_RECOVERY_H_
#define TRAINMOVER_LIB_MIGRATION_RECOVERY_H_

#include <cstdint>

#include "control/messages.h"

namespace trainmover::migration {

class ProcessMachine;
class World;

// Once, from InstallMigration (before the agent starts), with the migration machine's world (agent, exit, threads)
// and the machine itself (its staged replacements switch at the rollback). With TRAINMOVER_RECOVERY=off: no
// snapshots and no verdict waits, so failures reach the program as without the shim.
void InstallRecovery(World* world, ProcessMachine* machine);
// Agent thread: a recovery command (kind >= rec::kFirstRecoveryKind).
void RecoveryCommand(const control::Command& c);
// Application thread, as tmSafePoint begins: whether this process is fenced (its step ran on fenced communicators).
bool RecoveryFenced();
// Application thread, after the migration machine's part of the safe point: takes a snapshot, or holds a fenced
// process until the rollback. Returns the step to continue from. Does not return when recovery is impossible
// (the process ends with the reason, status 1). `step_clean`: the process was not fenced when this safe point began
// (RecoveryFenced), so every operation of the step ran for real and its registered state is the state at `step` even
// when a fence came since (during a migration's switch, say): held there, it offers that step for the rollback.
int64_t RecoverySafePoint(int64_t step, bool step_clean);
// Application thread, a stayer committed to a planned migration's switch at `step`, before its AT_STEP
// (World::SnapshotSwitchStep): the snapshot of that step, which RecoverySafePoint then does not take again.
void RecoverySnapshotSwitchStep(int64_t step);
// Any thread, before the process ends (normal exit, a migrated leaver, a joiner or a refused process): no more
// snapshot pulls, and the one under way may finish (kExitDrainMs), so no buddy is left serving a vanished reader.
void RecoveryDrain();
// Application thread, a joiner's sandbox (World::PrepareSnapshots): sets up the snapshot slots for the registered
// regions and the client that pulls buddies' snapshots in the background, ahead of the switch.
void RecoveryPrepareSlots();
// Any thread but tm-snapshot (World::AwaitSnapshots): waits until that set-up ended and, when its slots were reported
// (SLOT_EXPOSED), until the coordinator's warm-ups of the slots this process will pull as a buddy (SNAP_WARM) ended,
// at most kSlotSetUpWaitMs.
void RecoveryAwaitSlots();

// How long a fenced process waits at its safe point for the rollback (each epoch anew: a second failure or another
// replacement restarts it, as the coordinator's deadline of each recovery), and how long an operation that failed on a
// peer waits for the coordinator's verdict (a fence, or none) before the error reaches the program.
inline constexpr int kRecoveryHoldMs = 120000;
inline constexpr int kVerdictWaitMs = 15000;
// Local snapshots each rank keeps, and copies of each rank a buddy keeps: the newest complete everywhere (never
// overwritten) and the three newest, so that a step every survivor holds exists (docs/recovery.md).
inline constexpr int kSnapshotSlots = 4;
// How long a safe point waits for the previous snapshot to reach its buddies before going on without it.
inline constexpr int kShipWaitMs = 10000;
// The most one warm-up (SNAP_WARM: connect to a slot and read it once, ahead of its first pull) may take. A warm-up is
// only ahead-of-time work (one that fails leaves the pull to connect cold), and it runs on the thread that also sends
// the owner's SNAP_TAKEN and serves its pulls: a warm-up of a slot on a host cut off waited the transfer's whole
// 10 s floor, so that every rank depending on that thread waited kShipWaitMs at its safe point (multihost_cut).
inline constexpr int kWarmTimeoutMs = 2000;
// How long a joiner's PREPARED waits for its snapshot set-up and warm-ups (RecoveryAwaitSlots); past it, the
// migration goes on and the set-up's remainder lands after the switch (its first snapshot and pull wait for it).
inline constexpr int kSlotSetUpWaitMs = 10000;
// How long an ending process waits for the snapshot pull under way (RecoveryDrain).
inline constexpr int kExitDrainMs = 5000;

}  // namespace trainmover::migration

#endif  // TRAINMOVER_LIB_MIGRATION_RECOVERY_H_
