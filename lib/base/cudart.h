// SPDX-License-Identifier: Apache-2.0
// The one way libtrainmover reaches the CUDA runtime: only if the application already loaded libcudart
// (dlopen with RTLD_NOLOAD), never by loading it itself, so a process without CUDA stays without CUDA
// (docs/shim.md). Nothing links against CUDA; the headers give the signatures.
#pragma once

#include <cuda_runtime_api.h>

namespace trainmover::base {

// The runtime calls libtrainmover uses, named after the CUDA functions. A member is null when this libcudart
// lacks it (a test's stand-in exports only cudaStreamIsCapturing): check the ones you call.
struct Cudart {
  const char* soname = nullptr;  // the library found, e.g. "libcudart.so.12"
  decltype(&::cudaPointerGetAttributes) cudaPointerGetAttributes = nullptr;
  decltype(&::cudaMemcpy) cudaMemcpy = nullptr;
  decltype(&::cudaStreamSynchronize) cudaStreamSynchronize = nullptr;
  decltype(&::cudaStreamIsCapturing) cudaStreamIsCapturing = nullptr;
  decltype(&::cudaGetDeviceCount) cudaGetDeviceCount = nullptr;
  decltype(&::cudaGetErrorString) cudaGetErrorString = nullptr;
  // Failure recovery's device snapshots (lib/migration/device_snapshots.h): stream-ordered copies to host.
  decltype(&::cudaMemcpyAsync) cudaMemcpyAsync = nullptr;
  decltype(&::cudaStreamCreateWithFlags) cudaStreamCreateWithFlags = nullptr;
  decltype(&::cudaStreamWaitEvent) cudaStreamWaitEvent = nullptr;
  decltype(&::cudaEventCreateWithFlags) cudaEventCreateWithFlags = nullptr;
  decltype(&::cudaEventRecord) cudaEventRecord = nullptr;
  decltype(&::cudaEventQuery) cudaEventQuery = nullptr;
  decltype(&::cudaDeviceSynchronize) cudaDeviceSynchronize = nullptr;
  decltype(&::cudaHostRegister) cudaHostRegister = nullptr;
  decltype(&::cudaHostUnregister) cudaHostUnregister = nullptr;
  decltype(&::cudaGetDevice) cudaGetDevice = nullptr;
  decltype(&::cudaSetDevice) cudaSetDevice = nullptr;
};

// The runtime already in the process, looked up once (thread-safe) on the first call; nullptr when no
// libcudart is loaded at that moment. The answer does not change afterwards.
const Cudart* CudartIfLoaded();

// True when `p` is device memory according to the loaded runtime; false without one.
bool IsDevicePointer(const Cudart* rt, const void* p);
// The ordinal of the device `p` is memory of; -1 when it is not device memory (or no runtime is loaded).
int DeviceOf(const Cudart* rt, const void* p);

}  // namespace trainmover::base
