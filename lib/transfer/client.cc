// SPDX-License-Identifier: Apache-2.0
// StateClient and PreparedFetch: the joiner's side, common to both paths (see transfer.h for the contract).
// Prepare decodes the descriptor, matches regions and opens a Reader (cma_path.cc or ucx_path.cc); Read runs
// the reader into a BlockSink (hashing each block as it lands), then verifies against the leaver's checksums
// from its control block and reports the outcome there. Device regions that this UCX cannot write are read into
// host bounce buffers and copied to the device at the end of Read (StagedRegion).
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <thread>

#include "base/cudart.h"
#include "checksum.h"
#include "lanes.h"
#include "pages.h"
#include "reader.h"
#include "staging.h"
#include "ucx_util.h"

namespace trainmover::transfer {

using detail::Clock;

namespace detail {

void BlockSink::Reset(const Plan* plan, bool hash) {
  plan_ = plan;
  hash_ = hash;
  bytes_.store(0, std::memory_order_relaxed);
  hashes_.resize(plan->local.size());
  remaining_.resize(plan->local.size());
  for (size_t i = 0; i < plan->local.size(); ++i) {
    size_t n = BlockCount(plan->local[i].size);
    if (hashes_[i].size() != n) {
      hashes_[i].assign(n, 0);
      remaining_[i] = std::make_unique<std::atomic<uint64_t>[]>(n);
    }
    for (size_t b = 0; b < n; ++b) {
      uint64_t len = std::min<uint64_t>(kChecksumBlock, plan->local[i].size - b * kChecksumBlock);
      remaining_[i][b].store(len, std::memory_order_relaxed);
    }
  }
}

void BlockSink::Landed(size_t region, uint64_t offset, uint64_t len) {
  bytes_.fetch_add(len, std::memory_order_relaxed);
  if (!hash_) return;
  const Region& r = plan_->local[region];
  for (uint64_t end = offset + len; offset < end;) {
    size_t b = static_cast<size_t>(offset / kChecksumBlock);
    uint64_t block_end = std::min<uint64_t>((b + 1) * kChecksumBlock, r.size);
    uint64_t n = std::min(end, block_end) - offset;
    // acq_rel: the thread that lands the last piece of a block sees the other pieces' bytes before hashing.
    if (remaining_[region][b].fetch_sub(n, std::memory_order_acq_rel) == n && r.type == MemoryType::kHost) {
      uint64_t start = static_cast<uint64_t>(b) * kChecksumBlock;
      hashes_[region][b] = BlockHash(static_cast<const char*>(r.ptr) + start, block_end - start);
    }
    offset += n;
  }
}

Status BlockSink::Checksums(LanePool* pool, int threads, std::vector<uint64_t>* out) {
  out->assign(plan_->local.size(), 0);
  std::vector<Region> later;  // not host memory: hashed now, staged through host
  std::vector<size_t> later_index;
  for (size_t i = 0; i < plan_->local.size(); ++i) {
    if (plan_->local[i].type == MemoryType::kHost) {
      (*out)[i] = FoldBlockHashes(hashes_[i], plan_->local[i].size);
    } else {
      later.push_back(plan_->local[i]);
      later_index.push_back(i);
    }
  }
  if (later.empty()) return Status::Ok();
  std::vector<uint64_t> sums;
  Status s = ChecksumRegions(later, threads, pool, &sums);
  if (!s.ok()) return s;
  for (size_t k = 0; k < later.size(); ++k) (*out)[later_index[k]] = sums[k];
  return Status::Ok();
}

}  // namespace detail

namespace {

Status SealFailed() { return Status(Code::kPeerFailure, "the leaver could not checksum its regions (Seal failed)"); }

// Match by name, as sets; sizes equal. plan->remote_of[i]: index in the descriptor of local region i.
Status MatchRegions(detail::Plan* plan) {
  const detail::DescriptorData& d = plan->d;
  std::map<std::string, size_t> by_name;
  for (size_t i = 0; i < d.regions.size(); ++i) by_name[d.regions[i].name] = i;
  plan->remote_of.resize(plan->local.size());
  plan->total = 0;
  for (size_t i = 0; i < plan->local.size(); ++i) {
    const Region& l = plan->local[i];
    auto it = by_name.find(l.name);
    if (it == by_name.end()) return Status(Code::kMismatch, "the leaver has no region '" + l.name + "'");
    const detail::RemoteRegion& rr = d.regions[it->second];
    if (rr.size != l.size) {
      return Status(Code::kMismatch, "region '" + l.name + "': leaver has " + std::to_string(rr.size) +
                                         " bytes, joiner " + std::to_string(l.size));
    }
    plan->remote_of[i] = it->second;
    plan->total += l.size;
    by_name.erase(it);
  }
  if (!by_name.empty()) {
    return Status(Code::kMismatch, "the joiner has no region '" + by_name.begin()->first + "' (" +
                                       std::to_string(by_name.size()) + " leaver regions unmatched)");
  }
  return Status::Ok();
}

Status CheckOptions(const FetchOptions& o) {
  if (o.chunk_bytes == 0 || o.max_outstanding < 1 || o.timeout_ms < 0 || o.hash_threads < 0) {
    return Status(Code::kInvalidArgument, "bad fetch options (chunk_bytes, max_outstanding, timeout_ms, hash_threads)");
  }
  return Status::Ok();
}

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

// ---------------------------------------------------------------------------------------------------
// StateClient

// UCX is initialised on the first Prepare that takes the UCX path, not in Create: ucp_init and the worker cost
// ~20 ms here (every transport is opened), which the same-host path never needs; a migration's joiner that
// creates its client at the switch would otherwise pay it on the critical path. One worker per leaver process,
// shared by the connections to it (reader.h, UcxWorker).
struct StateClient::Impl {
  ClientOptions options;
  std::shared_ptr<detail::UcxContext> context;
  std::map<std::string, std::weak_ptr<detail::UcxWorker>> workers;  // by the leaver's HostIdentity
  // Also by leaver: the workers made for it that were given up, and the one in use. Each one given up stays for good
  // (reader.h), so a leaver that keeps them coming (cut off for good) is not connected to again after kMaxGivenUp.
  std::map<std::string, std::set<ucp_worker_h>> made;
  static constexpr size_t kMaxGivenUp = 2;

