// SPDX-License-Identifier: Apache-2.0
// The exported NCCL surface of libtrainmover: every ncclX and its pncclX alias.
//
// Functions that take or return handles the application must not see (communicators, PreMulSum ops,
// registrations, windows) are written by hand below; every other function is a generated stub that
// initialises on first use, maps any ncclComm_t/ncclWindow_t argument and forwards. Handles that are not
// live shim handles (null, foreign, destroyed) are forwarded unchanged, so the real library answers
// exactly as it would without the shim.
#include <sys/random.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "base/log.h"
#include "core/binding.h"
#include "core/comm_timing.h"
#include "core/shim_state.h"
#include "core/state_internal.h"
#include "nccl_dtype.h"
#include "sandbox/sandbox.h"
#include "sandbox/tape.h"

#define TM_EXPORT __attribute__((visibility("default")))
#define TM_LIKELY(x) __builtin_expect(!!(x), 1)
#define TM_UNLIKELY(x) __builtin_expect(!!(x), 0)

namespace trainmover::shim {
namespace {

// ---- helpers shared by the hand-written functions and the generated stubs

// Written into out-parameters before a real call to tell "left untouched" from "set to null".
const ncclComm_t kUnsetComm = reinterpret_cast<ncclComm_t>(~uintptr_t{0});

template <typename R>
R FailValue(ncclResult_t code) {
  if constexpr (std::is_same_v<R, ncclResult_t>)
    return code;
  else if constexpr (std::is_void_v<R>)
    return;
  else if constexpr (std::is_same_v<R, const char*>)
    return ShimErrorOrNull();
  else
    return R{};
}

inline ncclResult_t Init() { return Ready() ? ncclSuccess : EnsureInit(); }

// The real library failed a call: its last-error text is the current one again.
inline ncclResult_t Noted(ncclResult_t r) {
  if (TM_UNLIKELY(r != ncclSuccess && r != ncclInProgress && g_shim_error_set)) ClearShimError();
  return r;
}

// Generated stubs: the VComm among the arguments (a stub takes at most one communicator), held for the call
// (RealUse), and every argument mapped to what the real library knows.
template <typename T>
inline VComm* VCommArg(T) {
  return nullptr;
}
inline VComm* VCommArg(ncclComm_t c) { return AsVComm(c); }
template <typename T>
inline T MapArg(const RealUse*, T a) {
  return a;
}
inline ncclComm_t MapArg(const RealUse* use, ncclComm_t c) { return use ? use->real() : c; }
inline ncclWindow_t MapArg(const RealUse*, ncclWindow_t w) {
  auto* h = reinterpret_cast<WinHandle*>(w);
  return (h && h->magic == WinHandle::kMagic) ? h->real : w;
}

ncclResult_t MissingFunction(const char* name) {
  SetShimError("TrainMover: the real NCCL library (%s) does not export %s", GetBindInfo().path.c_str(), name);
  TM_WARN(kLogBind, "%s", ShimErrorOrNull());
  return ncclInvalidUsage;
}

template <typename R, typename... P, typename... A>
R CallMapped(R (*const* fn)(P...), const RealUse* use, A... a) {
  if constexpr (std::is_void_v<R>) {
    (*fn)(MapArg(use, a)...);
  } else if constexpr (std::is_same_v<R, ncclResult_t>) {
    return Noted((*fn)(MapArg(use, a)...));
  } else {
    return (*fn)(MapArg(use, a)...);
  }
}

// Generated-stub body: initialise, hold the communicator, map, forward.
template <typename R, typename... P, typename... A>
R Forward(const char* name, R (*const* fn)(P...), A... a) {
  if (ncclResult_t e = Init(); TM_UNLIKELY(e != ncclSuccess)) return FailValue<R>(e);
  if (TM_UNLIKELY(*fn == nullptr)) return FailValue<R>(MissingFunction(name));
  VComm* v = nullptr;
  ((v = v ? v : VCommArg(a)), ...);
  if (!v) return CallMapped(fn, nullptr, a...);
  RealUse use(v);
  return CallMapped(fn, &use, a...);
}

// Forwards a call whose handle is not a live VComm, unchanged.
template <typename... P, typename... A>
ncclResult_t ForwardRaw(const char* name, ncclResult_t (*const* fn)(P...), A... a) {
  if (ncclResult_t e = Init(); TM_UNLIKELY(e != ncclSuccess)) return e;
  if (TM_UNLIKELY(*fn == nullptr)) return MissingFunction(name);
  return Noted((*fn)(a...));
}

#define TM_INIT_OR_RETURN()                                                  \
  do {                                                                       \
    if (ncclResult_t e_ = Init(); TM_UNLIKELY(e_ != ncclSuccess)) return e_; \
  } while (0)
#define TM_REQUIRE_REAL(name)                                                      \
  do {                                                                             \
    if (TM_UNLIKELY(g_real.name == nullptr)) return MissingFunction("nccl" #name); \
  } while (0)

ncclResult_t ShimInvalid(const char* fn, const char* what) {
  SetShimError("%s: %s", fn, what);
  TM_WARN(kLogComm, "%s: %s", fn, what);
  return ncclInvalidArgument;
}

void CopyConfig(const ncclConfig_t* c, Lineage* l) {
  if (!c) return;
  l->has_config = true;
  ncclConfig_t def = NCCL_CONFIG_INITIALIZER;
  l->config = def;
  const size_t n = std::min(c->size, sizeof(ncclConfig_t));  // never read past config->size
  memcpy(&l->config, c, n);
  auto covers = [&](size_t off) { return off + sizeof(void*) <= n; };
  if (covers(offsetof(ncclConfig_t, netName)) && c->netName) l->net_name = c->netName;
  if (covers(offsetof(ncclConfig_t, commName)) && c->commName) l->comm_name = c->commName;
  l->config.netName = nullptr;  // the copies are in net_name/comm_name
  l->config.commName = nullptr;
}

// Whether a communicator made with this lineage's config is blocking (NCCL: config.blocking, default 1; a
// Split/Shrink without a config inherits `inherited`, its parent's).
bool BlockingOf(const Lineage& l, bool inherited) {
  if (!l.has_config || l.config.blocking == NCCL_CONFIG_UNDEF_INT) return l.has_config || inherited;
  return l.config.blocking != 0;
}

// Asks a real communicator whose creation has completed what the lineage does not know yet (a Split/Shrink
// child's size and rank; the device of any but InitAll's). Before CreateVComm: its observer reports them.
void AskReal(ncclComm_t real, Lineage* l) {
  int n = -1, k = -1, d = -1;
  if ((l->nranks < 0 || l->rank < 0) && g_real.CommCount && g_real.CommUserRank &&
      g_real.CommCount(real, &n) == ncclSuccess && g_real.CommUserRank(real, &k) == ncclSuccess) {
    l->nranks = n;
    l->rank = k;
  }
  if (l->device < 0 && g_real.CommCuDevice && g_real.CommCuDevice(real, &d) == ncclSuccess) l->device = d;
}

// The same once a non-blocking creation completed (first ncclCommGetAsyncError that reports success).
void ResolveSize(VComm* v, ncclComm_t real) {
  Lineage l;
  {
    std::lock_guard<std::mutex> lock(v->mu);
    l.nranks = v->lineage.nranks;
    l.rank = v->lineage.rank;
    l.device = v->lineage.device;
  }
  AskReal(real, &l);
  {
    std::lock_guard<std::mutex> lock(v->mu);
    v->lineage.nranks = l.nranks;
    v->lineage.rank = l.rank;
    v->lineage.device = l.device;
  }
  CompleteVComm(v);  // the agent reports it now, with its size
}

// After a real creation call: wrap the handle it produced (if any) and give the application the virtual one.
ncclResult_t FinishCreate(ncclResult_t r, ncclComm_t* app, ncclComm_t local, Lineage l, const void* ids,
                          size_t ids_bytes) {
  if (app == nullptr || local == kUnsetComm) return Noted(r);
  if (local == nullptr) {
    *app = nullptr;
    return Noted(r);
  }
  if (r == ncclSuccess) AskReal(local, &l);
  VComm* v = CreateVComm(local, std::move(l), ids, ids_bytes, r == ncclSuccess);
  *app = AsHandle(v);
  return Noted(r);
}

// A sandboxed creation answers as the real one would: ncclInProgress when made non-blocking (it has completed by
// the first ncclCommGetAsyncError, which reports success).
ncclResult_t Created(const VComm* v) { return v->lineage.blocking ? ncclSuccess : ncclInProgress; }

ncclResult_t CreateSandboxed(const char* fn, ncclComm_t* app, Lineage l, const void* ids, size_t ids_bytes) {
  if (!app) return ShimInvalid(fn, "comm argument is NULL");
  if (l.nranks < 1) return ShimInvalid(fn, "invalid nranks");
  if (l.rank < 0 || l.rank >= l.nranks) return ShimInvalid(fn, "rank out of range");
  VComm* v = CreateVComm(nullptr, std::move(l), ids, ids_bytes);
  *app = AsHandle(v);
  return Created(v);
}

// ---- hot path

inline void Record(VComm* v, OpKind k, size_t count, ncclDataType_t dt, int op, int peer) {
  const uint64_t s = v->seq.load(std::memory_order_relaxed) + 1;
  OpSig& e = v->ring[(s - 1) & (kOpRing - 1)];
  e.seq = s;
  e.count = count;
  e.op = op;
  e.peer = peer;
  e.kind = k;
  e.datatype = static_cast<uint8_t>(dt);
  v->seq.store(s, std::memory_order_release);
}

inline RedOpSlot* LiveSlot(VComm* v, ncclRedOp_t op) {
  const unsigned idx = static_cast<unsigned>(op) - static_cast<unsigned>(kVirtualOpBase);
  if (TM_LIKELY(idx >= static_cast<unsigned>(kMaxOpsPerComm))) return nullptr;
  RedOpSlot* slots = v->ops.load(std::memory_order_acquire);
  if (!slots || !slots[idx].live.load(std::memory_order_relaxed)) return nullptr;
  return &slots[idx];
}

inline ncclRedOp_t MapOp(VComm* v, ncclRedOp_t op) {
  RedOpSlot* s = LiveSlot(v, op);
  return s ? static_cast<ncclRedOp_t>(s->real) : op;
}

ncclResult_t EmulateOp(VComm* v, OpKind kind, const void* send, void* recv, size_t count, ncclDataType_t dt,
                       ncclRedOp_t op, int root, cudaStream_t stream) {
  EmuRedOp e;
  e.op = op;
  if (RedOpSlot* s = LiveSlot(v, op)) {
    e.premul = true;
    e.scalar = s->residence == ncclScalarHostImmediate ? static_cast<const void*>(s->scalar) : s->scalar_ptr;
  }
  if (TapeServe(v, recv, stream)) return ncclSuccess;  // the leaver's recorded output (sandbox_tape.h)
  TM_TRACE(kLogSandbox, "emulating %s count %zu on vcomm #%llu", OpKindName(kind), count,
           (unsigned long long)v->lineage.index);
  return EmulateOnStream(kind, send, recv, count, dt, e, root, v->lineage.rank, v->lineage.nranks, stream);
}

}  // namespace
}  // namespace trainmover::shim

using namespace trainmover::shim;  // NOLINT: this file is the C boundary

extern "C" {

// ---------------------------------------------------------------------------------------------------
// Collectives and point-to-point: the hot path. No lock, no allocation, no system call.

#define TM_COLL_PROLOGUE(Name, kind, count, dt, op, peer, ...)                               \
  VComm* v = AsVComm(comm);                                                                  \
  if (TM_UNLIKELY(v == nullptr)) return ForwardRaw("nccl" #Name, &g_real.Name, __VA_ARGS__); \
  Record(v, kind, count, dt, op, peer);                                                      \
  NoteStream(v, stream);                                                                     \
  RealUse use_(v);                                                                           \
  ncclComm_t real = use_.real()

// The real call's result, its time inside NCCL counted (comm_timing.h); when the leaver records the sandbox
// tape (one iteration, sandbox_tape.h), the output too. Not armed: one predictable branch on a relaxed atomic
// load. A call that failed because failure recovery fenced the communicator meanwhile (a member died:
// docs/recovery.md) completes locally instead (`emulate`).
#define TM_COLL_RETURN(recv, call)                                                        \
  ncclResult_t res_;                                                                      \
  {                                                                                       \
    CommWaitScope wait_;                                                                  \
    res_ = Noted(call);                                                                   \
  }                                                                                       \
  if (TM_UNLIKELY(res_ != ncclSuccess) && OpFailedButFenced(v, real, res_)) return emulate(); \
  if (TM_UNLIKELY(TapeRecording()) && res_ == ncclSuccess) TapeRecordOp(v, recv, stream); \
  return res_

TM_EXPORT ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                                     ncclRedOp_t op, ncclComm_t comm, cudaStream_t stream) {
  TM_COLL_PROLOGUE(AllReduce, OpKind::kAllReduce, count, datatype, op, -1, sendbuff, recvbuff, count, datatype, op,
                   comm, stream);
  auto emulate = [&] { return EmulateOp(v, OpKind::kAllReduce, sendbuff, recvbuff, count, datatype, op, -1, stream); };
  if (TM_UNLIKELY(real == nullptr)) return emulate();
  TM_COLL_RETURN(recvbuff, g_real.AllReduce(sendbuff, recvbuff, count, datatype, MapOp(v, op), real, stream));
}

TM_EXPORT ncclResult_t ncclReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                                  ncclRedOp_t op, int root, ncclComm_t comm, cudaStream_t stream) {
  TM_COLL_PROLOGUE(Reduce, OpKind::kReduce, count, datatype, op, root, sendbuff, recvbuff, count, datatype, op, root,
                   comm, stream);
  auto emulate = [&] { return EmulateOp(v, OpKind::kReduce, sendbuff, recvbuff, count, datatype, op, root, stream); };
  if (TM_UNLIKELY(real == nullptr)) return emulate();
  TM_COLL_RETURN(recvbuff, g_real.Reduce(sendbuff, recvbuff, count, datatype, MapOp(v, op), root, real, stream));
}

TM_EXPORT ncclResult_t ncclReduceScatter(const void* sendbuff, void* recvbuff, size_t recvcount,
                                         ncclDataType_t datatype, ncclRedOp_t op, ncclComm_t comm,
                                         cudaStream_t stream) {
  TM_COLL_PROLOGUE(ReduceScatter, OpKind::kReduceScatter, recvcount, datatype, op, -1, sendbuff, recvbuff, recvcount,
                   datatype, op, comm, stream);
  auto emulate = [&] { return EmulateOp(v, OpKind::kReduceScatter, sendbuff, recvbuff, recvcount, datatype, op, -1, stream); };
  if (TM_UNLIKELY(real == nullptr)) return emulate();
  TM_COLL_RETURN(recvbuff, g_real.ReduceScatter(sendbuff, recvbuff, recvcount, datatype, MapOp(v, op), real, stream));
}

TM_EXPORT ncclResult_t ncclBcast(void* buff, size_t count, ncclDataType_t datatype, int root, ncclComm_t comm,
                                 cudaStream_t stream) {
  TM_COLL_PROLOGUE(Bcast, OpKind::kBcast, count, datatype, -1, root, buff, count, datatype, root, comm, stream);
  auto emulate = [&] { return EmulateOp(v, OpKind::kBcast, buff, buff, count, datatype, ncclSum, root, stream); };
  if (TM_UNLIKELY(real == nullptr)) return emulate();
  TM_COLL_RETURN(buff, g_real.Bcast(buff, count, datatype, root, real, stream));
}

TM_EXPORT ncclResult_t ncclBroadcast(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                                     int root, ncclComm_t comm, cudaStream_t stream) {
  TM_COLL_PROLOGUE(Broadcast, OpKind::kBroadcast, count, datatype, -1, root, sendbuff, recvbuff, count, datatype, root,
                   comm, stream);
  auto emulate = [&] { return EmulateOp(v, OpKind::kBroadcast, sendbuff, recvbuff, count, datatype, ncclSum, root, stream); };
  if (TM_UNLIKELY(real == nullptr)) return emulate();
  TM_COLL_RETURN(recvbuff, g_real.Broadcast(sendbuff, recvbuff, count, datatype, root, real, stream));
}

TM_EXPORT ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t sendcount, ncclDataType_t datatype,
                                     ncclComm_t comm, cudaStream_t stream) {
  TM_COLL_PROLOGUE(AllGather, OpKind::kAllGather, sendcount, datatype, -1, -1, sendbuff, recvbuff, sendcount, datatype,
                   comm, stream);
  auto emulate = [&] { return EmulateOp(v, OpKind::kAllGather, sendbuff, recvbuff, sendcount, datatype, ncclSum, -1, stream); };
  if (TM_UNLIKELY(real == nullptr)) return emulate();
  TM_COLL_RETURN(recvbuff, g_real.AllGather(sendbuff, recvbuff, sendcount, datatype, real, stream));
}

