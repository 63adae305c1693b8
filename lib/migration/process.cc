// SPDX-License-Identifier: Apache-2.0
// The process side of a live migration as a state machine: docs/migration.md describes the protocol, process.h
// the structure and the threads. Nothing here touches the shim, NCCL or the transfer directly (World does).
#include "process.h"

#include <algorithm>
#include <chrono>
#include <thread>
#include <utility>

#include "base/log.h"
#include "recovery.h"
#include "standby_msgs.h"

namespace trainmover::migration {

namespace {

uint64_t Median(std::vector<uint64_t> v) {
  if (v.empty()) return 0;
  std::nth_element(v.begin(), v.begin() + static_cast<long>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

template <typename B>
bool Decode(const control::Command& c, B* b) {
  if (control::DecodePayload(c.body, b)) return true;
  TM_WARN(kLogMigration, "migration: malformed %s body, ignored", mig::CmdName(c.kind));
  return false;
}

}  // namespace

ProcessMachine::~ProcessMachine() {
  std::lock_guard<std::mutex> lk(jobs_mu_);
  for (auto& [t, done] : jobs_) {
    if (t.joinable()) t.join();
  }
}

template <typename K, typename B>
void ProcessMachine::Send(K kind, uint64_t id, const B& body) {
  control::Event e;
  e.kind = static_cast<uint16_t>(kind);
  e.migration = id;
  e.body = control::EncodePayload(body);
  w_.SendEvent(std::move(e));
}

void ProcessMachine::SendPhase(uint64_t id, const std::string& name, uint64_t start_real) {
  Send(mig::Ev::kPhase, id, mig::Phase{name, start_real, w_.RealtimeNs()});
}

int64_t ProcessMachine::Proposed() const { return member_.agreement >= Agreement::kProposed ? member_.step : -1; }
int64_t ProcessMachine::Committed() const { return member_.agreement >= Agreement::kCommitted ? member_.step : -1; }
bool ProcessMachine::Disconnected() const { return w_.HasAgent() && !w_.Connected(); }

// ---- commands (agent thread)

void ProcessMachine::OnCommand(const control::Command& c) {
  if (c.kind >= control::standby::kFirstStandbyKind) return OnStandbyCommand(c);
  const uint64_t id = c.migration;
  auto with = [&c](auto body, auto fn) {
    if (Decode(c, &body)) fn(std::move(body));
  };
  switch (static_cast<mig::Cmd>(c.kind)) {
    case mig::Cmd::kMap:
      return with(mig::KeyList{}, [&](mig::KeyList b) { OnMap(id, b); });
    case mig::Cmd::kMakeIds:
      return with(mig::KeyList{}, [&](mig::KeyList b) { OnMakeIds(id, b); });
    case mig::Cmd::kBuild:
      return with(mig::Build{}, [&](mig::Build b) { OnBuild(id, std::move(b)); });
    case mig::Cmd::kExpose:
      return with(mig::Reason{}, [&](mig::Reason b) { OnExpose(id, b); });
    case mig::Cmd::kPrepare:
      return with(mig::Prepare{}, [&](mig::Prepare b) { OnPrepare(id, std::move(b)); });
    case mig::Cmd::kRead:
      return with(mig::Step{}, [&](mig::Step) { OnRead(id); });
    case mig::Cmd::kPropose:
      return with(mig::Step{}, [&](mig::Step b) { OnPropose(id, b); });
    case mig::Cmd::kCommit:
      return with(mig::Step{}, [&](mig::Step b) { OnCommit(id, b); });
    case mig::Cmd::kSwitch:
      return with(mig::Step{}, [&](mig::Step b) { OnSwitch(id, b); });
    case mig::Cmd::kRecordTape:
      return OnRecordTape(id);
    case mig::Cmd::kTape:
      return with(mig::Blob{}, [&](mig::Blob b) { OnTape(b); });
    case mig::Cmd::kAbort:
      return with(mig::Reason{}, [&](mig::Reason b) { OnAbort(id, b); });
  }
  TM_WARN(kLogMigration, "migration: unknown command %u ignored", c.kind);
}

// Joiner: which of its VComms replaces which of the leaver's (pairs of joiner key, leaver key).
void ProcessMachine::OnMap(uint64_t id, const mig::KeyList& kl) {
  std::lock_guard<std::mutex> lk(mu_);
  mig_ = id;
  active_ = true;
  for (size_t i = 0; i + 1 < kl.keys.size(); i += 2) {
    for (CommRef v : w_.CommsWithKey(kl.keys[i])) {
      joiner_.by_leaver_key[kl.keys[i + 1]] = v;
      joiner_.rekey[v] = kl.keys[i + 1];
    }
  }
}

// Joiner: a fresh real unique id for each of the leaver's communicators (their bootstrap roots live here).
void ProcessMachine::OnMakeIds(uint64_t id, const mig::KeyList& kl) {
  mig::Ids ids;
  for (uint64_t k : kl.keys) {
    mig::IdEntry e;
    e.comm_key = k;
    if (!w_.NewUniqueId(&e.id)) return Send(mig::Ev::kFailed, id, mig::Reason{"ncclGetUniqueId failed in the joiner"});
    ids.ids.push_back(e);
  }
  Send(mig::Ev::kIds, id, ids);
}

void ProcessMachine::OnBuild(uint64_t id, mig::Build b) {
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lk(mu_);
    mig_ = id;
    active_ = true;
    gen = gen_;
  }
  StartJob("tm-build", [this, id, gen, b = std::move(b)] { BuildJob(id, gen, b); });
}

// Leaver: exposes its regions for one-sided reads (refused while an aborted migration's seal still runs). UCX
// start-up and registering every region are slow: they run as a job, so that the agent thread keeps
// heartbeating and the application never waits for them at a safe point.
void ProcessMachine::OnExpose(uint64_t id, const mig::Reason& where) {
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (leaver_.exposure == Exposure::kSealing) {
      return Send(mig::Ev::kFailed, id, mig::Reason{"the previous migration's seal is still running"});
    }
    mig_ = id;
    active_ = true;
    leaver_.destination = where.text;
    gen = gen_;
  }
  StartJob("tm-expose", [this, id, gen] { ExposeJob(id, gen); });
}

// Joiner, in the build phase: connects to the leaver's exposed state, so that only the bytes are left for S.
void ProcessMachine::OnPrepare(uint64_t id, mig::Prepare b) {
  uint64_t gen;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (joiner_.intake != Intake::kNone) {
      return Send(mig::Ev::kFailed, id, mig::Reason{"PREPARE while the leaver's state is already prepared"});
    }
    mig_ = id;
    active_ = true;
    gen = gen_;
    joiner_.intake = Intake::kPreparing;
  }
  StartJob("tm-fetch", [this, id, gen, pid = b.leaver_pid, d = std::move(b.descriptor)] { PrepareJob(id, gen, d, pid); });
}

