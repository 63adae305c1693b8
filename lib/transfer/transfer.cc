// SPDX-License-Identifier: Apache-2.0
// StateServer and StateClient over UCX (see transfer.h for the contract, docs/transfer.md for the why).
#include "transfer.h"

#include <poll.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <thread>

#include "base/thread.h"
#include "descriptor.h"

namespace trainmover::transfer {
namespace {

using Clock = std::chrono::steady_clock;

Status UcxError(const std::string& what, ucs_status_t st) {
  return Status(Code::kUcx, what + ": " + ucs_status_string(st));
}

// A context with RMA (and wake-up for the server's sleeping progress thread). Transports come from
// `transports` when given, else from UCX_TLS/UCX's defaults. Unless the user chose otherwise with
// UCX_KEEPALIVE_INTERVAL, peers are checked every second so that a dead leaver is noticed quickly.
Status MakeContext(const std::string& transports, bool wakeup, ucp_context_h* context) {
  ucp_config_t* config = nullptr;
  ucs_status_t st = ucp_config_read(nullptr, nullptr, &config);
  if (st != UCS_OK) return UcxError("ucp_config_read", st);
  if (!transports.empty()) {
    st = ucp_config_modify(config, "TLS", transports.c_str());
    if (st != UCS_OK) {
      ucp_config_release(config);
      return Status(Code::kInvalidArgument, "bad UCX transports '" + transports + "': " + ucs_status_string(st));
    }
  }
  if (std::getenv("UCX_KEEPALIVE_INTERVAL") == nullptr) (void)ucp_config_modify(config, "KEEPALIVE_INTERVAL", "1s");
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA | (wakeup ? UCP_FEATURE_WAKEUP : 0);
  st = ucp_init(&params, config, context);
  ucp_config_release(config);
  if (st != UCS_OK) return UcxError("ucp_init", st);
  return Status::Ok();
}

Status MakeWorker(ucp_context_h context, ucp_worker_h* worker) {
  ucp_worker_params_t params{};
  params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  params.thread_mode = UCS_THREAD_MODE_SERIALIZED;  // one thread at a time, not always the same one
  ucs_status_t st = ucp_worker_create(context, &params, worker);
  if (st != UCS_OK) return UcxError("ucp_worker_create", st);
  return Status::Ok();
}

Status ValidateRegions(const std::vector<Region>& regions) {
  if (regions.size() > kMaxRegions) return Status(Code::kInvalidArgument, "too many regions");
  std::set<std::string> names;
  for (const Region& r : regions) {
    if (r.name.empty() || r.name.size() > 255) {
      return Status(Code::kInvalidArgument, "region name must be 1..255 bytes: '" + r.name + "'");
    }
    if (!names.insert(r.name).second) return Status(Code::kInvalidArgument, "duplicate region name '" + r.name + "'");
    if (r.ptr == nullptr && r.size > 0) return Status(Code::kInvalidArgument, "region '" + r.name + "' is null");
    if (r.type > MemoryType::kAuto) return Status(Code::kInvalidArgument, "region '" + r.name + "': bad type");
  }
  return Status::Ok();
}

ucs_memory_type_t UcsType(MemoryType t) { return t == MemoryType::kCuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST; }

Status SealFailed() { return Status(Code::kPeerFailure, "the leaver could not checksum its regions (Seal failed)"); }

uint64_t AtomicLoad(uint64_t* p) { return std::atomic_ref<uint64_t>(*p).load(std::memory_order_acquire); }

}  // namespace

const char* CodeName(Code code) {
  switch (code) {
    case Code::kOk:
      return "ok";
    case Code::kInvalidArgument:
      return "invalid argument";
    case Code::kMismatch:
      return "region mismatch";
    case Code::kChecksumMismatch:
      return "checksum mismatch";
    case Code::kPeerFailure:
      return "peer failure";
    case Code::kTimeout:
      return "timeout";
    case Code::kUnsupported:
      return "unsupported";
    case Code::kBadDescriptor:
      return "bad descriptor";
    case Code::kState:
      return "wrong state";
    case Code::kUcx:
      return "UCX error";
  }
  return "unknown";
}

const char* FetchPathName(FetchPath path) {
  switch (path) {
    case FetchPath::kAuto:
      return "auto";
    case FetchPath::kUcx:
      return "ucx";
    case FetchPath::kCma:
      return "cma";
  }
  return "unknown";
}

std::string Status::ToString() const { return ok() ? "ok" : std::string(CodeName(code_)) + ": " + message_; }

// ---------------------------------------------------------------------------------------------------
// Server

struct StateServer::Impl {
  ServerOptions options;
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
  std::vector<Region> regions;
  std::vector<ucp_mem_h> memhs;   // one per region (null for empty regions)
  std::vector<uint64_t> control;  // the control block (host memory, mapped)
  ucp_mem_h control_memh = nullptr;
  std::vector<uint8_t> descriptor;
  std::vector<uint64_t> checksums;
  std::thread progress;
  std::atomic<bool> stop{false};
  bool closed = false;

