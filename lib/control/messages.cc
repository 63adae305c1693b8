// SPDX-License-Identifier: Apache-2.0
#include "messages.h"

namespace trainmover::control {

const char* MsgTypeName(uint16_t type) {
  switch (static_cast<MsgType>(type)) {
    case MsgType::kHello:
      return "HELLO";
    case MsgType::kHelloAck:
      return "HELLO_ACK";
    case MsgType::kReject:
      return "REJECT";
    case MsgType::kRegister:
      return "REGISTER";
    case MsgType::kRegisterAck:
      return "REGISTER_ACK";
    case MsgType::kHeartbeat:
      return "HEARTBEAT";
    case MsgType::kCommCreated:
      return "COMM_CREATED";
    case MsgType::kCommDestroyed:
      return "COMM_DESTROYED";
    case MsgType::kSafePoint:
      return "SAFEPOINT";
    case MsgType::kRegions:
      return "REGIONS";
    case MsgType::kStatusReq:
      return "STATUS_REQ";
    case MsgType::kStatusReply:
      return "STATUS_REPLY";
    case MsgType::kMigrateReq:
      return "MIGRATE_REQ";
    case MsgType::kMigrateReply:
      return "MIGRATE_REPLY";
    case MsgType::kCancelReq:
      return "CANCEL_REQ";
    case MsgType::kCancelReply:
      return "CANCEL_REPLY";
    case MsgType::kTimelineReq:
      return "TIMELINE_REQ";
    case MsgType::kTimelineReply:
      return "TIMELINE_REPLY";
    case MsgType::kCommand:
      return "COMMAND";
    case MsgType::kEvent:
      return "EVENT";
    case MsgType::kBye:
      return "BYE";
    case MsgType::kKeepalive:
      return "KEEPALIVE";
  }
  return "UNKNOWN";
}

const char* LineageKindName(uint8_t kind) {
  switch (static_cast<LineageKind>(kind)) {
    case LineageKind::kInitRank:
      return "InitRank";
    case LineageKind::kInitRankConfig:
      return "InitRankConfig";
    case LineageKind::kInitScalable:
      return "InitRankScalable";
    case LineageKind::kInitAll:
      return "InitAll";
    case LineageKind::kSplit:
      return "Split";
    case LineageKind::kShrink:
      return "Shrink";
  }
  return "unknown";
}

void Hello::Encode(Writer& w) const {
  w.U16(min_version);
  w.U16(max_version);
  w.Bytes(nonce.data(), nonce.size());
  w.Str(client_kind);
}
bool Hello::Decode(Reader& r) {
  min_version = r.U16();
  max_version = r.U16();
  r.Bytes(nonce.data(), nonce.size());
  client_kind = r.Str(64);
  return r.AtEnd() && min_version <= max_version;
}

void HelloAck::Encode(Writer& w) const {
  w.U16(version);
  w.Bytes(nonce.data(), nonce.size());
  w.U64(coordinator_epoch);
}
bool HelloAck::Decode(Reader& r) {
  version = r.U16();
  r.Bytes(nonce.data(), nonce.size());
  coordinator_epoch = r.U64();
  return r.AtEnd();
}

void Reject::Encode(Writer& w) const {
  w.U16(code);
  w.Str(reason);
}
bool Reject::Decode(Reader& r) {
  code = r.U16();
  reason = r.Str();
  return r.AtEnd();
}

void Register::Encode(Writer& w) const {
  w.U64(instance);
  w.Str(role);
  w.Str(host);
  w.U32(pid);
  w.U32(static_cast<uint32_t>(rank));
  w.U32(static_cast<uint32_t>(world));
  w.U32(static_cast<uint32_t>(replace));
  w.U16(agent_version);
  w.StrList(cmdline);
  w.Str(cwd);
  w.StrList(env);
}
bool Register::Decode(Reader& r) {
  instance = r.U64();
  role = r.Str(64);
  host = r.Str(256);
  pid = r.U32();
  rank = static_cast<int32_t>(r.U32());
  world = static_cast<int32_t>(r.U32());
  replace = static_cast<int32_t>(r.U32());
  agent_version = r.U16();
  cmdline = r.StrList();
  cwd = r.Str();
  env = r.StrList();
  return r.AtEnd() && (role == "worker" || role == "joiner" || role == "standby" || role == "node");
}

void RegisterAck::Encode(Writer& w) const {
  w.U64(process_id);
  w.U32(heartbeat_interval_ms);
  if (!has_table) return;
  w.U8(has_table);
  size_t n = replaced_comms.size() < kMaxList ? replaced_comms.size() : kMaxList;
  w.U32(static_cast<uint32_t>(n));
  for (size_t i = 0; i < n; ++i) replaced_comms[i].Encode(w);
}
bool RegisterAck::Decode(Reader& r) {
  process_id = r.U64();
  heartbeat_interval_ms = r.U32();
  has_table = 0;
  replaced_comms.clear();
  if (!r.AtEnd()) {
    has_table = r.U8();
    uint32_t n = r.Count(kMaxList, 40);
    for (uint32_t i = 0; i < n && r.ok(); ++i) {
      CommCreated c;
      if (!c.DecodeFields(r)) r.Fail();
      replaced_comms.push_back(std::move(c));
    }
    if (has_table != 1) r.Fail();
  }
  return r.AtEnd() && heartbeat_interval_ms > 0;
}

void Heartbeat::Encode(Writer& w) const {
  w.I64(step);
  w.U64(time_ns);
  w.U64(dropped);
  if (window.steps == 0) return;
  w.U32(window.steps);
  w.U64(window.compute_ns);
  w.U64(window.wait_ns);
  w.U64(window.compute_p25_ns);
}
bool Heartbeat::Decode(Reader& r) {
  step = r.I64();
  time_ns = r.U64();
  dropped = r.U64();
  window = StepWindow{};
  if (r.ok() && !r.AtEnd()) {
    window.steps = r.U32();
    window.compute_ns = r.U64();
    window.wait_ns = r.U64();
    window.compute_p25_ns = r.U64();
    if (window.steps == 0) return false;  // absent when empty: the encoding stays canonical
  }
  return r.AtEnd();
}

void Lineage::Encode(Writer& w) const {
  w.U8(kind);
  w.U32(index);
  w.U64(parent_key);
  w.U32(child_index);
  w.U32(static_cast<uint32_t>(color));
  w.U32(static_cast<uint32_t>(key));
  w.U32(static_cast<uint32_t>(excluded.size()));
  for (int32_t e : excluded) w.U32(static_cast<uint32_t>(e));
  w.U64(id_hash);
}
bool Lineage::Decode(Reader& r) {
  kind = r.U8();
  index = r.U32();
  parent_key = r.U64();
  child_index = r.U32();
  color = static_cast<int32_t>(r.U32());
  key = static_cast<int32_t>(r.U32());
  uint32_t n = r.Count(kMaxList, 4);
  excluded.clear();
  excluded.reserve(n);
  for (uint32_t i = 0; i < n; ++i) excluded.push_back(static_cast<int32_t>(r.U32()));
  id_hash = r.U64();
  return r.ok() && kind >= 1 && kind <= 6;
}

void CommCreated::Encode(Writer& w) const {
  w.U64(comm_key);
  lineage.Encode(w);
  w.U32(static_cast<uint32_t>(rank));
  w.U32(static_cast<uint32_t>(nranks));
  w.U32(static_cast<uint32_t>(device));
  w.U8(blocking);
}
bool CommCreated::DecodeFields(Reader& r) {
  comm_key = r.U64();
  bool lin = lineage.Decode(r);
  rank = static_cast<int32_t>(r.U32());
  nranks = static_cast<int32_t>(r.U32());
  device = static_cast<int32_t>(r.U32());
  blocking = r.U8();
  return lin && r.ok() && blocking <= 1;
}
bool CommCreated::Decode(Reader& r) { return DecodeFields(r) && r.AtEnd(); }
bool CommCreated::Valid() const { return nranks > 0 && nranks <= (1 << 20) && rank >= 0 && rank < nranks; }

void CommDestroyed::Encode(Writer& w) const { w.U64(comm_key); }
bool CommDestroyed::Decode(Reader& r) {
  comm_key = r.U64();
  return r.AtEnd();
}

void SafePoint::Encode(Writer& w) const {
  w.I64(step);
  w.U64(time_ns);
}
bool SafePoint::Decode(Reader& r) {
  step = r.I64();
  time_ns = r.U64();
  return r.AtEnd();
}

void Regions::Encode(Writer& w) const {
  size_t n = regions.size() < kMaxList ? regions.size() : kMaxList;
  w.U32(static_cast<uint32_t>(n));
  for (size_t i = 0; i < n; ++i) {
    w.Str(regions[i].name);
    w.U64(regions[i].bytes);
  }
}
bool Regions::Decode(Reader& r) {
  uint32_t n = r.Count(kMaxList, 12);
  regions.clear();
  regions.reserve(n);
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    Region g;
    g.name = r.Str(64);
    g.bytes = r.U64();
    regions.push_back(std::move(g));
  }
  return r.AtEnd();
}

