// SPDX-License-Identifier: Apache-2.0
// Device regions moved through host memory where UCX here cannot reach device memory (Debian's UCX is built
// without CUDA), on both sides of the hand-off (docs/transfer.md, "Device memory"): the leaver's StateServer
// exposes a host copy of each device region that Seal fills, the joiner's PreparedFetch reads into a host buffer that
// Read copies to the device. Both go through the CUDA runtime the application loaded (base/cudart.h).
#ifndef TRAINMOVER_LIB_TRANSFER_STAGING_H_
#define TRAINMOVER_LIB_TRANSFER_STAGING_H_

#include <ucp/api/ucp.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "base/cudart.h"
#include "transfer.h"

namespace trainmover::transfer::detail {

// A device region's host stand-in: `host`, an anonymous mapping of its own (from 2 MiB on, starting on a 2 MiB
// boundary, so that CollapseToHugePages can back every whole 2 MiB of it), unmapped with this object.
struct StagedRegion {
  std::string name;
  void* device = nullptr;
  void* host = nullptr;
  size_t size = 0;
  size_t mapped = 0;  // bytes mapped at `host` (size rounded up to pages)

  StagedRegion() = default;
  StagedRegion(const StagedRegion&) = delete;
  StagedRegion& operator=(const StagedRegion&) = delete;
  ~StagedRegion();
};

// Whether UCX (this context, its configured transports) can read and write CUDA device memory.
Status UcxReachesCuda(ucp_context_h context, bool* out);

// The regions of `*regions` that are device memory (kCuda, or kAuto that the loaded runtime calls device memory)
// and have bytes are staged when `ucx_reaches_cuda` (asked only when there is one) says no: each is replaced in
// `*regions` by its host stand-in (kHost, so huge pages, populating and the same-host path apply to it as to any host
// region) and added to `*staged`. Refused (kUnsupported, naming the region) without a loaded runtime with cudaMemcpy.
// Empty device regions become host regions (nothing to copy). *runtime: the loaded runtime when any region is device
// memory (the caller drains the device with it, staged or not), else unchanged.
Status StageDeviceRegions(std::vector<Region>* regions, const std::function<Status(bool*)>& ucx_reaches_cuda,
                          std::vector<std::unique_ptr<StagedRegion>>* staged, const base::Cudart** runtime);

// Copies every staged region one way (cudaMemcpyDeviceToHost: the device's bytes into the host stand-ins;
// cudaMemcpyHostToDevice: back), one blocking cudaMemcpy each, the device drained before and after (the program's
// work in flight on any stream, non-blocking ones too, is ordered around the copies). kCuda naming the region on a
// failure; kTimeout when `deadline` passes between regions (a copy cannot be interrupted).
Status CopyStaged(const base::Cudart* rt, const std::vector<std::unique_ptr<StagedRegion>>& staged,
                  cudaMemcpyKind kind, std::chrono::steady_clock::time_point deadline);

// Every stream of the device drained (cudaDeviceSynchronize); nothing to do without a runtime or that call.
Status DrainDevice(const base::Cudart* rt, const char* when);

}  // namespace trainmover::transfer::detail

#endif  // TRAINMOVER_LIB_TRANSFER_STAGING_H_