TM_EXPORT ncclResult_t ncclAlltoAll(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                                    ncclComm_t comm, cudaStream_t stream) {
  TM_COLL_PROLOGUE(AlltoAll, OpKind::kAlltoAll, count, datatype, -1, -1, sendbuff, recvbuff, count, datatype, comm,
                   stream);
  auto emulate = [&] { return EmulateOp(v, OpKind::kAlltoAll, sendbuff, recvbuff, count, datatype, ncclSum, -1, stream); };
  if (TM_UNLIKELY(real == nullptr)) return emulate();
  TM_COLL_RETURN(recvbuff, g_real.AlltoAll(sendbuff, recvbuff, count, datatype, real, stream));
}

TM_EXPORT ncclResult_t ncclGather(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, int root,
                                  ncclComm_t comm, cudaStream_t stream) {
  TM_COLL_PROLOGUE(Gather, OpKind::kGather, count, datatype, -1, root, sendbuff, recvbuff, count, datatype, root, comm,
                   stream);
  auto emulate = [&] { return EmulateOp(v, OpKind::kGather, sendbuff, recvbuff, count, datatype, ncclSum, root, stream); };
  if (TM_UNLIKELY(real == nullptr)) return emulate();
  TM_COLL_RETURN(recvbuff, g_real.Gather(sendbuff, recvbuff, count, datatype, root, real, stream));
}

