// SPDX-License-Identifier: Apache-2.0
// process.h: the process side of a live migration as a state machine (docs/migration.md), separated from
// the world it acts on so that a unit test can drive it without processes, sockets, UCX or NCCL.
//
// ProcessMachine keeps one struct per role (Joiner, Leaver, Member: every member of a communicator that is
// rebuilt, stayers and the joiner included) with a named enum for each of their states, and handles one
// coordinator command per method. Everything outside (the agent's connection, the shim's VComms and the real
// NCCL, the state transfer, the tape, clocks and waits, thread start) goes through World; shim_world.cc is
// the real one, tests/migration/process_unit.cc a fake.
//
// Threads (the contract of migration.h): OnCommand runs on the agent thread and never blocks for long; the
// replacement builds and the state fetch run on background threads that the machine starts through World and
// owns (joined when they are reaped or when the machine is destroyed); OnSafePoint runs on the application
// thread inside tmSafePoint, and is the only place that changes which real communicator a VComm uses.
// Every field below is guarded by the machine's mutex unless noted.
#ifndef TRAINMOVER_LIB_MIGRATION_PROCESS_H_
#define TRAINMOVER_LIB_MIGRATION_PROCESS_H_

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "control/messages.h"
#include "msgs.h"

namespace trainmover::migration {

namespace mig = control::mig;

// A VComm of this process, opaque to the machine (a shim::VComm* in the shim).
using CommRef = void*;

// The leaver's exposed state (a transfer::StateServer in the shim).
class StateSource {
 public:
  virtual ~StateSource() = default;
  virtual const std::vector<uint8_t>& Descriptor() const = 0;
  // Checksums the regions as they are now (at S) and publishes them to the reader; "" or why not. Slow.
  virtual std::string Seal() = 0;
  // Whether the reader may read before Seal returned: false when Seal itself makes bytes readable (device regions:
  // it drains the device and copies staged ones, transfer::StateServer::DeviceBytes), so the seal is never
  // overlapped with the read.
  virtual bool ReadableBeforeSeal() const = 0;
  // Nothing is readable any more. Any thread; may be slow (a background job calls it after an abort).
  virtual void Close() = 0;
};

// The joiner's connection to the leaver's exposed state, made in the build phase (a transfer::PreparedFetch in the
// shim). Destroying it closes the connection (bounded).
class StateSink {
 public:
  virtual ~StateSink() = default;
  // Reads every region of the leaver into ours and verifies the checksums: "" and *summary, or the error. Slow
  // (the bytes). `corrupt`: expect checksums no transfer can produce (TRAINMOVER_FAULT=corrupt-transfer).
  virtual std::string Read(bool corrupt, const std::function<void(uint64_t, uint64_t)>& progress,
                           std::string* summary) = 0;
};

// What a replacement build produced.
struct BuildOutcome {
  enum class Kind { kBuilt, kFailed, kStopped };
  Kind kind = Kind::kFailed;
  void* comm = nullptr;  // kBuilt: the real communicator, not yet staged
  std::string error;     // kFailed
};

// The machine's view of everything outside it. Thread-safety: as each method says; most are called with the
// machine's mutex held and must not call back into the machine.
class World {
 public:
  virtual ~World() = default;

  // --- the agent (any thread)
  virtual void SendEvent(control::Event e) = 0;
  virtual bool HasAgent() const = 0;
  virtual bool Connected() const = 0;
  // Logs `line` the way the shim logs, stops the agent with BYE and ends the process with `code`.
  [[noreturn]] virtual void Exit(int code, const std::string& line) = 0;

