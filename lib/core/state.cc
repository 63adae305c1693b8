// SPDX-License-Identifier: Apache-2.0
// The registry of VComms and the state API (shim_state.h), and the exported tmShim* entry points that
// include/trainmover/trainmover.h resolves at run time.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <map>
#include <thread>

#include "base/cudart.h"
#include "base/log.h"
#include "binding.h"
#include "comm_timing.h"
#include "shim_state.h"
#include "state_internal.h"
#include "trainmover/trainmover.h"  // tmResult_t, the values tmShimRegister returns

namespace trainmover::shim {

namespace {

std::mutex g_reg_mu;  // the VComm list and creation counter
// Containers are allocated on first use and never destroyed: nothing runs at load or exit time.
std::vector<VComm*>& Live() {  // creation order
  static auto* v = new std::vector<VComm*>();
  return *v;
}
uint64_t g_next_index = 0;
std::atomic<VCommObserver> g_observer{nullptr};  // set once by the agent, read by every creating thread
std::atomic<void*> g_observer_ctx{nullptr};

void Notify(VComm* v, bool created) {
  if (VCommObserver fn = g_observer.load(std::memory_order_acquire)) {
    fn(g_observer_ctx.load(std::memory_order_relaxed), v, created);
  }
}
std::atomic<int> g_process_sandboxed{-1};  // -1: from the role
std::atomic<int> g_assigned_rank{-1};
std::atomic<bool> g_rank_followed{false};
std::atomic<bool> g_process_leaving{false};

std::mutex g_pool_mu;
std::vector<RegHandle*>& FreeRegs() {
  static auto* v = new std::vector<RegHandle*>();
  return *v;
}
std::vector<WinHandle*>& FreeWins() {
  static auto* v = new std::vector<WinHandle*>();
  return *v;
}

std::mutex g_sp_mu;
SafePointRecord g_sp;
SafePointHook g_sp_hook = nullptr;
void* g_sp_hook_ctx = nullptr;
// The registered regions have a mutex of their own, not g_sp_mu: the migration reads them (Regions) under its
// machine's mutex, which it takes while holding g_sp_mu to answer a PROPOSE (ThreadSanitizer: lock-order
// inversion, migration_twice's joiner).
std::mutex g_regions_mu;
std::map<std::string, Region>& RegionMap() {
  static auto* m = new std::map<std::string, Region>();
  return *m;
}

// 64-bit FNV-1a, then the splitmix64 finaliser.
struct Hasher {
  uint64_t h = 0xcbf29ce484222325ull;
  void Bytes(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
  void U64(uint64_t v) { Bytes(&v, 8); }
  void Str(const char* s) { Bytes(s, strlen(s) + 1); }
  uint64_t Done() const {
    uint64_t z = h;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

uint64_t NowNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + ts.tv_nsec;
}

}  // namespace

const char* CommKindName(CommKind k) {
  switch (k) {
    case CommKind::kInitRank:
      return "InitRank";
    case CommKind::kInitRankConfig:
      return "InitRankConfig";
    case CommKind::kInitRankScalable:
      return "InitRankScalable";
    case CommKind::kInitAll:
      return "InitAll";
    case CommKind::kSplit:
      return "Split";
    case CommKind::kShrink:
      return "Shrink";
  }
  return "?";
}

const char* OpKindName(OpKind k) {
  static const char* kNames[] = {"AllReduce", "Reduce", "Broadcast", "Bcast", "AllGather", "ReduceScatter",
                                 "AlltoAll",  "Gather", "Scatter",   "Send",  "Recv"};
  return kNames[static_cast<int>(k)];
}

uint64_t HashBytes(const void* p, size_t n) {
  Hasher h;
  h.Bytes(p, n);
  return h.Done();
}

uint64_t CommKeyOf(const Lineage& l, const void* ids, size_t ids_bytes) {
  Hasher h;
  switch (l.kind) {
    case CommKind::kInitRank:
    case CommKind::kInitRankConfig:
      h.Str("id");
      h.Bytes(ids, ids_bytes);
      break;
    case CommKind::kInitRankScalable:
      h.Str("ids");
      h.Bytes(ids, ids_bytes);
      break;
    case CommKind::kSplit:
      h.Str("split");
      h.U64(l.parent_key);
      h.U64(l.child_index);
      h.U64(static_cast<uint64_t>(static_cast<int64_t>(l.color)));
      break;
    case CommKind::kShrink:
      h.Str("shrink");
      h.U64(l.parent_key);
      h.U64(l.child_index);
      for (int r : l.excluded) h.U64(static_cast<uint64_t>(static_cast<int64_t>(r)));
      break;
    case CommKind::kInitAll:
      h.Str("all");
      h.U64(static_cast<uint64_t>(getpid()));
      h.U64(l.index);
      break;
  }
  return h.Done();
}

// ---- the replaced rank's communicator table (joiner)

namespace {

enum class TableState { kAwaited, kKnown, kNone };
struct ReplacedTable {
  std::mutex mu;
  std::condition_variable cv;
  TableState state = TableState::kAwaited;
  std::vector<ReplacedComm> comms;
};
ReplacedTable& Replaced() {  // allocated on first use, never destroyed (nothing runs at load or exit time)
  static auto* t = new ReplacedTable();
  return *t;
}

// Before a sandboxed creation: a joiner with a coordinator waits for the table its agent receives at registration
// (at most kReplacedCommsWaitMs, once per process).
void AwaitReplacedComms() {
  if (ProcessRole() == Role::kWorker || ProcessConfig().coordinator.empty()) return;
  ReplacedTable& t = Replaced();
  std::unique_lock<std::mutex> lock(t.mu);
  if (t.state != TableState::kAwaited) return;
  if (!t.cv.wait_for(lock, std::chrono::milliseconds(kReplacedCommsWaitMs),
                     [&t] { return t.state != TableState::kAwaited; })) {
    t.state = TableState::kNone;
    TM_WARN(kLogSandbox,
            "sandbox: no communicator table of rank %d from the coordinator within %d ms; Split children are sized "
            "as their parent, which the migration will refuse",
            static_cast<int>(ProcessConfig().replace), kReplacedCommsWaitMs);
  }
}

// Under g_reg_mu, once the creation index is known: the leaver's answers for this communicator (the table's mutex
// is only ever taken inside g_reg_mu, never the other way round).
void AnswerAsReplaced(Lineage* l) {
  ReplacedTable& t = Replaced();
  std::lock_guard<std::mutex> lock(t.mu);
  if (t.state != TableState::kKnown) return;
  const ReplacedComm* e = nullptr;
  for (const ReplacedComm& c : t.comms) {
    if (c.index == l->index) e = &c;
  }
  if (!e || e->kind != l->kind) {
    TM_INFO(kLogSandbox, "sandbox: communicator #%llu (%s) has no %s in the leaver's table; emulated sizes",
            static_cast<unsigned long long>(l->index), CommKindName(l->kind), e ? "match" : "entry");
    return;
  }
  if (l->kind == CommKind::kSplit || l->kind == CommKind::kShrink) {  // the others were given their size
    l->nranks = e->nranks;
    l->rank = e->rank;
  }
  if (l->kind != CommKind::kInitAll && e->device >= 0) l->device = e->device;
}

}  // namespace

void SetReplacedComms(std::vector<ReplacedComm> table, bool known) {
  ReplacedTable& t = Replaced();
  {
    std::lock_guard<std::mutex> lock(t.mu);
    if (!known && t.state != TableState::kAwaited) return;  // a reconnection without a table keeps the one we have
    t.comms = std::move(table);
    t.state = known ? TableState::kKnown : TableState::kNone;
    TM_INFO(kLogSandbox, "sandbox: %s", known ? "the replaced rank's communicator table arrived" :
                                               "the coordinator has no communicator table for the replaced rank");
  }
  t.cv.notify_all();
}

// ---- registry (state_internal.h)

VComm* CreateVComm(ncclComm_t real, Lineage lineage, const void* ids, size_t ids_bytes, bool complete) {
  if (!real) AwaitReplacedComms();
  auto* v = new VComm();  // never freed: stale handles must stay readable (see shim_state.h)
  v->real.store(real, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(g_reg_mu);
    lineage.index = g_next_index++;
    if (!real) AnswerAsReplaced(&lineage);
    v->lineage = lineage;
    v->comm_key = CommKeyOf(v->lineage, ids, ids_bytes);
    v->magic = VComm::kMagic;
    Live().push_back(v);
  }
  // From here the agent thread may complete an incomplete `v` (ResolveSize writes its size under v->mu): the log
  // reads the local copy (ThreadSanitizer: data race, migration_attack_descriptor).
  base::LogSetRank(lineage.rank);
  TM_INFO(kLogComm, "vcomm %p #%llu %s nranks %d rank %d key %016llx real %p%s", static_cast<void*>(v),
          (unsigned long long)lineage.index, CommKindName(lineage.kind), lineage.nranks, lineage.rank,
          (unsigned long long)v->comm_key, static_cast<void*>(real), real ? "" : " (sandboxed)");
  if (complete) CompleteVComm(v);
  return v;
}

void CompleteVComm(VComm* v) {
  if (!v->complete.exchange(true, std::memory_order_acq_rel)) Notify(v, true);
}

void RetireVComm(VComm* v) {
  if (v->complete.load(std::memory_order_acquire)) Notify(v, false);
  std::vector<RegHandle*> regs;
  std::vector<WinHandle*> wins;
  {
    std::lock_guard<std::mutex> lock(v->mu);
    regs.swap(v->regs);
    wins.swap(v->wins);
    if (RedOpSlot* slots = v->ops.load(std::memory_order_acquire)) {
      for (int i = 0; i < kMaxOpsPerComm; ++i) slots[i].live.store(0, std::memory_order_relaxed);
    }
  }
  for (RegHandle* r : regs) ReleaseReg(r);
  for (WinHandle* w : wins) ReleaseWin(w);
  std::lock_guard<std::mutex> lock(g_reg_mu);
  v->magic = VComm::kDead;
  Live().erase(std::remove(Live().begin(), Live().end(), v), Live().end());
  TM_INFO(kLogComm, "vcomm %p #%llu destroyed", static_cast<void*>(v), (unsigned long long)v->lineage.index);
}

RegHandle* AcquireReg() {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  if (FreeRegs().empty()) return new RegHandle();
  RegHandle* r = FreeRegs().back();
  FreeRegs().pop_back();
  return r;
}
void ReleaseReg(RegHandle* r) {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  *r = RegHandle();
  FreeRegs().push_back(r);
}
WinHandle* AcquireWin() {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  if (FreeWins().empty()) return new WinHandle();
  WinHandle* w = FreeWins().back();
  FreeWins().pop_back();
  return w;
}
void ReleaseWin(WinHandle* w) {
  std::lock_guard<std::mutex> lock(g_pool_mu);
  *w = WinHandle();
  FreeWins().push_back(w);
}

// ---- shim_state.h

std::vector<VComm*> LiveVComms() {
  std::lock_guard<std::mutex> lock(g_reg_mu);
  return Live();
}

std::vector<VCommInfo> SnapshotVComms() {
  std::vector<VCommInfo> out;
  for (VComm* v : LiveVComms()) {
    std::lock_guard<std::mutex> lock(v->mu);
    out.push_back(
        {v, v->comm_key, v->lineage, v->real.load(std::memory_order_acquire), v->seq.load(std::memory_order_relaxed)});
  }
  return out;
}

std::vector<OpSig> RecentOps(const VComm* v) {
  uint64_t seq = v->seq.load(std::memory_order_acquire);
  uint64_t n = std::min<uint64_t>(seq, kOpRing);
  std::vector<OpSig> out;
  for (uint64_t s = seq - n + 1; s <= seq; ++s) out.push_back(v->ring[(s - 1) & (kOpRing - 1)]);
  return out;
}

bool IsSandboxed(const VComm* v) { return v->real.load(std::memory_order_acquire) == nullptr; }

ncclComm_t SwapRealComm(VComm* v, ncclComm_t real) {
  ncclComm_t old = v->real.exchange(real, std::memory_order_seq_cst);
  // Calls that start now count in the new epoch and load `real`; those of the old epoch may hold `old`.
  v->epoch.fetch_add(1, std::memory_order_seq_cst);
  return old;
}

namespace {
std::atomic<const VComm*> g_polled{nullptr};  // the VComm whose real communicator PollAsyncError is reading
}  // namespace

ncclResult_t PollAsyncError(VComm* v, ncclComm_t* polled) {
  *polled = nullptr;
  ncclResult_t async = ncclSuccess;
  g_polled.store(v, std::memory_order_seq_cst);  // before the load of real: a destroy after it waits for us
  RealUse use(v);
  ncclComm_t real = v->real.load(std::memory_order_seq_cst);
  if (real && v->magic == VComm::kMagic && g_real.CommGetAsyncError &&
      g_real.CommGetAsyncError(real, &async) == ncclSuccess) {
    *polled = real;
  } else {
    async = ncclSuccess;
  }
  g_polled.store(nullptr, std::memory_order_release);
  return async;
}

void WaitForPoll(const VComm* v) {
  while (g_polled.load(std::memory_order_seq_cst) == v) std::this_thread::yield();
}

bool DrainOldCalls(VComm* v, ncclComm_t old) {
  std::atomic<uint32_t>& calls = v->calls[(v->epoch.load(std::memory_order_seq_cst) - 1) & 1];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kRetireWaitMs);
  uint32_t spins = 0;
  while (calls.load(std::memory_order_acquire) != 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      TM_WARN(kLogComm,
              "vcomm #%llu: %u call(s) still inside real comm %p after %d ms; it is left allocated rather than freed "
              "under them",
              (unsigned long long)v->lineage.index, calls.load(), static_cast<void*>(old), kRetireWaitMs);
      return false;
    }
    if (++spins < 64) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
  }
  return true;
}

ncclComm_t InstallRealComm(VComm* v, ncclComm_t real) {
  ncclComm_t old = SwapRealComm(v, real);
  if (!DrainOldCalls(v, old)) return nullptr;
  TM_INFO(kLogComm, "vcomm %p #%llu real comm %p -> %p", static_cast<void*>(v), (unsigned long long)v->lineage.index,
          static_cast<void*>(old), static_cast<void*>(real));
  return old;
}

void SetNextComm(VComm* v, ncclComm_t next) { v->next.store(next, std::memory_order_release); }

ncclResult_t RebindObjects(VComm* v) {
  ncclComm_t next = v->next.load(std::memory_order_acquire);
  if (!next) return ncclInvalidUsage;
  std::lock_guard<std::mutex> lock(v->mu);
  if (RedOpSlot* slots = v->ops.load(std::memory_order_acquire)) {
    for (int i = 0; i < kMaxOpsPerComm; ++i) {
      RedOpSlot& s = slots[i];
      if (!s.live.load(std::memory_order_relaxed)) continue;
      ncclRedOp_t op;
      void* scalar = s.residence == ncclScalarHostImmediate ? static_cast<void*>(s.scalar) : s.scalar_ptr;
      ncclResult_t r = g_real.RedOpCreatePreMulSum(&op, scalar, s.datatype, s.residence, next);
      if (r != ncclSuccess) return r;
      s.next = op;
    }
  }
  for (RegHandle* r : v->regs) {
    ncclResult_t res = g_real.CommRegister(next, r->buff, r->size, &r->next);
    if (res != ncclSuccess) return res;
  }
  for (WinHandle* w : v->wins) {
    ncclResult_t res = g_real.CommWindowRegister(next, w->buff, w->size, &w->next, w->flags);
    if (res != ncclSuccess) return res;
  }
  return ncclSuccess;
}

ncclComm_t SwitchToNext(VComm* v) {
  std::unique_lock<std::mutex> lock(v->mu);
  if (RedOpSlot* slots = v->ops.load(std::memory_order_acquire)) {
    for (int i = 0; i < kMaxOpsPerComm; ++i) {
      if (slots[i].live.load(std::memory_order_relaxed)) {
        slots[i].real = slots[i].next;
        slots[i].next = -1;
      }
    }
  }
  for (RegHandle* r : v->regs) {
    r->real = r->next;
    r->next = nullptr;
  }
  for (WinHandle* w : v->wins) {
    w->real = w->next;
    w->next = nullptr;
  }
  ncclComm_t next = v->next.exchange(nullptr, std::memory_order_acq_rel);
  lock.unlock();  // calls in flight may take v->mu (a completing non-blocking creation): drain without it
  return InstallRealComm(v, next);
}

ncclComm_t AbortNext(VComm* v) {
  std::lock_guard<std::mutex> lock(v->mu);
  if (RedOpSlot* slots = v->ops.load(std::memory_order_acquire)) {
    for (int i = 0; i < kMaxOpsPerComm; ++i) slots[i].next = -1;
  }
  for (RegHandle* r : v->regs) r->next = nullptr;
  for (WinHandle* w : v->wins) w->next = nullptr;
  return v->next.exchange(nullptr, std::memory_order_acq_rel);
}

namespace {
std::atomic<OpFailureHook> g_op_failure_hook{nullptr};
}  // namespace

void SetOpFailureHook(OpFailureHook fn) { g_op_failure_hook.store(fn, std::memory_order_release); }

bool OpFailedButFenced(VComm* v, ncclComm_t used, ncclResult_t r) {
  OpFailureHook hook = g_op_failure_hook.load(std::memory_order_acquire);
  return hook && hook(v, used, r);
}

void SetVCommObserver(VCommObserver fn, void* ctx) {
  g_observer_ctx.store(ctx, std::memory_order_relaxed);
  g_observer.store(fn, std::memory_order_release);
}

std::mutex& SafePointMutex() { return g_sp_mu; }
SafePointRecord GetSafePointLocked() { return g_sp; }
SafePointRecord GetSafePoint() {
  std::lock_guard<std::mutex> lock(g_sp_mu);
  return g_sp;
}
void SetSafePointHook(SafePointHook fn, void* ctx) {
  std::lock_guard<std::mutex> lock(g_sp_mu);
  g_sp_hook = fn;
  g_sp_hook_ctx = ctx;
}

std::vector<Region> Regions() {
  std::lock_guard<std::mutex> lock(g_regions_mu);
  std::vector<Region> out;
  for (const auto& kv : RegionMap()) out.push_back(kv.second);
  return out;
}

const Config& ProcessConfig() { return ConfigGet().config; }

bool ProcessSandboxed() {
  int s = g_process_sandboxed.load(std::memory_order_acquire);
  if (s < 0) {
    Role r = ProcessRole();
    s = (r == Role::kJoiner || r == Role::kStandby) ? 1 : 0;
    int expected = -1;
    if (!g_process_sandboxed.compare_exchange_strong(expected, s)) s = expected;
  }
  return s == 1;
}
void SetProcessSandboxed(bool sandboxed) { g_process_sandboxed.store(sandboxed ? 1 : 0, std::memory_order_release); }
void SetAssignedRank(int rank) { g_assigned_rank.store(rank, std::memory_order_release); }
int AssignedRank() { return g_assigned_rank.load(std::memory_order_acquire); }
bool RankFollowed() { return g_rank_followed.load(std::memory_order_acquire); }
bool ProcessLeaving() { return g_process_leaving.load(std::memory_order_acquire); }
void SetProcessLeaving(bool leaving) { g_process_leaving.store(leaving, std::memory_order_release); }

// ---- the tm* exports

namespace {
// Where the current step began: the return of the previous tmSafePoint (under g_sp_mu).
struct StepStart {
  bool valid = false;
  uint64_t ticks = 0, ns = 0, wait_ticks = 0;
};
StepStart g_step_start;
uint64_t g_step_compute[kStepRing];  // compute ns of timed step i at [i % kStepRing] (under g_sp_mu)

StepStart StepClockNow() {
  return StepStart{true, ReadTicks(), NowNs(), g_comm_wait_ticks.load(std::memory_order_relaxed)};
}

// Adds the step that ends at `end` to the totals in g_sp (caller holds g_sp_mu). The wait, counted in ticks,
// becomes nanoseconds by the step's own ratio of nanoseconds to ticks.
void AccountStep(const StepStart& end) {
  const StepStart& begin = g_step_start;
  if (!begin.valid || !CommTiming() || ProcessSandboxed() || end.ticks <= begin.ticks || end.ns <= begin.ns) return;
  const uint64_t wall = end.ns - begin.ns;
  const double ns_per_tick = static_cast<double>(wall) / static_cast<double>(end.ticks - begin.ticks);
  const auto wait = static_cast<uint64_t>(static_cast<double>(end.wait_ticks - begin.wait_ticks) * ns_per_tick);
  g_step_compute[g_sp.timed_steps % kStepRing] = wall - std::min(wait, wall);
  g_sp.timed_steps++;
  g_sp.wall_ns += wall;
  g_sp.wait_ns += std::min(wait, wall);
}
}  // namespace

uint64_t StepComputeP25Ns(uint64_t after) {
  std::vector<uint64_t> v;
  {
    std::lock_guard<std::mutex> lock(g_sp_mu);
    const uint64_t end = g_sp.timed_steps;
    for (uint64_t i = std::max(after, end > kStepRing ? end - kStepRing : 0); i < end; ++i) {
      v.push_back(g_step_compute[i % kStepRing]);
    }
  }
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 4), v.end());
  return v[v.size() / 4];
}

