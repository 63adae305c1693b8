// SPDX-License-Identifier: Apache-2.0
// Every collective x datatype x reduction x count (0, 1, odd, large) x in/out of place on N processes,
// checked exactly: inputs are chosen so every result is exactly representable in every type (as nccl-tests
// does), and mismatches are counted.
//   usage: hn_colls NRANKS [CHUNK_BYTES [ALGO]]
// CHUNK_BYTES and ALGO set HOSTNCCL_CHUNK_BYTES and HOSTNCCL_ALGO: a small chunk makes every count above a few
// thousand bytes a multi-segment pipeline (segment boundaries inside blocks, partial last segments), and
// ALGO=ring runs AllGather and Broadcast around the ring even on one host.
#include "hn_harness.h"

namespace {

constexpr ncclDataType_t kTypes[] = {ncclInt8,    ncclUint8,    ncclInt32,      ncclUint32,
                                     ncclInt64,   ncclUint64,   ncclFloat16,    ncclFloat32,
                                     ncclFloat64, ncclBfloat16, ncclFloat8e4m3, ncclFloat8e5m2};
const size_t kCounts[] = {0, 1, 7, 4099};
enum Op { kSum, kProd, kMax, kMin, kAvg, kPreMulHost, kPreMulDev, kNumOps };
const char* kOpNames[] = {"sum", "prod", "max", "min", "avg", "premulsum-host", "premulsum-device"};

// Input of rank r at element i for a reduction op; chosen so all results are exact.
double Input(Op op, int r, int n, size_t i) {
  switch (op) {
    case kProd:
      return (static_cast<size_t>(r) == i % n) ? 2 : 1;
    case kMax:
    case kMin:
      return static_cast<double>((r * 3 + i) % 7);
    default:
      return static_cast<double>((r + i) % 2);  // sums of 0/1: at most 8, exact in every type
  }
}

double Expected(Op op, int n, size_t i, ncclDataType_t t) {
  double acc = Input(op, 0, n, i);
  for (int r = 1; r < n; ++r) {
    double x = Input(op, r, n, i);
    switch (op) {
      case kProd:
        acc *= x;
        break;
      case kMax:
        acc = std::max(acc, x);
        break;
      case kMin:
        acc = std::min(acc, x);
        break;
      default:
        acc += x;
        break;
    }
  }
  if (op == kPreMulHost || op == kPreMulDev) acc *= 2;
  if (op == kAvg) acc = ht::IsFloat(t) ? acc / n : std::floor(acc / n);
  return acc;
}

bool AvgExact(int n, ncclDataType_t t) { return !ht::IsFloat(t) || (n & (n - 1)) == 0; }

int Body(int rank, int n, const ncclUniqueId& id) {
  int failures = 0;
  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, n, id, rank));
  long checked = 0;
  for (ncclDataType_t t : kTypes) {
    const size_t es = ht::Size(t);
    // PreMulSum scalars: host immediate 2; "device" residence read when the operation runs (set to 2 after
    // the op is created with 5 in it).
    std::vector<char> two(8), dev(8);
    ht::Put(t, two.data(), 0, 2);
    ht::Put(t, dev.data(), 0, 5);
    ncclRedOp_t premul_host, premul_dev;
    HT_NCCL(ncclRedOpCreatePreMulSum(&premul_host, two.data(), t, ncclScalarHostImmediate, comm));
    HT_NCCL(ncclRedOpCreatePreMulSum(&premul_dev, dev.data(), t, ncclScalarDevice, comm));
    ht::Put(t, dev.data(), 0, 2);
    for (size_t count : kCounts) {
      for (int inplace = 0; inplace < 2; ++inplace) {
        // ---- reductions ----
        for (int o = 0; o < kNumOps; ++o) {
          Op op = static_cast<Op>(o);
          if (op == kAvg && !AvgExact(n, t)) continue;
          ncclRedOp_t nop = op == kSum          ? ncclSum
                            : op == kProd       ? ncclProd
                            : op == kMax        ? ncclMax
                            : op == kMin        ? ncclMin
                            : op == kAvg        ? ncclAvg
                            : op == kPreMulHost ? premul_host
                                                : premul_dev;
          // AllReduce
          {
            std::vector<char> sb(count * es + 1), rb(count * es + 1);
            for (size_t i = 0; i < count; ++i) ht::Put(t, sb.data(), i, Input(op, rank, n, i));
            void* out = inplace ? sb.data() : rb.data();
            HT_NCCL(ncclAllReduce(sb.data(), out, count, t, nop, comm, nullptr));
            int bad = 0;
            for (size_t i = 0; i < count; ++i) bad += ht::Get(t, out, i) != Expected(op, n, i, t);
            HT_EXPECT(bad == 0, "AllReduce %s %s count %zu inplace %d: %d wrong", ht::TypeName(t), kOpNames[o], count,
                      inplace, bad);
            ++checked;
          }
          // Reduce to root count % n
          {
            int root = static_cast<int>(count % n);
            std::vector<char> sb(count * es + 1), rb(count * es + 1);
            for (size_t i = 0; i < count; ++i) ht::Put(t, sb.data(), i, Input(op, rank, n, i));
            void* out = inplace ? sb.data() : rb.data();
            HT_NCCL(ncclReduce(sb.data(), out, count, t, nop, root, comm, nullptr));
            if (rank == root) {
              int bad = 0;
              for (size_t i = 0; i < count; ++i) bad += ht::Get(t, out, i) != Expected(op, n, i, t);
              HT_EXPECT(bad == 0, "Reduce %s %s count %zu inplace %d: %d wrong", ht::TypeName(t), kOpNames[o], count,
                        inplace, bad);
            }
            ++checked;
          }
          // ReduceScatter: recvcount = count; element i of the full vector is index rank*count + i
          {
            std::vector<char> sb(count * n * es + 1), rb(count * es + 1);
            for (size_t i = 0; i < count * n; ++i) ht::Put(t, sb.data(), i, Input(op, rank, n, i));
            void* out = inplace ? sb.data() + rank * count * es : rb.data();
            HT_NCCL(ncclReduceScatter(sb.data(), out, count, t, nop, comm, nullptr));
            int bad = 0;
            for (size_t i = 0; i < count; ++i) bad += ht::Get(t, out, i) != Expected(op, n, rank * count + i, t);
            HT_EXPECT(bad == 0, "ReduceScatter %s %s count %zu inplace %d: %d wrong", ht::TypeName(t), kOpNames[o],
                      count, inplace, bad);
            ++checked;
          }
        }
        // ---- data movement: value of rank r at index i ----
        auto val = [&](int r, size_t i) { return static_cast<double>((r * 5 + i) % 8); };
        {  // AllGather
          std::vector<char> sb(count * es + 1), rb(count * n * es + 1);
          for (size_t i = 0; i < count; ++i)
            ht::Put(t, inplace ? rb.data() + rank * count * es : sb.data(), i, val(rank, i));
          const void* in = inplace ? rb.data() + rank * count * es : sb.data();
          HT_NCCL(ncclAllGather(in, rb.data(), count, t, comm, nullptr));
          int bad = 0;
          for (int r = 0; r < n; ++r)
            for (size_t i = 0; i < count; ++i) bad += ht::Get(t, rb.data(), r * count + i) != val(r, i);
          HT_EXPECT(bad == 0, "AllGather %s count %zu inplace %d: %d wrong", ht::TypeName(t), count, inplace, bad);
        }
        {  // Broadcast and Bcast from root (count+1) % n
          int root = static_cast<int>((count + 1) % n);
          std::vector<char> sb(count * es + 1), rb(count * es + 1);
          for (size_t i = 0; i < count; ++i) ht::Put(t, sb.data(), i, rank == root ? val(root, i) : 99);
          void* out = inplace ? sb.data() : rb.data();
          HT_NCCL(ncclBroadcast(sb.data(), out, count, t, root, comm, nullptr));
          int bad = 0;
          for (size_t i = 0; i < count; ++i) bad += ht::Get(t, out, i) != val(root, i);
          HT_EXPECT(bad == 0, "Broadcast %s count %zu inplace %d: %d wrong", ht::TypeName(t), count, inplace, bad);
          for (size_t i = 0; i < count; ++i) ht::Put(t, rb.data(), i, rank == root ? val(root, i) + 1 : 99);
          HT_NCCL(ncclBcast(rb.data(), count, t, root, comm, nullptr));
          bad = 0;
          for (size_t i = 0; i < count; ++i) bad += ht::Get(t, rb.data(), i) != val(root, i) + 1;
          HT_EXPECT(bad == 0, "Bcast %s count %zu: %d wrong", ht::TypeName(t), count, bad);
        }
        {  // AlltoAll: block p of rank r's input holds val(r*n+p, i)
          std::vector<char> sb(count * n * es + 1), rb(count * n * es + 1);
          for (int p = 0; p < n; ++p)
            for (size_t i = 0; i < count; ++i) ht::Put(t, sb.data(), p * count + i, val(rank * n + p, i));
          void* out = inplace ? sb.data() : rb.data();
          HT_NCCL(ncclAlltoAll(sb.data(), out, count, t, comm, nullptr));
          int bad = 0;
          for (int p = 0; p < n; ++p)
            for (size_t i = 0; i < count; ++i) bad += ht::Get(t, out, p * count + i) != val(p * n + rank, i);
          HT_EXPECT(bad == 0, "AlltoAll %s count %zu inplace %d: %d wrong", ht::TypeName(t), count, inplace, bad);
        }
        {  // Gather / Scatter at root count % n
          int root = static_cast<int>(count % n);
          std::vector<char> sb(count * n * es + 1), rb(count * n * es + 1);
          void* gin = inplace && rank == root ? rb.data() + rank * count * es : sb.data();
          for (size_t i = 0; i < count; ++i) ht::Put(t, gin, i, val(rank, i));
          HT_NCCL(ncclGather(gin, rb.data(), count, t, root, comm, nullptr));
          if (rank == root) {
            int bad = 0;
            for (int r = 0; r < n; ++r)
              for (size_t i = 0; i < count; ++i) bad += ht::Get(t, rb.data(), r * count + i) != val(r, i);
            HT_EXPECT(bad == 0, "Gather %s count %zu inplace %d: %d wrong", ht::TypeName(t), count, inplace, bad);
          }
          for (int r = 0; r < n; ++r)
            for (size_t i = 0; i < count; ++i) ht::Put(t, sb.data(), r * count + i, val(r + 3, i));
          void* sout = inplace && rank == root ? sb.data() + rank * count * es : rb.data();
          HT_NCCL(ncclScatter(sb.data(), sout, count, t, root, comm, nullptr));
          int bad = 0;
          for (size_t i = 0; i < count; ++i) bad += ht::Get(t, sout, i) != val(rank + 3, i);
          HT_EXPECT(bad == 0, "Scatter %s count %zu inplace %d: %d wrong", ht::TypeName(t), count, inplace, bad);
        }
      }
    }
    HT_NCCL(ncclRedOpDestroy(premul_host, comm));
    HT_NCCL(ncclRedOpDestroy(premul_dev, comm));
  }
  // Large counts (not a multiple of n) for the bandwidth-path collectives, in a few types, in and out of place.
  for (ncclDataType_t t : {ncclFloat32, ncclBfloat16, ncclInt64, ncclUint8}) {
    const size_t count = (t == ncclFloat32 ? 1u << 18 : 1u << 15) + 3, es = ht::Size(t);
    for (int inplace = 0; inplace < 2; ++inplace) {
      std::vector<char> sb(count * n * es), rb(count * n * es);
      // AllReduce
      for (size_t i = 0; i < count; ++i) ht::Put(t, sb.data(), i, Input(kSum, rank, n, i));
      void* out = inplace ? sb.data() : rb.data();
      HT_NCCL(ncclAllReduce(sb.data(), out, count, t, ncclSum, comm, nullptr));
      int bad = 0;
      for (size_t i = 0; i < count; ++i) bad += ht::Get(t, out, i) != Expected(kSum, n, i, t);
      HT_EXPECT(bad == 0, "large AllReduce %s inplace %d: %d wrong", ht::TypeName(t), inplace, bad);
      // ReduceScatter of n * count elements (max: a different order-insensitive op through the same path)
      for (size_t i = 0; i < count * n; ++i) ht::Put(t, sb.data(), i, Input(kMax, rank, n, i));
      out = inplace ? sb.data() + rank * count * es : rb.data();
      HT_NCCL(ncclReduceScatter(sb.data(), out, count, t, ncclMax, comm, nullptr));
      bad = 0;
      for (size_t i = 0; i < count; ++i) bad += ht::Get(t, out, i) != Expected(kMax, n, rank * count + i, t);
      HT_EXPECT(bad == 0, "large ReduceScatter %s inplace %d: %d wrong", ht::TypeName(t), inplace, bad);
      // Reduce to the last rank
      for (size_t i = 0; i < count; ++i) ht::Put(t, sb.data(), i, Input(kSum, rank, n, i));
      out = inplace ? sb.data() : rb.data();
      HT_NCCL(ncclReduce(sb.data(), out, count, t, ncclSum, n - 1, comm, nullptr));
      bad = 0;
      for (size_t i = 0; rank == n - 1 && i < count; ++i) bad += ht::Get(t, out, i) != Expected(kSum, n, i, t);
      HT_EXPECT(bad == 0, "large Reduce %s inplace %d: %d wrong", ht::TypeName(t), inplace, bad);
      // AllGather
      void* in = inplace ? rb.data() + rank * count * es : sb.data();
      for (size_t i = 0; i < count; ++i) ht::Put(t, in, i, Input(kSum, rank, n, i) + rank);
      HT_NCCL(ncclAllGather(in, rb.data(), count, t, comm, nullptr));
      bad = 0;
      for (int r = 0; r < n; ++r)
        for (size_t i = 0; i < count; ++i) bad += ht::Get(t, rb.data(), r * count + i) != Input(kSum, r, n, i) + r;
      HT_EXPECT(bad == 0, "large AllGather %s inplace %d: %d wrong", ht::TypeName(t), inplace, bad);
      // Broadcast from rank 1 % n
      const int root = 1 % n;
      for (size_t i = 0; i < count; ++i) ht::Put(t, sb.data(), i, rank == root ? static_cast<double>(i % 5) : 7);
      out = inplace ? sb.data() : rb.data();
      HT_NCCL(ncclBroadcast(sb.data(), out, count, t, root, comm, nullptr));
      bad = 0;
      for (size_t i = 0; i < count; ++i) bad += ht::Get(t, out, i) != static_cast<double>(i % 5);
      HT_EXPECT(bad == 0, "large Broadcast %s inplace %d: %d wrong", ht::TypeName(t), inplace, bad);
    }
  }
  HT_NCCL(ncclCommDestroy(comm));
  if (rank == 0) printf("nranks %d: %ld reduction checks, %d failures\n", n, checked, failures);
  return failures;
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? atoi(argv[1]) : 2;
  if (argc > 2) setenv("HOSTNCCL_CHUNK_BYTES", argv[2], 1);
  if (argc > 3) setenv("HOSTNCCL_ALGO", argv[3], 1);
  int f = ht::RunRanks(n, Body, 55);
  printf("%s: %d failures\n", f ? "FAIL" : "PASS", f);
  return f ? 1 : 0;
}
