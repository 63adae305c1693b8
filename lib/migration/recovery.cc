// SPDX-License-Identifier: Apache-2.0
// The process side of failure recovery (recovery.h; docs/recovery.md has the protocol and why it is built so).
#include "recovery.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "base/cudart.h"
#include "base/host.h"
#include "base/launcher.h"
#include "base/log.h"
#include "core/binding.h"
#include "core/shim_state.h"
#include "device_snapshots.h"
#include "hand_off.h"
#include "process.h"
#include "recovery_msgs.h"
#include "snapshot_interval.h"
#include "transfer/transfer.h"

namespace trainmover::migration {

namespace {

namespace rec = control::rec;

// Background work in order, on one owned thread started on first use (it lives as long as the process, like the
// agent it serves). At exit the queue is drained: pending work is dropped and the task under way (a buddy's read
// of a snapshot) may finish, within a deadline. A reader that vanishes in the middle of a read over TCP makes
// UCX 1.13 abort the process serving it (its emulated get's reply fails on a dead endpoint), so an orderly exit
// must not leave reads behind.
class TaskQueue {
 public:
  explicit TaskQueue(World& w) : w_(w) {}
  void Push(std::function<void()> fn) {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) return;
    if (!thread_.joinable()) thread_ = w_.StartThread("tm-snapshot", [this] { Run(); });
    tasks_.push_back(std::move(fn));
    cv_.notify_all();
  }
  // No more work but `last`, run on the thread after the task under way; waits up to `limit` for both (unless
  // called from the thread). The thread stays parked (the process is ending). Returns false when a task still runs
  // past `limit` (never on the thread itself).
  bool Drain(std::chrono::milliseconds limit, std::function<void()> last) {
    std::unique_lock<std::mutex> lk(mu_);
    if (!stopping_) {
      stopping_ = true;
      tasks_.clear();
      if (thread_.joinable()) tasks_.push_back(std::move(last));
      cv_.notify_all();
    }
    if (std::this_thread::get_id() == thread_.get_id()) return true;
    return cv_.wait_for(lk, limit, [this] { return tasks_.empty() && !busy_; });
  }

 private:
  [[noreturn]] void Run() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [this] { return !tasks_.empty(); });
      std::function<void()> fn = std::move(tasks_.front());
      tasks_.pop_front();
      busy_ = true;
      lk.unlock();
      fn();
      lk.lock();
      busy_ = false;
      cv_.notify_all();
    }
  }
  World& w_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool busy_ = false;
  bool stopping_ = false;
  std::thread thread_;
};

std::vector<control::Region> Table(const std::vector<shim::Region>& regs) {
  std::vector<control::Region> out;
  for (const shim::Region& r : regs) out.push_back(control::Region{r.name, r.bytes});
  return out;
}

// The last durations of one kind, for their median (robust to a step that waited for a migration or a hold).
class Durations {
 public:
  void Add(uint64_t ns) {
    ring_[next_++ % kKept] = static_cast<double>(ns);
    count_ = std::min(count_ + 1, kKept);
  }
  bool Enough() const { return count_ >= 3; }
  double Median() const {
    std::vector<double> v(ring_, ring_ + count_);
    std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
    return v[v.size() / 2];
  }

 private:
  static constexpr size_t kKept = 15;
  double ring_[kKept] = {};
  size_t next_ = 0, count_ = 0;
};

uint64_t Bytes(const std::vector<control::Region>& table) {
  uint64_t bytes = 0;
  for (const control::Region& r : table) bytes += r.bytes;
  return bytes;
}

// Transfer regions over our own buffers, named as `table`.
std::vector<transfer::Region> Over(const std::vector<control::Region>& table, std::vector<std::vector<uint8_t>>& bufs) {
  std::vector<transfer::Region> out;
  for (size_t i = 0; i < table.size(); ++i) out.push_back(transfer::Region{table[i].name, bufs[i].data(), table[i].bytes});
  return out;
}

// What this process's snapshots and the copies it holds for others may take of its host's memory
// (TRAINMOVER_SNAPSHOT_MEMORY, split over the job's processes on this host), and how that was reckoned.
struct MemoryShare {
  uint64_t bytes = UINT64_MAX;  // unlimited when the host's memory cannot be read
  std::string how;

  static MemoryShare OfThisProcess(double fraction) {
    MemoryShare m;
    const uint64_t host = base::HostMemoryBytes();
    const int processes = base::LocalWorldFromEnv();
    if (host == 0) {
      m.how = "this host's memory unknown: no limit";
      return m;
    }
    m.bytes = static_cast<uint64_t>(static_cast<double>(host) * fraction / static_cast<double>(processes));
    m.how = "TRAINMOVER_SNAPSHOT_MEMORY=" + Fixed(fraction, 2) + " of " + GiB(host) + " GiB over LOCAL_WORLD_SIZE=" +
            std::to_string(processes) + " processes: " + GiB(m.bytes) + " GiB";
    return m;
  }
  static std::string GiB(uint64_t bytes) { return Fixed(static_cast<double>(bytes) / double(1ull << 30), 2); }
  static std::string Fixed(double v, int digits) {
    char b[32];
    std::snprintf(b, sizeof b, "%.*f", digits, v);
    return b;
  }
};

class Recovery {
 public:
  Recovery(World& w, ProcessMachine* pm) : w_(w), pm_(pm), queue_(w) {
    const shim::Config& c = shim::ProcessConfig();
    on_ = c.recovery != "off";
    adaptive_ = c.snapshot_every == 0;  // auto: 1 until the coordinator says otherwise
    every_ = adaptive_ ? 1 : c.snapshot_every;
    budget_ = c.snapshot_budget;
    copies_ = c.snapshot_copies;
    memory_ = MemoryShare::OfThisProcess(c.snapshot_memory);
  }