int64_t SafePointImpl(int64_t step) {
  const StepStart end = StepClockNow();
  SafePointHook hook;
  void* ctx;
  {
    std::lock_guard<std::mutex> lock(g_sp_mu);
    g_sp.step = step;
    g_sp.time_ns = end.ns;
    g_sp.count++;
    AccountStep(end);
    hook = g_sp_hook;
    ctx = g_sp_hook_ctx;
  }
  TM_TRACE(kLogState, "safe point step %lld", (long long)step);
  const int64_t next = hook ? hook(ctx, step) : step;
  const StepStart begin = StepClockNow();
  std::lock_guard<std::mutex> lock(g_sp_mu);
  g_step_start = begin;
  return next;
}

namespace {
std::atomic<uint64_t> g_captured{0};
}  // namespace

uint64_t CapturedCount() { return g_captured.load(std::memory_order_relaxed); }

namespace {
std::atomic<StreamHook> g_stream_hook{nullptr};
}  // namespace

void SetStreamHook(StreamHook fn) { g_stream_hook.store(fn, std::memory_order_release); }

void NoteStream(VComm* v, cudaStream_t stream) {
  const base::Cudart* rt = base::CudartIfLoaded();
  if (!rt) return;
  if (StreamHook hook = g_stream_hook.load(std::memory_order_acquire)) hook(stream);
  if (!rt->cudaStreamIsCapturing || v->captured.load(std::memory_order_relaxed)) return;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (rt->cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone &&
      !v->captured.exchange(true)) {
    g_captured.fetch_add(1, std::memory_order_relaxed);
    TM_INFO(kLogComm, "vcomm #%llu: operation issued under CUDA graph capture; it cannot be migrated",
            static_cast<unsigned long long>(v->lineage.index));
  }
}

}  // namespace trainmover::shim

