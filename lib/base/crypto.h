// SPDX-License-Identifier: Apache-2.0
// crypto.h: the few cryptographic primitives TrainMover uses, in one place, over OpenSSL's libcrypto:
// HMAC-SHA256, HKDF-SHA256 (RFC 5869), AES-256-GCM (an AEAD) and random bytes. The control protocol
// (lib/control/wire.h: frame MACs, the key schedule, sealed frames) and the tools' key-value store build on
// it; nothing else in the tree calls OpenSSL's MAC, KDF or cipher functions directly.
//
// Conventions:
// - Bytes are passed as `Bytes` (a read-only span); AsBytes() views a std::string / string_view as bytes, so
//   a token held in a std::string is a key as it is.
// - Functions return false (never throw, never abort) when OpenSSL fails or an argument is out of range;
//   outputs are then unspecified.
// - Secret comparisons go through ConstantTimeEqual, never memcmp.
// - Everything is thread-safe except an Aead object, which is thread-compatible (one thread at a time).
#ifndef TRAINMOVER_LIB_BASE_CRYPTO_H_
#define TRAINMOVER_LIB_BASE_CRYPTO_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string_view>

namespace trainmover::base::crypto {

using Bytes = std::span<const uint8_t>;
inline Bytes AsBytes(std::string_view s) { return {reinterpret_cast<const uint8_t*>(s.data()), s.size()}; }

// The shortest shared secret (a job's token) any part of TrainMover accepts: 16 characters. Shorter ones can
// be guessed offline from one recorded handshake.
inline constexpr size_t kMinSecretBytes = 16;

// HMAC-SHA256.
inline constexpr size_t kHmacBytes = 32;
using Hmac = std::array<uint8_t, kHmacBytes>;
// HMAC-SHA256(key, parts[0] || parts[1] || ...): the parts are fed in order, never copied into one buffer.
// An empty key is allowed (it is the all-zero key of HMAC). False only when OpenSSL fails.
bool HmacSha256(Bytes key, std::initializer_list<Bytes> parts, Hmac* out);

// Compares n bytes in time independent of where they differ (CRYPTO_memcmp).
bool ConstantTimeEqual(const void* a, const void* b, size_t n);

// Overwrites n bytes with zeros in a way the compiler does not remove (OPENSSL_cleanse): for keys on the stack.
void Wipe(void* p, size_t n);

// n bytes from OpenSSL's CSPRNG. False when it has no entropy to give (the caller must not go on).
bool RandomBytes(void* out, size_t n);

// HKDF-SHA256 (RFC 5869): PRK = HMAC(salt, ikm), then out = T(1) || T(2) || ... with
// T(i) = HMAC(PRK, T(i-1) || info || i). out_len <= 255 * 32. Pure; thread-safe.
bool HkdfSha256(Bytes ikm, Bytes salt, Bytes info, uint8_t* out, size_t out_len);

// AES-256-GCM with a 96-bit nonce and a 128-bit tag. One object holds one key (set once, in the constructor)
// and seals or opens any number of messages with it; the OpenSSL context is kept, so a message costs no
// allocation and no key expansion.
//
// The caller owns nonce uniqueness: a (key, nonce) pair must never seal two different messages (GCM then
// leaks the XOR of the plaintexts and allows forgeries). The control protocol uses a fresh key per
// connection and direction and the frame's sequence number as the nonce (NonceFromCounter).
//
// Thread-compatible: one thread at a time per object. Not copyable; movable.
class Aead {
 public:
  static constexpr size_t kKeyBytes = 32;
  static constexpr size_t kNonceBytes = 12;
  static constexpr size_t kTagBytes = 16;
  using Key = std::array<uint8_t, kKeyBytes>;
  using Nonce = std::array<uint8_t, kNonceBytes>;

  Aead() = default;  // no key: ok() is false, Seal and Open fail
  explicit Aead(const Key& key);
  ~Aead();
  Aead(Aead&& o) noexcept;
  Aead& operator=(Aead&& o) noexcept;
  Aead(const Aead&) = delete;
  Aead& operator=(const Aead&) = delete;

  // Whether a key is set and OpenSSL accepted it.
  bool ok() const { return enc_ != nullptr && dec_ != nullptr; }

  // Encrypts `plain` into out[0, plain.size()) and writes the tag to out[plain.size(), + kTagBytes): `out`
  // must have room for plain.size() + kTagBytes bytes and may be plain.data() itself (in place). `aad` is
  // authenticated, not encrypted.
  bool Seal(const Nonce& nonce, Bytes aad, Bytes plain, uint8_t* out);
  // Checks the tag (the last kTagBytes of `sealed`) over `aad` and the ciphertext and decrypts into
  // out[0, sealed.size() - kTagBytes) (may be sealed.data(), in place). False when the tag does not match
  // (wrong key, wrong nonce, any bit changed) or `sealed` is shorter than a tag; `out` then holds nothing
  // usable.
  bool Open(const Nonce& nonce, Bytes aad, Bytes sealed, uint8_t* out);

  // The nonce for message number `counter` under one key: 4 zero bytes then the counter, little-endian.
  static Nonce NonceFromCounter(uint64_t counter);

 private:
  void Reset();
  void* enc_ = nullptr;  // EVP_CIPHER_CTX*, keyed for encryption
  void* dec_ = nullptr;  // EVP_CIPHER_CTX*, keyed for decryption
};

}  // namespace trainmover::base::crypto

#endif  // TRAINMOVER_LIB_BASE_CRYPTO_H_
