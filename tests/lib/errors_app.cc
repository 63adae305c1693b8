// SPDX-License-Identifier: Apache-2.0
// Bad arguments, printed as "case: code | last error text" (addresses masked). test_passthrough.sh runs it
// with and without the shim on the same real library and requires identical output.
#include <nccl.h>

#include <cstdio>
#include <regex>
#include <string>

namespace {
void Show(const char* name, ncclResult_t r, ncclComm_t comm) {
  std::string text = ncclGetLastError(comm);
  text = std::regex_replace(text, std::regex("0x[0-9a-fA-F]+"), "0xADDR");
  std::printf("%s: %d | %s\n", name, static_cast<int>(r), text.c_str());
}
}  // namespace

int main() {
  int buf[16] = {};
  int n = -1;
  ncclUniqueId id;
  Show("GetVersion(NULL)", ncclGetVersion(nullptr), nullptr);
  Show("AllReduce null comm", ncclAllReduce(buf, buf, 1, ncclInt32, ncclSum, nullptr, nullptr), nullptr);
  Show("GetUniqueId", ncclGetUniqueId(&id), nullptr);
  ncclComm_t bad = nullptr;
  Show("InitRank rank out of range", ncclCommInitRank(&bad, 1, id, 1), nullptr);
  Show("InitRank nranks 0", ncclCommInitRank(&bad, 0, id, 0), nullptr);
  Show("InitRank null newcomm", ncclCommInitRank(nullptr, 1, id, 0), nullptr);
  ncclConfig_t cfg{};
  cfg.size = sizeof(cfg);
  Show("InitRankConfig bad config", ncclCommInitRankConfig(&bad, 1, id, 0, &cfg), nullptr);
  Show("CommCount null comm", ncclCommCount(nullptr, &n), nullptr);
  Show("CommSplit null comm", ncclCommSplit(nullptr, 0, 0, &bad, nullptr), nullptr);
  Show("CommDestroy null", ncclCommDestroy(nullptr), nullptr);
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRank(&comm, 1, id, 0);
  Show("InitRank", r, comm);
  if (r != ncclSuccess) return 1;
  Show("Broadcast bad root", ncclBroadcast(buf, buf, 1, ncclInt32, 1, comm, nullptr), comm);
  Show("Reduce negative root", ncclReduce(buf, buf, 1, ncclInt32, ncclSum, -1, comm, nullptr), comm);
  Show("Send bad peer", ncclSend(buf, 1, ncclInt32, 1, comm, nullptr), comm);
  Show("Recv bad peer", ncclRecv(buf, 1, ncclInt32, -1, comm, nullptr), comm);
  Show("AllReduce bad datatype",
       ncclAllReduce(buf, buf, 1, static_cast<ncclDataType_t>(ncclNumTypes), ncclSum, comm, nullptr), comm);
  Show("AllReduce unknown op",
       ncclAllReduce(buf, buf, 1, ncclInt32, static_cast<ncclRedOp_t>(ncclNumOps + 7), comm, nullptr), comm);
  Show("AllReduce shim-range op",
       ncclAllReduce(buf, buf, 1, ncclInt32, static_cast<ncclRedOp_t>(0x40000003), comm, nullptr), comm);
  Show("AllReduce null buffer", ncclAllReduce(nullptr, buf, 4, ncclInt32, ncclSum, comm, nullptr), comm);
  Show("CommCount null out", ncclCommCount(comm, nullptr), comm);
  Show("RedOpDestroy builtin", ncclRedOpDestroy(ncclSum, comm), comm);
  Show("RedOpDestroy unknown", ncclRedOpDestroy(static_cast<ncclRedOp_t>(ncclNumOps + 3), comm), comm);
  Show("PreMulSum null op", ncclRedOpCreatePreMulSum(nullptr, buf, ncclInt32, ncclScalarHostImmediate, comm), comm);
  Show("CommDeregister null handle", ncclCommDeregister(comm, nullptr), comm);
  Show("WindowDeregister null", ncclCommWindowDeregister(comm, nullptr), comm);
  Show("CommSplit null newcomm", ncclCommSplit(comm, 0, 0, nullptr, nullptr), comm);
  ncclRedOp_t op;
  int scalar = 2;
  Show("PreMulSum", ncclRedOpCreatePreMulSum(&op, &scalar, ncclInt32, ncclScalarHostImmediate, comm), comm);
  buf[0] = 5;
  Show("AllReduce PreMulSum", ncclAllReduce(buf, buf + 1, 1, ncclInt32, op, comm, nullptr), comm);
  std::printf("premulsum result %d\n", buf[1]);
  Show("AllReduce PreMulSum wrong type", ncclAllReduce(buf, buf + 1, 1, ncclFloat32, op, comm, nullptr), comm);
  Show("RedOpDestroy", ncclRedOpDestroy(op, comm), comm);
  Show("RedOpDestroy again", ncclRedOpDestroy(op, comm), comm);
  Show("GroupEnd without start", ncclGroupEnd(), comm);
  Show("CommDestroy", ncclCommDestroy(comm), nullptr);
  for (int e = 0; e <= ncclNumResults; ++e)
    std::printf("error string %d: %s\n", e, ncclGetErrorString(static_cast<ncclResult_t>(e)));
  return 0;
}
