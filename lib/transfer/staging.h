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

// How a side reaches its device regions: the loaded runtime and the device the regions are on (the first one's:
// one device per process, as the recovery's snapshots assume), and their bytes. rt is null without device regions.
struct DeviceAccess {
  const base::Cudart* rt = nullptr;
  int device = -1;
  uint64_t bytes = 0;  // of every device region with bytes, staged or not
};

// Whether UCX (this context, its configured transports) can read and write CUDA device memory.
Status UcxReachesCuda(ucp_context_h context, bool* out);

// The regions of `*regions` that are device memory (kCuda, or kAuto that the loaded runtime calls device memory) and
// have bytes are staged when `ucx_reaches_cuda` (asked only when there is one) says no: each is replaced in
// `*regions` by its host stand-in (kHost, so huge pages, populating and the same-host path apply to it as to any host
// region; its pages are committed here, so that a host short of memory refuses now and not at the switch) and added
// to `*staged`; an empty device region becomes a host region then (nothing to copy). Refused (kUnsupported, naming
// the region) without a loaded runtime with cudaMemcpy, or without the host memory. *device: how to reach them
// (unchanged without device regions); the caller drains the device with it, staged or not.
Status StageDeviceRegions(std::vector<Region>* regions, const std::function<Status(bool*)>& ucx_reaches_cuda,
                          std::vector<std::unique_ptr<StagedRegion>>* staged, DeviceAccess* device);

// Copies every staged region one way (cudaMemcpyDeviceToHost: the device's bytes into the host stand-ins;
// cudaMemcpyHostToDevice: back), one blocking cudaMemcpy each, the device drained before and after (the program's
// work in flight on any stream, non-blocking ones too, is ordered around the copies). kCuda naming the region on a
// failure; kTimeout when `deadline` passes between regions (neither a copy nor the drain can be interrupted: CUDA has
// no bounded wait for a device).
Status CopyStaged(const DeviceAccess& device, const std::vector<std::unique_ptr<StagedRegion>>& staged,
                  cudaMemcpyKind kind, std::chrono::steady_clock::time_point deadline);

// Every stream of the regions' device drained (cudaDeviceSynchronize); nothing to do without device regions.
Status DrainDevice(const DeviceAccess& device, const char* when);

}  // namespace trainmover::transfer::detail

#endif  // TRAINMOVER_LIB_TRANSFER_STAGING_H_
