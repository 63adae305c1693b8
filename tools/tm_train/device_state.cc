// SPDX-License-Identifier: Apache-2.0
#include "device_state.h"

#include <dlfcn.h>

#include <string>

#include "driver.h"
#include "model.h"

namespace tm_train {
namespace {

template <typename Fn>
void Resolve(void* library, const char* soname, const char* name, Fn* out, bool required) {
  *out = reinterpret_cast<Fn>(dlsym(library, name));
  if (*out == nullptr && required) Die("--device-state: %s has no %s", soname, name);
}

// Opens the first of the sonames that dlopen finds with `mode`; nullptr when none (their errors in *tried).
void* OpenFirst(int mode, const char** soname, std::string* tried) {
  for (const char* name : {"libcudart.so.13", "libcudart.so.12", "libcudart.so"}) {
    if (void* library = dlopen(name, mode); library != nullptr) {
      *soname = name;
      return library;
    }
    const char* why = dlerror();
    if (tried != nullptr) *tried += std::string(tried->empty() ? "" : "; ") + (why ? why : name);
  }
  return nullptr;
}

}  // namespace

CudaRuntime CudaRuntime::Load() {
  // A runtime already in the process (preloaded, as the tests preload their stand-in) wins over a newer one on
  // the library path, which would otherwise be loaded beside it and disagree with it about device pointers.
  // RTLD_GLOBAL: the library stays loaded and visible, so libtrainmover (which only looks for a libcudart the
  // application already loaded) finds this same one and sees the device region as device memory.
  const char* soname = nullptr;
  std::string tried;
  void* library = OpenFirst(RTLD_NOW | RTLD_GLOBAL | RTLD_NOLOAD, &soname, nullptr);
  if (library == nullptr) library = OpenFirst(RTLD_NOW | RTLD_GLOBAL, &soname, &tried);
  if (library == nullptr) Die("--device-state needs a CUDA runtime (libcudart): %s", tried.c_str());
  CudaRuntime rt;
  Resolve(library, soname, "cudaMalloc", &rt.cudaMalloc, true);
  Resolve(library, soname, "cudaFree", &rt.cudaFree, true);
  Resolve(library, soname, "cudaMemcpy", &rt.cudaMemcpy, true);
  Resolve(library, soname, "cudaMemcpyAsync", &rt.cudaMemcpyAsync, true);
  Resolve(library, soname, "cudaStreamCreateWithFlags", &rt.cudaStreamCreateWithFlags, true);
  Resolve(library, soname, "cudaStreamSynchronize", &rt.cudaStreamSynchronize, true);
  Resolve(library, soname, "cudaStreamDestroy", &rt.cudaStreamDestroy, true);
  Resolve(library, soname, "cudaGetErrorString", &rt.cudaGetErrorString, false);
  return rt;
}

void CudaRuntime::Check(cudaError_t rc, const char* call) const {
  if (rc == cudaSuccess) return;
  Die("--device-state: %s failed: %s (%d)", call, cudaGetErrorString ? cudaGetErrorString(rc) : "?",
      static_cast<int>(rc));
}

DeviceExtraState::DeviceExtraState(uint64_t seed, size_t words)
    : rt_(CudaRuntime::Load()), words_(words), scratch_(words) {
  rt_.Check(rt_.cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  rt_.Check(rt_.cudaMalloc(&device_, bytes()), "cudaMalloc");
  InitExtraState(seed, scratch_.data(), words_);
  rt_.Check(rt_.cudaMemcpy(device_, scratch_.data(), bytes(), cudaMemcpyHostToDevice), "cudaMemcpy (initial state)");
}

DeviceExtraState::~DeviceExtraState() {
  // Errors are ignored here: the process is ending, and the digest has been printed.
  if (stream_ != nullptr) {
    rt_.cudaStreamSynchronize(stream_);
    rt_.cudaStreamDestroy(stream_);
  }
  if (device_ != nullptr) rt_.cudaFree(device_);
}

void DeviceExtraState::Update(uint64_t seed, int64_t step) {
  // Every step starts from the device copy, never from a host copy kept across steps: when tmSafePoint rolls the
  // state back (failure recovery restores the registered regions, this device one included), the restored bytes
  // are what the next step reads, and nothing else has to be done.
  rt_.Check(rt_.cudaMemcpyAsync(scratch_.data(), device_, bytes(), cudaMemcpyDeviceToHost, stream_),
            "cudaMemcpyAsync (device to host)");
  rt_.Check(rt_.cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  UpdateExtraState(seed, step, scratch_.data(), words_);
  // Left in flight on purpose, as a GPU program's optimizer kernels would be when the loop reaches tmSafePoint:
  // the shim, not this program, must order its snapshot after it. Reusing scratch_ next step is safe: the next
  // download is queued behind this upload on the same in-order stream, so the upload has read scratch_ before the
  // synchronize that precedes any host write to it.
  rt_.Check(rt_.cudaMemcpyAsync(device_, scratch_.data(), bytes(), cudaMemcpyHostToDevice, stream_),
            "cudaMemcpyAsync (host to device)");
}

std::vector<uint64_t> DeviceExtraState::CopyToHost() {
  rt_.Check(rt_.cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  std::vector<uint64_t> host(words_);
  rt_.Check(rt_.cudaMemcpy(host.data(), device_, bytes(), cudaMemcpyDeviceToHost), "cudaMemcpy (final state)");
  return host;
}

}  // namespace tm_train