  void OnCommand(const control::Command& c);
  int64_t OnSafePoint(int64_t step, bool step_clean);
  bool Fenced() {
    std::lock_guard<std::mutex> lk(mu_);
    return fenced_;
  }
  bool OnOpFailure(shim::VComm* v, ncclComm_t used, ncclResult_t r);
  void SnapshotSwitchStep(int64_t step) {
    std::unique_lock<std::mutex> lk(mu_);
    if (fenced_ || !give_up_.empty()) return;
    TakeSnapshot(lk, step);
    switch_snapshot_ = step;
  }
  void Drain() {
    StopPoll();
    // Then this process's reads of others' snapshots close their endpoints in order: a reader that just exits
    // leaves UCX 1.13's TCP transport in the serving process to a fatal error ("failed to modify event handler",
    // multihost_launch: the ranks of the node that finished first were the readers). The copies it exposed for a
    // replacement stop serving there too.
    const bool idle = queue_.Drain(std::chrono::milliseconds(kExitDrainMs), [this] {
      held_.clear();
      client_.reset();
      for (const std::unique_ptr<transfer::StateServer>& s : exposed_) s->Abandon();
    });
    if (!idle) {
      TM_WARN(kLogMigration, "failure recovery: the snapshot task under way did not end within %d ms of the exit",
              kExitDrainMs);
    }
    // Then this process's own slots, adopted or staged: their servers' progress threads would otherwise run on in
    // ucp_worker_progress while libucs's static destructors tear UCX down (ThreadSanitizer, recovery_stale). A set
    // that a staging thread (tm-snapshot, or a first safe point) finishes after this stops itself (ending_).
    std::lock_guard<std::mutex> lk(mu_);
    ending_ = true;
    StopServing(slots_);
    if (staged_) StopServing(staged_->slots);
  }
  void PrepareSlots() {
    std::lock_guard<std::mutex> lk(mu_);
    const std::vector<shim::Region> regs = shim::Regions();
    if (on_ && !regs.empty()) (void)AdoptSlots(regs, nullptr);
  }
  void AwaitSlots() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait_for(lk, std::chrono::milliseconds(kSlotSetUpWaitMs), [this] { return !staging_ && warmed_; });
  }
  void StartPoll();
  // NoteStream's hook: every collective's stream, when libcudart is loaded.
  void OnStream(cudaStream_t stream) {
    if (DeviceSnapshots* d = Device()) d->OnStream(stream);
  }

 private:
  // A buffer of a device region's slot, page-locked (DeviceSnapshots::Pin) while it lives.
  struct Pinned {
    DeviceSnapshots* device;
    void* host;
    ~Pinned() { device->Unpin(host); }
  };
  // A local snapshot: the registered regions copied at one safe point, exposed to the buddies.
  struct Slot {
    int64_t step = -1;
    std::vector<std::vector<uint8_t>> bufs;     // one per region of layout_
    std::vector<std::unique_ptr<Pinned>> pins;  // after bufs: unpinned before they are freed
    std::unique_ptr<transfer::StateServer> server;
  };
  // A buddy's connection to one slot of another rank, and the buffers it reads into (the fetch is destroyed first).
  struct Conn {
    std::vector<uint8_t> descriptor;  // of the owner's slot the fetch is connected to
    std::vector<std::vector<uint8_t>> bufs;
    std::unique_ptr<transfer::PreparedFetch> fetch;
  };
  // A buddy's copies of another rank's snapshots, one per slot of that rank (tm-snapshot thread only).
  struct Copy {
    int64_t step = -1;  // verified copy of this step in `now`, -1 while none (or being read)
    Conn now;
    Conn warm;  // SNAP_WARM: connected to a slot not pulled yet, and read once; taken over by its first pull
  };
  // Slots made for one region table, off the application thread (tm-snapshot); adopted at a safe point.
  struct SlotSet {
    std::vector<control::Region> table;
    std::vector<bool> device;  // which regions are device memory (their buffers pinned)
    Slot slots[kSnapshotSlots];
    std::string error;  // set up failed: no snapshots
  };
  struct Held {
    std::vector<control::Region> regions;
    Copy copies[kSnapshotSlots];
  };
  // At the process's end: the slots' servers stop serving (progress threads joined, nothing mapped any more) and
  // keep their UCX worker and context (StateServer::Abandon: UCX 1.13 may abort the process when it destroys a
  // worker whose peer was cut off), so no thread of theirs runs while UCX's static destructors tear it down.
  static void StopServing(Slot (&slots)[kSnapshotSlots]) {
    for (Slot& s : slots) {
      if (s.server) s.server->Abandon();
    }
  }

  void Send(rec::Ev kind, const rec::RecMsg& m) {
    control::Event e;
    e.kind = static_cast<uint16_t>(kind);
    e.migration = rec_id_.load(std::memory_order_relaxed);
    e.body = control::EncodePayload(m);
    w_.SendEvent(std::move(e));
  }
  [[noreturn]] void Exit(std::unique_lock<std::mutex>& lk, const std::string& why) {
    lk.unlock();
    w_.Exit(1, "failure recovery impossible: " + why + "; this process ends");
    __builtin_unreachable();  // World::Exit does not return
  }

  // Owner (application thread, mu_ held).
  void TakeSnapshot(std::unique_lock<std::mutex>& lk, int64_t step);
  bool SlotsFit(const std::vector<shim::Region>& regs) const;  // the regions the slots were made for
  // Into the oldest slot but the pinned one: host regions copied; device regions by stream-ordered copies whose
  // generation goes to *copies, or, when `now`, copied before it returns. -1 when a device copy failed (logged).
  int CopyIntoSlot(const std::vector<shim::Region>& regs, int64_t step, bool now, uint64_t* copies);
  // The device snapshots, made on first use when a CUDA runtime is loaded; null otherwise (device_why_ says why).
  DeviceSnapshots* Device();
  bool AnyDevice(const std::vector<shim::Region>& regs);
  Slot* SlotAt(int64_t step);  // the slot holding `step`, or null
  void KeepExactState(int64_t step);
  void WaitShipped(std::unique_lock<std::mutex>& lk);
  bool AdoptSlots(const std::vector<shim::Region>& regs, std::unique_lock<std::mutex>* build_here);
  std::unique_ptr<SlotSet> BuildSlots(std::vector<control::Region> table, std::vector<bool> device);
  // Buddy: whether a copy of `bytes` more fits in this process's share of memory with its own slots and the copies
  // it holds; else *why says so.
  bool CopyFits(uint64_t bytes, std::string* why);
  int64_t HoldAndRollBack(std::unique_lock<std::mutex>& lk, int64_t step, bool step_clean);
  void OnFence(uint64_t id, const rec::RecMsg& m);
  using Withdrawn = std::vector<std::pair<shim::VComm*, ncclComm_t>>;
  Withdrawn WithdrawFenced();
  void Revoke(const Withdrawn& withdrawn);
  // tm-commpoll thread.
  void PollComms(std::set<ncclComm_t>& reported);
  // tm-snapshot thread.
  void SendTaken(int slot, int64_t step, int64_t wish, std::vector<control::Region> table, uint64_t copies);
  void Pull(const rec::RecMsg& m);
  void WarmNext();
  void Warm(const rec::RecMsg& m);
  void ExposeHeld(const rec::RecMsg& m);
  transfer::StateClient* Client();

  World& w_;
  ProcessMachine* pm_;
  bool on_ = true;
  int64_t every_ = 1;  // the interval in effect (mu_): TRAINMOVER_SNAPSHOT_EVERY, or under auto the coordinator's
  // TRAINMOVER_SNAPSHOT_EVERY=auto (application thread, mu_): what a snapshot costs this rank's safe points and how
  // long its steps take between them; the interval they call for goes to the coordinator with SNAP_TAKEN.
  bool adaptive_ = false;
  double budget_ = 0.02;
  int64_t copies_ = 1;  // TRAINMOVER_SNAPSHOT_COPIES: the copies of its snapshots a rank's buddies hold
  MemoryShare memory_;  // TRAINMOVER_SNAPSHOT_MEMORY: const after construction
  std::once_flag device_once_;
  std::unique_ptr<DeviceSnapshots> device_;  // set once (Device)
  std::string device_why_;
  std::atomic<uint64_t> own_bytes_{0};  // the newest slot set's buffers (BuildSlots), read by the buddy side
  Durations snapshot_cost_, step_time_;
  int64_t unmeasured_copy_ns_ = -1;  // the copy of the newest snapshot, until its wait for the buddy is known too
  uint64_t last_exit_ns_ = 0;        // when the previous safe point returned

  std::mutex mu_;
  std::condition_variable cv_;
  // The recovery record of the latest command (agent thread), which every event names. Atomic: events are sent from
  // every thread, some with mu_ held (ThreadSanitizer, recovery_standby_lost: a pull's SNAP_HELD read it while a
  // FENCE wrote it); a tag, ordered with nothing else.
  std::atomic<uint64_t> rec_id_{0};
  // Owner.
  std::vector<shim::Region> layout_;  // the regions the slots were made for
  std::vector<bool> layout_device_;   // which of them are device memory
  Slot slots_[kSnapshotSlots];
  std::unique_ptr<SlotSet> staged_;  // built in the background, not adopted yet
  bool staging_ = false;             // a BuildSlots task is queued or running
  bool warmed_ = true;               // the coordinator's SNAP_WARMs after this process's SLOT_EXPOSED are done
  std::deque<rec::RecMsg> warms_;    // SNAP_WARMs not run yet: one task each, so that pulls run between them
  bool warming_ = false;             // a WarmNext task is queued or running
  bool ending_ = false;              // Drain: the slots stopped serving; no snapshot, no new slot set any more
  int64_t pending_ = -1;  // the newest snapshot until SNAP_SHIPPED says it is on every buddy
  int64_t switch_snapshot_ = -1;  // a switch step snapshotted before the hold (SnapshotSwitchStep): not taken again
  int64_t pinned_ = -1;   // SNAP_SHIPPED: the newest step complete everywhere; its slot is never overwritten
  bool device_warned_ = false, ship_warned_ = false, budget_warned_ = false;
  // A wait for SNAP_SHIPPED ran out and no SNAP_SHIPPED came since: later safe points do not wait (one stall per
  // outage, not kShipWaitMs at every safe point); the next SNAP_SHIPPED ends it.
  bool ship_outage_ = false;
  // Fence.
  uint64_t epoch_ = 0;  // latest failure epoch fenced here
  bool fenced_ = false;
  int32_t failed_rank_ = -1;
  int64_t passed_ = -1;  // the step the last safe point returned (FENCE_AT reports it)
  // HOLD_AFTER of epoch hold_after_epoch_: the safe points up to hold_after_ pass, the first after it holds.
  int64_t hold_after_ = -1;
  uint64_t hold_after_epoch_ = 0;
  std::vector<uint64_t> fence_keys_;  // the comm_keys the fences named (until the rollback)
  std::vector<ncclComm_t> withdrawn_;  // revoked real communicators, aborted at the rollback
  std::vector<shim::VComm*> fenced_comms_;  // the VComms they were withdrawn from (until the rollback)
  int64_t rollback_step_ = -1;
  std::string give_up_;
  // Buddy (tm-snapshot thread only).
  TaskQueue queue_;
  std::map<int32_t, Held> held_;
  std::unique_ptr<transfer::StateClient> client_;
  std::vector<std::unique_ptr<transfer::StateServer>> exposed_;
  // The background poll of the real communicators: until Drain (at exit), which wakes and joins it, so that it
  // is not inside PollComms while the shim's statics are destroyed (ThreadSanitizer reported it unjoined).
  void StopPoll();
  std::mutex poll_mu_;
  std::condition_variable poll_cv_;
  bool polling_ = false;  // poll_mu_
  std::thread poll_thread_;
};