TM_EXPORT ncclResult_t ncclScatter(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                                   int root, ncclComm_t comm, cudaStream_t stream) {
  TM_COLL_PROLOGUE(Scatter, OpKind::kScatter, count, datatype, -1, root, sendbuff, recvbuff, count, datatype, root,
                   comm, stream);
  auto emulate = [&] { return EmulateOp(v, OpKind::kScatter, sendbuff, recvbuff, count, datatype, ncclSum, root, stream); };
  if (TM_UNLIKELY(real == nullptr)) return emulate();
  TM_COLL_RETURN(recvbuff, g_real.Scatter(sendbuff, recvbuff, count, datatype, root, real, stream));
}

TM_EXPORT ncclResult_t ncclSend(const void* sendbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                                cudaStream_t stream) {
  TM_COLL_PROLOGUE(Send, OpKind::kSend, count, datatype, -1, peer, sendbuff, count, datatype, peer, comm, stream);
  auto emulate = [&] { return EmulateOp(v, OpKind::kSend, sendbuff, nullptr, count, datatype, ncclSum, peer, stream); };
  if (TM_UNLIKELY(real == nullptr)) return emulate();
  TM_COLL_RETURN(nullptr, g_real.Send(sendbuff, count, datatype, peer, real, stream));
}

TM_EXPORT ncclResult_t ncclRecv(void* recvbuff, size_t count, ncclDataType_t datatype, int peer, ncclComm_t comm,
                                cudaStream_t stream) {
  TM_COLL_PROLOGUE(Recv, OpKind::kRecv, count, datatype, -1, peer, recvbuff, count, datatype, peer, comm, stream);
  auto emulate = [&] { return EmulateOp(v, OpKind::kRecv, nullptr, recvbuff, count, datatype, ncclSum, peer, stream); };
  if (TM_UNLIKELY(real == nullptr)) return emulate();
  TM_COLL_RETURN(recvbuff, g_real.Recv(recvbuff, count, datatype, peer, real, stream));
}

