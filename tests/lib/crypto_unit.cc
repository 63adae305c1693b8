// SPDX-License-Identifier: Apache-2.0
// Unit tests of lib/base/crypto.h against published test vectors (RFC 4231 HMAC-SHA256, RFC 5869 HKDF, the
// GCM specification's AES-256 cases), and the AEAD's refusals: a changed bit anywhere, another nonce, another
// key, other associated data.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "base/crypto.h"

using namespace trainmover::base::crypto;

namespace {

std::vector<uint8_t> Hex(const std::string& h) {
  std::vector<uint8_t> v;
  for (size_t i = 0; i + 1 < h.size(); i += 2) v.push_back(static_cast<uint8_t>(std::stoul(h.substr(i, 2), nullptr, 16)));
  return v;
}

std::string ToHex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) s += {d[p[i] >> 4], d[p[i] & 15]};
  return s;
}

}  // namespace

TEST_CASE("HMAC-SHA256: RFC 4231 case 2, in one part and in several") {
  Hmac one{}, parts{};
  REQUIRE(HmacSha256(AsBytes("Jefe"), {AsBytes("what do ya want for nothing?")}, &one));
  CHECK(ToHex(one.data(), one.size()) == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  REQUIRE(HmacSha256(AsBytes("Jefe"), {AsBytes("what do ya "), AsBytes(""), AsBytes("want for nothing?")}, &parts));
  CHECK(one == parts);
  Hmac empty_key{};
  REQUIRE(HmacSha256(Bytes(), {AsBytes("x")}, &empty_key));  // allowed: the all-zero key
  CHECK(empty_key != one);
}

TEST_CASE("HKDF-SHA256: RFC 5869 case 1") {
  auto ikm = Hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
  auto salt = Hex("000102030405060708090a0b0c");
  auto info = Hex("f0f1f2f3f4f5f6f7f8f9");
  uint8_t okm[42];
  REQUIRE(HkdfSha256(ikm, salt, info, okm, sizeof(okm)));
  CHECK(ToHex(okm, sizeof(okm)) ==
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
  CHECK_FALSE(HkdfSha256(ikm, salt, info, okm, 0));
}

TEST_CASE("AES-256-GCM: the GCM specification's cases 13 and 14") {
  Aead::Key zero_key{};
  Aead aead(zero_key);
  REQUIRE(aead.ok());
  Aead::Nonce zero_nonce{};
  uint8_t tag_only[Aead::kTagBytes];
  REQUIRE(aead.Seal(zero_nonce, Bytes(), Bytes(), tag_only));
  CHECK(ToHex(tag_only, sizeof(tag_only)) == "530f8afbc74536b9a963b4f1c4cb738b");
  std::vector<uint8_t> block(16, 0), sealed(16 + Aead::kTagBytes);
  REQUIRE(aead.Seal(zero_nonce, Bytes(), block, sealed.data()));
  CHECK(ToHex(sealed.data(), 16) == "cea7403d4d606b6e074ec5d3baf39d18");
  CHECK(ToHex(sealed.data() + 16, 16) == "d0d1c8a799996bf0265b98b5d48ab919");
  std::vector<uint8_t> back(16, 0xff);
  REQUIRE(aead.Open(zero_nonce, Bytes(), sealed, back.data()));
  CHECK(back == block);
}

TEST_CASE("AEAD refuses any change, another nonce, another key, other associated data") {
  Aead::Key key{};
  REQUIRE(RandomBytes(key.data(), key.size()));
  Aead a(key);
  const std::string msg = "REGISTER with a command line and an environment";
  const std::string aad = "header";
  std::vector<uint8_t> sealed(msg.size() + Aead::kTagBytes);
  REQUIRE(a.Seal(Aead::NonceFromCounter(7), AsBytes(aad), AsBytes(msg), sealed.data()));
  CHECK(std::string(sealed.begin(), sealed.begin() + msg.size()) != msg);
  std::vector<uint8_t> out(msg.size());
  REQUIRE(a.Open(Aead::NonceFromCounter(7), AsBytes(aad), sealed, out.data()));
  CHECK(std::string(out.begin(), out.end()) == msg);

  int refused = 0;
  for (size_t i = 0; i < sealed.size(); ++i) {  // every byte, ciphertext and tag
    auto bad = sealed;
    bad[i] ^= 0x01;
    refused += !a.Open(Aead::NonceFromCounter(7), AsBytes(aad), bad, out.data());
  }
  CHECK(refused == static_cast<int>(sealed.size()));
  CHECK_FALSE(a.Open(Aead::NonceFromCounter(8), AsBytes(aad), sealed, out.data()));
  CHECK_FALSE(a.Open(Aead::NonceFromCounter(7), AsBytes("Header"), sealed, out.data()));
  CHECK_FALSE(a.Open(Aead::NonceFromCounter(7), AsBytes(aad), Bytes(sealed.data(), Aead::kTagBytes - 1), out.data()));
  Aead::Key other = key;
  other[0] ^= 1;
  Aead b(other);
  CHECK_FALSE(b.Open(Aead::NonceFromCounter(7), AsBytes(aad), sealed, out.data()));
  Aead none;
  CHECK_FALSE(none.ok());
  CHECK_FALSE(none.Seal(Aead::NonceFromCounter(1), Bytes(), AsBytes(msg), sealed.data()));

  // In place, both ways; a moved-from object holds no key.
  std::vector<uint8_t> buf(msg.begin(), msg.end());
  buf.resize(msg.size() + Aead::kTagBytes);
  REQUIRE(a.Seal(Aead::NonceFromCounter(9), Bytes(), Bytes(buf.data(), msg.size()), buf.data()));
  REQUIRE(a.Open(Aead::NonceFromCounter(9), Bytes(), buf, buf.data()));
  CHECK(std::string(buf.begin(), buf.begin() + msg.size()) == msg);
  Aead moved = std::move(a);
  CHECK(moved.ok());
  CHECK_FALSE(a.ok());  // NOLINT(bugprone-use-after-move): the contract says it holds no key
}

TEST_CASE("random bytes and constant-time comparison") {
  uint8_t x[32] = {}, y[32] = {};
  REQUIRE(RandomBytes(x, sizeof(x)));
  REQUIRE(RandomBytes(y, sizeof(y)));
  CHECK_FALSE(ConstantTimeEqual(x, y, sizeof(x)));
  CHECK(ConstantTimeEqual(x, x, sizeof(x)));
}