  // --- the process
  virtual bool IsJoiner() const = 0;  // TRAINMOVER_ROLE=joiner or standby: starts in the sandbox
  // A standby (TRAINMOVER_ROLE=standby; docs/recovery.md, "Standbys"): what its STANDBY_READY says (the rank it
  // warmed up as, whether the program reads its rank through tmRank), and its assignment (tmRank answers `rank`
  // from then on; the agent re-registers with it).
  virtual bool IsStandby() const { return false; }
  virtual int32_t WarmRank() const { return -1; }
  virtual bool FollowsRank() const { return false; }
  virtual void TakeRank(int32_t /*rank*/, int32_t /*world*/) {}
  // A joiner in its sandbox (at its first safe point there, and again once it sent READY, for regions registered
  // late): failure recovery's snapshot slots and its buddy client are set up in the background, so that neither its
  // first snapshot nor its first pull of a buddy's snapshot after the switch costs the job anything (recovery.h).
  virtual void PrepareSnapshots() {}
  // A joiner connected to its leaver's state (before PREPARED): waits, bounded, for that set-up to end, so the
  // migration never switches before this process can snapshot and serve as a buddy.
  virtual void AwaitSnapshots() {}
  // A stayer committed to switch at `step`, there (application thread, the machine's mutex not held): failure
  // recovery's snapshot of that step, taken before AT_STEP instead of after the switch, so that the rank's state at
  // the switch step is on its buddy while it waits for SWITCH (docs/reliability.md, "The commit point").
  virtual void SnapshotSwitchStep(int64_t /*step*/) {}
  virtual bool Sandboxed() const = 0;
  virtual void LeaveSandbox() = 0;
  // A leaver at its committed switch step (true) or after an abort (false): shim::SetProcessLeaving.
  virtual void SetLeaving(bool leaving) = 0;
  virtual std::string Fault() const = 0;  // TRAINMOVER_FAULT (test knob)
  virtual int64_t ShadowIters() const = 0;
  // TRAINMOVER_HOLD_TIMEOUT_MS: the longest a process is held at the switch step without the coordinator's
  // decision (docs/reliability.md, "The commit point").
  virtual uint64_t HoldTimeoutMs() const { return 120000; }
  // TRAINMOVER_PHASE_TIMEOUT_MS: the longest a member builds a replacement before it gives up.
  virtual uint64_t PhaseTimeoutMs() const { return 600000; }
  virtual uint64_t TapeMaxBytes() const = 0;
  // TRAINMOVER_SEAL_OVERLAP resolved for a joiner at `destination` ("host H pid P").
  virtual bool SealOverlaps(const std::string& destination) const = 0;
  virtual uint64_t MonotonicNs() const = 0;
  virtual uint64_t RealtimeNs() const = 0;
  // Waits on `cv` (lk held, released meanwhile) for at most `ms`.
  virtual void Wait(std::unique_lock<std::mutex>& lk, std::condition_variable& cv, uint64_t ms) = 0;
  // The shim's safe-point mutex, locked, and the step recorded under it: a PROPOSE answer is ordered with
  // the application's next tmSafePoint.
  virtual std::unique_lock<std::mutex> LockSafePoint(int64_t* step) = 0;
  // Starts a background job (named tm-build, tm-fetch, tm-retire); the caller joins the thread.
  virtual std::thread StartThread(const char* name, std::function<void()> fn) = 0;

  // --- communicators (VComms and the real NCCL)
  virtual std::vector<CommRef> CommsWithKey(uint64_t key) = 0;    // live VComms with that comm_key
  virtual int32_t FirstCommRank() = 0;                            // rank in the first VComm, -1 without one
  virtual std::vector<control::CommCreated> DescribeComms() = 0;  // every VComm, creation order
  virtual std::vector<control::Region> RegionTable() = 0;
  virtual uint64_t CapturedCount() = 0;              // operations captured into CUDA graphs so far
  virtual std::vector<uint64_t> CapturedKeys() = 0;  // comm_keys of VComms with captured operations
  virtual bool NewUniqueId(std::array<uint8_t, mig::kUniqueIdBytes>* id) = 0;
  // Background thread, machine mutex not held: builds the replacement of `v` with the real non-blocking init,
  // polling `stop` (which takes the machine's mutex) until done.
  virtual BuildOutcome BuildReplacement(CommRef v, const mig::BuildEntry& e, const std::function<bool()>& stop) = 0;
  // A built replacement that will not be used (ncclCommAbort). Slow, and may wait on a peer that is gone: the
  // machine calls it on a background job, never on the agent thread nor with its mutex held.
  virtual void FreeComm(void* comm) = 0;
  // Stages `comm` as the replacement of `v` and re-creates its objects there; false if that failed (staged
  // anyway, dropped by an abort).
  virtual bool Stage(CommRef v, void* comm) = 0;
  virtual void* Unstage(CommRef v) = 0;  // unstages the replacement of `v` and returns it (FreeComm it), or null
  // To the replacement; returns the old real communicator (null when none), which the caller must retire.
  virtual void* SwitchStayer(CommRef v) = 0;
  // Background thread (tm-retire), after a switch: destroys an old real communicator, on which nothing is in
  // flight; the application meanwhile runs on the replacements.
  virtual void RetireComm(void* comm) = 0;
  // The joiner's VComm to its replacement, which has `nranks` and `rank`.
  virtual void SwitchJoiner(CommRef v, int32_t nranks, int32_t rank) = 0;
  // The joiner's VComm `v` (if still live) takes the leaver's `key` and is reported to the coordinator as one of
  // the job's communicators (its sandboxed key never was).
  virtual void Rekey(CommRef v, uint64_t key) = 0;