// ---------------------------------------------------------------------------------------------------
// Creation

TM_EXPORT ncclResult_t ncclGetUniqueId(ncclUniqueId* uniqueId) {
  TM_INIT_OR_RETURN();
  if (ProcessSandboxed()) {
    if (!uniqueId) return ShimInvalid("ncclGetUniqueId", "uniqueId argument is NULL");
    size_t got = 0;
    while (got < sizeof(uniqueId->internal)) {
      ssize_t n = getrandom(uniqueId->internal + got, sizeof(uniqueId->internal) - got, 0);
      if (n <= 0) {
        SetShimError("ncclGetUniqueId: getrandom failed");
        return ncclSystemError;
      }
      got += static_cast<size_t>(n);
    }
    TM_INFO(kLogSandbox, "sandbox: locally generated unique id");
    return ncclSuccess;
  }
  TM_REQUIRE_REAL(GetUniqueId);
  return Noted(g_real.GetUniqueId(uniqueId));
}

TM_EXPORT ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank) {
  TM_INIT_OR_RETURN();
  Lineage l;
  l.kind = CommKind::kInitRank;
  l.nranks = nranks;
  l.rank = rank;
  l.id_hash = HashBytes(&commId, sizeof(commId));
  if (ProcessSandboxed()) return CreateSandboxed("ncclCommInitRank", comm, std::move(l), &commId, sizeof(commId));
  TM_REQUIRE_REAL(CommInitRank);
  ncclComm_t local = kUnsetComm;
  ncclResult_t r = g_real.CommInitRank(comm ? &local : nullptr, nranks, commId, rank);
  return FinishCreate(r, comm, local, std::move(l), &commId, sizeof(commId));
}

TM_EXPORT ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId commId, int rank,
                                              ncclConfig_t* config) {
  TM_INIT_OR_RETURN();
  Lineage l;
  l.kind = CommKind::kInitRankConfig;
  l.nranks = nranks;
  l.rank = rank;
  l.id_hash = HashBytes(&commId, sizeof(commId));
  CopyConfig(config, &l);
  l.blocking = BlockingOf(l, true);
  if (ProcessSandboxed()) return CreateSandboxed("ncclCommInitRankConfig", comm, std::move(l), &commId, sizeof(commId));
  TM_REQUIRE_REAL(CommInitRankConfig);
  ncclComm_t local = kUnsetComm;
  ncclResult_t r = g_real.CommInitRankConfig(comm ? &local : nullptr, nranks, commId, rank, config);
  return FinishCreate(r, comm, local, std::move(l), &commId, sizeof(commId));
}

TM_EXPORT ncclResult_t ncclCommInitRankScalable(ncclComm_t* newcomm, int nranks, int myrank, int nId,
                                                ncclUniqueId* commIds, ncclConfig_t* config) {
  TM_INIT_OR_RETURN();
  Lineage l;
  l.kind = CommKind::kInitRankScalable;
  l.nranks = nranks;
  l.rank = myrank;
  const size_t ids_bytes = (commIds && nId > 0) ? static_cast<size_t>(nId) * sizeof(ncclUniqueId) : 0;
  l.id_hash = HashBytes(commIds, ids_bytes);
  CopyConfig(config, &l);
  l.blocking = BlockingOf(l, true);
  if (ProcessSandboxed()) {
    if (ids_bytes == 0) return ShimInvalid("ncclCommInitRankScalable", "no unique ids");
    return CreateSandboxed("ncclCommInitRankScalable", newcomm, std::move(l), commIds, ids_bytes);
  }
  TM_REQUIRE_REAL(CommInitRankScalable);
  ncclComm_t local = kUnsetComm;
  ncclResult_t r = g_real.CommInitRankScalable(newcomm ? &local : nullptr, nranks, myrank, nId, commIds, config);
  return FinishCreate(r, newcomm, local, std::move(l), commIds, ids_bytes);
}