// ---- commands (agent thread)

void Recovery::OnCommand(const control::Command& c) {
  rec::RecMsg m;
  if (!control::DecodePayload(c.body, &m)) {
    TM_WARN(kLogMigration, "failure recovery: malformed %s body, ignored", rec::RecCmdName(c.kind));
    return;
  }
  if (c.migration) rec_id_.store(c.migration, std::memory_order_relaxed);
  switch (static_cast<rec::Cmd>(c.kind)) {
    case rec::Cmd::kSnapPull:
      return queue_.Push([this, m] { Pull(m); });
    case rec::Cmd::kExposeHeld:
      return queue_.Push([this, m] { ExposeHeld(m); });
    case rec::Cmd::kSnapDrop:
      return queue_.Push([this, m] {
        if (held_.erase(m.rank) != 0) {
          TM_INFO(kLogMigration, "failure recovery: dropped the copies of rank %d's snapshots: its buddies now hold "
                                 "step %lld", m.rank, static_cast<long long>(m.step));
        }
      });
    case rec::Cmd::kSnapWarm: {
      std::lock_guard<std::mutex> lk(mu_);
      warms_.push_back(m);
      if (!std::exchange(warming_, true)) queue_.Push([this] { WarmNext(); });
      return;
    }
    case rec::Cmd::kFence:
      return OnFence(c.migration, m);
    case rec::Cmd::kSnapShipped: {
      std::lock_guard<std::mutex> lk(mu_);
      if (m.step == pending_) pending_ = -1;
      if (std::exchange(ship_outage_, false)) {
        TM_INFO(kLogMigration, "failure recovery: snapshots reach their buddies again (step %lld shipped); safe "
                               "points wait for them again", static_cast<long long>(m.step));
        ship_warned_ = false;
      }
      pinned_ = std::max(pinned_, m.complete);
      if (adaptive_ && m.every > 0 && m.every != every_) {
        TM_INFO(kLogMigration, "failure recovery: snapshot interval %lld -> %lld (TRAINMOVER_SNAPSHOT_EVERY=auto)",
                static_cast<long long>(every_), static_cast<long long>(m.every));
        every_ = m.every;
      }
      cv_.notify_all();
      return;
    }
    case rec::Cmd::kHoldAfter: {
      std::lock_guard<std::mutex> lk(mu_);
      if (m.epoch == epoch_ && fenced_) hold_after_ = m.step, hold_after_epoch_ = m.epoch;
      cv_.notify_all();
      return;
    }
    case rec::Cmd::kRollback: {
      std::lock_guard<std::mutex> lk(mu_);
      if (m.epoch == epoch_ && fenced_) rollback_step_ = m.step;
      cv_.notify_all();
      return;
    }
    case rec::Cmd::kProbe:  // a peer's library reported a communicator of ours failed: we are alive
      return Send(rec::Ev::kProbed, rec::RecMsg{.step = m.step});
    case rec::Cmd::kFenced:  // on the agent thread, at once: nothing of this process may reach the job any more
      // With a text: a leaver out of step after its migration's switch (docs/reliability.md, "The commit point").
      w_.Exit(1, !m.text.empty() ? m.text
                                 : "failure recovery: this process (rank " + std::to_string(m.rank) +
                                       ") was declared failed in epoch " + std::to_string(m.epoch) +
                                       " and replaced; it ends without touching the job (stale epoch)");
      return;
    case rec::Cmd::kGiveUp: {
      std::lock_guard<std::mutex> lk(mu_);
      give_up_ = m.text.empty() ? "the coordinator gave up" : m.text;
      TM_WARN(kLogMigration, "failure recovery: %s", give_up_.c_str());
      cv_.notify_all();
      return;
    }
  }
  TM_WARN(kLogMigration, "failure recovery: unknown command %u ignored", c.kind);
}

// The communicators that contain the failed rank lose their real communicator: new operations complete locally,
// one in flight returns (revoked) and completes locally too (OpFailedButFenced). The revoked communicators stay
// allocated (a thread may still be returning from one) until the rollback aborts them.
void Recovery::OnFence(uint64_t id, const rec::RecMsg& m) {
  Withdrawn withdrawn;
  int64_t passed;
  bool again;
  {
    std::lock_guard<std::mutex> lk(mu_);
    // Sent again after a reconnection: only the answer may have been lost; no safe point passed since without
    // HOLD_AFTER, so passed_ is what it said then.
    again = m.epoch == epoch_ && fenced_;
    if (!again && m.epoch <= epoch_) return;
    passed = passed_;
    if (!again) {
      epoch_ = m.epoch;
      rec_id_.store(id, std::memory_order_relaxed);
      fenced_ = true;
      failed_rank_ = m.rank;
      rollback_step_ = -1;
      fence_keys_.insert(fence_keys_.end(), m.words.begin(), m.words.end());
      withdrawn = WithdrawFenced();
      cv_.notify_all();
    }
  }
  Send(rec::Ev::kFenceAt, rec::RecMsg{.epoch = m.epoch, .step = passed});
  if (again) return;
  Revoke(withdrawn);
  TM_WARN(kLogMigration,
          "failure recovery: rank %d failed (epoch %llu); %zu communicator(s) fenced: their operations complete "
          "locally until the next safe point",
          m.rank, static_cast<unsigned long long>(m.epoch), withdrawn.size());
}

