// SPDX-License-Identifier: Apache-2.0
// The process side of a migration (lib/migration/process.h) against a fake world: every command and every
// safe-point transition of the joiner, the leaver and a stayer, aborts included, with the exact events each
// step sends and the state it leaves. No processes, no sockets, no NCCL; background jobs run when the test
// says, and a wait in the machine runs the next scripted coordinator command instead of sleeping.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <deque>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "migration/msgs.h"
#include "migration/process.h"
#include "migration/standby_msgs.h"

using namespace trainmover;
using namespace trainmover::migration;
using M = ProcessMachine;

namespace {

struct Exited {
  int code;
  std::string line;
};

class FakeSource final : public StateSource {
 public:
  FakeSource(std::vector<std::string>* log, std::string* seal_error, std::function<void()>* during_seal, bool staged)
      : log_(log), seal_error_(seal_error), during_seal_(during_seal), staged_(staged) {}
  const std::vector<uint8_t>& Descriptor() const override { return d_; }
  bool ReadableBeforeSeal() const override { return !staged_; }
  std::string Seal() override {
    log_->push_back("seal");
    if (*during_seal_) (*during_seal_)();
    return *seal_error_;
  }
  void Close() override { log_->push_back("close"); }

 private:
  std::vector<uint8_t> d_{7, 7};
  std::vector<std::string>* log_;
  std::string* seal_error_;
  std::function<void()>* during_seal_;
  bool staged_;
};

class FakeSink final : public StateSink {
 public:
  FakeSink(std::vector<std::string>* log, std::string* error) : log_(log), error_(error) {}
  ~FakeSink() override { log_->push_back("close sink"); }
  std::string Read(bool corrupt, const std::function<void(uint64_t, uint64_t)>& progress,
                   std::string* summary) override {
    log_->push_back(std::string("read") + (corrupt ? " corrupt" : ""));
    progress(32, 64);
    progress(64, 64);
    *summary = "64 bytes";
    return *error_;
  }

 private:
  std::vector<std::string>* log_;
  std::string* error_;
};

CommRef Ref(uint64_t key) { return reinterpret_cast<CommRef>(static_cast<uintptr_t>(key)); }

// The world in memory. `log` records what the machine did to it, `events` what it sent to the coordinator.
class FakeWorld final : public World {
 public:
  std::vector<control::Event> events;
  std::vector<std::string> log;
  std::deque<std::function<void()>> script;  // run one per Wait, in order
  std::vector<std::function<void()>> jobs;
  bool connected = true, joiner = false, sandboxed = false, overlap = true, ids_ok = true, rebind_ok = true;
  bool staged = false;  // the exposed state has device regions staged through host: readable after the seal only
  bool leaving = false;  // SetLeaving
  bool standby = false;  // IsStandby (with joiner and sandboxed)
  std::string fault, seal_error, expose_error, prepare_error, fetch_error;
  std::function<void()> during_seal, during_build;
  std::map<uint64_t, BuildOutcome> build;  // by comm_key; default: built
  std::vector<uint64_t> keys = {0xA};      // live VComms (CommRef = the key)
  int32_t first_rank = 1;
  int64_t sp_step = -1;
  uint64_t mono = 1000000000ull, captured = 0;
  uint64_t silent_from_ns = 0, silence_ms = 7500, phase_ms = 600000;
  std::vector<uint8_t> recorded;  // what TapeRecordEnd returns (empty: nothing recorded)
  int idle_waits = 0;
  std::mutex sp_mu;