TM_EXPORT ncclResult_t ncclCommInitAll(ncclComm_t* comm, int ndev, const int* devlist) {
  TM_INIT_OR_RETURN();
  auto lineage_of = [&](int i) {
    Lineage l;
    l.kind = CommKind::kInitAll;
    l.nranks = ndev;
    l.rank = i;
    l.ndev = ndev;
    l.device = devlist ? devlist[i] : i;
    return l;
  };
  if (ProcessSandboxed()) {
    if (!comm) return ShimInvalid("ncclCommInitAll", "comm argument is NULL");
    if (ndev < 1) return ShimInvalid("ncclCommInitAll", "invalid ndev");
    for (int i = 0; i < ndev; ++i) comm[i] = AsHandle(CreateVComm(nullptr, lineage_of(i), nullptr, 0));
    return ncclSuccess;
  }
  TM_REQUIRE_REAL(CommInitAll);
  if (!comm || ndev < 1) return Noted(g_real.CommInitAll(comm, ndev, devlist));  // the real error, exactly
  std::vector<ncclComm_t> local(static_cast<size_t>(ndev), kUnsetComm);
  ncclResult_t r = g_real.CommInitAll(local.data(), ndev, devlist);
  for (int i = 0; i < ndev; ++i) {
    if (local[i] == kUnsetComm) continue;
    if (local[i] == nullptr) {
      comm[i] = nullptr;
      continue;
    }
    VComm* v = CreateVComm(local[i], lineage_of(i), nullptr, 0);
    comm[i] = AsHandle(v);
  }
  return Noted(r);
}

TM_EXPORT ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int key, ncclComm_t* newcomm, ncclConfig_t* config) {
  VComm* parent = AsVComm(comm);
  if (!parent) return ForwardRaw("ncclCommSplit", &g_real.CommSplit, comm, color, key, newcomm, config);
  Lineage l;
  l.kind = CommKind::kSplit;
  l.parent_index = parent->lineage.index;
  l.parent_key = parent->comm_key;
  l.color = color;
  l.key = key;
  l.nranks = -1;
  l.rank = -1;
  CopyConfig(config, &l);
  l.blocking = BlockingOf(l, parent->lineage.blocking);
  RealUse use(parent);
  ncclComm_t preal = use.real();
  if (preal == nullptr) {
    // Sandbox: the child's size and rank come from the replaced rank's table (CreateVComm); without one, as if
    // every rank chose this rank's color and key (the parent's size, same rank).
    if (!newcomm) return ShimInvalid("ncclCommSplit", "newcomm argument is NULL");
    {
      std::lock_guard<std::mutex> lock(parent->mu);
      l.child_index = parent->children++;
      l.nranks = parent->lineage.nranks;
      l.rank = parent->lineage.rank;
      l.device = parent->lineage.device;
    }
    if (color == NCCL_SPLIT_NOCOLOR) {
      *newcomm = nullptr;
      return ncclSuccess;
    }
    VComm* v = CreateVComm(nullptr, std::move(l), nullptr, 0);
    *newcomm = AsHandle(v);
    return Created(v);
  }
  TM_REQUIRE_REAL(CommSplit);
  ncclComm_t local = kUnsetComm;
  // NCCL allows one thread at a time per communicator, so the child count needs no lock across the call.
  ncclResult_t r = g_real.CommSplit(preal, color, key, newcomm ? &local : nullptr, config);
  if (r == ncclSuccess || r == ncclInProgress) {
    std::lock_guard<std::mutex> lock(parent->mu);
    l.child_index = parent->children++;
  }
  return FinishCreate(r, newcomm, local, std::move(l), nullptr, 0);
}

TM_EXPORT ncclResult_t ncclCommShrink(ncclComm_t comm, int* excludeRanksList, int excludeRanksCount,
                                      ncclComm_t* newcomm, ncclConfig_t* config, int shrinkFlags) {
  VComm* parent = AsVComm(comm);
  if (!parent) {
    return ForwardRaw("ncclCommShrink", &g_real.CommShrink, comm, excludeRanksList, excludeRanksCount, newcomm, config,
                      shrinkFlags);
  }
  Lineage l;
  l.kind = CommKind::kShrink;
  l.parent_index = parent->lineage.index;
  l.parent_key = parent->comm_key;
  if (excludeRanksList && excludeRanksCount > 0)
    l.excluded.assign(excludeRanksList, excludeRanksList + excludeRanksCount);
  l.shrink_flags = shrinkFlags;
  l.nranks = -1;
  l.rank = -1;
  CopyConfig(config, &l);
  l.blocking = BlockingOf(l, parent->lineage.blocking);
  RealUse use(parent);
  ncclComm_t preal = use.real();
  if (preal == nullptr) {
    if (!newcomm) return ShimInvalid("ncclCommShrink", "newcomm argument is NULL");
    {
      std::lock_guard<std::mutex> lock(parent->mu);
      const int n = parent->lineage.nranks, me = parent->lineage.rank;
      int below = 0, excluded = 0;
      for (int r = 0; r < n; ++r) {
        if (std::find(l.excluded.begin(), l.excluded.end(), r) == l.excluded.end()) continue;
        if (r == me) return ShimInvalid("ncclCommShrink", "the calling rank is in the exclude list");
        ++excluded;
        if (r < me) ++below;
      }
      l.child_index = parent->children++;
      l.nranks = n - excluded;
      l.rank = me - below;
      l.device = parent->lineage.device;
    }
    VComm* v = CreateVComm(nullptr, std::move(l), nullptr, 0);
    *newcomm = AsHandle(v);
    return Created(v);
  }
  TM_REQUIRE_REAL(CommShrink);
  ncclComm_t local = kUnsetComm;
  ncclResult_t r =
      g_real.CommShrink(preal, excludeRanksList, excludeRanksCount, newcomm ? &local : nullptr, config, shrinkFlags);
  if (r == ncclSuccess || r == ncclInProgress) {
    std::lock_guard<std::mutex> lock(parent->mu);
    l.child_index = parent->children++;
  }
  return FinishCreate(r, newcomm, local, std::move(l), nullptr, 0);
}

// ---------------------------------------------------------------------------------------------------
// Teardown and queries

TM_EXPORT ncclResult_t ncclCommFinalize(ncclComm_t comm) {
  VComm* v = AsVComm(comm);
  if (!v) return ForwardRaw("ncclCommFinalize", &g_real.CommFinalize, comm);
  RealUse use(v);
  ncclComm_t real = use.real();
  if (!real) return ncclSuccess;
  TM_REQUIRE_REAL(CommFinalize);
  return Noted(g_real.CommFinalize(real));
}

