// SPDX-License-Identifier: Apache-2.0
// What the migration test programs (split_app, tp_dp_app) share: failing on an NCCL error, the job's rank and
// size from tmrun's environment, the world's unique id through tmrun's store, and the final digest line.
#pragma once

#include <nccl.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/kv_store.h"

namespace test_app {

inline void Check(ncclResult_t r, const char* what) {
  if (r == ncclSuccess) return;
  std::fprintf(stderr, "%s failed: %s\n", what, ncclGetErrorString(r));
  std::exit(1);
}

inline int EnvInt(const char* name, int def) { return std::getenv(name) ? std::atoi(std::getenv(name)) : def; }

// Rank 0 makes the id (ncclGetUniqueId: in a joiner for rank 0, a fresh local one) and publishes it under `key`;
// the others read it. Exits on a store failure.
inline ncclUniqueId WorldId(int rank, const char* key) {
  ncclUniqueId id;
  tm_tools::KvClient kv;
  std::string v;
  const char* store = std::getenv("TMRUN_STORE");
  if (!kv.Connect(store ? store : "", 30000, tm_tools::StoreTokenFromEnv()).ok()) std::exit(1);
  if (rank == 0) {
    Check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    if (kv.Set(key, std::string(id.internal, sizeof(id.internal))) != tm_tools::KvStatus::kOk) std::exit(1);
  } else {
    if (kv.Get(key, 30000, &v) != tm_tools::KvStatus::kOk || v.size() != sizeof(id.internal)) std::exit(1);
    std::copy(v.begin(), v.end(), id.internal);
  }
  return id;
}

// "final-state sha256:<hex>", as tm-train prints it (what the tests compare).
inline void PrintDigest(const void* p, size_t bytes) {
  unsigned char md[32];
  unsigned int n = 0;
  EVP_Digest(p, bytes, md, &n, EVP_sha256(), nullptr);
  std::printf("final-state sha256:");
  for (unsigned i = 0; i < n; ++i) std::printf("%02x", md[i]);
  std::printf("\n");
}

}  // namespace test_app
