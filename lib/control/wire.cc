// SPDX-License-Identifier: Apache-2.0
#include "wire.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <bit>
#include <cstring>

namespace trainmover::control {

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

Mac ComputeMac(std::string_view key, const uint8_t* d1, size_t n1, const uint8_t* d2, size_t n2) {
  Mac mac{};
  // One-shot HMAC over the concatenation: EVP_MAC would do as well; HMAC_CTX is deprecated in 3.0, so
  // build the input in one buffer only when there are two parts.
  unsigned int len = 0;
  static const uint8_t kEmpty = 0;
  const void* k = key.empty() ? static_cast<const void*>(&kEmpty) : key.data();
  if (d2 == nullptr || n2 == 0) {
    HMAC(EVP_sha256(), k, static_cast<int>(key.size()), n1 ? d1 : &kEmpty, n1, mac.data(), &len);
  } else {
    std::vector<uint8_t> all(n1 + n2);
    if (n1) std::memcpy(all.data(), d1, n1);
    std::memcpy(all.data() + n1, d2, n2);
    HMAC(EVP_sha256(), k, static_cast<int>(key.size()), all.data(), all.size(), mac.data(), &len);
  }
  return mac;
}

bool MacEqual(const uint8_t* a, const uint8_t* b) { return CRYPTO_memcmp(a, b, kMacBytes) == 0; }

std::string DeriveSessionKey(std::string_view token, const Nonce& client, const Nonce& server) {
  static constexpr char kLabel[] = "trainmover-session-v1";
  std::vector<uint8_t> in(kLabel, kLabel + sizeof(kLabel) - 1);
  in.insert(in.end(), client.begin(), client.end());
  in.insert(in.end(), server.begin(), server.end());
  Mac m = ComputeMac(token, in.data(), in.size());
  return std::string(reinterpret_cast<const char*>(m.data()), m.size());
}

bool RandomBytes(void* out, size_t n) { return RAND_bytes(static_cast<unsigned char*>(out), static_cast<int>(n)) == 1; }

std::vector<uint8_t> EncodeFrame(uint16_t type, uint64_t seq, const std::vector<uint8_t>& payload,
                                 std::string_view key) {
  FrameHeader h;
  h.type = type;
  h.seq = seq;
  h.length = static_cast<uint32_t>(payload.size());
  std::vector<uint8_t> out(kHeaderBytes + payload.size() + kMacBytes);
  EncodeHeader(h, out.data());
  if (!payload.empty()) std::memcpy(out.data() + kHeaderBytes, payload.data(), payload.size());
  Mac m = ComputeMac(key, out.data(), kHeaderBytes + payload.size());
  std::memcpy(out.data() + kHeaderBytes + payload.size(), m.data(), kMacBytes);
  return out;
}

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
      return "authentication failed (bad HMAC)";
  }
  return "?";
}

FrameStatus ParseFrame(const uint8_t* buf, size_t n, std::string_view key, Frame* out, size_t* consumed) {
  // Check what we can as soon as we can: the magic from the first bytes, then the header.
  static const uint8_t kMagicBytes[4] = {'T', 'C', 'M', 'P'};
  size_t m = n < 4 ? n : 4;
  if (std::memcmp(buf, kMagicBytes, m) != 0) return FrameStatus::kBadMagic;
  if (n < kHeaderBytes) return FrameStatus::kNeedMore;
  FrameHeader h = DecodeHeader(buf);
  if (h.version != kProtocolVersion) return FrameStatus::kBadVersion;
  if (h.length > kMaxPayload) return FrameStatus::kTooLarge;
  size_t total = kHeaderBytes + h.length + kMacBytes;
  if (n < total) return FrameStatus::kNeedMore;
  Mac mac = ComputeMac(key, buf, kHeaderBytes + h.length);
  if (!MacEqual(mac.data(), buf + kHeaderBytes + h.length)) return FrameStatus::kBadMac;
  out->type = h.type;
  out->seq = h.seq;
  out->payload.assign(buf + kHeaderBytes, buf + kHeaderBytes + h.length);
  *consumed = total;
  return FrameStatus::kOk;
}

}  // namespace trainmover::control