  // --- state transfer
  // The leaver's regions exposed for one-sided reads (remote-read-only), or *error. `destination` ("host H pid
  // P") is the joiner: on this host it is named our ptracer, so that its read works under Yama ptrace_scope 1.
  virtual std::unique_ptr<StateSource> Expose(const std::string& destination, std::string* error) = 0;
  // Background thread: everything of the hand-off but the bytes (authenticate and decode the descriptor, check
  // that it names `leaver_pid`, the pid the leaver registered with; match the regions, connect, register);
  // *note says how it will read (for the log). Null and *note = the error on failure. The leaver need not have
  // reached S.
  virtual std::unique_ptr<StateSink> Prepare(const std::vector<uint8_t>& descriptor, uint32_t leaver_pid,
                                             std::string* note) = 0;

  // --- the sandbox tape
  virtual void TapeRecordBegin() = 0;
  // Ends the recording; false when nothing was recorded, else the encoded tape (logged for `migration`).
  virtual bool TapeRecordEnd(uint64_t migration, std::vector<uint8_t>* blob) = 0;
  virtual void InstallTape(const std::vector<uint8_t>& blob) = 0;  // decoded and installed, or logged unusable
  virtual void TapeIterationBegin() = 0;
  virtual void LogReady() = 0;  // the joiner's READY line with the tape counters
};

class ProcessMachine {
 public:
  explicit ProcessMachine(World& w) : w_(w) {}
  ~ProcessMachine();  // joins the background jobs
  ProcessMachine(const ProcessMachine&) = delete;
  ProcessMachine& operator=(const ProcessMachine&) = delete;

  // Agent thread: one coordinator command (a standby's too: kinds >= standby::kFirstStandbyKind).
  void OnCommand(const control::Command& c);
  // Application thread, inside tmSafePoint (after the step was recorded): holds where the migration needs it;
  // returns the step the application continues from. May not return (the leaver and a failed joiner exit).
  // `fenced`: failure recovery has this process fenced (RecoveryFenced, read by the caller before: its mutex comes
  // before this machine's); a lost coordinator then leaves the staged replacements to the recovery.
  int64_t OnSafePoint(int64_t step, bool fenced = false);
  // Joins the background jobs that have finished (tests; OnCommand does it before starting another).
  void ReapJobs();
  // Failure recovery (recovery.h), application thread held at the rollback: the replacements that the recovery's
  // BUILD staged become the real communicators (the fenced ones were withdrawn already). Returns how many.
  size_t SwitchStagedForRecovery();

  // --- states, public for the tests

  // The leaver's sandbox tape (RECORD_TAPE; docs/migration.md, "The tape").
  enum class TapeOut {
    kIdle,       // nothing asked
    kRequested,  // RECORD_TAPE arrived: arm at the next safe point
    kRecording,  // armed this iteration: stop and send at the next safe point
  };
  // The leaver's exposed state.
  enum class Exposure {
    kNone,     // not a leaver (or aborted)
    kExposed,  // EXPOSE done: the server holds the regions for the joiner
    kSealing,  // the application thread checksums at S without the mutex: an abort leaves the server to it
  };
  // The joiner's sandbox, one value per safe point.
  enum class Sandbox {
    kStartup,    // no sandboxed safe point yet (waits for the tape at the first)
    kShadow,     // shadow iterations
    kReadySent,  // READY sent: held in tmSafePoint until SWITCH or exit
  };
  // The joiner's tape.
  enum class TapeIn { kReceiving, kInstalled };
  // The joiner's connection to the leaver's state.
  enum class Intake {
    kNone,       // no PREPARE yet (or dropped by an abort)
    kPreparing,  // PREPARE arrived: connecting on tm-fetch
    kPrepared,   // PREPARED sent: the sink waits for READ
    kReading,    // READ arrived: tm-fetch reads; an abort leaves the sink to it
    kRead,       // VERIFIED sent
  };
  // Every member's switch agreement; the step is Member::step.
  enum class Agreement {
    kNone,       // no proposal (or released by PASSED, or aborted)
    kProposed,   // ACCEPT sent for step: held there
    kCommitted,  // COMMIT(step)
    kAtStep,     // AT_STEP sent from inside tmSafePoint(step)
    kSwitch,     // SWITCH(step) arrived
  };