  void ProgressLoop() {
    int efd = -1;
    if (ucp_worker_get_efd(worker, &efd) != UCS_OK) efd = -1;
    while (!stop.load(std::memory_order_acquire)) {
      while (ucp_worker_progress(worker) != 0) {
      }
      if (efd < 0) {
        std::this_thread::sleep_for(std::chrono::microseconds(100));
        continue;
      }
      ucs_status_t st = ucp_worker_arm(worker);
      if (st == UCS_ERR_BUSY) continue;  // more events arrived: progress again
      pollfd pfd{efd, POLLIN, 0};
      (void)poll(&pfd, 1, 100);  // ucp_worker_signal (Close) or remote activity wakes us
    }
  }
};

StateServer::StateServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StateServer::~StateServer() { Close(); }

Status StateServer::Create(const ServerOptions& options, std::unique_ptr<StateServer>* out) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  if (options.hash_threads < 0) return Status(Code::kInvalidArgument, "hash_threads < 0");
  if (options.allow_any_ptracer) (void)prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
  Status s = MakeContext(options.transports, /*wakeup=*/true, &impl->context);
  if (!s.ok()) return s;
  s = MakeWorker(impl->context, &impl->worker);
  if (!s.ok()) {
    ucp_cleanup(impl->context);
    return s;
  }
  out->reset(new StateServer(std::move(impl)));
  return Status::Ok();
}

namespace {

// Maps [ptr, ptr+size) and packs its rkey. `type` kAuto lets UCX detect; *found reports what it is.
Status MapRegion(ucp_context_h context, void* ptr, size_t size, MemoryType type, ucp_mem_h* memh,
                 std::vector<uint8_t>* rkey, MemoryType* found) {
  ucp_mem_map_params_t params{};
  params.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
  params.address = ptr;
  params.length = size;
  if (type != MemoryType::kAuto) {
    params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
    params.memory_type = UcsType(type);
  }
  ucs_status_t st = ucp_mem_map(context, &params, memh);
  if (st != UCS_OK) return UcxError("ucp_mem_map", st);
  ucp_mem_attr_t attr{};
  attr.field_mask = UCP_MEM_ATTR_FIELD_MEM_TYPE;
  *found = type;
  if (ucp_mem_query(*memh, &attr) == UCS_OK) {
    *found = attr.mem_type == UCS_MEMORY_TYPE_CUDA || attr.mem_type == UCS_MEMORY_TYPE_CUDA_MANAGED ? MemoryType::kCuda
                                                                                                    : MemoryType::kHost;
  }
  if (*found == MemoryType::kAuto) *found = MemoryType::kHost;
  void* buf = nullptr;
  size_t len = 0;
  st = ucp_rkey_pack(context, *memh, &buf, &len);
  if (st != UCS_OK) {
    ucp_mem_unmap(context, *memh);
    *memh = nullptr;
    return UcxError("ucp_rkey_pack", st);
  }
  rkey->assign(static_cast<uint8_t*>(buf), static_cast<uint8_t*>(buf) + len);
  ucp_rkey_buffer_release(buf);
  return Status::Ok();
}

}  // namespace