// The VComms of the fenced keys lose their real communicator (mu_ held): at the fence, and at each fenced safe point
// again, for one that got a real communicator since (a migration's switch right after the fence installs replacements
// under the failed rank's keys: a joiner's rekeyed VComms, a stayer's staged replacement).
Recovery::Withdrawn Recovery::WithdrawFenced() {
  Withdrawn out;
  for (shim::VComm* v : shim::LiveVComms()) {
    if (v->magic != shim::VComm::kMagic ||
        std::find(fence_keys_.begin(), fence_keys_.end(), v->comm_key) == fence_keys_.end()) {
      continue;
    }
    if (std::find(fenced_comms_.begin(), fenced_comms_.end(), v) == fenced_comms_.end()) fenced_comms_.push_back(v);
    if (ncclComm_t old = shim::SwapRealComm(v, nullptr)) out.push_back({v, old});
  }
  return out;
}

// Without mu_. Revoke first, so that a call blocked inside a withdrawn communicator returns; then wait for such calls
// to end before the communicator may ever be aborted (at the rollback; one still inside after the deadline keeps it
// allocated).
void Recovery::Revoke(const Withdrawn& withdrawn) {
  for (const auto& [v, c] : withdrawn) {
    if (shim::g_real.CommRevoke) (void)shim::g_real.CommRevoke(c, NCCL_REVOKE_DEFAULT);
  }
  std::vector<ncclComm_t> drained;
  for (const auto& [v, c] : withdrawn) {
    if (shim::DrainOldCalls(v, c)) drained.push_back(c);
  }
  std::lock_guard<std::mutex> lk(mu_);
  withdrawn_.insert(withdrawn_.end(), drained.begin(), drained.end());
}

// ---- the background poll (tm-commpoll)

// Every TRAINMOVER_COMM_POLL_MS, ncclCommGetAsyncError of each real communicator not fenced: a failure the library
// sees (a peer died, a peer unreachable) is reported to the coordinator once per communicator (COMM_FAULT), which
// probes the members and declares one that does not answer failed. Bounded cost: one non-blocking library call per
// communicator per period (hostnccl: a zero-timeout poll of its liveness sockets when no operation runs).
void Recovery::StartPoll() {
  const int64_t every = shim::ProcessConfig().comm_poll_ms;
  if (!on_ || every <= 0) return;
  polling_ = true;
  poll_thread_ = w_.StartThread("tm-commpoll", [this, every] {
    std::set<ncclComm_t> reported;
    std::unique_lock<std::mutex> lk(poll_mu_);
    while (!poll_cv_.wait_for(lk, std::chrono::milliseconds(every), [this] { return !polling_; })) {
      lk.unlock();
      if (w_.Connected() && !shim::ProcessSandboxed() && !shim::ProcessLeaving()) PollComms(reported);
      lk.lock();
    }
  });
}

void Recovery::StopPoll() {
  {
    std::lock_guard<std::mutex> lk(poll_mu_);
    polling_ = false;
  }
  poll_cv_.notify_all();
  // World::Exit drains too; from the poll thread itself (a fatal verdict while polling) there is nothing to join.
  if (poll_thread_.joinable() && poll_thread_.get_id() != std::this_thread::get_id()) poll_thread_.join();
}

void Recovery::PollComms(std::set<ncclComm_t>& reported) {
  for (shim::VComm* v : shim::LiveVComms()) {
    if (v->magic != shim::VComm::kMagic || v->next.load(std::memory_order_acquire)) continue;  // a migration's
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (std::find(fenced_comms_.begin(), fenced_comms_.end(), v) != fenced_comms_.end()) continue;
    }
    ncclComm_t real = nullptr;
    const ncclResult_t async = shim::PollAsyncError(v, &real);
    if (!real || async == ncclSuccess || async == ncclInProgress || !reported.insert(real).second) continue;
    TM_WARN(kLogMigration, "failure recovery: communicator %llu reports %s (background poll); told the coordinator",
            static_cast<unsigned long long>(v->comm_key), ncclGetErrorString(async));
    Send(rec::Ev::kCommFault, rec::RecMsg{.slot = static_cast<uint32_t>(async), .words = {v->comm_key}});
  }
}

// ---- application threads

bool Recovery::OnOpFailure(shim::VComm* v, ncclComm_t used, ncclResult_t r) {
  auto fenced = [&] {
    return v ? std::find(fenced_comms_.begin(), fenced_comms_.end(), v) != fenced_comms_.end() &&
                   v->real.load(std::memory_order_acquire) != used
             : fenced_;
  };
  std::unique_lock<std::mutex> lk(mu_);
  if (fenced()) return true;
  if (!on_ || r == ncclInvalidArgument || shim::GetSafePoint().count == 0) return false;  // as without the shim
  const uint64_t deadline = w_.MonotonicNs() + uint64_t{kVerdictWaitMs} * 1000000ull;
  for (;;) {
    if (fenced()) return true;
    // A lost control connection is no verdict: the agent reconnects meanwhile (a process woken from a long
    // SIGSTOP finds its old connection closed, and the coordinator's FENCED, "replaced: end", comes on the new one).
    if (!give_up_.empty() || w_.MonotonicNs() >= deadline) return false;
    cv_.wait_for(lk, std::chrono::milliseconds(20));
  }
}

int64_t Recovery::OnSafePoint(int64_t step, bool step_clean) {
  std::unique_lock<std::mutex> lk(mu_);
  if (adaptive_ && last_exit_ns_ && !shim::ProcessSandboxed()) {  // the program's own step (a sandbox's is emulated)
    step_time_.Add(w_.MonotonicNs() - last_exit_ns_);
  }
  const bool snapped = step == std::exchange(switch_snapshot_, -1);  // at the switch, before AT_STEP
  if (!fenced_ && give_up_.empty() && !snapped) TakeSnapshot(lk, step);
  if (!give_up_.empty()) Exit(lk, give_up_);
  const int64_t next = fenced_ ? HoldAndRollBack(lk, step, step_clean) : step;
  if (!shim::ProcessSandboxed()) passed_ = next;  // a joiner's shadow steps are its own, not the job's
  last_exit_ns_ = w_.MonotonicNs();
  return next;
}

