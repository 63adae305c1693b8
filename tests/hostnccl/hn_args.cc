// SPDX-License-Identifier: Apache-2.0
// Bad arguments return what NCCL returns, with a message in ncclGetLastError; invalid environment values fail
// the call with ncclInvalidArgument naming the variable; the version and the device-API host functions.
#include <string>

#include "hn_harness.h"
#include "nccl_api.h"  // declarations of the device-API host functions (nccl_device/ needs nvcc)

// nccl.h does not declare the device-API host functions; declare them from the project's API list.
extern "C" {
#define HT_DECLARE_DEV(ret, name, params, args) ret nccl##name params;
HT_DECLARE_DEV(ncclTeam_t, TeamWorld, (ncclComm_t comm), (comm))
HT_DECLARE_DEV(ncclTeam_t, TeamLsa, (ncclComm_t comm), (comm))
HT_DECLARE_DEV(ncclTeam_t, TeamRail, (ncclComm_t comm), (comm))
HT_DECLARE_DEV(int, TeamRankToWorld, (ncclComm_t comm, ncclTeam_t team, int rank), (comm, team, rank))
HT_DECLARE_DEV(int, TeamRankToLsa, (ncclComm_t comm, ncclTeam_t team, int rank), (comm, team, rank))
HT_DECLARE_DEV(int, LLA2ACalcSlots, (int maxElts, int maxEltSize), (maxElts, maxEltSize))
HT_DECLARE_DEV(ncclResult_t, LsaBarrierCreateRequirement,
               (ncclTeam_t team, int nBarriers, ncclLsaBarrierHandle_t* outHandle,
                ncclDevResourceRequirements_t* outReq),
               (team, nBarriers, outHandle, outReq))
HT_DECLARE_DEV(ncclResult_t, DevCommCreate,
               (ncclComm_t comm, ncclDevCommRequirements_t const* reqs, ncclDevComm_t* outDevComm),
               (comm, reqs, outDevComm))
#undef HT_DECLARE_DEV
}

