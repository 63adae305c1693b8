// SPDX-License-Identifier: Apache-2.0
// shim_state.h: the shim's internal state, for the agent (lib/control users) and for migration.
//
// What lives here:
//   - VComm: the virtual communicator behind every ncclComm_t the application holds, with its lineage,
//     comm_key, the current real communicator (atomic), a slot for the next one, the operation counter and
//     a ring of recent operation signatures, and the objects tied to it (PreMulSum ops, registrations,
//     windows) with what is needed to re-create them on a new real communicator.
//   - The safe-point record and its hook (where migration blocks the application), registered regions,
//     the process role and configuration.
//
// Lifetime: VComm, RegHandle and WinHandle objects are pooled and never returned to the allocator, so a
// pointer obtained here (or a stale application handle) always points at readable memory; `magic` says
// whether the object is live. A VComm is live from its creation call until ncclCommDestroy/Abort.
//
// Threads: the application's threads run the hot path (reads of `real`, writes of `seq`/`ring`). The
// functions below that change which real objects a VComm uses (InstallRealComm, SwitchToNext, ...) must
// be called while the application cannot be issuing operations on that VComm: in practice, while its
// thread is held in the safe-point hook. Everything else here is thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "base/config.h"
#include "nccl_api.h"

namespace trainmover::shim {

struct VComm;

// ---------------------------------------------------------------------------------------------------
// Lineage and identity

enum class CommKind : uint8_t { kInitRank, kInitRankConfig, kInitRankScalable, kInitAll, kSplit, kShrink };
const char* CommKindName(CommKind k);

struct Lineage {
  CommKind kind = CommKind::kInitRank;
  uint64_t index = 0;  // creation index in this process: 0, 1, 2, ... over every creation path
  int nranks = 0;      // logical size and rank (as the real communicator reports, or as emulated)
  int rank = 0;
  // Config copy (InitRankConfig/Scalable/Split/Shrink with a non-null config). Only config->size bytes
  // were read; the rest is NCCL_CONFIG_INITIALIZER. String members are copied into the std::strings.
  bool has_config = false;
  ncclConfig_t config{};
  std::string net_name, comm_name;
  // Split / Shrink
  uint64_t parent_index = 0;  // the parent's creation index
  uint64_t parent_key = 0;    // the parent's comm_key
  uint64_t child_index = 0;   // this was the child_index-th Split/Shrink made from the parent (from 0)
  int color = 0, key = 0;     // Split
  std::vector<int> excluded;  // Shrink, as given
  int shrink_flags = 0;
  // InitAll
  int ndev = 0, device = -1;  // devlist[i] (or i when devlist is null)
  // Hash of the unique id (InitRank/Config) or of all nId ids (Scalable): a cross-check, not the key.
  uint64_t id_hash = 0;
  // Made non-blocking (config.blocking = 0; a Split/Shrink without a config inherits its parent's): its creation
  // returned ncclInProgress and completes at a later ncclCommGetAsyncError.
  bool blocking = true;
};

// comm_key (docs/architecture.md "Identity of a communicator"), computed identically by every member:
//   InitRank/InitRankConfig: H("id", id bytes)            InitRankScalable: H("ids", all ids)
//   Split:  H("split", parent key, child index, color)     Shrink: H("shrink", parent key, child index, excluded)
//   InitAll: H("all", pid, creation index)
// H is 64-bit FNV-1a over the tag and the little-endian bytes of each field, then a final avalanche mix.
uint64_t CommKeyOf(const Lineage& l, const void* ids, size_t ids_bytes);

// ---------------------------------------------------------------------------------------------------
// Objects tied to a VComm

// Signature of one operation, kept in a ring per VComm (the basis of switch points and sandbox tapes).
enum class OpKind : uint8_t {
  kAllReduce,
  kReduce,
  kBroadcast,
  kBcast,
  kAllGather,
  kReduceScatter,
  kAlltoAll,
  kGather,
  kScatter,
  kSend,
  kRecv
};
const char* OpKindName(OpKind k);
struct OpSig {
  uint64_t seq;  // 1-based sequence number of this operation on its VComm
  uint64_t count;
  int32_t op;    // the application's ncclRedOp_t (virtual for PreMulSum), -1 when not a reduction
  int32_t peer;  // root or peer, -1 when none
  OpKind kind;
  uint8_t datatype;  // ncclDataType_t
};

// A PreMulSum op. The application sees kVirtualOpBase + slot index.
constexpr int kVirtualOpBase = 0x40000000;
constexpr int kMaxOpsPerComm = 1024;
struct RedOpSlot {
  std::atomic<int> live{0};  // 1 while the application may use it
  int real = -1;             // the real op on the current real comm (-1: none, sandboxed)
  int next = -1;             // the real op on the next real comm (RebindObjects)
  ncclDataType_t datatype = ncclFloat32;
  ncclScalarResidence_t residence = ncclScalarHostImmediate;
  void* scalar_ptr = nullptr;  // as given (must stay valid for a device-resident scalar)
  uint8_t scalar[8] = {};      // host-immediate value, copied at creation
};

// A buffer registration (ncclCommRegister) or window (ncclCommWindowRegister). The application's handle
// is the address of this object.
struct RegHandle {
  static constexpr uint64_t kMagic = 0x544d524547484e31ull;  // "TMREGHN1"
  uint64_t magic = 0;
  VComm* vcomm = nullptr;
  void* buff = nullptr;
  size_t size = 0;
  void* real = nullptr;  // real handle (null when sandboxed)
  void* next = nullptr;  // on the next real comm
};
struct WinHandle {
  static constexpr uint64_t kMagic = 0x544d57494e484e31ull;  // "TMWINHN1"
  uint64_t magic = 0;
  VComm* vcomm = nullptr;
  void* buff = nullptr;
  size_t size = 0;
  int flags = 0;
  ncclWindow_t real = nullptr;
  ncclWindow_t next = nullptr;
};

// ---------------------------------------------------------------------------------------------------
// The virtual communicator

constexpr size_t kOpRing = 64;  // power of two

struct VComm {
  static constexpr uint64_t kMagic = 0x544d56434f4d4d31ull;  // "TMVCOMM1"
  static constexpr uint64_t kDead = 0x544d56434f4d4d30ull;   // destroyed
  // Atomic: other threads (tm-commpoll, the agent's tick, the migration) check it on LiveVComms' pointers while
  // ncclCommDestroy retires the VComm (ThreadSanitizer reported the plain field's race, tools_tm_train_3d).
  std::atomic<uint64_t> magic{0};
  std::atomic<ncclComm_t> real{nullptr};  // null: no real communicator (sandboxed); read through RealUse
  std::atomic<ncclComm_t> next{nullptr};  // replacement being built (migration)
  // Calls in flight on `real` (RealUse): each counts in calls[epoch & 1] from before it loads `real` until the
  // real call returned. Replacing `real` bumps the epoch and waits for the old parity to drain (InstallRealComm).
  std::atomic<uint64_t> epoch{0};
  std::atomic<uint32_t> calls[2] = {};
  uint64_t comm_key = 0;
  Lineage lineage;
  // Hot path (written by the thread issuing operations on this VComm, NCCL allows one at a time).
  std::atomic<uint64_t> seq{0};          // operations issued so far (relaxed)
  OpSig ring[kOpRing];                   // ring[(seq-1) % kOpRing] is the latest
  std::atomic<RedOpSlot*> ops{nullptr};  // kMaxOpsPerComm slots, allocated on the first PreMulSum
  std::atomic<bool> captured{false};     // an operation was issued on a stream under CUDA graph capture
  // Its creation completed: the lineage's size, rank and device are the real communicator's (or the sandbox's).
  // A non-blocking creation completes at the first ncclCommGetAsyncError that reports success; the observer is
  // told of a VComm when it completes, not before.
  std::atomic<bool> complete{false};
  // Sandbox tape replay: seq at the start of the current iteration (set at each safe point by the application
  // thread, read by it in the sandbox's emulation path only).
  uint64_t tape_base = 0;
  // Slow path, under mu.
  std::mutex mu;
  uint64_t children = 0;  // Split/Shrink made from this VComm
  std::vector<RegHandle*> regs;
  std::vector<WinHandle*> wins;
};

// Hot-path handle check: the VComm behind an application handle, or null when `comm` is not a live
// shim handle (null, foreign or destroyed), in which case the caller forwards the raw value.
inline VComm* AsVComm(ncclComm_t comm) {
  auto* v = reinterpret_cast<VComm*>(comm);
  return (v && v->magic == VComm::kMagic) ? v : nullptr;
}
inline ncclComm_t AsHandle(VComm* v) { return reinterpret_cast<ncclComm_t>(v); }

// One call's use of a VComm's real communicator (docs/shim.md, "Threads"): every entry point that calls the real
// library with `v->real` holds one for the duration of that call, so a switch never frees a communicator a call
// can still see. Counted before `real` is loaded and re-checked against the epoch (a switch in between makes the
// call count again, in the new epoch, and load the new communicator). Cost: two uncontended atomic RMWs on the
// VComm's own cache line.
class RealUse {
 public:
  explicit RealUse(VComm* v) {
    for (;;) {
      const uint64_t e = v->epoch.load(std::memory_order_acquire);
      slot_ = &v->calls[e & 1];
      slot_->fetch_add(1, std::memory_order_seq_cst);
      if (v->epoch.load(std::memory_order_seq_cst) == e) break;
      slot_->fetch_sub(1, std::memory_order_release);
    }
    real_ = v->real.load(std::memory_order_acquire);
  }
  ~RealUse() { slot_->fetch_sub(1, std::memory_order_release); }
  RealUse(const RealUse&) = delete;
  RealUse& operator=(const RealUse&) = delete;
  ncclComm_t real() const { return real_; }

