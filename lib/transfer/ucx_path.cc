// SPDX-License-Identifier: Apache-2.0
// The UCX path (any host; device memory): ucp_get_nbx of chunks, several in flight, into local regions mapped
// ahead of time. Everything but the gets happens when the reader opens (StateClient::Prepare, before the
// switch): the endpoint (UCP_ERR_HANDLING_MODE_PEER and an error callback, so a dead leaver is an error, not
// a hang), the unpacked rkeys, ucp_mem_map of the local host regions (their memh goes with every get, so no
// registration happens at the switch), and one small get of the control block that completes the wire-up.
// Each completion reports its range to the BlockSink, which hashes a block once all of it arrived, while
// the other gets are still in flight.
#include <algorithm>
#include <cstring>
#include <mutex>
#include <set>

#include "checksum.h"
#include "reader.h"
#include "ucx_util.h"

namespace trainmover::transfer::detail {
namespace {

// The workers abandoned because a request on them never completed (WorkerWedged). Built at first use: the shim has
// no global constructors (shim_symbols).
struct Wedged {
  std::mutex mu;
  std::set<ucp_worker_h> workers;
};
Wedged& WedgedWorkers() {
  static Wedged* w = new Wedged;  // never destroyed: read until the process's last StateClient is gone
  return *w;
}

void MarkWedged(ucp_worker_h worker) {
  Wedged& w = WedgedWorkers();
  std::lock_guard<std::mutex> lock(w.mu);
  w.workers.insert(worker);
}

Status Abandoned() {
  return Status(Code::kState,
                "this connection's UCX worker was abandoned (a request to a cut-off peer never completed): prepare "
                "again");
}

class UcxReader : public Reader {
 public:
  UcxReader(std::shared_ptr<UcxWorker> worker, bool peer_errors, const Plan* plan)
      : keep_(std::move(worker)), context_(keep_->context->h), worker_(keep_->h), peer_errors_(peer_errors),
        plan_(plan) {}
  ~UcxReader() override { Teardown(); }

  FetchPath path() const override { return FetchPath::kUcx; }

  Status Open(Clock::time_point deadline) {
    deadline_ = deadline;
    const DescriptorData& d = plan_->d;
    ucp_ep_params_t params{};
    params.field_mask =
        UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(d.worker_address.data());
    params.err_mode = peer_errors_ ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
    params.err_handler.cb = [](void* arg, ucp_ep_h, ucs_status_t status) {
      static_cast<UcxReader*>(arg)->ep_status_ = status;
    };
    params.err_handler.arg = this;
    ucs_status_t st = ucp_ep_create(worker_, &params, &ep_);
    if (st != UCS_OK) {
      ep_ = nullptr;
      return Status(Code::kPeerFailure,
                    std::string("cannot reach the leaver (ucp_ep_create): ") + ucs_status_string(st));
    }
    control_rkey_ = Unpack(d.control.rkey, &st);
    if (control_rkey_ == nullptr) return UcxError("ucp_ep_rkey_unpack(control)", st);
    rkeys_.assign(d.regions.size(), nullptr);
    for (size_t i = 0; i < d.regions.size(); ++i) {
      if (d.regions[i].size == 0) continue;
      rkeys_[i] = Unpack(d.regions[i].rkey, &st);
      if (rkeys_[i] == nullptr) return UcxError("ucp_ep_rkey_unpack(" + d.regions[i].name + ")", st);
    }
    memhs_.assign(plan_->local.size(), nullptr);
    for (size_t i = 0; i < plan_->local.size(); ++i) {
      const Region& r = plan_->local[i];
      if (r.size == 0 || r.type != MemoryType::kHost) continue;  // device memory: UCX registers it per get
      Status s = MapRegion(context_, r.ptr, r.size, r.type, Access::kLocal, &memhs_[i], nullptr, nullptr);
      if (!s.ok()) return Status(s.code(), "local region '" + r.name + "': " + s.message());
    }
    // One round trip now: UCX connects lazily, so without it the wire-up would happen at the first get.
    uint64_t magic = 0;
    Status s = ReadControl(&magic, sizeof(magic), 0, deadline);
    if (!s.ok()) return s;
    if (magic != kControlMagic) return Status(Code::kBadDescriptor, "the control block has no magic");
    return Status::Ok();
  }

