// SPDX-License-Identifier: Apache-2.0
// The state checksum: a 4-lane multiply-rotate hash per 1 MiB block, block hashes folded in order.
// Every step of a lane (add a multiple of the word by an odd constant, rotate, multiply by an odd
// constant) is a bijection of the lane's state for a fixed word, so two inputs differing in one 8-byte
// word always give different block hashes; the fold is a bijection in each block hash, so such a
// difference always reaches the region checksum.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "base/cudart.h"
#include "base/thread.h"
#include "transfer.h"

namespace trainmover::transfer {
namespace {

constexpr uint64_t kM1 = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kM2 = 0xBF58476D1CE4E5B9ULL;
constexpr uint64_t kM3 = 0x94D049BB133111EBULL;
constexpr uint64_t kM4 = 0xD6E8FEB86659FD93ULL;

inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t Load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
// A bijective finaliser (the splitmix64 mixing function).
inline uint64_t Avalanche(uint64_t x) {
  x = (x ^ (x >> 30)) * kM2;
  x = (x ^ (x >> 27)) * kM3;
  return x ^ (x >> 31);
}
inline uint64_t Round(uint64_t lane, uint64_t word) { return Rotl(lane + word * kM2, 31) * kM1; }

int DefaultThreads(int threads) {
  if (threads > 0) return threads;
  unsigned hw = std::thread::hardware_concurrency();
  return static_cast<int>(std::clamp(hw, 1u, 4u));
}

}  // namespace

uint64_t BlockHash(const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t a0 = kM1 + kM2, a1 = kM2, a2 = 0, a3 = 0 - kM1;
  size_t i = 0;
  for (; i + 32 <= size; i += 32) {
    a0 = Round(a0, Load64(p + i));
    a1 = Round(a1, Load64(p + i + 8));
    a2 = Round(a2, Load64(p + i + 16));
    a3 = Round(a3, Load64(p + i + 24));
  }
  uint64_t h = static_cast<uint64_t>(size) * kM3;
  for (uint64_t lane : {a0, a1, a2, a3}) h = (h ^ Avalanche(lane)) * kM1 + kM4;
  for (; i + 8 <= size; i += 8) h = Rotl(h ^ (Load64(p + i) * kM2), 27) * kM1 + kM4;
  for (; i < size; ++i) h = Rotl(h ^ (p[i] * kM3), 11) * kM1;
  return Avalanche(h);
}

uint64_t FoldBlockHashes(std::span<const uint64_t> block_hashes, size_t total_size) {
  uint64_t h = (static_cast<uint64_t>(total_size) * kM1) ^ kM4;
  for (uint64_t b : block_hashes) h = Avalanche(h ^ b) * kM2 + kM3;
  return Avalanche(h ^ block_hashes.size());
}

namespace detail {

// Checksums of many regions at once: the blocks of all regions are shared among `threads` threads.
Status ChecksumRegions(const std::vector<Region>& regions, int threads, std::vector<uint64_t>* out) {
  struct Task {
    size_t region;
    size_t block;
  };
  std::vector<Task> tasks;
  std::vector<std::vector<uint64_t>> blocks(regions.size());
  bool any_device = false;
  for (size_t r = 0; r < regions.size(); ++r) {
    size_t n = (regions[r].size + kChecksumBlock - 1) / kChecksumBlock;
    blocks[r].resize(n);
    for (size_t b = 0; b < n; ++b) tasks.push_back({r, b});
    if (regions[r].type != MemoryType::kHost && regions[r].size > 0) any_device = true;
  }
  const base::Cudart* cuda = nullptr;
  if (any_device) {
    // With no CUDA runtime a kAuto region can only be host memory; with one, cudaMemcpyDefault copies
    // from either kind (unified addressing).
    cuda = base::CudartIfLoaded();
    if (cuda != nullptr && cuda->cudaMemcpy == nullptr) cuda = nullptr;
    const std::string why = "no libcudart with cudaMemcpy is loaded in this process";
    for (const Region& r : regions) {
      if (r.type == MemoryType::kCuda && r.size > 0 && cuda == nullptr) {
        return Status(Code::kUnsupported, "region '" + r.name + "' is CUDA memory but " + why);
      }
    }
  }
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::string failure;
  std::mutex failure_mu;
  auto worker = [&] {
    std::vector<unsigned char> staging;
    for (size_t t; !failed.load(std::memory_order_relaxed) && (t = next.fetch_add(1)) < tasks.size();) {
      const Region& r = regions[tasks[t].region];
      size_t off = tasks[t].block * kChecksumBlock;
      size_t len = std::min(kChecksumBlock, r.size - off);
      const auto* src = static_cast<const unsigned char*>(r.ptr) + off;
      if (cuda != nullptr && r.type != MemoryType::kHost) {
        staging.resize(kChecksumBlock);
        if (cudaError_t rc = cuda->cudaMemcpy(staging.data(), src, len, cudaMemcpyDefault); rc != cudaSuccess) {
          std::lock_guard<std::mutex> lock(failure_mu);
          failure = "region '" + r.name + "': cudaMemcpy failed: " +
                    (cuda->cudaGetErrorString ? cuda->cudaGetErrorString(rc) : "?") + " (" + std::to_string(rc) + ")";
          failed = true;
          return;
        }
        src = staging.data();
      }
      blocks[tasks[t].region][tasks[t].block] = BlockHash(src, len);
    }
  };
  int n = std::min<int>(DefaultThreads(threads), static_cast<int>(std::max<size_t>(tasks.size(), 1)));
  std::vector<std::thread> pool;
  for (int i = 1; i < n; ++i) pool.push_back(base::StartThread("tm-hash-pool", worker));
  worker();
  for (auto& t : pool) t.join();
  if (failed) return Status(Code::kUnsupported, failure);
  out->resize(regions.size());
  for (size_t r = 0; r < regions.size(); ++r) (*out)[r] = FoldBlockHashes(blocks[r], regions[r].size);
  return Status::Ok();
}

}  // namespace detail

uint64_t Checksum(const void* data, size_t size, int threads) {
  std::vector<uint64_t> out;
  Status s = detail::ChecksumRegions({Region{"x", const_cast<void*>(data), size, MemoryType::kHost}}, threads, &out);
  (void)s;  // host memory cannot fail
  return out[0];
}

Status RegionChecksum(const Region& region, int threads, uint64_t* out) {
  std::vector<uint64_t> sums;
  Status s = detail::ChecksumRegions({region}, threads, &sums);
  if (s.ok()) *out = sums[0];
  return s;
}

}  // namespace trainmover::transfer
