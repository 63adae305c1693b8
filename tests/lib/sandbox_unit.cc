// SPDX-License-Identifier: Apache-2.0
// The joiner sandbox: communicators created while the process is sandboxed have no real communicator and
// every collective is emulated locally (docs/shim.md "Sandbox emulation"). Outputs checked bit for bit.
#include <doctest/doctest.h>

#include <cstring>
#include <vector>

#include "nccl_dtype.h"
#include "core/shim_state.h"

using namespace trainmover::shim;

namespace {

struct Sandboxed {
  ncclComm_t comm = nullptr;
  Sandboxed(int nranks, int rank) {
    SetProcessSandboxed(true);
    ncclUniqueId id;
    REQUIRE(ncclGetUniqueId(&id) == ncclSuccess);
    REQUIRE(ncclCommInitRank(&comm, nranks, id, rank) == ncclSuccess);
    SetProcessSandboxed(false);
  }
  ~Sandboxed() { CHECK(ncclCommDestroy(comm) == ncclSuccess); }
};

template <typename T>
std::vector<uint8_t> Bytes(std::initializer_list<T> v) {
  std::vector<uint8_t> b(v.size() * sizeof(T));
  memcpy(b.data(), std::data(v), b.size());
  return b;
}

// One datatype's input (3 elements: 1.5, -2, 0.25 or integers) and the expected sum over n = 3 ranks.
struct Case {
  ncclDataType_t t;
  std::vector<uint8_t> in, sum3;
};

std::vector<Case> Cases() {
  return {
      {ncclFloat32, Bytes<float>({1.5f, -2.0f, 0.25f}), Bytes<float>({4.5f, -6.0f, 0.75f})},
      {ncclFloat64, Bytes<double>({1.5, -2.0, 0.25}), Bytes<double>({4.5, -6.0, 0.75})},
      {ncclFloat16, Bytes<uint16_t>({0x3e00, 0xc000, 0x3400}), Bytes<uint16_t>({0x4480, 0xc600, 0x3a00})},
      {ncclBfloat16, Bytes<uint16_t>({0x3fc0, 0xc000, 0x3e80}), Bytes<uint16_t>({0x4090, 0xc0c0, 0x3f40})},
      {ncclFloat8e4m3, Bytes<uint8_t>({0x3c, 0xc0, 0x28}), Bytes<uint8_t>({0x49, 0xcc, 0x34})},
      {ncclFloat8e5m2, Bytes<uint8_t>({0x3e, 0xc0, 0x34}), Bytes<uint8_t>({0x44, 0xc6, 0x3a})},  // 4.5 -> 4 (even)
      {ncclInt8, Bytes<int8_t>({100, -3, 7}), Bytes<int8_t>({44, -9, 21})},                      // 300 wraps to 44
      {ncclUint8, Bytes<uint8_t>({200, 3, 7}), Bytes<uint8_t>({88, 9, 21})},
      {ncclInt32, Bytes<int32_t>({100, -3, 7}), Bytes<int32_t>({300, -9, 21})},
      {ncclUint32, Bytes<uint32_t>({100, 3, 7}), Bytes<uint32_t>({300, 9, 21})},
      {ncclInt64, Bytes<int64_t>({100, -3, 7}), Bytes<int64_t>({300, -9, 21})},
      {ncclUint64, Bytes<uint64_t>({100, 3, 7}), Bytes<uint64_t>({300, 9, 21})},
  };
}

}  // namespace

TEST_CASE("sandbox: no real communicator, local id, local answers") {
  Sandboxed s(3, 1);
  VComm* v = AsVComm(s.comm);
  REQUIRE(v);
  CHECK(v->real.load() == nullptr);
  CHECK(IsSandboxed(v));
  int n = 0, r = 0, dev = -1;
  ncclResult_t async = ncclInternalError;
  CHECK(ncclCommCount(s.comm, &n) == ncclSuccess);
  CHECK(ncclCommUserRank(s.comm, &r) == ncclSuccess);
  CHECK(ncclCommCuDevice(s.comm, &dev) == ncclSuccess);
  CHECK(ncclCommGetAsyncError(s.comm, &async) == ncclSuccess);
  CHECK(n == 3);
  CHECK(r == 1);
  CHECK(dev == 0);
  CHECK(async == ncclSuccess);
  CHECK(ncclCommFinalize(s.comm) == ncclSuccess);
  // Two locally generated ids differ.
  SetProcessSandboxed(true);
  ncclUniqueId a, b;
  CHECK(ncclGetUniqueId(&a) == ncclSuccess);
  CHECK(ncclGetUniqueId(&b) == ncclSuccess);
  SetProcessSandboxed(false);
  CHECK(memcmp(&a, &b, sizeof(a)) != 0);
  // Split and Shrink of a sandboxed parent are sandboxed.
  ncclComm_t sp = nullptr, sh = nullptr;
  CHECK(ncclCommSplit(s.comm, 0, 0, &sp, nullptr) == ncclSuccess);
  int excl[1] = {0};
  CHECK(ncclCommShrink(s.comm, excl, 1, &sh, nullptr, 0) == ncclSuccess);
  CHECK(IsSandboxed(AsVComm(sp)));
  CHECK(ncclCommCount(sh, &n) == ncclSuccess);
  CHECK(n == 2);
  CHECK(ncclCommUserRank(sh, &r) == ncclSuccess);
  CHECK(r == 0);
  CHECK(ncclCommDestroy(sp) == ncclSuccess);
  CHECK(ncclCommDestroy(sh) == ncclSuccess);
}

