// SPDX-License-Identifier: Apache-2.0
#include "wire.h"

#include <bit>
#include <cstring>

namespace trainmover::control {

namespace crypto = base::crypto;

static_assert(std::endian::native == std::endian::little, "the wire encoding assumes a little-endian host");

void Writer::Raw(const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  buf_.insert(buf_.end(), b, b + n);
}

void Writer::Str(std::string_view s) {
  if (s.size() > kMaxString) s = s.substr(0, kMaxString);
  U32(static_cast<uint32_t>(s.size()));
  Raw(s.data(), s.size());
}

void Writer::StrList(const std::vector<std::string>& v) {
  size_t n = v.size() < kMaxList ? v.size() : kMaxList;
  U32(static_cast<uint32_t>(n));
  for (size_t i = 0; i < n; ++i) Str(v[i]);
}

bool Reader::Take(void* out, size_t n) {
  if (!ok_ || n > n_ - off_) {
    ok_ = false;
    std::memset(out, 0, n);
    return false;
  }
  std::memcpy(out, p_ + off_, n);
  off_ += n;
  return true;
}

uint8_t Reader::U8() {
  uint8_t v;
  Take(&v, 1);
  return v;
}
uint16_t Reader::U16() {
  uint16_t v;
  Take(&v, 2);
  return v;
}
uint32_t Reader::U32() {
  uint32_t v;
  Take(&v, 4);
  return v;
}
uint64_t Reader::U64() {
  uint64_t v;
  Take(&v, 8);
  return v;
}
double Reader::F64() {
  double v;
  Take(&v, 8);
  return v;
}

bool Reader::Bytes(void* out, size_t n) { return Take(out, n); }

std::string Reader::Str(size_t max) {
  uint32_t len = U32();
  if (!ok_ || len > max || len > n_ - off_) {
    ok_ = false;
    return {};
  }
  std::string s(reinterpret_cast<const char*>(p_ + off_), len);
  off_ += len;
  return s;
}

uint32_t Reader::Count(size_t max_items, size_t min_elem_bytes) {
  uint32_t n = U32();
  if (!ok_ || n > max_items || (min_elem_bytes && n > (n_ - off_) / min_elem_bytes)) {
    ok_ = false;
    return 0;
  }
  return n;
}

std::vector<std::string> Reader::StrList(size_t max_items, size_t max_len) {
  uint32_t n = Count(max_items, 4);
  std::vector<std::string> v;
  v.reserve(n);
  for (uint32_t i = 0; i < n && ok_; ++i) v.push_back(Str(max_len));
  if (!ok_) v.clear();
  return v;
}

void EncodeHeader(const FrameHeader& h, uint8_t out[kHeaderBytes]) {
  std::memcpy(out, &h.magic, 4);
  std::memcpy(out + 4, &h.version, 2);
  std::memcpy(out + 6, &h.type, 2);
  std::memcpy(out + 8, &h.seq, 8);
  std::memcpy(out + 16, &h.length, 4);
}

FrameHeader DecodeHeader(const uint8_t in[kHeaderBytes]) {
  FrameHeader h;
  std::memcpy(&h.magic, in, 4);
  std::memcpy(&h.version, in + 4, 2);
  std::memcpy(&h.type, in + 6, 2);
  std::memcpy(&h.seq, in + 8, 8);
  std::memcpy(&h.length, in + 16, 4);
  return h;
}

bool RandomBytes(void* out, size_t n) { return crypto::RandomBytes(out, n); }

const char* FrameStatusName(FrameStatus s) {
  switch (s) {
    case FrameStatus::kNeedMore:
      return "incomplete";
    case FrameStatus::kOk:
      return "ok";
    case FrameStatus::kBadMagic:
      return "bad magic (not a trainmover control frame)";
    case FrameStatus::kBadVersion:
      return "unsupported protocol version";
    case FrameStatus::kTooLarge:
      return "frame too large";
    case FrameStatus::kBadMac:
      return "authentication failed (bad MAC or tag)";
    case FrameStatus::kBadSeq:
      return "out-of-order or replayed frame";
    case FrameStatus::kMalformed:
      return "malformed sealed frame";
  }
  return "?";
}

FrameStatus PeekFrame(const uint8_t* buf, size_t n, size_t max_length, size_t trailer, FrameHeader* h,
                      size_t* total) {
  // Check what we can as soon as we can: the magic from the first bytes, then the header.
  static const uint8_t kMagicBytes[4] = {'T', 'C', 'M', 'P'};
  if (n == 0) return FrameStatus::kNeedMore;
  const size_t m = n < 4 ? n : 4;
  if (std::memcmp(buf, kMagicBytes, m) != 0) return FrameStatus::kBadMagic;
  if (n < kHeaderBytes) return FrameStatus::kNeedMore;
  *h = DecodeHeader(buf);
  if (h->version != kProtocolVersion) return FrameStatus::kBadVersion;
  if (h->length > max_length || h->length > kMaxLength) return FrameStatus::kTooLarge;
  *total = kHeaderBytes + h->length + trailer;
  return n < *total ? FrameStatus::kNeedMore : FrameStatus::kOk;
}

namespace {
crypto::Hmac FrameMac(std::string_view key, const uint8_t* frame, size_t n, std::string_view bind) {
  crypto::Hmac mac{};
  // A failing HMAC leaves the all-zero value, which no honest peer sends and the check below refuses anyway.
  if (!crypto::HmacSha256(crypto::AsBytes(key), {crypto::Bytes(frame, n), crypto::AsBytes(bind)}, &mac)) mac.fill(0);
  return mac;
}
}  // namespace

std::vector<uint8_t> EncodeMacFrame(uint16_t type, const std::vector<uint8_t>& payload, std::string_view key,
                                    std::string_view bind) {
  FrameHeader h;
  h.type = type;
  h.length = static_cast<uint32_t>(payload.size());
  std::vector<uint8_t> out(kHeaderBytes + payload.size() + kMacBytes);
  EncodeHeader(h, out.data());
  if (!payload.empty()) std::memcpy(out.data() + kHeaderBytes, payload.data(), payload.size());
  const crypto::Hmac m = FrameMac(key, out.data(), kHeaderBytes + payload.size(), bind);
  std::memcpy(out.data() + kHeaderBytes + payload.size(), m.data(), kMacBytes);
  return out;
}

FrameStatus OpenMacFrame(const uint8_t* frame, size_t total, std::string_view key, std::string_view bind,
                         Frame* out) {
  const size_t body = total - kMacBytes;
  const crypto::Hmac m = FrameMac(key, frame, body, bind);
  if (!crypto::ConstantTimeEqual(m.data(), frame + body, kMacBytes) || m == crypto::Hmac{}) {
    return FrameStatus::kBadMac;
  }
  const FrameHeader h = DecodeHeader(frame);
  out->type = h.type;
  out->seq = h.seq;
  out->payload.assign(frame + kHeaderBytes, frame + body);
  return FrameStatus::kOk;
}

bool DeriveSessionKeys(std::string_view token, const Nonce& client, const Nonce& server, SessionKeys* out) {
  uint8_t salt[2 * kNonceBytes];
  std::memcpy(salt, client.data(), kNonceBytes);
  std::memcpy(salt + kNonceBytes, server.data(), kNonceBytes);
  return crypto::HkdfSha256(crypto::AsBytes(token), salt, crypto::AsBytes("trainmover v2 client to coordinator"),
                            out->client_to_server.data(), out->client_to_server.size()) &&
         crypto::HkdfSha256(crypto::AsBytes(token), salt, crypto::AsBytes("trainmover v2 coordinator to client"),
                            out->server_to_client.data(), out->server_to_client.size());
}

bool FrameCipher::Seal(uint16_t type, const std::vector<uint8_t>& payload, std::vector<uint8_t>* out) {
  if (payload.size() > kMaxPayload) return false;
  FrameHeader h;
  h.type = kSealedFrameType;
  h.seq = seq_;
  h.length = static_cast<uint32_t>(kSealedTypeBytes + payload.size());
  const size_t at = out->size();
  out->resize(at + kHeaderBytes + h.length + kTagBytes);
  uint8_t* f = out->data() + at;
  EncodeHeader(h, f);
  std::memcpy(f + kHeaderBytes, &type, kSealedTypeBytes);
  if (!payload.empty()) std::memcpy(f + kHeaderBytes + kSealedTypeBytes, payload.data(), payload.size());
  // Sealed in place: the plaintext was laid out where its ciphertext goes.
  if (!aead_.Seal(crypto::Aead::NonceFromCounter(seq_), crypto::Bytes(f, kHeaderBytes),
                  crypto::Bytes(f + kHeaderBytes, h.length), f + kHeaderBytes)) {
    out->resize(at);
    return false;
  }
  ++seq_;
  return true;
}

FrameStatus FrameCipher::Open(const uint8_t* frame, size_t total, Frame* out) {
  const FrameHeader h = DecodeHeader(frame);
  if (h.seq != seq_) return FrameStatus::kBadSeq;
  if (h.type != kSealedFrameType || h.length < kSealedTypeBytes) return FrameStatus::kMalformed;
  std::vector<uint8_t>& plain = out->payload;
  plain.resize(h.length);
  if (!aead_.Open(crypto::Aead::NonceFromCounter(seq_), crypto::Bytes(frame, kHeaderBytes),
                  crypto::Bytes(frame + kHeaderBytes, total - kHeaderBytes), plain.data())) {
    plain.clear();
    return FrameStatus::kBadMac;
  }
  std::memcpy(&out->type, plain.data(), kSealedTypeBytes);
  plain.erase(plain.begin(), plain.begin() + kSealedTypeBytes);
  out->seq = seq_++;
  return FrameStatus::kOk;
}

}  // namespace trainmover::control
