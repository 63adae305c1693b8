// SPDX-License-Identifier: Apache-2.0
// Local emulation of collectives for a VComm with no real communicator (a joiner in the sandbox,
// docs/architecture.md "Migration protocol" step 2). Every rank is assumed to have contributed this
// rank's input:
//   reductions: sum = n*x, premulsum = scalar*n*x (computed exactly, rounded once to the type; integers
//               modulo 2^bits), avg = max = min = prod = x
//   AllReduce: the reduction; Reduce: the reduction at the root, recvbuff untouched elsewhere;
//   ReduceScatter: this rank's slice of the emulated AllReduce; AllGather: the local chunk in every slot;
//   Gather: the same at the root; AlltoAll: own chunk kept, the others zero; Broadcast/Bcast/Scatter:
//   the root's data at the root, zeros elsewhere; Recv: zeros; Send: nothing.
// Emulate() needs host-accessible buffers; EmulateOnStream() stages CUDA device buffers through host memory.
// Outputs are never left uninitialised and never turn finite inputs into NaN.
#pragma once

#include <cstddef>

#include "nccl_api.h"
#include "core/shim_state.h"

namespace trainmover::shim {

// The reduction as seen by the emulator: a built-in op, or PreMulSum with its scalar (of `datatype`).
struct EmuRedOp {
  ncclRedOp_t op = ncclSum;  // ncclSum..ncclAvg; PreMulSum uses premul=true
  bool premul = false;
  const void* scalar = nullptr;
};

// Fills recvbuff (and for Bcast the buffer) for one operation. `count` is the per-rank count as NCCL's
// signature takes it (recvcount for ReduceScatter, sendcount for AllGather, per-peer for AlltoAll).
// Returns ncclInvalidArgument (with the shim error set) for a bad datatype, op, root/peer or null buffer.
ncclResult_t Emulate(OpKind kind, const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                     const EmuRedOp& op, int root_or_peer, int rank, int nranks);

// Emulate() for buffers that may be CUDA device memory. When the CUDA runtime is already loaded in the
// process and a buffer (or a device-resident PreMulSum scalar) is device memory, the stream is
// synchronised and the data staged through host memory (blocking: the sandbox is off the critical path).
// Otherwise it is Emulate().
ncclResult_t EmulateOnStream(OpKind kind, const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                             const EmuRedOp& op, int root_or_peer, int rank, int nranks, cudaStream_t stream);

// Copies `bytes` host bytes into `dst`, which may be CUDA device memory (then the stream is synchronised and
// cudaMemcpy used, when the application loaded libcudart). Returns false when a CUDA call failed.
bool CopyToBuffer(void* dst, const void* src, size_t bytes, cudaStream_t stream);
// The reverse: `bytes` of `src` (host or device memory, the stream synchronised first for device memory) into
// host memory `dst`.
bool CopyFromBuffer(void* dst, const void* src, size_t bytes, cudaStream_t stream);

}  // namespace trainmover::shim