  Status ReadAll(const ReadParams& params, BlockSink* sink) override {
    if (WorkerWedged(worker_)) return Abandoned();
    // Gets of a failed earlier Read still in flight would land in this one's counts.
    if (outstanding_ > 0 || stuck_ != nullptr) {
      return Status(Code::kState, "an earlier read failed with reads in flight: prepare again");
    }
    deadline_ = params.deadline;
    request_status_ = UCS_OK;
    // Enough chunks to keep max_outstanding gets in flight even for a small state, each at least a checksum
    // block (so a completion usually completes a block to hash) and at most chunk_bytes.
    uint64_t spread = (plan_->total + params.max_outstanding - 1) / std::max(params.max_outstanding, 1);
    spread = std::max<uint64_t>((spread + kChecksumBlock - 1) / kChecksumBlock * kChecksumBlock, kChecksumBlock);
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(params.chunk_bytes, spread));
    sink_ = sink;
    size_t region = 0;
    uint64_t offset = 0, reported = 0;
    Status s;
    while (s.ok()) {
      while (outstanding_ < params.max_outstanding && region < plan_->local.size()) {
        const Region& r = plan_->local[region];
        if (offset >= r.size) {
          ++region;
          offset = 0;
          continue;
        }
        size_t len = static_cast<size_t>(std::min<uint64_t>(chunk, r.size - offset));
        Get(region, offset, len);
        offset += len;
      }
      if (outstanding_ == 0 && region >= plan_->local.size()) {
        s = Check();
        break;
      }
      ucp_worker_progress(worker_);
      s = Check();
      if (params.progress && sink->bytes() != reported) {
        reported = sink->bytes();
        params.progress(reported, plan_->total);
      }
    }
    if (s.ok() && params.progress && reported != plan_->total) params.progress(sink->bytes(), plan_->total);
    return s;
  }

  Status ReadControl(void* dst, size_t len, uint64_t offset, Clock::time_point deadline) override {
    if (WorkerWedged(worker_)) return Abandoned();
    if (stuck_ != nullptr) return Status(Code::kState, "an earlier control read is still in flight: prepare again");
    deadline_ = deadline;
    // Into a buffer of the reader's own: a read given up at the deadline may still complete (Teardown).
    control_buf_.resize(len);
    ucp_request_param_t p{};
    Status s = Wait(ucp_get_nbx(ep_, control_buf_.data(), len, plan_->d.control.address + offset, control_rkey_, &p),
                    "ucp_get_nbx");
    if (s.ok()) memcpy(dst, control_buf_.data(), len);
    return s;
  }

 private:
  struct Slot {
    UcxReader* reader;
    size_t region;
    uint64_t offset;
    size_t len;
    Slot* next_free;
  };

  // Issues a get; its completion reports the range to the sink. A refusal by UCX is recorded as a failure.
  void Get(size_t region, uint64_t offset, size_t len) {
    const Region& r = plan_->local[region];
    const RemoteRegion& rr = plan_->d.regions[plan_->remote_of[region]];
    Slot* slot = AllocSlot();
    *slot = Slot{this, region, offset, len, nullptr};
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = [](void* request, ucs_status_t status, void* user_data) {
      auto* s = static_cast<Slot*>(user_data);
      s->reader->Complete(s, status);
      ucp_request_free(request);
    };
    p.user_data = slot;
    if (r.type == MemoryType::kCuda) {
      p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
      p.memory_type = UCS_MEMORY_TYPE_CUDA;
    }
    if (memhs_[region] != nullptr) {
      p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMH;
      p.memh = memhs_[region];
    }
    ++outstanding_;
    ucs_status_ptr_t req = ucp_get_nbx(ep_, static_cast<char*>(r.ptr) + offset, len, rr.address + offset,
                                       rkeys_[plan_->remote_of[region]], &p);
    if (req == nullptr) {
      Complete(slot, UCS_OK);
    } else if (UCS_PTR_IS_ERR(req)) {
      Complete(slot, UCS_PTR_STATUS(req));
    }
  }

  void Complete(Slot* slot, ucs_status_t status) {
    --outstanding_;
    if (status == UCS_OK) {
      sink_->Landed(slot->region, slot->offset, slot->len);
    } else if (request_status_ == UCS_OK) {
      request_status_ = status;
    }
    slot->next_free = free_;
    free_ = slot;
  }

  Slot* AllocSlot() {
    if (free_ == nullptr) {
      slots_.push_back(std::make_unique<Slot>());
      return slots_.back().get();
    }
    Slot* s = free_;
    free_ = s->next_free;
    return s;
  }

  ucp_rkey_h Unpack(const std::vector<uint8_t>& buf, ucs_status_t* st) {
    ucp_rkey_h k = nullptr;
    *st = ucp_ep_rkey_unpack(ep_, buf.data(), &k);
    return *st == UCS_OK ? k : nullptr;
  }

  // The first failure seen: peer error, request error, deadline.
  Status Check() {
    if (ep_status_ != UCS_OK) {
      return Status(Code::kPeerFailure, std::string("the leaver's endpoint failed: ") + ucs_status_string(ep_status_));
    }
    if (request_status_ != UCS_OK) {
      return Status(Code::kPeerFailure, std::string("a read failed: ") + ucs_status_string(request_status_));
    }
    if (Clock::now() >= deadline_) return Status(Code::kTimeout, "the transfer did not finish within the timeout");
    return Status::Ok();
  }

  Status Wait(ucs_status_ptr_t r, const char* what) {
    if (r == nullptr) return Status::Ok();
    if (UCS_PTR_IS_ERR(r)) {
      return Status(Code::kPeerFailure, std::string(what) + ": " + ucs_status_string(UCS_PTR_STATUS(r)));
    }
    ucs_status_t st;
    while ((st = ucp_request_check_status(r)) == UCS_INPROGRESS) {
      ucp_worker_progress(worker_);
      Status s = Check();
      if (!s.ok()) {  // cancel does nothing to an RMA: Teardown's forced close purges it, or gives the worker up
        stuck_ = r;
        return s;
      }
    }
    ucp_request_free(r);
    if (st != UCS_OK) return Status(Code::kPeerFailure, std::string(what) + ": " + ucs_status_string(st));
    return Status::Ok();
  }

