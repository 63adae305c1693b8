// SPDX-License-Identifier: Apache-2.0
// The state checksum (definition in transfer.h and docs/transfer.md).
//
// Why CRC32C lanes: the joiner hashes each block right after it lands, on the thread that read it, so the
// hash must run well above memory bandwidth or it becomes the transfer's speed. The crc32 instruction
// (SSE4.2) does 8 bytes per instruction with a latency of 3 cycles and a throughput of one per cycle, so
// four independent CRCs fed from the four 8-byte words of each 32-byte stripe keep it busy: tens of GB/s
// per core, against ~2-5 GB/s for the earlier multiply-rotate hash. CRC detects every error burst of up to
// 32 bits in a lane with certainty; the four lane CRCs are mixed so that a change confined to one lane
// always changes the block hash, and a change spread over several escapes with probability ~2^-64.
// Without SSE4.2 the same values come from a table (slower, identical).
#include "checksum.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <string>

#include "base/cudart.h"
#include "lanes.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace trainmover::transfer {
namespace {

constexpr uint64_t kM1 = 0x9E3779B97F4A7C15ULL;
constexpr uint64_t kM2 = 0xBF58476D1CE4E5B9ULL;
constexpr uint64_t kM3 = 0x94D049BB133111EBULL;
constexpr uint64_t kM4 = 0xD6E8FEB86659FD93ULL;
// Distinct initial values per lane, so that a block and the same block with its stripes' words permuted
// differ, and leading zero words count.
constexpr uint32_t kLaneInit[4] = {0xFFFFFFFFu, 0x3C6EF372u, 0xA54FF53Au, 0x510E527Fu};

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

// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), no pre/post inversion: what crc32 computes.
struct Crc32cTable {
  uint32_t t[256];
  constexpr Crc32cTable() : t() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ ((c & 1) ? 0x82F63B78u : 0);
      t[i] = c;
    }
  }
};
constexpr Crc32cTable kTable;

inline uint32_t SoftByte(uint32_t crc, uint8_t b) { return (crc >> 8) ^ kTable.t[(crc ^ b) & 0xFF]; }
inline uint32_t SoftWord(uint32_t crc, uint64_t w) {
  for (int i = 0; i < 8; ++i) crc = SoftByte(crc, static_cast<uint8_t>(w >> (8 * i)));
  return crc;
}

// The four lane CRCs, the tail and the length mixed into 64 bits. Lanes (0,1) and (2,3) are packed into two
// words, each passed through its own bijection, and XORed: a change in one lane changes exactly one word, so
// it always changes the result (the final Avalanche is a bijection too).
uint64_t Finish(const uint32_t c[4], size_t size) {
  uint64_t p = (static_cast<uint64_t>(c[0]) << 32) | c[1];
  uint64_t q = (static_cast<uint64_t>(c[2]) << 32) | c[3];
  return Avalanche(Avalanche(p ^ kM4) ^ Avalanche(q * kM1 + kM2) ^ (static_cast<uint64_t>(size) * kM3));
}

// Words after the last full stripe go to lanes 0.., the last bytes to the lane after them.
void Tail(const unsigned char* p, size_t n, uint32_t c[4]) {
  size_t lane = 0;
  for (; n >= 8; n -= 8, p += 8) c[lane] = SoftWord(c[lane], Load64(p)), ++lane;
  for (; n > 0; --n, ++p) c[lane] = SoftByte(c[lane], *p);
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint64_t BlockHashHw(const unsigned char* p, size_t size) {
  uint64_t a = kLaneInit[0], b = kLaneInit[1], c = kLaneInit[2], d = kLaneInit[3];
  size_t stripes = size / 32;
  for (size_t s = 0; s < stripes; ++s, p += 32) {
    a = _mm_crc32_u64(a, Load64(p));
    b = _mm_crc32_u64(b, Load64(p + 8));
    c = _mm_crc32_u64(c, Load64(p + 16));
    d = _mm_crc32_u64(d, Load64(p + 24));
  }
  uint32_t lanes[4] = {static_cast<uint32_t>(a), static_cast<uint32_t>(b), static_cast<uint32_t>(c),
                       static_cast<uint32_t>(d)};
  Tail(p, size % 32, lanes);
  return Finish(lanes, size);
}
// Asked once, on first use: a namespace-scope initialiser would be a global constructor, which the shim must
// not have (tests/lib/test_symbols.sh).
bool HasSse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
#else
bool HasSse42() { return false; }
#endif

}  // namespace

