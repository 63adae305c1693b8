// SPDX-License-Identifier: Apache-2.0
// An NCCL program for the binding scenarios: makes a 1-rank communicator, runs a 4-element float
// allreduce (sum) and prints "version V result R sum S handle H" or "result R lasterror <text>".
// Linked against a libnccl.so.2 by SONAME, or (as bind_app_shim) against libtrainmover.so only.
#include <nccl.h>

#include <cstdio>

int main() {
  int version = 0;
  ncclResult_t r = ncclGetVersion(&version);
  if (r != ncclSuccess) {
    std::printf("result %d lasterror %s\n", r, ncclGetLastError(nullptr));
    return 0;
  }
  ncclUniqueId id;
  ncclComm_t comm = nullptr;
  if ((r = ncclGetUniqueId(&id)) != ncclSuccess || (r = ncclCommInitRank(&comm, 1, id, 0)) != ncclSuccess) {
    std::printf("result %d lasterror %s\n", r, ncclGetLastError(nullptr));
    return 0;
  }
  float in[4] = {1, 2, 3, 4}, out[4] = {0, 0, 0, 0};
  r = ncclAllReduce(in, out, 4, ncclFloat32, ncclSum, comm, nullptr);
  std::printf("version %d result %d sum %g\n", version, r, out[0] + out[1] + out[2] + out[3]);
  ncclCommDestroy(comm);
  return 0;
}