  void SendEvent(control::Event e) override { events.push_back(std::move(e)); }
  bool HasAgent() const override { return true; }
  // The agent's view: false once `connected` is cleared, or from `silent_from_ns` + `silence_ms` on (a coordinator
  // that went silent at silent_from_ns, noticed by the agent's read-silence timeout).
  bool Connected() const override { return connected && !(silent_from_ns && mono >= silent_from_ns + silence_ms * 1000000ull); }
  void Exit(int code, const std::string& line) override { throw Exited{code, line}; }
  bool IsJoiner() const override { return joiner; }
  bool IsStandby() const override { return standby; }
  bool Sandboxed() const override { return sandboxed; }
  void LeaveSandbox() override {
    sandboxed = false;
    log.push_back("leave sandbox");
  }
  void SetLeaving(bool on) override { leaving = on; }
  void SnapshotSwitchStep(int64_t step) override { log.push_back("snapshot " + std::to_string(step)); }
  std::string Fault() const override { return fault; }
  int64_t ShadowIters() const override { return 1; }
  uint64_t TapeMaxBytes() const override { return 1 << 20; }
  uint64_t PhaseTimeoutMs() const override { return phase_ms; }
  bool SealOverlaps(const std::string&) const override { return overlap; }
  uint64_t MonotonicNs() const override { return mono; }
  uint64_t RealtimeNs() const override { return mono; }
  void Wait(std::unique_lock<std::mutex>& lk, std::condition_variable&, uint64_t ms) override {
    lk.unlock();
    if (!script.empty()) {
      auto f = std::move(script.front());
      script.pop_front();
      f();
    } else {
      mono += ms * 1000000ull;
      if (++idle_waits > 10000) throw std::runtime_error("the machine waits forever");
    }
    lk.lock();
  }
  std::unique_lock<std::mutex> LockSafePoint(int64_t* step) override {
    *step = sp_step;
    return std::unique_lock<std::mutex>(sp_mu);
  }
  std::thread StartThread(const char* name, std::function<void()> fn) override {
    log.push_back(std::string("start ") + name);
    jobs.push_back(std::move(fn));
    return std::thread();
  }
  std::vector<CommRef> CommsWithKey(uint64_t key) override {
    std::vector<CommRef> v;
    for (uint64_t k : keys)
      if (k == key) v.push_back(Ref(k));
    return v;
  }
  int32_t FirstCommRank() override { return first_rank; }
  std::vector<control::CommCreated> DescribeComms() override {
    control::CommCreated c;
    c.comm_key = 0xA;
    return {c};
  }
  std::vector<control::Region> RegionTable() override { return {control::Region{"w", 64}}; }
  uint64_t CapturedCount() override { return captured; }
  std::vector<uint64_t> CapturedKeys() override { return {0xA}; }
  bool NewUniqueId(std::array<uint8_t, mig::kUniqueIdBytes>* id) override {
    id->fill(0x11);
    return ids_ok;
  }
  BuildOutcome BuildReplacement(CommRef v, const mig::BuildEntry& e, const std::function<bool()>& stop) override {
    log.push_back("init " + std::to_string(reinterpret_cast<uintptr_t>(v)));
    if (during_build) during_build();
    if (stop()) return BuildOutcome{BuildOutcome::Kind::kStopped, reinterpret_cast<void*>(0x100), ""};
    auto it = build.find(e.comm_key);
    if (it != build.end()) return it->second;
    return BuildOutcome{BuildOutcome::Kind::kBuilt, reinterpret_cast<void*>(0x100 + e.comm_key), ""};
  }
  void FreeComm(void* c) override { log.push_back("free " + std::to_string(reinterpret_cast<uintptr_t>(c))); }
  bool Stage(CommRef v, void*) override {
    log.push_back("stage " + std::to_string(reinterpret_cast<uintptr_t>(v)));
    return rebind_ok;
  }
  void* Unstage(CommRef v) override {
    log.push_back("drop " + std::to_string(reinterpret_cast<uintptr_t>(v)));
    return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(v) + 0x100);
  }
  void* SwitchStayer(CommRef v) override {
    log.push_back("switch " + std::to_string(reinterpret_cast<uintptr_t>(v)));
    return reinterpret_cast<void*>(reinterpret_cast<uintptr_t>(v) + 0x1000);
  }
  void RetireComm(void* c) override { log.push_back("retire " + std::to_string(reinterpret_cast<uintptr_t>(c))); }
  void SwitchJoiner(CommRef v, int32_t nranks, int32_t rank) override {
    log.push_back("switch in " + std::to_string(reinterpret_cast<uintptr_t>(v)) + " " + std::to_string(rank) + "/" +
                  std::to_string(nranks));
  }
  void Rekey(CommRef v, uint64_t key) override {
    log.push_back("rekey " + std::to_string(reinterpret_cast<uintptr_t>(v)) + " " + std::to_string(key));
  }
  std::unique_ptr<StateSource> Expose(const std::string&, std::string* error) override {
    if (!expose_error.empty()) {
      *error = expose_error;
      return nullptr;
    }
    log.push_back("expose");
    return std::make_unique<FakeSource>(&log, &seal_error, &during_seal, staged);
  }
  std::unique_ptr<StateSink> Prepare(const std::vector<uint8_t>& d, uint32_t pid, std::string* note) override {
    log.push_back("prepare " + std::to_string(d.size()) + " pid " + std::to_string(pid));
    if (!prepare_error.empty()) {
      *note = prepare_error;
      return nullptr;
    }
    *note = "64 bytes to read over cma";
    return std::make_unique<FakeSink>(&log, &fetch_error);
  }
  void TapeRecordBegin() override { log.push_back("record"); }
  bool TapeRecordEnd(uint64_t, std::vector<uint8_t>* blob) override {
    log.push_back("record end");
    *blob = recorded;
    return !recorded.empty();
  }
  void InstallTape(const std::vector<uint8_t>& blob) override {
    log.push_back("install " + std::to_string(blob.size()));
  }
  void TapeIterationBegin() override {}
  void LogReady() override {}

  // The events sent since the last call ("NAME", phases as "PHASE name"), forgotten afterwards.
  std::vector<std::string> Take() {
    std::vector<std::string> v;
    for (const control::Event& e : events) {
      std::string s = mig::EvName(e.kind);
      if (e.kind == static_cast<uint16_t>(mig::Ev::kPhase)) {
        mig::Phase p;
        REQUIRE(control::DecodePayload(e.body, &p));
        s += " " + p.name;
      }
      v.push_back(s);
    }
    events.clear();
    return v;
  }
  std::vector<std::string> TakeLog() {
    std::vector<std::string> v = std::move(log);
    log.clear();
    return v;
  }
  template <typename B>
  B Body(size_t i) {
    B b;
    REQUIRE(i < events.size());
    REQUIRE(control::DecodePayload(events[i].body, &b));
    return b;
  }
  void RunJobs() {
    std::vector<std::function<void()>> j = std::move(jobs);
    jobs.clear();
    for (auto& f : j) f();
  }
};

struct Proc {
  FakeWorld w;
  ProcessMachine m{w};

  template <typename B>
  void Cmd(mig::Cmd kind, const B& body, uint64_t id = 5) {
    m.OnCommand(mig::Make(static_cast<uint16_t>(kind), id, body));
  }
  template <typename B>
  std::function<void()> Later(mig::Cmd kind, const B& body, uint64_t id = 5) {
    return [this, kind, body, id] { Cmd(kind, body, id); };
  }
  // tmSafePoint(step): the shim recorded the step, then calls the hook.
  int64_t SafePoint(int64_t step) {
    w.sp_step = step;
    w.mono += 10000000ull;  // 10 ms a step
    return m.OnSafePoint(step);
  }
  // A stayer with a replacement staged for comm 0xA.
  void Staged() {
    mig::Build b;
    b.entries.push_back(mig::BuildEntry{0xA, {}, 3, 1});
    Cmd(mig::Cmd::kBuild, b);
    w.RunJobs();
    w.Take();
    w.TakeLog();
  }
  // ... which accepted and committed S = 12.
  void Committed(int64_t s = 12) {
    Staged();
    w.sp_step = 10;
    Cmd(mig::Cmd::kPropose, mig::Step{s});
    Cmd(mig::Cmd::kCommit, mig::Step{s});
    w.Take();
  }
  // A leaver: exposed, committed at 12.
  void LeaverCommitted() {
    Cmd(mig::Cmd::kExpose, mig::Reason{"host h pid 5"});
    w.RunJobs();
    w.sp_step = 10;
    Cmd(mig::Cmd::kPropose, mig::Step{12});
    Cmd(mig::Cmd::kCommit, mig::Step{12});
    w.Take();
    w.TakeLog();
  }
};

using V = std::vector<std::string>;

}  // namespace

