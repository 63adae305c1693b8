// SPDX-License-Identifier: Apache-2.0
// The same-host path: process_vm_readv straight from the leaver's memory. UCX 1.13 never uses cma for
// ucp_get (cma has only zero-copy operations and UCP's RMA lanes need short/bcopy ones), and with peer error
// handling it excludes the shared-memory transports, so on one host ucp_get is emulated over tcp active
// messages. Reading the leaver's memory with the same system call cma uses keeps the transfer one-sided
// (the leaver's CPU does nothing) and zero-copy (the kernel copies once).
//
// Lanes: the region is cut into checksum blocks (256 KiB, so a block read by one lane is still in its L2
// when the lane hashes it); the lanes take blocks from a shared counter. One lane's copy runs at roughly one
// core's memory-copy speed; several lanes go past it where the host has cores and memory bandwidth to spare.
#include <sys/uio.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "checksum.h"
#include "lanes.h"
#include "reader.h"

namespace trainmover::transfer::detail {
namespace {

// Reads len bytes at `remote` in process `pid` into dst; errno-style failure in *err.
bool CmaRead(pid_t pid, void* dst, uint64_t remote, size_t len, int* err) {
  while (len > 0) {
    iovec l{dst, len};
    iovec r{reinterpret_cast<void*>(remote), len};
    ssize_t n = process_vm_readv(pid, &l, 1, &r, 1, 0);
    if (n <= 0) {
      *err = n < 0 ? errno : EFAULT;
      return false;
    }
    dst = static_cast<char*>(dst) + n;
    remote += static_cast<uint64_t>(n);
    len -= static_cast<size_t>(n);
  }
  return true;
}

Status CmaError(int err, const std::string& what) {
  if (err == ESRCH) return Status(Code::kPeerFailure, "the leaver process is gone (" + what + ")");
  if (err == EPERM || err == ENOSYS || err == EACCES) {
    return Status(Code::kUnsupported, what + ": process_vm_readv not permitted (" + strerror(err) +
                                          "; ptrace_scope, seccomp or another user)");
  }
  return Status(Code::kPeerFailure, what + ": " + strerror(err));
}

class CmaReader : public Reader {
 public:
  CmaReader(const Plan* plan, int lanes)
      : plan_(plan), pid_(static_cast<pid_t>(plan->d.host.pid)), pool_(lanes - 1, "tm-cma-lane") {
    for (size_t i = 0; i < plan->local.size(); ++i) {
      for (size_t b = 0; b < BlockCount(plan->local[i].size); ++b) tasks_.push_back({i, b});
    }
  }

  FetchPath path() const override { return FetchPath::kCma; }

  Status ReadAll(const ReadParams& params, BlockSink* sink) override {
    std::atomic<size_t> next{0};
    std::atomic<int> first_err{0};
    std::atomic<bool> timed_out{false};
    uint64_t reported = 0;
    // Lane 0 is the caller's thread: it alone calls the progress callback, after each of its blocks.
    auto lane = [&](int index) {
      for (size_t t; first_err.load(std::memory_order_relaxed) == 0 && (t = next.fetch_add(1)) < tasks_.size();) {
        if (Clock::now() >= params.deadline) {
          timed_out = true;
          first_err = ETIMEDOUT;
          return;
        }
        const Region& r = plan_->local[tasks_[t].region];
        uint64_t off = static_cast<uint64_t>(tasks_[t].block) * kChecksumBlock;
        size_t len = static_cast<size_t>(std::min<uint64_t>(kChecksumBlock, r.size - off));
        int e = 0;
        uint64_t remote = plan_->d.regions[plan_->remote_of[tasks_[t].region]].address + off;
        if (!CmaRead(pid_, static_cast<char*>(r.ptr) + off, remote, len, &e)) {
          int expected = 0;
          first_err.compare_exchange_strong(expected, e);
          return;
        }
        sink->Landed(tasks_[t].region, off, len);
        if (index == 0 && params.progress && sink->bytes() > reported) {
          reported = sink->bytes();
          params.progress(reported, plan_->total);
        }
      }
    };
    pool_.Run(lane, static_cast<int>(std::max<size_t>(tasks_.size(), 1)));
    if (params.progress && sink->bytes() != reported) params.progress(sink->bytes(), plan_->total);
    if (timed_out) return Status(Code::kTimeout, "the transfer did not finish within the timeout");
    if (first_err.load() != 0) return CmaError(first_err.load(), "reading a region");
    return Status::Ok();
  }

  Status ReadControl(void* dst, size_t len, uint64_t offset, Clock::time_point) override {
    int err = 0;
    if (!CmaRead(pid_, dst, plan_->d.control.address + offset, len, &err)) return CmaError(err, "the control block");
    return Status::Ok();
  }

 private:
  struct Task {
    size_t region;
    size_t block;
  };
  const Plan* plan_;
  pid_t pid_;
  std::vector<Task> tasks_;
  LanePool pool_;
};

}  // namespace

bool CmaEligible(const DescriptorData& d, const std::vector<Region>& local) {
  if (!SameHostAndPidNamespace(d.host, LocalIdentity())) return false;
  for (const Region& r : local) {
    if (r.type != MemoryType::kHost) return false;
  }
  for (const RemoteRegion& r : d.regions) {
    if (r.memory_type != static_cast<uint8_t>(MemoryType::kHost)) return false;
  }
  return true;
}

Status OpenCmaReader(const Plan* plan, int lanes, std::unique_ptr<Reader>* out) {
  uint64_t magic = 0;
  int err = 0;
  if (!CmaRead(static_cast<pid_t>(plan->d.host.pid), &magic, plan->d.control.address, sizeof(magic), &err)) {
    return CmaError(err, "probe");
  }
  if (magic != kControlMagic) return Status(Code::kBadDescriptor, "the control block has no magic");
  // Reader threads for the blocks there are, started now (Prepare) rather than at the switch.
  size_t blocks = 0;
  for (const Region& r : plan->local) blocks += BlockCount(r.size);
  lanes = static_cast<int>(std::clamp<size_t>(blocks, 1, static_cast<size_t>(std::max(lanes, 1))));
  *out = std::make_unique<CmaReader>(plan, lanes);
  return Status::Ok();
}

}  // namespace trainmover::transfer::detail
