// SPDX-License-Identifier: Apache-2.0
#include "device_snapshots.h"

#include <algorithm>
#include <chrono>
#include <thread>

namespace trainmover::migration {

std::unique_ptr<DeviceSnapshots> DeviceSnapshots::Create(const base::Cudart* rt, std::string* why) {
  if (rt == nullptr) {
    *why = "no CUDA runtime is loaded";
    return nullptr;
  }
  const std::pair<const char*, bool> calls[] = {
      {"cudaMemcpyAsync", rt->cudaMemcpyAsync != nullptr},
      {"cudaMemcpy", rt->cudaMemcpy != nullptr},
      {"cudaStreamCreateWithFlags", rt->cudaStreamCreateWithFlags != nullptr},
      {"cudaStreamWaitEvent", rt->cudaStreamWaitEvent != nullptr},
      {"cudaEventCreateWithFlags", rt->cudaEventCreateWithFlags != nullptr},
      {"cudaEventRecord", rt->cudaEventRecord != nullptr},
      {"cudaEventQuery", rt->cudaEventQuery != nullptr},
      {"cudaDeviceSynchronize", rt->cudaDeviceSynchronize != nullptr},
  };
  for (const auto& [name, found] : calls) {
    if (!found) {
      *why = std::string(rt->soname) + " has no " + name;
      return nullptr;
    }
  }
  return std::unique_ptr<DeviceSnapshots>(new DeviceSnapshots(rt));
}

std::string DeviceSnapshots::Error(const char* call, cudaError_t e) const {
  const char* text = rt_->cudaGetErrorString ? rt_->cudaGetErrorString(e) : nullptr;
  return std::string(call) + " failed: " + (text ? text : "CUDA error " + std::to_string(static_cast<int>(e)));
}

uint64_t DeviceSnapshots::Start(const std::vector<Copy>& copies, std::string* err) {
  std::lock_guard<std::mutex> lk(mu_);
  cudaError_t e = cudaSuccess;
  if (copy_stream_ == nullptr) {
    if ((e = rt_->cudaStreamCreateWithFlags(&copy_stream_, cudaStreamNonBlocking)) != cudaSuccess) {
      copy_stream_ = nullptr;
      *err = Error("cudaStreamCreateWithFlags", e);
      return 0;
    }
    if ((e = rt_->cudaEventCreateWithFlags(&done_, cudaEventDisableTiming)) != cudaSuccess) {
      done_ = nullptr;
      *err = Error("cudaEventCreateWithFlags", e);
      return 0;
    }
  }
  // The streams whose work so far the copies follow: the two default streams and every stream of a collective since
  // the previous snapshot (only those: a stream the program destroyed meanwhile must not be touched).
  std::vector<cudaStream_t> after = {cudaStreamLegacy, cudaStreamPerThread};
  for (cudaStream_t s : seen_) {
    if (s != nullptr && std::find(after.begin(), after.end(), s) == after.end()) after.push_back(s);
  }
  seen_.clear();
  for (size_t i = 0; i < after.size(); ++i) {
    if (i == ready_.size()) {
      cudaEvent_t ev = nullptr;
      if ((e = rt_->cudaEventCreateWithFlags(&ev, cudaEventDisableTiming)) != cudaSuccess) {
        *err = Error("cudaEventCreateWithFlags", e);
        return 0;
      }
      ready_.push_back(ev);
    }
    if ((e = rt_->cudaEventRecord(ready_[i], after[i])) != cudaSuccess ||
        (e = rt_->cudaStreamWaitEvent(copy_stream_, ready_[i], 0)) != cudaSuccess) {
      *err = Error("ordering the snapshot after the program's streams", e);
      return 0;
    }
  }
  for (const Copy& c : copies) {
    if ((e = rt_->cudaMemcpyAsync(c.host, c.device, c.bytes, cudaMemcpyDeviceToHost, copy_stream_)) != cudaSuccess) {
      *err = Error("cudaMemcpyAsync", e);
      return 0;
    }
  }
  if ((e = rt_->cudaEventRecord(done_, copy_stream_)) != cudaSuccess) {
    *err = Error("cudaEventRecord", e);
    return 0;
  }
  gate_.store(++generation_, std::memory_order_release);
  return generation_;
}

bool DeviceSnapshots::Wait(uint64_t generation, int timeout_ms, std::string* err) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    uint64_t newest = 0;
    cudaError_t e = cudaSuccess;
    {
      std::lock_guard<std::mutex> lk(mu_);
      newest = generation_;
      if (newest < generation || done_ == nullptr) {
        *err = "no snapshot copies of generation " + std::to_string(generation) + " were started";
        return false;
      }
      e = rt_->cudaEventQuery(done_);  // the newest Start's copies (a later Start's include the earlier ones' order)
    }
    if (e == cudaSuccess) {
      gate_.compare_exchange_strong(newest, 0, std::memory_order_acq_rel);
      return true;
    }
    if (e != cudaErrorNotReady) {
      *err = Error("cudaEventQuery", e);
      return false;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      *err = "the snapshot's device-to-host copies did not complete within " + std::to_string(timeout_ms) + " ms";
      return false;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

void DeviceSnapshots::OnStream(cudaStream_t stream) {
  std::lock_guard<std::mutex> lk(mu_);
  if (std::find(seen_.begin(), seen_.end(), stream) == seen_.end()) seen_.push_back(stream);
  // A failure here leaves this collective unordered after the copies; the snapshot's own wait still bounds it, and
  // a CUDA error that breaks a stream shows in the program's own next call.
  if (gate_.load(std::memory_order_acquire) != 0) (void)rt_->cudaStreamWaitEvent(stream, done_, 0);
}

bool DeviceSnapshots::CopySync(void* dst, const void* src, size_t bytes, std::string* err) {
  cudaError_t e = rt_->cudaDeviceSynchronize();
  if (e == cudaSuccess) e = rt_->cudaMemcpy(dst, src, bytes, cudaMemcpyDefault);
  if (e == cudaSuccess) e = rt_->cudaDeviceSynchronize();  // a copy from pageable memory may return before its DMA
  if (e != cudaSuccess) *err = Error("cudaMemcpy", e);
  return e == cudaSuccess;
}

bool DeviceSnapshots::Pin(void* host, size_t bytes) {
  return rt_->cudaHostRegister != nullptr && rt_->cudaHostUnregister != nullptr && bytes > 0 &&
         rt_->cudaHostRegister(host, bytes, cudaHostRegisterPortable) == cudaSuccess;
}

void DeviceSnapshots::Unpin(void* host) { (void)rt_->cudaHostUnregister(host); }

}  // namespace trainmover::migration