TEST_CASE("build: replacements staged in order, BUILT each, then the build phase") {
  Proc p;
  p.w.keys = {0xA, 0xB};
  mig::Build b;
  b.entries = {mig::BuildEntry{0xA, {}, 3, 1}, mig::BuildEntry{0xB, {}, 2, 0}};
  p.Cmd(mig::Cmd::kBuild, b);
  CHECK(p.m.active());
  CHECK(p.m.migration() == 5);
  CHECK(p.w.TakeLog() == V{"start tm-build"});
  CHECK(p.w.events.empty());  // built in the background
  p.w.RunJobs();
  CHECK(p.w.TakeLog() == V{"init 10", "stage 10", "init 11", "stage 11"});
  CHECK(p.w.Body<mig::Built>(0).ok == 1);
  CHECK(p.w.Take() == V{"BUILT", "BUILT", "PHASE build"});
  CHECK(p.m.staged() == 2);
  p.m.ReapJobs();
}

TEST_CASE("build failures: unknown key, init error, rebind error") {
  Proc p;
  mig::Build b;
  SUBCASE("no such communicator") {
    b.entries = {mig::BuildEntry{0xC, {}, 3, 1}};
    p.Cmd(mig::Cmd::kBuild, b);
    p.w.RunJobs();
    CHECK(p.w.Body<mig::Built>(0).message == "no live communicator with that key here");
    CHECK(p.m.staged() == 0);
  }
  SUBCASE("init fails: the half-made communicator is freed") {
    p.w.build[0xA] =
        BuildOutcome{BuildOutcome::Kind::kFailed, reinterpret_cast<void*>(0x42), "ncclCommInitRankConfig: x"};
    b.entries = {mig::BuildEntry{0xA, {}, 3, 1}};
    p.Cmd(mig::Cmd::kBuild, b);
    p.w.RunJobs();
    CHECK(p.w.Body<mig::Built>(0).message == "ncclCommInitRankConfig: x");
    CHECK(p.w.TakeLog() == V{"start tm-build", "init 10", "free 66"});
    CHECK(p.m.staged() == 0);
  }
  SUBCASE("objects cannot be re-created: staged (an abort drops it), BUILT(false)") {
    p.w.rebind_ok = false;
    b.entries = {mig::BuildEntry{0xA, {}, 3, 1}};
    p.Cmd(mig::Cmd::kBuild, b);
    p.w.RunJobs();
    CHECK(p.w.Body<mig::Built>(0).message == "re-creating PreMulSum ops/registrations on the replacement failed");
    CHECK(p.m.staged() == 1);
  }
  CHECK(p.w.Body<mig::Built>(0).ok == 0);
  CHECK(p.w.Take() == V{"BUILT", "PHASE build"});
}

TEST_CASE("build stopped by an abort: nothing staged, nothing reported, the replacement freed") {
  Proc p;
  p.w.during_build = [&] { p.Cmd(mig::Cmd::kAbort, mig::Reason{"cancelled"}); };
  mig::Build b;
  b.entries = {mig::BuildEntry{0xA, {}, 3, 1}};
  p.Cmd(mig::Cmd::kBuild, b);
  p.w.RunJobs();
  CHECK(p.w.events.empty());
  CHECK(p.w.TakeLog() == V{"start tm-build", "init 10", "free 256"});
  CHECK(p.m.staged() == 0);
  CHECK(p.m.generation() == 1);
}

TEST_CASE("build deadline: a replacement not built within TRAINMOVER_PHASE_TIMEOUT_MS is given up and freed") {
  Proc p;
  // The peers never come (a joiner that never got its BUILD, a host cut off): the init would wait for them.
  p.w.during_build = [&] { p.w.mono += (p.w.phase_ms + 1) * 1000000ull; };
  mig::Build b;
  b.entries = {mig::BuildEntry{0xA, {}, 3, 1}};
  p.Cmd(mig::Cmd::kBuild, b);
  p.w.RunJobs();
  CHECK(p.w.Body<mig::Built>(0).ok == 0);
  CHECK(p.w.Body<mig::Built>(0).message == "not built within 600000 ms (TRAINMOVER_PHASE_TIMEOUT_MS)");
  CHECK(p.w.Take() == V{"BUILT", "PHASE build"});
  CHECK(p.w.TakeLog() == V{"start tm-build", "init 10", "free 256"});
  CHECK(p.m.staged() == 0);
}

TEST_CASE("map and make ids (joiner)") {
  Proc p;
  p.w.keys = {0xB0};
  p.Cmd(mig::Cmd::kMap, mig::KeyList{{0xB0, 0xA}});
  CHECK(p.m.active());
  mig::Build b;
  b.entries = {mig::BuildEntry{0xA, {}, 3, 1}};  // the leaver's key finds the joiner's VComm 0xB0
  p.Cmd(mig::Cmd::kBuild, b);
  p.w.RunJobs();
  CHECK(p.w.TakeLog() == V{"start tm-build", "init 176", "stage 176"});
  p.w.Take();
  p.Cmd(mig::Cmd::kMakeIds, mig::KeyList{{0xA, 0xB}});
  mig::Ids ids = p.w.Body<mig::Ids>(0);
  REQUIRE(ids.ids.size() == 2);
  CHECK(ids.ids[1].comm_key == 0xB);
  CHECK(ids.ids[1].id[0] == 0x11);
  CHECK(p.w.Take() == V{"IDS"});
  p.w.ids_ok = false;
  p.Cmd(mig::Cmd::kMakeIds, mig::KeyList{{0xA}});
  CHECK(p.w.Body<mig::Reason>(0).text == "ncclGetUniqueId failed in the joiner");
  CHECK(p.w.Take() == V{"FAILED"});
}

TEST_CASE("expose (leaver): a job off the agent thread; EXPOSED with the descriptor, or FAILED") {
  Proc p;
  SUBCASE("exposed") {
    p.Cmd(mig::Cmd::kExpose, mig::Reason{"host h pid 5"});
    CHECK(p.w.TakeLog() == V{"start tm-expose"});
    CHECK(p.w.events.empty());  // the agent thread returned before anything was registered
    p.w.RunJobs();
    CHECK(p.w.Body<mig::Blob>(0).bytes == std::vector<uint8_t>{7, 7});
    CHECK(p.w.Take() == V{"EXPOSED", "PHASE expose"});
    CHECK(p.m.exposure() == M::Exposure::kExposed);
  }
  SUBCASE("cannot") {
    p.w.expose_error = "no UCX";
    p.Cmd(mig::Cmd::kExpose, mig::Reason{"host h pid 5"});
    p.w.RunJobs();
    CHECK(p.w.Body<mig::Reason>(0).text == "leaver cannot expose its state: no UCX");
    CHECK(p.w.Take() == V{"FAILED"});
    CHECK(p.m.exposure() == M::Exposure::kNone);
  }
  SUBCASE("aborted while exposing: the server is closed, nothing sent") {
    p.Cmd(mig::Cmd::kExpose, mig::Reason{"host h pid 5"});
    p.Cmd(mig::Cmd::kAbort, mig::Reason{"x"});
    p.w.RunJobs();
    CHECK(p.w.events.empty());
    CHECK(p.w.TakeLog() == V{"start tm-expose", "expose", "close"});
    CHECK(p.m.exposure() == M::Exposure::kNone);
  }
}

