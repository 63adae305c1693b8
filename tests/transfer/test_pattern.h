// SPDX-License-Identifier: Apache-2.0
// Deterministic test data shared by the transfer tests: byte i of a region depends on (seed, i) only.
#ifndef TRAINMOVER_TESTS_TRANSFER_TEST_PATTERN_H_
#define TRAINMOVER_TESTS_TRANSFER_TEST_PATTERN_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace transfer_test {

inline uint64_t Mix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

inline void Fill(std::vector<unsigned char>* buf, uint64_t seed) {
  for (size_t i = 0; i < buf->size(); i += 8) {
    uint64_t v = Mix(seed * 0x100000001B3ULL + i);
    std::memcpy(buf->data() + i, &v, std::min<size_t>(8, buf->size() - i));
  }
}

inline uint64_t SeedOf(const std::string& name) {
  uint64_t h = 1469598103934665603ULL;
  for (char c : name) h = (h ^ static_cast<unsigned char>(c)) * 1099511628211ULL;
  return h;
}

}  // namespace transfer_test

#endif  // TRAINMOVER_TESTS_TRANSFER_TEST_PATTERN_H_
