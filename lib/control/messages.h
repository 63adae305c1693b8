// SPDX-License-Identifier: Apache-2.0
// messages.h: every message of the control protocol and its binary encoding (docs/protocol.md).
//
// Each message is a plain struct with Encode (appends the payload) and Decode (parses a whole payload;
// false on any bound violation, truncation or trailing bytes). Decoding never allocates more than the
// input can justify (see Reader::Count). Structs are values; no thread-safety concerns.
#ifndef TRAINMOVER_LIB_CONTROL_MESSAGES_H_
#define TRAINMOVER_LIB_CONTROL_MESSAGES_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "wire.h"

namespace trainmover::control {

enum class MsgType : uint16_t {
  kHello = 1,           // client -> D, MAC with the token, seq 0
  kHelloAck = 2,        // D -> client, MAC with the token, seq 0
  kReject = 3,          // either way, then close; carries only a reason
  kRegister = 4,        // agent -> D
  kRegisterAck = 5,     // D -> agent
  kHeartbeat = 6,       // agent -> D
  kCommCreated = 7,     // agent -> D
  kCommDestroyed = 8,   // agent -> D
  kSafePoint = 9,       // agent -> D
  kRegions = 10,        // agent -> D (the whole table, replaces the previous one)
  kStatusReq = 11,      // tmctl -> D
  kStatusReply = 12,    // D -> tmctl
  kMigrateReq = 13,     // tmctl -> D
  kMigrateReply = 14,   // D -> tmctl
  kCancelReq = 15,      // tmctl -> D
  kCancelReply = 16,    // D -> tmctl
  kTimelineReq = 17,    // tmctl -> D
  kTimelineReply = 18,  // D -> tmctl
  kCommand = 19,        // D -> agent (migration engine commands)
  kEvent = 20,          // agent -> D (migration engine reports)
  kBye = 21,            // either way: orderly close
  kKeepalive = 22,      // D -> agent, empty: the coordinator is alive (agents time out on silence)
};
const char* MsgTypeName(uint16_t type);

// Who opened a connection (HELLO.client_kind).
inline constexpr char kClientAgent[] = "agent";
inline constexpr char kClientTool[] = "tmctl";

struct Hello {
  uint16_t min_version = kProtocolVersion;
  uint16_t max_version = kProtocolVersion;
  Nonce nonce{};
  std::string client_kind;  // kClientAgent or kClientTool
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct HelloAck {
  uint16_t version = kProtocolVersion;
  Nonce nonce{};
  uint64_t coordinator_epoch = 0;  // random per coordinator start: a change tells an agent D restarted
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

enum class RejectCode : uint16_t { kAuth = 1, kProtocol = 2, kVersion = 3, kTooLarge = 4, kOrder = 5, kBusy = 6 };
struct Reject {
  uint16_t code = 0;
  std::string reason;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

// What a process is: enough for the coordinator to show it and to respawn a joiner with its command.
struct Register {
  uint64_t instance = 0;  // random per process; a reconnecting agent sends the same value
  std::string role;       // worker, joiner, standby, node (a node agent: tmrun --node, lib/control/node.h)
  std::string host;
  uint32_t pid = 0;
  int32_t rank = -1;  // -1 until known (the first communicator tells)
  int32_t world = -1;
  int32_t replace = -1;  // TRAINMOVER_REPLACE of a joiner, else -1
  uint16_t agent_version = kProtocolVersion;
  std::vector<std::string> cmdline;
  std::string cwd;
  std::vector<std::string> env;  // KEY=VALUE, at most kMaxList entries of at most kMaxString bytes
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct CommCreated;
struct RegisterAck;

// How the steps since the previous heartbeat were spent (docs/stragglers.md): `steps` timed steps (safe point
// to safe point, outside the sandbox), their total time computing (outside NCCL) and waiting (inside blocking
// NCCL calls), and the lower quartile of the steps' compute times (the detector's figure, straggler.h). Sent only
// when steps > 0.
struct StepWindow {
  uint32_t steps = 0;
  uint64_t compute_ns = 0;
  uint64_t wait_ns = 0;
  uint64_t compute_p25_ns = 0;
  bool operator==(const StepWindow&) const = default;
};

struct Heartbeat {
  int64_t step = -1;     // latest safe-point step, -1 before the first
  uint64_t time_ns = 0;  // sender's CLOCK_REALTIME
  uint64_t dropped = 0;  // non-essential reports dropped so far (ring full)
  // Optional trailing block (absent when window.steps == 0, so a heartbeat without steps is encoded as
  // before): the step window since the previous heartbeat.
  StepWindow window;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

// How a virtual communicator was made (docs/architecture.md, "Identity of a communicator").
enum class LineageKind : uint8_t {
  kInitRank = 1,
  kInitRankConfig = 2,
  kInitScalable = 3,
  kInitAll = 4,
  kSplit = 5,
  kShrink = 6
};
const char* LineageKindName(uint8_t kind);
struct Lineage {
  uint8_t kind = 0;
  uint32_t index = 0;             // creation order in the process
  uint64_t parent_key = 0;        // split/shrink
  uint32_t child_index = 0;       // split/shrink: the child_index-th split/shrink of the parent
  int32_t color = 0;              // split
  int32_t key = 0;                // split
  std::vector<int32_t> excluded;  // shrink
  uint64_t id_hash = 0;           // hash of the unique id(s): a cross-check only
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
  bool operator==(const Lineage&) const = default;
};

// A communicator as its member reports it: what the real communicator answers (ncclCommCount, ncclCommUserRank,
// ncclCommCuDevice) and whether it is blocking (its config, or its parent's for a Split/Shrink without one).
struct CommCreated {
  uint64_t comm_key = 0;
  Lineage lineage;
  int32_t rank = 0;
  int32_t nranks = 0;
  int32_t device = -1;   // ncclCommCuDevice; -1: not known
  uint8_t blocking = 1;  // 0: made non-blocking
  void Encode(Writer& w) const;
  bool Decode(Reader& r);          // the whole payload; structural checks only (see Valid)
  bool DecodeFields(Reader& r);    // one inside a longer body
  bool Valid() const;              // 0 < nranks <= 2^20, 0 <= rank < nranks
};

// The reply to REGISTER. To a joiner (role joiner, replace R) it carries the communicator table of the process
// that holds rank R now (its communicators in creation order, as that process reported them): the joiner's
// sandbox answers every query from it (docs/migration.md, "The sandbox"). has_table 0: not a joiner, or no alive
// worker holds R.
struct RegisterAck {
  uint64_t process_id = 0;                // the coordinator's id for this process (stable across reconnects)
  uint32_t heartbeat_interval_ms = 1000;  // how often the agent must send HEARTBEAT
  uint8_t has_table = 0;
  std::vector<CommCreated> replaced_comms;  // optional trailing part: when has_table
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct CommDestroyed {
  uint64_t comm_key = 0;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct SafePoint {
  int64_t step = 0;
  uint64_t time_ns = 0;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct Region {
  std::string name;
  uint64_t bytes = 0;
  bool operator==(const Region&) const = default;
};
struct Regions {
  std::vector<Region> regions;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct StatusReq {
  void Encode(Writer&) const {}
  bool Decode(Reader& r) { return r.AtEnd(); }
};

// Replies that carry a JSON document produced by the coordinator (bounded by the frame, kMaxPayload).
struct JsonReply {
  uint8_t ok = 1;
  std::string json;  // when !ok: a message for people
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct MigrateReq {
  int32_t rank = -1;
  std::string host;                 // target host; empty: any
  uint8_t spawn = 0;                // start the joiner from the leaver's command line
  std::vector<int32_t> more_ranks;  // further ranks moved in the same migration (optional trailing list)
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct MigrateReply {
  uint64_t id = 0;  // 0 when refused before being recorded
  uint8_t accepted = 0;
  std::string state;  // migration state name
  std::string message;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct CancelReq {
  uint64_t id = 0;  // 0: the active migration
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct CancelReply {
  uint8_t ok = 0;
  std::string message;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

struct TimelineReq {
  uint64_t id = 0;  // 0: the latest migration
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};

// Commands and events of the migration engine: a kind, the migration they belong to, and a body that
// the engine encodes with Writer (at most kMaxPayload - 16 bytes). The control layer routes them only.
struct Command {
  uint16_t kind = 0;
  uint64_t migration = 0;
  std::vector<uint8_t> body;
  void Encode(Writer& w) const;
  bool Decode(Reader& r);
};
using Event = Command;

// BYE's reasons. kByeExit: the process is exiting (state exited). kByeReconnect, alone or followed by ": " and why:
// a live process gives up on this connection (it heard nothing from the coordinator for its silence timeout, or the
// coordinator read nothing of what it queued: a stalled connection) and will register again: lost, but not failed
// unless it does not come back (docs/reliability.md, "A closed connection is not a death").
inline constexpr char kByeExit[] = "exit";
inline constexpr char kByeReconnect[] = "reconnect";
// The BYE "reconnect" reason with why; ByeReconnectWhy: nullopt when `reason` is not one, else why (for the bare
// reason "it heard nothing from the coordinator", the only one before reasons said why).
std::string ByeReconnect(const std::string& why);
std::optional<std::string> ByeReconnectWhy(const std::string& reason);
struct Bye {
  std::string reason;
  void Encode(Writer& w) const { w.Str(reason); }
  bool Decode(Reader& r) {
    reason = r.Str();
    return r.AtEnd();
  }
};

// Encodes a message into a payload.
template <typename M>
std::vector<uint8_t> EncodePayload(const M& m) {
  Writer w;
  m.Encode(w);
  return w.Take();
}

// Decodes a whole payload into a message; false on any error (including trailing bytes).
template <typename M>
bool DecodePayload(const std::vector<uint8_t>& p, M* m) {
  Reader r(p.data(), p.size());
  return m->Decode(r);
}

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_MESSAGES_H_