static ncclResult_t DestroyOrAbort(ncclComm_t comm, bool abort_it) {
  VComm* v = AsVComm(comm);
  auto fn = abort_it ? &g_real.CommAbort : &g_real.CommDestroy;
  const char* name = abort_it ? "ncclCommAbort" : "ncclCommDestroy";
  if (!v) return ForwardRaw(name, fn, comm);
  if (TM_UNLIKELY(*fn == nullptr)) return MissingFunction(name);
  ncclComm_t real = v->real.exchange(nullptr, std::memory_order_seq_cst);
  WaitForPoll(v);  // failure recovery's background poll may be reading it
  RetireVComm(v);
  return real ? Noted((*fn)(real)) : ncclSuccess;
}

TM_EXPORT ncclResult_t ncclCommDestroy(ncclComm_t comm) { return DestroyOrAbort(comm, false); }
TM_EXPORT ncclResult_t ncclCommAbort(ncclComm_t comm) { return DestroyOrAbort(comm, true); }

TM_EXPORT ncclResult_t ncclCommGetAsyncError(ncclComm_t comm, ncclResult_t* asyncError) {
  VComm* v = AsVComm(comm);
  if (!v) return ForwardRaw("ncclCommGetAsyncError", &g_real.CommGetAsyncError, comm, asyncError);
  RealUse use(v);
  ncclComm_t real = use.real();
  if (!real || ProcessLeaving()) {
    if (!asyncError) return ShimInvalid("ncclCommGetAsyncError", "asyncError argument is NULL");
    *asyncError = ncclSuccess;
    return ncclSuccess;
  }
  TM_REQUIRE_REAL(CommGetAsyncError);
  ncclResult_t r = g_real.CommGetAsyncError(real, asyncError);
  // With a replacement staged, the old communicator is on its way out: the leaver exits at the switch, possibly
  // before this process's application thread has switched, and its departure is no error of this communicator.
  // Fenced by failure recovery (a member died): the program sees no error either (docs/recovery.md).
  if (r == ncclSuccess && asyncError && *asyncError != ncclSuccess && *asyncError != ncclInProgress &&
      (v->next.load(std::memory_order_acquire) != nullptr || OpFailedButFenced(v, real, *asyncError))) {
    *asyncError = ncclSuccess;
  }
  if (r == ncclSuccess && asyncError && *asyncError == ncclSuccess && !v->complete.load(std::memory_order_acquire))
    ResolveSize(v, real);
  return Noted(r);
}