TEST_CASE("propose: ACCEPT below S, PASSED at or past it; the fault knob passes once on rank 0") {
  Proc p;
  p.w.sp_step = 10;
  p.Cmd(mig::Cmd::kPropose, mig::Step{12});
  CHECK(p.w.Take() == V{"ACCEPT"});
  CHECK(p.m.agreement() == M::Agreement::kProposed);
  CHECK(p.m.agreed_step() == 12);
  p.w.sp_step = 12;
  p.Cmd(mig::Cmd::kPropose, mig::Step{12});
  CHECK(p.w.Body<mig::Step>(0).step == 12);
  CHECK(p.w.Take() == V{"PASSED"});
  CHECK(p.m.agreement() == M::Agreement::kNone);
  Proc q;
  q.w.fault = "pass-first-proposal";
  q.w.first_rank = 0;
  q.w.sp_step = 1;
  q.Cmd(mig::Cmd::kPropose, mig::Step{12});
  q.Cmd(mig::Cmd::kPropose, mig::Step{16});
  CHECK(q.w.Take() == V{"PASSED", "ACCEPT"});
}

TEST_CASE("commit: of the accepted step, else FAILED") {
  Proc p;
  p.w.sp_step = 10;
  p.Cmd(mig::Cmd::kPropose, mig::Step{12});
  p.w.Take();
  p.Cmd(mig::Cmd::kCommit, mig::Step{14});
  CHECK(p.w.Body<mig::Reason>(0).text == "COMMIT of a step this process did not accept");
  CHECK(p.w.Take() == V{"FAILED"});
  CHECK(p.m.agreement() == M::Agreement::kProposed);
  p.Cmd(mig::Cmd::kCommit, mig::Step{12});
  CHECK(p.w.Take().empty());
  CHECK(p.m.agreement() == M::Agreement::kCommitted);
}

TEST_CASE("stayer: held at S, AT_STEP, SWITCH; SWITCHED with its stall at S+1") {
  Proc p;
  for (int64_t s = 5; s < 10; ++s) CHECK(p.SafePoint(s) == s);  // undisturbed steps of 10 ms
  p.Committed();
  CHECK(p.SafePoint(11) == 11);  // below S: not held
  p.w.script.push_back(p.Later(mig::Cmd::kSwitch, mig::Step{12}));
  CHECK(p.SafePoint(12) == 12);
  CHECK(p.w.Take() == V{"AT_STEP", "PHASE hold at S", "PHASE swap comms"});
  // The switch step's snapshot first (before AT_STEP: its rank's state there is on its buddy while it waits, should it
  // end up out of step); the old communicator is destroyed off the path.
  CHECK(p.w.TakeLog() == V{"snapshot 12", "switch 10", "start tm-retire"});
  p.w.RunJobs();
  CHECK(p.w.TakeLog() == V{"retire 4106"});
  CHECK(p.m.agreement() == M::Agreement::kNone);
  CHECK(p.m.staged() == 0);
  CHECK_FALSE(p.m.active());
  const uint64_t returned = p.w.mono;
  p.w.mono += 40000000ull;  // the switch step took 50 ms
  CHECK(p.SafePoint(13) == 13);
  mig::Switched sw = p.w.Body<mig::Switched>(2);
  CHECK(sw.step == 12);
  CHECK(sw.median_step_ns == 10000000ull);
  CHECK(sw.stall_ns == 40000000ull);
  mig::Phase first = p.w.Body<mig::Phase>(1);  // from the return at S to the entry at S+1
  CHECK(first.start_ns == returned);
  CHECK(first.end_ns == p.w.mono);
  CHECK(p.w.Take() == V{"PHASE switch step", "PHASE first step", "SWITCHED"});
  CHECK(p.SafePoint(14) == 14);
  CHECK(p.w.Take().empty());
}

TEST_CASE("stayer: SWITCHED goes to the migration that switched, after a recovery's BUILD came in between") {
  // A rank failed right after the switch (recovery_after_switch): the recovery's BUILD (id 9) reaches this stayer
  // before its next safe point; the migration (id 5) still needs its SWITCHED, else it is never confirmed.
  Proc p;
  for (int64_t s = 5; s < 10; ++s) CHECK(p.SafePoint(s) == s);
  p.Committed();
  p.w.script.push_back(p.Later(mig::Cmd::kSwitch, mig::Step{12}));
  CHECK(p.SafePoint(12) == 12);
  p.w.RunJobs();
  p.w.Take();
  p.w.keys = {0xA};
  mig::Build b;
  b.entries = {mig::BuildEntry{0xA, {}, 3, 1}};
  p.Cmd(mig::Cmd::kBuild, b, 9);
  p.w.RunJobs();
  p.w.Take();
  CHECK(p.SafePoint(13) == 13);
  REQUIRE(p.w.events.size() == 3);
  for (const control::Event& e : p.w.events) CHECK(e.migration == 5);
  CHECK(p.w.Take() == V{"PHASE switch step", "PHASE first step", "SWITCHED"});
  p.m.ReapJobs();
}

TEST_CASE("stayer: a new proposal releases a process held at the old one") {
  Proc p;
  p.Staged();
  p.w.sp_step = 10;
  p.Cmd(mig::Cmd::kPropose, mig::Step{12});
  p.w.Take();
  p.w.script.push_back(p.Later(mig::Cmd::kPropose, mig::Step{20}));
  CHECK(p.SafePoint(12) == 12);      // held at 12 (accepted, not committed), released by S = 20
  CHECK(p.w.Take() == V{"ACCEPT"});  // the shim's step (12) is below the new S
  CHECK(p.m.agreed_step() == 20);
}

