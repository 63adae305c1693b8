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
#include <immintrin.h>
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
// The four lane CRCs over stripes [0, stripes) on the crc32 instruction, continuing from c[].
__attribute__((target("sse4.2"))) void LanesCrc32(const unsigned char* p, size_t stripes, uint32_t c[4]) {
  uint64_t a = c[0], b = c[1], x = c[2], d = c[3];
  for (size_t s = 0; s < stripes; ++s, p += 32) {
    a = _mm_crc32_u64(a, Load64(p));
    b = _mm_crc32_u64(b, Load64(p + 8));
    x = _mm_crc32_u64(x, Load64(p + 16));
    d = _mm_crc32_u64(d, Load64(p + 24));
  }
  c[0] = static_cast<uint32_t>(a), c[1] = static_cast<uint32_t>(b), c[2] = static_cast<uint32_t>(x);
  c[3] = static_cast<uint32_t>(d);
}

// The same lane CRCs by carry-less multiplication (VPCLMULQDQ on 512-bit registers), which is not limited to the
// crc32 instruction's 8 bytes per cycle. Each lane's message (its words, in order) is cut into 16-byte chunks;
// a 64-byte load holds two stripes, and a permutation puts lane k's two words into the register's 128-bit lane
// k, so one register advances all four lane messages by one chunk. Four registers take chunks 4i..4i+3;
// each folds forward by four chunks (512 bits): with A read as a polynomial whose low quadword holds the
// higher degrees, A * x^512 = lo * x^(512+64) + hi * x^512 (mod P), computed as two 64x32-bit carry-less
// products with the constants x^(512+63) and x^(512-1) mod P (one less: the product of two bit-reflected
// operands lands one bit low). At the end the four registers fold into the last one, whose 16 bytes per lane
// have the lane's CRC so far: crc32 of them from zero. Same values as LanesCrc32 (tests compare at every
// length against the table); the initial values are XORed into each lane's first four bytes, which is what the
// crc32 instruction does with its running value.
constexpr uint32_t kCrc32cPoly = 0x1EDC6F41u;  // x^32 + ..., normal (not reflected) form, x^32 implied
// x^n mod P as a 64-bit operand for the reflected carry-less multiply: bit j holds the coefficient of x^(63-j).
constexpr uint64_t XPowModP(unsigned n) {
  uint64_t r = 1;  // bit i: coefficient of x^i
  for (unsigned i = 0; i < n; ++i) {
    r <<= 1;
    if (r & (uint64_t{1} << 32)) r = (r ^ kCrc32cPoly) & 0xFFFFFFFFu;
  }
  uint64_t out = 0;
  for (unsigned i = 0; i < 32; ++i) {
    if (r & (uint64_t{1} << i)) out |= uint64_t{1} << (63 - i);
  }
  return out;
}
// Folding constants by a distance of `bits` (a multiple of 128): low quadword for A's low half, high for its high.
struct Fold {
  uint64_t lo, hi;
};
constexpr Fold FoldBy(unsigned bits) { return {XPowModP(bits + 63), XPowModP(bits - 1)}; }

__attribute__((target("avx512f,vpclmulqdq"))) inline __m512i FoldForward(__m512i a, __m512i k) {
  return _mm512_xor_si512(_mm512_clmulepi64_epi128(a, k, 0x00), _mm512_clmulepi64_epi128(a, k, 0x11));
}
__attribute__((target("avx512f,vpclmulqdq"))) inline __m512i Constant(Fold f) {
  return _mm512_set_epi64(static_cast<long long>(f.hi), static_cast<long long>(f.lo), static_cast<long long>(f.hi),
                          static_cast<long long>(f.lo), static_cast<long long>(f.hi), static_cast<long long>(f.lo),
                          static_cast<long long>(f.hi), static_cast<long long>(f.lo));
}

// Two stripes with lane k's two words in 128-bit lane k (the qwords in the order 0 4 1 5 2 6 3 7).
__attribute__((target("avx512f"))) inline __m512i LoadTwoStripes(const unsigned char* q) {
  // (maskz: GCC 12 warns that the unmasked form's undefined source is uninitialised)
  return _mm512_maskz_permutexvar_epi64(0xFF, _mm512_set_epi64(7, 3, 6, 2, 5, 1, 4, 0), _mm512_loadu_si512(q));
}

// Stripes [0, 2 * kRegs * groups) of p (groups >= 1) into c[] (which holds the initial values on entry). kRegs
// registers in flight hide the multiply's latency.
constexpr size_t kRegs = 8;
constexpr size_t kGroupBytes = 64 * kRegs;
// Compile-time constants: kFolds[d] folds by d chunks (d * 128 bits), d = 1..kRegs.
struct FoldTable {
  Fold by[kRegs + 1];
  constexpr FoldTable() : by() {
    for (unsigned d = 1; d <= kRegs; ++d) by[d] = FoldBy(128 * d);
  }
};
constexpr FoldTable kFolds;
__attribute__((target("avx512f,vpclmulqdq,sse4.2"))) void LanesClmul(const unsigned char* p, size_t groups,
                                                                     uint32_t c[4]) {
  __m512i z[kRegs];
  for (size_t r = 0; r < kRegs; ++r) z[r] = LoadTwoStripes(p + 64 * r);
  z[0] = _mm512_xor_si512(z[0], _mm512_set_epi64(0, c[3], 0, c[2], 0, c[1], 0, c[0]));
  const __m512i k = Constant(kFolds.by[kRegs]);
  for (size_t g = 1; g < groups; ++g) {
    p += kGroupBytes;
    for (size_t r = 0; r < kRegs; ++r) z[r] = _mm512_xor_si512(FoldForward(z[r], k), LoadTwoStripes(p + 64 * r));
  }
  // Register r holds chunks kRegs*i + r: each folds forward to the last one's position.
  __m512i acc = z[kRegs - 1];
  for (size_t r = 0; r + 1 < kRegs; ++r) {
    acc = _mm512_xor_si512(acc, FoldForward(z[r], Constant(kFolds.by[kRegs - 1 - r])));
  }
  alignas(64) uint64_t q[8];
  _mm512_store_si512(q, acc);
  for (int l = 0; l < 4; ++l) c[l] = static_cast<uint32_t>(_mm_crc32_u64(_mm_crc32_u64(0, q[2 * l]), q[2 * l + 1]));
}

// Asked once, on first use: a namespace-scope initialiser would be a global constructor, which the shim must
// not have (tests/lib/test_symbols.sh).
bool HasSse42() {
  static const bool has = __builtin_cpu_supports("sse4.2");
  return has;
}
bool HasClmul512() {
  static const bool has = HasSse42() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("vpclmulqdq");
  return has;
}

uint64_t BlockHashHw(const unsigned char* p, size_t size) {
  uint32_t lanes[4] = {kLaneInit[0], kLaneInit[1], kLaneInit[2], kLaneInit[3]};
  size_t stripes = size / 32;
  // Below a few groups the set-up costs more than the crc32 instruction would.
  if (const size_t groups = size / kGroupBytes; groups >= 2 && HasClmul512()) {
    LanesClmul(p, groups, lanes);
    p += groups * kGroupBytes;
    stripes -= groups * kGroupBytes / 32;
  }
  LanesCrc32(p, stripes, lanes);
  Tail(p + stripes * 32, size % 32, lanes);
  return Finish(lanes, size);
}
#else
bool HasSse42() { return false; }
bool HasClmul512() { return false; }
#endif

}  // namespace

const char* BlockHashImplementation() { return HasClmul512() ? "vpclmulqdq" : HasSse42() ? "sse4.2" : "table"; }

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