void JsonReply::Encode(Writer& w) const {
  w.U8(ok);
  // The JSON document may exceed kMaxString: it is bounded by the frame instead.
  w.U32(static_cast<uint32_t>(json.size()));
  w.Bytes(json.data(), json.size());
}
bool JsonReply::Decode(Reader& r) {
  ok = r.U8();
  json = r.Str(kMaxPayload);
  return r.AtEnd();
}

void MigrateReq::Encode(Writer& w) const {
  w.U32(static_cast<uint32_t>(rank));
  w.Str(host);
  w.U8(spawn);
  if (more_ranks.empty()) return;
  w.U32(static_cast<uint32_t>(more_ranks.size()));
  for (int32_t x : more_ranks) w.U32(static_cast<uint32_t>(x));
}
bool MigrateReq::Decode(Reader& r) {
  rank = static_cast<int32_t>(r.U32());
  host = r.Str(256);
  spawn = r.U8();
  more_ranks.clear();
  if (!r.AtEnd()) {
    uint32_t n = r.U32();
    if (n == 0 || n > 4096) return false;  // absent when empty: the encoding stays canonical
    for (uint32_t i = 0; i < n && r.ok(); ++i) more_ranks.push_back(static_cast<int32_t>(r.U32()));
  }
  return r.AtEnd() && spawn <= 1;
}