TEST_CASE("stayer: past the committed step fails and aborts") {
  Proc p;
  p.Committed();
  CHECK(p.SafePoint(14) == 14);
  CHECK(p.w.Body<mig::Reason>(0).text == "process passed the committed switch step");
  CHECK(p.w.Take() == V{"FAILED"});
  CHECK(p.w.TakeLog() == V{"drop 10", "start tm-retire"});
  CHECK(p.m.agreement() == M::Agreement::kNone);
  CHECK_FALSE(p.m.active());
}

TEST_CASE("stayer: ABORT while held releases it on the old communicators") {
  Proc p;
  p.Committed();
  p.w.script.push_back(p.Later(mig::Cmd::kAbort, mig::Reason{"joiner lost"}));
  CHECK(p.SafePoint(12) == 12);
  CHECK(p.w.Take() == V{"AT_STEP"});
  CHECK(p.w.TakeLog() == V{"snapshot 12", "drop 10", "start tm-retire"});
  CHECK(p.m.generation() == 1);
  CHECK_FALSE(p.m.exit_pending());  // a stayer goes on
}

TEST_CASE("coordinator lost before AT_STEP: at a safe point or held at a committed S, the replacements are dropped") {
  Proc p;
  SUBCASE("at a safe point") {
    p.Staged();
    p.w.connected = false;
    CHECK(p.SafePoint(3) == 3);
  }
  SUBCASE("held at a committed S it has not reached") {
    p.Committed();
    p.w.connected = false;
    CHECK(p.SafePoint(11) == 11);
  }
  CHECK(p.w.TakeLog() == V{"drop 10", "start tm-retire"});
  CHECK(p.m.staged() == 0);
  CHECK_FALSE(p.m.active());
}

TEST_CASE("coordinator lost while fenced by a failure recovery: the recovery's staged replacements stay") {
  // Its rollback switches to them (SwitchStagedForRecovery); dropped here, the fenced communicators would have had
  // no real communicator after the rollback.
  Proc p;
  p.Staged();
  p.w.connected = false;
  p.w.sp_step = 3;
  p.w.mono += 10000000ull;
  CHECK(p.m.OnSafePoint(3, true) == 3);
  CHECK(p.w.TakeLog().empty());
  CHECK(p.m.staged() == 1);
}

// docs/reliability.md, "The commit point": after AT_STEP the outcome is the coordinator's.
TEST_CASE("coordinator lost after AT_STEP: the process waits for the outcome, learnt on reconnection") {
  Proc p;
  p.Committed();
  p.w.script.push_back([&] { p.w.connected = false; });
  for (int i = 0; i < 20; ++i) p.w.script.push_back([] {});  // a second of outage: still held
  SUBCASE("SWITCH repeated on reconnection: it switches like the others") {
    p.w.script.push_back([&] {
      p.w.connected = true;
      p.Cmd(mig::Cmd::kSwitch, mig::Step{12});
    });
    CHECK(p.SafePoint(12) == 12);
    CHECK(p.w.TakeLog() == V{"snapshot 12", "switch 10", "start tm-retire"});
    CHECK(p.w.Take() == V{"AT_STEP", "PHASE hold at S", "PHASE swap comms"});
  }
  SUBCASE("ABORT repeated on reconnection: it continues on the old communicators") {
    p.w.script.push_back([&] {
      p.w.connected = true;
      p.Cmd(mig::Cmd::kAbort, mig::Reason{"process 3 was lost before the switch"});
    });
    CHECK(p.SafePoint(12) == 12);
    CHECK(p.w.TakeLog() == V{"snapshot 12", "drop 10", "start tm-retire"});
    CHECK(p.w.Take() == V{"AT_STEP"});
  }
  CHECK_FALSE(p.m.active());
}

TEST_CASE("hold deadline: no decision within TRAINMOVER_HOLD_TIMEOUT_MS of COMMIT releases the process") {
  Proc p;
  p.Committed();
  const uint64_t committed = p.w.mono;
  SUBCASE("connected, the coordinator never decides") {}
  SUBCASE("the coordinator unreachable all along") { p.w.script.push_back([&] { p.w.connected = false; }); }
  CHECK(p.SafePoint(12) == 12);
  const uint64_t held = p.w.mono - committed;
  CHECK(held >= 120000ull * 1000000ull);
  CHECK(held < 121000ull * 1000000ull);  // released at the deadline, not later
  CHECK(p.w.Body<mig::Reason>(1).text ==
        "no decision from the coordinator within 120000 ms at step 12 (TRAINMOVER_HOLD_TIMEOUT_MS)");
  CHECK(p.w.Take() == V{"AT_STEP", "FAILED"});
  CHECK(p.w.TakeLog() == V{"snapshot 12", "drop 10", "start tm-retire"});
  // A SWITCH that comes after that is refused: the process stays on its communicators.
  p.Cmd(mig::Cmd::kSwitch, mig::Step{12});
  CHECK(p.SafePoint(13) == 13);
  CHECK(p.w.TakeLog().empty());
  CHECK(p.m.agreement() == M::Agreement::kNone);
}

TEST_CASE("leaver: AT_STEP then seal (overlapped), SWITCH, exit 0 with where it went") {
  Proc p;
  p.LeaverCommitted();
  p.w.script.push_back(p.Later(mig::Cmd::kSwitch, mig::Step{12}));
  try {
    p.SafePoint(12);
    FAIL("the leaver returned from its switch step");
  } catch (const Exited& e) {
    CHECK(e.code == 0);
    CHECK(e.line == "rank migrated at step 12 to host h pid 5; this process exits");
  }
  CHECK(p.w.leaving);  // from S on, its communicators' async errors are the stayers leaving them
  CHECK(p.w.Take() == V{"AT_STEP", "PHASE seal", "PHASE hold at S"});
  CHECK(p.w.TakeLog() == V{"seal", "close"});
}