// The previous snapshot must be on its buddies before this safe point passes: so the newest step a buddy holds is
// never more than TRAINMOVER_SNAPSHOT_EVERY behind the last safe point this rank passed (the bound on lost steps).
// The wait is usually none (the pull takes less than a step); it ends early on a fence, a give-up or a lost
// coordinator, and after kShipWaitMs the rank goes on without the bound (one WARN) rather than stall the job.
void Recovery::WaitShipped(std::unique_lock<std::mutex>& lk) {
  const uint64_t t0 = w_.MonotonicNs(), deadline = t0 + (ship_outage_ ? 0 : uint64_t{kShipWaitMs} * 1000000ull);
  const int64_t waited_for = pending_;
  while (pending_ >= 0 && !fenced_ && give_up_.empty() && w_.Connected() && w_.MonotonicNs() < deadline) {
    cv_.wait_for(lk, std::chrono::milliseconds(20));
  }
  if (waited_for >= 0) {
    TM_TRACE(kLogMigration, "failure recovery: waited %.3f ms for the snapshot of step %lld to reach its buddies",
             (w_.MonotonicNs() - t0) / 1e6, static_cast<long long>(waited_for));
  }
  if (pending_ >= 0 && !fenced_ && give_up_.empty()) {
    if (!ship_warned_ && w_.Connected()) {
      TM_WARN(kLogMigration, "failure recovery: the snapshot of step %lld is not on its buddy after %d ms; going on "
                             "without it, and without waiting at later safe points until a snapshot reaches its buddy "
                             "again (more steps are lost if this rank fails now)",
              static_cast<long long>(pending_), kShipWaitMs);
    }
    ship_warned_ = true;
    ship_outage_ = true;
    pending_ = -1;
  }
  // What the newest snapshot cost this rank's safe points: its copy, and the wait for its buddies here.
  if (unmeasured_copy_ns_ >= 0 && pending_ < 0 && !fenced_ && give_up_.empty()) {
    snapshot_cost_.Add(static_cast<uint64_t>(unmeasured_copy_ns_) + (w_.MonotonicNs() - t0));
    unmeasured_copy_ns_ = -1;
  }
}

// Every TRAINMOVER_SNAPSHOT_EVERY-th step (positive multiples: before the first, nothing can be recovered): a copy of the registered regions into the oldest slot but the pinned one;
// hashed and announced (SNAP_TAKEN) in the background, pulled by the buddies.
void Recovery::TakeSnapshot(std::unique_lock<std::mutex>& lk, int64_t step) {
  if (!on_ || ending_ || shim::ProcessSandboxed()) return;
  WaitShipped(lk);
  if (fenced_ || !give_up_.empty() || step <= 0 || step % every_ != 0 || !w_.Connected()) return;
  std::vector<shim::Region> regs = shim::Regions();
  if (regs.empty()) return;
  if (Device() == nullptr && AnyDevice(regs)) {  // a usable runtime first: no CUDA query per region and step
    if (!device_warned_) {
      TM_WARN(kLogMigration, "failure recovery: registered device memory cannot be snapshotted (%s), so this rank "
                             "takes no snapshots (a failure of it cannot be recovered)", device_why_.c_str());
    }
    device_warned_ = true;
    return;
  }
  // A process's first slot set is built here, at its first safe point, unless its sandbox started it (a joiner):
  // every rank then snapshots from its first step on, so a failure soon after the start finds a step all hold.
  if (!SlotsFit(regs) && !AdoptSlots(regs, layout_.empty() ? &lk : nullptr)) return;
  if (fenced_ || !give_up_.empty()) return;  // it came while the first set was built
  // The previous snapshot is shipped (its hash and its pulls are over), so the slot written is not being pulled. A
  // pull still reading a slot being overwritten (the wait above gave up) fails its verification, nothing worse.
  const uint64_t t0 = w_.MonotonicNs();
  uint64_t copies = 0;
  const int k = CopyIntoSlot(regs, step, /*now=*/false, &copies);
  if (k < 0) return;
  pending_ = step;
  if (adaptive_) unmeasured_copy_ns_ = static_cast<int64_t>(w_.MonotonicNs() - t0);
  // Under auto, the interval this rank's own costs call for (0 until it has measured a few snapshots and steps).
  const int64_t wish = adaptive_ && snapshot_cost_.Enough() && step_time_.Enough()
                           ? SnapshotInterval(snapshot_cost_.Median(), step_time_.Median(), budget_, every_)
                           : 0;
  if (wish == kMaxSnapshotInterval && !budget_warned_ &&
      snapshot_cost_.Median() > budget_ * kMaxSnapshotInterval * step_time_.Median()) {
    TM_WARN(kLogMigration, "failure recovery: a snapshot costs %.1f ms and a step %.3f ms: even every %lld steps "
                           "the snapshots cost more than TRAINMOVER_SNAPSHOT_BUDGET=%g", snapshot_cost_.Median() / 1e6,
            step_time_.Median() / 1e6, static_cast<long long>(kMaxSnapshotInterval), budget_);
    budget_warned_ = true;
  }
  queue_.Push([this, k, step, wish, copies, table = Table(regs)] { SendTaken(k, step, wish, table, copies); });
}

bool Recovery::SlotsFit(const std::vector<shim::Region>& regs) const {
  bool same = regs.size() == layout_.size();
  for (size_t i = 0; same && i < regs.size(); ++i) {
    same = regs[i].name == layout_[i].name && regs[i].bytes == layout_[i].bytes;
  }
  return same;
}

int Recovery::CopyIntoSlot(const std::vector<shim::Region>& regs, int64_t step, bool now, uint64_t* copies) {
  int k = -1;
  for (int i = 0; i < kSnapshotSlots; ++i) {
    if ((pinned_ < 0 || slots_[i].step != pinned_) && (k < 0 || slots_[i].step < slots_[k].step)) k = i;
  }
  k = std::max(k, 0);  // every slot holds the pinned step (copies of one step): any of them
  Slot& s = slots_[k];
  std::vector<DeviceSnapshots::Copy> on_device;
  for (size_t i = 0; i < regs.size(); ++i) {
    if (layout_device_[i]) {
      on_device.push_back({s.bufs[i].data(), regs[i].ptr, regs[i].bytes});
    } else {
      std::memcpy(s.bufs[i].data(), regs[i].ptr, regs[i].bytes);
    }
  }
  *copies = 0;
  std::string err;
  bool ok = true;
  if (now) {
    for (const DeviceSnapshots::Copy& c : on_device) ok = ok && device_->CopySync(c.host, c.device, c.bytes, &err);
  } else if (!on_device.empty()) {
    ok = (*copies = device_->Start(on_device, &err)) != 0;
  }
  if (!ok) {
    TM_WARN(kLogMigration, "failure recovery: no snapshot of step %lld: %s", static_cast<long long>(step), err.c_str());
    s.step = -1;
    return -1;
  }
  s.step = step;
  return k;
}

DeviceSnapshots* Recovery::Device() {
  std::call_once(device_once_, [this] { device_ = DeviceSnapshots::Create(base::CudartIfLoaded(), &device_why_); });
  return device_.get();
}

bool Recovery::AnyDevice(const std::vector<shim::Region>& regs) {
  const base::Cudart* rt = base::CudartIfLoaded();
  return std::any_of(regs.begin(), regs.end(), [rt](const shim::Region& r) { return base::IsDevicePointer(rt, r.ptr); });
}

Recovery::Slot* Recovery::SlotAt(int64_t step) {
  Slot* s = nullptr;
  for (Slot& x : slots_) s = x.step == step ? &x : s;
  return s;
}

// A fenced safe point that passes, fenced after it began: the regions hold the state at `step` exactly (every
// operation of the step before ran for real), kept in a slot, not shipped, so that the hold after it offers this
// step too. A joiner fenced while it switches in has no other step in common with the stayers
// (recovery_after_switch); the slots its sandbox set up are adopted here (its snapshots would have adopted them at
// this safe point). mu_ held.
void Recovery::KeepExactState(int64_t step) {
  if (step < 0 || SlotAt(step)) return;
  const std::vector<shim::Region> regs = shim::Regions();
  uint64_t copies = 0;
  if ((SlotsFit(regs) || AdoptSlots(regs, nullptr)) && (Device() || !AnyDevice(regs))) {
    (void)CopyIntoSlot(regs, step, /*now=*/true, &copies);
  }
}