bool HardwareCrc32c() { return HasSse42(); }

namespace detail {

uint64_t BlockHashPortable(const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t lanes[4] = {kLaneInit[0], kLaneInit[1], kLaneInit[2], kLaneInit[3]};
  size_t stripes = size / 32;
  for (size_t s = 0; s < stripes; ++s, p += 32) {
    for (int l = 0; l < 4; ++l) lanes[l] = SoftWord(lanes[l], Load64(p + 8 * l));
  }
  Tail(p, size % 32, lanes);
  return Finish(lanes, size);
}

Status ChecksumRegions(const std::vector<Region>& regions, int threads, LanePool* pool, std::vector<uint64_t>* out) {
  struct Task {
    size_t region;
    size_t block;
  };
  std::vector<Task> tasks;
  std::vector<std::vector<uint64_t>> blocks(regions.size());
  bool any_device = false;
  for (size_t r = 0; r < regions.size(); ++r) {
    blocks[r].resize(BlockCount(regions[r].size));
    for (size_t b = 0; b < blocks[r].size(); ++b) tasks.push_back({r, b});
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
  auto lane = [&](int) {
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
          failure = "region '" + r.name +
                    "': cudaMemcpy failed: " + (cuda->cudaGetErrorString ? cuda->cudaGetErrorString(rc) : "?") + " (" +
                    std::to_string(rc) + ")";
          failed = true;
          return;
        }
        src = staging.data();
      }
      blocks[tasks[t].region][tasks[t].block] = BlockHash(src, len);
    }
  };
  int n = static_cast<int>(std::min<size_t>(DefaultLanes(threads), std::max<size_t>(tasks.size(), 1)));
  if (pool != nullptr) {
    pool->Run(lane, n);
  } else {
    LanePool own(n - 1, "tm-hash");
    own.Run(lane, n);
  }
  if (failed) return Status(Code::kUnsupported, failure);
  out->resize(regions.size());
  for (size_t r = 0; r < regions.size(); ++r) (*out)[r] = FoldBlockHashes(blocks[r], regions[r].size);
  return Status::Ok();
}

}  // namespace detail

uint64_t BlockHash(const void* data, size_t size) {
#if defined(__x86_64__)
  if (HasSse42()) return BlockHashHw(static_cast<const unsigned char*>(data), size);
#endif
  return detail::BlockHashPortable(data, size);
}

uint64_t FoldBlockHashes(std::span<const uint64_t> block_hashes, size_t total_size) {
  uint64_t h = (static_cast<uint64_t>(total_size) * kM1) ^ kM4;
  for (uint64_t b : block_hashes) h = Avalanche(h ^ b) * kM2 + kM3;
  return Avalanche(h ^ block_hashes.size());
}

uint64_t Checksum(const void* data, size_t size, int threads) {
  std::vector<uint64_t> out;
  Status s =
      detail::ChecksumRegions({Region{"x", const_cast<void*>(data), size, MemoryType::kHost}}, threads, nullptr, &out);
  (void)s;  // host memory cannot fail
  return out[0];
}

Status RegionChecksum(const Region& region, int threads, uint64_t* out) {
  std::vector<uint64_t> sums;
  Status s = detail::ChecksumRegions({region}, threads, nullptr, &sums);
  if (s.ok()) *out = sums[0];
  return s;
}

}  // namespace trainmover::transfer
