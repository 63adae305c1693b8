// SPDX-License-Identifier: Apache-2.0
// libFuzzer target of the control protocol's parsers: handshake frames (with and without a valid MAC, so the
// fuzzer reaches the decoders), sealed frames (forged ones must never open; real ones open once, in order),
// every message decoder, and tmctl's JSON reader. Built by
// run_fuzz.sh with clang++ -fsanitize=fuzzer,address,undefined.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/json.h"
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
  Try<mig::Prepare>(p);
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

// Fixed keys, so that a crash reproduces from its input alone.
const SessionKeys& FuzzKeys() {
  static const SessionKeys k = [] {
    SessionKeys s;
    Nonce a{}, b{};
    a[0] = 1;
    b[0] = 2;
    if (!DeriveSessionKeys("fuzz-token-0123456789", a, b, &s)) __builtin_trap();
    return s;
  }();
  return k;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::vector<uint8_t> rest(data + 1, data + size);
  switch (data[0] % 6) {
    case 0: {  // raw bytes as a stream of handshake frames (before a session: HMAC trailer, small bound)
      Frame f;
      FrameHeader h;
      size_t off = 0, total = 0;
      while (off < rest.size() &&
             PeekFrame(rest.data() + off, rest.size() - off, 1024, kMacBytes, &h, &total) == FrameStatus::kOk &&
             OpenMacFrame(rest.data() + off, total, "key", "", &f) == FrameStatus::kOk) {
        DecodeAll(f.payload);
        off += total;
      }
      break;
    }
    case 1: {  // a well-MACed handshake frame around fuzzed header fields and payload
      if (rest.size() < 10) break;
      uint16_t type = static_cast<uint16_t>(rest[0] | rest[1] << 8);
      std::vector<uint8_t> payload(rest.begin() + 10, rest.end());
      auto fr = EncodeMacFrame(type, payload, "key", "bind");
      Frame f;
      FrameHeader h;
      size_t total = 0;
      if (PeekFrame(fr.data(), fr.size(), kMaxPayload, kMacBytes, &h, &total) != FrameStatus::kOk ||
          OpenMacFrame(fr.data(), total, "key", "bind", &f) != FrameStatus::kOk || f.payload != payload ||
          f.type != type) {
        __builtin_trap();
      }
      DecodeAll(f.payload);
      break;
    }
    case 2:
      DecodeAll(rest);
      break;
    case 3: {
      tm_tools::Json j;
      tm_tools::ParseJson(std::string(rest.begin(), rest.end()), &j);
      break;
    }
    case 4: {  // raw bytes as a stream of sealed frames (after the handshake): nothing forged may open
      FrameCipher recv(FuzzKeys().client_to_server);
      Frame f;
      FrameHeader h;
      size_t total = 0;
      if (PeekFrame(rest.data(), rest.size(), kMaxLength, kTagBytes, &h, &total) == FrameStatus::kOk &&
          recv.Open(rest.data(), total, &f) == FrameStatus::kOk) {
        __builtin_trap();  // a frame the fuzzer made up opened: the AEAD is broken
      }
      break;
    }
    case 5: {  // sealed frames that are real: they open once, in order, and decode like any payload
      if (rest.size() < 2) break;
      const uint16_t type = static_cast<uint16_t>(rest[0] | rest[1] << 8);
      std::vector<uint8_t> payload(rest.begin() + 2, rest.end());
      FrameCipher send(FuzzKeys().client_to_server), recv(FuzzKeys().client_to_server);
      std::vector<uint8_t> wire;
      if (!send.Seal(type, payload, &wire) || !send.Seal(type, payload, &wire)) __builtin_trap();
      Frame f;
      FrameHeader h;
      size_t total = 0;
      for (int i = 0; i < 2; ++i) {
        if (PeekFrame(wire.data(), wire.size(), kMaxLength, kTagBytes, &h, &total) != FrameStatus::kOk ||
            recv.Open(wire.data(), total, &f) != FrameStatus::kOk || f.type != type || f.payload != payload) {
          __builtin_trap();
        }
        if (i == 0 && recv.Open(wire.data(), total, &f) != FrameStatus::kBadSeq) __builtin_trap();  // replayed
        wire.erase(wire.begin(), wire.begin() + static_cast<std::ptrdiff_t>(total));
      }
      DecodeAll(f.payload);
      break;
    }
  }
  return 0;
}
