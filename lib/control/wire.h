// SPDX-License-Identifier: Apache-2.0
// wire.h: the byte-level layer of the control protocol (docs/protocol.md): a bounds-checked writer and
// reader for the compact binary encoding, the frame header, and HMAC-SHA256 authentication of frames.
//
// Everything here is pure (no IO, no globals) and thread-compatible: one object per thread.
#ifndef TRAINMOVER_LIB_CONTROL_WIRE_H_
#define TRAINMOVER_LIB_CONTROL_WIRE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace trainmover::control {

// Protocol version carried in every frame header. A peer that sees another version rejects the frame.
inline constexpr uint16_t kProtocolVersion = 1;
inline constexpr uint32_t kMagic = 0x504d4354;  // "TCMP" little-endian: 'T','C','M','P'

// Bounds. Every size read from the wire is checked against one of these before anything is allocated.
inline constexpr size_t kHeaderBytes = 20;       // magic u32, version u16, type u16, seq u64, length u32
inline constexpr size_t kMacBytes = 32;          // HMAC-SHA256 after the payload
inline constexpr size_t kMaxPayload = 1u << 20;  // 1 MiB payload per frame
inline constexpr size_t kMaxFrame = kHeaderBytes + kMaxPayload + kMacBytes;
inline constexpr size_t kMaxString = 4096;  // any one string
inline constexpr size_t kMaxList = 4096;    // any one list (argv, env, regions, members, ...)
inline constexpr size_t kNonceBytes = 16;

using Mac = std::array<uint8_t, kMacBytes>;
using Nonce = std::array<uint8_t, kNonceBytes>;

// Appends little-endian integers and length-prefixed strings to a byte vector. Never fails; the caller
// bounds what it writes (Writer::Fits tells whether the payload still fits a frame).
class Writer {
 public:
  void U8(uint8_t v) { buf_.push_back(v); }
  void U16(uint16_t v) { Raw(&v, 2); }
  void U32(uint32_t v) { Raw(&v, 4); }
  void U64(uint64_t v) { Raw(&v, 8); }
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  void F64(double v) { Raw(&v, 8); }
  // A string: u32 length then bytes. Strings longer than kMaxString are truncated (callers never send them).
  void Str(std::string_view s);
  void Bytes(const void* p, size_t n) { Raw(p, n); }
  void StrList(const std::vector<std::string>& v);
  bool Fits() const { return buf_.size() <= kMaxPayload; }
  const std::vector<uint8_t>& data() const { return buf_; }
  std::vector<uint8_t> Take() { return std::move(buf_); }

 private:
  void Raw(const void* p, size_t n);  // host is little-endian (x86-64, aarch64): checked in wire.cc
  std::vector<uint8_t> buf_;
};

// Reads what Writer wrote. Every read is bounds-checked; the first failure latches ok() to false and all
// later reads return zero/empty values, so a decoder reads everything and checks ok() once at the end.
class Reader {
 public:
  Reader(const uint8_t* p, size_t n) : p_(p), n_(n) {}
  uint8_t U8();
  uint16_t U16();
  uint32_t U32();
  uint64_t U64();
  int64_t I64() { return static_cast<int64_t>(U64()); }
  double F64();
  std::string Str(size_t max = kMaxString);
  bool Bytes(void* out, size_t n);
  std::vector<std::string> StrList(size_t max_items = kMaxList, size_t max_len = kMaxString);
  // A list length, rejected (ok() false) when above max_items or when the rest of the input cannot hold
  // max_items elements of at least min_elem_bytes each: a hostile count never drives a big allocation.
  uint32_t Count(size_t max_items, size_t min_elem_bytes);
  bool ok() const { return ok_; }
  bool AtEnd() const { return ok_ && off_ == n_; }
  void Fail() { ok_ = false; }

 private:
  bool Take(void* out, size_t n);
  const uint8_t* p_;
  size_t n_;
  size_t off_ = 0;
  bool ok_ = true;
};

struct FrameHeader {
  uint32_t magic = kMagic;
  uint16_t version = kProtocolVersion;
  uint16_t type = 0;
  uint64_t seq = 0;
  uint32_t length = 0;  // payload bytes, <= kMaxPayload
};

void EncodeHeader(const FrameHeader& h, uint8_t out[kHeaderBytes]);
FrameHeader DecodeHeader(const uint8_t in[kHeaderBytes]);

// HMAC-SHA256(key, data1 || data2). Constant-time comparison in MacEqual.
Mac ComputeMac(std::string_view key, const uint8_t* d1, size_t n1, const uint8_t* d2 = nullptr, size_t n2 = 0);
bool MacEqual(const uint8_t* a, const uint8_t* b);

// Session key of one connection: HMAC(token, "trainmover-session-v1" || client nonce || server nonce).
std::string DeriveSessionKey(std::string_view token, const Nonce& client, const Nonce& server);

// Cryptographically random bytes (OpenSSL RAND_bytes). Returns false when the generator fails.
bool RandomBytes(void* out, size_t n);

// A whole frame: header, payload, MAC over header and payload with `key`.
std::vector<uint8_t> EncodeFrame(uint16_t type, uint64_t seq, const std::vector<uint8_t>& payload,
                                 std::string_view key);

// Result of looking at the front of a receive buffer.
enum class FrameStatus {
  kNeedMore,    // not a whole frame yet
  kOk,          // one frame: *consumed bytes, type/seq/payload set
  kBadMagic,    // not our protocol
  kBadVersion,  // another protocol version
  kTooLarge,    // length above kMaxPayload
  kBadMac,      // authentication failed
};
const char* FrameStatusName(FrameStatus s);

struct Frame {
  uint16_t type = 0;
  uint64_t seq = 0;
  std::vector<uint8_t> payload;
};

// Parses one frame from buf[0..n). Header fields are checked before the payload is awaited, so an
// oversized or foreign frame is refused after kHeaderBytes. The MAC is checked with `key`.
FrameStatus ParseFrame(const uint8_t* buf, size_t n, std::string_view key, Frame* out, size_t* consumed);

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_WIRE_H_