// Joiner: the leaver is at S, its memory frozen: read it over the prepared connection.
void ProcessMachine::OnRead(uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  if (joiner_.intake != Intake::kPrepared || !joiner_.sink) {
    return Send(mig::Ev::kVerified, id, mig::Built{0, 0, "READ before the leaver's state was prepared"});
  }
  joiner_.intake = Intake::kReading;
  StartJob("tm-fetch", [this, id, gen = gen_, sink = joiner_.sink.get()] { ReadJob(id, gen, sink); });
}

// May the switch be at S? Answered under the shim's safe-point mutex, so the answer and the application's
// next tmSafePoint are ordered (docs/migration.md, "The switch agreement").
void ProcessMachine::OnPropose(uint64_t id, const mig::Step& st) {
  int64_t now = -1;
  std::unique_lock<std::mutex> sp = w_.LockSafePoint(&now);
  std::lock_guard<std::mutex> lk(mu_);
  mig_ = id;
  active_ = true;
  bool fault_pass = false;
  if (w_.Fault() == "pass-first-proposal" && !member_.fault_passed) {  // test knob: rank 0 refuses the first S once
    fault_pass = w_.FirstCommRank() == 0;
    member_.fault_passed = true;
  }
  if (now < st.step && !fault_pass) {
    member_.agreement = Agreement::kProposed;
    member_.step = st.step;
    Send(mig::Ev::kAccept, id, st);
  } else {
    member_.agreement = Agreement::kNone;
    member_.step = -1;
    Send(mig::Ev::kPassed, id, mig::Step{now});
  }
  cv_.notify_all();
}

void ProcessMachine::OnCommit(uint64_t id, const mig::Step& st) {
  std::lock_guard<std::mutex> lk(mu_);
  if (Proposed() != st.step) {
    return Send(mig::Ev::kFailed, id, mig::Reason{"COMMIT of a step this process did not accept"});
  }
  if (member_.agreement == Agreement::kProposed) member_.agreement = Agreement::kCommitted;
  member_.committed_ns = w_.MonotonicNs();
  cv_.notify_all();
}

void ProcessMachine::OnSwitch(uint64_t id, const mig::Step& st) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!active_ || id != mig_) {  // abandoned here at the hold deadline, and SWITCH came later (docs/reliability.md)
    TM_WARN(kLogMigration,
            "migration %llu: SWITCH arrived after this process abandoned the migration; it stays on its current "
            "communicators, out of step with the ranks that switched",
            static_cast<unsigned long long>(id));
    return;
  }
  member_.agreement = Agreement::kSwitch;
  member_.step = st.step;
  cv_.notify_all();
  TM_TRACE(kLogMigration, "migration %llu: SWITCH at step %lld received", static_cast<unsigned long long>(id),
           static_cast<long long>(st.step));
}

void ProcessMachine::OnRecordTape(uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  if (leaver_.tape == TapeOut::kIdle) leaver_.tape = TapeOut::kRequested;
  leaver_.tape_mig = id;
}

