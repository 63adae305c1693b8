// SPDX-License-Identifier: Apache-2.0
// msgs.h: the bodies of COMMAND (coordinator -> agent) and EVENT (agent -> coordinator) for
// the migration protocol of docs/architecture.md ("Migration protocol") and docs/protocol.md.
//
// The control layer routes Command/Event frames without looking inside; the migration engine (engine.cc)
// encodes and decodes their bodies with these structs. Every body has the same bounds as any message
// (kMaxString, kMaxList, one frame) and the same rule: Decode consumes the whole body or fails.
//
// Sequence of one planned migration of rank R (L leaver, J joiner, S stayers, D coordinator):
//   J REGISTER(role joiner, replace R) ... J EVENT READY(comms, regions)   D compares with L's view
//   D COMMAND BUILD(entries) -> every member of each VComm containing R     members EVENT BUILT(key, ok)
//     (J first makes the fresh unique ids: COMMAND MAKE_IDS -> EVENT IDS)
//   D COMMAND EXPOSE -> L                                                   L EVENT EXPOSED(descriptor)
//   D COMMAND PREPARE(descriptor) -> J     J connects to L's state          J EVENT PREPARED(path)
//   D COMMAND PROPOSE(S) -> all            each EVENT ACCEPT(S) or EVENT PASSED(step)   (repeat)
//   D COMMAND COMMIT(S) -> all             each EVENT AT_STEP(S) at tmSafePoint(S)
//   on L's AT_STEP: D COMMAND READ(S) -> J
//   J EVENT PROGRESS(bytes) ... J EVENT VERIFIED(ok)
//   D COMMAND SWITCH -> all                each EVENT SWITCHED(stall)   L exits (BYE)
//   any failure before SWITCH: D COMMAND ABORT(reason) -> all; anyone may send EVENT FAILED(reason)
//   any process may send EVENT PHASE(name, start, end) for the timeline.
//   At the request D COMMAND RECORD_TAPE -> L; L EVENT TAPE(chunk)... EVENT TAPE(empty) after its next iteration;
//   D COMMAND TAPE(chunk)... TAPE(empty) -> J as soon as both the tape and J's registration are there.
#ifndef TRAINMOVER_LIB_CONTROL_MIGRATION_MSGS_H_
#define TRAINMOVER_LIB_CONTROL_MIGRATION_MSGS_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "control/messages.h"
#include "control/wire.h"

