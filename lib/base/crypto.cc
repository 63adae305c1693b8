// SPDX-License-Identifier: Apache-2.0
#include "base/crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <climits>
#include <cstring>
#include <utility>

namespace trainmover::base::crypto {

namespace {

// OpenSSL wants a non-null pointer even for zero bytes in some places.
const uint8_t kNoByte = 0;
const uint8_t* Ptr(Bytes b) { return b.empty() ? &kNoByte : b.data(); }

// Algorithms are fetched once per process (a fetch looks up the provider; thread-safe static init).
EVP_MAC* HmacAlgorithm() {
  static EVP_MAC* mac = EVP_MAC_fetch(nullptr, "HMAC", nullptr);
  return mac;
}
EVP_KDF* HkdfAlgorithm() {
  static EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  return kdf;
}

}  // namespace

bool HmacSha256(Bytes key, std::initializer_list<Bytes> parts, Hmac* out) {
  EVP_MAC* alg = HmacAlgorithm();
  if (alg == nullptr) return false;
  EVP_MAC_CTX* ctx = EVP_MAC_CTX_new(alg);
  if (ctx == nullptr) return false;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0), OSSL_PARAM_construct_end()};
  bool ok = EVP_MAC_init(ctx, Ptr(key), key.size(), params) == 1;
  for (Bytes p : parts) ok = ok && (p.empty() || EVP_MAC_update(ctx, p.data(), p.size()) == 1);
  size_t len = 0;
  ok = ok && EVP_MAC_final(ctx, out->data(), &len, out->size()) == 1 && len == kHmacBytes;
  EVP_MAC_CTX_free(ctx);
  return ok;
}

bool ConstantTimeEqual(const void* a, const void* b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

void Wipe(void* p, size_t n) { OPENSSL_cleanse(p, n); }

bool RandomBytes(void* out, size_t n) {
  return n <= INT_MAX && RAND_bytes(static_cast<unsigned char*>(out), static_cast<int>(n)) == 1;
}

bool HkdfSha256(Bytes ikm, Bytes salt, Bytes info, uint8_t* out, size_t out_len) {
  EVP_KDF* alg = HkdfAlgorithm();
  if (alg == nullptr || out_len == 0 || out_len > 255 * kHmacBytes) return false;
  EVP_KDF_CTX* ctx = EVP_KDF_CTX_new(alg);
  if (ctx == nullptr) return false;
  char digest[] = "SHA256";
  auto octets = [](const char* name, Bytes b) {
    return OSSL_PARAM_construct_octet_string(name, const_cast<uint8_t*>(Ptr(b)), b.size());
  };
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
                         octets(OSSL_KDF_PARAM_KEY, ikm), octets(OSSL_KDF_PARAM_SALT, salt),
                         octets(OSSL_KDF_PARAM_INFO, info), OSSL_PARAM_construct_end()};
  const bool ok = EVP_KDF_derive(ctx, out, out_len, params) == 1;
  EVP_KDF_CTX_free(ctx);
  return ok;
}

Aead::Aead(const Key& key) {
  auto* enc = EVP_CIPHER_CTX_new();
  auto* dec = EVP_CIPHER_CTX_new();
  enc_ = enc;
  dec_ = dec;
  // The key is expanded once here; each message only sets its nonce.
  if (enc == nullptr || dec == nullptr ||
      EVP_EncryptInit_ex(enc, EVP_aes_256_gcm(), nullptr, key.data(), nullptr) != 1 ||
      EVP_DecryptInit_ex(dec, EVP_aes_256_gcm(), nullptr, key.data(), nullptr) != 1) {
    Reset();
  }
}

Aead::~Aead() { Reset(); }

Aead::Aead(Aead&& o) noexcept : enc_(std::exchange(o.enc_, nullptr)), dec_(std::exchange(o.dec_, nullptr)) {}

Aead& Aead::operator=(Aead&& o) noexcept {
  if (this != &o) {
    Reset();
    enc_ = std::exchange(o.enc_, nullptr);
    dec_ = std::exchange(o.dec_, nullptr);
  }
  return *this;
}

void Aead::Reset() {
  EVP_CIPHER_CTX_free(static_cast<EVP_CIPHER_CTX*>(enc_));
  EVP_CIPHER_CTX_free(static_cast<EVP_CIPHER_CTX*>(dec_));
  enc_ = dec_ = nullptr;
}

bool Aead::Seal(const Nonce& nonce, Bytes aad, Bytes plain, uint8_t* out) {
  auto* ctx = static_cast<EVP_CIPHER_CTX*>(enc_);
  if (!ok() || aad.size() > INT_MAX || plain.size() > INT_MAX) return false;
  int len = 0;
  return EVP_EncryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce.data()) == 1 &&
         (aad.empty() || EVP_EncryptUpdate(ctx, nullptr, &len, aad.data(), static_cast<int>(aad.size())) == 1) &&
         (plain.empty() || EVP_EncryptUpdate(ctx, out, &len, plain.data(), static_cast<int>(plain.size())) == 1) &&
         EVP_EncryptFinal_ex(ctx, out + plain.size(), &len) == 1 &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, kTagBytes, out + plain.size()) == 1;
}

bool Aead::Open(const Nonce& nonce, Bytes aad, Bytes sealed, uint8_t* out) {
  auto* ctx = static_cast<EVP_CIPHER_CTX*>(dec_);
  if (!ok() || sealed.size() < kTagBytes || aad.size() > INT_MAX || sealed.size() > INT_MAX) return false;
  const size_t n = sealed.size() - kTagBytes;
  uint8_t tag[kTagBytes];
  std::memcpy(tag, sealed.data() + n, kTagBytes);  // before an in-place decryption could overwrite it
  int len = 0;
  return EVP_DecryptInit_ex(ctx, nullptr, nullptr, nullptr, nonce.data()) == 1 &&
         (aad.empty() || EVP_DecryptUpdate(ctx, nullptr, &len, aad.data(), static_cast<int>(aad.size())) == 1) &&
         (n == 0 || EVP_DecryptUpdate(ctx, out, &len, sealed.data(), static_cast<int>(n)) == 1) &&
         EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, kTagBytes, tag) == 1 &&
         EVP_DecryptFinal_ex(ctx, out + n, &len) == 1;
}

Aead::Nonce Aead::NonceFromCounter(uint64_t counter) {
  Nonce n{};
  std::memcpy(n.data() + 4, &counter, 8);  // little-endian host (checked in lib/control/wire.cc)
  return n;
}

}  // namespace trainmover::base::crypto
