// SPDX-License-Identifier: Apache-2.0
// recovery_msgs.h: COMMAND and EVENT bodies of failure recovery (docs/recovery.md). They travel in the same
// COMMAND/EVENT frames as the planned migration's (msgs.h), with kinds from 100 on so the two never collide;
// the agent glue hands kinds >= kFirstRecoveryKind to the recovery side.
//
// One body type for every recovery message (RecMsg); each kind uses the fields its comment names and leaves
// the others empty. Bounds as for every message (kMaxList entries, kMaxString bytes, one frame); Decode
// consumes the whole body or fails.
//
// Snapshots (steady state: each rank by itself at every TRAINMOVER_SNAPSHOT_EVERY-th safe point, one in flight):
//   owner  EVENT SNAP_TAKEN(epoch = timeline, step, slot, words = checksums, regions, blob = the slot's descriptor,
//                           every = the interval it asks for under auto)
//   D      COMMAND SNAP_PULL(epoch, rank, step, slot, words, regions, blob) -> each buddy: read it (one-sided), verify
//   buddy  EVENT SNAP_HELD(epoch, rank, step, slot, ok, text)          verified copy of `rank` at `step` held
//   D      COMMAND SNAP_SHIPPED(step, complete, every) -> the owner    on every buddy; `complete`: the newest step
//                                                                       complete everywhere (the owner keeps it);
//                                                                       `every`: the job's interval under auto
// A migration's joiner, in its sandbox (its first pulls and its buddies' first pulls after the switch are warm):
//   joiner EVENT SLOT_EXPOSED(slot, regions, blob = the slot's descriptor)  each of its slots, once set up
//   D      COMMAND SNAP_WARM(rank, slot, regions, blob) -> each future buddy of the joiner's rank (the joiner's slot),
//          and, after the joiner's last slot, to the joiner for each slot of the ranks it will hold copies of; then
//          SNAP_WARM(rank = -1) to the joiner: the batch is over (its PREPARED waits for it)
// Failure of rank F (epoch E):
//   D      COMMAND FENCE(epoch, rank F, words = comm_keys containing F) -> every survivor
//   surv.  EVENT FENCE_AT(epoch, step)  at once, from the agent thread: the last safe point it passed
//   D      COMMAND HOLD_AFTER(epoch, step H = the newest of those) -> every survivor, once all reported: it passes its
//          safe points up to H (their operations complete, the fenced ones locally) and holds at the first after H,
//          so that no survivor holds while another still needs it in an operation of an earlier step
//   surv.  EVENT HELD(epoch, step, words = the steps of its own snapshots)  held at the first safe point after H
//   D      COMMAND EXPOSE_HELD(rank F, step S) -> F's buddy;  buddy EVENT HELD_EXPOSED(rank, step, blob)
//   D      the planned-migration commands to the replacement and the members (MAP, MAKE_IDS, BUILD, PREPARE+READ of
//          the buddy's descriptor, SWITCH(S)), then COMMAND ROLLBACK(epoch, step S) -> every survivor
//   surv.  EVENT ROLLED_BACK(epoch, step S, words = {stall ns})
//   D      COMMAND GIVE_UP(text) -> every survivor when recovery is impossible (they end with that reason)
//   D      COMMAND FENCED(epoch, rank F) -> F's old process if it is heard from again (stopped, not dead): it ends
#ifndef TRAINMOVER_LIB_MIGRATION_RECOVERY_MSGS_H_
#define TRAINMOVER_LIB_MIGRATION_RECOVERY_MSGS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "control/messages.h"
#include "control/wire.h"

namespace trainmover::control::rec {

inline constexpr uint16_t kFirstRecoveryKind = 100;

enum class Cmd : uint16_t {
  kSnapPull = 100,     // buddy: read rank's snapshot (epoch, rank, step, slot, words = checksums, regions, blob =
                       // descriptor)
  kSnapShipped = 101,  // owner: its snapshot at step is on every buddy; the one at complete is complete everywhere
  kFence = 102,        // survivor: fence the communicators in words, answer FENCE_AT, hold as HOLD_AFTER says
                       // (epoch, rank)
  kExposeHeld = 103,   // buddy: expose the held copy of rank at step for the replacement (rank, step)
  kRollback = 104,     // survivor: restore the snapshot at step, switch, continue from step (epoch, step)
  kGiveUp = 105,       // survivor: recovery is impossible (text); end as the failure would have ended it
  kFenced = 106,       // a process declared failed that woke up (epoch, rank): it was replaced, it ends at once
  kProbe = 107,        // a member of a communicator reported failed: answer PROBED at once (step = probe number)
  kSnapWarm = 108,     // future buddy: connect to rank's slot and read it once, unverified (rank, slot, regions, blob);
                       // rank -1: the warm-ups sent to a joiner are over
  kHoldAfter = 109,    // survivor: pass the safe points up to step, hold at the first after it (epoch, step)
  kSnapDrop = 110,     // former buddy: drop the copies held of rank; its buddies now hold a newer one (rank, step)
};
enum class Ev : uint16_t {
  kSnapTaken = 101,    // owner: snapshot at step in slot (step, slot, words = checksums in region-name order, regions,
                       // blob = the slot's descriptor)
  kSnapHeld = 102,     // buddy: copy of rank at step verified (epoch as in SNAP_PULL, rank, step, slot, ok, text)
  kHeld = 103,         // survivor: held at a safe point (epoch, step, words = the steps of its own snapshots)
  kHeldExposed = 104,  // buddy: the held copy is exposed (rank, step, ok, text, blob = descriptor)
  kRolledBack = 105,   // survivor: restored and resumed (epoch, step, words = {stall ns})
  kCommFault = 106,    // the background poll: ncclCommGetAsyncError of a real communicator says it failed
                       // (words = {comm_key}, slot = the ncclResult_t)
  kProbed = 107,       // the answer to PROBE (step = its probe number), from the agent thread
  kSlotExposed = 108,  // a joiner's slot is set up (slot, regions, blob = the slot's descriptor), before its switch
  kFenceAt = 109,      // survivor: fenced; the last safe point it passed (epoch, step; -1 for none), from the agent
                       // thread
};
const char* RecCmdName(uint16_t kind);
const char* RecEvName(uint16_t kind);

struct RecMsg {
  uint64_t epoch = 0;
  int32_t rank = -1;
  int64_t step = -1;
  int64_t complete = -1;
  // TRAINMOVER_SNAPSHOT_EVERY=auto: in SNAP_TAKEN the interval the owner asks for (0: no measurement yet, or a fixed
  // interval); in SNAP_SHIPPED the interval every rank uses from now on (0: keep your own). On the wire a trailing
  // i64 after blob, absent when 0 (so a body without it keeps the layout it always had).
  int64_t every = 0;
  uint32_t slot = 0;
  uint8_t ok = 1;
  std::string text;
  std::vector<uint64_t> words;
  std::vector<Region> regions;
  std::vector<uint8_t> blob;  // at most one frame
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

template <typename K>
Command MakeRec(K kind, uint64_t recovery, const RecMsg& body) {
  Command c;
  c.kind = static_cast<uint16_t>(kind);
  c.migration = recovery;
  c.body = EncodePayload(body);
  return c;
}

}  // namespace trainmover::control::rec

#endif  // TRAINMOVER_LIB_MIGRATION_RECOVERY_MSGS_H_
