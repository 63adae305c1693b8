// SPDX-License-Identifier: Apache-2.0
// device_state.h: --device-state, the `extra` region in CUDA device memory (docs/tm-train.md, "Device state").
// The runtime is loaded with dlopen, so tm-train neither links against CUDA nor needs it without the flag.
#ifndef TOOLS_TM_TRAIN_DEVICE_STATE_H_
#define TOOLS_TM_TRAIN_DEVICE_STATE_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tm_train {

// The calls tm-train makes, from the first of libcudart.so.13, .so.12, .so that dlopen finds (RTLD_GLOBAL, so
// the shim's own RTLD_NOLOAD lookup finds the same library). Load() exits through Die when there is none.
struct CudaRuntime {
  decltype(&::cudaMalloc) cudaMalloc = nullptr;
  decltype(&::cudaFree) cudaFree = nullptr;
  decltype(&::cudaMemcpy) cudaMemcpy = nullptr;
  decltype(&::cudaMemcpyAsync) cudaMemcpyAsync = nullptr;
  decltype(&::cudaStreamCreateWithFlags) cudaStreamCreateWithFlags = nullptr;
  decltype(&::cudaStreamSynchronize) cudaStreamSynchronize = nullptr;
  decltype(&::cudaStreamDestroy) cudaStreamDestroy = nullptr;
  decltype(&::cudaGetErrorString) cudaGetErrorString = nullptr;  // optional: messages fall back to the code

  static CudaRuntime Load();
  // Exits through Die naming the call when rc is not cudaSuccess.
  void Check(cudaError_t rc, const char* call) const;
};

// The `extra` region (--extra-state-mb) held in device memory and updated as a GPU program would: copied down,
// updated on the host, copied up asynchronously on the program's own stream, the upload left in flight.
class DeviceExtraState {
 public:
  // Loads the runtime, creates the stream, allocates the region and fills it with InitExtraState(seed).
  DeviceExtraState(uint64_t seed, size_t words);
  ~DeviceExtraState();
  DeviceExtraState(const DeviceExtraState&) = delete;
  DeviceExtraState& operator=(const DeviceExtraState&) = delete;

  void* device_ptr() const { return device_; }
  size_t bytes() const { return words_ * sizeof(uint64_t); }
  // The non-blocking stream every collective of the workload runs on with --device-state.
  cudaStream_t stream() const { return stream_; }

  // UpdateExtraState(seed, step) applied to the device region; returns with the upload still in flight.
  void Update(uint64_t seed, int64_t step);
  // Waits for the stream, then returns the region's contents.
  std::vector<uint64_t> CopyToHost();

 private:
  CudaRuntime rt_;
  cudaStream_t stream_ = nullptr;
  void* device_ = nullptr;
  size_t words_ = 0;
  std::vector<uint64_t> scratch_;  // the host copy each step's update works on
};

}  // namespace tm_train

#endif  // TOOLS_TM_TRAIN_DEVICE_STATE_H_