extern "C" {

__attribute__((visibility("default"))) int64_t tmShimSafePoint(int64_t step) {
  return trainmover::shim::SafePointImpl(step);
}

__attribute__((visibility("default"))) int tmShimRank(int rank) {
  trainmover::shim::g_rank_followed.store(true, std::memory_order_release);
  const int assigned = trainmover::shim::AssignedRank();
  return assigned >= 0 ? assigned : rank;
}

__attribute__((visibility("default"))) int tmShimRegister(const char* name, void* ptr, size_t bytes) {
  if (!name || !name[0] || !ptr || bytes == 0 || strlen(name) > 63) return tmInvalidArgument;
  std::lock_guard<std::mutex> lock(trainmover::shim::g_regions_mu);
  if (trainmover::shim::RegionMap().count(name)) return tmAlreadyRegistered;
  trainmover::shim::RegionMap()[name] = trainmover::shim::Region{name, ptr, bytes};
  TM_INFO(kLogState, "registered region %s %p %zu bytes", name, ptr, bytes);
  return tmSuccess;
}

__attribute__((visibility("default"))) int tmShimUnregister(const char* name) {
  if (!name || !name[0]) return tmInvalidArgument;
  std::lock_guard<std::mutex> lock(trainmover::shim::g_regions_mu);
  if (trainmover::shim::RegionMap().erase(name) == 0) return tmNotRegistered;
  TM_INFO(kLogState, "unregistered region %s", name);
  return tmSuccess;
}

}  // extern "C"
