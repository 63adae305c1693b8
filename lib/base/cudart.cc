// SPDX-License-Identifier: Apache-2.0
#include "base/cudart.h"

#include <dlfcn.h>

#include <mutex>

namespace trainmover::base {

namespace {
template <typename Fn>
void Find(void* h, const char* name, Fn* out) {
  *out = reinterpret_cast<Fn>(dlsym(h, name));
}
}  // namespace

const Cudart* CudartIfLoaded() {
  static Cudart rt;
  static const Cudart* found = nullptr;
  static std::once_flag once;
  std::call_once(once, [] {
    for (const char* name : {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"}) {
      void* h = dlopen(name, RTLD_NOW | RTLD_NOLOAD);
      if (h == nullptr) continue;
      rt.soname = name;
      Find(h, "cudaPointerGetAttributes", &rt.cudaPointerGetAttributes);
      Find(h, "cudaMemcpy", &rt.cudaMemcpy);
      Find(h, "cudaStreamSynchronize", &rt.cudaStreamSynchronize);
      Find(h, "cudaStreamIsCapturing", &rt.cudaStreamIsCapturing);
      Find(h, "cudaGetDeviceCount", &rt.cudaGetDeviceCount);
      Find(h, "cudaGetErrorString", &rt.cudaGetErrorString);
      Find(h, "cudaMemcpyAsync", &rt.cudaMemcpyAsync);
      Find(h, "cudaStreamCreateWithFlags", &rt.cudaStreamCreateWithFlags);
      Find(h, "cudaStreamWaitEvent", &rt.cudaStreamWaitEvent);
      Find(h, "cudaEventCreateWithFlags", &rt.cudaEventCreateWithFlags);
      Find(h, "cudaEventRecord", &rt.cudaEventRecord);
      Find(h, "cudaEventQuery", &rt.cudaEventQuery);
      Find(h, "cudaDeviceSynchronize", &rt.cudaDeviceSynchronize);
      Find(h, "cudaHostRegister", &rt.cudaHostRegister);
      Find(h, "cudaHostUnregister", &rt.cudaHostUnregister);
      Find(h, "cudaGetDevice", &rt.cudaGetDevice);
      Find(h, "cudaSetDevice", &rt.cudaSetDevice);
      found = &rt;  // the reference NOLOAD took is kept: the library stays for the life of the process
      return;
    }
  });
  return found;
}

int DeviceOf(const Cudart* rt, const void* p) {
  if (rt == nullptr || p == nullptr || rt->cudaPointerGetAttributes == nullptr) return -1;
  cudaPointerAttributes a{};
  return rt->cudaPointerGetAttributes(&a, p) == cudaSuccess && a.type == cudaMemoryTypeDevice ? a.device : -1;
}

bool IsDevicePointer(const Cudart* rt, const void* p) { return DeviceOf(rt, p) >= 0; }

}  // namespace trainmover::base