// CommCount / CommUserRank / CommCuDevice: in the sandbox, answered from the lineage.
#define TM_COMM_QUERY(Name, field_expr)                                      \
  TM_EXPORT ncclResult_t nccl##Name(const ncclComm_t comm, int* out) {       \
    VComm* v = AsVComm(comm);                                                \
    if (!v) return ForwardRaw("nccl" #Name, &g_real.Name, comm, out);        \
    RealUse use(v);                                                          \
    ncclComm_t real = use.real();                                            \
    if (!real) {                                                             \
      if (!out) return ShimInvalid("nccl" #Name, "output argument is NULL"); \
      *out = (field_expr);                                                   \
      return ncclSuccess;                                                    \
    }                                                                        \
    TM_REQUIRE_REAL(Name);                                                   \
    return Noted(g_real.Name(real, out));                                    \
  }
TM_COMM_QUERY(CommCount, v->lineage.nranks)
TM_COMM_QUERY(CommUserRank, v->lineage.rank)
TM_COMM_QUERY(CommCuDevice, v->lineage.device < 0 ? 0 : v->lineage.device)
#undef TM_COMM_QUERY

TM_EXPORT const char* ncclGetErrorString(ncclResult_t result) {
  if (Init() == ncclSuccess && g_real.GetErrorString) return g_real.GetErrorString(result);
  switch (result) {  // no real library: NCCL's own wording
    case ncclSuccess:
      return "no error";
    case ncclUnhandledCudaError:
      return "unhandled cuda error (run with NCCL_DEBUG=INFO for details)";
    case ncclSystemError:
      return "unhandled system error (run with NCCL_DEBUG=INFO for details)";
    case ncclInternalError:
      return "internal error - please report this issue to the NCCL developers";
    case ncclInvalidArgument:
      return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case ncclInvalidUsage:
      return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    case ncclRemoteError:
      return "remote process exited or there was a network error";
    case ncclInProgress:
      return "NCCL operation in progress";
    default:
      return "unknown result code";
  }
}

TM_EXPORT const char* ncclGetLastError(ncclComm_t comm) {
  Init();
  if (const char* e = ShimErrorOrNull()) return e;
  if (!g_real.GetLastError) return "";
  VComm* v = AsVComm(comm);
  if (!v) return g_real.GetLastError(comm);
  RealUse use(v);
  return g_real.GetLastError(use.real());
}

// ---------------------------------------------------------------------------------------------------
// Objects tied to a communicator: registrations, windows, PreMulSum ops

TM_EXPORT ncclResult_t ncclCommRegister(const ncclComm_t comm, void* buff, size_t size, void** handle) {
  VComm* v = AsVComm(comm);
  if (!v) return ForwardRaw("ncclCommRegister", &g_real.CommRegister, comm, buff, size, handle);
  RealUse use(v);
  ncclComm_t real = use.real();
  void* const kUnset = reinterpret_cast<void*>(~uintptr_t{0});
  void* local = kUnset;
  ncclResult_t r = ncclSuccess;
  if (real) {
    TM_REQUIRE_REAL(CommRegister);
    r = g_real.CommRegister(real, buff, size, handle ? &local : nullptr);
  } else {
    if (!handle) return ShimInvalid("ncclCommRegister", "handle argument is NULL");
    local = nullptr;
  }
  if (!handle || local == kUnset) return Noted(r);
  if (local == nullptr && real) {
    *handle = nullptr;
    return Noted(r);
  }
  RegHandle* h = AcquireReg();
  h->vcomm = v;
  h->buff = buff;
  h->size = size;
  h->real = local;
  h->magic = RegHandle::kMagic;
  {
    std::lock_guard<std::mutex> lock(v->mu);
    v->regs.push_back(h);
  }
  *handle = h;
  return Noted(r);
}

TM_EXPORT ncclResult_t ncclCommDeregister(const ncclComm_t comm, void* handle) {
  VComm* v = AsVComm(comm);
  if (!v) return ForwardRaw("ncclCommDeregister", &g_real.CommDeregister, comm, handle);
  RealUse use(v);
  ncclComm_t real = use.real();
  auto* h = static_cast<RegHandle*>(handle);
  const bool ours = h && h->magic == RegHandle::kMagic && h->vcomm == v;
  if (!ours) return ForwardRaw("ncclCommDeregister", &g_real.CommDeregister, real, handle);
  ncclResult_t r = ncclSuccess;
  if (real && h->real) {
    TM_REQUIRE_REAL(CommDeregister);
    r = g_real.CommDeregister(real, h->real);
    if (r != ncclSuccess) return Noted(r);
  }
  {
    std::lock_guard<std::mutex> lock(v->mu);
    v->regs.erase(std::remove(v->regs.begin(), v->regs.end(), h), v->regs.end());
  }
  ReleaseReg(h);
  return r;
}

TM_EXPORT ncclResult_t ncclCommWindowRegister(ncclComm_t comm, void* buff, size_t size, ncclWindow_t* win,
                                              int winFlags) {
  VComm* v = AsVComm(comm);
  if (!v) return ForwardRaw("ncclCommWindowRegister", &g_real.CommWindowRegister, comm, buff, size, win, winFlags);
  RealUse use(v);
  ncclComm_t real = use.real();
  const ncclWindow_t kUnset = reinterpret_cast<ncclWindow_t>(~uintptr_t{0});
  ncclWindow_t local = kUnset;
  ncclResult_t r = ncclSuccess;
  if (real) {
    TM_REQUIRE_REAL(CommWindowRegister);
    r = g_real.CommWindowRegister(real, buff, size, win ? &local : nullptr, winFlags);
  } else {
    if (!win) return ShimInvalid("ncclCommWindowRegister", "win argument is NULL");
    local = nullptr;
  }
  if (!win || local == kUnset) return Noted(r);
  if (local == nullptr && real) {
    *win = nullptr;
    return Noted(r);
  }
  WinHandle* h = AcquireWin();
  h->vcomm = v;
  h->buff = buff;
  h->size = size;
  h->flags = winFlags;
  h->real = local;
  h->magic = WinHandle::kMagic;
  {
    std::lock_guard<std::mutex> lock(v->mu);
    v->wins.push_back(h);
  }
  *win = reinterpret_cast<ncclWindow_t>(h);
  return Noted(r);
}

TM_EXPORT ncclResult_t ncclCommWindowDeregister(ncclComm_t comm, ncclWindow_t win) {
  VComm* v = AsVComm(comm);
  if (!v) return ForwardRaw("ncclCommWindowDeregister", &g_real.CommWindowDeregister, comm, win);
  RealUse use(v);
  ncclComm_t real = use.real();
  auto* h = reinterpret_cast<WinHandle*>(win);
  const bool ours = h && h->magic == WinHandle::kMagic && h->vcomm == v;
  if (!ours) return ForwardRaw("ncclCommWindowDeregister", &g_real.CommWindowDeregister, real, win);
  ncclResult_t r = ncclSuccess;
  if (real && h->real) {
    TM_REQUIRE_REAL(CommWindowDeregister);
    r = g_real.CommWindowDeregister(real, h->real);
    if (r != ncclSuccess) return Noted(r);
  }
  {
    std::lock_guard<std::mutex> lock(v->mu);
    v->wins.erase(std::remove(v->wins.begin(), v->wins.end(), h), v->wins.end());
  }
  ReleaseWin(h);
  return r;
}

TM_EXPORT ncclResult_t ncclRedOpCreatePreMulSum(ncclRedOp_t* op, void* scalar, ncclDataType_t datatype,
                                                ncclScalarResidence_t residence, ncclComm_t comm) {
  VComm* v = AsVComm(comm);
  if (!v)
    return ForwardRaw("ncclRedOpCreatePreMulSum", &g_real.RedOpCreatePreMulSum, op, scalar, datatype, residence, comm);
  RealUse use(v);
  ncclComm_t real = use.real();
  ncclRedOp_t real_op = ncclSum;
  if (real) {
    TM_REQUIRE_REAL(RedOpCreatePreMulSum);
    ncclResult_t r = g_real.RedOpCreatePreMulSum(op ? &real_op : nullptr, scalar, datatype, residence, real);
    if (r != ncclSuccess || !op) return Noted(r);
  } else {
    if (!op || !scalar) return ShimInvalid("ncclRedOpCreatePreMulSum", "op or scalar argument is NULL");
    if (trainmover::common::DtypeSize(datatype) == 0)
      return ShimInvalid("ncclRedOpCreatePreMulSum", "invalid datatype");
  }
  std::lock_guard<std::mutex> lock(v->mu);
  RedOpSlot* slots = v->ops.load(std::memory_order_acquire);
  if (!slots) {
    slots = new RedOpSlot[kMaxOpsPerComm];  // never freed (the hot path reads it without a lock)
    v->ops.store(slots, std::memory_order_release);
  }
  int idx = 0;
  while (idx < kMaxOpsPerComm && slots[idx].live.load(std::memory_order_relaxed)) ++idx;
  if (idx == kMaxOpsPerComm) {
    if (real && g_real.RedOpDestroy) (void)g_real.RedOpDestroy(real_op, real);
    SetShimError("ncclRedOpCreatePreMulSum: more than %d live PreMulSum ops on one communicator", kMaxOpsPerComm);
    return ncclInternalError;
  }
  RedOpSlot& s = slots[idx];
  s.real = real ? static_cast<int>(real_op) : -1;
  s.next = -1;
  s.datatype = datatype;
  s.residence = residence;
  s.scalar_ptr = scalar;
  memset(s.scalar, 0, sizeof(s.scalar));
  if (residence == ncclScalarHostImmediate && scalar) memcpy(s.scalar, scalar, trainmover::common::DtypeSize(datatype));
  s.live.store(1, std::memory_order_release);
  *op = static_cast<ncclRedOp_t>(kVirtualOpBase + idx);
  return ncclSuccess;
}

TM_EXPORT ncclResult_t ncclRedOpDestroy(ncclRedOp_t op, ncclComm_t comm) {
  VComm* v = AsVComm(comm);
  if (!v) return ForwardRaw("ncclRedOpDestroy", &g_real.RedOpDestroy, op, comm);
  RealUse use(v);
  ncclComm_t real = use.real();
  RedOpSlot* s = LiveSlot(v, op);
  if (!s) return ForwardRaw("ncclRedOpDestroy", &g_real.RedOpDestroy, op, real);
  if (real && s->real >= 0) {
    TM_REQUIRE_REAL(RedOpDestroy);
    ncclResult_t r = g_real.RedOpDestroy(static_cast<ncclRedOp_t>(s->real), real);
    if (r != ncclSuccess) return Noted(r);
  }
  std::lock_guard<std::mutex> lock(v->mu);
  s->live.store(0, std::memory_order_release);
  s->real = -1;
  return ncclSuccess;
}

// Groups: forwarded as the generated stubs do; the depth is counted per thread for the tape recorder (outputs
// of grouped operations exist only after the outermost ncclGroupEnd).
TM_EXPORT ncclResult_t ncclGroupStart() {
  ncclResult_t r = Forward("ncclGroupStart", &g_real.GroupStart);
  if (r == ncclSuccess) TapeGroupStart();
  return r;
}

TM_EXPORT ncclResult_t ncclGroupEnd() {
  ncclResult_t r;
  {
    CommWaitScope wait;  // grouped operations run here
    r = Forward("ncclGroupEnd", &g_real.GroupEnd);
  }
  if (TM_UNLIKELY(r != ncclSuccess && r != ncclInProgress) && OpFailedButFenced(nullptr, nullptr, r)) r = ncclSuccess;
  TapeGroupEnd(r == ncclSuccess);
  return r;
}

TM_EXPORT ncclResult_t ncclGroupSimulateEnd(ncclSimInfo_t* simInfo) {
  ncclResult_t r = Forward("ncclGroupSimulateEnd", &g_real.GroupSimulateEnd, simInfo);
  TapeGroupEnd(r == ncclSuccess && simInfo == nullptr);  // with simInfo the group is ended without running
  return r;
}

}  // extern "C"

