// SPDX-License-Identifier: Apache-2.0
// The few CUDA runtime calls the transfer needs, loaded lazily with dlopen so that nothing links CUDA.
#ifndef TRAINMOVER_LIB_TRANSFER_CUDA_LOADER_H_
#define TRAINMOVER_LIB_TRANSFER_CUDA_LOADER_H_

#include <cstddef>
#include <string>

namespace trainmover::transfer {

class CudaRuntime {
 public:
  // Copies len bytes from src (device or host memory, unified addressing) to host memory dst; blocking.
  bool CopyToHost(void* dst, const void* src, size_t len, std::string* error) const;
  // Number of visible devices (0 when the runtime loads but no device works).
  int DeviceCount() const;

  using MemcpyFn = int (*)(void*, const void*, size_t, int);
  using GetDeviceCountFn = int (*)(int*);
  using GetErrorStringFn = const char* (*)(int);
  MemcpyFn memcpy_ = nullptr;
  GetDeviceCountFn get_device_count_ = nullptr;
  GetErrorStringFn get_error_string_ = nullptr;
};

// The process-wide runtime, loaded on first call (thread-safe); nullptr with *why set when libcudart
// cannot be loaded or lacks a symbol. The library stays loaded for the life of the process.
const CudaRuntime* LoadCudaRuntime(std::string* why);

}  // namespace trainmover::transfer

#endif  // TRAINMOVER_LIB_TRANSFER_CUDA_LOADER_H_
