// SPDX-License-Identifier: Apache-2.0
// The joiner's read paths behind one interface: the same-host path (cma_path.cc, process_vm_readv) and the
// UCX path (ucx_path.cc, ucp_get_nbx). A path is opened by StateClient::Prepare, before the switch: whatever
// it needs besides the bytes (endpoint, unpacked rkeys, local registrations, reader threads, a first
// round trip to the leaver) is set up then, so that Read at the switch moves bytes only. Both paths report
// every range that lands to a BlockSink, which hashes each checksum block as soon as it is complete, on the
// thread that completed it (the bytes are still in cache): verification overlaps the reads.
#ifndef TRAINMOVER_LIB_TRANSFER_READER_H_
#define TRAINMOVER_LIB_TRANSFER_READER_H_

#include <ucp/api/ucp.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "descriptor.h"
#include "transfer.h"

namespace trainmover::transfer::detail {

using Clock = std::chrono::steady_clock;

class LanePool;

// What one prepared fetch reads: local region i receives remote region remote_of[i] (same name and size).
struct Plan {
  DescriptorData d;
  std::vector<Region> local;
  std::vector<size_t> remote_of;
  uint64_t total = 0;
};

// Counts the bytes landed per checksum block; the call that completes a host block hashes it.
class BlockSink {
 public:
  // Before every read. hash=false: count only (FetchOptions::verify off).
  void Reset(const Plan* plan, bool hash);
  // A range of local region `region` landed. Thread-safe; hashes blocks it completes.
  void Landed(size_t region, uint64_t offset, uint64_t len);
  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }
  // Region checksums after every byte landed; regions not hashed on arrival (device memory) are hashed here.
  Status Checksums(LanePool* pool, int threads, std::vector<uint64_t>* out);

 private:
  const Plan* plan_ = nullptr;
  bool hash_ = false;
  std::vector<std::vector<uint64_t>> hashes_;                        // per region, per block
  std::vector<std::unique_ptr<std::atomic<uint64_t>[]>> remaining_;  // per region, per block: bytes to land
  std::atomic<uint64_t> bytes_{0};
};

struct ReadParams {
  size_t chunk_bytes = 0;
  int max_outstanding = 1;
  Clock::time_point deadline;
  // Called on the reading thread (the caller's), never concurrently.
  std::function<void(uint64_t done, uint64_t total)> progress;
};

class Reader {
 public:
  virtual ~Reader() = default;
  virtual FetchPath path() const = 0;
  // Moves every byte of the plan into the local regions, reporting to `sink`. Bounded by params.deadline.
  virtual Status ReadAll(const ReadParams& params, BlockSink* sink) = 0;
  // A small blocking read of the leaver's control block; `offset` in bytes from its start. The joiner never
  // writes into the leaver: the leaver learns the outcome from the coordinator (VERIFIED).
  virtual Status ReadControl(void* dst, size_t len, uint64_t offset, Clock::time_point deadline) = 0;
};

// Same host, same pid namespace, host memory on both sides.
bool CmaEligible(const DescriptorData& d, const std::vector<Region>& local);
// Probes the leaver (reads the control block's magic); kUnsupported when the kernel refuses (ptrace rules),
// kPeerFailure when the leaver is gone. `lanes` threads read at once (the caller's and lanes - 1 helpers).
Status OpenCmaReader(const Plan* plan, int lanes, std::unique_ptr<Reader>* out);
// A StateClient's UCX context, cleaned up with the last worker made of it (never, once one was given up).
struct UcxContext {
  ucp_context_h h = nullptr;
  ~UcxContext();
};
// A StateClient's worker for one leaver process (StateClient::Impl::WorkerFor): a leaver that is cut off takes no
// other leaver's connections down with its worker when that is given up (WorkerWedged). Shared by the readers on it,
// destroyed with the last of them, unless given up: then it and its context stay as they are for good.
struct UcxWorker {
  std::shared_ptr<UcxContext> context;
  ucp_worker_h h = nullptr;
  ~UcxWorker();
};
// Endpoint to the leaver's worker, rkeys unpacked, local host regions mapped, wire-up finished by a first
// read of the control block's magic. The worker is driven by the calling thread only.
Status OpenUcxReader(std::shared_ptr<UcxWorker> worker, bool peer_errors, const Plan* plan, Clock::time_point deadline,
                     std::unique_ptr<Reader>* out);
// Whether `worker` was abandoned: a request on it (a get, a control read given up at its deadline, the endpoint's
// close) was still in flight after its reader's forced close and bounded teardown (a peer cut off, not reset: nothing
// completes it). Progressing such a worker again could complete that request into memory freed since, and UCX 1.13
// aborts the process (`ucs_hlist_is_empty(proto_reqs)` in ucp_ep_destroy_base) when it is destroyed; so no reader
// progresses it again (their reads fail with kState, "prepare again"), and its owner neither destroys it nor
// prepares on it, but makes a new one. Seen at a rank's exit in `multihost_cut`. The other readers on that worker
// (connections to the same leaver process) then end without an orderly close.
bool WorkerWedged(ucp_worker_h worker);

}  // namespace trainmover::transfer::detail

#endif  // TRAINMOVER_LIB_TRANSFER_READER_H_