  // Cancels what is in flight (force-closing the endpoint, which purges the requests still queued on it) and
  // releases everything; bounded in time. A request that outlives the bound could still complete under a later
  // progress (into memory freed by then), and UCX 1.13 aborts the process when it destroys a worker that holds
  // one: the worker is abandoned then (WorkerWedged). The keys and mappings go in any case (no progress there; an
  // RDMA get still in flight then fails on the unmapped region instead of landing in freed memory).
  void Teardown() {
    if (!WorkerWedged(worker_)) CloseEndpoint();  // one abandoned by another reader is never progressed again
    for (ucp_rkey_h& k : rkeys_) {
      if (k != nullptr) ucp_rkey_destroy(k);
      k = nullptr;
    }
    if (control_rkey_ != nullptr) ucp_rkey_destroy(control_rkey_);
    control_rkey_ = nullptr;
    for (ucp_mem_h& h : memhs_) {
      if (h != nullptr) ucp_mem_unmap(context_, h);
      h = nullptr;
    }
  }

  void CloseEndpoint() {
    bool closed = true;
    if (ep_ != nullptr) {
      const bool clean = outstanding_ == 0 && stuck_ == nullptr && ep_status_ == UCS_OK;
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      // UCX refuses a forced close (UCS_ERR_INVALID_PARAM) on an endpoint without peer-failure handling.
      p.flags = clean || !peer_errors_ ? 0 : UCP_EP_CLOSE_FLAG_FORCE;
      ucs_status_ptr_t r = ucp_ep_close_nbx(ep_, &p);
      if (UCS_PTR_IS_ERR(r)) closed = false;
      ep_ = nullptr;
      const auto limit = Clock::now() + std::chrono::seconds(2);
      auto in_flight = [&] {
        return outstanding_ > 0 || (stuck_ && ucp_request_check_status(stuck_) == UCS_INPROGRESS) ||
               (UCS_PTR_IS_PTR(r) && ucp_request_check_status(r) == UCS_INPROGRESS);
      };
      while (in_flight() && Clock::now() < limit) ucp_worker_progress(worker_);
      if (UCS_PTR_IS_PTR(r)) {
        closed = ucp_request_check_status(r) != UCS_INPROGRESS;
        if (!closed) ucp_request_cancel(worker_, r);
        ucp_request_free(r);
      }
    }
    const bool stuck = stuck_ && ucp_request_check_status(stuck_) == UCS_INPROGRESS;
    if (stuck_) ucp_request_free(stuck_);  // released by UCX when (if ever) it completes
    stuck_ = nullptr;
    // An RDMA read may still land without progress: its buffer outlives the reader.
    if (stuck) new std::vector<uint8_t>(std::move(control_buf_));
    if (outstanding_ > 0 || stuck || !closed) MarkWedged(worker_);
  }

  std::shared_ptr<UcxWorker> keep_;  // the worker (and its context) live as long as this reader
  ucp_context_h context_;
  ucp_worker_h worker_;
  bool peer_errors_;
  const Plan* plan_;
  Clock::time_point deadline_;
  BlockSink* sink_ = nullptr;
  ucp_ep_h ep_ = nullptr;
  ucs_status_t ep_status_ = UCS_OK;
  ucs_status_t request_status_ = UCS_OK;
  ucp_rkey_h control_rkey_ = nullptr;
  std::vector<ucp_rkey_h> rkeys_;
  std::vector<ucp_mem_h> memhs_;
  std::vector<std::unique_ptr<Slot>> slots_;
  Slot* free_ = nullptr;
  int outstanding_ = 0;
  std::vector<uint8_t> control_buf_;   // the control reads land here, then are copied out
  ucs_status_ptr_t stuck_ = nullptr;   // a control read given up at its deadline, still in flight
};

}  // namespace

bool WorkerWedged(ucp_worker_h worker) {
  Wedged& w = WedgedWorkers();
  std::lock_guard<std::mutex> lock(w.mu);
  return w.workers.count(worker) > 0;
}

UcxContext::~UcxContext() {
  if (h != nullptr) ucp_cleanup(h);
}

UcxWorker::~UcxWorker() {
  if (h == nullptr) return;
  if (WorkerWedged(h)) {
    new std::shared_ptr<UcxContext>(context);  // given up: the worker, and so its context, stay for good
    return;
  }
  ucp_worker_destroy(h);
}

Status OpenUcxReader(std::shared_ptr<UcxWorker> worker, bool peer_errors, const Plan* plan, Clock::time_point deadline,
                     std::unique_ptr<Reader>* out) {
  auto reader = std::make_unique<UcxReader>(std::move(worker), peer_errors, plan);
  Status s = reader->Open(deadline);
  if (!s.ok()) return s;
  *out = std::move(reader);
  return Status::Ok();
}

}  // namespace trainmover::transfer::detail