 private:
  std::atomic<uint32_t>* slot_;
  ncclComm_t real_;
};

// ---------------------------------------------------------------------------------------------------
// Enumeration and the migration switch

// Every live VComm, in creation order. Pointers stay valid (pooled), check `magic` before use later.
std::vector<VComm*> LiveVComms();

struct VCommInfo {
  VComm* vcomm;
  uint64_t comm_key;
  Lineage lineage;
  ncclComm_t real;
  uint64_t seq;
};
std::vector<VCommInfo> SnapshotVComms();

// The latest operations of `v`, oldest first (at most kOpRing). Consistent only while no operation is
// being issued on `v` (e.g. at a safe point).
std::vector<OpSig> RecentOps(const VComm* v);

bool IsSandboxed(const VComm* v);

// ---------------------------------------------------------------------------------------------------
// The joiner's sandbox answers as the leaver's real communicators do (docs/migration.md, "The sandbox")

// One communicator of the rank a joiner replaces, as the coordinator's table has it (reported by the process
// holding that rank): the source of what a sandboxed communicator answers.
struct ReplacedComm {
  uint64_t index = 0;  // creation index in the process holding the rank
  CommKind kind = CommKind::kInitRank;
  int nranks = 0, rank = 0;
  int device = -1;  // ncclCommCuDevice there; -1: unknown
  bool blocking = true;
};
// The agent hands over the table the coordinator sent with REGISTER_ACK (known: it had one; not known: no alive
// worker holds the rank). Each (re)registration's table replaces the previous one for later creations; one
// without a table never erases a table already had.
void SetReplacedComms(std::vector<ReplacedComm> table, bool known);
// How long a sandboxed creation in a joiner with a coordinator waits for the table (once per process); after
// that the sandbox falls back to sizing a Split child as its parent (logged), which READY then refuses.
constexpr int kReplacedCommsWaitMs = 10000;

// Every operation's stream, when the application loaded libcudart (found with RTLD_NOLOAD once; the shim never
// loads it); otherwise a no-op. CUDA graph capture: marks `v` captured when `stream` is being captured (migration
// refuses a captured communicator: the graph holds its real communicator); hot path: one call into the runtime.
// Then the stream hook, if one is set (failure recovery's device snapshots watch the streams operations run on).
void NoteStream(VComm* v, cudaStream_t stream);
// Set once (before the first operation, or at least before the streams it needs to see are used); any thread.
using StreamHook = void (*)(cudaStream_t stream);
void SetStreamHook(StreamHook fn);
// How many VComms were marked captured so far (cheap: the agent polls it at safe points).
uint64_t CapturedCount();
// Sets the real communicator `v` uses from the next operation on and returns the previous one once no call can
// still use it (every RealUse of the old epoch ended; the caller then owns it: destroy or abort it). A call still
// inside the old communicator after kRetireWaitMs (a thread blocked in a collective) makes it return nullptr: the
// old communicator is then never freed (logged), rather than freed under that call. nullptr puts `v` in the
// sandbox (operations emulated locally). Any thread but one that holds a RealUse of `v`.
ncclComm_t InstallRealComm(VComm* v, ncclComm_t real);
// InstallRealComm in two halves, for a caller that must act on the old communicator while calls may still be
// inside it (the failure fence revokes a communicator a thread is blocked in, so that the call returns):
// SwapRealComm installs `real` at once and returns the previous communicator, which calls of the old epoch may
// still use; DrainOldCalls then waits (kRetireWaitMs at most) until they ended, and returns false (logged) when
// one is still inside `old`, which must then never be freed. No other swap of `v` may come in between.
ncclComm_t SwapRealComm(VComm* v, ncclComm_t real);
// Failure recovery's background poll (docs/recovery.md, "Detection"): ncclCommGetAsyncError of v's real
// communicator from a thread that is not the program's. *polled: that communicator (nullptr: none, sandboxed or
// being destroyed; the result is then ncclSuccess). A destroy or abort by the program waits for a poll of the
// same VComm under way (WaitForPoll, a non-blocking call's duration), so the poll never reads a freed one. One
// polling thread per process.
ncclResult_t PollAsyncError(VComm* v, ncclComm_t* polled);
void WaitForPoll(const VComm* v);
bool DrainOldCalls(VComm* v, ncclComm_t old);
constexpr int kRetireWaitMs = 10000;
// Migration: stage `next` (built in the background), re-create v's PreMulSum ops, registrations and
// windows on it (RebindObjects), then SwitchToNext at the switch point (returns the old real comm as
// InstallRealComm does; its objects are forgotten: destroying the old comm frees them). AbortNext undoes the
// staging and returns the staged comm (the caller aborts it).
void SetNextComm(VComm* v, ncclComm_t next);
ncclResult_t RebindObjects(VComm* v);
ncclComm_t SwitchToNext(VComm* v);
ncclComm_t AbortNext(VComm* v);

// Failure recovery (docs/recovery.md). When an operation on `v`'s real communicator `used` fails with `r`, the
// hot path asks OpFailedButFenced whether recovery fenced `v` (withdrew its real communicator because a member
// died): then the operation completes locally (emulated) and returns success. The installed hook
// (lib/migration/recovery.cc) may wait, bounded, for the coordinator's verdict on a peer failure that the real
// library saw first; without a hook (no coordinator) nothing is ever fenced. The application's own
// ncclCommAbort/Destroy is not a fence. v == nullptr asks about a failed ncclGroupEnd (true when this process is
// fenced). Any application thread; the hook is set once, before the first operation.
using OpFailureHook = bool (*)(VComm* v, ncclComm_t used, ncclResult_t r);
void SetOpFailureHook(OpFailureHook fn);
bool OpFailedButFenced(VComm* v, ncclComm_t used, ncclResult_t r);

// Called once a VComm's creation completed (created=true: at once for a blocking creation, at the first successful
// ncclCommGetAsyncError of a non-blocking one) and before a completed one is destroyed (false), outside every shim
// lock, on the thread that made the call. One observer (the agent), installed before the shim is marked ready
// (tmAgentStart runs inside the initialisation), so no creation by any thread is missed; the pointer is atomic.
using VCommObserver = void (*)(void* ctx, VComm* v, bool created);
void SetVCommObserver(VCommObserver fn, void* ctx);

// ---------------------------------------------------------------------------------------------------
// Safe points, regions, role

struct SafePointRecord {
  int64_t step = -1;     // the step passed to the latest tmSafePoint (-1: never called)
  uint64_t time_ns = 0;  // its steady-clock time
  uint64_t count = 0;    // tmSafePoint calls so far
  // Step timing (comm_timing.h), totals since the start over the timed steps: the intervals from the return
  // of one tmSafePoint to the next call (time held inside the safe point, e.g. by a migration, is not a
  // step), outside the sandbox. wait_ns is the part of wall_ns spent inside blocking NCCL calls.
  uint64_t timed_steps = 0;
  uint64_t wall_ns = 0;
  uint64_t wait_ns = 0;
};
// The mutex that tmShimSafePoint holds while it records a step (never held across the hook).
std::mutex& SafePointMutex();
SafePointRecord GetSafePoint();        // takes the mutex
// The lower quartile of the compute times (wall minus wait) of the timed steps after the first `after` ones (the
// element at index n/4 of the sorted n), over at most the
// latest kStepRing of them; 0 when there are none. Takes the mutex. (The agent's window, docs/stragglers.md.)
constexpr size_t kStepRing = 1024;
uint64_t StepComputeP25Ns(uint64_t after);
SafePointRecord GetSafePointLocked();  // caller holds SafePointMutex()

// Called by tmShimSafePoint after recording `step`, without locks held, on the application thread.
// Returns the step the application continues from (normally `step`). May block (migration switch).
using SafePointHook = int64_t (*)(void* ctx, int64_t step);
void SetSafePointHook(SafePointHook fn, void* ctx);

struct Region {
  std::string name;
  void* ptr;
  size_t bytes;
};
std::vector<Region> Regions();  // sorted by name; takes a mutex of its own (callable under SafePointMutex())

const Config& ProcessConfig();  // parsed once (see config.h)
inline Role ProcessRole() { return ProcessConfig().role; }

// Whether new root communicators (InitRank*, InitAll) are created without a real communicator and
// GetUniqueId returns a locally generated id. Starts true for the joiner and standby roles; migration
// clears it when the joiner switches in. Split/Shrink follow their parent (sandboxed iff the parent is).
bool ProcessSandboxed();
void SetProcessSandboxed(bool sandboxed);

// tmRank (include/trainmover/trainmover.h): the rank a standby was assigned when it took a failed rank's place
// (-1: none; tmRank then returns its argument), and whether the program ever asked (a program that reads its rank
// through tmRank can be served by a standby warmed up as any rank). Any thread.
void SetAssignedRank(int rank);
int AssignedRank();
bool RankFollowed();

// Whether this process is a leaver that reached its committed switch step: the stayers are about to destroy
// the real communicators it shares with them, so from here to its exit ncclCommGetAsyncError answers
// ncclSuccess on every VComm instead of the peers' departure (a watchdog thread, as PyTorch's, would end the
// process with an error while it hands its state over). Cleared when the migration aborts. Any thread.
bool ProcessLeaving();
void SetProcessLeaving(bool leaving);

// Optional hook for the agent: when defined (strongly) by the library that provides it, the shim calls
// it once after a successful initialisation when TRAINMOVER_COORDINATOR is set. It must not block.
extern "C" void tmAgentStart(const Config* config) __attribute__((weak));

}  // namespace trainmover::shim
