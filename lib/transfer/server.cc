// SPDX-License-Identifier: Apache-2.0
// StateServer: the leaver's side (see transfer.h for the contract, docs/transfer.md for the why).
// Expose does everything that can happen before the switch: the UCX mappings and packed rkeys, the descriptor,
// the progress thread that answers UCX gets, and the hash lanes Seal will use. Seal, at the switch point, copies
// staged device regions to their host stand-ins (only where UCX here cannot read device memory), hashes (at memory
// speed, on every lane) and publishes.
#include <poll.h>
#include <sys/prctl.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>

#include "base/crypto.h"
#include "checksum.h"
#include "descriptor.h"
#include "lanes.h"
#include "pages.h"
#include "staging.h"
#include "transfer.h"
#include "ucx_util.h"

namespace trainmover::transfer {

using detail::UcxError;
using Clock = std::chrono::steady_clock;

struct StateServer::Impl {
  ServerOptions options;
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  std::vector<Region> regions;    // as exposed: a staged device region's host stand-in in its place
  std::vector<std::unique_ptr<detail::StagedRegion>> staged;  // device regions UCX here cannot read: Seal fills them
  detail::DeviceAccess device;  // of the device regions (staged or not): Seal drains it, copies `staged`
  std::vector<ucp_mem_h> memhs;   // one per region (null for empty regions)
  std::vector<uint64_t> control;  // the control block (host memory, mapped)
  ucp_mem_h control_memh = nullptr;
  std::vector<uint8_t> descriptor;
  std::vector<uint64_t> checksums;
  uint64_t huge_bytes = 0;  // in huge pages after Expose
  std::unique_ptr<detail::LanePool> hash_lanes;
  std::thread progress;
  std::atomic<bool> stop{false};
  // Held by the progress thread for each ucp_worker_progress call and by Seal while it writes the control
  // block. Over transports without a get of their own (tcp), UCX answers the joiner's get on this thread by
  // copying from our memory (rma_sw.c, ucp_rma_sw_pack_get_reply); the joiner polls the sealed flag while
  // Seal writes it, so without the lock that copy and Seal's writes race (ThreadSanitizer, transfer_fork_tcp).
  // A remote reader of its own (RDMA, cma) is ordered by the flag's release store alone.
  std::mutex serving;
  uint8_t nonce[detail::kNonceBytes] = {};
  bool ptracer_set = false;  // Create named a ptracer; Close withdraws it
  bool closed = false;

  // Serves the joiner's gets (over tcp UCX emulates them with active messages the leaver must answer). Sleeps
  // on the worker's event fd when idle; ucp_worker_signal (Close) wakes it. Each poll is bounded (100 ms) so
  // that the stop flag is seen even if a wake-up were lost.
  void ProgressLoop() {
    int efd = -1;
    if (ucp_worker_get_efd(worker, &efd) != UCS_OK) efd = -1;
    while (!stop.load(std::memory_order_acquire)) {
      while (ProgressOnce() != 0 && !stop.load(std::memory_order_relaxed)) {
      }
      if (efd < 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        continue;
      }
      ucs_status_t st = ucp_worker_arm(worker);
      if (st == UCS_ERR_BUSY) continue;  // more events arrived: progress again
      pollfd pfd{efd, POLLIN, 0};
      (void)poll(&pfd, 1, 100);
    }
  }

  unsigned ProgressOnce() {
    std::lock_guard<std::mutex> lock(serving);
    return ucp_worker_progress(worker);
  }

  // After a failed Expose: nothing exposed, nothing staged (Expose may be tried again).
  void Forget() {
    descriptor.clear();
    regions.clear();
    staged.clear();
    device = {};
    huge_bytes = 0;
  }

