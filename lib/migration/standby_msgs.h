// SPDX-License-Identifier: Apache-2.0
// standby_msgs.h: COMMAND and EVENT bodies of the general standbys (docs/recovery.md, "Standbys"). They travel in
// the same COMMAND/EVENT frames as the planned migration's (msgs.h) and failure recovery's (recovery_msgs.h), with
// kinds from 200 on so none collide; the agent glue hands kinds >= kFirstStandbyKind to the standby side.
//
//   standby  EVENT STANDBY_READY(warm rank, follows rank, comms, regions, step)   warmed up in the sandbox, waiting
//   D        COMMAND ASSIGN(rank, world) -> the chosen standby                  it takes rank's place: tmRank says
//            so from its switch on; the recovery's MAP, MAKE_IDS, BUILD, PREPARE, READ and SWITCH follow
//   D        COMMAND DISMISS(text) -> every idle standby once the job has ended   it exits with status 0
// Bounds as for every message; Decode consumes the whole body or fails.
#ifndef TRAINMOVER_LIB_MIGRATION_STANDBY_MSGS_H_
#define TRAINMOVER_LIB_MIGRATION_STANDBY_MSGS_H_

#include <cstdint>

#include "control/messages.h"
#include "control/wire.h"
#include "msgs.h"

namespace trainmover::control::standby {

inline constexpr uint16_t kFirstStandbyKind = 200;

enum class Cmd : uint16_t {
  kAssign = 200,   // the standby replaces rank (body: Assign)
  kDismiss = 201,  // the job ended: exit 0 (body: mig::Reason)
};
enum class Ev : uint16_t {
  kReady = 200,  // warmed up (body: Ready)
};

struct Ready {
  int32_t warm_rank = -1;    // the rank it warmed up as (its launcher's RANK)
  uint8_t follows_rank = 0;  // the program read its rank through tmRank: it can take any rank
  mig::Ready sandbox;        // its communicators (creation order), its state table, the step its sandbox reached
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct Assign {
  int32_t rank = -1;
  int32_t world = -1;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

const char* StandbyCmdName(uint16_t kind);

template <typename K, typename B>
Command Make(K kind, uint64_t recovery, const B& body) {
  return mig::Make(static_cast<uint16_t>(kind), recovery, body);
}

}  // namespace trainmover::control::standby

#endif  // TRAINMOVER_LIB_MIGRATION_STANDBY_MSGS_H_