TEST_CASE("sandbox: AllReduce/Reduce/ReduceScatter for every datatype and op, exact") {
  Sandboxed s(3, 1);
  for (const Case& c : Cases()) {
    CAPTURE(c.t);
    const size_t es = trainmover::common::DtypeSize(c.t);
    std::vector<uint8_t> out(c.in.size(), 0xab);
    REQUIRE(ncclAllReduce(c.in.data(), out.data(), 3, c.t, ncclSum, s.comm, nullptr) == ncclSuccess);
    CHECK(out == c.sum3);
    for (ncclRedOp_t op : {ncclProd, ncclMax, ncclMin, ncclAvg}) {
      std::fill(out.begin(), out.end(), 0xab);
      REQUIRE(ncclAllReduce(c.in.data(), out.data(), 3, c.t, op, s.comm, nullptr) == ncclSuccess);
      CHECK(out == c.in);
    }
    // In place.
    out = c.in;
    REQUIRE(ncclAllReduce(out.data(), out.data(), 3, c.t, ncclSum, s.comm, nullptr) == ncclSuccess);
    CHECK(out == c.sum3);
    // Reduce: result at the root (rank 1), recvbuff untouched elsewhere.
    std::fill(out.begin(), out.end(), 0xab);
    REQUIRE(ncclReduce(c.in.data(), out.data(), 3, c.t, ncclSum, 1, s.comm, nullptr) == ncclSuccess);
    CHECK(out == c.sum3);
    std::fill(out.begin(), out.end(), 0xab);
    REQUIRE(ncclReduce(c.in.data(), out.data(), 3, c.t, ncclSum, 0, s.comm, nullptr) == ncclSuccess);
    CHECK(out == std::vector<uint8_t>(c.in.size(), 0xab));
    // ReduceScatter, recvcount 1: this rank's (1) element of the emulated allreduce.
    std::vector<uint8_t> one(es, 0xab);
    REQUIRE(ncclReduceScatter(c.in.data(), one.data(), 1, c.t, ncclSum, s.comm, nullptr) == ncclSuccess);
    CHECK(one == std::vector<uint8_t>(c.sum3.begin() + es, c.sum3.begin() + 2 * es));
  }
}

TEST_CASE("sandbox: overflow gives inf or saturates, never NaN; PreMulSum = scalar*n*x") {
  Sandboxed s(4, 0);
  uint16_t h = 0x7530;  // half 30000; 4 * 30000 overflows
  uint16_t hout = 0;
  REQUIRE(ncclAllReduce(&h, &hout, 1, ncclFloat16, ncclSum, s.comm, nullptr) == ncclSuccess);
  CHECK(hout == 0x7c00);
  uint8_t f8 = 0x7e, f8out = 0;  // e4m3 448 * 4 saturates
  REQUIRE(ncclAllReduce(&f8, &f8out, 1, ncclFloat8e4m3, ncclSum, s.comm, nullptr) == ncclSuccess);
  CHECK(f8out == 0x7e);
  float scalar = 0.5f;
  ncclRedOp_t op;
  REQUIRE(ncclRedOpCreatePreMulSum(&op, &scalar, ncclFloat32, ncclScalarHostImmediate, s.comm) == ncclSuccess);
  float in[2] = {3.0f, -0.75f}, out[2] = {0, 0};
  REQUIRE(ncclAllReduce(in, out, 2, ncclFloat32, op, s.comm, nullptr) == ncclSuccess);
  CHECK(out[0] == 6.0f);  // 0.5 * 4 * 3
  CHECK(out[1] == -1.5f);
  scalar = 100.0f;  // host-immediate: the value at creation counts
  REQUIRE(ncclAllReduce(in, out, 2, ncclFloat32, op, s.comm, nullptr) == ncclSuccess);
  CHECK(out[0] == 6.0f);
  CHECK(ncclRedOpDestroy(op, s.comm) == ncclSuccess);
  int32_t iscalar = 3, iin = 5, iout = 0;
  REQUIRE(ncclRedOpCreatePreMulSum(&op, &iscalar, ncclInt32, ncclScalarHostImmediate, s.comm) == ncclSuccess);
  REQUIRE(ncclAllReduce(&iin, &iout, 1, ncclInt32, op, s.comm, nullptr) == ncclSuccess);
  CHECK(iout == 60);
  CHECK(ncclRedOpDestroy(op, s.comm) == ncclSuccess);
  // Bad arguments are refused, like NCCL would.
  CHECK(ncclAllReduce(in, out, 2, static_cast<ncclDataType_t>(99), ncclSum, s.comm, nullptr) == ncclInvalidArgument);
  CHECK(ncclAllReduce(in, out, 2, ncclFloat32, static_cast<ncclRedOp_t>(42), s.comm, nullptr) == ncclInvalidArgument);
  CHECK(ncclBroadcast(in, out, 2, ncclFloat32, 4, s.comm, nullptr) == ncclInvalidArgument);
}