Status StateServer::Expose(const std::vector<Region>& regions) {
  Impl& m = *impl_;
  if (m.closed) return Status(Code::kState, "server is closed");
  if (!m.descriptor.empty()) return Status(Code::kState, "Expose called twice");
  Status s = ValidateRegions(regions);
  if (!s.ok()) return s;
  detail::DescriptorData d;
  m.control.assign(detail::kControlHeaderWords + regions.size(), 0);
  m.control[0] = detail::kControlMagic;
  m.control[detail::kControlCount] = regions.size();
  MemoryType found;
  s = MapRegion(m.context, m.control.data(), m.control.size() * 8, MemoryType::kHost, &m.control_memh, &d.control.rkey,
                &found);
  if (!s.ok()) return s;
  d.control.address = reinterpret_cast<uintptr_t>(m.control.data());
  d.control.size = m.control.size() * 8;
  m.regions = regions;
  m.memhs.assign(regions.size(), nullptr);
  for (size_t i = 0; i < regions.size() && s.ok(); ++i) {
    const Region& r = regions[i];
    detail::RemoteRegion rr;
    rr.name = r.name;
    rr.address = reinterpret_cast<uintptr_t>(r.ptr);
    rr.size = r.size;
    if (r.size > 0) {
      s = MapRegion(m.context, r.ptr, r.size, r.type, &m.memhs[i], &rr.rkey, &found);
      if (!s.ok()) s = Status(s.code(), "region '" + r.name + "': " + s.message());
      rr.memory_type = static_cast<uint8_t>(found);
      if (r.type == MemoryType::kAuto) m.regions[i].type = found;
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
    s = detail::EncodeDescriptor(d, &m.descriptor);
  }
  if (!s.ok()) {
    for (ucp_mem_h h : m.memhs) {
      if (h != nullptr) ucp_mem_unmap(m.context, h);
    }
    m.memhs.clear();
    ucp_mem_unmap(m.context, m.control_memh);
    m.control_memh = nullptr;
    m.descriptor.clear();
    return s;
  }
  m.progress = base::StartThread("tm-ucx-progress", [&m] { m.ProgressLoop(); });
  return Status::Ok();
}

const std::vector<uint8_t>& StateServer::Descriptor() const { return impl_->descriptor; }
const std::vector<uint64_t>& StateServer::Checksums() const { return impl_->checksums; }

Status StateServer::Seal(std::vector<uint64_t>* checksums) {
  Impl& m = *impl_;
  if (m.descriptor.empty() || m.closed) return Status(Code::kState, "Seal before Expose or after Close");
  Status s = detail::ChecksumRegions(m.regions, m.options.hash_threads, &m.checksums);
  if (!s.ok()) {  // tell a client already reading not to wait for checksums that will never come
    std::atomic_ref<uint64_t>(m.control[detail::kControlSealed]).store(detail::kSealFailed, std::memory_order_release);
    return s;
  }
  for (size_t i = 0; i < m.checksums.size(); ++i) m.control[detail::kControlHeaderWords + i] = m.checksums[i];
  // The client reads the flag, then (after that read completed) the checksums: release ordering suffices.
  std::atomic_ref<uint64_t>(m.control[detail::kControlSealed]).store(1, std::memory_order_release);
  if (checksums != nullptr) *checksums = m.checksums;
  return Status::Ok();
}

Status StateServer::WaitClientDone(int timeout_ms, bool* client_ok) {
  Impl& m = *impl_;
  if (m.descriptor.empty() || m.closed) return Status(Code::kState, "WaitClientDone before Expose or after Close");
  auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  for (;;) {
    uint64_t done = AtomicLoad(&m.control[detail::kControlClientDone]);
    if (done != 0) {
      if (client_ok != nullptr) *client_ok = done == 1;
      return Status::Ok();
    }
    if (Clock::now() >= deadline) return Status(Code::kTimeout, "the client did not report completion in time");
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

void StateServer::Close() {
  if (!impl_ || impl_->closed) return;
  Impl& m = *impl_;
  m.closed = true;
  if (m.progress.joinable()) {
    m.stop.store(true, std::memory_order_release);
    (void)ucp_worker_signal(m.worker);
    m.progress.join();
  }
  for (ucp_mem_h h : m.memhs) {
    if (h != nullptr) ucp_mem_unmap(m.context, h);
  }
  m.memhs.clear();
  if (m.control_memh != nullptr) ucp_mem_unmap(m.context, m.control_memh);
  m.control_memh = nullptr;
  ucp_worker_destroy(m.worker);
  ucp_cleanup(m.context);
}

// ---------------------------------------------------------------------------------------------------
// Client

struct StateClient::Impl {
  ClientOptions options;
  ucp_context_h context = nullptr;
  ucp_worker_h worker = nullptr;
};

StateClient::StateClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StateClient::~StateClient() {
  if (impl_) {
    ucp_worker_destroy(impl_->worker);
    ucp_cleanup(impl_->context);
  }
}

Status StateClient::Create(const ClientOptions& options, std::unique_ptr<StateClient>* out) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  Status s = MakeContext(options.transports, /*wakeup=*/false, &impl->context);
  if (!s.ok()) return s;
  s = MakeWorker(impl->context, &impl->worker);
  if (!s.ok()) {
    ucp_cleanup(impl->context);
    return s;
  }
  out->reset(new StateClient(std::move(impl)));
  return Status::Ok();
}

namespace {

// One Fetch: the endpoint, the rkeys, the requests in flight. Every wait is bounded by `deadline`.
class Session {
 public:
  Session(ucp_worker_h worker, bool peer_errors, Clock::time_point deadline)
      : worker_(worker), peer_errors_(peer_errors), deadline_(deadline) {}
  ~Session() { Teardown(); }

  Status Connect(const detail::DescriptorData& d) {
    ucp_ep_params_t params{};
    params.field_mask =
        UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
    params.address = reinterpret_cast<const ucp_address_t*>(d.worker_address.data());
    params.err_mode = peer_errors_ ? UCP_ERR_HANDLING_MODE_PEER : UCP_ERR_HANDLING_MODE_NONE;
    params.err_handler.cb = [](void* arg, ucp_ep_h, ucs_status_t status) {
      static_cast<Session*>(arg)->ep_status_ = status;
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
    return Status::Ok();
  }

  ucp_rkey_h rkey(size_t i) const { return rkeys_[i]; }
  ucp_rkey_h control_rkey() const { return control_rkey_; }

  // Issues a get of len bytes; the completion adds len to bytes_done(). Fails at once if UCX refuses.
  Status Get(void* dst, size_t len, uint64_t remote, ucp_rkey_h rkey, MemoryType local_type) {
    Slot* slot = AllocSlot();
    slot->session = this;
    slot->len = len;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = [](void* request, ucs_status_t status, void* user_data) {
      auto* s = static_cast<Slot*>(user_data);
      s->session->Complete(s, status);
      ucp_request_free(request);
    };
    p.user_data = slot;
    if (local_type == MemoryType::kCuda) {
      p.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
      p.memory_type = UCS_MEMORY_TYPE_CUDA;
    }
    ++outstanding_;
    ucs_status_ptr_t r = ucp_get_nbx(ep_, dst, len, remote, rkey, &p);
    if (r == nullptr) {
      Complete(slot, UCS_OK);
    } else if (UCS_PTR_IS_ERR(r)) {
      Complete(slot, UCS_PTR_STATUS(r));
    }
    return Status::Ok();
  }

  // Puts len bytes from src (which must stay valid until completion; waited for here) and flushes.
  Status PutAndFlush(const void* src, size_t len, uint64_t remote, ucp_rkey_h rkey) {
    ucp_request_param_t p{};
    ucs_status_ptr_t r = ucp_put_nbx(ep_, src, len, remote, rkey, &p);
    Status s = Wait(r, "ucp_put_nbx");
    if (!s.ok()) return s;
    return Wait(ucp_ep_flush_nbx(ep_, &p), "ucp_ep_flush_nbx");
  }

  // Blocking get (small reads of the control block).
  Status GetSync(void* dst, size_t len, uint64_t remote, ucp_rkey_h rkey) {
    ucp_request_param_t p{};
    return Wait(ucp_get_nbx(ep_, dst, len, remote, rkey, &p), "ucp_get_nbx");
  }

  // Progresses once; returns the first failure seen (peer error, request error, deadline).
  Status Poll() {
    ucp_worker_progress(worker_);
    return Check();
  }

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

  int outstanding() const { return outstanding_; }
  uint64_t bytes_done() const { return bytes_done_; }

  // Cancels what is in flight (force-closing the endpoint) and releases everything; bounded in time.
  void Teardown() {
    for (ucp_rkey_h& k : rkeys_) {
      if (k != nullptr) ucp_rkey_destroy(k);
      k = nullptr;
    }
    if (control_rkey_ != nullptr) ucp_rkey_destroy(control_rkey_);
    control_rkey_ = nullptr;
    if (ep_ == nullptr) return;
    bool clean = outstanding_ == 0 && ep_status_ == UCS_OK;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = clean ? 0 : UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t r = ucp_ep_close_nbx(ep_, &p);
    ep_ = nullptr;
    auto limit = Clock::now() + std::chrono::seconds(2);
    if (UCS_PTR_IS_PTR(r)) {
      while (ucp_request_check_status(r) == UCS_INPROGRESS && Clock::now() < limit) ucp_worker_progress(worker_);
      if (ucp_request_check_status(r) == UCS_INPROGRESS) ucp_request_cancel(worker_, r);
      ucp_request_free(r);
    }
    while (outstanding_ > 0 && Clock::now() < limit) ucp_worker_progress(worker_);
  }

 private:
  struct Slot {
    Session* session;
    size_t len;
    Slot* next_free;
  };

  ucp_rkey_h Unpack(const std::vector<uint8_t>& buf, ucs_status_t* st) {
    ucp_rkey_h k = nullptr;
    *st = ucp_ep_rkey_unpack(ep_, buf.data(), &k);
    return *st == UCS_OK ? k : nullptr;
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

  void Complete(Slot* slot, ucs_status_t status) {
    --outstanding_;
    if (status == UCS_OK) {
      bytes_done_ += slot->len;
    } else if (request_status_ == UCS_OK) {
      request_status_ = status;
    }
    slot->next_free = free_;
    free_ = slot;
  }

  Status Wait(ucs_status_ptr_t r, const char* what) {
    if (r == nullptr) return Status::Ok();
    if (UCS_PTR_IS_ERR(r))
      return Status(Code::kPeerFailure, std::string(what) + ": " + ucs_status_string(UCS_PTR_STATUS(r)));
    ucs_status_t st;
    while ((st = ucp_request_check_status(r)) == UCS_INPROGRESS) {
      ucp_worker_progress(worker_);
      Status s = Check();
      if (!s.ok()) {
        ucp_request_cancel(worker_, r);
        while (ucp_request_check_status(r) == UCS_INPROGRESS && Clock::now() < deadline_ + std::chrono::seconds(2)) {
          ucp_worker_progress(worker_);
        }
        ucp_request_free(r);
        return s;
      }
    }
    ucp_request_free(r);
    if (st != UCS_OK) return Status(Code::kPeerFailure, std::string(what) + ": " + ucs_status_string(st));
    return Status::Ok();
  }

  ucp_worker_h worker_;
  bool peer_errors_;
  Clock::time_point deadline_;
  ucp_ep_h ep_ = nullptr;
  ucs_status_t ep_status_ = UCS_OK;
  ucs_status_t request_status_ = UCS_OK;
  ucp_rkey_h control_rkey_ = nullptr;
  std::vector<ucp_rkey_h> rkeys_;
  std::vector<std::unique_ptr<Slot>> slots_;
  Slot* free_ = nullptr;
  int outstanding_ = 0;
  uint64_t bytes_done_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------------------------------
// The same-host path: process_vm_readv. UCX 1.13 never uses cma for ucp_get (cma has only zero-copy
// operations and UCP's RMA lanes need short/bcopy ones), and with peer error handling it excludes the
// shared-memory transports, so on one host ucp_get is emulated over tcp active messages. Reading the
// leaver's memory with the same system call cma uses keeps the transfer one-sided and zero-copy.

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

bool CmaWrite(pid_t pid, const void* src, uint64_t remote, size_t len, int* err) {
  iovec l{const_cast<void*>(src), len};
  iovec r{reinterpret_cast<void*>(remote), len};
  ssize_t n = process_vm_writev(pid, &l, 1, &r, 1, 0);
  if (n != static_cast<ssize_t>(len)) {
    *err = n < 0 ? errno : EFAULT;
    return false;
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

bool CmaEligible(const detail::DescriptorData& d, const std::vector<Region>& local) {
  if (!detail::SameHostAndPidNamespace(d.host, detail::LocalIdentity())) return false;
  for (const Region& r : local) {
    if (r.type != MemoryType::kHost) return false;
  }
  for (const detail::RemoteRegion& r : d.regions) {
    if (r.memory_type != static_cast<uint8_t>(MemoryType::kHost)) return false;
  }
  return true;
}

Status FetchCma(const detail::DescriptorData& d, const std::vector<Region>& local, const std::vector<size_t>& remote_of,
                const FetchOptions& options, FetchResult* result) {
  const pid_t pid = static_cast<pid_t>(d.host.pid);
  auto start = Clock::now();
  auto deadline = start + std::chrono::milliseconds(options.timeout_ms);
  uint64_t magic = 0;
  int err = 0;
  if (!CmaRead(pid, &magic, d.control.address, sizeof(magic), &err)) return CmaError(err, "probe");
  if (magic != detail::kControlMagic) return Status(Code::kBadDescriptor, "the control block has no magic");

  struct Task {
    size_t region;
    size_t block;
  };
  std::vector<Task> tasks;
  std::vector<std::vector<uint64_t>> blocks(local.size());
  uint64_t total = 0;
  for (size_t i = 0; i < local.size(); ++i) {
    size_t n = (local[i].size + kChecksumBlock - 1) / kChecksumBlock;
    blocks[i].resize(n);
    for (size_t b = 0; b < n; ++b) tasks.push_back({i, b});
    total += local[i].size;
  }
  std::atomic<size_t> next{0};
  std::atomic<uint64_t> done{0};
  std::atomic<int> first_err{0};
  std::atomic<bool> timed_out{false};
  // `report` is true on the Fetch thread only: it calls the progress callback after each of its blocks.
  uint64_t reported = 0;
  auto worker = [&](bool report) {
    for (size_t t; first_err.load(std::memory_order_relaxed) == 0 && (t = next.fetch_add(1)) < tasks.size();) {
      if (Clock::now() >= deadline) {
        timed_out = true;
        first_err = ETIMEDOUT;
        return;
      }
      const Region& r = local[tasks[t].region];
      size_t off = tasks[t].block * kChecksumBlock;
      size_t len = std::min(kChecksumBlock, r.size - off);
      char* dst = static_cast<char*>(r.ptr) + off;
      int e = 0;
      if (!CmaRead(pid, dst, d.regions[remote_of[tasks[t].region]].address + off, len, &e)) {
        int expected = 0;
        first_err.compare_exchange_strong(expected, e);
        return;
      }
      // Hash the block while it is still in cache: verification costs almost nothing extra.
      if (options.verify) blocks[tasks[t].region][tasks[t].block] = BlockHash(dst, len);
      uint64_t now = done.fetch_add(len, std::memory_order_relaxed) + len;
      if (report && options.progress && now > reported) {
        reported = now;
        options.progress(now, total);
      }
    }
  };
  int hw = static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 4u));
  int threads = std::min(options.max_outstanding, options.hash_threads > 0 ? options.hash_threads : hw);
  threads = std::max(1, std::min<int>(threads, static_cast<int>(tasks.size())));
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) pool.push_back(base::StartThread("tm-fetch-pool", worker, false));
  worker(true);  // this thread reads too, and reports progress
  for (auto& t : pool) t.join();
  if (options.progress && done.load() != reported) options.progress(done.load(), total);
  if (timed_out) return Status(Code::kTimeout, "the transfer did not finish within the timeout");
  if (first_err.load() != 0) return CmaError(first_err.load(), "reading a region");
  auto data_end = Clock::now();
  result->path = FetchPath::kCma;
  result->bytes = done.load();
  result->seconds = std::chrono::duration<double>(data_end - start).count();
  result->gbps = result->seconds > 0 ? static_cast<double>(result->bytes) / result->seconds / 1e9 : 0;
  if (!options.verify) return Status::Ok();

  std::vector<uint64_t> expected = options.expected_checksums;
  if (expected.empty()) {
    for (uint64_t sealed = 0; sealed != 1;) {
      if (!CmaRead(pid, &sealed, d.control.address + 8 * detail::kControlSealed, 8, &err)) {
        return CmaError(err, "waiting for the leaver's checksums");
      }
      if (sealed == 1) break;
      if (sealed == detail::kSealFailed) return SealFailed();
      if (Clock::now() >= deadline) return Status(Code::kTimeout, "the leaver did not publish its checksums in time");
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    expected.resize(d.regions.size());
    if (!expected.empty() && !CmaRead(pid, expected.data(), d.control.address + 8 * detail::kControlHeaderWords,
                                      8 * expected.size(), &err)) {
      return CmaError(err, "reading the leaver's checksums");
    }
  }
  Status s;
  result->checksums.resize(local.size());
  for (size_t i = 0; i < local.size(); ++i) {
    result->checksums[i] = FoldBlockHashes(blocks[i], local[i].size);
    if (s.ok() && result->checksums[i] != expected[remote_of[i]]) {
      char buf[96];
      snprintf(buf, sizeof(buf), ": leaver %016llx, joiner %016llx",
               static_cast<unsigned long long>(expected[remote_of[i]]),
               static_cast<unsigned long long>(result->checksums[i]));
      s = Status(Code::kChecksumMismatch, "region '" + local[i].name + "'" + buf);
    }
  }
  result->verify_seconds = std::chrono::duration<double>(Clock::now() - data_end).count();
  result->verified = s.ok();
  static const uint64_t kVerified = 1, kFailed = 2;
  (void)CmaWrite(pid, s.ok() ? &kVerified : &kFailed, d.control.address + 8 * detail::kControlClientDone, 8, &err);
  return s;
}

}  // namespace

Status StateClient::Fetch(std::span<const uint8_t> descriptor, const std::vector<Region>& local,
                          const FetchOptions& options, FetchResult* result) {
  *result = FetchResult{};
  if (options.chunk_bytes == 0 || options.max_outstanding < 1 || options.timeout_ms < 0 || options.hash_threads < 0) {
    return Status(Code::kInvalidArgument, "bad fetch options (chunk_bytes, max_outstanding, timeout_ms, hash_threads)");
  }
  Status s = ValidateRegions(local);
  if (!s.ok()) return s;
  detail::DescriptorData d;
  s = detail::DecodeDescriptor(descriptor, &d);
  if (!s.ok()) return s;

  // Match by name, as sets; sizes equal. remote_of[i]: index in the descriptor of local region i.
  std::map<std::string, size_t> by_name;
  for (size_t i = 0; i < d.regions.size(); ++i) by_name[d.regions[i].name] = i;
  std::vector<size_t> remote_of(local.size());
  for (size_t i = 0; i < local.size(); ++i) {
    auto it = by_name.find(local[i].name);
    if (it == by_name.end()) return Status(Code::kMismatch, "the leaver has no region '" + local[i].name + "'");
    const detail::RemoteRegion& rr = d.regions[it->second];
    if (rr.size != local[i].size) {
      return Status(Code::kMismatch, "region '" + local[i].name + "': leaver has " + std::to_string(rr.size) +
                                         " bytes, joiner " + std::to_string(local[i].size));
    }
    remote_of[i] = it->second;
    by_name.erase(it);
  }
  if (!by_name.empty()) {
    return Status(Code::kMismatch, "the joiner has no region '" + by_name.begin()->first + "' (" +
                                       std::to_string(by_name.size()) + " leaver regions unmatched)");
  }
  if (!options.expected_checksums.empty() && options.expected_checksums.size() != d.regions.size()) {
    return Status(Code::kInvalidArgument, "expected_checksums has the wrong count");
  }

  if (options.path == FetchPath::kCma || (options.path == FetchPath::kAuto && CmaEligible(d, local))) {
    if (options.path == FetchPath::kCma && !CmaEligible(d, local)) {
      return Status(Code::kUnsupported,
                    "cma path: the leaver is on another host or pid namespace, or memory is not host");
    }
    s = FetchCma(d, local, remote_of, options, result);
    if (options.path == FetchPath::kCma || s.code() != Code::kUnsupported) return s;
    *result = FetchResult{};  // not permitted here: fall back to UCX
  }
  uint64_t total = 0;
  for (const Region& r : local) total += r.size;
  auto start = Clock::now();
  Session session(impl_->worker, impl_->options.peer_error_handling,
                  start + std::chrono::milliseconds(options.timeout_ms));
  s = session.Connect(d);
  if (!s.ok()) return s;

  // Data: chunks of every region in order, up to max_outstanding at once.
  size_t region = 0;
  uint64_t offset = 0;
  uint64_t reported = 0;
  while (s.ok()) {
    while (session.outstanding() < options.max_outstanding && region < local.size()) {
      const Region& r = local[region];
      if (offset >= r.size) {
        ++region;
        offset = 0;
        continue;
      }
      size_t len = static_cast<size_t>(std::min<uint64_t>(options.chunk_bytes, r.size - offset));
      const detail::RemoteRegion& rr = d.regions[remote_of[region]];
      s = session.Get(static_cast<char*>(r.ptr) + offset, len, rr.address + offset, session.rkey(remote_of[region]),
                      r.type);
      if (!s.ok()) break;
      offset += len;
    }
    if (!s.ok()) break;
    if (session.outstanding() == 0 && region >= local.size()) {
      s = session.Check();
      break;
    }
    s = session.Poll();
    if (options.progress && session.bytes_done() != reported) {
      reported = session.bytes_done();
      options.progress(reported, total);
    }
  }
  if (!s.ok()) return s;
  auto data_end = Clock::now();
  result->bytes = session.bytes_done();
  result->seconds = std::chrono::duration<double>(data_end - start).count();
  result->gbps = result->seconds > 0 ? static_cast<double>(result->bytes) / result->seconds / 1e9 : 0;
  if (options.progress && reported != total) options.progress(session.bytes_done(), total);

  if (options.verify) {
    // Hash locally on helper threads while this thread waits for the leaver's checksums.
    Status hash_status;
    std::thread hasher = base::StartThread("tm-hash", [&] { hash_status = detail::ChecksumRegions(local, options.hash_threads, &result->checksums); });
    std::vector<uint64_t> expected = options.expected_checksums;
    if (expected.empty()) {
      uint64_t sealed = 0;
      while (s.ok()) {
        s = session.GetSync(&sealed, sizeof(sealed), d.control.address + 8 * detail::kControlSealed,
                            session.control_rkey());
        if (!s.ok() || sealed == 1) break;
        if (sealed == detail::kSealFailed) s = SealFailed();
        if (!s.ok()) break;
        std::this_thread::sleep_for(std::chrono::microseconds(200));
        s = session.Check();
      }
      if (s.ok()) {
        expected.resize(d.regions.size());
        if (!expected.empty()) {
          s = session.GetSync(expected.data(), 8 * expected.size(), d.control.address + 8 * detail::kControlHeaderWords,
                              session.control_rkey());
        }
      }
    }
    hasher.join();
    if (s.ok()) s = hash_status;
    if (s.ok()) {
      for (size_t i = 0; i < local.size(); ++i) {
        if (result->checksums[i] != expected[remote_of[i]]) {
          char buf[96];
          snprintf(buf, sizeof(buf), ": leaver %016llx, joiner %016llx",
                   static_cast<unsigned long long>(expected[remote_of[i]]),
                   static_cast<unsigned long long>(result->checksums[i]));
          s = Status(Code::kChecksumMismatch, "region '" + local[i].name + "'" + buf);
          break;
        }
      }
    }
    result->verify_seconds = std::chrono::duration<double>(Clock::now() - data_end).count();
    result->verified = s.ok();
  }
  // Tell the leaver (best effort: the data is verified whether or not it hears it).
  if (s.ok() || s.code() == Code::kChecksumMismatch) {
    static const uint64_t kVerified = 1, kFailed = 2;
    (void)session.PutAndFlush(s.ok() ? &kVerified : &kFailed, 8, d.control.address + 8 * detail::kControlClientDone,
                              session.control_rkey());
  }
  return s;
}

}  // namespace trainmover::transfer