// New regions (or the first snapshot): one buffer set per slot, each exposed by its own StateServer (a client
// reads one slot as one set of regions); its descriptor goes with every SNAP_TAKEN of the slot (a coordinator that
// restarted learns it again). Allocating, registering and exposing four copies of the state costs tens of ms to a
// second (UCX contexts, memory registration), so it happens on the tm-snapshot thread: a safe point that finds no
// slots for its regions starts that and takes no snapshot; the first safe point after it is done adopts them. That
// keeps it off a migration's critical path (a joiner's first safe point is right after the switch). mu_ held.
// `build_here` (a worker's first safe point, nothing built or building yet): built on this thread, mu_ released
// meanwhile, and adopted at once; startup pays it, as it pays the communicators' set-up.
bool Recovery::AdoptSlots(const std::vector<shim::Region>& regs, std::unique_lock<std::mutex>* build_here) {
  std::vector<control::Region> table = Table(regs);
  std::vector<bool> device;
  for (const shim::Region& r : regs) device.push_back(base::IsDevicePointer(base::CudartIfLoaded(), r.ptr));
  if (build_here && !staging_ && !staged_) {
    staging_ = true;
    build_here->unlock();
    std::unique_ptr<SlotSet> set = BuildSlots(table, device);
    build_here->lock();
    staged_ = std::move(set);
    staging_ = false;
    if (ending_) StopServing(staged_->slots);  // the process's end came meanwhile (Drain)
  }
  if (ending_) return false;
  if (staged_ && staged_->table == table && staged_->device == device) {
    std::unique_ptr<SlotSet> set = std::move(staged_);
    if (!set->error.empty()) {
      TM_WARN(kLogMigration, "failure recovery: no snapshots of this rank (a failure of it will be refused): %s",
              set->error.c_str());
      on_ = false;
      return false;
    }
    auto old = std::make_shared<SlotSet>();  // closed and freed in the background too
    for (int k = 0; k < kSnapshotSlots; ++k) {
      old->slots[k] = std::move(slots_[k]);
      slots_[k] = std::move(set->slots[k]);
    }
    queue_.Push([old] {
      for (Slot& x : old->slots) {
        if (x.server) x.server->Close();
      }
    });
    layout_ = regs;
    layout_device_ = set->device;
    return true;
  }
  if (!staging_) {  // none, or made for other regions (dropped when the new set is adopted)
    staging_ = true;
    queue_.Push([this, table = std::move(table), device = std::move(device)] {
      std::unique_ptr<SlotSet> set = BuildSlots(table, device);
      (void)Client();  // the buddy side too (its UCX objects come with each first Prepare: SNAP_WARM, below)
      // The coordinator has its future buddies connect to each slot and read it once, and sends this process the
      // slots it will hold copies of to do the same (SNAP_WARM, run on this thread after this task); a joiner's
      // PREPARED waits for the end of those (AwaitSlots).
      const bool announce = set->error.empty() && w_.Connected();
      for (int k = 0; announce && k < kSnapshotSlots; ++k) {
        Send(rec::Ev::kSlotExposed,
             rec::RecMsg{
                 .slot = static_cast<uint32_t>(k), .regions = set->table, .blob = set->slots[k].server->Descriptor()});
      }
      std::lock_guard<std::mutex> lk(mu_);
      staged_ = std::move(set);
      staging_ = false;
      if (ending_) StopServing(staged_->slots);  // Drain gave up waiting for this task
      warmed_ = !announce;
      cv_.notify_all();
    });
  }
  return false;
}