TEST_CASE("leaver: not overlapped, the seal comes before AT_STEP; a failed seal reports FAILED") {
  // Not overlapped: the world says so, or the seal stages device regions that the joiner will read.
  for (const bool staged : {false, true}) {
    for (const bool fails : {false, true}) {
      CAPTURE(staged);
      CAPTURE(fails);
      Proc p;
      p.w.overlap = staged;
      p.w.staged = staged;
      if (fails) p.w.seal_error = "no libcudart";
      p.LeaverCommitted();
      p.w.script.push_back(p.Later(mig::Cmd::kAbort, mig::Reason{"x"}));
      CHECK(p.SafePoint(12) == 12);
      if (!fails) {
        CHECK(p.w.Take() == V{"PHASE seal", "AT_STEP"});
      } else {
        CHECK(p.w.Body<mig::Reason>(1).text == "leaver cannot checksum its state: no libcudart");
        CHECK(p.w.Take() == V{"PHASE seal", "FAILED", "AT_STEP"});
      }
      CHECK(p.w.TakeLog() == V{"seal", "start tm-retire"});  // closed by the abort, on a job
      p.w.RunJobs();
      CHECK(p.w.TakeLog() == V{"close"});
      CHECK(p.m.exposure() == M::Exposure::kNone);
      CHECK_FALSE(p.w.leaving);  // aborted: it trains on, its async errors are real again
    }
  }
}

TEST_CASE("leaver: ABORT during the seal leaves the server to the application thread; EXPOSE meanwhile refused") {
  Proc p;
  p.w.overlap = false;
  p.LeaverCommitted();
  p.w.during_seal = [&] {
    p.Cmd(mig::Cmd::kAbort, mig::Reason{"checksum mismatch"});
    CHECK(p.m.exposure() == M::Exposure::kSealing);
    p.Cmd(mig::Cmd::kExpose, mig::Reason{"host h pid 6"}, 6);  // refused at once, no job
  };
  CHECK(p.SafePoint(12) == 12);
  CHECK(p.w.Body<mig::Reason>(0).text == "the previous migration's seal is still running");
  CHECK(p.w.Take() == V{"FAILED", "PHASE seal"});  // no AT_STEP: aborted
  CHECK(p.w.TakeLog() == V{"seal", "start tm-retire"});
  p.w.RunJobs();
  CHECK(p.w.TakeLog() == V{"close"});
  CHECK(p.m.exposure() == M::Exposure::kNone);
}

TEST_CASE("leaver: the tape of one iteration, recorded and sent in chunks") {
  Proc p;
  p.Cmd(mig::Cmd::kRecordTape, mig::Step{0}, 9);
  CHECK(p.m.tape_out() == M::TapeOut::kRequested);
  p.SafePoint(3);
  CHECK(p.m.tape_out() == M::TapeOut::kRecording);
  CHECK(p.w.TakeLog() == V{"record"});
  p.w.recorded.assign(mig::kMaxBlob + 10, 1);
  p.SafePoint(4);
  CHECK(p.m.tape_out() == M::TapeOut::kIdle);
  CHECK(p.w.TakeLog() == V{"record end"});
  CHECK(p.w.Body<mig::Blob>(1).bytes.size() == 10);
  CHECK(p.w.events[0].migration == 9);
  CHECK(p.w.Take() == V{"TAPE", "TAPE", "TAPE"});
  p.Cmd(mig::Cmd::kRecordTape, mig::Step{0});
  p.SafePoint(5);
  p.w.recorded.clear();  // nothing recorded (e.g. the recorder was busy): nothing sent
  p.SafePoint(6);
  CHECK(p.w.Take().empty());
}

TEST_CASE("joiner: waits for the tape at its first safe point, shadow iteration, READY, SWITCH: switched in") {
  Proc p;
  p.w.joiner = p.w.sandboxed = true;
  p.w.keys = {0xB0};
  p.Cmd(mig::Cmd::kMap, mig::KeyList{{0xB0, 0xA}});
  p.w.script.push_back(p.Later(mig::Cmd::kTape, mig::Blob{{1, 2}}));
  p.w.script.push_back(p.Later(mig::Cmd::kTape, mig::Blob{}));
  CHECK(p.SafePoint(0) == 0);
  CHECK(p.m.tape_in() == M::TapeIn::kInstalled);
  CHECK(p.m.sandbox() == M::Sandbox::kShadow);
  CHECK(p.w.TakeLog() == V{"install 2"});
  CHECK(p.w.Take().empty());
  mig::Build b;
  b.entries = {mig::BuildEntry{0xA, {}, 4, 2}};
  p.w.script.push_back([&] {
    p.Cmd(mig::Cmd::kBuild, b);
    p.w.RunJobs();
  });
  p.w.script.push_back(p.Later(mig::Cmd::kSwitch, mig::Step{12}));
  CHECK(p.SafePoint(1) == 12);  // the joiner continues from S
  CHECK(p.m.sandbox() == M::Sandbox::kReadySent);
  CHECK(p.w.Take() == V{"READY", "BUILT", "PHASE build", "SWITCHED"});
  CHECK(p.w.TakeLog() ==
        V{"start tm-build", "init 176", "stage 176", "switch in 176 2/4", "leave sandbox", "rekey 176 10"});
  CHECK_FALSE(p.m.active());
  CHECK(p.m.agreement() == M::Agreement::kNone);
}

TEST_CASE("joiner: switched in, then an ABORT of that migration (the switch was undone): it exits; another is ignored") {
  Proc p;
  p.w.joiner = p.w.sandboxed = true;
  p.w.keys = {0xB0};
  p.Cmd(mig::Cmd::kMap, mig::KeyList{{0xB0, 0xA}}, 7);
  p.Cmd(mig::Cmd::kTape, mig::Blob{});
  p.SafePoint(0);
  p.w.script.push_back(p.Later(mig::Cmd::kSwitch, mig::Step{12}, 7));
  CHECK(p.SafePoint(1) == 12);
  CHECK_FALSE(p.w.sandboxed);
  p.Cmd(mig::Cmd::kAbort, mig::Reason{"of another migration"}, 8);
  try {
    p.Cmd(mig::Cmd::kAbort, mig::Reason{"every held process abandoned it"}, 7);
    FAIL("the joiner stayed");
  } catch (const Exited& e) {
    CHECK(e.code == 1);
    CHECK(e.line == "joiner exits: migration 7 was undone after it switched in (every held process abandoned it)");
  }
}

TEST_CASE("joiner: no tape within 3 s: the sandbox emulates") {
  Proc p;
  p.w.joiner = p.w.sandboxed = true;
  const uint64_t t0 = p.w.mono;
  CHECK(p.SafePoint(0) == 0);
  CHECK(p.w.mono - t0 >= 3000000000ull);
  CHECK(p.m.tape_in() == M::TapeIn::kReceiving);
  p.Cmd(mig::Cmd::kTape, mig::Blob{});  // too late: installed for nothing, no harm
  CHECK(p.m.tape_in() == M::TapeIn::kInstalled);
}

