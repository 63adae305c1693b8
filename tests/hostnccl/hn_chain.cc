// SPDX-License-Identifier: Apache-2.0
// The chain AllReduce (HOSTNCCL_ALGO=ring) gives the bits of the direct one (HOSTNCCL_ALGO=direct), for every
// type and reduction (sum, prod, max, min, avg, PreMulSum with a host and a device scalar), over inputs that
// are not exact (random bit patterns: NaN, infinities, wrapping integers included), counts that are not
// multiples of the segment nor of the number of ranks, in and out of place; and float and double sums equal the
// sum taken in rank order 0..n-1 computed here. The chain runs with 4 KiB segments (many per operation) and the
// direct one with 5000-byte segments, on a split of the same ranks.
//   usage: hn_chain NRANKS
#include "hn_harness.h"

namespace {

constexpr ncclDataType_t kTypes[] = {ncclInt8,    ncclUint8,    ncclInt32,      ncclUint32,
                                     ncclInt64,   ncclUint64,   ncclFloat16,    ncclFloat32,
                                     ncclFloat64, ncclBfloat16, ncclFloat8e4m3, ncclFloat8e5m2};
constexpr size_t kCounts[] = {0, 1, 7, 1025, 4099, 30011};
enum Op { kSum, kProd, kMax, kMin, kAvg, kPreMulHost, kPreMulDev, kNumOps };
const char* kOpNames[] = {"sum", "prod", "max", "min", "avg", "premulsum-host", "premulsum-device"};

uint64_t Mix(uint64_t h) {
  h ^= h >> 31;
  h *= 0xbf58476d1ce4e5b9ull;
  h ^= h >> 29;
  return h;
}

// Input of rank r at element i: random bits, except float and double, which take values the reference below can
// sum (in [-100, 153), not exact in sums).
void Fill(ncclDataType_t t, int r, size_t count, std::vector<char>* buf) {
  const size_t es = ht::Size(t);
  buf->assign(count * es + 1, 0);
  for (size_t i = 0; i < count; ++i) {
    const uint64_t h = Mix((r + 1) * 0x9e3779b97f4a7c15ull ^ Mix(i * 131 + t));
    if (t == ncclFloat32 || t == ncclFloat64) {
      ht::Put(t, buf->data(), i, static_cast<double>(h % 2000003) / 7919.0 - 100.0);
    } else {
      memcpy(buf->data() + i * es, &h, es);
    }
  }
}

template <typename T>
int RankOrderSum(int n, size_t count, ncclDataType_t t, const void* got) {
  int bad = 0;
  std::vector<std::vector<char>> x(n);
  for (int r = 0; r < n; ++r) Fill(t, r, count, &x[r]);
  for (size_t i = 0; i < count; ++i) {
    T acc;
    memcpy(&acc, x[0].data() + i * sizeof(T), sizeof(T));
    for (int r = 1; r < n; ++r) {
      T v;
      memcpy(&v, x[r].data() + i * sizeof(T), sizeof(T));
      acc += v;
    }
    bad += memcmp(&acc, static_cast<const char*>(got) + i * sizeof(T), sizeof(T)) != 0;
  }
  return bad;
}

int Body(int rank, int n, const ncclUniqueId& id) {
  int failures = 0;
  setenv("HOSTNCCL_ALGO", "direct", 1);
  setenv("HOSTNCCL_CHUNK_BYTES", "5000", 1);
  ncclComm_t direct = nullptr, chain = nullptr;
  HT_NCCL(ncclCommInitRank(&direct, n, id, rank));
  setenv("HOSTNCCL_ALGO", "ring", 1);
  setenv("HOSTNCCL_CHUNK_BYTES", "4096", 1);
  HT_NCCL(ncclCommSplit(direct, 0, rank, &chain, nullptr));
  long checked = 0;
  for (ncclDataType_t t : kTypes) {
    const size_t es = ht::Size(t);
    // PreMulSum scalars, not exact either: 0.3 (floats) or 3 (integers); the device one is read when the
    // operation runs.
    const double scalar = ht::IsFloat(t) ? 0.3 : 3;
    std::vector<char> host(8), dev(8);
    ht::Put(t, host.data(), 0, scalar);
    ht::Put(t, dev.data(), 0, scalar);
    ncclRedOp_t pre[2][2];  // [comm][host, device]
    ncclComm_t comms[2] = {direct, chain};
    for (int c = 0; c < 2; ++c) {
      HT_NCCL(ncclRedOpCreatePreMulSum(&pre[c][0], host.data(), t, ncclScalarHostImmediate, comms[c]));
      HT_NCCL(ncclRedOpCreatePreMulSum(&pre[c][1], dev.data(), t, ncclScalarDevice, comms[c]));
    }
    for (size_t count : kCounts) {
      std::vector<char> in;
      Fill(t, rank, count, &in);
      for (int o = 0; o < kNumOps; ++o) {
        for (int inplace = 0; inplace < 2; ++inplace) {
          std::vector<char> out[2];
          for (int c = 0; c < 2; ++c) {
            const ncclRedOp_t op = o == kSum    ? ncclSum
                                   : o == kProd ? ncclProd
                                   : o == kMax  ? ncclMax
                                   : o == kMin  ? ncclMin
                                   : o == kAvg  ? ncclAvg
                                                : pre[c][o - kPreMulHost];
            std::vector<char> sb = in, rb(count * es + 1, 0);
            void* dst = inplace ? sb.data() : rb.data();
            HT_NCCL(ncclAllReduce(sb.data(), dst, count, t, op, comms[c], nullptr));
            out[c].assign(static_cast<char*>(dst), static_cast<char*>(dst) + count * es);
            if (!inplace) HT_EXPECT(sb == in, "%s %s count %zu: the send buffer changed", ht::TypeName(t), kOpNames[o], count);
          }
          HT_EXPECT(out[0] == out[1], "AllReduce %s %s count %zu inplace %d: chain and direct differ",
                    ht::TypeName(t), kOpNames[o], count, inplace);
          if (o == kSum && t == ncclFloat32) {
            int bad = RankOrderSum<float>(n, count, t, out[1].data());
            HT_EXPECT(bad == 0, "float sum count %zu: %d elements differ from the rank-ordered sum", count, bad);
          }
          if (o == kSum && t == ncclFloat64) {
            int bad = RankOrderSum<double>(n, count, t, out[1].data());
            HT_EXPECT(bad == 0, "double sum count %zu: %d elements differ from the rank-ordered sum", count, bad);
          }
          ++checked;
        }
      }
    }
    for (int c = 0; c < 2; ++c) {
      HT_NCCL(ncclRedOpDestroy(pre[c][0], comms[c]));
      HT_NCCL(ncclRedOpDestroy(pre[c][1], comms[c]));
    }
  }
  HT_NCCL(ncclCommDestroy(chain));
  HT_NCCL(ncclCommDestroy(direct));
  if (rank == 0) printf("nranks %d: %ld AllReduce comparisons, %d failures\n", n, checked, failures);
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? atoi(argv[1]) : 3;
  int f = ht::RunRanks(n, Body, 55);
  printf("%s: %d failures\n", f ? "FAIL" : "PASS", f);
  return f ? 1 : 0;
}