  // The context, made on first need: by the first worker, or by a Prepare that must know whether UCX reaches
  // device memory (detail::UcxReachesCuda).
  Status EnsureContext() {
    if (context) return Status::Ok();
    auto c = std::make_shared<detail::UcxContext>();
    Status s = detail::MakeContext(options.transports, /*wakeup=*/false, &c->h);
    if (!s.ok()) return s;  // c->h stays null
    context = std::move(c);
    return Status::Ok();
  }

  Status WorkerFor(const detail::HostIdentity& leaver, std::shared_ptr<detail::UcxWorker>* out) {
    Status s = EnsureContext();
    if (!s.ok()) return s;
    std::erase_if(workers, [](const auto& w) { return w.second.expired(); });
    for (auto it = made.begin(); it != made.end();) {  // keep the given-up ones and those in use
      auto live = workers.find(it->first);
      const ucp_worker_h in_use = live == workers.end() ? nullptr : live->second.lock()->h;
      std::erase_if(it->second, [&](ucp_worker_h h) { return h != in_use && !detail::WorkerWedged(h); });
      it = it->second.empty() ? made.erase(it) : std::next(it);
    }
    std::string key(reinterpret_cast<const char*>(leaver.boot_id), sizeof(leaver.boot_id));
    key += std::to_string(leaver.pid_namespace) + "/" + std::to_string(leaver.pid);
    std::shared_ptr<detail::UcxWorker> w = workers[key].lock();
    std::set<ucp_worker_h>& mine = made[key];
    if (!w || detail::WorkerWedged(w->h)) {  // a given-up one is left to its readers (never progressed again)
      if (mine.size() >= kMaxGivenUp) {  // every one left in `mine` was given up
        return Status(Code::kPeerFailure, "requests to this leaver never completed on " + std::to_string(kMaxGivenUp) +
                                              " connections (cut off?): not connecting to it again");
      }
      w = std::make_shared<detail::UcxWorker>();
      w->context = context;
      s = detail::MakeWorker(context->h, &w->h);
      if (!s.ok()) return s;  // w->h stays null
      workers[key] = w;
      mine.insert(w->h);
    }
    *out = std::move(w);
    return Status::Ok();
  }
};

StateClient::StateClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StateClient::~StateClient() = default;  // each worker goes with its last reader, the context with its last worker

Status StateClient::Create(const ClientOptions& options, std::unique_ptr<StateClient>* out) {
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  out->reset(new StateClient(std::move(impl)));
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------------
// PreparedFetch

struct PreparedFetch::Impl {
  // Before `reader` (and `plan`, which refers to them): the reads land here until the reader is gone.
  std::vector<std::unique_ptr<detail::StagedRegion>> staged;
  detail::DeviceAccess device;  // set when a local region is device memory: drains, copies `staged`
  detail::Plan plan;
  std::string auth_key;  // the client's, for the control block's MAC
  int hash_threads = 0;
  uint64_t huge_bytes = 0;                 // of the local regions, in huge pages after Prepare
  detail::BlockSink sink;                  // before `reader`: late UCX completions in its teardown land here
  std::unique_ptr<detail::Reader> reader;  // refers to `plan`
};

namespace {

// The staged regions' bytes, read and verified in their stand-ins, go to the device (on the read's critical path).
Status CopyStagedToDevice(const PreparedFetch::Impl& m, Clock::time_point deadline, FetchResult* result) {
  if (m.staged.empty()) return Status::Ok();
  const auto start = Clock::now();
  if (Status s = detail::CopyStaged(m.device, m.staged, cudaMemcpyHostToDevice, deadline); !s.ok()) return s;
  result->stage_seconds = Seconds(start, Clock::now());
  return Status::Ok();
}

}  // namespace

PreparedFetch::PreparedFetch(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PreparedFetch::~PreparedFetch() = default;
FetchPath PreparedFetch::path() const { return impl_->reader->path(); }
uint64_t PreparedFetch::bytes() const { return impl_->plan.total; }
uint64_t PreparedFetch::huge_page_bytes() const { return impl_->huge_bytes; }

Status StateClient::Prepare(std::span<const uint8_t> descriptor, const std::vector<Region>& local,
                            const FetchOptions& options, std::unique_ptr<PreparedFetch>* out) {
  Status s = CheckOptions(options);
  if (!s.ok()) return s;
  s = detail::ValidateRegions(local);
  if (!s.ok()) return s;
  auto impl = std::make_unique<PreparedFetch::Impl>();
  detail::Plan& plan = impl->plan;
  s = detail::DecodeDescriptor(descriptor, impl_->options.auth_key, &plan.d);
  if (!s.ok()) return s;
  // The coordinator knows which process the leaver is: a descriptor that names another one (its pid is what
  // the same-host path reads from) is refused, even when it is authentic.
  if (options.leaver_pid != 0 && plan.d.host.pid != options.leaver_pid) {
    return Status(Code::kBadDescriptor, "descriptor: it names pid " + std::to_string(plan.d.host.pid) +
                                            ", the leaver is pid " + std::to_string(options.leaver_pid));
  }
  plan.local = local;
  s = MatchRegions(&plan);
  if (!s.ok()) return s;
  // Device regions this UCX cannot write are read into host stand-ins (staging.h); no UCX context is made without
  // a device region (the same-host path never needs one).
  s = detail::StageDeviceRegions(
      &plan.local,
      [this](bool* reaches) {
        Status c = impl_->EnsureContext();
        return c.ok() ? detail::UcxReachesCuda(impl_->context->h, reaches) : c;
      },
      &impl->staged, &impl->device);
  if (!s.ok()) return s;
  impl->hash_threads = options.hash_threads;
  impl->auth_key = impl_->options.auth_key;
  // The joiner's regions: huge pages, then every page mapped writable, so the read at the switch neither faults
  // nor walks 4 KiB pages on the destination side (pages.h).
  if (impl_->options.huge_pages) {
    for (const Region& r : plan.local) impl->huge_bytes += detail::CollapseToHugePages(r);
  }
  detail::PopulateForWrite(plan.local);
  const auto deadline = Clock::now() + std::chrono::milliseconds(options.timeout_ms);
  const bool cma_ok = detail::CmaEligible(plan.d, plan.local);
  if (options.path == FetchPath::kCma || (options.path == FetchPath::kAuto && cma_ok)) {
    if (!cma_ok) {
      return Status(Code::kUnsupported,
                    "cma path: the leaver is on another host or pid namespace, or memory is not host");
    }
    int lanes = std::min(options.max_outstanding, detail::DefaultReadLanes(options.hash_threads, plan.total));
    s = detail::OpenCmaReader(&plan, lanes, &impl->reader);
    // kAuto: a kernel that refuses process_vm_readv (ptrace rules, seccomp) sends us to UCX.
    if (!s.ok() && (options.path == FetchPath::kCma || s.code() != Code::kUnsupported)) return s;
    if (s.ok() && options.warm) {
      impl->sink.Reset(&plan, /*hash=*/false);
      detail::ReadParams warm;
      warm.chunk_bytes = options.chunk_bytes;
      warm.max_outstanding = options.max_outstanding;
      warm.deadline = deadline;
      s = impl->reader->ReadAll(warm, &impl->sink);
      if (!s.ok()) return Status(s.code(), "warm read: " + s.message());
    }
  }
  if (impl->reader == nullptr) {
    std::shared_ptr<detail::UcxWorker> worker;
    s = impl_->WorkerFor(plan.d.host, &worker);
    if (!s.ok()) return s;
    s = detail::OpenUcxReader(std::move(worker), impl_->options.peer_error_handling, &plan, deadline, &impl->reader);
    if (!s.ok()) return s;
  }
  out->reset(new PreparedFetch(std::move(impl)));
  return Status::Ok();
}

Status PreparedFetch::Read(const FetchOptions& options, FetchResult* result) {
  *result = FetchResult{};
  Impl& m = *impl_;
  result->path = m.reader->path();
  Status s = CheckOptions(options);
  if (!s.ok()) return s;
  if (!options.expected_checksums.empty() && options.expected_checksums.size() != m.plan.d.regions.size()) {
    return Status(Code::kInvalidArgument, "expected_checksums has the wrong count");
  }
  // The program's own work still in flight on its streams (a joiner's last shadow iteration) must not land on its
  // device regions after the state read into them (ThreadSanitizer on the stand-in runtime: recovery_device).
  if (s = detail::DrainDevice(m.device, "before reading into device memory"); !s.ok()) return s;
  const auto start = Clock::now();
  const auto deadline = start + std::chrono::milliseconds(options.timeout_ms);
  m.sink.Reset(&m.plan, options.verify);
  detail::ReadParams params;
  params.chunk_bytes = options.chunk_bytes;
  params.max_outstanding = options.max_outstanding;
  params.deadline = deadline;
  params.progress = options.progress;
  s = m.reader->ReadAll(params, &m.sink);
  if (!s.ok()) return s;
  const auto data_end = Clock::now();
  result->bytes = m.sink.bytes();
  result->seconds = Seconds(start, data_end);
  result->gbps = result->seconds > 0 ? static_cast<double>(result->bytes) / result->seconds / 1e9 : 0;
  if (!options.verify) return CopyStagedToDevice(m, deadline, result);

  s = m.sink.Checksums(nullptr, m.hash_threads, &result->checksums);
  if (!s.ok()) return s;
  std::vector<uint64_t> expected = options.expected_checksums;
  if (expected.empty()) {
    // The leaver may still be hashing (overlapped seal): poll its sealed flag, then read the checksums.
    for (uint64_t sealed = 0;;) {
      s = m.reader->ReadControl(&sealed, sizeof(sealed), 8 * detail::kControlSealed, deadline);
      if (!s.ok()) return Status(s.code(), "waiting for the leaver's checksums: " + s.message());
      if (sealed == 1) break;
      if (sealed == detail::kSealFailed) return SealFailed();
      if (Clock::now() >= deadline) return Status(Code::kTimeout, "the leaver did not publish its checksums in time");
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    // The checksums and their MAC in one read; a MAC that does not match means the block was written by
    // someone other than the leaver (or the keys differ): nothing is compared against such checksums.
    const size_t n = m.plan.d.regions.size();
    std::vector<uint64_t> words(n + detail::kControlMacWords);
    s = m.reader->ReadControl(words.data(), 8 * words.size(), 8 * detail::kControlHeaderWords, deadline);
    if (!s.ok()) return Status(s.code(), "reading the leaver's checksums: " + s.message());
    expected.assign(words.begin(), words.begin() + static_cast<ptrdiff_t>(n));
    uint8_t mac[detail::kMacBytes];
    detail::ChecksumMac(m.auth_key, m.plan.d.nonce, expected, mac);
    if (!detail::MacEqual(mac, reinterpret_cast<const uint8_t*>(words.data() + n))) {
      return Status(Code::kChecksumMismatch, "the leaver's checksum block fails its MAC (written by another party)");
    }
  }
  for (size_t i = 0; i < m.plan.local.size() && s.ok(); ++i) {
    uint64_t want = expected[m.plan.remote_of[i]];
    if (result->checksums[i] != want) {
      char buf[96];
      snprintf(buf, sizeof(buf), ": leaver %016llx, joiner %016llx", static_cast<unsigned long long>(want),
               static_cast<unsigned long long>(result->checksums[i]));
      s = Status(Code::kChecksumMismatch, "region '" + m.plan.local[i].name + "'" + buf);
    }
  }
  result->verify_seconds = Seconds(data_end, Clock::now());
  if (!s.ok()) return s;
  // Verified means the joiner's regions hold the leaver's bytes: for staged regions, once they reached the device.
  s = CopyStagedToDevice(m, deadline, result);
  result->verified = s.ok();
  return s;
}

Status StateClient::Fetch(std::span<const uint8_t> descriptor, const std::vector<Region>& local,
                          const FetchOptions& options, FetchResult* result) {
  *result = FetchResult{};
  const auto t0 = Clock::now();
  std::unique_ptr<PreparedFetch> prepared;
  Status s = Prepare(descriptor, local, options, &prepared);
  if (!s.ok()) return s;
  const double prepare_seconds = Seconds(t0, Clock::now());
  FetchOptions rest = options;  // the time Prepare took counts against the whole Fetch's timeout
  rest.timeout_ms = std::max(0, options.timeout_ms - static_cast<int>(prepare_seconds * 1000));
  s = prepared->Read(rest, result);
  result->prepare_seconds = prepare_seconds;
  return s;
}

}  // namespace trainmover::transfer