  void Unmap() {
    for (ucp_mem_h h : memhs) {
      if (h != nullptr) ucp_mem_unmap(context, h);
    }
    memhs.clear();
    if (control_memh != nullptr) ucp_mem_unmap(context, control_memh);
    control_memh = nullptr;
  }
};

StateServer::StateServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StateServer::~StateServer() { Close(); }

Status StateServer::Create(const ServerOptions& options, std::unique_ptr<StateServer>* out) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (options.hash_threads < 0) return Status(Code::kInvalidArgument, "hash_threads < 0");
  if (options.ptracer_pid != 0) {
    // Yama ptrace_scope 1: only the named process (and its descendants) may read our memory with
    // process_vm_readv. Without Yama the call fails with EINVAL and nothing is needed.
    const unsigned long who = options.ptracer_pid == kAnyPtracer ? static_cast<unsigned long>(PR_SET_PTRACER_ANY)
                                                                 : static_cast<unsigned long>(options.ptracer_pid);
    impl->ptracer_set = prctl(PR_SET_PTRACER, who, 0, 0, 0) == 0;
  }
  if (!base::crypto::RandomBytes(impl->nonce, sizeof(impl->nonce))) return Status(Code::kUcx, "no random bytes");
  Status s = detail::MakeContextAndWorker(options.transports, /*wakeup=*/true, &impl->context, &impl->worker);
  if (!s.ok()) return s;
  out->reset(new StateServer(std::move(impl)));
  return Status::Ok();
}

Status StateServer::Expose(const std::vector<Region>& regions) {
  Impl& m = *impl_;
  if (m.closed) return Status(Code::kState, "server is closed");
  if (!m.descriptor.empty()) return Status(Code::kState, "Expose called twice");
  Status s = detail::ValidateRegions(regions);
  if (!s.ok()) return s;
  // Device regions this UCX cannot read are exposed as host stand-ins that Seal fills (staging.h): no CPU, UCX
  // transport or process_vm_readv ever touches device memory. Refused here before anything is mapped.
  m.regions = regions;
  s = detail::StageDeviceRegions(
      &m.regions, [&m](bool* reaches) { return detail::UcxReachesCuda(m.context, reaches); }, &m.staged, &m.device);
  if (!s.ok()) {
    m.Forget();
    return s;
  }
  detail::DescriptorData d;
  std::memcpy(d.nonce, m.nonce, sizeof(d.nonce));
  m.control.assign(detail::ControlBytes(regions.size()) / 8, 0);
  m.control[0] = detail::kControlMagic;
  m.control[detail::kControlCount] = regions.size();
  MemoryType found;
  s = detail::MapRegion(m.context, m.control.data(), m.control.size() * 8, MemoryType::kHost, detail::Access::kRemoteRead,
                        &m.control_memh, &d.control.rkey, &found);
  if (!s.ok()) {
    m.Forget();
    return s;
  }
  d.control.address = reinterpret_cast<uintptr_t>(m.control.data());
  d.control.size = m.control.size() * 8;
  m.memhs.assign(regions.size(), nullptr);
  // Host regions in huge pages before UCX maps them (a transport that pins memory would make them uncollapsible):
  // the joiner's process_vm_readv then pins 2 MiB at a time (pages.h). kAuto regions once UCX says they are host.
  auto huge = [&](const Region& r) {
    if (m.options.huge_pages) m.huge_bytes += detail::CollapseToHugePages(r);
  };
  for (const Region& r : m.regions) huge(r);
  for (size_t i = 0; i < m.regions.size() && s.ok(); ++i) {
    const Region r = m.regions[i];
    detail::RemoteRegion rr;
    rr.name = r.name;
    rr.address = reinterpret_cast<uintptr_t>(r.ptr);
    rr.size = r.size;
    if (r.size > 0) {
      s = detail::MapRegion(m.context, r.ptr, r.size, r.type, detail::Access::kRemoteRead, &m.memhs[i], &rr.rkey,
                            &found);
      if (!s.ok()) s = Status(s.code(), "region '" + r.name + "': " + s.message());
      rr.memory_type = static_cast<uint8_t>(found);
      if (r.type == MemoryType::kAuto) {
        m.regions[i].type = found;
        huge(m.regions[i]);
      }
    }
    d.regions.push_back(std::move(rr));
  }
  ucp_address_t* address = nullptr;
  size_t address_len = 0;
  if (s.ok()) {
    ucs_status_t st = ucp_worker_get_address(m.worker, &address, &address_len);
    if (st != UCS_OK) s = UcxError("ucp_worker_get_address", st);
  }
  if (s.ok()) {
    d.host = detail::LocalIdentity();
    d.worker_address.assign(reinterpret_cast<uint8_t*>(address), reinterpret_cast<uint8_t*>(address) + address_len);
    ucp_worker_release_address(m.worker, address);
    s = detail::EncodeDescriptor(d, m.options.auth_key, &m.descriptor);
  }
  if (!s.ok()) {
    m.Unmap();
    m.Forget();
    return s;
  }
  // The lanes Seal hashes on, started now: at the switch point they only need waking.
  m.hash_lanes = std::make_unique<detail::LanePool>(detail::DefaultLanes(m.options.hash_threads) - 1, "tm-seal-lane");
  m.progress = detail::StartLaneThread("tm-xfer-server", [&m] { m.ProgressLoop(); });
  return Status::Ok();
}