namespace {

int Body(int rank, int n, const ncclUniqueId& id) {
  int failures = 0;
  auto last = [] { return std::string(ncclGetLastError(nullptr)); };
  int v = 0;
  HT_NCCL(ncclGetVersion(&v));
  HT_EXPECT(v == NCCL_VERSION_CODE && v == 22809, "version %d", v);
  HT_EXPECT(ncclGetVersion(nullptr) == ncclInvalidArgument, "GetVersion(NULL)");
  for (int r = 0; r <= ncclInProgress; ++r) {
    HT_EXPECT(ncclGetErrorString(static_cast<ncclResult_t>(r)) != nullptr, "error string %d", r);
  }
  int32_t buf[64] = {};
  HT_EXPECT(ncclAllReduce(buf, buf, 1, ncclInt32, ncclSum, nullptr, nullptr) == ncclInvalidArgument, "null comm");
  HT_EXPECT(!last().empty(), "no message for null comm");
  HT_EXPECT(ncclCommDestroy(nullptr) == ncclSuccess && ncclCommAbort(nullptr) == ncclSuccess &&
                ncclCommFinalize(nullptr) == ncclSuccess,
            "NULL destroy/abort/finalize are no-ops in NCCL");
  HT_EXPECT(ncclCommCount(nullptr, &v) == ncclInvalidArgument, "count on NULL comm");
  ncclComm_t bad = nullptr;
  HT_EXPECT(ncclCommInitRank(&bad, n, id, n) == ncclInvalidArgument, "rank out of range");
  HT_EXPECT(ncclCommInitRank(&bad, 0, id, 0) == ncclInvalidArgument, "nranks 0");
  HT_EXPECT(ncclCommInitRank(nullptr, n, id, rank) == ncclInvalidArgument, "null newcomm");
  ncclConfig_t cfg{};  // not NCCL_CONFIG_INITIALIZER
  cfg.size = sizeof(cfg);
  HT_EXPECT(ncclCommInitRankConfig(&bad, n, id, rank, &cfg) == ncclInvalidArgument, "uninitialised config");
  HT_EXPECT(last().find("NCCL_CONFIG_INITIALIZER") != std::string::npos, "config message: %s", last().c_str());

  ncclComm_t comm;
  HT_NCCL(ncclCommInitRank(&comm, n, id, rank));
  HT_EXPECT(ncclBroadcast(buf, buf, 1, ncclInt32, n, comm, nullptr) == ncclInvalidArgument, "bad root");
  HT_EXPECT(ncclReduce(buf, buf, 1, ncclInt32, ncclSum, -1, comm, nullptr) == ncclInvalidArgument, "negative root");
  HT_EXPECT(ncclSend(buf, 1, ncclInt32, n, comm, nullptr) == ncclInvalidArgument, "bad peer");
  HT_EXPECT(ncclRecv(buf, 1, ncclInt32, -1, comm, nullptr) == ncclInvalidArgument, "bad peer");
  HT_EXPECT(ncclAllReduce(buf, buf, 1, static_cast<ncclDataType_t>(ncclNumTypes), ncclSum, comm, nullptr) ==
                ncclInvalidArgument,
            "bad datatype");
  HT_EXPECT(ncclAllReduce(buf, buf, 1, ncclInt32, static_cast<ncclRedOp_t>(ncclNumOps + 7), comm, nullptr) ==
                ncclInvalidArgument,
            "unknown op");
  HT_EXPECT(ncclAllReduce(nullptr, buf, 4, ncclInt32, ncclSum, comm, nullptr) == ncclInvalidArgument, "null send");
  HT_EXPECT(ncclAllGather(buf, nullptr, 4, ncclInt32, comm, nullptr) == ncclInvalidArgument, "null recv");
  HT_NCCL(ncclAllReduce(nullptr, nullptr, 0, ncclInt32, ncclSum, comm, nullptr));  // count 0: nothing to touch
  HT_EXPECT(ncclRedOpDestroy(ncclSum, comm) == ncclInvalidArgument, "destroy builtin op");
  float scal = 2.0f;
  ncclRedOp_t op;
  HT_NCCL(ncclRedOpCreatePreMulSum(&op, &scal, ncclFloat32, ncclScalarHostImmediate, comm));
  HT_EXPECT(ncclAllReduce(buf, buf, 1, ncclInt32, op, comm, nullptr) == ncclInvalidArgument, "op type mismatch");
  HT_NCCL(ncclRedOpDestroy(op, comm));
  HT_EXPECT(ncclRedOpDestroy(op, comm) == ncclInvalidArgument, "double op destroy");
  HT_EXPECT(ncclCommRevoke(comm, 7) == ncclInvalidArgument, "revoke flags");
  int cnt = 0;
  HT_EXPECT(ncclCommCount(comm, nullptr) == ncclInvalidArgument, "null count");
  int ex[] = {rank};
  ncclComm_t sh;
  HT_EXPECT(ncclCommShrink(comm, ex, 1, &sh, nullptr, NCCL_SHRINK_DEFAULT) == ncclInvalidArgument, "shrink self");
  HT_EXPECT(ncclCommShrink(comm, ex, 0, &sh, nullptr, NCCL_SHRINK_DEFAULT) == ncclInvalidArgument, "shrink 0");

  // Device API host functions: what a host-only communicator gives.
  ncclTeam_t world = ncclTeamWorld(comm), lsa = ncclTeamLsa(comm), rail = ncclTeamRail(comm);
  HT_EXPECT(world.nRanks == n && world.rank == rank && world.stride == 1, "team world");
  HT_EXPECT(lsa.nRanks == 1 && lsa.rank == 0, "team lsa");
  HT_EXPECT(rail.nRanks == n, "team rail");
  HT_EXPECT(ncclTeamRankToWorld(comm, world, 0) == 0, "rank to world");
  HT_EXPECT(ncclTeamRankToLsa(comm, lsa, 0) == 0, "rank to lsa");
  HT_EXPECT(ncclLLA2ACalcSlots(10, 12) == 20, "LLA2A slots %d", ncclLLA2ACalcSlots(10, 12));
  struct {
    void* next;
    size_t bufferSize, bufferAlign;
    void* outBufferHandle;
    int ginSignalCount, ginCounterCount;
    void *s, *c;
  } req;
  struct {
    uint32_t buf;
    int nBarriers;
  } lsah;
  HT_NCCL(ncclLsaBarrierCreateRequirement(lsa, 4, reinterpret_cast<ncclLsaBarrierHandle_t*>(&lsah),
                                          reinterpret_cast<ncclDevResourceRequirements_t*>(&req)));
  HT_EXPECT(lsah.nBarriers == 4 && req.bufferSize == (3 * 4 + 4 * 1) * 4, "lsa barrier requirement %zu",
            req.bufferSize);
  HT_EXPECT(ncclDevCommCreate(comm, reinterpret_cast<ncclDevCommRequirements_t*>(&req),
                              reinterpret_cast<ncclDevComm_t*>(&lsah)) == ncclInvalidUsage,
            "DevCommCreate");

  HT_NCCL(ncclCommDestroy(comm));
  HT_EXPECT(ncclCommCount(comm, &cnt) == ncclInvalidArgument, "use after destroy");
  HT_EXPECT(ncclAllReduce(buf, buf, 1, ncclInt32, ncclSum, comm, nullptr) == ncclInvalidArgument, "use after destroy");

  // Environment: a present but invalid value fails the call and names the variable.
  const char* vars[][2] = {{"HOSTNCCL_TIMEOUT_MS", "soon"},  {"HOSTNCCL_INIT_DELAY_MS", "-3"},
                           {"HOSTNCCL_DEBUG", "LOUD"},       {"HOSTNCCL_SOCKET_IFADDR", "not.an.ip"},
                           {"HOSTNCCL_CHUNK_BYTES", "4095"}, {"HOSTNCCL_CHUNK_BYTES", "2147483648"},
                           {"HOSTNCCL_CHUNK_BYTES", "1M"},   {"HOSTNCCL_ALGO", "tree"},
                           {"HOSTNCCL_CONNECT", "later"},    {"HOSTNCCL_PEER_ERRORS", "sometimes"},
                           {"HOSTNCCL_UCX", "fat"},          {"HOSTNCCL_WAIT", "doze"}};
  for (auto& kv : vars) {
    setenv(kv[0], kv[1], 1);
    ncclUniqueId id2;
    ncclResult_t r = ncclGetUniqueId(&id2);
    HT_EXPECT(r == ncclInvalidArgument, "%s=%s gave %d", kv[0], kv[1], r);
    HT_EXPECT(last().find(kv[0]) != std::string::npos, "message does not name %s: %s", kv[0], last().c_str());
    unsetenv(kv[0]);
  }
  // ... and communicator init, before it contacts anyone (a fresh id of this process).
  for (auto& kv : {vars[4], vars[7]}) {
    ncclUniqueId id3;
    HT_NCCL(ncclGetUniqueId(&id3));
    setenv(kv[0], kv[1], 1);
    ncclComm_t c3 = nullptr;
    ncclResult_t r = ncclCommInitRank(&c3, 1, id3, 0);
    HT_EXPECT(r == ncclInvalidArgument && c3 == nullptr, "init with %s=%s gave %d", kv[0], kv[1], r);
    HT_EXPECT(last().find(kv[0]) != std::string::npos, "message does not name %s: %s", kv[0], last().c_str());
    unsetenv(kv[0]);
  }
  // Valid values are taken: the smallest chunk, and each algorithm name (case-insensitive).
  for (const char* algo : {"ring", "DIRECT", "auto"}) {
    setenv("HOSTNCCL_CHUNK_BYTES", "4096", 1);
    setenv("HOSTNCCL_ALGO", algo, 1);
    ncclUniqueId id4;
    HT_NCCL(ncclGetUniqueId(&id4));
    ncclComm_t c4 = nullptr;
    HT_NCCL(ncclCommInitRank(&c4, 1, id4, 0));
    std::vector<int32_t> v(5000, 3), w(5000, 0);
    HT_NCCL(ncclAllReduce(v.data(), w.data(), v.size(), ncclInt32, ncclSum, c4, nullptr));
    HT_EXPECT(w[0] == 3 && w[4999] == 3, "single-rank allreduce with HOSTNCCL_ALGO=%s", algo);
    HT_NCCL(ncclCommDestroy(c4));
    unsetenv("HOSTNCCL_CHUNK_BYTES");
    unsetenv("HOSTNCCL_ALGO");
  }
  return failures;
}

}  // namespace

int main() {
  int f = ht::RunRanks(2, Body);
  printf("%s: %d failures\n", f ? "FAIL" : "PASS", f);
  return f ? 1 : 0;
}
