// SPDX-License-Identifier: Apache-2.0
#include "sandbox.h"

#include <cstring>
#include <mutex>
#include <vector>

#include "base/cudart.h"
#include "base/log.h"
#include "core/binding.h"
#include "nccl_dtype.h"

namespace trainmover::shim {
namespace {

// out[i] = reduce(in[i]) with every one of n ranks contributing in[i]. In-place safe (element-wise).
void ReduceElements(const void* in, void* out, size_t count, ncclDataType_t t, const EmuRedOp& op, int n) {
  const bool scales = op.premul || op.op == ncclSum;
  if (!scales) {  // avg, max, min, prod of n equal values = the value
    if (in != out) memmove(out, in, count * common::DtypeSize(t));
    return;
  }
  if (common::DtypeIsFloat(t)) {
    const double s = op.premul ? common::LoadFloat(t, op.scalar, 0) : 1.0;
    for (size_t i = 0; i < count; ++i) {
      common::StoreFloat(t, out, i, s * static_cast<double>(n) * common::LoadFloat(t, in, i));
    }
  } else {
    const uint64_t s = op.premul ? common::LoadInt(t, op.scalar, 0) : 1;
    for (size_t i = 0; i < count; ++i)
      common::StoreInt(t, out, i, s * static_cast<uint64_t>(n) * common::LoadInt(t, in, i));
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
  const size_t es = common::DtypeSize(t);
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

namespace {

using base::Cudart;

// The CUDA runtime, when the application loaded one with the calls the sandbox needs (base/cudart.h: never
// loaded because of the shim).
const Cudart* LoadedCuda() {
  static const Cudart* rt = [] {
    const Cudart* r = base::CudartIfLoaded();
    if (!r || !r->cudaPointerGetAttributes || !r->cudaMemcpy || !r->cudaStreamSynchronize)
      return (const Cudart*)nullptr;
    TM_INFO(kLogSandbox, "sandbox: %s loaded, device buffers are staged through host memory", r->soname);
    return r;
  }();
  return rt;
}

bool IsDevice(const Cudart* rt, const void* p) { return base::IsDevicePointer(rt, p); }

// Bytes of the send and receive buffers of one operation, as NCCL's signatures define them.
void BufferBytes(OpKind k, size_t count, size_t es, int n, size_t* send, size_t* recv) {
  const size_t one = count * es, all = one * static_cast<size_t>(n);
  switch (k) {
    case OpKind::kAllGather:
      *send = one, *recv = all;
      return;
    case OpKind::kReduceScatter:
      *send = all, *recv = one;
      return;
    case OpKind::kAlltoAll:
      *send = all, *recv = all;
      return;
    case OpKind::kGather:
      *send = one, *recv = all;
      return;
    case OpKind::kScatter:
      *send = all, *recv = one;
      return;
    default:
      *send = one, *recv = one;
      return;
  }
}

}  // namespace

ncclResult_t EmulateOnStream(OpKind kind, const void* send, void* recv, size_t count, ncclDataType_t t,
                             const EmuRedOp& op, int root, int rank, int n, cudaStream_t stream) {
  const Cudart* rt = LoadedCuda();
  const bool dsend = IsDevice(rt, send), drecv = IsDevice(rt, recv), dscalar = op.premul && IsDevice(rt, op.scalar);
  if (!dsend && !drecv && !dscalar) return Emulate(kind, send, recv, count, t, op, root, rank, n);
  const size_t es = common::DtypeSize(t);
  if (es == 0) return Emulate(kind, send, recv, count, t, op, root, rank, n);  // the argument error, no copy
  size_t sbytes, rbytes;
  BufferBytes(kind, count, es, n, &sbytes, &rbytes);
  if (rt->cudaStreamSynchronize(stream) != cudaSuccess) {
    SetShimError("TrainMover sandbox: cudaStreamSynchronize failed");
    return ncclUnhandledCudaError;
  }
  std::vector<char> hsend, hrecv, hscalar;
  const void* s = send;
  void* r = recv;
  EmuRedOp hop = op;
  bool ok = true;
  if (dsend) {
    hsend.resize(sbytes);
    ok = ok && rt->cudaMemcpy(hsend.data(), send, sbytes, cudaMemcpyDefault) == cudaSuccess;
    s = hsend.data();
  }
  if (drecv) {
    hrecv.resize(rbytes);  // copied in too: operations that leave recvbuff untouched must keep it
    ok = ok && rt->cudaMemcpy(hrecv.data(), recv, rbytes, cudaMemcpyDefault) == cudaSuccess;
    r = hrecv.data();
    if (recv == send) s = r;  // in place
  }
  if (dscalar) {
    hscalar.resize(es);
    ok = ok && rt->cudaMemcpy(hscalar.data(), op.scalar, es, cudaMemcpyDefault) == cudaSuccess;
    hop.scalar = hscalar.data();
  }
  if (!ok) {
    SetShimError("TrainMover sandbox: cudaMemcpy to host failed");
    return ncclUnhandledCudaError;
  }
  ncclResult_t res = Emulate(kind, s, r, count, t, hop, root, rank, n);
  if (res == ncclSuccess && drecv && rt->cudaMemcpy(recv, hrecv.data(), rbytes, cudaMemcpyDefault) != cudaSuccess) {
    SetShimError("TrainMover sandbox: cudaMemcpy to device failed");
    return ncclUnhandledCudaError;
  }
  return res;
}

bool CopyFromBuffer(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  const Cudart* rt = LoadedCuda();
  if (!IsDevice(rt, src)) {
    std::memcpy(dst, src, bytes);
    return true;
  }
  return rt->cudaStreamSynchronize(stream) == cudaSuccess &&
         rt->cudaMemcpy(dst, src, bytes, cudaMemcpyDefault) == cudaSuccess;
}

bool CopyToBuffer(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
  const Cudart* rt = LoadedCuda();
  if (!IsDevice(rt, dst)) {
    std::memcpy(dst, src, bytes);
    return true;
  }
  return rt->cudaStreamSynchronize(stream) == cudaSuccess &&
         rt->cudaMemcpy(dst, src, bytes, cudaMemcpyDefault) == cudaSuccess;
}

}  // namespace trainmover::shim