namespace trainmover::control::mig {

enum class Cmd : uint16_t {
  kMakeIds = 1,    // J: make a fresh real unique id for each listed comm_key (body: KeyList)
  kBuild = 2,      // members: build the replacement real communicators (body: Build)
  kExpose = 3,     // L: register the regions for one-sided reads (body: Reason = where the state goes, for the log)
  kRead = 4,       // J: L is at S: read its regions now, over the prepared connection (body: Step)
  kPropose = 5,    // all: may the switch be at step S? (body: Step)
  kCommit = 6,     // all: the switch is at S (body: Step)
  kSwitch = 7,     // all: point VComms at the replacements; J leaves the sandbox; L exits (body: Step)
  kAbort = 8,      // all: drop replacements, continue on the old communicators (body: Reason)
  kMap = 9,        // J: the leaver's comm_key of each of its VComms (body: KeyList of pairs joiner key, leaver key)
  kRecordTape = 10,  // L: record the sandbox tape of your next iteration and send it as EVENT TAPE (body: Step, 0)
  kTape = 11,        // J: one chunk of the leaver's tape, in order; an empty chunk ends it (body: Blob)
  kPrepare = 12,     // J: connect to L's exposed state, everything but the bytes (body: Prepare)
};
enum class Ev : uint16_t {
  kReady = 1,      // J: sandbox done (body: Ready)
  kIds = 2,        // J: the fresh unique ids (body: Ids)
  kBuilt = 3,      // member: a replacement is built or failed (body: Built)
  kExposed = 4,    // L: the transfer descriptor (body: Blob)
  kAccept = 5,     // member: S accepted, it has not passed S (body: Step)
  kPassed = 6,     // member: too late for S, it is at step (body: Step)
  kAtStep = 7,     // member: waiting in tmSafePoint(S) (body: Step)
  kProgress = 8,   // J: state bytes read so far (body: Progress)
  kVerified = 9,   // J: checksums verified or not (body: Built, comm_key 0)
  kSwitched = 10,  // member: switched; the stall it saw at S (body: Switched)
  kFailed = 11,    // anyone: the migration cannot go on here (body: Reason)
  kPhase = 12,     // anyone: a phase span for the timeline (body: Phase)
  kCaptured = 13,  // anyone, unprompted (migration 0): these comm_keys were captured into a CUDA graph (KeyList)
  kTape = 14,      // L: one chunk of its tape (lib/sandbox/tape.h blob), in order; an empty chunk ends it (Blob)
  kPrepared = 15,  // J: connected to L's state, ready to read at S (body: Reason = the read path, for the log)
};
const char* CmdName(uint16_t kind);
const char* EvName(uint16_t kind);

inline constexpr size_t kUniqueIdBytes = 128;         // sizeof(ncclUniqueId)
inline constexpr size_t kMaxBlob = kMaxPayload - 64;  // a transfer descriptor must fit one frame

struct Step {
  int64_t step = 0;
  void Encode(Writer& w) const { w.I64(step); }
  bool Decode(Reader& r) {
    step = r.I64();
    return r.AtEnd();
  }
};

struct Reason {
  std::string text;
  void Encode(Writer& w) const { w.Str(text); }
  bool Decode(Reader& r) {
    text = r.Str();
    return r.AtEnd();
  }
};

struct KeyList {
  std::vector<uint64_t> keys;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct Ready {
  std::vector<CommCreated> comms;  // the joiner's VComms, creation order
  std::vector<Region> regions;     // its state table
  int64_t step = -1;               // the step its sandbox reached
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct IdEntry {
  uint64_t comm_key = 0;
  std::array<uint8_t, kUniqueIdBytes> id{};
  bool operator==(const IdEntry&) const = default;
};
struct Ids {
  std::vector<IdEntry> ids;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct BuildEntry {
  uint64_t comm_key = 0;
  std::array<uint8_t, kUniqueIdBytes> id{};
  int32_t nranks = 0;
  int32_t rank = 0;  // this member's rank in the replacement (the joiner: the leaver's)
  bool operator==(const BuildEntry&) const = default;
};
struct Build {
  std::vector<BuildEntry> entries;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct Built {
  uint64_t comm_key = 0;
  uint8_t ok = 0;
  std::string message;  // why not
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct Blob {
  std::vector<uint8_t> bytes;  // at most kMaxBlob
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

// PREPARE: the leaver's descriptor and the pid it registered with (the joiner refuses a descriptor that names
// another process: docs/transfer.md, "Security").
struct Prepare {
  std::vector<uint8_t> descriptor;  // at most kMaxBlob
  uint32_t leaver_pid = 0;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct Progress {
  uint64_t done = 0;
  uint64_t total = 0;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct Switched {
  int64_t step = 0;
  uint64_t stall_ns = 0;        // extra wait at S compared with a normal step
  uint64_t median_step_ns = 0;  // its median step time before S
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct Phase {
  std::string name;
  uint64_t start_ns = 0;  // sender's CLOCK_REALTIME
  uint64_t end_ns = 0;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

// A Command/Event with this body.
template <typename B>
Command Make(uint16_t kind, uint64_t migration, const B& body) {
  Command c;
  c.kind = kind;
  c.migration = migration;
  c.body = EncodePayload(body);
  return c;
}

}  // namespace trainmover::control::mig

#endif  // TRAINMOVER_LIB_CONTROL_MIGRATION_MSGS_H_