// ---------------------------------------------------------------------------------------------------
// Generated stubs for every function not written above, and the pncclX aliases of all of them.

// TM_HAND_<name> marks the functions written by hand (the probe expands to two arguments).
#define TM_PROBE ~, 1
#define TM_HAND_AllReduce TM_PROBE
#define TM_HAND_Reduce TM_PROBE
#define TM_HAND_ReduceScatter TM_PROBE
#define TM_HAND_Bcast TM_PROBE
#define TM_HAND_Broadcast TM_PROBE
#define TM_HAND_AllGather TM_PROBE
#define TM_HAND_AlltoAll TM_PROBE
#define TM_HAND_Gather TM_PROBE
#define TM_HAND_Scatter TM_PROBE
#define TM_HAND_Send TM_PROBE
#define TM_HAND_Recv TM_PROBE
#define TM_HAND_GetUniqueId TM_PROBE
#define TM_HAND_CommInitRank TM_PROBE
#define TM_HAND_CommInitRankConfig TM_PROBE
#define TM_HAND_CommInitRankScalable TM_PROBE
#define TM_HAND_CommInitAll TM_PROBE
#define TM_HAND_CommSplit TM_PROBE
#define TM_HAND_CommShrink TM_PROBE
#define TM_HAND_CommFinalize TM_PROBE
#define TM_HAND_CommDestroy TM_PROBE
#define TM_HAND_CommAbort TM_PROBE
#define TM_HAND_CommGetAsyncError TM_PROBE
#define TM_HAND_CommCount TM_PROBE
#define TM_HAND_CommUserRank TM_PROBE
#define TM_HAND_CommCuDevice TM_PROBE
#define TM_HAND_GetErrorString TM_PROBE
#define TM_HAND_GetLastError TM_PROBE
#define TM_HAND_CommRegister TM_PROBE
#define TM_HAND_CommDeregister TM_PROBE
#define TM_HAND_CommWindowRegister TM_PROBE
#define TM_HAND_CommWindowDeregister TM_PROBE
#define TM_HAND_RedOpCreatePreMulSum TM_PROBE
#define TM_HAND_RedOpDestroy TM_PROBE
#define TM_HAND_GroupStart TM_PROBE
#define TM_HAND_GroupEnd TM_PROBE
#define TM_HAND_GroupSimulateEnd TM_PROBE

#define TM_PROBE_ARG2(x, n, ...) n
#define TM_PROBE_TEST(...) TM_PROBE_ARG2(__VA_ARGS__, 0, )
#define TM_IS_HAND(name) TM_PROBE_TEST(TM_HAND_##name)
#define TM_CAT(a, b) TM_CAT_I(a, b)
#define TM_CAT_I(a, b) a##b
#define TM_IIF(c) TM_CAT(TM_IIF_, c)
#define TM_IIF_0(t, f) f
#define TM_IIF_1(t, f) t

#define TM_SKIP(ret, name, params, args)
#define TM_GENERIC(ret, name, params, args)                                                     \
  extern "C" TM_EXPORT ret nccl##name params {                                                  \
    auto call_ = [&](auto... a) -> ret {                                                        \
      return ::trainmover::shim::Forward("nccl" #name, &::trainmover::shim::g_real.name, a...); \
    };                                                                                          \
    return call_ args;                                                                          \
  }
#define TM_STUB(ret, name, params, args) TM_IIF(TM_IS_HAND(name))(TM_SKIP, TM_GENERIC)(ret, name, params, args)
TM_NCCL_API(TM_STUB)
TM_NCCL_API_NO_PNCCL(TM_STUB)

#define TM_ALIAS(ret, name, params, args) \
  extern "C" TM_EXPORT ret pnccl##name params __attribute__((alias("nccl" #name)));
TM_NCCL_API(TM_ALIAS)
