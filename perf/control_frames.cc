// SPDX-License-Identifier: Apache-2.0
// control_frames: the cost of one control frame, sealed (protocol v2: AES-256-GCM, lib/control/wire.h) and, side
// by side in the same run, MACed in clear as protocol v1 did (HMAC-SHA256 over header and payload): encode on
// one side, check and decode on the other, per payload size. The two are interleaved round by round and the
// median round is reported, so machine noise hits both alike. Asserts nothing about speed; exits 1 only if a
// frame fails to open (then the figures would mean nothing).
//   control_frames [--sizes 64,1K,64K,1M] [--rounds 7] [--ms 100]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "control/wire.h"
#include "perf_util.h"

using namespace trainmover::control;
using Clock = std::chrono::steady_clock;

namespace {

// Runs `one` (one frame each way of the work) for about `ms`; returns ns per frame.
template <typename F>
double TimeIt(int ms, F&& one) {
  size_t n = 0;
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::milliseconds(ms);
  while (Clock::now() < end) {
    for (int i = 0; i < 16; ++i) one();
    n += 16;
  }
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / static_cast<double>(n);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<size_t> sizes = {64, 1024, 64 * 1024, 1024 * 1024};
  int rounds = 7, ms = 100;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string a = argv[i];
    if (a == "--sizes") {
      sizes.clear();
      std::string v = argv[i + 1];
      for (size_t p = 0; p <= v.size();) {
        size_t c = v.find(',', p);
        sizes.push_back(perf::ParseSize(v.substr(p, c == std::string::npos ? std::string::npos : c - p)));
        p = c == std::string::npos ? v.size() + 1 : c + 1;
      }
    } else if (a == "--rounds") {
      rounds = std::max(1, std::atoi(argv[i + 1]));
    } else if (a == "--ms") {
      ms = std::max(1, std::atoi(argv[i + 1]));
    }
  }
  Nonce cn{}, sn{};
  SessionKeys keys;
  if (!RandomBytes(cn.data(), cn.size()) || !RandomBytes(sn.data(), sn.size()) ||
      !DeriveSessionKeys("perf-token-0123456789abcdef", cn, sn, &keys)) {
    std::fprintf(stderr, "control_frames: no keys\n");
    return 1;
  }
  const std::string mac_key(reinterpret_cast<const char*>(keys.client_to_server.data()), 32);
  std::printf("# control frame cost: encode + check/decode of one frame, median of %d interleaved rounds\n", rounds);
  std::printf("%10s %14s %14s %8s %12s\n", "payload", "sealed ns", "mac-only ns", "ratio", "sealed GB/s");
  bool ok = true;
  for (size_t size : sizes) {
    std::vector<uint8_t> payload(size, 0x5a);
    FrameCipher seal(keys.client_to_server), open(keys.client_to_server);
    std::vector<uint8_t> wire;
    Frame f;
    auto sealed = [&] {
      wire.clear();
      seal.Seal(19, payload, &wire);
      FrameHeader h;
      size_t total = 0;
      ok &= PeekFrame(wire.data(), wire.size(), kMaxLength, kTagBytes, &h, &total) == FrameStatus::kOk &&
            open.Open(wire.data(), total, &f) == FrameStatus::kOk && f.payload.size() == size;
    };
    auto maced = [&] {
      std::vector<uint8_t> m = EncodeMacFrame(19, payload, mac_key);
      FrameHeader h;
      size_t total = 0;
      ok &= PeekFrame(m.data(), m.size(), kMaxLength, kMacBytes, &h, &total) == FrameStatus::kOk &&
            OpenMacFrame(m.data(), total, mac_key, {}, &f) == FrameStatus::kOk && f.payload.size() == size;
    };
    std::vector<double> a, b;
    for (int r = 0; r < rounds; ++r) {
      a.push_back(TimeIt(ms, sealed));
      b.push_back(TimeIt(ms, maced));
    }
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    const double sa = a[a.size() / 2], sb = b[b.size() / 2];
    std::printf("%10s %14.0f %14.0f %8.2f %12.2f\n", perf::FormatSize(size).c_str(), sa, sb, sa / sb,
                static_cast<double>(size) / sa);
  }
  if (!ok) std::fprintf(stderr, "control_frames: a frame did not open\n");
  return ok ? 0 : 1;
}
