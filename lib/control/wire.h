// SPDX-License-Identifier: Apache-2.0
// wire.h: the byte-level layer of the control protocol (docs/protocol.md): a bounds-checked writer and
// reader for the compact binary encoding, the frame header, handshake frames (HMAC-SHA256), the key schedule
// and sealed frames (AES-256-GCM, one key and one sequence of nonces per direction). The primitives are
// lib/base/crypto.h's.
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

#include "base/crypto.h"

namespace trainmover::control {

// Protocol version carried in every frame header. A peer that sees another version rejects the frame.
// Version 2: frames after the handshake are sealed (AES-256-GCM, a key per direction); version 1 only MACed them.
inline constexpr uint16_t kProtocolVersion = 2;
inline constexpr uint32_t kMagic = 0x504d4354;  // "TCMP" little-endian: 'T','C','M','P'

// Bounds. Every size read from the wire is checked against one of these before anything is allocated.
inline constexpr size_t kHeaderBytes = 20;       // magic u32, version u16, type u16, seq u64, length u32
inline constexpr size_t kMacBytes = 32;          // HMAC-SHA256 after a handshake frame's payload
inline constexpr size_t kTagBytes = 16;          // AES-GCM tag after a sealed frame's ciphertext
inline constexpr size_t kSealedTypeBytes = 2;    // a sealed frame's real type, encrypted before its payload
inline constexpr size_t kMaxPayload = 1u << 20;  // 1 MiB payload per frame
// The largest `length` a header may carry (a sealed frame's type and payload) and the largest frame.
inline constexpr size_t kMaxLength = kSealedTypeBytes + kMaxPayload;
inline constexpr size_t kMaxFrame = kHeaderBytes + kMaxLength + kMacBytes;
inline constexpr size_t kMaxString = 4096;  // any one string
inline constexpr size_t kMaxList = 4096;    // any one list (argv, env, regions, members, ...)
inline constexpr size_t kNonceBytes = 16;
// The header type of every sealed frame: its real type travels encrypted.
inline constexpr uint16_t kSealedFrameType = 0;

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
  uint32_t length = 0;  // bytes between the header and the trailer (MAC or tag), <= kMaxLength
};

void EncodeHeader(const FrameHeader& h, uint8_t out[kHeaderBytes]);
FrameHeader DecodeHeader(const uint8_t in[kHeaderBytes]);

// Cryptographically random bytes (base::crypto::RandomBytes). Returns false when the generator fails.
bool RandomBytes(void* out, size_t n);

// Result of looking at the front of a receive buffer, or of authenticating a frame.
enum class FrameStatus {
  kNeedMore,    // not a whole frame yet
  kOk,          // one frame: *consumed bytes, type/seq/payload set
  kBadMagic,    // not our protocol
  kBadVersion,  // another protocol version
  kTooLarge,    // length above the receiver's bound
  kBadMac,      // authentication failed (HMAC, or the AEAD tag: wrong key, tampered, reflected)
  kBadSeq,      // a sealed frame with another sequence number than the next one: replayed, dropped or reordered
  kMalformed,   // a sealed frame too short to hold its type
};
const char* FrameStatusName(FrameStatus s);

struct Frame {
  uint16_t type = 0;
  uint64_t seq = 0;
  std::vector<uint8_t> payload;
};

// Looks at the front of buf[0..n): the magic from the first byte, then version and length from the header, so
// a foreign or oversized frame is refused before its body is awaited. `trailer` is kMacBytes (handshake frames)
// or kTagBytes (sealed frames). kOk: the whole frame is buffered, *h is its header and *total its size.
FrameStatus PeekFrame(const uint8_t* buf, size_t n, size_t max_length, size_t trailer, FrameHeader* h, size_t* total);

// Handshake frames (HELLO, HELLO_ACK, and REJECT before a session exists): header, payload, then
// HMAC-SHA256(key, header || payload || bind). `bind` is what else the MAC covers without sending it: HELLO_ACK
// binds the client's nonce, so it answers exactly one HELLO. REJECT uses the empty key (readable by anyone).
std::vector<uint8_t> EncodeMacFrame(uint16_t type, const std::vector<uint8_t>& payload, std::string_view key,
                                    std::string_view bind = {});
// Checks the MAC of the whole frame frame[0..total) found by PeekFrame (trailer kMacBytes); kOk fills *out.
FrameStatus OpenMacFrame(const uint8_t* frame, size_t total, std::string_view key, std::string_view bind,
                         Frame* out);

// The two keys of one connection (docs/protocol.md, "Key schedule"): HKDF-SHA256 with the token as input key,
// the client's then the server's nonce as salt, and one label per direction as info. A frame sealed for one
// direction never opens in the other (no reflection), nor in another connection.
struct SessionKeys {
  base::crypto::Aead::Key client_to_server{};
  base::crypto::Aead::Key server_to_client{};
};
bool DeriveSessionKeys(std::string_view token, const Nonce& client, const Nonce& server, SessionKeys* out);

// One direction of a session: seals or opens its frames in order. A sealed frame is the header (type
// kSealedFrameType, seq, length = 2 + payload bytes), then AES-256-GCM(key, nonce = the sequence number, aad =
// the header) of (u16 type || payload), then the tag. The sequence number starts at 1 and is both in the header
// (so an out-of-order frame is named as such) and the nonce (so a frame only opens at its place).
// Thread-compatible.
class FrameCipher {
 public:
  FrameCipher() = default;
  explicit FrameCipher(const base::crypto::Aead::Key& key) : aead_(key) {}
  bool ok() const { return aead_.ok(); }
  // Appends the sealed frame to *out and advances the sequence number. False when OpenSSL fails or the
  // payload is over kMaxPayload (nothing appended).
  bool Seal(uint16_t type, const std::vector<uint8_t>& payload, std::vector<uint8_t>* out);
  // Opens the frame frame[0..total) that PeekFrame found (trailer kTagBytes). kOk: *out is the frame and the
  // sequence number advances; anything else leaves the cipher as it was.
  FrameStatus Open(const uint8_t* frame, size_t total, Frame* out);
  uint64_t next_seq() const { return seq_; }

 private:
  base::crypto::Aead aead_;
  uint64_t seq_ = 1;
};

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_WIRE_H_