void MigrateReply::Encode(Writer& w) const {
  w.U64(id);
  w.U8(accepted);
  w.Str(state);
  w.Str(message);
}
bool MigrateReply::Decode(Reader& r) {
  id = r.U64();
  accepted = r.U8();
  state = r.Str(64);
  message = r.Str();
  return r.AtEnd();
}

void CancelReq::Encode(Writer& w) const { w.U64(id); }
bool CancelReq::Decode(Reader& r) {
  id = r.U64();
  return r.AtEnd();
}

void CancelReply::Encode(Writer& w) const {
  w.U8(ok);
  w.Str(message);
}
bool CancelReply::Decode(Reader& r) {
  ok = r.U8();
  message = r.Str();
  return r.AtEnd();
}

void TimelineReq::Encode(Writer& w) const { w.U64(id); }
bool TimelineReq::Decode(Reader& r) {
  id = r.U64();
  return r.AtEnd();
}

void Command::Encode(Writer& w) const {
  w.U16(kind);
  w.U64(migration);
  w.U32(static_cast<uint32_t>(body.size()));
  w.Bytes(body.data(), body.size());
}
bool Command::Decode(Reader& r) {
  kind = r.U16();
  migration = r.U64();
  uint32_t n = r.Count(kMaxPayload, 1);
  body.resize(n);
  if (n) r.Bytes(body.data(), n);
  return r.AtEnd();
}

std::string ByeReconnect(const std::string& why) { return std::string(kByeReconnect) + ": " + why; }

std::optional<std::string> ByeReconnectWhy(const std::string& reason) {
  const std::string prefix = std::string(kByeReconnect) + ": ";
  if (reason == kByeReconnect) return "it heard nothing from the coordinator";
  if (reason.rfind(prefix, 0) == 0) return reason.substr(prefix.size());
  return std::nullopt;
}

}  // namespace trainmover::control