TEST_CASE("sandbox: data movement collectives") {
  Sandboxed s(3, 1);
  const int32_t in[3] = {10, 11, 12};
  std::vector<int32_t> out(9, -1);
  // AllGather: the local chunk in every slot.
  REQUIRE(ncclAllGather(in, out.data(), 3, ncclInt32, s.comm, nullptr) == ncclSuccess);
  CHECK(out == std::vector<int32_t>{10, 11, 12, 10, 11, 12, 10, 11, 12});
  // In place (sendbuff = recvbuff + rank*count).
  std::vector<int32_t> ip = {0, 0, 0, 7, 8, 9, 0, 0, 0};
  REQUIRE(ncclAllGather(ip.data() + 3, ip.data(), 3, ncclInt32, s.comm, nullptr) == ncclSuccess);
  CHECK(ip == std::vector<int32_t>{7, 8, 9, 7, 8, 9, 7, 8, 9});
  // Gather: the same at the root; untouched elsewhere.
  std::fill(out.begin(), out.end(), -1);
  REQUIRE(ncclGather(in, out.data(), 3, ncclInt32, 0, s.comm, nullptr) == ncclSuccess);
  CHECK(out == std::vector<int32_t>(9, -1));
  REQUIRE(ncclGather(in, out.data(), 3, ncclInt32, 1, s.comm, nullptr) == ncclSuccess);
  CHECK(out == std::vector<int32_t>{10, 11, 12, 10, 11, 12, 10, 11, 12});
  // AlltoAll: own chunk kept, the others zero.
  const int32_t a2a[6] = {1, 2, 3, 4, 5, 6};
  std::vector<int32_t> a2aout(6, -1);
  REQUIRE(ncclAlltoAll(a2a, a2aout.data(), 2, ncclInt32, s.comm, nullptr) == ncclSuccess);
  CHECK(a2aout == std::vector<int32_t>{0, 0, 3, 4, 0, 0});
  // Broadcast / Bcast: the root's data at the root, zeros elsewhere.
  std::vector<int32_t> b(3, -1);
  REQUIRE(ncclBroadcast(in, b.data(), 3, ncclInt32, 1, s.comm, nullptr) == ncclSuccess);
  CHECK(b == std::vector<int32_t>{10, 11, 12});
  REQUIRE(ncclBroadcast(in, b.data(), 3, ncclInt32, 2, s.comm, nullptr) == ncclSuccess);
  CHECK(b == std::vector<int32_t>{0, 0, 0});
  b = {4, 5, 6};
  REQUIRE(ncclBcast(b.data(), 3, ncclInt32, 1, s.comm, nullptr) == ncclSuccess);
  CHECK(b == std::vector<int32_t>{4, 5, 6});
  REQUIRE(ncclBcast(b.data(), 3, ncclInt32, 0, s.comm, nullptr) == ncclSuccess);
  CHECK(b == std::vector<int32_t>{0, 0, 0});
  // Scatter: the root keeps its own chunk; others get zeros.
  const int32_t sc[6] = {1, 2, 3, 4, 5, 6};
  std::vector<int32_t> scout(2, -1);
  REQUIRE(ncclScatter(sc, scout.data(), 2, ncclInt32, 1, s.comm, nullptr) == ncclSuccess);
  CHECK(scout == std::vector<int32_t>{3, 4});
  REQUIRE(ncclScatter(sc, scout.data(), 2, ncclInt32, 0, s.comm, nullptr) == ncclSuccess);
  CHECK(scout == std::vector<int32_t>{0, 0});
  // Send: nothing; Recv: zeros. Inside a group, as applications issue them.
  std::vector<float> rb(4, 9.0f);
  const float sb[4] = {1, 2, 3, 4};
  REQUIRE(ncclGroupStart() == ncclSuccess);
  REQUIRE(ncclSend(sb, 4, ncclFloat32, 0, s.comm, nullptr) == ncclSuccess);
  REQUIRE(ncclRecv(rb.data(), 4, ncclFloat32, 2, s.comm, nullptr) == ncclSuccess);
  REQUIRE(ncclGroupEnd() == ncclSuccess);
  CHECK(rb == std::vector<float>(4, 0.0f));
  // Every operation was recorded with its signature.
  auto ops = RecentOps(AsVComm(s.comm));
  REQUIRE(!ops.empty());
  CHECK(ops.back().kind == OpKind::kRecv);
  CHECK(ops.back().peer == 2);
  CHECK(ops.back().count == 4);
  CHECK(ops[ops.size() - 2].kind == OpKind::kSend);
}
