// SPDX-License-Identifier: Apache-2.0
// nullnccl: every NCCL 2.28 function, doing nothing and succeeding. Communicator creation returns a small
// dummy object (so CommCount/CommUserRank answer); collectives return ncclSuccess without touching
// buffers. It is the "does nothing" backend that isolates the shim's own cost in perf/shim_overhead.
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "nccl_api.h"

#define NN_EXPORT extern "C" __attribute__((visibility("default")))

namespace {
struct NullComm {
  int nranks, rank;
};
ncclComm_t Make(int nranks, int rank) {
  auto* c = static_cast<NullComm*>(malloc(sizeof(NullComm)));
  c->nranks = nranks;
  c->rank = rank;
  return reinterpret_cast<ncclComm_t>(c);
}
NullComm* Of(ncclComm_t c) { return reinterpret_cast<NullComm*>(c); }
template <typename R>
R Zero() {
  if constexpr (std::is_same_v<R, ncclResult_t>)
    return ncclSuccess;
  else if constexpr (!std::is_void_v<R>)
    return R{};
}
}  // namespace

// Functions with behaviour.
NN_EXPORT ncclResult_t ncclGetVersion(int* version) {
  if (version) *version = NCCL_VERSION_CODE;
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id) memset(id, 0, sizeof(*id));
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId, int rank) {
  *comm = Make(nranks, rank);
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommInitRankConfig(ncclComm_t* comm, int nranks, ncclUniqueId, int rank, ncclConfig_t*) {
  *comm = Make(nranks, rank);
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommInitRankScalable(ncclComm_t* comm, int nranks, int rank, int, ncclUniqueId*,
                                                ncclConfig_t*) {
  *comm = Make(nranks, rank);
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommInitAll(ncclComm_t* comm, int ndev, const int*) {
  for (int i = 0; i < ndev; ++i) comm[i] = Make(ndev, i);
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommSplit(ncclComm_t comm, int color, int, ncclComm_t* newcomm, ncclConfig_t*) {
  *newcomm = color == NCCL_SPLIT_NOCOLOR ? nullptr : Make(Of(comm)->nranks, Of(comm)->rank);
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommShrink(ncclComm_t comm, int*, int count, ncclComm_t* newcomm, ncclConfig_t*, int) {
  *newcomm = Make(Of(comm)->nranks - count, 0);
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  free(comm);
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommAbort(ncclComm_t comm) {
  free(comm);
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommCount(const ncclComm_t comm, int* count) {
  *count = Of(comm)->nranks;
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommUserRank(const ncclComm_t comm, int* rank) {
  *rank = Of(comm)->rank;
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommCuDevice(const ncclComm_t, int* device) {
  *device = 0;
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommGetAsyncError(ncclComm_t, ncclResult_t* e) {
  *e = ncclSuccess;
  return ncclSuccess;
}
NN_EXPORT const char* ncclGetErrorString(ncclResult_t) { return "nullnccl"; }
NN_EXPORT const char* ncclGetLastError(ncclComm_t) { return ""; }
NN_EXPORT ncclResult_t ncclRedOpCreatePreMulSum(ncclRedOp_t* op, void*, ncclDataType_t, ncclScalarResidence_t,
                                                ncclComm_t) {
  *op = static_cast<ncclRedOp_t>(ncclNumOps);
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommRegister(const ncclComm_t, void* buff, size_t, void** handle) {
  *handle = buff;
  return ncclSuccess;
}
NN_EXPORT ncclResult_t ncclCommWindowRegister(ncclComm_t, void* buff, size_t, ncclWindow_t* win, int) {
  *win = reinterpret_cast<ncclWindow_t>(buff);
  return ncclSuccess;
}

// Everything else: succeed, do nothing.
#define NN_PROBE ~, 1
#define NN_HAND_GetVersion NN_PROBE
#define NN_HAND_GetUniqueId NN_PROBE
#define NN_HAND_CommInitRank NN_PROBE
#define NN_HAND_CommInitRankConfig NN_PROBE
#define NN_HAND_CommInitRankScalable NN_PROBE
#define NN_HAND_CommInitAll NN_PROBE
#define NN_HAND_CommSplit NN_PROBE
#define NN_HAND_CommShrink NN_PROBE
#define NN_HAND_CommDestroy NN_PROBE
#define NN_HAND_CommAbort NN_PROBE
#define NN_HAND_CommCount NN_PROBE
#define NN_HAND_CommUserRank NN_PROBE
#define NN_HAND_CommCuDevice NN_PROBE
#define NN_HAND_CommGetAsyncError NN_PROBE
#define NN_HAND_GetErrorString NN_PROBE
#define NN_HAND_GetLastError NN_PROBE
#define NN_HAND_RedOpCreatePreMulSum NN_PROBE
#define NN_HAND_CommRegister NN_PROBE
#define NN_HAND_CommWindowRegister NN_PROBE
#define NN_CHECK_N(x, n, ...) n
#define NN_CHECK(...) NN_CHECK_N(__VA_ARGS__, 0, )
#define NN_IS_HAND(name) NN_CHECK(NN_HAND_##name)
#define NN_CAT(a, b) NN_CAT_I(a, b)
#define NN_CAT_I(a, b) a##b
#define NN_IIF(c) NN_CAT(NN_IIF_, c)
#define NN_IIF_0(t, f) f
#define NN_IIF_1(t, f) t
#define NN_SKIP(ret, name, params, args)
#define NN_NOOP(ret, name, params, args) \
  NN_EXPORT ret nccl##name params { return Zero<ret>(); }
#define NN_STUB(ret, name, params, args) NN_IIF(NN_IS_HAND(name))(NN_SKIP, NN_NOOP)(ret, name, params, args)
#pragma GCC diagnostic ignored "-Wunused-parameter"
TM_NCCL_API(NN_STUB)
TM_NCCL_API_NO_PNCCL(NN_STUB)
#define NN_ALIAS(ret, name, params, args) NN_EXPORT ret pnccl##name params __attribute__((alias("nccl" #name)));
TM_NCCL_API(NN_ALIAS)