  struct Staged {
    CommRef v;
    int32_t nranks, rank;  // of the replacement (the leaver's, which a joiner's sandbox already answered)
  };
  struct Joiner {
    Sandbox sandbox = Sandbox::kStartup;
    int64_t sandbox_safepoints = 0;
    TapeIn tape = TapeIn::kReceiving;
    std::vector<uint8_t> tape_buf;  // chunks so far
    bool exit_pending = false;      // the migration ended without it: exit at the next safe point
    uint64_t ready_ns = 0;          // monotonic time READY (a standby: ASSIGN) came: the wait for SWITCH is
                                    // bounded from here; 0: unbounded (a standby not assigned yet)
    uint64_t switched_in = 0;       // the migration it switched in by: an ABORT of it ends this process
    std::string exit_reason;
    int exit_code = 1;              // 0: a standby dismissed at the job's end
    std::map<uint64_t, CommRef> by_leaver_key;  // MAP: leaver comm_key -> own VComm
    std::map<CommRef, uint64_t> rekey;          // own VComm -> leaver comm_key
    Intake intake = Intake::kNone;
    std::unique_ptr<StateSink> sink;  // kPrepared, kReading
  };
  struct Leaver {
    TapeOut tape = TapeOut::kIdle;
    uint64_t tape_mig = 0;
    Exposure exposure = Exposure::kNone;
    std::string destination;  // "host H pid P" of the joiner
    std::unique_ptr<StateSource> server;
  };
  struct Member {
    Agreement agreement = Agreement::kNone;
    int64_t step = -1;  // the proposed / committed / switch step
    uint64_t committed_ns = 0;  // monotonic time COMMIT arrived (0: none); the hold deadline counts from here
    int64_t snapshot_step = -1;  // the committed step World::SnapshotSwitchStep was called for (stayers)
    std::vector<Staged> staged;
    bool fault_passed = false;  // TRAINMOVER_FAULT=pass-first-proposal used
  };
  // The stall at S (application thread only).
  struct StallMeter {
    std::vector<uint64_t> step_ns;  // recent undisturbed step intervals
    uint64_t last_entry_ns = 0;     // monotonic time tmSafePoint was entered last
    bool last_disturbed = false;    // the interval since last_entry_ns includes a hold
    bool switched = false;          // SWITCHED is due at the first safe point after the switch
    uint64_t switch_mig = 0;        // of this migration (a recovery's BUILD may have changed mig_ meanwhile)
    int64_t switch_step = -1;
    uint64_t switch_entry_ns = 0, switch_entry_real = 0;
    uint64_t switch_return_real = 0;  // tmSafePoint(S) returned: the first step on the replacements begins
  };

  // Snapshots for the tests (take the mutex).
  uint64_t migration() const;
  bool active() const;
  uint64_t generation() const;
  TapeOut tape_out() const;
  Exposure exposure() const;
  Sandbox sandbox() const;
  TapeIn tape_in() const;
  Intake intake() const;
  Agreement agreement() const;
  int64_t agreed_step() const;
  size_t staged() const;
  bool exit_pending() const;

  static constexpr int kTapeWaitMs = 3000;  // the joiner's wait for the tape at its first safe point
  static constexpr int kJoinerExitJobsMs = 5000;  // a leaving joiner's wait for its jobs (AwaitJobs)
  // The joiner reports the transfer's progress (tmctl watch's bar) at most this often.
  static constexpr uint64_t kProgressIntervalNs = 20000000ull;
  // A held joiner without D exits after this; once it sent VERIFIED it waits as long as a stayer would
  // (HoldTimeoutMs), since the coordinator may have decided to switch while it was cut off.
  static constexpr uint64_t kLostCoordinatorNs = 3000000000ull;
  // A held joiner whose coordinator is there but never says SWITCH nor ABORT (it forgot it) exits this long after
  // READY: longer than the coordinator may take from READY to SWITCH (building and agreeing each
  // TRAINMOVER_PHASE_TIMEOUT_MS, the switch half of TRAINMOVER_HOLD_TIMEOUT_MS; a recovery kRecoveryHoldMs).
  uint64_t JoinerSwitchDeadlineMs() const;