// Joiner: one chunk of the leaver's tape; the empty chunk installs it (bounded by the cap plus signatures).
void ProcessMachine::OnTape(const mig::Blob& b) {
  std::lock_guard<std::mutex> lk(mu_);
  if (joiner_.tape == TapeIn::kInstalled) return;
  if (!b.bytes.empty()) {
    if (joiner_.tape_buf.size() + b.bytes.size() <= w_.TapeMaxBytes() + (uint64_t{64} << 20)) {
      joiner_.tape_buf.insert(joiner_.tape_buf.end(), b.bytes.begin(), b.bytes.end());
    }
    return;
  }
  w_.InstallTape(joiner_.tape_buf);
  joiner_.tape_buf.clear();
  joiner_.tape_buf.shrink_to_fit();
  joiner_.tape = TapeIn::kInstalled;
  cv_.notify_all();
}

void ProcessMachine::OnAbort(uint64_t id, const mig::Reason& r) {
  std::unique_lock<std::mutex> lk(mu_);
  if (w_.IsJoiner() && !w_.Sandboxed() && id != 0 && id == joiner_.switched_in) {
    // The migration it switched in by was undone: SWITCH reached none of the held processes in time, they all
    // abandoned it (docs/reliability.md, "The commit point"). Its sandbox is gone and nobody uses its communicators:
    // it ends, and the leaver keeps the rank.
    lk.unlock();
    w_.Exit(1, "joiner exits: migration " + std::to_string(id) + " was undone after it switched in (" + r.text + ")");
  }
  if (w_.IsJoiner() && w_.Sandboxed()) {
    joiner_.exit_pending = true;
    joiner_.exit_reason = r.text;
  }
  AbortLocked("the coordinator aborted it: " + r.text);
}

// A standby: ASSIGN (it replaces a failed rank: tmRank answers that rank from the switch on; the application
// thread is held after READY, so it cannot ask before) or DISMISS (the job ended: exit 0 at the safe point).
void ProcessMachine::OnStandbyCommand(const control::Command& c) {
  namespace sb = control::standby;
  std::lock_guard<std::mutex> lk(mu_);
  if (!w_.IsStandby() || !w_.Sandboxed()) {
    TM_WARN(kLogMigration, "standby command %u to a process that is not a waiting standby; ignored", c.kind);
    return;
  }
  if (c.kind == static_cast<uint16_t>(sb::Cmd::kAssign)) {
    sb::Assign a;
    if (!Decode(c, &a)) return;
    TM_WARN(kLogMigration, "standby (warmed up as rank %d): takes the place of rank %d of %d", w_.WarmRank(), a.rank,
            a.world);
    joiner_.ready_ns = w_.MonotonicNs();  // a joiner of the recovery from here on: its wait for SWITCH is bounded
    return w_.TakeRank(a.rank, a.world);
  }
  mig::Reason r;
  if (c.kind != static_cast<uint16_t>(sb::Cmd::kDismiss) || !Decode(c, &r)) return;
  joiner_.exit_pending = true;
  joiner_.exit_reason = r.text;
  joiner_.exit_code = 0;
  cv_.notify_all();
}

// Drops everything staged for a migration (mu_ held): replacements aborted and freed, the agreement cleared,
// the leaver's server closed. A joiner must exit afterwards. Never touches the current real comms.
void ProcessMachine::AbortLocked(const std::string& why) {
  if (!active_ && member_.staged.empty()) return;
  TM_WARN(kLogMigration, "migration %llu aborted here: %s; training continues on the current communicators",
          static_cast<unsigned long long>(mig_), why.c_str());
  ++gen_;
  w_.SetLeaving(false);
  std::vector<void*> unstaged;
  for (const Staged& st : member_.staged) {
    if (void* c = w_.Unstage(st.v)) unstaged.push_back(c);
  }
  member_.staged.clear();
  member_.agreement = Agreement::kNone;
  member_.step = -1;
  member_.committed_ns = 0;
  std::unique_ptr<StateSource> server;
  if (leaver_.exposure != Exposure::kSealing) {  // while sealing, the safe point closes it when Seal returns
    server = std::move(leaver_.server);
    leaver_.exposure = Exposure::kNone;
  }
  if (!unstaged.empty() || server) Retire(std::move(unstaged), std::move(server));
  if (joiner_.intake != Intake::kReading) {  // while reading, the read job drops the sink when Read returns
    if (joiner_.sink) DropSink(std::move(joiner_.sink));
    joiner_.intake = Intake::kNone;
  }
  active_ = false;
  if (w_.IsJoiner() && w_.Sandboxed()) {  // one that switched in holds a rank now: it stays
    joiner_.exit_pending = true;
    joiner_.exit_reason = why;
  }
  cv_.notify_all();
}

CommRef ProcessMachine::FindLocal(uint64_t key) {
  auto it = joiner_.by_leaver_key.find(key);
  if (it != joiner_.by_leaver_key.end()) return it->second;
  std::vector<CommRef> v = w_.CommsWithKey(key);
  return v.empty() ? nullptr : v.front();
}

// ---- background jobs

void ProcessMachine::StartJob(const char* name, std::function<void()> fn) {
  ReapJobs();
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread t = w_.StartThread(name, [fn = std::move(fn), done] {
    fn();
    done->store(true);
  });
  std::lock_guard<std::mutex> lk(jobs_mu_);
  jobs_.emplace_back(std::move(t), std::move(done));
}