std::unique_ptr<Recovery::SlotSet> Recovery::BuildSlots(std::vector<control::Region> table, std::vector<bool> device) {
  auto set = std::make_unique<SlotSet>();
  set->table = std::move(table);
  set->device = std::move(device);
  // Four snapshots here and, as every rank is about as large, four copies for each rank this one is a buddy of (as
  // many as each rank has buddies): refused up front when over this process's share, rather than risk the job to the
  // out-of-memory killer in the middle of training (a migration_bench run at 1 GiB of state: 9.5 GB per rank).
  const uint64_t own = kSnapshotSlots * Bytes(set->table);
  if (own > memory_.bytes / static_cast<uint64_t>(1 + copies_)) {
    set->error = std::to_string(kSnapshotSlots) + " snapshots of " + MemoryShare::GiB(Bytes(set->table)) +
                 " GiB and the copies held for TRAINMOVER_SNAPSHOT_COPIES=" + std::to_string(copies_) +
                 " other rank(s) need " + MemoryShare::GiB(own * static_cast<uint64_t>(1 + copies_)) +
                 " GiB, more than this process's share (" + memory_.how + ")";
    return set;
  }
  own_bytes_.store(own, std::memory_order_relaxed);
  // Where the set-up time goes (TRACE): the buffers (allocated and first touched), the servers (a UCX context, worker
  // and progress thread each), the exposures (memory mapped, keys packed).
  using Clock = std::chrono::steady_clock;
  Clock::duration bufs{}, servers{}, exposures{};
  bool unpinned = false;
  for (int k = 0; k < kSnapshotSlots && set->error.empty(); ++k) {
    Slot& s = set->slots[k];
    Clock::time_point t = Clock::now();
    for (const control::Region& r : set->table) s.bufs.emplace_back(r.bytes);
    for (size_t i = 0; i < s.bufs.size(); ++i) {  // device regions' copies into them are then asynchronous
      if (!set->device[i] || Device() == nullptr) continue;
      if (Device()->Pin(s.bufs[i].data(), s.bufs[i].size())) {
        s.pins.push_back(std::make_unique<Pinned>(Pinned{Device(), s.bufs[i].data()}));
      } else {
        unpinned = true;
      }
    }
    bufs += Clock::now() - t;
    t = Clock::now();
    transfer::Status st = transfer::StateServer::Create(HandOffServerOptions(""), &s.server);
    servers += Clock::now() - t;
    t = Clock::now();
    if (st.ok()) st = s.server->Expose(Over(set->table, s.bufs));
    exposures += Clock::now() - t;
    if (st.ok() && s.server->Descriptor().size() > control::mig::kMaxBlob / 2) {
      st = transfer::Status(transfer::Code::kInvalidArgument, "the snapshot descriptor exceeds half a control frame");
    }
    if (!st.ok()) set->error = "slot " + std::to_string(k) + ": " + st.ToString();
  }
  if (unpinned) {
    TM_INFO(kLogMigration, "failure recovery: snapshot buffers of device memory could not be page-locked "
                           "(cudaHostRegister): a snapshot's copies to them then hold its safe point until done");
  }
  auto ms = [](Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  TM_TRACE(kLogMigration,
           "failure recovery: %d snapshot slots of %llu bytes set up: buffers %.3f ms, servers %.3f ms, "
           "exposures %.3f ms",
           kSnapshotSlots, static_cast<unsigned long long>(Bytes(set->table)), ms(bufs), ms(servers), ms(exposures));
  return set;
}

// Fenced: first the coordinator's HOLD_AFTER(H), the newest safe point any survivor had passed when its fence came.
// A safe point up to H passes (returns `step`: the step's operations run on, the fenced ones locally), since another
// survivor, fenced later, may need this one in an operation of the step after it on a communicator without the
// failed rank (recovery_twice_3d: a pipeline stage held at S while the next stage, fenced 3 ms later, waited for it in
// step S's exchange, for good). The first safe point after H holds here until the coordinator names the step
// everyone rolls back to (every replacement communicator staged, the replacement's state verified), a new failure's
// fence aside (its HOLD_AFTER comes before this one's HELD is sent again). `step_clean`: the fence came after this
// safe point began, so every operation of the step ran for real and the registered regions hold the state at `step`
// exactly: it is offered as a step this process holds (with no copy: nothing changes them while held). That is the
// only step a migration's joiner fenced right after its switch holds (docs/recovery.md, "Right after a switch").
int64_t Recovery::HoldAndRollBack(std::unique_lock<std::mutex>& lk, int64_t step, bool step_clean) {
  const uint64_t t0 = w_.MonotonicNs();
  if (Withdrawn late = WithdrawFenced(); !late.empty()) {  // a switch came after the fence
    lk.unlock();
    Revoke(late);
    lk.lock();
  }
  // Each epoch has its own hold limit, as at the coordinator; held_epoch: the epoch HELD was last sent for.
  uint64_t epoch = epoch_, lost_since = 0, epoch_t0 = t0, held_epoch = 0;
  rec::RecMsg held;
  held.step = step;
  for (const Slot& x : slots_) {
    if (x.step >= 0 && !(step_clean && x.step == step)) held.words.push_back(static_cast<uint64_t>(x.step));
  }
  if (step_clean && step >= 0) held.words.push_back(static_cast<uint64_t>(step));
  while (rollback_step_ < 0 && give_up_.empty()) {
    const uint64_t now = w_.MonotonicNs();
    if (epoch_ != epoch) {  // another failure, or another replacement: its recovery names the step
      epoch = epoch_;
      epoch_t0 = now;
    }
    if (hold_after_epoch_ == epoch && held_epoch != epoch) {
      if (held_epoch == 0 && step <= hold_after_) {  // passes: not the safe point everyone holds at
        if (step_clean) KeepExactState(step);
        return step;
      }
      held.epoch = held_epoch = epoch;
      Send(rec::Ev::kHeld, held);
    }
    if (now - epoch_t0 > uint64_t{kRecoveryHoldMs} * 1000000ull) Exit(lk, "no rollback within the hold limit");
    lost_since = w_.Connected() ? 0 : (lost_since ? lost_since : now);
    if (lost_since && now - lost_since > ProcessMachine::kLostCoordinatorNs) {
      Exit(lk, "lost the coordinator during the recovery of rank " + std::to_string(failed_rank_));
    }
    cv_.wait_for(lk, std::chrono::milliseconds(50));
  }
  if (!give_up_.empty()) Exit(lk, give_up_);
  const int64_t to = rollback_step_;
  if (!(step_clean && to == step)) {  // else the regions hold the state at `to` already
    Slot* s = SlotAt(to);
    std::vector<shim::Region> regs = shim::Regions();
    if (!s || regs.size() != layout_.size()) Exit(lk, "no local snapshot of step " + std::to_string(to));
    for (size_t i = 0; i < regs.size(); ++i) {
      if (regs[i].name != layout_[i].name || regs[i].bytes != layout_[i].bytes) {
        Exit(lk, "region " + regs[i].name + " changed since the snapshot of step " + std::to_string(to));
      }
      std::string err;
      if (!layout_device_[i]) {
        std::memcpy(regs[i].ptr, s->bufs[i].data(), regs[i].bytes);
      } else if (!device_->CopySync(regs[i].ptr, s->bufs[i].data(), regs[i].bytes, &err)) {
        Exit(lk, "restoring region " + regs[i].name + " from the snapshot of step " + std::to_string(to) + ": " + err);
      }
    }
  }
  const size_t rebuilt = pm_->SwitchStagedForRecovery();
  for (ncclComm_t c : withdrawn_) (void)shim::g_real.CommAbort(c);
  withdrawn_.clear();
  fenced_comms_.clear();
  fence_keys_.clear();
  fenced_ = false;
  rollback_step_ = -1;
  pending_ = -1;  // the old timeline's snapshots are moot
  pinned_ = to;
  for (Slot& x : slots_) x.step = x.step > to ? -1 : x.step;
  queue_.Push([this, to] {  // so are the copies of them held here for others
    exposed_.clear();
    for (auto& [rank, h] : held_) {
      for (Copy& c : h.copies) c.step = c.step > to ? -1 : c.step;
    }
  });
  rec::RecMsg done;
  done.epoch = epoch;
  done.step = to;
  done.words = {w_.MonotonicNs() - t0};
  Send(rec::Ev::kRolledBack, done);
  TM_WARN(kLogMigration,
          "failure recovery: epoch %llu: rolled back from step %lld to the snapshot of step %lld; %zu communicator(s) "
          "rebuilt with the replacement of rank %d",
          static_cast<unsigned long long>(epoch), static_cast<long long>(step), static_cast<long long>(to), rebuilt,
          failed_rank_);
  return to;
}

// ---- tm-snapshot thread

void Recovery::SendTaken(int slot, int64_t step, int64_t wish, std::vector<control::Region> table, uint64_t copies) {
  std::string err;
  if (copies != 0 && !device_->Wait(copies, kShipWaitMs, &err)) {  // its device regions' copies, still in flight
    TM_WARN(kLogMigration, "failure recovery: no snapshot of step %lld: %s", static_cast<long long>(step), err.c_str());
    std::lock_guard<std::mutex> lk(mu_);
    if (slots_[slot].step == step) slots_[slot].step = -1;
    if (pending_ == step) pending_ = -1;
    cv_.notify_all();
    return;
  }
  rec::RecMsg m;
  m.step = step;
  m.every = wish;
  m.slot = static_cast<uint32_t>(slot);
  // Without mu_: the slot is not overwritten before this snapshot is shipped, which comes after this message.
  for (const std::vector<uint8_t>& b : slots_[slot].bufs) m.words.push_back(transfer::Checksum(b.data(), b.size()));
  m.regions = std::move(table);
  m.blob = slots_[slot].server->Descriptor();
  Send(rec::Ev::kSnapTaken, m);
}

transfer::StateClient* Recovery::Client() {
  if (!client_) {
    transfer::Status st = transfer::StateClient::Create(HandOffClientOptions(), &client_);
    if (!st.ok()) TM_WARN(kLogMigration, "failure recovery: no state client: %s", st.ToString().c_str());
  }
  return client_.get();
}

bool Recovery::CopyFits(uint64_t bytes, std::string* why) {
  uint64_t held = 0;
  for (const auto& [rank, h] : held_) {
    for (const Copy& c : h.copies) {
      for (const Conn* n : {&c.now, &c.warm}) {
        for (const std::vector<uint8_t>& b : n->bufs) held += b.size();
      }
    }
  }
  const uint64_t need = own_bytes_.load(std::memory_order_relaxed) + held + bytes;
  if (need <= memory_.bytes) return true;
  *why = "no room for a copy of " + MemoryShare::GiB(bytes) + " GiB: its own snapshots and the copies held here would " +
         "take " + MemoryShare::GiB(need) + " GiB, more than this process's share (" + memory_.how + ")";
  return false;
}

// A buddy reads the owner's snapshot slot one-sided into its copy of that slot and checks it against the
// owner's checksums.
void Recovery::Pull(const rec::RecMsg& m) {
  rec::RecMsg reply;
  reply.epoch = m.epoch;
  reply.rank = m.rank;
  reply.step = m.step;
  reply.slot = m.slot;
  auto fail = [&](const std::string& why) {
    reply.ok = 0;
    reply.text = why;
    TM_WARN(kLogMigration, "failure recovery: copy of rank %d's snapshot of step %lld failed: %s", m.rank,
            static_cast<long long>(m.step), why.c_str());
    Send(rec::Ev::kSnapHeld, reply);
  };
  if (m.slot >= kSnapshotSlots || m.words.size() != m.regions.size()) return fail("malformed SNAP_PULL");
  Held& h = held_[m.rank];
  if (h.regions != m.regions) {
    h = Held{};
    h.regions = m.regions;
  }
  Copy& c = h.copies[m.slot];
  c.step = -1;
  if (c.warm.fetch && c.warm.descriptor == m.blob) {  // connected and read once ahead (SNAP_WARM)
    c.now.fetch.reset();
    c.now = std::move(c.warm);
  }
  Conn& n = c.now;
  if (n.bufs.empty()) {
    std::string why;
    if (!CopyFits(Bytes(h.regions), &why)) return fail(why);
    for (const control::Region& r : h.regions) n.bufs.emplace_back(r.bytes);
  }
  transfer::FetchOptions o;
  o.expected_checksums = m.words;
  o.timeout_ms = HandOffTimeoutMs(Bytes(h.regions));
  transfer::FetchResult res;
  transfer::Status st;
  for (;;) {
    const bool kept = n.fetch && n.descriptor == m.blob;
    if (!kept) {
      n.fetch.reset();
      n.descriptor = m.blob;
      transfer::StateClient* client = Client();
      if (!client) return fail("no state client");
      st = client->Prepare(m.blob, Over(h.regions, n.bufs), o, &n.fetch);
      if (!st.ok()) {
        n.fetch.reset();
        return fail(st.ToString());
      }
    }
    st = n.fetch->Read(o, &res);
    // A kept connection that cannot be read any more ("prepare again": its UCX worker was given up after another
    // connection's request to a cut-off peer never completed, transfer/reader.h): connected again, once.
    if (!(kept && st.code() == transfer::Code::kState)) break;
    n.fetch.reset();
  }
  if (!st.ok() || !res.verified) {
    n.fetch.reset();
    return fail(st.ok() ? "not verified" : st.ToString());
  }
  c.step = m.step;
  TM_TRACE(kLogMigration, "failure recovery: holding rank %d's snapshot of step %lld (%llu bytes, %s)", m.rank,
           static_cast<long long>(m.step), static_cast<unsigned long long>(res.bytes), transfer::FetchPathName(res.path));
  Send(rec::Ev::kSnapHeld, reply);
}

// One SNAP_WARM per task: a pull that comes meanwhile runs between two of them, not after all.
void Recovery::WarmNext() {
  rec::RecMsg m;
  {
    std::lock_guard<std::mutex> lk(mu_);
    m = std::move(warms_.front());
    warms_.pop_front();
  }
  if (m.rank >= 0) Warm(m);
  std::lock_guard<std::mutex> lk(mu_);
  if (m.rank < 0) {  // the batch sent to this joiner is over
    warmed_ = true;
    cv_.notify_all();
  }
  if (warms_.empty()) {
    warming_ = false;
  } else {
    queue_.Push([this] { WarmNext(); });
  }
}

// A slot whose first pull is still to come (a migration's joiner's, or a slot of a rank the joiner will hold copies
// of after its switch): connect to it and read it once, unverified (FetchOptions::warm), into buffers of its own, so
// that the pull after the switch pays neither the connection nor the first read of each page (docs/recovery.md). A
// copy held of that slot meanwhile stays as it is; the first pull with this descriptor takes the connection over.
void Recovery::Warm(const rec::RecMsg& m) {
  Held& h = held_[m.rank];
  if (h.regions.empty()) h.regions = m.regions;
  if (m.slot >= kSnapshotSlots || h.regions != m.regions) return;
  Copy& c = h.copies[m.slot];
  if ((c.now.fetch && c.now.descriptor == m.blob) || (c.warm.fetch && c.warm.descriptor == m.blob)) return;
  transfer::StateClient* client = Client();
  if (!client) return;
  std::string why;
  if (!CopyFits(Bytes(h.regions), &why)) {  // the pull, if it comes, says so (SNAP_HELD)
    TM_INFO(kLogMigration, "failure recovery: not warming rank %d's snapshot slot %u: %s", m.rank, m.slot, why.c_str());
    return;
  }
  const uint64_t t0 = w_.MonotonicNs();
  Conn w;
  w.descriptor = m.blob;
  for (const control::Region& r : h.regions) w.bufs.emplace_back(r.bytes);
  transfer::FetchOptions o;
  o.warm = true;
  o.timeout_ms = std::min(HandOffTimeoutMs(Bytes(h.regions)), kWarmTimeoutMs);
  transfer::Status st = client->Prepare(m.blob, Over(h.regions, w.bufs), o, &w.fetch);
  if (!st.ok()) {  // the pull connects again, cold
    TM_INFO(kLogMigration, "failure recovery: warming rank %d's snapshot slot %u failed: %s", m.rank, m.slot,
            st.ToString().c_str());
    return;
  }
  TM_TRACE(kLogMigration, "failure recovery: rank %d's snapshot slot %u connected and read once in %.3f ms", m.rank,
           m.slot, (w_.MonotonicNs() - t0) / 1e6);
  c.warm.fetch.reset();
  c.warm = std::move(w);
}

// The dead rank's copy, exposed (and sealed: its checksums published) for its replacement to read.
void Recovery::ExposeHeld(const rec::RecMsg& m) {
  rec::RecMsg reply;
  reply.rank = m.rank;
  reply.step = m.step;
  reply.ok = 0;
  Copy* c = nullptr;
  auto it = held_.find(m.rank);
  if (it != held_.end()) {
    for (Copy& x : it->second.copies) c = x.step == m.step ? &x : c;
  }
  std::unique_ptr<transfer::StateServer> server;
  transfer::Status st(transfer::Code::kState, "no verified copy of that step here");
  if (c) {
    st = transfer::StateServer::Create(HandOffServerOptions(""), &server);
    if (st.ok()) st = server->Expose(Over(it->second.regions, c->now.bufs));
    if (st.ok()) st = server->Seal();
  }
  if (st.ok() && server->Descriptor().size() <= control::mig::kMaxBlob) {
    reply.ok = 1;
    reply.blob = server->Descriptor();
    exposed_.push_back(std::move(server));
  } else {
    reply.text = st.ok() ? "descriptor too large" : st.ToString();
  }
  Send(rec::Ev::kHeldExposed, reply);
}

Recovery* g_recovery = nullptr;  // never destroyed: used by the agent thread up to _exit

bool OpFailureHook(shim::VComm* v, ncclComm_t used, ncclResult_t r) { return g_recovery->OnOpFailure(v, used, r); }

}  // namespace

void InstallRecovery(World* world, ProcessMachine* machine) {
  g_recovery = new Recovery(*world, machine);
  std::atexit(RecoveryDrain);
  g_recovery->StartPoll();
  shim::SetOpFailureHook(OpFailureHook);
  shim::SetStreamHook([](cudaStream_t stream) { g_recovery->OnStream(stream); });
}

void RecoveryCommand(const control::Command& c) { g_recovery->OnCommand(c); }

bool RecoveryFenced() { return g_recovery->Fenced(); }

int64_t RecoverySafePoint(int64_t step, bool step_clean) { return g_recovery->OnSafePoint(step, step_clean); }

void RecoverySnapshotSwitchStep(int64_t step) { g_recovery->SnapshotSwitchStep(step); }

void RecoveryPrepareSlots() {
  if (g_recovery) g_recovery->PrepareSlots();
}

void RecoveryAwaitSlots() {
  if (g_recovery) g_recovery->AwaitSlots();
}

void RecoveryDrain() {
  if (g_recovery) g_recovery->Drain();
}

}  // namespace trainmover::migration
