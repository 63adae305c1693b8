// SPDX-License-Identifier: Apache-2.0
#include "standby_msgs.h"

namespace trainmover::control::standby {

const char* StandbyCmdName(uint16_t kind) {
  switch (static_cast<Cmd>(kind)) {
    case Cmd::kAssign:
      return "ASSIGN";
    case Cmd::kDismiss:
      return "DISMISS";
  }
  return "UNKNOWN";
}

void Ready::Encode(Writer& w) const {
  w.U32(static_cast<uint32_t>(warm_rank));
  w.U8(follows_rank);
  sandbox.Encode(w);
}

bool Ready::Decode(Reader& r) {
  warm_rank = static_cast<int32_t>(r.U32());
  follows_rank = r.U8();
  return r.ok() && follows_rank <= 1 && sandbox.Decode(r);
}

void Assign::Encode(Writer& w) const {
  w.U32(static_cast<uint32_t>(rank));
  w.U32(static_cast<uint32_t>(world));
}

bool Assign::Decode(Reader& r) {
  rank = static_cast<int32_t>(r.U32());
  world = static_cast<int32_t>(r.U32());
  return r.AtEnd() && rank >= 0 && world > rank;
}

}  // namespace trainmover::control::standby
