// SPDX-License-Identifier: Apache-2.0
#include "sandbox.h"

#include <cstring>
#include <vector>

#include "binding.h"
#include "dtype.h"
#include "log.h"

namespace trainmover::shim {
namespace {

// out[i] = reduce(in[i]) with every one of n ranks contributing in[i]. In-place safe (element-wise).
void ReduceElements(const void* in, void* out, size_t count, ncclDataType_t t, const EmuRedOp& op, int n) {
  const bool scales = op.premul || op.op == ncclSum;
  if (!scales) {  // avg, max, min, prod of n equal values = the value
    if (in != out) memmove(out, in, count * DtypeSize(t));
    return;
  }
  if (DtypeIsFloat(t)) {
    const double s = op.premul ? LoadFloat(t, op.scalar, 0) : 1.0;
    for (size_t i = 0; i < count; ++i) {
      StoreFloat(t, out, i, s * static_cast<double>(n) * LoadFloat(t, in, i));
    }
  } else {
    const uint64_t s = op.premul ? LoadInt(t, op.scalar, 0) : 1;
    for (size_t i = 0; i < count; ++i) StoreInt(t, out, i, s * static_cast<uint64_t>(n) * LoadInt(t, in, i));
  }
}

ncclResult_t Invalid(const char* what) {
  SetShimError("TrainMover sandbox: %s", what);
  TM_WARN(kLogSandbox, "sandbox: %s", what);
  return ncclInvalidArgument;
}

}  // namespace

ncclResult_t Emulate(OpKind kind, const void* send, void* recv, size_t count, ncclDataType_t t, const EmuRedOp& op,
                     int root, int rank, int n) {
  const size_t es = DtypeSize(t);
  if (es == 0) return Invalid("invalid datatype");
  const bool reduces = kind == OpKind::kAllReduce || kind == OpKind::kReduce || kind == OpKind::kReduceScatter;
  if (reduces && !op.premul && (op.op < ncclSum || op.op > ncclAvg)) return Invalid("invalid reduction operation");
  const bool rooted = kind == OpKind::kReduce || kind == OpKind::kBroadcast || kind == OpKind::kBcast ||
                      kind == OpKind::kGather || kind == OpKind::kScatter || kind == OpKind::kSend ||
                      kind == OpKind::kRecv;
  if (rooted && (root < 0 || root >= n)) return Invalid("root or peer out of range");
  if (count == 0) return ncclSuccess;
  const size_t bytes = count * es;
  const bool at_root = rank == root;
  auto need = [&](const void* p) { return p != nullptr; };
  switch (kind) {
    case OpKind::kAllReduce:
      if (!need(send) || !need(recv)) return Invalid("null buffer");
      ReduceElements(send, recv, count, t, op, n);
      return ncclSuccess;
    case OpKind::kReduce:
      if (!need(send) || (at_root && !need(recv))) return Invalid("null buffer");
      if (at_root) ReduceElements(send, recv, count, t, op, n);
      return ncclSuccess;
    case OpKind::kReduceScatter:
      if (!need(send) || !need(recv)) return Invalid("null buffer");
      ReduceElements(static_cast<const char*>(send) + rank * bytes, recv, count, t, op, n);
      return ncclSuccess;
    case OpKind::kAllGather: {
      if (!need(send) || !need(recv)) return Invalid("null buffer");
      std::vector<char> chunk(static_cast<const char*>(send), static_cast<const char*>(send) + bytes);
      for (int r = 0; r < n; ++r) memcpy(static_cast<char*>(recv) + r * bytes, chunk.data(), bytes);
      return ncclSuccess;
    }
    case OpKind::kGather: {
      if (!need(send) || (at_root && !need(recv))) return Invalid("null buffer");
      if (!at_root) return ncclSuccess;
      std::vector<char> chunk(static_cast<const char*>(send), static_cast<const char*>(send) + bytes);
      for (int r = 0; r < n; ++r) memcpy(static_cast<char*>(recv) + r * bytes, chunk.data(), bytes);
      return ncclSuccess;
    }
    case OpKind::kAlltoAll: {
      if (!need(send) || !need(recv)) return Invalid("null buffer");
      char* out = static_cast<char*>(recv);
      memmove(out + rank * bytes, static_cast<const char*>(send) + rank * bytes, bytes);
      for (int r = 0; r < n; ++r) {
        if (r != rank) memset(out + r * bytes, 0, bytes);
      }
      return ncclSuccess;
    }
    case OpKind::kBroadcast:
    case OpKind::kBcast:
      if (!need(recv) || (at_root && !need(send))) return Invalid("null buffer");
      if (at_root) {
        if (send != recv) memmove(recv, send, bytes);
      } else {
        memset(recv, 0, bytes);
      }
      return ncclSuccess;
    case OpKind::kScatter:
      if (!need(recv) || (at_root && !need(send))) return Invalid("null buffer");
      if (at_root)
        memmove(recv, static_cast<const char*>(send) + rank * bytes, bytes);
      else
        memset(recv, 0, bytes);
      return ncclSuccess;
    case OpKind::kRecv:
      if (!need(recv)) return Invalid("null buffer");
      memset(recv, 0, bytes);
      return ncclSuccess;
    case OpKind::kSend:
      if (!need(send)) return Invalid("null buffer");
      return ncclSuccess;
  }
  return Invalid("unknown operation");
}

}  // namespace trainmover::shim
