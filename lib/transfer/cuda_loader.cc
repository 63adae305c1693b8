// SPDX-License-Identifier: Apache-2.0
#include "cuda_loader.h"

#include <dlfcn.h>

#include <mutex>

namespace trainmover::transfer {
namespace {
constexpr int kCudaMemcpyDefault = 4;  // cudaMemcpyKind: direction inferred from the pointers (UVA)
}  // namespace

bool CudaRuntime::CopyToHost(void* dst, const void* src, size_t len, std::string* error) const {
  int rc = memcpy_(dst, src, len, kCudaMemcpyDefault);
  if (rc == 0) return true;
  *error = std::string("cudaMemcpy failed: ") + (get_error_string_ ? get_error_string_(rc) : "?") + " (" +
           std::to_string(rc) + ")";
  return false;
}

int CudaRuntime::DeviceCount() const {
  int n = 0;
  return get_device_count_(&n) == 0 ? n : 0;
}

const CudaRuntime* LoadCudaRuntime(std::string* why) {
  static std::once_flag once;
  static CudaRuntime runtime;
  static const CudaRuntime* loaded = nullptr;
  static std::string failure;
  std::call_once(once, [] {
    void* lib = nullptr;
    for (const char* name : {"libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"}) {
      lib = dlopen(name, RTLD_NOW | RTLD_LOCAL);
      if (lib != nullptr) break;
    }
    if (lib == nullptr) {
      failure = "libcudart could not be loaded (dlopen libcudart.so*)";
      return;
    }
    runtime.memcpy_ = reinterpret_cast<CudaRuntime::MemcpyFn>(dlsym(lib, "cudaMemcpy"));
    runtime.get_device_count_ = reinterpret_cast<CudaRuntime::GetDeviceCountFn>(dlsym(lib, "cudaGetDeviceCount"));
    runtime.get_error_string_ = reinterpret_cast<CudaRuntime::GetErrorStringFn>(dlsym(lib, "cudaGetErrorString"));
    if (runtime.memcpy_ == nullptr || runtime.get_device_count_ == nullptr) {
      failure = "libcudart lacks cudaMemcpy/cudaGetDeviceCount";
      return;
    }
    loaded = &runtime;
  });
  if (loaded == nullptr && why != nullptr) *why = failure;
  return loaded;
}

}  // namespace trainmover::transfer