TEST_CASE("joiner: ABORT or a lost coordinator while held after READY: exit 1 with the reason") {
  Proc p;
  p.w.joiner = p.w.sandboxed = true;
  p.Cmd(mig::Cmd::kTape, mig::Blob{});
  p.SafePoint(0);
  std::string why;
  SUBCASE("aborted") {
    p.w.script.push_back(p.Later(mig::Cmd::kAbort, mig::Reason{"cancelled by the operator"}));
    why = "cancelled by the operator";  // not active here yet: the coordinator's reason as is
  }
  SUBCASE("coordinator lost for 3 s") {
    p.w.connected = false;
    why = "lost the coordinator";
  }
  SUBCASE("refused at READY (no migration active here yet)") {
    p.w.script.push_back(p.Later(mig::Cmd::kAbort, mig::Reason{"does not match"}, 0));
    why = "does not match";
  }
  try {
    p.SafePoint(1);
    FAIL("the joiner returned");
  } catch (const Exited& e) {
    CHECK(e.code == 1);
    CHECK(e.line == "joiner exits: the migration did not complete (" + why + ")");
  }
  CHECK(p.w.Take() == V{"READY"});
}

// The joiner's long wait: held after READY while its coordinator goes silent (frozen, or the link cut without a reset).
// The agent drops the connection after its silence timeout; from then on the joiner waits 3 s before VERIFIED (no
// SWITCH can have been sent: it needs VERIFIED), and the whole hold deadline after it (SWITCH may be on its way).
TEST_CASE("joiner: a coordinator that goes silent; exit after 3 s, or after the hold deadline once VERIFIED") {
  Proc p;
  p.w.joiner = p.w.sandboxed = true;
  p.Cmd(mig::Cmd::kTape, mig::Blob{});
  p.SafePoint(0);
  mig::Build b;
  b.entries = {mig::BuildEntry{0xA, {}, 4, 1}};
  bool verified = false;
  SUBCASE("silent while building") {}
  SUBCASE("silent after VERIFIED") { verified = true; }
  p.w.script.push_back([&] {
    p.Cmd(mig::Cmd::kBuild, b);
    p.Cmd(mig::Cmd::kPrepare, mig::Prepare{{1}, 77});
    p.w.RunJobs();
    if (verified) {
      p.Cmd(mig::Cmd::kRead, mig::Step{12});
      p.w.RunJobs();
    }
    p.w.silent_from_ns = p.w.mono;  // the coordinator's last word
  });
  uint64_t silent_for_ms = 0;
  try {
    p.SafePoint(1);
    FAIL("the joiner returned");
  } catch (const Exited& e) {
    silent_for_ms = (p.w.mono - p.w.silent_from_ns) / 1000000ull;
    CHECK(e.code == 1);
    CHECK(e.line == "joiner exits: the migration did not complete (lost the coordinator)");
  }
  const uint64_t bound_ms = p.w.silence_ms + (verified ? p.w.HoldTimeoutMs() : 3000);
  CHECK(silent_for_ms > bound_ms);        // never before its deadline
  CHECK(silent_for_ms <= bound_ms + 100);  // nor much after it (the wait polls every 50 ms)
  CHECK(p.m.intake() == (verified ? M::Intake::kRead : M::Intake::kPrepared));
}

// sandbox/leaver/kill of the fault matrix: a joiner READY for a migration the coordinator no longer serves, with the
// coordinator there (heartbeats, no command), used to wait for SWITCH forever.
TEST_CASE("joiner: a coordinator that never answers READY; exit at 2 x the phase deadline + the hold deadline") {
  Proc p;
  p.w.joiner = p.w.sandboxed = true;
  p.w.phase_ms = 1000;
  p.Cmd(mig::Cmd::kTape, mig::Blob{});
  p.SafePoint(0);
  const uint64_t t0 = p.w.mono;
  const uint64_t bound_ms = 2 * p.w.phase_ms + p.w.HoldTimeoutMs();
  CHECK(p.m.JoinerSwitchDeadlineMs() == bound_ms);
  try {
    p.SafePoint(1);
    FAIL("the joiner returned");
  } catch (const Exited& e) {
    CHECK(e.code == 1);
    CHECK(e.line == "joiner exits: the migration did not complete (no SWITCH within " + std::to_string(bound_ms) +
                        " ms of READY (2 x TRAINMOVER_PHASE_TIMEOUT_MS + TRAINMOVER_HOLD_TIMEOUT_MS))");
  }
  const uint64_t waited_ms = (p.w.mono - t0) / 1000000ull;
  CHECK(waited_ms > bound_ms);
  CHECK(waited_ms <= bound_ms + 100);
  CHECK(p.w.Take() == V{"READY"});
}

// docs/recovery.md, "Standbys": a standby waits as long as the job runs. The bound on a joiner's wait for SWITCH used
// to apply to it from its READY: an idle standby exited after 2 x the phase deadline + the hold deadline.
TEST_CASE("standby: no bound on its wait until ASSIGN; from ASSIGN a joiner's bound") {
  Proc p;
  p.w.joiner = p.w.sandboxed = p.w.standby = true;
  p.w.phase_ms = 1000;
  p.SafePoint(0);
  const uint64_t bound_ms = p.m.JoinerSwitchDeadlineMs();
  p.w.script.push_back([&] { p.w.mono += 10 * bound_ms * 1000000ull; });  // a long quiet stretch of the job
  std::string expect;
  int code = -1;
  SUBCASE("dismissed at the job's end: exits 0") {
    p.w.script.push_back([&] {
      p.m.OnCommand(control::standby::Make(control::standby::Cmd::kDismiss, 0, mig::Reason{"the job has ended"}));
    });
    expect = "standby exits: the job has ended";
    code = 0;
  }
  SUBCASE("assigned, then no SWITCH: exits at the bound after ASSIGN") {
    p.w.script.push_back([&] {
      p.m.OnCommand(control::standby::Make(control::standby::Cmd::kAssign, 9, control::standby::Assign{1, 3}));
    });
    expect = "joiner exits: the migration did not complete (no SWITCH within " + std::to_string(bound_ms) +
             " ms of ASSIGN (2 x TRAINMOVER_PHASE_TIMEOUT_MS + TRAINMOVER_HOLD_TIMEOUT_MS))";
    code = 1;
  }
  const uint64_t t0 = p.w.mono;
  try {
    p.SafePoint(1);
    FAIL("the standby returned");
  } catch (const Exited& e) {
    CHECK(e.code == code);
    CHECK(e.line == expect);
  }
  if (code == 1) {
    const uint64_t after_assign_ms = (p.w.mono - t0) / 1000000ull - 10 * bound_ms;
    CHECK(after_assign_ms > bound_ms);
    CHECK(after_assign_ms <= bound_ms + 100);
  }
}

