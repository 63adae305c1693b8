// SPDX-License-Identifier: Apache-2.0
#include "staging.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "ucx_util.h"

namespace trainmover::transfer::detail {

StagedRegion::~StagedRegion() {
  if (host != nullptr) munmap(host, mapped);
}

namespace {

Status MapStandIn(const Region& device, StagedRegion* out) {
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t len = (device.size + page - 1) / page * page;
  const size_t slack = len >= kHuge ? kHuge : 0;
  void* p = mmap(nullptr, len + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return Status(Code::kUnsupported, "region '" + device.name + "': no host memory to stage it (" +
                                          std::to_string(len) + " bytes): " + std::strerror(errno));
  }
  const uintptr_t start = reinterpret_cast<uintptr_t>(p);
  const uintptr_t aligned = slack == 0 ? start : (start + kHuge - 1) & ~uintptr_t{kHuge - 1};
  if (aligned > start) munmap(p, aligned - start);
  if (const size_t tail = slack - (aligned - start); tail > 0) munmap(reinterpret_cast<void*>(aligned + len), tail);
  out->name = device.name;
  out->device = device.ptr;
  out->size = device.size;
  out->host = reinterpret_cast<void*>(aligned);
  out->mapped = len;
  // Committed now (a kernel without MADV_POPULATE_WRITE, 5.14, leaves it to the first copy): the pages exist before
  // the switch, and a huge-page collapse of an empty mapping does nothing.
  if (madvise(out->host, len, MADV_POPULATE_WRITE) != 0 && errno == ENOMEM) {
    return Status(Code::kUnsupported, "region '" + device.name + "': no host memory to stage it (" +
                                          std::to_string(len) + " bytes)");
  }
  return Status::Ok();
}

// The calling thread's current device set to the regions' for the life of this object, and set back after: a job
// thread starts on device 0, and the application thread's current device is the program's.
class OnDevice {
 public:
  explicit OnDevice(const DeviceAccess& d) : rt_(d.rt) {
    if (rt_ == nullptr || d.device < 0 || rt_->cudaGetDevice == nullptr || rt_->cudaSetDevice == nullptr) return;
    if (rt_->cudaGetDevice(&before_) == cudaSuccess && before_ != d.device &&
        rt_->cudaSetDevice(d.device) == cudaSuccess) {
      restore_ = true;
    }
  }
  ~OnDevice() {
    if (restore_) (void)rt_->cudaSetDevice(before_);
  }
  OnDevice(const OnDevice&) = delete;
  OnDevice& operator=(const OnDevice&) = delete;

 private:
  const base::Cudart* rt_;
  int before_ = -1;
  bool restore_ = false;
};

std::string CudaText(const base::Cudart* rt, cudaError_t rc) {
  const char* why = rt->cudaGetErrorString != nullptr ? rt->cudaGetErrorString(rc) : nullptr;
  return std::string(why != nullptr ? why : "no error string") + " (" + std::to_string(static_cast<int>(rc)) + ")";
}

}  // namespace

Status UcxReachesCuda(ucp_context_h context, bool* out) {
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  ucs_status_t st = ucp_context_query(context, &attr);
  if (st != UCS_OK) return UcxError("ucp_context_query", st);
  *out = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  return Status::Ok();
}

Status StageDeviceRegions(std::vector<Region>* regions, const std::function<Status(bool*)>& ucx_reaches_cuda,
                          std::vector<std::unique_ptr<StagedRegion>>* staged, DeviceAccess* device) {
  const base::Cudart* rt = base::CudartIfLoaded();
  std::vector<size_t> on_device;
  DeviceAccess found{rt, -1, 0};
  for (size_t i = 0; i < regions->size(); ++i) {
    const Region& r = (*regions)[i];
    if (r.size == 0) continue;
    const int ordinal = base::DeviceOf(rt, r.ptr);
    if (r.type == MemoryType::kCuda || (r.type == MemoryType::kAuto && ordinal >= 0)) {
      on_device.push_back(i);
      found.bytes += r.size;
      if (found.device < 0) found.device = ordinal;
    }
  }
  if (on_device.empty()) return Status::Ok();
  bool reaches = false;
  Status s = ucx_reaches_cuda(&reaches);
  if (!s.ok()) return s;
  *device = found;
  if (reaches) return Status::Ok();  // moved straight from or into device memory (GPUDirect where there is one)
  for (size_t i : on_device) {
    const std::string& name = (*regions)[i].name;
    if (rt == nullptr) {
      return Status(Code::kUnsupported, "region '" + name +
                                            "' is device memory and neither UCX here supports CUDA nor is a CUDA "
                                            "runtime loaded to stage it");
    }
    if (rt->cudaMemcpy == nullptr) {
      return Status(Code::kUnsupported, "region '" + name + "' is device memory, UCX here does not support CUDA, and " +
                                            "the loaded CUDA runtime (" + rt->soname +
                                            ") has no cudaMemcpy to stage it");
    }
  }
  for (size_t i : on_device) {
    auto stand_in = std::make_unique<StagedRegion>();
    if (s = MapStandIn((*regions)[i], stand_in.get()); !s.ok()) return s;
    (*regions)[i] = Region{(*regions)[i].name, stand_in->host, stand_in->size, MemoryType::kHost};
    staged->push_back(std::move(stand_in));
  }
  // Empty device regions have nothing to copy; as host regions they keep the same-host path open.
  for (Region& r : *regions) {
    if (r.size == 0 && r.type == MemoryType::kCuda) r.type = MemoryType::kHost;
  }
  return Status::Ok();
}

Status DrainDevice(const DeviceAccess& d, const char* when) {
  if (d.rt == nullptr || d.rt->cudaDeviceSynchronize == nullptr) return Status::Ok();
  OnDevice on(d);
  const cudaError_t rc = d.rt->cudaDeviceSynchronize();
  if (rc == cudaSuccess) return Status::Ok();
  return Status(Code::kCuda, std::string(when) + ": cudaDeviceSynchronize: " + CudaText(d.rt, rc));
}

Status CopyStaged(const DeviceAccess& d, const std::vector<std::unique_ptr<StagedRegion>>& staged,
                  cudaMemcpyKind kind, std::chrono::steady_clock::time_point deadline) {
  if (staged.empty()) return Status::Ok();
  OnDevice on(d);
  const bool up = kind == cudaMemcpyHostToDevice;
  if (Status s = DrainDevice(d, up ? "before copying staged regions to the device"
                                   : "before copying device regions to their host stand-ins");
      !s.ok()) {
    return s;
  }
  for (const auto& r : staged) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status(Code::kTimeout, "no time left to copy staged region '" + r->name + "'");
    }
    const cudaError_t rc = up ? d.rt->cudaMemcpy(r->device, r->host, r->size, kind)
                              : d.rt->cudaMemcpy(r->host, r->device, r->size, kind);
    if (rc != cudaSuccess) {
      return Status(Code::kCuda, "region '" + r->name + "': copying " + std::to_string(r->size) + " bytes " +
                                     (up ? "to the device" : "from the device") + " failed: cudaMemcpy: " +
                                     CudaText(d.rt, rc));
    }
  }
  // A copy from pageable memory may return before its DMA has landed: the program's own streams (non-blocking ones
  // too) must find the bytes there once the copy has returned.
  return DrainDevice(d, up ? "after copying staged regions to the device"
                           : "after copying device regions to their host stand-ins");
}

}  // namespace trainmover::transfer::detail
