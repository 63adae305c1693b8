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
  return Status::Ok();
}

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
                          std::vector<std::unique_ptr<StagedRegion>>* staged, const base::Cudart** runtime) {
  const base::Cudart* rt = base::CudartIfLoaded();
  std::vector<size_t> device;
  for (size_t i = 0; i < regions->size(); ++i) {
    const Region& r = (*regions)[i];
    if (r.size == 0) continue;
    if (r.type == MemoryType::kCuda || (r.type == MemoryType::kAuto && base::IsDevicePointer(rt, r.ptr))) {
      device.push_back(i);
    }
  }
  // Empty device regions have nothing to copy; as host regions they keep the same-host path open.
  for (Region& r : *regions) {
    if (r.size == 0 && r.type == MemoryType::kCuda) r.type = MemoryType::kHost;
  }
  if (device.empty()) return Status::Ok();
  bool reaches = false;
  Status s = ucx_reaches_cuda(&reaches);
  if (!s.ok()) return s;
  *runtime = rt;
  if (reaches) return Status::Ok();  // moved straight from or into device memory (GPUDirect where there is one)
  for (size_t i : device) {
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
  for (size_t i : device) {
    auto stand_in = std::make_unique<StagedRegion>();
    if (s = MapStandIn((*regions)[i], stand_in.get()); !s.ok()) return s;
    (*regions)[i] = Region{(*regions)[i].name, stand_in->host, stand_in->size, MemoryType::kHost};
    staged->push_back(std::move(stand_in));
  }
  return Status::Ok();
}

Status DrainDevice(const base::Cudart* rt, const char* when) {
  if (rt == nullptr || rt->cudaDeviceSynchronize == nullptr) return Status::Ok();
  const cudaError_t rc = rt->cudaDeviceSynchronize();
  if (rc == cudaSuccess) return Status::Ok();
  return Status(Code::kCuda, std::string(when) + ": cudaDeviceSynchronize: " + CudaText(rt, rc));
}

Status CopyStaged(const base::Cudart* rt, const std::vector<std::unique_ptr<StagedRegion>>& staged,
                  cudaMemcpyKind kind, std::chrono::steady_clock::time_point deadline) {
  if (staged.empty()) return Status::Ok();
  const bool up = kind == cudaMemcpyHostToDevice;
  if (Status s = DrainDevice(rt, up ? "before copying staged regions to the device"
                                    : "before copying device regions to their host stand-ins");
      !s.ok()) {
    return s;
  }
  for (const auto& r : staged) {
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status(Code::kTimeout, "no time left to copy staged region '" + r->name + "'");
    }
    const cudaError_t rc = up ? rt->cudaMemcpy(r->device, r->host, r->size, kind)
                              : rt->cudaMemcpy(r->host, r->device, r->size, kind);
    if (rc != cudaSuccess) {
      return Status(Code::kCuda, "region '" + r->name + "': copying " + std::to_string(r->size) + " bytes " +
                                     (up ? "to the device" : "from the device") + " failed: cudaMemcpy: " +
                                     CudaText(rt, rc));
    }
  }
  // A copy from pageable memory may return before its DMA has landed: the program's own streams (non-blocking ones
  // too) must find the bytes there once the copy has returned.
  return DrainDevice(rt, up ? "after copying staged regions to the device"
                            : "after copying device regions to their host stand-ins");
}

}  // namespace trainmover::transfer::detail