TEST_CASE("prepare (joiner): connected in the build phase, PREPARED; a failure fails the migration") {
  Proc p;
  p.Staged();  // something for an abort to drop
  p.Cmd(mig::Cmd::kPrepare, mig::Prepare{{1, 2, 3}, 77});
  CHECK(p.m.intake() == M::Intake::kPreparing);
  SUBCASE("prepared") {
    p.w.RunJobs();
    CHECK(p.w.TakeLog() == V{"start tm-fetch", "prepare 3 pid 77"});
    CHECK(p.w.Body<mig::Reason>(1).text == "64 bytes to read over cma");
    CHECK(p.w.Take() == V{"PHASE prepare", "PREPARED"});
    CHECK(p.m.intake() == M::Intake::kPrepared);
    SUBCASE("a second PREPARE is refused") {
      p.Cmd(mig::Cmd::kPrepare, mig::Prepare{{1}, 77});
      CHECK(p.w.Take() == V{"FAILED"});
      CHECK(p.m.intake() == M::Intake::kPrepared);
    }
    SUBCASE("an abort closes the connection on a job thread") {
      p.Cmd(mig::Cmd::kAbort, mig::Reason{"x"});
      CHECK(p.m.intake() == M::Intake::kNone);
      CHECK(p.w.TakeLog() == V{"drop 10", "start tm-retire", "start tm-fetch"});
      p.w.RunJobs();
      CHECK(p.w.TakeLog() == V{"free 266", "close sink"});
    }
  }
  SUBCASE("cannot connect") {
    p.w.prepare_error = "kPeerFailure: leaver gone";
    p.w.RunJobs();
    CHECK(p.w.Body<mig::Reason>(1).text == "joiner cannot connect to the leaver's state: kPeerFailure: leaver gone");
    CHECK(p.w.Take() == V{"PHASE prepare", "FAILED"});
    CHECK(p.m.intake() == M::Intake::kNone);
  }
  SUBCASE("aborted while connecting: the connection is closed, nothing sent") {
    p.Cmd(mig::Cmd::kAbort, mig::Reason{"x"});
    p.w.RunJobs();
    CHECK(p.w.TakeLog() == V{"start tm-fetch", "drop 10", "start tm-retire", "prepare 3 pid 77", "close sink", "free 266"});
    CHECK(p.w.Take().empty());
    CHECK(p.m.intake() == M::Intake::kNone);
  }
}

TEST_CASE("read (joiner): PROGRESS, the transfer phase, VERIFIED, the connection closed; nothing after an abort") {
  Proc p;
  p.Staged();  // something for an abort to drop
  p.Cmd(mig::Cmd::kPrepare, mig::Prepare{{1, 2, 3}, 77});
  p.w.RunJobs();
  p.w.Take();
  p.w.TakeLog();
  p.Cmd(mig::Cmd::kRead, mig::Step{12});
  CHECK(p.m.intake() == M::Intake::kReading);
  SUBCASE("verified") {
    p.w.RunJobs();
    CHECK(p.w.TakeLog() == V{"start tm-fetch", "read", "close sink"});
    CHECK(p.w.Body<mig::Built>(3).ok == 1);
    CHECK(p.w.Body<mig::Built>(3).message == "64 bytes");
    CHECK(p.w.Take() == V{"PROGRESS", "PROGRESS", "PHASE transfer", "VERIFIED"});
    CHECK(p.m.intake() == M::Intake::kRead);
  }
  SUBCASE("checksums differ") {
    p.w.fault = "corrupt-transfer";
    p.w.fetch_error = "checksum mismatch";
    p.w.RunJobs();
    CHECK(p.w.TakeLog() == V{"start tm-fetch", "read corrupt", "close sink"});
    CHECK(p.w.Body<mig::Built>(3).ok == 0);
    CHECK(p.w.Body<mig::Built>(3).message == "checksum mismatch");
    CHECK(p.w.Take() == V{"PROGRESS", "PROGRESS", "PHASE transfer", "VERIFIED"});
  }
  SUBCASE("aborted while reading: the read job keeps the connection and closes it") {
    p.Cmd(mig::Cmd::kAbort, mig::Reason{"x"});
    CHECK(p.m.intake() == M::Intake::kReading);
    p.w.RunJobs();
    CHECK(p.w.TakeLog() == V{"start tm-fetch", "drop 10", "start tm-retire", "read", "close sink", "free 266"});
    CHECK(p.w.Take() == V{"PROGRESS", "PROGRESS"});
    CHECK(p.m.intake() == M::Intake::kNone);
  }
}

TEST_CASE("read before prepare: VERIFIED failed") {
  Proc p;
  p.Cmd(mig::Cmd::kRead, mig::Step{12});
  CHECK(p.w.Body<mig::Built>(0).ok == 0);
  CHECK(p.w.Body<mig::Built>(0).message == "READ before the leaver's state was prepared");
  CHECK(p.w.Take() == V{"VERIFIED"});
}

TEST_CASE("captured communicators are reported once per change") {
  Proc p;
  p.SafePoint(1);
  CHECK(p.w.Take().empty());
  p.w.captured = 2;
  p.SafePoint(2);
  CHECK(p.w.Body<mig::KeyList>(0).keys == std::vector<uint64_t>{0xA});
  CHECK(p.w.Take() == V{"CAPTURED"});
  p.SafePoint(3);
  CHECK(p.w.Take().empty());
}

TEST_CASE("malformed and unknown commands are ignored") {
  Proc p;
  control::Command c;
  c.kind = static_cast<uint16_t>(mig::Cmd::kPropose);
  c.body = {1};
  p.m.OnCommand(c);
  c.kind = 99;
  p.m.OnCommand(c);
  CHECK(p.w.events.empty());
  CHECK_FALSE(p.m.active());
}