const std::vector<uint8_t>& StateServer::Descriptor() const { return impl_->descriptor; }
const std::vector<uint64_t>& StateServer::Checksums() const { return impl_->checksums; }
uint64_t StateServer::HugePageBytes() const { return impl_->huge_bytes; }
uint64_t StateServer::DeviceBytes() const { return impl_->device.bytes; }
uint64_t StateServer::StagedBytes() const {
  uint64_t n = 0;
  for (const auto& r : impl_->staged) n += r->size;
  return n;
}

Status StateServer::Seal(std::vector<uint64_t>* checksums) {
  Impl& m = *impl_;
  if (m.descriptor.empty() || m.closed) return Status(Code::kState, "Seal before Expose or after Close");
  // The device drained (the program's work on any stream done), the staged regions' bytes copied to their stand-ins:
  // what the client reads and what is hashed. Unbounded: CUDA has no bounded wait for a device (transfer.h).
  Status s = m.staged.empty()
                 ? detail::DrainDevice(m.device, "before sealing the device regions")
                 : detail::CopyStaged(m.device, m.staged, cudaMemcpyDeviceToHost, Clock::time_point::max());
  if (s.ok()) s = detail::ChecksumRegions(m.regions, m.options.hash_threads, m.hash_lanes.get(), &m.checksums);
  std::lock_guard<std::mutex> lock(m.serving);  // the control block's writes (see Impl::serving)
  if (!s.ok()) {  // tell a client already reading not to wait for checksums that will never come
    std::atomic_ref<uint64_t>(m.control[detail::kControlSealed]).store(detail::kSealFailed, std::memory_order_release);
    return s;
  }
  for (size_t i = 0; i < m.checksums.size(); ++i) m.control[detail::kControlHeaderWords + i] = m.checksums[i];
  uint8_t mac[detail::kMacBytes];
  detail::ChecksumMac(m.options.auth_key, m.nonce, m.checksums, mac);
  std::memcpy(&m.control[detail::kControlHeaderWords + m.checksums.size()], mac, sizeof(mac));
  // The client reads the flag, then (after that read completed) the checksums: release ordering suffices.
  std::atomic_ref<uint64_t>(m.control[detail::kControlSealed]).store(1, std::memory_order_release);
  if (checksums != nullptr) *checksums = m.checksums;
  return Status::Ok();
}

void StateServer::Close() {
  if (!impl_ || impl_->closed) return;
  Abandon();
  ucp_worker_destroy(impl_->worker);
  ucp_cleanup(impl_->context);
}

void StateServer::Abandon() {
  if (!impl_ || impl_->closed) return;
  Impl& m = *impl_;
  m.closed = true;
  if (m.progress.joinable()) {
    m.stop.store(true, std::memory_order_release);
    (void)ucp_worker_signal(m.worker);
    m.progress.join();
  }
  m.hash_lanes.reset();
  m.Unmap();
  if (m.ptracer_set) (void)prctl(PR_SET_PTRACER, 0, 0, 0, 0);
}

}  // namespace trainmover::transfer