void ProcessMachine::ReapJobs() {
  std::lock_guard<std::mutex> lk(jobs_mu_);
  for (auto it = jobs_.begin(); it != jobs_.end();) {
    if (!it->second->load()) {
      ++it;
      continue;
    }
    if (it->first.joinable()) it->first.join();
    it = jobs_.erase(it);
  }
}

void ProcessMachine::AwaitJobs(std::chrono::milliseconds bound) {
  const auto deadline = std::chrono::steady_clock::now() + bound;
  for (;;) {
    {
      std::lock_guard<std::mutex> lk(jobs_mu_);
      if (std::all_of(jobs_.begin(), jobs_.end(), [](const auto& j) { return j.second->load(); })) return;
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      TM_WARN(kLogMigration, "background jobs still running after %lld ms; exiting anyway",
              static_cast<long long>(bound.count()));
      return;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// Builds the replacements in the order given (the same on every member, so even a blocking init could not
// deadlock), each staged on its VComm; an abort (a newer generation) stops it.
void ProcessMachine::BuildJob(uint64_t id, uint64_t gen, const mig::Build& b) {
  const uint64_t t0 = w_.RealtimeNs();
  // An abort stops the build, and so does its deadline: a member never waits longer for a peer that never got its
  // BUILD, or whose host is cut off, than the coordinator waits for the whole phase.
  const uint64_t deadline = w_.MonotonicNs() + w_.PhaseTimeoutMs() * 1000000ull;
  auto stopped = [&] {
    std::lock_guard<std::mutex> lk(mu_);
    return gen_ != gen || w_.MonotonicNs() > deadline;
  };
  for (const mig::BuildEntry& e : b.entries) {
    auto fail = [&](const std::string& m) { Send(mig::Ev::kBuilt, id, mig::Built{e.comm_key, 0, m}); };
    CommRef v;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (gen_ != gen) return;
      v = FindLocal(e.comm_key);
    }
    if (!v) {
      fail("no live communicator with that key here");
      continue;
    }
    BuildOutcome out = w_.BuildReplacement(v, e, stopped);
    std::unique_lock<std::mutex> lk(mu_);
    if (gen_ != gen || out.kind != BuildOutcome::Kind::kBuilt) {
      const bool aborted = gen_ != gen;
      lk.unlock();  // freeing may wait on a peer that is gone: never under the mutex
      if (out.comm) w_.FreeComm(out.comm);
      if (aborted) return;
      if (out.kind == BuildOutcome::Kind::kStopped) {
        out.error = "not built within " + std::to_string(w_.PhaseTimeoutMs()) + " ms (TRAINMOVER_PHASE_TIMEOUT_MS)";
      }
      fail(out.error);
      continue;
    }
    const bool rebound = w_.Stage(v, out.comm);
    member_.staged.push_back(Staged{v, e.nranks, e.rank});
    if (!rebound) {
      fail("re-creating PreMulSum ops/registrations on the replacement failed");
      continue;
    }
    Send(mig::Ev::kBuilt, id, mig::Built{e.comm_key, 1, ""});
  }
  SendPhase(id, "build", t0);
}

void ProcessMachine::DropSink(std::unique_ptr<StateSink> sink) {
  StartJob("tm-fetch", [s = std::shared_ptr<StateSink>(std::move(sink))]() mutable { s.reset(); });
}

void ProcessMachine::Retire(std::vector<void*> comms, std::unique_ptr<StateSource> server) {
  StartJob("tm-retire", [this, comms, s = std::shared_ptr<StateSource>(std::move(server))] {
    for (void* c : comms) w_.FreeComm(c);
    if (s) s->Close();
  });
}

// Joiner: decodes the leaver's descriptor, matches the regions and connects (docs/transfer.md): a failure here
// fails the migration before the switch agreement, and the switch pays only for the bytes.
void ProcessMachine::PrepareJob(uint64_t id, uint64_t gen, const std::vector<uint8_t>& descriptor,
                                uint32_t leaver_pid) {
  const uint64_t t0 = w_.RealtimeNs();
  std::string note;
  std::unique_ptr<StateSink> sink = w_.Prepare(descriptor, leaver_pid, &note);
  const bool ok = sink != nullptr;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (gen_ != gen) return;  // aborted meanwhile: `sink` is destroyed here, after the mutex
    joiner_.intake = ok ? Intake::kPrepared : Intake::kNone;
    joiner_.sink = std::move(sink);
  }
  SendPhase(id, "prepare", t0);
  if (!ok) return Send(mig::Ev::kFailed, id, mig::Reason{"joiner cannot connect to the leaver's state: " + note});
  w_.AwaitSnapshots();
  Send(mig::Ev::kPrepared, id, mig::Reason{note});
}

// Joiner: reads the leaver's regions one-sided into ours and verifies the checksums; then closes the connection
// (after VERIFIED left, so off the switch's path).
void ProcessMachine::ReadJob(uint64_t id, uint64_t gen, StateSink* sink) {
  const uint64_t t0 = w_.RealtimeNs();
  uint64_t last_sent = 0;
  auto progress = [&](uint64_t done, uint64_t total) {
    const uint64_t now = w_.MonotonicNs();
    if (done == total || now - last_sent > kProgressIntervalNs) {
      last_sent = now;
      Send(mig::Ev::kProgress, id, mig::Progress{done, total});
    }
  };
  // Test knobs (docs/migration.md, docs/reliability.md): a slow start; checksums no transfer can produce.
  if (w_.Fault() == "slow-transfer") std::this_thread::sleep_for(std::chrono::seconds(3));
  std::string summary;
  const std::string err = sink->Read(w_.Fault() == "corrupt-transfer", progress, &summary);
  std::unique_ptr<StateSink> done;
  bool aborted;
  {
    std::lock_guard<std::mutex> lk(mu_);
    done = std::move(joiner_.sink);
    aborted = gen_ != gen;
    joiner_.intake = aborted ? Intake::kNone : Intake::kRead;
  }
  if (aborted) return;
  SendPhase(id, "transfer", t0);
  Send(mig::Ev::kVerified, id, err.empty() ? mig::Built{0, 1, summary} : mig::Built{0, 0, err});
}

// Leaver: the regions exposed for one-sided reads; EXPOSED carries the descriptor the joiner reads with.
void ProcessMachine::ExposeJob(uint64_t id, uint64_t gen) {
  const uint64_t t0 = w_.RealtimeNs();
  std::string err;
  std::string destination;
  {
    std::lock_guard<std::mutex> lk(mu_);
    destination = leaver_.destination;
  }
  std::unique_ptr<StateSource> server = w_.Expose(destination, &err);
  std::unique_lock<std::mutex> lk(mu_);
  if (gen_ != gen) {  // aborted meanwhile
    lk.unlock();
    if (server) server->Close();
    return;
  }
  if (!server) return Send(mig::Ev::kFailed, id, mig::Reason{"leaver cannot expose its state: " + err});
  leaver_.server = std::move(server);
  leaver_.exposure = Exposure::kExposed;
  Send(mig::Ev::kExposed, id, mig::Blob{leaver_.server->Descriptor()});
  SendPhase(id, "expose", t0);
}

// ---- the safe point (application thread)

int64_t ProcessMachine::OnSafePoint(int64_t step, bool fenced) {
  const uint64_t entry = w_.MonotonicNs();
  std::unique_lock<std::mutex> lk(mu_);
  MeasureStall(entry);
  if (w_.CapturedCount() != captured_sent_) ReportCaptured();
  if (leaver_.tape != TapeOut::kIdle) LeaverTape();
  if (joiner_.exit_pending) JoinerExit(lk);
  if (w_.IsJoiner() && w_.Sandboxed()) {
    meter_.last_disturbed = true;
    return JoinerSafePoint(lk, step);
  }
  // Not while fenced: the recovery's replacements are staged here (its BUILD), and its rollback switches to them; a
  // fenced process without its coordinator ends at its hold (kLostCoordinatorNs), or is told the outcome once back.
  if (active_ && Disconnected() && !fenced) AbortLocked("lost the coordinator");
  if (Proposed() < 0 || step < Proposed()) return step;
  return Hold(lk, step, entry);
}

// Keeps the recent undisturbed step intervals; at the first safe point after the switch, reports the stall
// S..S+1 over the median (the migration's downtime as this process saw it).
void ProcessMachine::MeasureStall(uint64_t entry) {
  StallMeter& m = meter_;
  if (m.last_entry_ns && !m.last_disturbed) {
    m.step_ns.push_back(entry - m.last_entry_ns);
    if (m.step_ns.size() > 64) m.step_ns.erase(m.step_ns.begin());
  }
  m.last_disturbed = false;
  if (m.switched) {
    m.switched = false;
    m.last_disturbed = true;
    const uint64_t interval = entry - m.switch_entry_ns, median = Median(m.step_ns);
    // To the migration that switched: a failure right after it (recovery_after_switch) starts a recovery whose
    // BUILD sets mig_ before this safe point, and a SWITCHED sent there left the migration unconfirmed for good.
    SendPhase(m.switch_mig, "switch step", m.switch_entry_real);
    SendPhase(m.switch_mig, "first step", m.switch_return_real);
    Send(mig::Ev::kSwitched, m.switch_mig,
         mig::Switched{m.switch_step, interval > median ? interval - median : 0, median});
  }
  m.last_entry_ns = entry;
}

// Tells the coordinator which communicators were captured into a CUDA graph: it refuses to migrate them.
void ProcessMachine::ReportCaptured() {
  captured_sent_ = w_.CapturedCount();
  Send(mig::Ev::kCaptured, 0, mig::KeyList{w_.CapturedKeys()});
}

// Leaver: arms the tape recorder for the iteration that starts here, or, one safe point later, stops it and
// sends the tape to D in chunks of one frame, then an empty chunk.
void ProcessMachine::LeaverTape() {
  if (leaver_.tape == TapeOut::kRequested) {
    w_.TapeRecordBegin();
    leaver_.tape = TapeOut::kRecording;
    return;
  }
  leaver_.tape = TapeOut::kIdle;
  std::vector<uint8_t> blob;
  if (!w_.TapeRecordEnd(leaver_.tape_mig, &blob)) return;
  for (size_t at = 0; at < blob.size(); at += mig::kMaxBlob) {
    const size_t n = std::min(mig::kMaxBlob, blob.size() - at);
    Send(mig::Ev::kTape, leaver_.tape_mig,
         mig::Blob{std::vector<uint8_t>(blob.begin() + static_cast<ptrdiff_t>(at),
                                        blob.begin() + static_cast<ptrdiff_t>(at + n))});
  }
  Send(mig::Ev::kTape, leaver_.tape_mig, mig::Blob{});
}

// Without mu_: the snapshots' set-up takes the recovery's mutex, under which the recovery's rollback takes mu_
// (SwitchStagedForRecovery; ThreadSanitizer: lock-order inversion, recovery_twice_3d's replacement).
void ProcessMachine::PrepareSnapshots(std::unique_lock<std::mutex>& lk) {
  lk.unlock();
  w_.PrepareSnapshots();
  lk.lock();
}

// The joiner: shadow iterations in the sandbox, READY, then wait for SWITCH (returns S) or exit.
int64_t ProcessMachine::JoinerSafePoint(std::unique_lock<std::mutex>& lk, int64_t step) {
  if (joiner_.sandbox == Sandbox::kStartup && w_.HasAgent() && !w_.IsStandby()) WaitForTape(lk);  // none to come
  w_.TapeIterationBegin();  // operations from here on are positions 0, 1, ... of the next sandbox iteration
  if (joiner_.sandbox == Sandbox::kStartup) {
    joiner_.sandbox = Sandbox::kShadow;
    PrepareSnapshots(lk);  // overlaps the shadow iterations and phase 1
  }
  if (++joiner_.sandbox_safepoints <= w_.ShadowIters()) return step;
  if (joiner_.sandbox != Sandbox::kReadySent) {
    joiner_.sandbox = Sandbox::kReadySent;
    if (w_.Fault() == "slow-ready") {  // test knob: a wide sandbox phase, the joiner up and not READY yet
      lk.unlock();
      std::this_thread::sleep_for(std::chrono::seconds(3));
      lk.lock();
      if (joiner_.exit_pending) JoinerExit(lk);  // told to exit meanwhile
    }
    SendReady(step);
    PrepareSnapshots(lk);
  }
  WaitForSwitchOrExit(lk);
  if (joiner_.exit_pending) JoinerExit(lk);
  if (w_.Fault() == "slow-switch") {  // test knob: SWITCH went out, this process has not switched in nor confirmed it
    lk.unlock();
    std::this_thread::sleep_for(std::chrono::seconds(3));
    lk.lock();
  }
  const int64_t at = SwitchJoinerIn();
  if (w_.Fault() == "slow-first-op") {  // test knob: the stayers wait in their first operation on the replacements
    lk.unlock();
    std::this_thread::sleep_for(std::chrono::seconds(3));
    lk.lock();
  }
  return at;
}

// The first sandboxed safe point: what ran before it was start-up. Wait (bounded) for the leaver's tape, so
// the shadow iteration that follows replays it; without one in time the sandbox emulates.
void ProcessMachine::WaitForTape(std::unique_lock<std::mutex>& lk) {
  const uint64_t deadline = w_.MonotonicNs() + uint64_t{kTapeWaitMs} * 1000000ull;
  for (uint64_t now = w_.MonotonicNs(); joiner_.tape != TapeIn::kInstalled && now < deadline; now = w_.MonotonicNs()) {
    w_.Wait(lk, cv_, (deadline - now + 999999) / 1000000);
  }
}

void ProcessMachine::SendReady(int64_t step) {
  mig::Ready r;
  r.comms = w_.DescribeComms();
  r.regions = w_.RegionTable();
  r.step = step;
  if (w_.IsStandby()) {
    Send(control::standby::Ev::kReady, 0,
         control::standby::Ready{w_.WarmRank(), static_cast<uint8_t>(w_.FollowsRank() ? 1 : 0), std::move(r)});
  } else {
    Send(mig::Ev::kReady, 0, r);
  }
  // A standby waits as long as the job runs (docs/recovery.md, "Standbys"): its wait is bounded from its ASSIGN.
  joiner_.ready_ns = w_.IsStandby() ? 0 : w_.MonotonicNs();
  w_.LogReady();
}

uint64_t ProcessMachine::JoinerSwitchDeadlineMs() const {
  return std::max<uint64_t>(2 * w_.PhaseTimeoutMs() + w_.HoldTimeoutMs(), kRecoveryHoldMs);
}

// Held after READY: until SWITCH, an abort, 3 s without the coordinator (the hold timeout once VERIFIED was
// sent), or JoinerSwitchDeadlineMs() after READY (a standby's: after ASSIGN) with the coordinator there.
void ProcessMachine::WaitForSwitchOrExit(std::unique_lock<std::mutex>& lk) {
  uint64_t lost_since = 0;
  while (member_.agreement != Agreement::kSwitch && !joiner_.exit_pending) {
    w_.Wait(lk, cv_, 50);
    if (const uint64_t limit_ms = JoinerSwitchDeadlineMs();
        joiner_.ready_ns != 0 && w_.MonotonicNs() - joiner_.ready_ns > limit_ms * 1000000ull) {
      joiner_.exit_pending = true;
      joiner_.exit_reason = "no SWITCH within " + std::to_string(limit_ms) + " ms of " +
                            (w_.IsStandby() ? "ASSIGN" : "READY") +
                            " (2 x TRAINMOVER_PHASE_TIMEOUT_MS + TRAINMOVER_HOLD_TIMEOUT_MS)";
      break;
    }
    if (!Disconnected()) {
      lost_since = 0;
      continue;
    }
    if (!lost_since) lost_since = w_.MonotonicNs();
    // Once VERIFIED left, the coordinator may have sent SWITCH: wait for the outcome as a stayer would.
    const bool verified = joiner_.intake == Intake::kRead;
    if (w_.MonotonicNs() - lost_since > (verified ? w_.HoldTimeoutMs() * 1000000ull : kLostCoordinatorNs)) {
      joiner_.exit_pending = true;
      joiner_.exit_reason = "lost the coordinator";
    }
  }
}

// Switch in: the state is already in our regions (verified); real communicators replace the emulated ones,
// and the VComms take the leaver's keys.
int64_t ProcessMachine::SwitchJoinerIn() {
  for (const Staged& st : member_.staged) w_.SwitchJoiner(st.v, st.nranks, st.rank);
  member_.staged.clear();
  w_.LeaveSandbox();
  for (auto& [v, key] : joiner_.rekey) w_.Rekey(v, key);
  joiner_.rekey.clear();
  joiner_.by_leaver_key.clear();
  joiner_.intake = Intake::kNone;
  joiner_.switched_in = mig_;
  active_ = false;
  const int64_t at = member_.step;
  Send(mig::Ev::kSwitched, mig_, mig::Switched{at, 0, 0});
  TM_INFO(kLogMigration, "joiner: switched in at step %lld", static_cast<long long>(at));
  member_.agreement = Agreement::kNone;
  member_.step = -1;
  return at;
}

// Held at (or past) a proposed switch point until SWITCH, a new proposal, or an abort.
int64_t ProcessMachine::Hold(std::unique_lock<std::mutex>& lk, int64_t step, uint64_t entry) {
  meter_.last_disturbed = true;
  const uint64_t hold_real = w_.RealtimeNs();
  for (;;) {
    const bool committed_here = member_.agreement == Agreement::kCommitted && step == member_.step;
    if (committed_here && leaver_.exposure == Exposure::kNone && member_.snapshot_step != step) {
      member_.snapshot_step = step;  // a stayer: its snapshot of S first (the state does not change while held)
      lk.unlock();
      w_.SnapshotSwitchStep(step);
      lk.lock();
      continue;
    }
    if (committed_here) ReachedStep(lk, step);
    if (Committed() >= 0 && step > Committed()) {
      Send(mig::Ev::kFailed, mig_, mig::Reason{"process passed the committed switch step"});
      AbortLocked("passed the committed switch step");
    }
    if (member_.agreement == Agreement::kSwitch) break;
    if (Proposed() < 0 || step < Proposed()) return step;  // re-proposed later, or aborted
    w_.Wait(lk, cv_, 50);
    CheckHold(step, entry);
  }
  return SwitchHere(lk, step, entry, hold_real);
}

// The hold's deadlines (docs/reliability.md, "The commit point"). Before AT_STEP a lost coordinator releases the
// process at once: SWITCH needs its AT_STEP, so nobody can have switched. After AT_STEP the outcome is the
// coordinator's: a lost connection is re-made and the outcome asked for (the coordinator repeats it on
// re-registration), and only the hold deadline, counted from COMMIT, releases the process. The coordinator
// never sends SWITCH later than half that deadline after COMMIT.
void ProcessMachine::CheckHold(int64_t step, uint64_t entry) {
  if (member_.agreement < Agreement::kAtStep && Disconnected()) return AbortLocked("lost the coordinator");
  const uint64_t since = std::max(entry, member_.committed_ns), limit_ms = w_.HoldTimeoutMs();
  if (w_.MonotonicNs() - since < limit_ms * 1000000ull) return;
  const std::string why = "no decision from the coordinator within " + std::to_string(limit_ms) + " ms at step " +
                          std::to_string(step) + " (TRAINMOVER_HOLD_TIMEOUT_MS)";
  Send(mig::Ev::kFailed, mig_, mig::Reason{why});
  AbortLocked(why);
}

// At the committed S: AT_STEP, and the leaver seals its state. Overlapped (World::SealOverlaps, and the state
// readable before the seal): AT_STEP first; the memory is frozen from here on, so the joiner may start reading at
// once (D sends it FETCH_FROM on this event) while we hash; it compares when both hashes are ready. Otherwise: seal,
// then AT_STEP (both sides would compete for too few CPUs, or the seal copies device state where the joiner reads).
void ProcessMachine::ReachedStep(std::unique_lock<std::mutex>& lk, int64_t step) {
  member_.agreement = Agreement::kAtStep;
  const uint64_t id = mig_;
  const bool leaver = leaver_.exposure == Exposure::kExposed && leaver_.server;
  const bool overlap = leaver && leaver_.server->ReadableBeforeSeal() && w_.SealOverlaps(leaver_.destination);
  if (overlap || !leaver) Send(mig::Ev::kAtStep, id, mig::Step{step});
  if (!leaver) return;
  w_.SetLeaving(true);  // the stayers may destroy our shared communicators from now on
  StateSource* server = leaver_.server.get();
  const uint64_t gen = gen_;
  leaver_.exposure = Exposure::kSealing;
  lk.unlock();
  const uint64_t t0 = w_.RealtimeNs();
  const std::string err = server->Seal();
  lk.lock();
  SendPhase(id, "seal", t0);
  if (gen_ != gen) {  // aborted meanwhile (AbortLocked left the server to us)
    leaver_.exposure = Exposure::kNone;
    Retire({}, std::move(leaver_.server));
    return;
  }
  leaver_.exposure = Exposure::kExposed;
  if (!err.empty()) Send(mig::Ev::kFailed, id, mig::Reason{"leaver cannot checksum its state: " + err});
  if (!overlap) Send(mig::Ev::kAtStep, id, mig::Step{step});
}

// SWITCH at S: the leaver exits; a stayer points its VComms at the replacements and destroys the old ones,
// and reports its stall at the next safe point.
int64_t ProcessMachine::SwitchHere(std::unique_lock<std::mutex>& lk, int64_t step, uint64_t entry, uint64_t hold_real) {
  const int64_t switch_step = member_.step;
  member_.agreement = Agreement::kNone;
  member_.step = -1;
  member_.committed_ns = 0;
  active_ = false;
  TM_TRACE(kLogMigration, "migration %llu: released at step %lld", static_cast<unsigned long long>(mig_),
           static_cast<long long>(step));
  SendPhase(mig_, "hold at S", hold_real);
  if (leaver_.exposure != Exposure::kNone) {
    const std::string where = leaver_.destination;
    if (leaver_.server) leaver_.server->Close();
    lk.unlock();
    w_.Exit(0, "rank migrated at step " + std::to_string(step) + " to " + where + "; this process exits");
  }
  const uint64_t swap_real = w_.RealtimeNs();
  std::vector<void*> old;
  for (const Staged& st : member_.staged) {
    if (void* c = w_.SwitchStayer(st.v)) old.push_back(c);
  }
  member_.staged.clear();
  // Destroying the old communicators (tens of ms with hostnccl, more with NCCL) is no part of the switch: a
  // background job does it while the application runs on the replacements.
  if (!old.empty()) {
    StartJob("tm-retire", [this, old] {
      for (void* c : old) w_.RetireComm(c);
      TM_TRACE(kLogMigration, "%zu old communicator(s) destroyed", old.size());
    });
  }
  SendPhase(mig_, "swap comms", swap_real);
  meter_.switch_return_real = w_.RealtimeNs();
  meter_.switched = true;
  meter_.switch_mig = mig_;
  meter_.switch_step = switch_step;
  meter_.switch_entry_ns = entry;
  meter_.switch_entry_real = hold_real;
  return step;
}

// The joiner's way out when its migration ended without it.
void ProcessMachine::JoinerExit(std::unique_lock<std::mutex>& lk) {
  const std::string why = joiner_.exit_reason;
  const int code = joiner_.exit_code;
  lk.unlock();
  // The aborted build and the retired replacements: a stayer may be reading this process's memory through one
  // of them (hostnccl's init exchange over cma); their aborts drain that first (HOSTNCCL_DRAIN_MS).
  AwaitJobs(std::chrono::milliseconds(kJoinerExitJobsMs));
  w_.Exit(code, code == 0 ? "standby exits: " + why : "joiner exits: the migration did not complete (" + why + ")");
  __builtin_unreachable();  // World::Exit does not return
}

size_t ProcessMachine::SwitchStagedForRecovery() {
  std::lock_guard<std::mutex> lk(mu_);
  const size_t n = member_.staged.size();
  for (const Staged& st : member_.staged) w_.SwitchStayer(st.v);
  member_.staged.clear();
  active_ = false;
  return n;
}

// ---- snapshots for the tests

#define TM_SNAPSHOT(type, name, expr)    \
  type ProcessMachine::name() const {    \
    std::lock_guard<std::mutex> lk(mu_); \
    return expr;                         \
  }
TM_SNAPSHOT(uint64_t, migration, mig_)
TM_SNAPSHOT(bool, active, active_)
TM_SNAPSHOT(uint64_t, generation, gen_)
TM_SNAPSHOT(ProcessMachine::TapeOut, tape_out, leaver_.tape)
TM_SNAPSHOT(ProcessMachine::Exposure, exposure, leaver_.exposure)
TM_SNAPSHOT(ProcessMachine::Sandbox, sandbox, joiner_.sandbox)
TM_SNAPSHOT(ProcessMachine::TapeIn, tape_in, joiner_.tape)
TM_SNAPSHOT(ProcessMachine::Intake, intake, joiner_.intake)
TM_SNAPSHOT(ProcessMachine::Agreement, agreement, member_.agreement)
TM_SNAPSHOT(int64_t, agreed_step, member_.step)
TM_SNAPSHOT(size_t, staged, member_.staged.size())
TM_SNAPSHOT(bool, exit_pending, joiner_.exit_pending)
#undef TM_SNAPSHOT

}  // namespace trainmover::migration
