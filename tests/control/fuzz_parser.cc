// SPDX-License-Identifier: Apache-2.0
// libFuzzer target of the control protocol's parsers: frame parsing (with and without a valid MAC, so
// the fuzzer reaches the decoders), every message decoder, and tmctl's JSON reader. Built by
// run_fuzz.sh with clang++ -fsanitize=fuzzer,address,undefined.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "json.h"
#include "control/messages.h"
#include "control/node.h"
#include "migration/msgs.h"
#include "migration/recovery_msgs.h"
#include "migration/standby_msgs.h"
#include "control/wire.h"

using namespace trainmover::control;

namespace {

template <typename M>
void Try(const std::vector<uint8_t>& p) {
  M m;
  if (DecodePayload(p, &m)) {
    // What decodes must re-encode to the same bytes (the encoding is canonical).
    std::vector<uint8_t> again = EncodePayload(m);
    if (again != p) __builtin_trap();
  }
}

void DecodeAll(const std::vector<uint8_t>& p) {
  Try<Hello>(p);
  Try<HelloAck>(p);
  Try<Reject>(p);
  Try<Register>(p);
  Try<RegisterAck>(p);
  Try<Heartbeat>(p);
  Try<CommCreated>(p);
  Try<CommDestroyed>(p);
  Try<SafePoint>(p);
  Try<Regions>(p);
  Try<JsonReply>(p);
  Try<MigrateReq>(p);
  Try<MigrateReply>(p);
  Try<CancelReq>(p);
  Try<CancelReply>(p);
  Try<TimelineReq>(p);
  Try<Command>(p);
  Try<Bye>(p);
  Try<mig::Step>(p);
  Try<mig::Reason>(p);
  Try<mig::KeyList>(p);
  Try<mig::Ready>(p);
  Try<mig::Ids>(p);
  Try<mig::Build>(p);
  Try<mig::Built>(p);
  Try<mig::Blob>(p);
  Try<mig::Progress>(p);
  Try<mig::Switched>(p);
  Try<mig::Phase>(p);
  Try<rec::RecMsg>(p);
  Try<standby::Ready>(p);
  Try<standby::Assign>(p);
  Try<node::Spawn>(p);
  Try<node::Child>(p);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::vector<uint8_t> rest(data + 1, data + size);
  switch (data[0] % 4) {
    case 0: {  // raw bytes as a frame stream
      Frame f;
      size_t off = 0, used = 0;
      while (off < rest.size() &&
             ParseFrame(rest.data() + off, rest.size() - off, "key", &f, &used) == FrameStatus::kOk) {
        DecodeAll(f.payload);
        off += used;
      }
      break;
    }
    case 1: {  // a well-MACed frame around fuzzed header fields and payload
      if (rest.size() < 10) break;
      uint16_t type = static_cast<uint16_t>(rest[0] | rest[1] << 8);
      uint64_t seq = rest[2];
      std::vector<uint8_t> payload(rest.begin() + 10, rest.end());
      auto fr = EncodeFrame(type, seq, payload, "key");
      Frame f;
      size_t used = 0;
      if (ParseFrame(fr.data(), fr.size(), "key", &f, &used) != FrameStatus::kOk || f.payload != payload) {
        __builtin_trap();
      }
      DecodeAll(f.payload);
      break;
    }
    case 2:
      DecodeAll(rest);
      break;
    case 3: {
      tmctl::Json j;
      tmctl::ParseJson(std::string(rest.begin(), rest.end()), &j);
      break;
    }
  }
  return 0;
}
