// SPDX-License-Identifier: Apache-2.0
#include "msgs.h"

namespace trainmover::control::mig {

const char* CmdName(uint16_t kind) {
  switch (static_cast<Cmd>(kind)) {
    case Cmd::kMakeIds:
      return "MAKE_IDS";
    case Cmd::kBuild:
      return "BUILD";
    case Cmd::kExpose:
      return "EXPOSE";
    case Cmd::kRead:
      return "READ";
    case Cmd::kPropose:
      return "PROPOSE";
    case Cmd::kCommit:
      return "COMMIT";
    case Cmd::kSwitch:
      return "SWITCH";
    case Cmd::kAbort:
      return "ABORT";
    case Cmd::kMap:
      return "MAP";
    case Cmd::kRecordTape:
      return "RECORD_TAPE";
    case Cmd::kTape:
      return "TAPE";
    case Cmd::kPrepare:
      return "PREPARE";
  }
  return "UNKNOWN";
}

const char* EvName(uint16_t kind) {
  switch (static_cast<Ev>(kind)) {
    case Ev::kReady:
      return "READY";
    case Ev::kIds:
      return "IDS";
    case Ev::kBuilt:
      return "BUILT";
    case Ev::kExposed:
      return "EXPOSED";
    case Ev::kAccept:
      return "ACCEPT";
    case Ev::kPassed:
      return "PASSED";
    case Ev::kAtStep:
      return "AT_STEP";
    case Ev::kProgress:
      return "PROGRESS";
    case Ev::kVerified:
      return "VERIFIED";
    case Ev::kSwitched:
      return "SWITCHED";
    case Ev::kFailed:
      return "FAILED";
    case Ev::kPhase:
      return "PHASE";
    case Ev::kCaptured:
      return "CAPTURED";
    case Ev::kTape:
      return "TAPE";
    case Ev::kPrepared:
      return "PREPARED";
  }
  return "UNKNOWN";
}

void KeyList::Encode(Writer& w) const {
  w.U32(static_cast<uint32_t>(keys.size()));
  for (uint64_t k : keys) w.U64(k);
}
bool KeyList::Decode(Reader& r) {
  uint32_t n = r.Count(kMaxList, 8);
  keys.resize(n);
  for (uint32_t i = 0; i < n; ++i) keys[i] = r.U64();
  return r.AtEnd();
}

void Ready::Encode(Writer& w) const {
  w.U32(static_cast<uint32_t>(comms.size()));
  for (const CommCreated& c : comms) c.Encode(w);
  Regions{regions}.Encode(w);
  w.I64(step);
}
bool Ready::Decode(Reader& r) {
  uint32_t n = r.Count(kMaxList, 40);
  comms.clear();
  for (uint32_t i = 0; i < n && r.ok(); ++i) {
    CommCreated c;
    if (!c.DecodeFields(r) || !c.Valid()) r.Fail();
    comms.push_back(std::move(c));
  }
  uint32_t m = r.Count(kMaxList, 12);
  regions.clear();
  for (uint32_t i = 0; i < m && r.ok(); ++i) {
    Region g;
    g.name = r.Str(64);
    g.bytes = r.U64();
    regions.push_back(std::move(g));
  }
  step = r.I64();
  return r.AtEnd();
}

void Ids::Encode(Writer& w) const {
  w.U32(static_cast<uint32_t>(ids.size()));
  for (const IdEntry& e : ids) {
    w.U64(e.comm_key);
    w.Bytes(e.id.data(), e.id.size());
  }
}
bool Ids::Decode(Reader& r) {
  uint32_t n = r.Count(kMaxList, 8 + kUniqueIdBytes);
  ids.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    ids[i].comm_key = r.U64();
    r.Bytes(ids[i].id.data(), kUniqueIdBytes);
  }
  return r.AtEnd();
}

void Build::Encode(Writer& w) const {
  w.U32(static_cast<uint32_t>(entries.size()));
  for (const BuildEntry& e : entries) {
    w.U64(e.comm_key);
    w.Bytes(e.id.data(), e.id.size());
    w.U32(static_cast<uint32_t>(e.nranks));
    w.U32(static_cast<uint32_t>(e.rank));
  }
}
bool Build::Decode(Reader& r) {
  uint32_t n = r.Count(kMaxList, 16 + kUniqueIdBytes);
  entries.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    BuildEntry& e = entries[i];
    e.comm_key = r.U64();
    r.Bytes(e.id.data(), kUniqueIdBytes);
    e.nranks = static_cast<int32_t>(r.U32());
    e.rank = static_cast<int32_t>(r.U32());
    if (r.ok() && (e.nranks <= 0 || e.rank < 0 || e.rank >= e.nranks)) r.Fail();
  }
  return r.AtEnd();
}

void Built::Encode(Writer& w) const {
  w.U64(comm_key);
  w.U8(ok);
  w.Str(message);
}
bool Built::Decode(Reader& r) {
  comm_key = r.U64();
  ok = r.U8();
  message = r.Str();
  return r.AtEnd() && ok <= 1;
}

void Blob::Encode(Writer& w) const {
  w.U32(static_cast<uint32_t>(bytes.size()));
  w.Bytes(bytes.data(), bytes.size());
}
bool Blob::Decode(Reader& r) {
  uint32_t n = r.Count(kMaxBlob, 1);
  bytes.resize(n);
  if (n) r.Bytes(bytes.data(), n);
  return r.AtEnd();
}

void Prepare::Encode(Writer& w) const {
  w.U32(static_cast<uint32_t>(descriptor.size()));
  w.Bytes(descriptor.data(), descriptor.size());
  w.U32(leaver_pid);
}
bool Prepare::Decode(Reader& r) {
  uint32_t n = r.Count(kMaxBlob, 1);
  descriptor.resize(n);
  if (n) r.Bytes(descriptor.data(), n);
  leaver_pid = r.U32();
  return r.AtEnd();
}

void Progress::Encode(Writer& w) const {
  w.U64(done);
  w.U64(total);
}
bool Progress::Decode(Reader& r) {
  done = r.U64();
  total = r.U64();
  return r.AtEnd() && done <= total;
}

void Switched::Encode(Writer& w) const {
  w.I64(step);
  w.U64(stall_ns);
  w.U64(median_step_ns);
}
bool Switched::Decode(Reader& r) {
  step = r.I64();
  stall_ns = r.U64();
  median_step_ns = r.U64();
  return r.AtEnd();
}

void Phase::Encode(Writer& w) const {
  w.Str(name);
  w.U64(start_ns);
  w.U64(end_ns);
}
bool Phase::Decode(Reader& r) {
  name = r.Str(64);
  start_ns = r.U64();
  end_ns = r.U64();
  return r.AtEnd() && (end_ns == 0 || end_ns >= start_ns);
}

}  // namespace trainmover::control::mig
