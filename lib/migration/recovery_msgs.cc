// SPDX-License-Identifier: Apache-2.0
#include "recovery_msgs.h"

namespace trainmover::control::rec {

const char* RecCmdName(uint16_t kind) {
  switch (static_cast<Cmd>(kind)) {
    case Cmd::kSnapPull:
      return "SNAP_PULL";
    case Cmd::kSnapShipped:
      return "SNAP_SHIPPED";
    case Cmd::kFence:
      return "FENCE";
    case Cmd::kExposeHeld:
      return "EXPOSE_HELD";
    case Cmd::kRollback:
      return "ROLLBACK";
    case Cmd::kGiveUp:
      return "GIVE_UP";
    case Cmd::kFenced:
      return "FENCED";
    case Cmd::kProbe:
      return "PROBE";
    case Cmd::kSnapWarm:
      return "SNAP_WARM";
    case Cmd::kHoldAfter:
      return "HOLD_AFTER";
    case Cmd::kSnapDrop:
      return "SNAP_DROP";
  }
  return "UNKNOWN";
}

const char* RecEvName(uint16_t kind) {
  switch (static_cast<Ev>(kind)) {
    case Ev::kSnapTaken:
      return "SNAP_TAKEN";
    case Ev::kSnapHeld:
      return "SNAP_HELD";
    case Ev::kHeld:
      return "HELD";
    case Ev::kHeldExposed:
      return "HELD_EXPOSED";
    case Ev::kRolledBack:
      return "ROLLED_BACK";
    case Ev::kCommFault:
      return "COMM_FAULT";
    case Ev::kProbed:
      return "PROBED";
    case Ev::kSlotExposed:
      return "SLOT_EXPOSED";
    case Ev::kFenceAt:
      return "FENCE_AT";
  }
  return "UNKNOWN";
}

void RecMsg::Encode(Writer& w) const {
  w.U64(epoch);
  w.U32(static_cast<uint32_t>(rank));
  w.I64(step);
  w.I64(complete);
  w.U32(slot);
  w.U8(ok);
  w.Str(text);
  w.U32(static_cast<uint32_t>(words.size()));
  for (uint64_t x : words) w.U64(x);
  w.U32(static_cast<uint32_t>(regions.size()));
  for (const Region& g : regions) {
    w.Str(g.name);
    w.U64(g.bytes);
  }
  w.U32(static_cast<uint32_t>(blob.size()));
  w.Bytes(blob.data(), blob.size());
  if (every != 0) w.I64(every);  // trailing and optional (absent when 0): the layout without it is unchanged
}

bool RecMsg::Decode(Reader& r) {
  epoch = r.U64();
  rank = static_cast<int32_t>(r.U32());
  step = r.I64();
  complete = r.I64();
  slot = r.U32();
  ok = r.U8();
  text = r.Str();
  uint32_t n = r.Count(kMaxList, 8);
  words.resize(n);
  for (uint32_t i = 0; i < n; ++i) words[i] = r.U64();
  n = r.Count(kMaxList, 12);
  regions.resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    regions[i].name = r.Str();
    regions[i].bytes = r.U64();
  }
  n = r.Count(kMaxPayload, 1);
  blob.resize(n);
  if (n && !r.Bytes(blob.data(), n)) return false;
  every = 0;
  if (!r.AtEnd()) {
    every = r.I64();
    if (every == 0) return false;  // absent when 0: the encoding stays canonical
  }
  return r.AtEnd();
}

}  // namespace trainmover::control::rec