 private:
  // Commands (agent thread).
  void OnMap(uint64_t id, const mig::KeyList& kl);
  void OnMakeIds(uint64_t id, const mig::KeyList& kl);
  void OnBuild(uint64_t id, mig::Build b);
  void OnExpose(uint64_t id, const mig::Reason& where);
  void OnPrepare(uint64_t id, mig::Prepare b);
  void OnRead(uint64_t id);
  void OnPropose(uint64_t id, const mig::Step& st);
  void OnCommit(uint64_t id, const mig::Step& st);
  void OnSwitch(uint64_t id, const mig::Step& st);
  void OnRecordTape(uint64_t id);
  void OnTape(const mig::Blob& b);
  void OnAbort(uint64_t id, const mig::Reason& r);
  void OnStandbyCommand(const control::Command& c);
  // Background jobs.
  void BuildJob(uint64_t id, uint64_t gen, const mig::Build& b);
  void ExposeJob(uint64_t id, uint64_t gen);
  void PrepareJob(uint64_t id, uint64_t gen, const std::vector<uint8_t>& descriptor, uint32_t leaver_pid);
  void ReadJob(uint64_t id, uint64_t gen, StateSink* sink);
  void DropSink(std::unique_ptr<StateSink> sink);  // destroyed on a job thread, never under mu_
  // Frees aborted replacements and closes an abandoned exposure on a job (tm-retire): the transport may wait on a
  // peer that is gone, and neither the agent thread nor the application may wait for that (docs/reliability.md).
  void Retire(std::vector<void*> comms, std::unique_ptr<StateSource> server);
  void StartJob(const char* name, std::function<void()> fn);
  // Waits (bounded) until every background job has finished: a joiner about to exit lets the aborts of its
  // replacement communicators end first, so it never vanishes while a stayer's transport reads its memory.
  void AwaitJobs(std::chrono::milliseconds bound);
  // Safe point pieces (application thread, mu_ held through `lk`).
  void MeasureStall(uint64_t entry);
  void ReportCaptured();
  void LeaverTape();
  int64_t JoinerSafePoint(std::unique_lock<std::mutex>& lk, int64_t step);
  void PrepareSnapshots(std::unique_lock<std::mutex>& lk);  // unlocks mu_ around World::PrepareSnapshots
  void WaitForTape(std::unique_lock<std::mutex>& lk);
  void SendReady(int64_t step);
  void WaitForSwitchOrExit(std::unique_lock<std::mutex>& lk);
  int64_t SwitchJoinerIn();
  int64_t Hold(std::unique_lock<std::mutex>& lk, int64_t step, uint64_t entry);
  void CheckHold(int64_t step, uint64_t entry);
  void ReachedStep(std::unique_lock<std::mutex>& lk, int64_t step);
  int64_t SwitchHere(std::unique_lock<std::mutex>& lk, int64_t step, uint64_t entry, uint64_t hold_real);
  int64_t Proposed() const;   // the step a process is held at, -1 when none
  int64_t Committed() const;  // the committed step, -1 when none
  bool Disconnected() const;  // an agent that lost the coordinator
  [[noreturn]] void JoinerExit(std::unique_lock<std::mutex>& lk);
  void AbortLocked(const std::string& why);
  CommRef FindLocal(uint64_t key);
  template <typename K, typename B>
  void Send(K kind, uint64_t id, const B& body);  // K: mig::Ev, or standby::Ev
  void SendPhase(uint64_t id, const std::string& name, uint64_t start_real);

  World& w_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t mig_ = 0;            // the migration being served (0: none)
  uint64_t gen_ = 0;            // bumped by every abort: background jobs of an older generation stop
  bool active_ = false;         // some migration command arrived and the migration is not over
  uint64_t captured_sent_ = 0;  // CapturedCount() already reported
  Joiner joiner_;
  Leaver leaver_;
  Member member_;
  StallMeter meter_;  // application thread only
  std::mutex jobs_mu_;
  std::vector<std::pair<std::thread, std::shared_ptr<std::atomic<bool>>>> jobs_;  // background jobs, "finished"
};

}  // namespace trainmover::migration

#endif  // TRAINMOVER_LIB_MIGRATION_PROCESS_H_
