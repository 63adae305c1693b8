// SPDX-License-Identifier: Apache-2.0
// The coordinator's migration engine (lib/migration/engine.cc) against a fake coordinator and a fake
// launcher: every transition of a migration, aborts included, with the exact commands each step sends and
// the state it leaves. No processes, no sockets.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../control/fake_engine_host.h"
#include "control/coordinator.h"
#include "migration/engine.h"
#include "migration/msgs.h"
#include "migration/recovery.h"
#include "migration/recovery_engine.h"
#include "migration/recovery_msgs.h"
#include "migration/standby_msgs.h"

using namespace trainmover::control;

namespace {

// The coordinator in memory (tests/control/fake_engine_host.h), and the commands it was given as "to:NAME".
class FakeHost final : public testing::FakeEngineHost {
 public:
  // The commands sent since the last call, as "to:NAME", and forgets them.
  std::vector<std::string> Take() {
    std::vector<std::string> v;
    for (const Sent& s : sent) {
      v.push_back(std::to_string(s.to) + ":" +
                  (s.c.kind >= standby::kFirstStandbyKind ? standby::StandbyCmdName(s.c.kind)
                   : s.c.kind >= rec::kFirstRecoveryKind  ? rec::RecCmdName(s.c.kind)
                                                          : mig::CmdName(s.c.kind)));
    }
    sent.clear();
    return v;
  }
};

// Children the engine "spawned": pids from 500 on; on a host with a node agent (`agents`), handles from kRemoteChild
// + 500 on, whose agent reports pid 700 + the same number.
class FakeLauncher final : public JoinerLauncher {
 public:
  struct State {
    std::vector<Spec> started;
    std::set<pid_t> exited, stopped;
    bool fail = false;
    std::set<std::string> agents;  // hosts other than this one with a node agent
    std::set<std::string> refuse;  // of those, the ones whose node agent cannot be asked (Start fails)
  };
  explicit FakeLauncher(State* s) : s_(s) {}
  pid_t Start(const Spec& spec, std::string* log, std::string* err) override {
    if (s_->fail || s_->refuse.count(spec.host)) {
      *err = "no such program";
      return 0;
    }
    s_->started.push_back(spec);
    *log = spec.log;
    const pid_t n = static_cast<pid_t>(499 + s_->started.size());
    return s_->agents.count(spec.host) ? kRemoteChild + n : n;
  }
  bool CanStartOn(const std::string& host) override {
    return JoinerLauncher::CanStartOn(host) || s_->agents.count(host) > 0;
  }
  bool IsChild(pid_t started, const std::string& host, uint32_t pid) override {
    if (started < kRemoteChild) return JoinerLauncher::IsChild(started, host, pid);
    return s_->agents.count(host) && pid == static_cast<uint32_t>(started - kRemoteChild + 200);
  }
  bool Exited(pid_t pid, std::string* how) override {
    if (!s_->exited.count(pid)) return false;
    *how = "status 3";
    return true;
  }
  void Stop(pid_t pid) override { s_->stopped.insert(pid); }

 private:
  State* s_;
};

constexpr uint64_t kWorld = 0xA0;  // every rank's communicator

// A job: `n` workers (process id = rank + 1) in one communicator, each at step 10 with one 64-byte region.
struct Job {
  FakeHost h;
  FakeLauncher::State launched;
  std::unique_ptr<Engine> e;
  uint64_t next_mig = 1;

  explicit Job(int n, MigrationDeadlines d = {}) : e(MakeMigrationEngine(std::make_unique<FakeLauncher>(&launched), d)) {
    CommRec c;
    c.key = kWorld;
    c.nranks = n;
    c.lineage.kind = static_cast<uint8_t>(LineageKind::kInitRank);
    for (int r = 0; r < n; ++r) {
      ProcessRec p = Proc(static_cast<uint64_t>(r) + 1, "worker", r, -1);
      p.comms = {kWorld};
      p.comm_info[kWorld] = Comm(kWorld, r, n);
      h.procs[p.id] = p;
      c.members[r] = p.id;
    }
    h.comm_recs[kWorld] = c;
  }
  static ProcessRec Proc(uint64_t id, const std::string& role, int32_t rank, int32_t replace) {
    ProcessRec p;
    p.id = id;
    p.info.role = role;
    p.info.rank = rank;
    p.info.replace = replace;
    p.info.host = "h";
    p.info.pid = static_cast<uint32_t>(1000 + id);
    p.info.cmdline = {"train", "--steps", "9"};
    p.info.cwd = "/job";
    p.info.env = {"A=1", "TRAINMOVER_ROLE=worker"};
    p.step = 10;
    p.regions = {Region{"w", 64}};
    return p;
  }
  static CommCreated Comm(uint64_t key, int32_t rank, int32_t nranks) {
    CommCreated c;
    c.comm_key = key;
    c.lineage.kind = static_cast<uint8_t>(LineageKind::kInitRank);
    c.rank = rank;
    c.nranks = nranks;
    return c;
  }

  // What Coordinator::OnMigrate does: record, validate, open "requested", hand over.
  Migration& Request(std::vector<int32_t> ranks, bool spawn = false, const std::string& to_host = "") {
    Migration m;
    m.id = next_mig++;
    m.rank = ranks.front();
    m.ranks = ranks;
    m.spawn = spawn;
    m.host = to_host;
    Migration& rec = h.migs[m.id] = m;
    std::string refuse = e->Validate(h, rec);
    if (!refuse.empty()) {
      h.SetMigState(rec, MigState::kRefused, refuse);
      return rec;
    }
    h.BeginPhase(rec, 0, "requested");
    e->OnRequest(h, rec);
    return rec;
  }
  // A joiner for `rank` registers (process id 100 + rank).
  uint64_t AddJoiner(int32_t rank) {
    ProcessRec p = Proc(100 + static_cast<uint64_t>(rank), "joiner", -1, rank);
    h.procs[p.id] = p;
    return p.id;
  }
  template <typename B>
  void Send(uint64_t from, mig::Ev kind, uint64_t migration, const B& body) {
    Event ev;
    ev.kind = static_cast<uint16_t>(kind);
    ev.migration = migration;
    ev.body = EncodePayload(body);
    e->OnEvent(h, from, ev);
  }
  // The joiner's READY as it would be for a rank of this job (same communicator, same region).
  void Ready(uint64_t joiner, int32_t rank, std::vector<Region> regions = {Region{"w", 64}}) {
    mig::Ready r;
    r.comms = {Comm(0xB0 + static_cast<uint64_t>(rank), rank, h.comm_recs[kWorld].nranks)};
    r.regions = std::move(regions);
    r.step = 3;
    Send(joiner, mig::Ev::kReady, 0, r);
  }
  void Lose(uint64_t p, ProcState how = ProcState::kLost) {
    h.procs[p].state = how;
    e->OnProcessLost(h, p);
  }

  // Drives migration `m` of `rank` (leaver rank+1, joiner 100+rank) up to a state; each stage's exact
  // commands are checked by its own test case.
  void ToBuilding(Migration&, int32_t rank) {
    Ready(AddJoiner(rank), rank);
    h.Take();
  }
  void ToAgreeing(Migration& m, int32_t rank) {
    ToBuilding(m, rank);
    mig::Ids ids;
    ids.ids.push_back(mig::IdEntry{kWorld, {}});
    Send(100 + static_cast<uint64_t>(rank), mig::Ev::kIds, m.id, ids);
    for (auto& [r, p] : h.comm_recs[kWorld].members) {
      uint64_t who = p == static_cast<uint64_t>(rank) + 1 ? 100 + static_cast<uint64_t>(rank) : p;
      Send(who, mig::Ev::kBuilt, m.id, mig::Built{kWorld, 1, ""});
    }
    Send(static_cast<uint64_t>(rank) + 1, mig::Ev::kExposed, m.id, mig::Blob{{1, 2, 3}});
    Send(100 + static_cast<uint64_t>(rank), mig::Ev::kPrepared, m.id, mig::Reason{"cma"});
    h.Take();
  }
  void ToSwitching(Migration& m, int32_t rank) {
    ToAgreeing(m, rank);
    for (auto& [r, p] : h.comm_recs[kWorld].members) Send(p, mig::Ev::kAccept, m.id, mig::Step{12});
    h.Take();
  }
  // Every member at S, the joiner verified: SWITCH sent (a job of 3, rank 1 moved).
  void ToSwitchSent(Migration& m) {
    ToSwitching(m, 1);
    for (uint64_t p : {1, 2, 3}) Send(p, mig::Ev::kAtStep, m.id, mig::Step{12});
    Send(101, mig::Ev::kVerified, m.id, mig::Built{0, 1, ""});
    REQUIRE(m.switch_sent);
    h.Take();
  }
};

std::vector<std::string> V(std::initializer_list<const char*> l) {
  return std::vector<std::string>(l.begin(), l.end());
}

}  // namespace

TEST_CASE("validate: refusals before anything is touched") {
  Job j(3);
  SUBCASE("unknown rank") {
    Migration& m = j.Request({7});
    CHECK(m.state == MigState::kRefused);
    CHECK(m.reason == "no alive worker holds rank 7 (see tmctl status)");
  }
  SUBCASE("never reached a safe point") {
    j.h.procs[2].step = -1;
    CHECK(j.Request({1}).reason == "rank 1 never called tmSafePoint: it cannot be migrated");
  }
  SUBCASE("a rank named twice") { CHECK(j.Request({1, 2, 1}).reason == "rank 1 is named twice"); }
  SUBCASE("another migration active") {
    j.Request({1});
    j.h.Take();
    Migration& m = j.Request({2});
    CHECK(m.state == MigState::kRefused);
    CHECK(m.reason == "migration 1 is still sandbox");
  }
  SUBCASE("in no communicator") {
    j.h.procs[2].comm_info.clear();
    CHECK(j.Request({1}).reason == "rank 1 is in no communicator");
  }
  SUBCASE("a communicator captured into a CUDA graph") {
    j.Send(3, mig::Ev::kCaptured, 0, mig::KeyList{{kWorld}});
    Migration& m = j.Request({1});
    CHECK(m.state == MigState::kRefused);
    CHECK(m.reason.find("00000000000000a0 was captured into a CUDA graph") != std::string::npos);
  }
  CHECK(j.h.Take().empty());
  CHECK(j.launched.started.empty());
}

TEST_CASE("validate: a process holding several ranks is refused, saying why") {
  Job j(3);
  SUBCASE("ncclCommInitAll") {
    CommCreated all = Job::Comm(0xE0, 0, 2);
    all.lineage.kind = static_cast<uint8_t>(LineageKind::kInitAll);
    j.h.procs[2].comm_info[0xE0] = all;
    Migration& m = j.Request({1});
    CHECK(m.state == MigState::kRefused);
    CHECK(m.reason ==
          "rank 1: its process holds 2 ranks (ncclCommInitAll); a process with several ranks cannot be migrated");
  }
  SUBCASE("two ranks of one communicator in one process") {
    j.h.comm_recs[kWorld].members[2] = 2;  // process 2 (rank 1) holds rank 2 too
    Migration& m = j.Request({1});
    CHECK(m.state == MigState::kRefused);
    CHECK(m.reason ==
          "rank 1: its process holds 2 ranks of one communicator; a process with several ranks cannot be migrated");
  }
  CHECK(j.h.Take().empty());  // nothing was sent to anyone
}

TEST_CASE("request: sandbox, the leaver records its tape") {
  Job j(3);
  Migration& m = j.Request({1});
  CHECK(m.state == MigState::kSandbox);
  CHECK(j.h.states == std::vector<MigState>{MigState::kSandbox});
  CHECK(j.h.Take() == V({"2:RECORD_TAPE"}));
  CHECK_FALSE(j.h.PhaseOpen(m, "requested"));
  CHECK(j.h.PhaseOpen(m, "sandbox"));
}

TEST_CASE("spawn: the joiner gets the leaver's command, cwd and environment") {
  Job j(2);
  Migration& m = j.Request({1}, /*spawn=*/true);
  CHECK(j.h.states == std::vector<MigState>{MigState::kSpawning, MigState::kSandbox});
  REQUIRE(j.launched.started.size() == 1);
  const JoinerLauncher::Spec& s = j.launched.started[0];
  CHECK(s.argv == std::vector<std::string>{"train", "--steps", "9"});
  CHECK(s.dir == "/job");
  CHECK(s.env == std::vector<std::string>{"A=1", "TRAINMOVER_ROLE=joiner", "TRAINMOVER_REPLACE=1"});
  CHECK(s.log == "/job/joiner-1.log");
  CHECK(s.log_if_exists == "/job/joiner-1-m1.log");
  CHECK(m.joiner_log == "/job/joiner-1.log");
  SUBCASE("the child exits before it is ready: failed") {
    j.h.Take();
    j.launched.exited.insert(500);
    j.e->OnTick(j.h);
    CHECK(m.state == MigState::kFailed);
    CHECK(m.reason == "the spawned joiner of rank 1 exited (status 3) before it was ready; see /job/joiner-1.log");
    CHECK(j.h.Take() == V({"1:ABORT", "2:ABORT"}));
  }
  SUBCASE("the child registers as a worker: failed, the child stopped") {
    j.h.Take();
    ProcessRec p = Job::Proc(50, "worker", 5, -1);
    p.info.pid = 500;
    j.h.procs[50] = p;
    j.e->OnTick(j.h);
    CHECK(m.state == MigState::kFailed);
    CHECK(m.reason.find("registered as a worker, not as a joiner") != std::string::npos);
    CHECK(j.launched.stopped == std::set<pid_t>{500});
  }
}

// A joiner spawned through a node agent is known by the pid its agent reported (JoinerLauncher::IsChild), not by the
// engine's handle (kRemoteChild + n): one that registered with another role went unnoticed until the phase deadline.
TEST_CASE("spawn through a node agent: the child registers as a worker: failed, the child stopped") {
  Job j(2);
  j.launched.agents = {"b"};
  Migration& m = j.Request({1}, true, "b");
  REQUIRE(m.state != MigState::kRefused);
  REQUIRE(j.launched.started.size() == 1);
  CHECK(j.launched.started[0].host == "b");
  j.h.Take();
  ProcessRec p = Job::Proc(50, "worker", 5, -1);
  p.info.host = "b";
  p.info.pid = 700;  // what host b's node agent reported for handle kRemoteChild + 500
  j.h.procs[50] = p;
  j.e->OnTick(j.h);
  CHECK(m.state == MigState::kFailed);
  CHECK(m.reason.find("registered as a worker, not as a joiner") != std::string::npos);
  CHECK(j.launched.stopped == std::set<pid_t>{kRemoteChild + 500});
}

TEST_CASE("spawn fails: failed at once") {
  Job j(2);
  j.launched.fail = true;
  Migration& m = j.Request({0}, true);
  CHECK(m.state == MigState::kFailed);
  CHECK(m.reason == "cannot spawn the joiner of rank 0: no such program");
  CHECK(j.h.Take() == V({"2:ABORT", "1:ABORT"}));
}

TEST_CASE("ready: a matching joiner starts phase 1 (MAP, EXPOSE, MAKE_IDS)") {
  Job j(3);
  Migration& m = j.Request({1});
  j.h.Take();
  uint64_t jid = j.AddJoiner(1);
  j.Ready(jid, 1);
  CHECK(m.state == MigState::kBuilding);
  CHECK(m.joiner == jid);
  CHECK(j.h.states == std::vector<MigState>{MigState::kSandbox, MigState::kReady, MigState::kBuilding});
  CHECK(j.h.Take() == V({"101:MAP", "2:EXPOSE", "101:MAKE_IDS"}));
  CHECK_FALSE(j.h.PhaseOpen(m, "sandbox"));
  CHECK(j.h.PhaseOpen(m, "build"));
}

// tmctl migrate --to H without --spawn: the operator starts the joiner; one that registered elsewhere is told to exit
// and the migration goes on waiting for one on H.
TEST_CASE("ready: --to H, a joiner on another host told to exit, the one on H matched") {
  Job j(3);
  Migration& m = j.Request({1}, false, "b");
  j.h.Take();
  const uint64_t wrong = j.AddJoiner(1);  // on host "h", the job's
  j.Ready(wrong, 1);
  CHECK(m.state == MigState::kSandbox);
  CHECK(m.joiner == 0);
  CHECK(j.h.Take() == V({"101:ABORT"}));
  j.Lose(wrong, ProcState::kExited);  // it ends as told: no loss to the migration
  CHECK(m.state == MigState::kSandbox);
  j.h.procs.erase(wrong);
  const uint64_t right = j.AddJoiner(1);
  j.h.procs[right].info.host = "b";
  j.Ready(right, 1);
  CHECK(m.state == MigState::kBuilding);
  CHECK(m.joiner == right);
  CHECK(j.h.Take() == V({"101:MAP", "2:EXPOSE", "101:MAKE_IDS"}));
}

TEST_CASE("--to H: a joiner on another host that ends before its READY is no loss to the migration") {
  Job j(3);
  Migration& m = j.Request({1}, false, "b");
  j.h.Take();
  j.Lose(j.AddJoiner(1), ProcState::kExited);  // on host "h"
  CHECK(m.state == MigState::kSandbox);
  j.h.procs.erase(101);
  const uint64_t right = j.AddJoiner(1);
  j.h.procs[right].info.host = "b";
  j.Lose(right, ProcState::kExited);  // the one on H is the migration's joiner: its end fails it
  CHECK(m.state == MigState::kFailed);
}

TEST_CASE("ready: mismatch refused, the joiner told to exit") {
  Job j(3);
  Migration& m = j.Request({1});
  j.h.Take();
  uint64_t jid = j.AddJoiner(1);
  SUBCASE("state table") {
    j.Ready(jid, 1, {Region{"w", 32}});
    CHECK(m.reason ==
          "the joiner of rank 1 does not match the leaver: state region 'w': 32 bytes in the joiner, 64 in the leaver");
  }
  SUBCASE("communicators") {
    mig::Ready r;
    j.Send(jid, mig::Ev::kReady, 0, r);
    CHECK(m.reason == "the joiner of rank 1 does not match the leaver: the joiner has 0 communicator(s), the leaver 1");
  }
  CHECK(m.state == MigState::kRefused);
  CHECK(j.h.Take() == V({"101:ABORT", "1:ABORT", "3:ABORT", "2:ABORT"}));
}

// The leaver (rank 1 of 4) also holds a split child of 2 ranks (its rank 0 there), made non-blocking.
TEST_CASE("ready: a split child's size, rank and blocking are compared like every communicator's") {
  Job j(4);
  const uint64_t kChild = 0xC1;
  CommCreated child = Job::Comm(kChild, 0, 2);
  child.lineage.kind = static_cast<uint8_t>(LineageKind::kSplit);
  child.lineage.index = 1;
  child.lineage.parent_key = kWorld;
  child.lineage.color = 1;
  child.blocking = 0;
  j.h.procs[2].comm_info[kChild] = child;
  j.h.procs[2].comms.push_back(kChild);
  Migration& m = j.Request({1});
  j.h.Take();
  uint64_t jid = j.AddJoiner(1);
  mig::Ready r;
  r.comms = {Job::Comm(0xB1, 1, 4), child};
  r.comms[1].comm_key = 0xD1;
  r.comms[1].lineage.parent_key = 0xB1;  // the joiner's own world key, mapped to the leaver's
  r.regions = {Region{"w", 64}};
  SUBCASE("same: matched") {
    j.Send(jid, mig::Ev::kReady, 0, r);
    CHECK(m.state == MigState::kBuilding);
  }
  SUBCASE("sized as its parent (a sandbox without the leaver's table): refused") {
    r.comms[1].nranks = 4;
    r.comms[1].rank = 1;
    j.Send(jid, mig::Ev::kReady, 0, r);
    CHECK(m.state == MigState::kRefused);
    CHECK(m.reason ==
          "the joiner of rank 1 does not match the leaver: communicator 1: joiner Split #1 rank 1/4 color 1 key 0 "
          "non-blocking, leaver Split #1 rank 0/2 color 1 key 0 non-blocking");
  }
  SUBCASE("blocking where the leaver's is not: refused") {
    r.comms[1].blocking = 1;
    j.Send(jid, mig::Ev::kReady, 0, r);
    CHECK(m.state == MigState::kRefused);
    CHECK(m.reason.find("joiner Split #1 rank 0/2 color 1 key 0, leaver Split #1 rank 0/2 color 1 key 0 non-blocking") !=
          std::string::npos);
  }
}

TEST_CASE("ready: an unexpected joiner is told to exit, the migration untouched") {
  Job j(3);
  Migration& m = j.Request({1});
  j.h.Take();
  j.Ready(j.AddJoiner(2), 2);
  CHECK(j.h.Take() == V({"102:ABORT"}));
  CHECK(m.state == MigState::kSandbox);
}

TEST_CASE("ids: BUILD to every member, the leaver's place to the joiner") {
  Job j(3);
  Migration& m = j.Request({1});
  j.ToBuilding(m, 1);
  mig::Ids ids;
  ids.ids.push_back(mig::IdEntry{kWorld, {}});
  j.Send(101, mig::Ev::kIds, m.id, ids);
  REQUIRE(j.h.sent.size() == 3);
  mig::Build b;
  REQUIRE(DecodePayload(j.h.sent[2].c.body, &b));
  CHECK(j.h.sent[2].to == 101);
  CHECK(b.entries.size() == 1);
  CHECK(b.entries[0].rank == 1);
  CHECK(b.entries[0].nranks == 3);
  CHECK(j.h.Take() == V({"1:BUILD", "3:BUILD", "101:BUILD"}));
  SUBCASE("a communicator disappeared: failed") {
    ids.ids[0].comm_key = 0xDEAD;
    j.Send(101, mig::Ev::kIds, m.id, ids);
    CHECK(m.state == MigState::kFailed);
    CHECK(m.reason == "a communicator of the leaver disappeared");
  }
}

TEST_CASE("built, exposed and prepared: PREPARE on EXPOSED, agreement starts with a proposal of max step + 2") {
  Job j(3);
  Migration& m = j.Request({1});
  j.ToBuilding(m, 1);
  mig::Ids ids;
  ids.ids.push_back(mig::IdEntry{kWorld, {}});
  j.Send(101, mig::Ev::kIds, m.id, ids);
  j.h.Take();
  for (uint64_t p : {1, 3, 101}) j.Send(p, mig::Ev::kBuilt, m.id, mig::Built{kWorld, 1, ""});
  CHECK(m.state == MigState::kBuilding);  // the leaver has not exposed yet
  CHECK(j.h.Take().empty());
  j.Send(101, mig::Ev::kPrepared, m.id, mig::Reason{"early"});  // before PREPARE: ignored
  j.Send(2, mig::Ev::kExposed, m.id, mig::Blob{{9}});
  CHECK(m.state == MigState::kBuilding);  // the joiner has not connected yet
  CHECK(m.bytes_total == 64);
  REQUIRE(j.h.sent.size() == 1);
  mig::Prepare d;
  REQUIRE(DecodePayload(j.h.sent[0].c.body, &d));
  CHECK(d.descriptor == std::vector<uint8_t>{9});  // the leaver's descriptor, as it sent it
  CHECK(d.leaver_pid == 1002);                      // and the pid it registered with
  CHECK(j.h.Take() == V({"101:PREPARE"}));
  j.Send(3, mig::Ev::kPrepared, m.id, mig::Reason{"cma"});  // not a joiner: ignored
  CHECK(m.state == MigState::kBuilding);
  j.Send(101, mig::Ev::kPrepared, m.id, mig::Reason{"cma"});
  CHECK(m.state == MigState::kAgreeing);
  REQUIRE(j.h.sent.size() == 3);
  mig::Step s;
  REQUIRE(DecodePayload(j.h.sent[0].c.body, &s));
  CHECK(s.step == 12);  // the largest step (10) + margin 2
  CHECK(j.h.Take() == V({"1:PROPOSE", "3:PROPOSE", "2:PROPOSE"}));
  CHECK(j.h.PhaseOpen(m, "propose step 12"));
}

TEST_CASE("prepare failed: the joiner's FAILED aborts before the agreement") {
  Job j(3);
  Migration& m = j.Request({1});
  j.ToBuilding(m, 1);
  j.Send(2, mig::Ev::kExposed, m.id, mig::Blob{{9}});
  j.h.Take();
  j.Send(101, mig::Ev::kFailed, m.id, mig::Reason{"joiner cannot connect to the leaver's state: x"});
  CHECK(m.state == MigState::kFailed);
  CHECK(j.h.Take() == V({"1:ABORT", "3:ABORT", "2:ABORT", "101:ABORT"}));
}

TEST_CASE("built(false): failed, ABORT to everyone") {
  Job j(3);
  Migration& m = j.Request({1});
  j.ToBuilding(m, 1);
  j.Send(3, mig::Ev::kBuilt, m.id, mig::Built{kWorld, 0, "init failed"});
  CHECK(m.state == MigState::kFailed);
  CHECK(m.reason == "building a replacement communicator failed: init failed");
  CHECK(j.h.Take() == V({"1:ABORT", "3:ABORT", "2:ABORT", "101:ABORT"}));
}

TEST_CASE("agreement: PASSED re-proposes with a doubled margin; all ACCEPT commits") {
  Job j(3);
  Migration& m = j.Request({1});
  j.ToAgreeing(m, 1);
  j.Send(1, mig::Ev::kAccept, m.id, mig::Step{12});
  j.Send(3, mig::Ev::kPassed, m.id, mig::Step{15});
  CHECK(j.h.Take() == V({"1:PROPOSE", "3:PROPOSE", "2:PROPOSE"}));
  CHECK_FALSE(j.h.PhaseOpen(m, "propose step 12"));
  CHECK(j.h.PhaseOpen(m, "propose step 19"));        // max(15, 12) + 4
  j.Send(1, mig::Ev::kAccept, m.id, mig::Step{12});  // an answer to the old proposal: ignored
  for (uint64_t p : {1, 2}) j.Send(p, mig::Ev::kAccept, m.id, mig::Step{19});
  CHECK(m.state == MigState::kAgreeing);
  j.Send(3, mig::Ev::kAccept, m.id, mig::Step{19});
  CHECK(m.state == MigState::kSwitching);
  CHECK(m.switch_step == 19);
  CHECK(j.h.Take() == V({"1:COMMIT", "3:COMMIT", "2:COMMIT"}));
  CHECK(j.h.PhaseOpen(m, "switch"));
  CHECK_FALSE(j.h.PhaseOpen(m, "agree"));
}

// The fault matrix's knob for its agreeing cells (TRAINMOVER_FAULT=slow-commit): every ACCEPT in, COMMIT only once
// the delay passed, the migration agreeing until then.
TEST_CASE("agreement: a delayed COMMIT (slow-commit) goes on the first tick after the delay") {
  MigrationDeadlines d;
  d.commit_delay_ms = 200;
  Job j(3, d);
  Migration& m = j.Request({1});
  j.ToAgreeing(m, 1);
  for (uint64_t p : {1, 2, 3}) j.Send(p, mig::Ev::kAccept, m.id, mig::Step{12});
  j.e->OnTick(j.h);
  CHECK(m.state == MigState::kAgreeing);
  CHECK(j.h.Take().empty());
  std::this_thread::sleep_for(std::chrono::milliseconds(250));
  j.e->OnTick(j.h);
  CHECK(m.state == MigState::kSwitching);
  CHECK(m.switch_step == 12);
  CHECK(j.h.Take() == V({"1:COMMIT", "3:COMMIT", "2:COMMIT"}));
}

TEST_CASE("switch: READ on the leaver's AT_STEP, SWITCH once verified and all at S, done when switched") {
  Job j(3);
  Migration& m = j.Request({1});
  j.ToSwitching(m, 1);
  REQUIRE(m.switch_step == 12);
  j.Send(1, mig::Ev::kAtStep, m.id, mig::Step{12});
  CHECK(j.h.Take().empty());  // a stayer at S: nothing to read yet
  j.Send(2, mig::Ev::kAtStep, m.id, mig::Step{12});
  REQUIRE(j.h.sent.size() == 1);
  mig::Step at;
  REQUIRE(DecodePayload(j.h.sent[0].c.body, &at));
  CHECK(at.step == 12);
  CHECK(j.h.Take() == V({"101:READ"}));
  j.Send(2, mig::Ev::kAtStep, m.id, mig::Step{12});  // a repeated AT_STEP reads nothing twice
  CHECK(j.h.Take().empty());
  j.Send(1, mig::Ev::kAtStep, m.id, mig::Step{12});
  j.Send(101, mig::Ev::kProgress, m.id, mig::Progress{32, 64});
  CHECK(m.bytes_done == 32);
  j.Send(101, mig::Ev::kVerified, m.id, mig::Built{0, 1, "64 bytes"});
  CHECK(m.bytes_done == 64);
  CHECK(j.h.Take().empty());  // rank 2 is not at S yet
  j.Send(3, mig::Ev::kAtStep, m.id, mig::Step{12});
  CHECK(j.h.Take() == V({"1:SWITCH", "3:SWITCH", "101:SWITCH", "2:SWITCH"}));
  SUBCASE("a FAILED after the switch is ignored") {
    j.Send(1, mig::Ev::kFailed, m.id, mig::Reason{"late"});
    CHECK(m.state == MigState::kSwitching);
  }
  j.Send(101, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});
  j.Send(1, mig::Ev::kSwitched, m.id, mig::Switched{12, 5000000, 1000});
  j.Lose(2, ProcState::kExited);  // the leaver's BYE
  CHECK(m.state == MigState::kSwitching);
  j.Send(3, mig::Ev::kSwitched, m.id, mig::Switched{12, 7000000, 1000});
  CHECK(m.state == MigState::kDone);
  CHECK(m.downtime_ns == 7000000);
  CHECK(j.h.procs[101].info.role == "worker");
  CHECK(j.h.procs[101].info.replace == -1);
  CHECK(j.h.procs[101].info.rank == 1);  // the leaver's rank, whatever its first communicator says
  CHECK_FALSE(j.h.PhaseOpen(m, "switch"));
}

TEST_CASE("switch: a stayer that exits at S counts as switched") {
  Job j(3);
  Migration& m = j.Request({1});
  j.ToSwitching(m, 1);
  for (uint64_t p : {1, 2, 3}) j.Send(p, mig::Ev::kAtStep, m.id, mig::Step{12});
  j.Send(101, mig::Ev::kVerified, m.id, mig::Built{0, 1, ""});
  j.Send(101, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});
  j.Send(1, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});
  j.Lose(3, ProcState::kExited);
  CHECK(m.state == MigState::kDone);
}

TEST_CASE("verified(false): checksum failure fails the migration") {
  Job j(3);
  Migration& m = j.Request({1});
  j.ToSwitching(m, 1);
  j.Send(2, mig::Ev::kAtStep, m.id, mig::Step{12});
  j.h.Take();
  j.Send(101, mig::Ev::kVerified, m.id, mig::Built{0, 0, "checksum mismatch in 'w'"});
  CHECK(m.state == MigState::kFailed);
  CHECK(m.reason == "state transfer failed: checksum mismatch in 'w'");
  CHECK(j.h.Take() == V({"1:ABORT", "3:ABORT", "2:ABORT", "101:ABORT"}));
  CHECK(m.phases.back().end_ns != 0);
}

TEST_CASE("a process lost before the switch fails the migration, in every state") {
  Job j(3);
  Migration& m = j.Request({1});
  std::string who;
  uint64_t lost = 0;
  SUBCASE("joiner candidate in the sandbox") {
    lost = j.AddJoiner(1);
    who = "process 101 (rank -1) was lost before the switch";
  }
  SUBCASE("joiner while building") {
    j.ToBuilding(m, 1);
    lost = 101;
    who = "process 101 (rank -1) was lost before the switch";
  }
  SUBCASE("leaver while agreeing") {
    j.ToAgreeing(m, 1);
    lost = 2;
    who = "process 2 (rank 1) was lost before the switch";
  }
  SUBCASE("stayer while switching") {
    j.ToSwitching(m, 1);
    lost = 3;
    who = "process 3 (rank 2) was lost before the switch";
  }
  j.h.Take();
  j.Lose(lost);
  CHECK(m.state == MigState::kFailed);
  CHECK(m.reason == who);
  std::vector<std::string> sent = j.h.Take();
  CHECK(std::find(sent.begin(), sent.end(), std::to_string(lost) + ":ABORT") == sent.end());  // gone: not sent
  CHECK(sent.size() >= 2);
}

TEST_CASE("a process of another job lost: nothing happens") {
  Job j(3);
  Migration& m = j.Request({1});
  j.h.procs[70] = Job::Proc(70, "worker", 9, -1);
  j.h.Take();
  j.Lose(70);
  CHECK(m.state == MigState::kSandbox);
  CHECK(j.h.Take().empty());
}

TEST_CASE("cancel in each state before switching: ABORT to everyone involved") {
  Job j(3);
  Migration& m = j.Request({1});
  std::vector<std::string> expect = V({"1:ABORT", "3:ABORT", "2:ABORT"});
  SUBCASE("sandbox") {}
  SUBCASE("building") {
    j.ToBuilding(m, 1);
    expect.push_back("101:ABORT");
  }
  SUBCASE("agreeing") {
    j.ToAgreeing(m, 1);
    expect.push_back("101:ABORT");
  }
  SUBCASE("switching, held at S, SWITCH not sent yet") {
    j.ToSwitching(m, 1);
    for (uint64_t p : {1, 2, 3}) j.Send(p, mig::Ev::kAtStep, m.id, mig::Step{12});
    CHECK_FALSE(m.switch_sent);
    expect.push_back("101:ABORT");
  }
  j.h.Take();
  j.e->OnCancel(j.h, m);
  CHECK(j.h.Take() == expect);
  CHECK_FALSE(MigTerminal(m.state));  // the coordinator marks it cancelled
  for (const PhaseSpan& p : m.phases) CHECK(p.end_ns != 0);
}

// docs/reliability.md: every deadline of the engine, and the outcome repeated to a process that comes back.
TEST_CASE("deadlines: a phase that outlasts its deadline is aborted, training undisturbed") {
  Job j(3, MigrationDeadlines{60, 60});
  Migration& m = j.Request({1});
  std::string phase;
  SUBCASE("sandbox (no joiner came)") { phase = "sandbox"; }
  SUBCASE("building") {
    j.ToBuilding(m, 1);
    phase = "building";
  }
  SUBCASE("agreeing") {
    j.ToAgreeing(m, 1);
    phase = "agreeing";
  }
  j.h.Take();
  j.e->OnTick(j.h);  // the deadline runs from here
  CHECK_FALSE(MigTerminal(m.state));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  j.e->OnTick(j.h);
  CHECK(m.state == MigState::kFailed);
  CHECK(m.reason == "the " + phase + " phase exceeded its deadline of 60 ms (TRAINMOVER_PHASE_TIMEOUT_MS)");
  std::vector<std::string> sent = j.h.Take();
  for (const char* who : {"1:ABORT", "2:ABORT", "3:ABORT"}) CHECK(std::count(sent.begin(), sent.end(), who) == 1);
}

TEST_CASE("deadlines: past half the hold timeout after COMMIT, SWITCH is never sent; the migration is aborted") {
  Job j(3, MigrationDeadlines{600000, 60});
  Migration& m = j.Request({1});
  j.ToSwitching(m, 1);
  j.e->OnTick(j.h);
  for (uint64_t p : {1, 3}) j.Send(p, mig::Ev::kAtStep, m.id, mig::Step{12});
  j.Send(101, mig::Ev::kVerified, m.id, mig::Built{0, 1, ""});
  j.h.Take();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  j.Send(2, mig::Ev::kAtStep, m.id, mig::Step{12});  // the last AT_STEP comes too late (a frozen coordinator)
  CHECK(j.h.Take() == V({"1:ABORT", "3:ABORT", "2:ABORT", "101:ABORT"}));
  CHECK(m.state == MigState::kFailed);
  CHECK_FALSE(m.switch_sent);
  CHECK(m.reason == "the switching phase exceeded its deadline of 60 ms (TRAINMOVER_HOLD_TIMEOUT_MS / 2)");
}

// docs/reliability.md, "The commit point": a member that has not said it switched by the confirmation deadline while a
// stayer did is out of step (it holds a place in the replacements that it does not fill): declared failed, for the
// failure recovery; a leaver still there did not leave: told to end.
TEST_CASE("deadlines: SWITCH sent but not every member confirms: done, the silent ones out of step") {
  Job j(3, MigrationDeadlines{600000, 60});
  Migration& m = j.Request({1});
  j.ToSwitchSent(m);
  j.Send(101, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});
  j.Send(1, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});
  j.e->OnTick(j.h);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  j.e->OnTick(j.h);
  CHECK(m.state == MigState::kDone);
  CHECK(m.reason == "SWITCH sent; process(es) 3 never confirmed it within 60 ms; out of step: process(es) 3 declared "
                    "failed (failure recovery); out of step: leaver process(es) 2 told to end");
  CHECK(j.h.declared == std::vector<uint64_t>{3});
  CHECK(j.h.procs[3].lost_reason ==
        std::string(kOutOfStep) + "1: it did not confirm the switch within TRAINMOVER_HOLD_TIMEOUT_MS / 2 while the "
                                  "others switched");
  CHECK(j.h.Take() == V({"2:FENCED"}));
  CHECK(j.h.procs[2].fenced);
}

TEST_CASE("deadlines: SWITCH sent and no stayer switched by the deadline: nobody is out of step") {
  Job j(3, MigrationDeadlines{60, 60});
  Migration& m = j.Request({1});
  j.ToSwitchSent(m);
  j.Send(101, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});  // the joiner alone
  j.e->OnTick(j.h);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // past the wait for their word (4 x 60 ms)
  j.e->OnTick(j.h);
  CHECK(m.state == MigState::kDone);
  CHECK(j.h.declared.empty());
  CHECK(j.h.Take().empty());
}

TEST_CASE("the commit point: a stayer's swapped communicators prove the switch took effect; a silent one is out of step") {
  Job j(3, MigrationDeadlines{600000, 60});
  Migration& m = j.Request({1});
  j.ToSwitchSent(m);
  // Stayer 1 swapped, but its SWITCHED (at its next safe point) waits for its first collective on the replacements,
  // which the silent stayer 3 holds up; the joiner switched in; the leaver left.
  j.Send(101, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});
  j.Send(1, mig::Ev::kPhase, m.id, mig::Phase{"swap comms", 1, 2});
  j.Lose(2, ProcState::kExited);
  j.e->OnTick(j.h);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  j.e->OnTick(j.h);
  CHECK(m.state == MigState::kDone);
  CHECK(j.h.declared == std::vector<uint64_t>{3});
  CHECK(j.h.Take().empty());  // the leaver left: nobody told to end
  // The joiner holds the leaver's place from SWITCH on, reported or not: a recovery of its rank fences it.
  CHECK(j.h.comm_recs[kWorld].members[1] == 101);
  CHECK(j.h.procs[101].comm_info.count(kWorld) == 1);
  j.h.procs[3].state = ProcState::kAlive;  // it comes back (the recovery fenced it): never told to switch
  j.h.procs[3].fenced = true;
  j.e->OnProcessBack(j.h, 3);
  CHECK(j.h.Take().empty());
}

TEST_CASE("the commit point: a leaver that abandoned after the switch is told to end; its joiner holds the rank") {
  Job j(3, MigrationDeadlines{600000, 60});
  Migration& m = j.Request({1});
  j.ToSwitchSent(m);
  for (uint64_t p : {101, 1, 3}) j.Send(p, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});
  REQUIRE(m.state == MigState::kDone);
  CHECK(j.h.FindProcessByRank(1)->id == 2);  // the leaver has not left yet (it is about to, or it missed SWITCH)
  j.Send(2, mig::Ev::kFailed, m.id, mig::Reason{"no decision from the coordinator within 6000 ms"});
  CHECK(j.h.procs[2].fenced);
  CHECK(j.h.FindProcessByRank(1)->id == 101);
  const std::string line = "migration 1: this process (rank 1) did not leave with the switch (out of step); rank 1 is "
                           "its joiner's now: it ends without touching the job";
  REQUIRE(j.h.sent.size() == 1);
  rec::RecMsg f;
  REQUIRE(DecodePayload(j.h.sent[0].c.body, &f));
  CHECK(f.text == line);
  CHECK(j.h.Take() == V({"2:FENCED"}));
  CHECK(m.reason == "out of step: leaver process(es) 2 told to end");
  CHECK(j.h.declared.empty());  // its rank is not failed
  j.Send(2, mig::Ev::kFailed, m.id, mig::Reason{"again"});  // said twice: handled once
  CHECK(j.h.Take().empty());
  j.e->OnProcessBack(j.h, 2);  // back on a new connection: told again, never SWITCH
  CHECK(j.h.Take() == V({"2:FENCED"}));
}

TEST_CASE("the commit point: a process that comes back is told the outcome decided while it was away") {
  Job j(3);
  Migration& m = j.Request({1});
  j.ToSwitching(m, 1);
  for (uint64_t p : {1, 2, 3}) j.Send(p, mig::Ev::kAtStep, m.id, mig::Step{12});
  SUBCASE("SWITCH was sent: SWITCH again") {
    j.Send(101, mig::Ev::kVerified, m.id, mig::Built{0, 1, ""});
    j.h.Take();
    j.Lose(3);  // its connection dropped around SWITCH
    j.h.procs[3].state = ProcState::kAlive;
    j.e->OnProcessBack(j.h, 3);
    REQUIRE(j.h.sent.size() == 1);
    mig::Step s;
    REQUIRE(DecodePayload(j.h.sent[0].c.body, &s));
    CHECK(s.step == 12);
    CHECK(j.h.Take() == V({"3:SWITCH"}));
  }
  SUBCASE("lost before SWITCH: aborted, ABORT again") {
    j.h.Take();
    j.Lose(3);
    CHECK(m.state == MigState::kFailed);
    j.h.Take();
    j.h.procs[3].state = ProcState::kAlive;
    j.e->OnProcessBack(j.h, 3);
    CHECK(j.h.Take() == V({"3:ABORT"}));
  }
  j.h.procs[70] = Job::Proc(70, "worker", 9, -1);
  j.e->OnProcessBack(j.h, 70);  // not part of it: told nothing
  CHECK(j.h.Take().empty());
}

// building/coordinator/host of the fault matrix: the coordinator's host cut off right as it sent SWITCH. The joiner
// received it and switched in; the held processes did not, abandoned the migration at their hold deadline, and told
// the coordinator once back (their FAILED waits for the next connection). The coordinator used to mark the migration
// done at its confirmation deadline and repeat SWITCH: the joiner was left alone on its replacements, out of step.
TEST_CASE("the commit point: SWITCH that reached no held process; every one abandoned, the switch is undone") {
  Job j(3, MigrationDeadlines{600000, 60});
  Migration& m = j.Request({1});
  j.ToSwitching(m, 1);
  for (uint64_t p : {1, 2, 3}) j.Send(p, mig::Ev::kAtStep, m.id, mig::Step{12});
  CHECK(j.h.Take() == V({"101:READ"}));
  j.Send(101, mig::Ev::kVerified, m.id, mig::Built{0, 1, ""});
  REQUIRE(m.switch_sent);
  CHECK(j.h.Take() == V({"1:SWITCH", "3:SWITCH", "101:SWITCH", "2:SWITCH"}));
  j.Send(101, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});  // only the joiner got it
  j.e->OnTick(j.h);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  j.e->OnTick(j.h);  // past the confirmation deadline; no held process has said anything
  CHECK(m.state == MigState::kSwitching);
  for (uint64_t p : {1, 3, 2}) {  // each agent gave up on its silent connection: BYE "reconnect", then back
    j.h.procs[p].returning_by_ns = 1;
    j.Lose(p);
    CHECK(m.state == MigState::kSwitching);
    j.h.procs[p].state = ProcState::kAlive;
    j.h.procs[p].returning_by_ns = 0;
    j.e->OnProcessBack(j.h, p);
  }
  CHECK(j.h.Take() == V({"1:SWITCH", "3:SWITCH", "2:SWITCH"}));  // refused by each: it abandoned
  j.h.comm_recs[kWorld].members[1] = 101;  // the joiner switched in and reported the leaver's communicator
  SUBCASE("every held process abandoned: failed, the joiner told to end") {
    const std::string held_out = "no decision from the coordinator within 6000 ms at step 12 (TRAINMOVER_HOLD_TIMEOUT_MS)";
    for (uint64_t p : {1, 3}) {
      j.Send(p, mig::Ev::kFailed, m.id, mig::Reason{held_out});
      CHECK(m.state == MigState::kSwitching);
      CHECK(j.h.Take().empty());
    }
    j.Send(2, mig::Ev::kFailed, m.id, mig::Reason{held_out});
    CHECK(m.state == MigState::kFailed);
    CHECK(m.reason == "SWITCH reached none of the held processes before their hold deadline; every one abandoned the "
                      "migration, so the switch is undone (a joiner that switched in ends, the leaver keeps its rank)");
    CHECK(j.h.Take() == V({"1:ABORT", "3:ABORT", "2:ABORT", "101:ABORT"}));
    // The joiner had reported the leaver's communicator as its own when it switched in; the leaver's place again.
    CHECK(j.h.comm_recs[kWorld].members[1] == 2);
    j.h.procs[101].state = ProcState::kAlive;
    j.e->OnProcessBack(j.h, 101);  // one that was away hears ABORT, not SWITCH
    CHECK(j.h.Take() == V({"101:ABORT"}));
  }
  SUBCASE("one stayer switched, the other abandoned: done; the abandoned one is out of step, declared failed") {
    j.Send(1, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});
    j.Send(3, mig::Ev::kFailed, m.id, mig::Reason{"no decision"});
    CHECK(m.state == MigState::kDone);
    CHECK(m.reason == "SWITCH sent; process(es) 3 abandoned it at their hold deadline, out of step; out of step: "
                      "process(es) 3 declared failed (failure recovery)");
    CHECK(j.h.declared == std::vector<uint64_t>{3});
    CHECK(j.h.procs[3].lost_reason ==
          std::string(kOutOfStep) + "1: it abandoned the switch at its hold deadline while the others switched");
    CHECK(j.h.Take().empty());
    CHECK(j.h.comm_recs[kWorld].members[1] == 101);  // switched: the joiner's place
  }
}

// No stayers (a one-rank job, or every rank migrated): only the leaver's word tells a switch from a joiner switched in
// alone. The joiner's SWITCHED used to end the migration `done` at once; a leaver that heard no SWITCH abandoned at its
// hold deadline (its FAILED ignored: the migration had ended) and trained on beside its joiner.
TEST_CASE("the commit point: no stayers: done once the leaver ended, undone when it abandoned") {
  Job j(1, MigrationDeadlines{600000, 60});
  Migration& m = j.Request({0});
  j.ToSwitching(m, 0);
  j.Send(1, mig::Ev::kAtStep, m.id, mig::Step{12});
  j.Send(100, mig::Ev::kVerified, m.id, mig::Built{0, 1, ""});
  REQUIRE(m.switch_sent);
  CHECK(j.h.Take() == V({"100:READ", "100:SWITCH", "1:SWITCH"}));
  j.Send(100, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});
  CHECK(m.state == MigState::kSwitching);  // the leaver may not have heard SWITCH
  SUBCASE("the leaver heard SWITCH and exited: done") {
    j.Lose(1, ProcState::kExited);
    CHECK(m.state == MigState::kDone);
    CHECK(j.h.Take().empty());
  }
  SUBCASE("the leaver abandoned at its hold deadline: undone, the joiner told to end") {
    j.Send(1, mig::Ev::kFailed, m.id, mig::Reason{"no decision"});
    CHECK(m.state == MigState::kFailed);
    CHECK(j.h.Take() == V({"1:ABORT", "100:ABORT"}));
  }
}

// TRAINMOVER_PHASE_TIMEOUT_MS shorter than TRAINMOVER_HOLD_TIMEOUT_MS: the coordinator used to stop waiting for the
// held processes' word at the phase deadline after SWITCH, before their hold deadline: done, the joiner alone.
TEST_CASE("the commit point: the wait for the held processes' word outlasts their hold deadline") {
  Job j(3, MigrationDeadlines{50, 500});  // hold deadline 1 s: a held process abandons up to 1 s after SWITCH
  Migration& m = j.Request({1});
  j.ToSwitching(m, 1);
  for (uint64_t p : {1, 2, 3}) j.Send(p, mig::Ev::kAtStep, m.id, mig::Step{12});
  j.Send(101, mig::Ev::kVerified, m.id, mig::Built{0, 1, ""});
  REQUIRE(m.switch_sent);
  const auto sent = std::chrono::steady_clock::now();
  j.Send(101, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});  // only the joiner got it
  j.e->OnTick(j.h);
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  j.e->OnTick(j.h);  // past the phase and the confirmation deadlines, within the held processes' hold deadline
  if (std::chrono::steady_clock::now() - sent > std::chrono::milliseconds(1900)) {
    MESSAGE("the host was too slow for this case (over 1.9 s for a 600 ms sleep): not checked");
    return;
  }
  CHECK(m.state == MigState::kSwitching);
  for (uint64_t p : {1, 3, 2}) j.Send(p, mig::Ev::kFailed, m.id, mig::Reason{"no decision"});
  CHECK(m.state == MigState::kFailed);
  CHECK(m.reason.rfind("SWITCH reached none of the held processes", 0) == 0);
}

TEST_CASE("ready: a leaver that destroyed a communicator since the request fails the migration, no crash") {
  Job j(3);
  Migration& m = j.Request({1});
  j.h.procs[2].comm_info.clear();  // COMM_DESTROYED between the request and READY
  j.Ready(j.AddJoiner(1), 1);
  CHECK(m.state == MigState::kFailed);
  CHECK(m.reason == "the leaver of rank 1 no longer has every communicator it had at the request");
}

TEST_CASE("FAILED from a process before the switch fails the migration") {
  Job j(3);
  Migration& m = j.Request({1});
  j.ToAgreeing(m, 1);
  j.Send(3, mig::Ev::kFailed, m.id, mig::Reason{"COMMIT of a step this process did not accept"});
  CHECK(m.state == MigState::kFailed);
  CHECK(m.reason == "rank 2: COMMIT of a step this process did not accept");
}

TEST_CASE("tape relay: chunks collected from the leaver, forwarded once a joiner registered") {
  Job j(3);
  Migration& m = j.Request({1});
  j.h.Take();
  j.Send(2, mig::Ev::kTape, m.id, mig::Blob{{1, 2}});
  j.Send(2, mig::Ev::kTape, m.id, mig::Blob{{3}});
  j.Send(3, mig::Ev::kTape, m.id, mig::Blob{{7}});  // not a leaver: ignored
  j.Send(2, mig::Ev::kTape, m.id, mig::Blob{});
  CHECK(j.h.Take().empty());  // no joiner yet
  j.AddJoiner(1);
  j.e->OnTick(j.h);
  REQUIRE(j.h.sent.size() == 2);
  mig::Blob b;
  REQUIRE(DecodePayload(j.h.sent[0].c.body, &b));
  CHECK(b.bytes == std::vector<uint8_t>{1, 2, 3});
  REQUIRE(DecodePayload(j.h.sent[1].c.body, &b));
  CHECK(b.bytes.empty());
  CHECK(j.h.Take() == V({"101:TAPE", "101:TAPE"}));
  j.e->OnTick(j.h);
  j.Send(2, mig::Ev::kTape, m.id, mig::Blob{});
  CHECK(j.h.Take().empty());  // forwarded once
}

TEST_CASE("tape relay: the joiner already registered gets it on the empty chunk") {
  Job j(2);
  Migration& m = j.Request({0});
  j.AddJoiner(0);
  j.h.Take();
  j.Send(1, mig::Ev::kTape, m.id, mig::Blob{{5}});
  j.Send(1, mig::Ev::kTape, m.id, mig::Blob{});
  CHECK(j.h.Take() == V({"100:TAPE", "100:TAPE"}));
}

TEST_CASE("tape relay, --to H: not to a joiner on another host, to the one on H") {
  Job j(2);
  Migration& m = j.Request({0}, false, "b");
  j.AddJoiner(0);  // on host "h"
  j.h.Take();
  j.Send(1, mig::Ev::kTape, m.id, mig::Blob{{5}});
  j.Send(1, mig::Ev::kTape, m.id, mig::Blob{});
  j.e->OnTick(j.h);
  CHECK(j.h.Take().empty());
  j.h.procs.erase(100);
  j.h.procs[j.AddJoiner(0)].info.host = "b";
  j.e->OnTick(j.h);
  CHECK(j.h.Take() == V({"100:TAPE", "100:TAPE"}));
}

TEST_CASE("several ranks: one joiner makes every id, SWITCH waits for every VERIFIED") {
  Job j(4);
  Migration& m = j.Request({0, 3});
  CHECK(j.h.Take() == V({"1:RECORD_TAPE", "4:RECORD_TAPE"}));
  j.Ready(j.AddJoiner(3), 3);
  CHECK(m.state == MigState::kSandbox);  // rank 0's joiner is still missing
  CHECK(j.h.Take().empty());
  j.Ready(j.AddJoiner(0), 0);
  CHECK(m.state == MigState::kBuilding);
  CHECK(m.joiner == 100);
  CHECK(j.h.Take() == V({"100:MAP", "1:EXPOSE", "103:MAP", "4:EXPOSE", "100:MAKE_IDS"}));
}

TEST_CASE("late events of an ended migration are ignored") {
  Job j(3);
  Migration& m = j.Request({1});
  j.ToAgreeing(m, 1);
  j.e->OnCancel(j.h, m);
  j.h.SetMigState(m, MigState::kCancelled, "cancelled by the operator");
  j.h.Take();
  j.Send(1, mig::Ev::kAccept, m.id, mig::Step{12});
  j.Send(3, mig::Ev::kFailed, m.id, mig::Reason{"x"});
  CHECK(m.state == MigState::kCancelled);
  CHECK(j.h.Take().empty());
  Migration& next = j.Request({2});  // a new migration is accepted again
  CHECK(next.state == MigState::kSandbox);
}

// ---- failure recovery (lib/migration/recovery_engine.cc; docs/recovery.md)

namespace {

// A job of `n` workers with the recovery engine; ranks r+1's buddy is rank r+2's process (the next rank).
struct RecJob : Job {
  std::unique_ptr<Engine> r;
  explicit RecJob(int n, std::vector<std::string> spare_hosts = {}, MigrationDeadlines d = {})
      : Job(n, d), r(MakeRecoveryEngine(std::make_unique<FakeLauncher>(&launched), std::move(spare_hosts))) {}
  void Rec(uint64_t from, rec::Ev kind, const rec::RecMsg& m, uint64_t id = 0) {
    Event ev;
    ev.kind = static_cast<uint16_t>(kind);
    ev.migration = id;
    ev.body = EncodePayload(m);
    r->OnEvent(h, from, ev);
  }
  template <typename B>
  void Mig(uint64_t from, mig::Ev kind, uint64_t id, const B& body) {
    Event ev;
    ev.kind = static_cast<uint16_t>(kind);
    ev.migration = id;
    ev.body = EncodePayload(body);
    r->OnEvent(h, from, ev);
  }
  int64_t StepOf(const std::string& to_kind) {  // the step of the last such command sent
    for (auto it = h.sent.rbegin(); it != h.sent.rend(); ++it) {
      rec::RecMsg m;
      if (rec::RecCmdName(it->c.kind) == to_kind && DecodePayload(it->c.body, &m)) return m.step;
    }
    return -1;
  }
  // Every worker snapshots step s in `slot` and its buddy verifies the copy; returns s.
  int64_t Snapshot(int n, int64_t s = 12, uint32_t slot = 0) {
    for (int k = 0; k < n; ++k) {
      rec::RecMsg t{.step = s, .slot = slot, .words = {7}, .regions = {Region{"w", 64}}, .blob = {1, 2}};
      Rec(static_cast<uint64_t>(k) + 1, rec::Ev::kSnapTaken, t);
    }
    for (int k = 0; k < n; ++k) {
      Rec(static_cast<uint64_t>((k + 1) % n) + 1, rec::Ev::kSnapHeld, rec::RecMsg{.rank = k, .step = s, .slot = slot});
    }
    return s;
  }
  // The migration engine's record of rank 1's move (its leaver is process 2) in `state`, and its joiner's process.
  Migration& MoveRank1(MigState state) {
    Migration& m = h.migs[1];
    m.id = 1;
    m.rank = 1;
    m.ranks = {1};
    m.leaver = 2;
    m.state = state;
    m.joiner = AddJoiner(1);
    return m;
  }
  rec::RecMsg Last(const std::string& to) {  // the body of the last command sent to "process:KIND"
    for (auto it = h.sent.rbegin(); it != h.sent.rend(); ++it) {
      rec::RecMsg m;
      if (std::to_string(it->to) + ":" + rec::RecCmdName(it->c.kind) == to && DecodePayload(it->c.body, &m)) return m;
    }
    return rec::RecMsg{};
  }
};

}  // namespace

// Where each rank's snapshot goes (the process its SNAP_PULL is sent to, in rank order) when rank k runs on
// hosts[k]: each rank's buddy is on another host and, hosts being equal, each rank holds one copy, whether the ranks
// are in blocks or interleaved (with "the next rank on another host", two hosts of two ranks made ranks 0 and 2 hold
// two copies each).
static std::vector<uint64_t> BuddiesOn(const std::vector<std::string>& hosts) {
  RecJob j(static_cast<int>(hosts.size()));
  for (size_t k = 0; k < hosts.size(); ++k) j.h.procs[k + 1].info.host = hosts[k];
  std::vector<uint64_t> to;
  for (uint64_t p = 1; p <= hosts.size(); ++p) {
    j.Rec(p, rec::Ev::kSnapTaken, rec::RecMsg{.step = 12, .slot = 0, .words = {7}, .regions = {Region{"w", 64}}});
    for (const std::string& c : j.h.Take()) to.push_back(std::stoull(c.substr(0, c.find(':'))));
  }
  return to;
}

TEST_CASE("recovery: buddies on other hosts, one copy held by each rank") {
  CHECK(BuddiesOn({"a", "a", "b", "b"}) == std::vector<uint64_t>{3, 4, 1, 2});
  CHECK(BuddiesOn({"a", "b", "a", "b"}) == std::vector<uint64_t>{2, 1, 4, 3});
  CHECK(BuddiesOn({"a", "a", "b", "b", "c", "c"}) == std::vector<uint64_t>{3, 4, 5, 6, 1, 2});
  CHECK(BuddiesOn({"a", "a", "a", "b"}) == std::vector<uint64_t>{4, 4, 4, 1});  // one host of one rank: unavoidable
  CHECK(BuddiesOn({"a", "a", "a"}) == std::vector<uint64_t>{2, 3, 1});          // one host: the next rank
}

TEST_CASE("recovery: after a regrouping a former buddy drops its copies once the new buddy holds a newer step") {
  RecJob j(4);
  for (uint64_t p = 1; p <= 4; ++p) j.h.procs[p].info.host = p <= 2 ? "a" : "b";  // hosts {0,1} {2,3}
  auto taken = [&](int64_t step, uint32_t slot) {
    j.Rec(1, rec::Ev::kSnapTaken, rec::RecMsg{.step = step, .slot = slot, .words = {7}, .regions = {Region{"w", 64}}});
  };
  taken(10, 0);  // rank 0's buddy: rank 2 (process 3), on the other host
  CHECK(j.h.Take() == std::vector<std::string>{"3:SNAP_PULL"});
  j.Rec(3, rec::Ev::kSnapHeld, rec::RecMsg{.rank = 0, .step = 10, .slot = 0});
  CHECK(j.h.Take() == std::vector<std::string>{"1:SNAP_SHIPPED"});
  // Ranks 1 and 2 trade hosts (as after planned migrations to other hosts): rank 0's buddy is now rank 1.
  j.h.procs[2].info.host = "b";
  j.h.procs[3].info.host = "a";
  taken(11, 1);
  CHECK(j.h.Take() == std::vector<std::string>{"2:SNAP_PULL"});
  // A failed pull (no room) keeps the former buddy's copies: they are the rank's only ones.
  j.Rec(2, rec::Ev::kSnapHeld, rec::RecMsg{.rank = 0, .step = 11, .slot = 1, .ok = 0, .text = "no room"});
  CHECK(j.h.Take() == std::vector<std::string>{"1:SNAP_SHIPPED"});
  CHECK(j.Last("1:SNAP_SHIPPED").complete == -1);  // ranks 1-3 took none
  taken(12, 2);
  CHECK(j.h.Take() == std::vector<std::string>{"2:SNAP_PULL"});
  j.Rec(2, rec::Ev::kSnapHeld, rec::RecMsg{.rank = 0, .step = 12, .slot = 2});
  CHECK(j.Last("3:SNAP_DROP").rank == 0);
  CHECK(j.Last("3:SNAP_DROP").step == 12);
  CHECK(j.h.Take() == std::vector<std::string>{"1:SNAP_SHIPPED", "3:SNAP_DROP"});
  taken(13, 3);  // dropped once: the next verified copy sends nothing more
  j.Rec(2, rec::Ev::kSnapHeld, rec::RecMsg{.rank = 0, .step = 13, .slot = 3});
  CHECK(j.h.Take() == std::vector<std::string>{"2:SNAP_PULL", "1:SNAP_SHIPPED"});
}

TEST_CASE("recovery: each rank's snapshot is pulled by the next rank; SNAP_SHIPPED once held, with the complete step") {
  RecJob j(3);
  rec::RecMsg t{.step = 12, .slot = 1, .words = {7}, .regions = {Region{"w", 64}}, .blob = {1, 2}};
  j.Rec(1, rec::Ev::kSnapTaken, t);  // rank 0: its copy goes to rank 1 (process 2)
  CHECK(j.h.Take() == std::vector<std::string>{"2:SNAP_PULL"});
  j.Rec(2, rec::Ev::kSnapHeld, rec::RecMsg{.rank = 0, .step = 12, .slot = 1});
  CHECK(j.Last("1:SNAP_SHIPPED").step == 12);
  CHECK(j.Last("1:SNAP_SHIPPED").complete == 12);  // of the ranks that take snapshots (ranks 1 and 2 took none)
  CHECK(j.h.Take() == std::vector<std::string>{"1:SNAP_SHIPPED"});
  j.Snapshot(3, 14, 2);
  CHECK(j.Last("3:SNAP_SHIPPED").complete == 14);
  j.h.Take();
  // A copy verified under an older epoch, or of a slot the owner has reused since, is not counted.
  j.Rec(1, rec::Ev::kSnapTaken, rec::RecMsg{.step = 16, .slot = 3, .words = {7}, .regions = {Region{"w", 64}}});
  j.Rec(2, rec::Ev::kSnapHeld, rec::RecMsg{.epoch = 5, .rank = 0, .step = 16, .slot = 3});
  CHECK(j.h.Take() == std::vector<std::string>{"2:SNAP_PULL"});
  j.Rec(2, rec::Ev::kSnapHeld, rec::RecMsg{.rank = 0, .step = 16, .slot = 0});
  CHECK(j.Last("1:SNAP_SHIPPED").step == 16);
  CHECK(j.Last("1:SNAP_SHIPPED").complete == 14);
}

TEST_CASE("recovery: TRAINMOVER_SNAPSHOT_EVERY=auto: every rank is told the largest interval any rank asks for") {
  RecJob j(3);
  auto take = [&](uint64_t p, int64_t step, int64_t wish) {  // process p snapshots `step`, its buddy verifies it
    const int32_t rank = static_cast<int32_t>(p) - 1;
    j.Rec(p, rec::Ev::kSnapTaken,
          rec::RecMsg{.step = step, .every = wish, .slot = 0, .words = {7}, .regions = {Region{"w", 64}}});
    j.Rec(p % 3 + 1, rec::Ev::kSnapHeld, rec::RecMsg{.rank = rank, .step = step, .slot = 0});
    return j.Last(std::to_string(p) + ":SNAP_SHIPPED").every;
  };
  {  // on the wire: a trailing i64, absent when 0 (a body without it decodes as before; an explicit 0 is not canonical)
    rec::RecMsg a{.step = 3, .every = 16}, b;
    std::vector<uint8_t> bytes = EncodePayload(rec::RecMsg{.step = 3});
    CHECK(EncodePayload(a).size() == bytes.size() + 8);
    REQUIRE(DecodePayload(EncodePayload(a), &b));
    CHECK(b.every == 16);
    bytes.resize(bytes.size() + 8, 0);
    CHECK_FALSE(DecodePayload(bytes, &b));
  }
  CHECK(take(1, 1, 0) == 0);    // nobody asked (a fixed interval, or nothing measured yet): keep your own
  CHECK(take(1, 2, 4) == 4);    // rank 0 asks 4
  CHECK(take(2, 2, 16) == 16);  // rank 1's snapshots cost more: 16 for everyone
  CHECK(take(1, 4, 4) == 16);   // rank 0 is told 16 with its next SNAP_SHIPPED
  CHECK(take(3, 4, 0) == 16);   // rank 2 has not measured: it follows
  CHECK(j.h.FindProcess(3)->snapshot_every == 16);
  CHECK(take(2, 16, 2) == 4);   // rank 1 became cheap: the largest left is rank 0's 4
  CHECK(take(2, 18, 8) == 8);
  // A rank's new holder (process 4 replaces rank 1's) keeps the rank's wish until it has measured its own.
  j.h.procs[2].state = ProcState::kLost;
  j.h.AddWorker(4, 1, "h");  // on the job's one host: its buddy is the next rank
  j.Rec(4, rec::Ev::kSnapTaken, rec::RecMsg{.step = 20, .slot = 0, .words = {7}, .regions = {Region{"w", 64}}});
  j.Rec(3, rec::Ev::kSnapHeld, rec::RecMsg{.rank = 1, .step = 20, .slot = 0});
  CHECK(j.Last("4:SNAP_SHIPPED").every == 8);
}

TEST_CASE(
    "recovery: a planned migration's joiner and its rank's buddies warm the slots they will pull after the "
    "switch; a joiner that is no migration's gets the end of the batch alone") {
  RecJob j(3);
  constexpr uint32_t kSlots = trainmover::migration::kSnapshotSlots;
  for (uint32_t k = 0; k < kSlots; ++k) {  // rank 0's four slots, each with its own descriptor
    j.Rec(1, rec::Ev::kSnapTaken,
          rec::RecMsg{.step = 10 + k,
                      .slot = k,
                      .words = {7},
                      .regions = {Region{"w", 64}},
                      .blob = {5, static_cast<uint8_t>(k)}});
  }
  j.h.Take();
  auto exposed = [&](uint64_t from, uint32_t slot) {
    j.Rec(from, rec::Ev::kSlotExposed,
          rec::RecMsg{.slot = slot, .regions = {Region{"w", 64}}, .blob = {9, static_cast<uint8_t>(slot)}});
  };
  // A joiner that is no migration's (a recovery's replacement, or one started before any request): only the end.
  const uint64_t early = j.AddJoiner(1);
  for (uint32_t k = 0; k < kSlots; ++k) exposed(early, k);
  CHECK(j.Last(std::to_string(early) + ":SNAP_WARM").rank == -1);
  CHECK(j.h.Take() == std::vector<std::string>{std::to_string(early) + ":SNAP_WARM"});
  j.h.procs.erase(early);
  // Rank 1 migrating, before its switch (the joiner in its sandbox).
  Migration& m = j.MoveRank1(MigState::kBuilding);
  const uint64_t jr = m.joiner;
  const std::string to_joiner = std::to_string(jr) + ":SNAP_WARM";
  // Each of the joiner's slots: rank 1's buddy (rank 2, process 3) connects to it now.
  for (uint32_t k = 0; k + 1 < kSlots; ++k) {
    exposed(jr, k);
    const rec::RecMsg w = j.Last("3:SNAP_WARM");
    CHECK(w.rank == 1);
    CHECK(w.slot == k);
    CHECK(w.blob == std::vector<uint8_t>{9, static_cast<uint8_t>(k)});
    CHECK(j.h.Take() == std::vector<std::string>{"3:SNAP_WARM"});
  }
  // After its last slot, the joiner connects to each slot of rank 0, whose buddy its leaver is, then the end.
  exposed(jr, kSlots - 1);
  std::set<uint32_t> slots;
  for (const auto& x : j.h.sent) {
    rec::RecMsg w;
    if (x.to != jr || !DecodePayload(x.c.body, &w) || w.rank < 0) continue;
    CHECK(w.rank == 0);
    CHECK(w.blob == std::vector<uint8_t>{5, static_cast<uint8_t>(w.slot)});
    slots.insert(w.slot);
  }
  CHECK(slots.size() == kSlots);
  CHECK(j.Last(to_joiner).rank == -1);  // the last one: the batch is over
  CHECK(j.h.Take() == std::vector<std::string>{"3:SNAP_WARM", to_joiner, to_joiner, to_joiner, to_joiner, to_joiner});
  // Once SWITCH went out the joiner holds the rank: a slot it sets up later warms nothing.
  m.switch_sent = true;
  m.state = MigState::kSwitching;
  exposed(jr, kSlots - 1);
  CHECK(j.h.Take() == std::vector<std::string>{to_joiner});
}

TEST_CASE("recovery: a planned migration's joiner replaces its leaver as a buddy at the switch and keeps the "
          "leaver's copies of its rank") {
  RecJob j(3);
  j.Snapshot(3, 10, 0);  // rank 1's snapshot of step 10 is on rank 2 (process 3)
  j.h.Take();
  Migration& m = j.MoveRank1(MigState::kAgreeing);  // agreeing on the switch step
  const uint64_t jr = m.joiner;
  auto taken = [&](uint64_t from, int64_t step, uint32_t slot) {
    j.Rec(from, rec::Ev::kSnapTaken, rec::RecMsg{.step = step, .slot = slot, .words = {7}, .regions = {Region{"w", 64}}});
  };
  // Before the switch rank 0's buddy is rank 1's leaver.
  taken(1, 12, 2);
  CHECK(j.h.Take() == std::vector<std::string>{"2:SNAP_PULL"});
  j.Rec(2, rec::Ev::kSnapHeld, rec::RecMsg{.rank = 0, .step = 12, .slot = 2});
  CHECK(j.h.Take() == std::vector<std::string>{"1:SNAP_SHIPPED"});
  // SWITCH went out: the joiner replaces the leaver, which is pulled from no more (it is about to exit).
  m.state = MigState::kSwitching;
  m.switch_sent = true;
  taken(1, 13, 3);
  CHECK(j.h.Take() == std::vector<std::string>{std::to_string(jr) + ":SNAP_PULL"});
  j.Rec(jr, rec::Ev::kSnapHeld, rec::RecMsg{.rank = 0, .step = 13, .slot = 3});
  CHECK(j.h.Take() == std::vector<std::string>{"1:SNAP_SHIPPED", "2:SNAP_DROP"});  // the leaver's copy of rank 0
  // The joiner's own snapshot goes to rank 2, which still holds the leaver's copy of step 10 (in another slot than the
  // one this pull overwrites): the same timeline.
  taken(jr, 13, 1);
  CHECK(j.h.Take() == std::vector<std::string>{"3:SNAP_PULL"});
  // The migration is done and the leaver exits; the joiner, now rank 1's worker, fails before its own snapshot is
  // on its buddy: recovered from the leaver's copy of step 10 (not refused).
  m.state = MigState::kDone;
  j.h.procs[jr].info.role = "worker";
  j.h.procs[jr].info.rank = 1;
  j.h.procs[2].state = ProcState::kExited;
  j.r->OnProcessLost(j.h, 2);
  j.h.procs[jr].lost_reason = "connection closed by peer";
  j.h.procs[jr].state = ProcState::kLost;
  j.r->OnProcessLost(j.h, jr);
  const Migration& r = j.h.migs.rbegin()->second;
  CHECK(r.kind == kKindRecover);
  CHECK(r.state != MigState::kFailed);
  CHECK(j.h.Take() == std::vector<std::string>{"1:FENCE", "3:FENCE"});
  j.Rec(1, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 14, .words = {10, 12, 13}}, r.id);
  j.Rec(3, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 14, .words = {10, 12}}, r.id);
  CHECK(j.Last("3:EXPOSE_HELD").step == 10);
  CHECK(j.h.Take() == std::vector<std::string>{"3:EXPOSE_HELD"});
}

TEST_CASE("recovery: a failure is fenced, the buddy exposes its copy, a replacement is built in, all roll back") {
  RecJob j(3);
  const int64_t s = j.Snapshot(3, 12, 0);
  j.Snapshot(3, 14, 1);
  j.h.Take();
  j.h.procs[2].lost_reason = "connection closed by peer";
  j.h.procs[2].state = ProcState::kLost;
  j.h.procs[2].step = 15;
  j.r->OnProcessLost(j.h, 2);  // rank 1
  Migration& m = j.h.migs.rbegin()->second;
  CHECK(m.kind == kKindRecover);
  CHECK(m.rank == 1);
  CHECK(m.recovery.epoch == 1);
  CHECK(j.h.Take() == std::vector<std::string>{"1:FENCE", "3:FENCE"});
  REQUIRE(j.launched.started.size() == 1);
  CHECK(j.launched.started[0].argv == std::vector<std::string>{"train", "--steps", "9"});
  // Where each survivor's fence found it: every one passes the safe points up to the newest of those, and holds at
  // the first after it (one that holds earlier may be waited for in the next step by another: recovery_twice_3d).
  j.Rec(1, rec::Ev::kFenceAt, rec::RecMsg{.epoch = 1, .step = 15}, m.id);
  j.Rec(3, rec::Ev::kFenceAt, rec::RecMsg{.epoch = 0, .step = 17}, m.id);  // an old epoch's: ignored
  CHECK(j.h.Take().empty());
  j.Rec(3, rec::Ev::kFenceAt, rec::RecMsg{.epoch = 1, .step = 14}, m.id);
  CHECK(j.Last("3:HOLD_AFTER").step == 15);
  CHECK(j.Last("3:HOLD_AFTER").epoch == 1);
  CHECK(j.h.Take() == std::vector<std::string>{"1:HOLD_AFTER", "3:HOLD_AFTER"});
  j.Rec(3, rec::Ev::kFenceAt, rec::RecMsg{.epoch = 1, .step = 14}, m.id);  // a repeat: sent once
  CHECK(j.h.Take().empty());
  // A survivor back from a reconnection may have missed both: FENCE and HOLD_AFTER again (idempotent at the agent).
  j.r->OnProcessBack(j.h, 3);
  CHECK(j.Last("3:HOLD_AFTER").step == 15);
  CHECK(j.h.Take() == std::vector<std::string>{"3:FENCE", "3:HOLD_AFTER"});
  // The step: the newest the buddy holds of rank 1 that every survivor holds itself (rank 2 no longer holds 14).
  j.Rec(1, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 16, .words = {12, 14}}, m.id);
  CHECK(j.h.Take().empty());
  j.Rec(3, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 16, .words = {12, 16}}, m.id);
  CHECK(j.h.Take() == std::vector<std::string>{"3:EXPOSE_HELD"});
  CHECK(m.recovery.rollback_step == s);
  // The replacement registers (as the spawned pid), gets an empty tape, is READY and matched.
  uint64_t jr = j.AddJoiner(1);
  j.h.procs[jr].info.pid = 500;
  j.r->OnTick(j.h);
  CHECK(j.h.Take() == std::vector<std::string>{std::to_string(jr) + ":TAPE"});
  mig::Ready ready;
  ready.comms = {Job::Comm(0xB1, 1, 3)};
  ready.regions = {Region{"w", 64}};
  j.Mig(jr, mig::Ev::kReady, 0, ready);
  CHECK(j.h.Take() == std::vector<std::string>{std::to_string(jr) + ":MAP", std::to_string(jr) + ":MAKE_IDS"});
  j.Mig(jr, mig::Ev::kIds, m.id, mig::Ids{{mig::IdEntry{kWorld, {}}}});
  CHECK(j.h.Take() == std::vector<std::string>{"1:BUILD", "3:BUILD", std::to_string(jr) + ":BUILD"});
  j.Rec(3, rec::Ev::kHeldExposed, rec::RecMsg{.rank = 1, .step = s, .blob = {9}});
  CHECK(j.h.Take() == std::vector<std::string>{std::to_string(jr) + ":PREPARE"});
  j.Mig(jr, mig::Ev::kPrepared, m.id, mig::Reason{"cma"});
  CHECK(j.h.Take() == std::vector<std::string>{std::to_string(jr) + ":READ"});
  j.Mig(jr, mig::Ev::kVerified, m.id, mig::Built{0, 1, "ok"});
  CHECK(j.h.Take().empty());  // not every replacement communicator is built yet
  for (uint64_t p : {uint64_t{1}, uint64_t{3}, jr}) j.Mig(p, mig::Ev::kBuilt, m.id, mig::Built{kWorld, 1, ""});
  CHECK(j.h.Take() == std::vector<std::string>{std::to_string(jr) + ":SWITCH", "1:ROLLBACK", "3:ROLLBACK"});
  CHECK(m.state == MigState::kSwitching);
  j.r->OnProcessBack(j.h, 1);
  CHECK(j.h.Take() == std::vector<std::string>{"1:FENCE", "1:HOLD_AFTER", "1:ROLLBACK"});
  j.Rec(1, rec::Ev::kRolledBack, rec::RecMsg{.epoch = 1, .step = s}, m.id);
  j.Rec(3, rec::Ev::kRolledBack, rec::RecMsg{.epoch = 1, .step = s}, m.id);
  j.Mig(jr, mig::Ev::kSwitched, m.id, mig::Switched{s, 0, 0});
  CHECK(m.state == MigState::kDone);
  CHECK(m.recovery.lost_steps == 3);  // rank 1 had completed step 15
  CHECK(m.recovery.failed_at_step == 16);
  CHECK(j.h.procs[jr].info.role == "worker");
}

TEST_CASE("recovery: refused without a complete snapshot, and when a survivor fails too") {
  RecJob a(3);
  rec::RecMsg t{.step = 12, .slot = 0, .words = {7}, .regions = {Region{"w", 64}}, .blob = {1}};
  a.Rec(2, rec::Ev::kSnapTaken, t);  // rank 1 took a snapshot (it speaks the protocol); its buddy holds no copy yet
  a.h.Take();
  a.h.procs[2].state = ProcState::kLost;
  a.r->OnProcessLost(a.h, 2);
  CHECK(a.h.migs.rbegin()->second.state == MigState::kFailed);
  CHECK(a.h.migs.rbegin()->second.reason.find("no snapshot of rank 1") != std::string::npos);
  std::vector<std::string> sent = a.h.Take();
  CHECK(std::count(sent.begin(), sent.end(), "1:GIVE_UP") == 1);
  CHECK(std::count(sent.begin(), sent.end(), "3:GIVE_UP") == 1);

  RecJob b(3);
  b.Snapshot(3);
  b.h.procs[2].state = ProcState::kLost;
  b.r->OnProcessLost(b.h, 2);
  b.h.Take();
  b.h.procs[3].state = ProcState::kLost;
  b.r->OnProcessLost(b.h, 3);  // rank 2, rank 1's buddy, during the recovery: a new epoch for both, refused
  REQUIRE(b.h.migs.size() == 2);
  CHECK(b.h.migs.begin()->second.state == MigState::kFailed);
  CHECK(b.h.migs.begin()->second.reason.find("abandoned for a new epoch") != std::string::npos);
  const Migration& both = b.h.migs.rbegin()->second;
  CHECK(both.recovery.epoch == 2);
  CHECK(both.ranks == std::vector<int32_t>{2, 1});
  CHECK(both.state == MigState::kFailed);
  CHECK(both.reason.find("no snapshot of rank 1 is complete on a live buddy") != std::string::npos);  // only on rank 2
  CHECK(b.launched.stopped.size() == 1);  // the spawned replacement that never became one is stopped
  sent = b.h.Take();
  CHECK(std::count(sent.begin(), sent.end(), "1:GIVE_UP") == 1);

  // A survivor whose program ends before it holds (its last safe point at or before the hold step) will never hold:
  // failed at once, saying so, not after the others' hold limit.
  RecJob c(3);
  c.Snapshot(3);
  c.h.procs[2].state = ProcState::kLost;
  c.r->OnProcessLost(c.h, 2);
  CHECK(c.h.migs.rbegin()->second.state != MigState::kFailed);  // recovering
  c.h.Take();
  c.h.procs[3].state = ProcState::kExited;
  c.h.procs[3].step = 20;
  c.r->OnProcessLost(c.h, 3);
  REQUIRE(c.h.migs.size() == 1);
  CHECK(c.h.migs.begin()->second.state == MigState::kFailed);
  CHECK(c.h.migs.begin()->second.reason.find("rank 2 (process 3) exited at step 20 before it held") != std::string::npos);
  sent = c.h.Take();
  CHECK(std::count(sent.begin(), sent.end(), "1:GIVE_UP") == 1);
}

TEST_CASE("recovery: a buddy that only reconnects keeps its copies on record; the rank it holds is recovered from it") {
  // A coordinator cut off for a while (fault matrix: switching, coordinator, cut): rank 2's buddy (rank 0, process 1)
  // says BYE "reconnect" and comes back; then rank 2 itself is declared failed. Its copy on rank 0 must still count.
  RecJob j(3);
  const int64_t s = j.Snapshot(3, 12, 0);
  j.h.Take();
  j.h.procs[1].state = ProcState::kLost;
  j.h.procs[1].returning_by_ns = 1;
  j.r->OnProcessLost(j.h, 1);  // reconnecting: no recovery, and its copy of rank 2 stays on record
  CHECK(j.h.migs.empty());
  j.h.procs[1].state = ProcState::kAlive;  // registered again
  j.h.procs[1].returning_by_ns = 0;
  j.h.procs[3].state = ProcState::kLost;
  j.h.procs[3].lost_reason = "no heartbeat for 9829 ms";
  j.h.procs[3].step = 13;
  j.r->OnProcessLost(j.h, 3);  // rank 2
  const Migration& m = j.h.migs.rbegin()->second;
  CHECK(m.kind == kKindRecover);
  CHECK(m.state != MigState::kFailed);
  CHECK(m.reason.empty());
  j.Rec(1, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 13, .words = {static_cast<uint64_t>(s)}}, m.id);
  j.Rec(2, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 13, .words = {static_cast<uint64_t>(s)}}, m.id);
  CHECK(m.recovery.rollback_step == s);
  CHECK(j.Last("1:EXPOSE_HELD").rank == 2);

  // Lost for good (it never came back): its copies go, and a rank only it held cannot be recovered.
  RecJob k(3);
  k.Snapshot(3, 12, 0);
  k.h.procs[1].state = ProcState::kLost;
  k.h.procs[1].returning_by_ns = 1;
  k.r->OnProcessLost(k.h, 1);
  k.h.procs[1].returning_by_ns = 0;  // its grace ran out: CheckHeartbeats reports it lost again
  k.r->OnProcessLost(k.h, 1);        // rank 0 itself is recovered (its copy is on rank 1)...
  k.h.procs[3].state = ProcState::kLost;
  k.r->OnProcessLost(k.h, 3);  // ...and rank 2, whose only copy was on rank 0, fails with it
  CHECK(k.h.migs.rbegin()->second.state == MigState::kFailed);
}

TEST_CASE("recovery: a second failure during a recovery abandons it; a new epoch recovers both ranks together") {
  RecJob j(4);
  const int64_t s = j.Snapshot(4, 12, 0);
  j.h.Take();
  j.h.procs[2].state = ProcState::kLost;  // rank 1 (its copy on rank 2)
  j.r->OnProcessLost(j.h, 2);
  const uint64_t first = j.h.migs.rbegin()->first;
  CHECK(j.h.Take() == std::vector<std::string>{"1:FENCE", "3:FENCE", "4:FENCE"});
  j.h.procs[4].state = ProcState::kLost;  // rank 3 (its copy on rank 0) while rank 1's replacement warms up
  j.r->OnProcessLost(j.h, 4);
  CHECK(j.h.migs.at(first).state == MigState::kFailed);
  Migration& m = j.h.migs.rbegin()->second;
  CHECK(m.id != first);
  CHECK(m.recovery.epoch == 2);
  CHECK(m.ranks == std::vector<int32_t>{3, 1});
  CHECK(m.recovery.detected_by.find("during recovery") != std::string::npos);
  // The abandoned recovery's builds are dropped at the survivors (ABORT), its unregistered replacement stopped; one
  // FENCE of the new epoch names every communicator of both ranks; a replacement for each.
  CHECK(j.Last("1:FENCE").epoch == 2);
  CHECK(j.h.Take() == std::vector<std::string>{"1:ABORT", "3:ABORT", "1:FENCE", "3:FENCE"});
  CHECK(j.launched.stopped.size() == 1);
  REQUIRE(j.launched.started.size() == 3);
  for (uint64_t q : {uint64_t{1}, uint64_t{3}}) {
    j.Rec(q, rec::Ev::kFenceAt, rec::RecMsg{.epoch = 1, .step = 15}, first);  // the old epoch: ignored
    j.Rec(q, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 16, .words = {12}}, first);
  }
  CHECK(j.h.Take().empty());
  // The new epoch's HOLD_AFTER once both survivors said where its fence found them (one held already: 15).
  j.Rec(1, rec::Ev::kFenceAt, rec::RecMsg{.epoch = 2, .step = 15}, m.id);
  CHECK(j.h.Take().empty());
  j.Rec(3, rec::Ev::kFenceAt, rec::RecMsg{.epoch = 2, .step = 13}, m.id);
  CHECK(j.Last("1:HOLD_AFTER").epoch == 2);
  CHECK(j.Last("1:HOLD_AFTER").step == 15);
  CHECK(j.h.Take() == std::vector<std::string>{"1:HOLD_AFTER", "3:HOLD_AFTER"});
  for (uint64_t q : {uint64_t{1}, uint64_t{3}}) j.Rec(q, rec::Ev::kHeld, rec::RecMsg{.epoch = 2, .step = 16, .words = {12}}, m.id);
  std::vector<std::string> exposes = j.h.Take();
  std::sort(exposes.begin(), exposes.end());
  CHECK(exposes == std::vector<std::string>{"1:EXPOSE_HELD", "3:EXPOSE_HELD"});  // rank 3's copy on rank 0, 1's on 2
  CHECK(m.recovery.rollback_step == s);
  mig::Ready ready;
  ready.comms = {Job::Comm(kWorld, 1, 4)};
  ready.regions = {Region{"w", 64}};
  uint64_t r1 = j.AddJoiner(1), r3 = j.AddJoiner(3);
  j.h.procs[r3].info.pid = 501;  // spawned after the first (500, stopped), the new failure's first
  j.h.procs[r1].info.pid = 502;
  j.Mig(r1, mig::Ev::kReady, 0, ready);
  CHECK(j.h.Take() == std::vector<std::string>{std::to_string(r1) + ":MAP"});  // MAKE_IDS once both are matched
  ready.comms = {Job::Comm(kWorld, 3, 4)};
  j.Mig(r3, mig::Ev::kReady, 0, ready);
  CHECK(j.h.Take() == std::vector<std::string>{std::to_string(r3) + ":MAP", std::to_string(r3) + ":MAKE_IDS"});
  j.Mig(r3, mig::Ev::kIds, m.id, mig::Ids{{mig::IdEntry{kWorld, {}}}});
  std::vector<std::string> builds = j.h.Take();
  std::sort(builds.begin(), builds.end());
  CHECK(builds == std::vector<std::string>{std::to_string(r1) + ":BUILD", std::to_string(r3) + ":BUILD", "1:BUILD", "3:BUILD"});
  j.Rec(1, rec::Ev::kHeldExposed, rec::RecMsg{.rank = 3, .step = s, .blob = {9}});
  j.Rec(3, rec::Ev::kHeldExposed, rec::RecMsg{.rank = 1, .step = s, .blob = {8}});
  builds = j.h.Take();
  std::sort(builds.begin(), builds.end());
  CHECK(builds == std::vector<std::string>{std::to_string(r1) + ":PREPARE", std::to_string(r3) + ":PREPARE"});
  for (uint64_t p : {uint64_t{1}, uint64_t{3}, r1, r3}) j.Mig(p, mig::Ev::kBuilt, m.id, mig::Built{kWorld, 1, ""});
  j.Mig(r1, mig::Ev::kVerified, m.id, mig::Built{0, 1, "ok"});
  CHECK(j.h.Take().empty());  // rank 3's replacement has not read its state yet
  j.Mig(r3, mig::Ev::kVerified, m.id, mig::Built{0, 1, "ok"});
  CHECK(j.h.Take() == std::vector<std::string>{std::to_string(r3) + ":SWITCH", std::to_string(r1) + ":SWITCH",
                                               "1:ROLLBACK", "3:ROLLBACK"});
  for (uint64_t q : {uint64_t{1}, uint64_t{3}}) j.Rec(q, rec::Ev::kRolledBack, rec::RecMsg{.epoch = 2, .step = s}, m.id);
  j.Mig(r1, mig::Ev::kSwitched, m.id, mig::Switched{s, 0, 0});
  CHECK(m.state != MigState::kDone);
  j.Mig(r3, mig::Ev::kSwitched, m.id, mig::Switched{s, 0, 0});
  CHECK(m.state == MigState::kDone);
  CHECK(j.h.procs[r1].info.rank == 1);
  CHECK(j.h.procs[r3].info.rank == 3);
  CHECK(j.h.procs[r3].info.role == "worker");
}

TEST_CASE("recovery: a communicator reported failed by a process's poll: its members are probed, the silent one declared") {
  RecJob j(3);
  j.Rec(1, rec::Ev::kCommFault, rec::RecMsg{.slot = 6, .words = {kWorld}});  // rank 0: ncclRemoteError on the world
  const int64_t probe = j.Last("2:PROBE").step;
  CHECK(j.h.Take() == std::vector<std::string>{"2:PROBE", "3:PROBE"});
  j.Rec(1, rec::Ev::kCommFault, rec::RecMsg{.slot = 6, .words = {kWorld}});  // again: the probes are under way
  CHECK(j.h.Take().empty());
  j.Rec(2, rec::Ev::kProbed, rec::RecMsg{.step = probe});  // rank 1 answers, rank 2 does not
  j.r->OnTick(j.h);
  CHECK(j.h.declared.empty());  // not before kProbeMs
  std::this_thread::sleep_for(std::chrono::milliseconds(kProbeMs + 100));
  j.r->OnTick(j.h);
  CHECK(j.h.declared == std::vector<uint64_t>{3});
  CHECK(j.h.procs[3].lost_reason.find("rank 0's NCCL library reported communicator 160 failed (ncclRemoteError); no "
                                      "answer to a probe within") == 0);
  CHECK(j.h.procs[2].state == ProcState::kAlive);
}

TEST_CASE("recovery right after a migration's switch: the joiner holds the rank, the leaver's copies stay the rank's") {
  RecJob j(3);
  j.Snapshot(3, 10, 1);
  j.Snapshot(3, 11, 2);  // rank 1's copies (of the leaver, process 2) on rank 2 (process 3)
  Migration& m = j.Request({1});
  j.ToSwitching(m, 1);
  for (uint64_t p : {1, 2, 3}) j.Send(p, mig::Ev::kAtStep, m.id, mig::Step{12});
  j.Send(101, mig::Ev::kVerified, m.id, mig::Built{0, 1, ""});
  REQUIRE(m.switch_sent);
  j.h.Take();
  // Switched, not confirmed yet (the joiner is still "joiner"): rank 0's snapshot goes to the joiner, not the leaver.
  j.Rec(1, rec::Ev::kSnapTaken, rec::RecMsg{.step = 12, .slot = 3, .words = {7}, .regions = {Region{"w", 64}}});
  CHECK(j.h.Take() == V({"101:SNAP_PULL"}));
  // The joiner's first snapshot, in its slot 0 (the buddy's copy in slot 0 of rank 1 is overwritten by it)...
  j.Rec(101, rec::Ev::kSnapTaken, rec::RecMsg{.step = 12, .slot = 0, .words = {7}, .regions = {Region{"w", 64}}});
  CHECK(j.h.Take() == V({"3:SNAP_PULL"}));
  j.Rec(2, rec::Ev::kSnapTaken, rec::RecMsg{.step = 12, .slot = 3, .words = {7}, .regions = {Region{"w", 64}}});
  CHECK(j.h.Take().empty());  // the leaver's late snapshot: the joiner owns the rank
  auto lose = [&](uint64_t p) -> Migration& {  // as the coordinator does: the migration engine first; the newest record
    j.h.procs[p].lost_reason = "connection closed by peer";
    j.Lose(p);
    j.r->OnProcessLost(j.h, p);
    return j.h.migs.rbegin()->second;
  };
  SUBCASE("the joiner killed before its first snapshot is on the buddy: the leaver's copies recover the rank") {
    Migration& r = lose(101);
    REQUIRE(r.kind == kKindRecover);
    CHECK(r.rank == 1);
    CHECK(m.state == MigState::kSwitching);  // the stayers have not confirmed yet
    // Rank 0's pull by the joiner is answered by its loss; the FENCE goes to the stayers, not to the leaver: it holds
    // nothing since the switch.
    CHECK(j.h.Take() == V({"1:SNAP_SHIPPED", "1:FENCE", "3:FENCE"}));
    j.Rec(1, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 13, .words = {10, 11, 12}}, r.id);
    j.Rec(3, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 13, .words = {10, 11, 12}}, r.id);
    CHECK(j.h.Take() == V({"3:EXPOSE_HELD"}));
    CHECK(r.recovery.rollback_step == 11);
  }
  SUBCASE("a stayer killed: the joiner is a survivor, fenced and held; the leaver is not") {
    j.Rec(101, rec::Ev::kSnapHeld, rec::RecMsg{.rank = 0, .step = 12, .slot = 3});  // rank 0's copy on the joiner
    j.h.Take();
    Migration& r = lose(1);
    REQUIRE(r.kind == kKindRecover);
    CHECK(r.rank == 0);
    CHECK(j.h.Take() == V({"3:FENCE", "101:FENCE"}));
    j.Rec(3, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 13, .words = {10, 11, 12}}, r.id);
    j.Rec(101, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 12, .words = {12}}, r.id);
    CHECK(j.h.Take() == V({"101:EXPOSE_HELD"}));
    CHECK(r.recovery.rollback_step == 12);
  }
  SUBCASE("a stayer whose copies left with the leaver, killed before the joiner holds one: refused, saying why") {
    j.Lose(2, ProcState::kExited);  // the leaver's BYE after the hand-off
    j.r->OnProcessLost(j.h, 2);
    j.h.Take();
    Migration& r = lose(1);
    REQUIRE(r.kind == kKindRecover);
    CHECK(r.state == MigState::kFailed);
    CHECK(r.reason == "no snapshot of rank 0 is complete on a live buddy (its copies were on process 2, which left "
                      "before another buddy held a copy)");
    std::vector<std::string> sent = j.h.Take();  // the survivors end with the reason: the joiner too, not the leaver
    CHECK(std::count(sent.begin(), sent.end(), "3:GIVE_UP") == 1);
    CHECK(std::count(sent.begin(), sent.end(), "101:GIVE_UP") == 1);
    CHECK(std::count(sent.begin(), sent.end(), "2:GIVE_UP") == 0);
  }
  SUBCASE("the leaver killed after the switch: nothing to recover") {
    CHECK(lose(2).kind == kKindMigrate);
  }
}

// docs/reliability.md, "The commit point": a stayer out of step after a switch is a failed rank. Its snapshot of the
// switch step, taken before it was held there, is on its buddy; the survivors (the other stayer, the joiner) hold that
// step too, so the rollback is to it.
TEST_CASE("recovery: a stayer out of step after a switch is recovered at the switch step; the out-of-step one fenced") {
  RecJob j(3, {}, MigrationDeadlines{600000, 60});
  j.Snapshot(3, 11, 0);
  Migration& m = j.Request({1});  // leaver process 2, joiner 101, stayers 1 (rank 0) and 3 (rank 2)
  j.ToSwitching(m, 1);
  auto both = [&](uint64_t from, mig::Ev kind, const auto& body) {  // as the coordinator does: each engine in turn
    j.Send(from, kind, m.id, body);
    j.Mig(from, kind, m.id, body);
  };
  auto taken = [&](uint64_t from, int64_t step, uint32_t slot) {
    j.Rec(from, rec::Ev::kSnapTaken, rec::RecMsg{.step = step, .slot = slot, .words = {7}, .regions = {Region{"w", 64}}});
  };
  // The stayers snapshot the switch step before they are held: rank 2's copy goes to rank 0 at once; rank 0's buddy is
  // the leaver, which leaves at the switch: its pull waits for the outcome.
  taken(3, 12, 1);
  CHECK(j.h.Take() == V({"1:SNAP_PULL"}));
  j.Rec(1, rec::Ev::kSnapHeld, rec::RecMsg{.rank = 2, .step = 12, .slot = 1});
  CHECK(j.h.Take() == V({"3:SNAP_SHIPPED"}));
  taken(1, 12, 1);
  CHECK(j.h.Take().empty());
  for (uint64_t p : {1, 2, 3}) both(p, mig::Ev::kAtStep, mig::Step{12});
  both(101, mig::Ev::kVerified, mig::Built{0, 1, ""});
  REQUIRE(m.switch_sent);
  CHECK(j.h.Take() == V({"101:READ", "1:SWITCH", "3:SWITCH", "101:SWITCH", "2:SWITCH", "101:SNAP_PULL"}));
  both(101, mig::Ev::kSwitched, mig::Switched{12, 0, 0});
  taken(101, 12, 0);  // the joiner's own snapshot of the switch step
  both(1, mig::Ev::kPhase, mig::Phase{"swap comms", 1, 2});  // stayer 1 switched; stayer 3 never hears SWITCH
  j.Lose(2, ProcState::kExited);
  j.r->OnProcessLost(j.h, 2);
  j.h.Take();
  j.e->OnTick(j.h);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  j.e->OnTick(j.h);  // past the confirmation deadline: stayer 3 never said it switched, stayer 1 did
  CHECK(m.state == MigState::kDone);
  REQUIRE(j.h.declared == std::vector<uint64_t>{3});
  j.r->OnProcessLost(j.h, 3);  // as the coordinator's DeclareLost does
  Migration& r = j.h.migs.rbegin()->second;
  REQUIRE(r.kind == kKindRecover);
  CHECK(r.rank == 2);
  CHECK(r.recovery.detected_by.rfind(kOutOfStep, 0) == 0);
  // The joiner's pull by the out-of-step process is answered by its loss; the joiner is a survivor, the leaver left.
  CHECK(j.h.Take() == V({"101:SNAP_SHIPPED", "1:FENCE", "101:FENCE"}));
  CHECK(j.h.procs[3].fenced);
  j.Rec(1, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 13, .words = {11, 12}}, r.id);
  j.Rec(101, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 12, .words = {12}}, r.id);
  CHECK(j.h.Take() == V({"1:EXPOSE_HELD"}));
  CHECK(r.recovery.rollback_step == 12);
  // The out-of-step process comes back: told to end (stale epoch), never to switch.
  j.h.procs[3].state = ProcState::kAlive;
  j.h.procs[3].last_heartbeat_ns = ~uint64_t{0};
  j.e->OnProcessBack(j.h, 3);
  j.r->OnProcessBack(j.h, 3);
  CHECK(j.h.Take() == V({"3:FENCED"}));
}

TEST_CASE("recovery: a switch step's snapshot whose buddy is the leaver is pulled by the leaver if the migration ends "
          "without the switch") {
  RecJob j(3);
  Migration& m = j.Request({1});
  j.ToSwitching(m, 1);
  j.Rec(1, rec::Ev::kSnapTaken, rec::RecMsg{.step = 12, .slot = 1, .words = {7}, .regions = {Region{"w", 64}}});
  CHECK(j.h.Take().empty());
  j.r->OnTick(j.h);
  CHECK(j.h.Take().empty());  // still switching
  j.e->OnCancel(j.h, m);
  j.h.SetMigState(m, MigState::kCancelled, "cancelled by the operator");
  j.h.Take();
  j.r->OnTick(j.h);
  CHECK(j.h.Take() == V({"2:SNAP_PULL"}));
}

TEST_CASE("recovery: a process out of step after a switch without a copy of its rank is left as it was") {
  RecJob j(3);
  j.h.procs[3].lost_reason = std::string(kOutOfStep) + "1: it abandoned the switch at its hold deadline";
  j.h.procs[3].state = ProcState::kLost;
  j.r->OnProcessLost(j.h, 3);
  CHECK(j.h.migs.empty());  // no recovery record, nobody fenced or told to end: as without failure recovery
  CHECK_FALSE(j.h.procs[3].fenced);
  CHECK(j.h.Take().empty());
}

// ---- general standbys (lib/migration/standby_pool.cc; docs/recovery.md, "Standbys")

namespace {

// A standby warmed up as `warm` (its process id `id`), ready: it reports STANDBY_READY with rank `warm`'s communicator.
void AddStandby(RecJob& j, uint64_t id, int32_t warm, bool any_rank) {
  j.h.procs[id] = Job::Proc(id, "standby", -1, warm);
  standby::Ready r;
  r.warm_rank = warm;
  r.follows_rank = any_rank ? 1 : 0;
  r.sandbox.comms = {Job::Comm(0xB0 + id, warm, 3)};
  r.sandbox.regions = {Region{"w", 64}};
  Event ev;
  ev.kind = static_cast<uint16_t>(standby::Ev::kReady);
  ev.body = EncodePayload(r);
  j.r->OnEvent(j.h, id, ev);
}

void Fail(RecJob& j, uint64_t process) {
  j.h.procs[process].lost_reason = "connection closed by peer";
  j.h.procs[process].state = ProcState::kLost;
  j.r->OnProcessLost(j.h, process);
}

}  // namespace

TEST_CASE("standby: one that reads its rank through tmRank takes another rank's place, no spawn") {
  RecJob j(3);
  const int64_t s = j.Snapshot(3);
  j.h.Take();
  AddStandby(j, 200, 0, /*any_rank=*/true);
  CHECK(j.h.procs[200].standby.ready);
  CHECK(j.h.procs[200].standby.any_rank);
  Fail(j, 2);  // rank 1
  Migration& m = j.h.migs.rbegin()->second;
  CHECK(j.launched.started.empty());
  CHECK(m.recovery.replacement.rfind("standby process 200 (pid 1200, warmed up as rank 0)", 0) == 0);
  CHECK(m.joiner == 200);
  CHECK_FALSE(j.h.procs[200].standby.ready);
  std::vector<FakeHost::Sent> sent = j.h.sent;
  CHECK(j.h.Take() == std::vector<std::string>{"1:FENCE", "3:FENCE", "200:ASSIGN", "200:MAP", "200:MAKE_IDS"});
  standby::Assign a;
  REQUIRE(DecodePayload(sent[2].c.body, &a));
  CHECK(a.rank == 1);
  mig::KeyList map;
  REQUIRE(DecodePayload(sent[3].c.body, &map));
  CHECK(map.keys == std::vector<uint64_t>{0xB0 + 200, kWorld});  // its communicator at rank 1's place
  j.Mig(200, mig::Ev::kIds, m.id, mig::Ids{{mig::IdEntry{kWorld, {}}}});
  CHECK(j.h.Take() == std::vector<std::string>{"1:BUILD", "3:BUILD", "200:BUILD"});
  j.Rec(1, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = s + 1, .words = {uint64_t(s)}}, m.id);
  j.Rec(3, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = s + 1, .words = {uint64_t(s)}}, m.id);
  CHECK(j.h.Take() == std::vector<std::string>{"3:EXPOSE_HELD"});
  j.Rec(3, rec::Ev::kHeldExposed, rec::RecMsg{.rank = 1, .step = s, .blob = {9}});
  CHECK(j.h.Take() == std::vector<std::string>{"200:PREPARE"});
  j.Mig(200, mig::Ev::kPrepared, m.id, mig::Reason{"cma"});
  j.Mig(200, mig::Ev::kVerified, m.id, mig::Built{0, 1, "ok"});
  for (uint64_t p : {uint64_t{1}, uint64_t{3}, uint64_t{200}}) j.Mig(p, mig::Ev::kBuilt, m.id, mig::Built{kWorld, 1, ""});
  j.Rec(1, rec::Ev::kRolledBack, rec::RecMsg{.epoch = 1, .step = s}, m.id);
  j.Rec(3, rec::Ev::kRolledBack, rec::RecMsg{.epoch = 1, .step = s}, m.id);
  j.Mig(200, mig::Ev::kSwitched, m.id, mig::Switched{s, 0, 0});
  CHECK(m.state == MigState::kDone);
  CHECK(j.h.procs[200].info.role == "worker");
  CHECK(j.h.procs[200].info.rank == 1);
}

TEST_CASE("standby: a fixed-rank one serves only the rank it warmed up as; otherwise a replacement is spawned") {
  RecJob j(3);
  j.Snapshot(3);
  j.h.Take();
  AddStandby(j, 200, 0, /*any_rank=*/false);
  Fail(j, 2);  // rank 1: the standby (rank 0 only) does not fit
  CHECK(j.launched.started.size() == 1);
  CHECK(j.h.migs.rbegin()->second.recovery.replacement.rfind("spawned pid", 0) == 0);
  CHECK(j.h.procs[200].standby.ready);  // still waiting

  RecJob k(3);
  k.Snapshot(3);
  k.h.Take();
  AddStandby(k, 200, 1, /*any_rank=*/false);
  Fail(k, 2);  // rank 1: the standby warmed up as rank 1 fits exactly
  CHECK(k.launched.started.empty());
  CHECK(k.h.migs.rbegin()->second.joiner == 200);
}

TEST_CASE("standby: a lost one is not offered; waiting ones are dismissed once the job has ended") {
  RecJob j(2);
  j.Snapshot(2);
  j.h.Take();
  AddStandby(j, 200, 0, true);
  AddStandby(j, 201, 1, true);
  j.h.procs[201].state = ProcState::kLost;
  j.r->OnProcessLost(j.h, 201);
  CHECK(j.h.migs.empty());  // a standby's loss is no failure
  j.r->OnTick(j.h);
  std::vector<std::string> sent = j.h.Take();
  CHECK(std::none_of(sent.begin(), sent.end(), [](const std::string& x) { return x.find("DISMISS") != x.npos; }));
  for (uint64_t w : {uint64_t{1}, uint64_t{2}}) j.h.procs[w].state = ProcState::kExited;
  j.r->OnTick(j.h);
  CHECK(j.h.Take() == std::vector<std::string>{"200:DISMISS"});
  j.r->OnTick(j.h);
  CHECK(j.h.Take().empty());  // once
}

// ---- a replacement lost before the switch (docs/recovery.md, "A replacement lost")

namespace {

// Rank 1 (process 2) of a 3-rank job fails after every rank's snapshot of step 12; both survivors are held at 13.
Migration& FailRank1(RecJob& j) {
  j.Snapshot(3);
  j.h.Take();
  Fail(j, 2);
  Migration& m = j.h.migs.rbegin()->second;
  for (uint64_t q : {uint64_t{1}, uint64_t{3}}) {
    j.Rec(q, rec::Ev::kHeld, rec::RecMsg{.epoch = m.recovery.epoch, .step = 13, .words = {12}}, m.id);
  }
  return m;
}

// A spawned replacement of rank 1 (process `r`, pid `pid`) registers and is READY; it matches rank 1.
void ReadyRank1(RecJob& j, uint64_t r, uint32_t pid) {
  j.h.procs[r] = Job::Proc(r, "joiner", -1, 1);
  j.h.procs[r].info.pid = pid;
  mig::Ready ready;
  ready.comms = {Job::Comm(0xB1, 1, 3)};
  ready.regions = {Region{"w", 64}};
  j.Mig(r, mig::Ev::kReady, 0, ready);
}

// Drives recovery `m` of rank 1 from here to done with `r`, matched, as its replacement.
void CompleteRank1(RecJob& j, Migration& m, uint64_t r) {
  j.Mig(r, mig::Ev::kIds, m.id, mig::Ids{{mig::IdEntry{kWorld, {}}}});
  j.Rec(3, rec::Ev::kHeldExposed, rec::RecMsg{.rank = 1, .step = 12, .blob = {9}});
  j.Mig(r, mig::Ev::kPrepared, m.id, mig::Reason{"cma"});
  j.Mig(r, mig::Ev::kVerified, m.id, mig::Built{0, 1, "ok"});
  for (uint64_t p : {uint64_t{1}, uint64_t{3}}) j.Mig(p, mig::Ev::kBuilt, m.id, mig::Built{kWorld, 1, ""});
  j.h.Take();
  j.Mig(r, mig::Ev::kBuilt, m.id, mig::Built{kWorld, 1, ""});
  CHECK(j.h.Take() == std::vector<std::string>{std::to_string(r) + ":SWITCH", "1:ROLLBACK", "3:ROLLBACK"});
  for (uint64_t q : {uint64_t{1}, uint64_t{3}}) {
    j.Rec(q, rec::Ev::kRolledBack, rec::RecMsg{.epoch = m.recovery.epoch, .step = 12}, m.id);
  }
  j.Mig(r, mig::Ev::kSwitched, m.id, mig::Switched{12, 0, 0});
  CHECK(m.state == MigState::kDone);
  CHECK(j.h.procs[r].info.role == "worker");
  CHECK(j.h.procs[r].info.rank == 1);
}

}  // namespace

TEST_CASE("replacement lost: a new epoch spawns another, the old one's builds dropped; it completes") {
  RecJob j(3);
  Migration& first = FailRank1(j);
  const uint64_t r = 101;
  ReadyRank1(j, r, 500);
  j.Mig(r, mig::Ev::kIds, first.id, mig::Ids{{mig::IdEntry{kWorld, {}}}});
  j.h.Take();
  Fail(j, r);  // while the communicators are built
  CHECK(first.state == MigState::kFailed);
  CHECK(first.reason == "the replacement of rank 1 (process 101, pid 500) was lost: abandoned for a new epoch");
  Migration& m = j.h.migs.rbegin()->second;
  CHECK(m.id != first.id);
  CHECK(m.recovery.epoch == 2);
  CHECK(m.ranks == std::vector<int32_t>{1});
  CHECK(m.recovery.detected_by == "connection closed by peer; the replacement of rank 1 (process 101, pid 500) was lost "
                                  "in recovery " + std::to_string(first.id));
  CHECK(m.recovery.replacement == "spawned pid 501 on " + trainmover::base::HostName() + " (the coordinator's host)");
  CHECK(j.h.Take() == std::vector<std::string>{"1:ABORT", "3:ABORT", "1:FENCE", "3:FENCE"});
  CHECK(j.launched.started.size() == 2);
  // The survivors, still held, say so again under the new epoch; the step is picked anew.
  j.Rec(1, rec::Ev::kHeld, rec::RecMsg{.epoch = 1, .step = 13, .words = {12}}, first.id);
  CHECK(j.h.Take().empty());
  for (uint64_t q : {uint64_t{1}, uint64_t{3}}) j.Rec(q, rec::Ev::kHeld, rec::RecMsg{.epoch = 2, .step = 13, .words = {12}}, m.id);
  CHECK(j.h.Take() == std::vector<std::string>{"3:EXPOSE_HELD"});
  // The first replacement's late events belong to an ended recovery; the new one is known by its pid.
  j.Mig(r, mig::Ev::kBuilt, first.id, mig::Built{kWorld, 1, ""});
  j.h.procs[150] = Job::Proc(150, "joiner", -1, 1);
  j.h.procs[150].info.pid = 501;
  j.r->OnTick(j.h);
  CHECK(j.h.Take() == std::vector<std::string>{"150:TAPE"});
  ReadyRank1(j, 150, 501);
  CompleteRank1(j, m, 150);
  CHECK(m.recovery.lost_steps == 0);  // completed everywhere: step 12 (held at 13, which was in flight)
}

TEST_CASE("replacement lost: at most kReplacementAttempts replacements, then the recovery fails saying why") {
  RecJob j(3);
  FailRank1(j);
  j.h.Take();
  std::vector<uint64_t> epochs;
  for (int attempt = 1; attempt < kReplacementAttempts; ++attempt) {
    // Each replacement dies before it registers (the launcher sees it exit): a new epoch spawns the next one.
    j.launched.exited.insert(static_cast<pid_t>(499 + attempt));
    j.r->OnTick(j.h);
    const Migration& m = j.h.migs.rbegin()->second;
    epochs.push_back(m.recovery.epoch);
    CHECK(m.recovery.detected_by.find("the replacement of rank 1 (pid " + std::to_string(499 + attempt) +
                                      ") exited (status 3) before it registered") != std::string::npos);
    CHECK(j.launched.started.size() == static_cast<size_t>(attempt) + 1);
    CHECK(j.launched.stopped.empty());  // the dead one is not stopped; nothing else was spawned
    std::vector<std::string> sent = j.h.Take();
    CHECK(std::count(sent.begin(), sent.end(), "1:FENCE") == 1);
    CHECK(std::count(sent.begin(), sent.end(), "1:GIVE_UP") == 0);
  }
  CHECK(epochs == std::vector<uint64_t>{2, 3});
  j.launched.exited.insert(static_cast<pid_t>(499 + kReplacementAttempts));
  j.r->OnTick(j.h);
  const Migration& last = j.h.migs.rbegin()->second;
  CHECK(last.recovery.epoch == 3);
  CHECK(last.state == MigState::kFailed);
  CHECK(last.reason == "the replacement of rank 1 (pid 502) exited (status 3) before it registered (3 replacements tried)");
  CHECK(j.launched.started.size() == static_cast<size_t>(kReplacementAttempts));
  CHECK(j.Last("1:GIVE_UP").text == "rank 1 failed and cannot be recovered: " + last.reason);
  std::vector<std::string> sent = j.h.Take();
  CHECK(std::count(sent.begin(), sent.end(), "3:GIVE_UP") == 1);
}

TEST_CASE("replacement lost: a failed build waits for the loss behind it, else is retried; lost after SWITCH: it held "
          "the rank, recovered next") {
  RecJob k(3);
  Migration& a = FailRank1(k);
  uint64_t r = 101;
  ReadyRank1(k, r, 500);
  k.Mig(r, mig::Ev::kIds, a.id, mig::Ids{{mig::IdEntry{kWorld, {}}}});
  k.Mig(1, mig::Ev::kBuilt, a.id, mig::Built{kWorld, 0, "peer closed the connection"});  // before the loss is seen
  k.r->OnTick(k.h);
  CHECK(a.state != MigState::kFailed);
  Fail(k, r);  // the loss behind it names the new epoch
  CHECK(a.state == MigState::kFailed);
  CHECK(a.reason == "the replacement of rank 1 (process 101, pid 500) was lost: abandoned for a new epoch");
  Migration& c = k.h.migs.rbegin()->second;
  CHECK(c.recovery.epoch == 2);
  for (uint64_t q : {uint64_t{1}, uint64_t{3}}) k.Rec(q, rec::Ev::kHeld, rec::RecMsg{.epoch = 2, .step = 13, .words = {12}}, c.id);
  // A build that fails with no loss behind it: retried once kBuildFailureGraceMs passed.
  r = 102;
  ReadyRank1(k, r, 501);
  k.Mig(r, mig::Ev::kIds, c.id, mig::Ids{{mig::IdEntry{kWorld, {}}}});
  k.Mig(3, mig::Ev::kBuilt, c.id, mig::Built{kWorld, 0, "internal error"});
  k.r->OnTick(k.h);
  CHECK(c.state != MigState::kFailed);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  k.r->OnTick(k.h);
  CHECK(c.state == MigState::kFailed);
  CHECK(c.reason == "building a replacement communicator failed: internal error: abandoned for a new epoch");
  Migration& b = k.h.migs.rbegin()->second;
  CHECK(b.recovery.epoch == 3);
  CHECK(b.recovery.detected_by.find("; building a replacement communicator failed: internal error in recovery") !=
        std::string::npos);
  CHECK(k.launched.started.size() == 3);

  // Once SWITCH and ROLLBACK went out, the survivors may train with it already: it holds rank 1. The recovery
  // completes once they rolled back, and the replacement's loss is the next failure of rank 1, under a new epoch.
  for (uint64_t q : {uint64_t{1}, uint64_t{3}}) k.Rec(q, rec::Ev::kHeld, rec::RecMsg{.epoch = 3, .step = 13, .words = {12}}, b.id);
  const uint64_t r2 = 150;
  ReadyRank1(k, r2, 502);
  k.Mig(r2, mig::Ev::kIds, b.id, mig::Ids{{mig::IdEntry{kWorld, {}}}});
  k.Rec(3, rec::Ev::kHeldExposed, rec::RecMsg{.rank = 1, .step = 12, .blob = {9}});
  k.Mig(r2, mig::Ev::kVerified, b.id, mig::Built{0, 1, "ok"});
  for (uint64_t p : {uint64_t{1}, uint64_t{3}, r2}) k.Mig(p, mig::Ev::kBuilt, b.id, mig::Built{kWorld, 1, ""});
  const std::vector<std::string> out = k.h.Take();
  CHECK(std::count(out.begin(), out.end(), "150:SWITCH") == 1);
  CHECK(std::count(out.begin(), out.end(), "1:ROLLBACK") == 1);
  Fail(k, r2);
  CHECK(b.state != MigState::kFailed);
  CHECK(k.h.Take().empty());  // nothing before every survivor rolled back (a FENCE now would meet a held survivor)
  for (uint64_t q : {uint64_t{1}, uint64_t{3}}) {
    k.Rec(q, rec::Ev::kRolledBack, rec::RecMsg{.epoch = 3, .step = 12}, b.id);
  }
  CHECK(b.state == MigState::kDone);
  Migration& n = k.h.migs.rbegin()->second;
  CHECK(n.id != b.id);
  CHECK(n.rank == 1);
  CHECK(n.recovery.epoch == 4);
  CHECK(n.leaver == r2);  // the replacement is the failed process of rank 1 now
  CHECK(k.launched.started.size() == 4);  // a new replacement (the count of attempts starts again: a new failure)
  const std::vector<std::string> sent = k.h.Take();
  CHECK(std::count(sent.begin(), sent.end(), "1:FENCE") == 1);
  CHECK(std::count(sent.begin(), sent.end(), "3:FENCE") == 1);
}

TEST_CASE("standby lost while it takes the place: another standby takes it under a new epoch, then a spawned one") {
  RecJob j(3);
  AddStandby(j, 200, 0, /*any_rank=*/true);
  AddStandby(j, 201, 2, /*any_rank=*/true);
  Migration& first = FailRank1(j);
  const uint64_t took = first.joiner;
  CHECK((took == 200 || took == 201));
  const uint64_t other = took == 200 ? 201 : 200;
  j.h.Take();
  Fail(j, took);
  Migration& m2 = j.h.migs.rbegin()->second;
  CHECK(first.state == MigState::kFailed);
  CHECK(m2.recovery.epoch == 2);
  CHECK(m2.joiner == other);
  CHECK(m2.recovery.replacement.rfind("standby process " + std::to_string(other), 0) == 0);
  CHECK(j.launched.started.empty());
  CHECK(j.h.Take() == std::vector<std::string>{"1:ABORT", "3:ABORT", "1:FENCE", "3:FENCE", std::to_string(other) + ":ASSIGN",
                                               std::to_string(other) + ":MAP", std::to_string(other) + ":MAKE_IDS"});
  Fail(j, other);  // no standby left: spawned
  Migration& m3 = j.h.migs.rbegin()->second;
  CHECK(m3.recovery.epoch == 3);
  CHECK(m3.recovery.replacement == "spawned pid 500 on " + trainmover::base::HostName() + " (the coordinator's host)");
  REQUIRE(j.launched.started.size() == 1);
  CHECK(j.launched.started[0].env.back() == "TRAINMOVER_REPLACE=1");
  for (uint64_t q : {uint64_t{1}, uint64_t{3}}) j.Rec(q, rec::Ev::kHeld, rec::RecMsg{.epoch = 3, .step = 13, .words = {12}}, m3.id);
  ReadyRank1(j, 101, 500);
  CompleteRank1(j, m3, 101);
}

TEST_CASE("sandbox/leaver/kill: a migration's joiner READY while its rank is being recovered is told to exit at once") {
  // The fault matrix's cell: the leaver is killed before the migration's joiner is READY; the migration fails and a
  // recovery of rank 1 spawns its own replacement. The migration's joiner, READY next, used to be left to the
  // recovery, which ignored it (not its replacement): it waited for SWITCH forever and the job never ended.
  RecJob j(3);
  j.Snapshot(3);
  Migration& mig = j.Request({1});
  const uint64_t joiner = j.AddJoiner(1);  // registered in the sandbox (pid 1101)
  j.h.Take();
  j.h.procs[2].lost_reason = "connection closed by peer";
  j.h.procs[2].state = ProcState::kLost;
  for (Engine* e : {j.e.get(), j.r.get()}) e->OnProcessLost(j.h, 2);  // the coordinator's order
  CHECK(mig.state == MigState::kFailed);
  Migration& rec = j.h.migs.rbegin()->second;
  REQUIRE(rec.kind == kKindRecover);
  REQUIRE(j.launched.started.size() == 1);  // the recovery's own replacement: pid 500
  for (uint64_t q : {uint64_t{1}, uint64_t{3}}) {
    j.Rec(q, rec::Ev::kHeld, rec::RecMsg{.epoch = rec.recovery.epoch, .step = 13, .words = {12}}, rec.id);
  }
  j.h.Take();
  mig::Ready ready;
  ready.comms = {Job::Comm(0xB1, 1, 3)};
  ready.regions = {Region{"w", 64}};
  Event ev;
  ev.kind = static_cast<uint16_t>(mig::Ev::kReady);
  ev.body = EncodePayload(ready);
  for (Engine* e : {j.e.get(), j.r.get()}) e->OnEvent(j.h, joiner, ev);
  REQUIRE(j.h.sent.size() == 1);
  mig::Reason why;
  REQUIRE(DecodePayload(j.h.sent[0].c.body, &why));
  CHECK(why.text == "rank 1 is being recovered (recovery " + std::to_string(rec.id) +
                        "); this process is not its replacement");
  CHECK(j.h.Take() == V({"101:ABORT"}));
  CHECK_FALSE(MigTerminal(rec.state));
  // The recovery goes on with its own replacement.
  ReadyRank1(j, 150, 500);
  CHECK(j.h.Take() == V({"150:MAP", "150:MAKE_IDS"}));
  CompleteRank1(j, rec, 150);
  CHECK(rec.state == MigState::kDone);
}

// ---- where a spawned replacement runs (docs/recovery.md, "Where a spawned replacement runs")

TEST_CASE("replacement host: the failed process's own host, then spare hosts, then the coordinator's") {
  auto agents = [](std::set<std::string> on) { return [on](const std::string& host) { return on.count(host) > 0; }; };
  // Its own failure and a node agent on its host: there first, then each spare host that can, the coordinator's last.
  CHECK(ReplacementHosts("b", true, agents({"b", "s1", "s2"}), V({"s1", "s2"}), "a") == V({"b", "s1", "s2", "a"}));
  // Its host silent (no heartbeat, no answer to a probe): never there, even with a node agent (down or cut off).
  CHECK(ReplacementHosts("b", false, agents({"b", "s1"}), V({"s1", "b"}), "a") == V({"s1", "a"}));
  // No node agent on its host; a spare host without one skipped; the coordinator's host once, last.
  CHECK(ReplacementHosts("b", true, agents({"s2"}), V({"b", "s1", "a", "s2"}), "a") == V({"s2", "a"}));
  CHECK(ReplacementHosts("b", true, agents({}), {}, "a") == V({"a"}));
  // A process of the coordinator's host: there (its launcher is always there), then the spare hosts.
  CHECK(ReplacementHosts("a", true, agents({"s1"}), V({"s1"}), "a") == V({"a", "s1"}));
  CHECK(ReplacementHosts("a", false, agents({"s1"}), V({"s1"}), "a") == V({"s1", "a"}));
}

TEST_CASE("replacement host: spawned on the failed process's host by its node agent, known by the pid it reported") {
  RecJob j(3, {"spare"});
  j.launched.agents = {"h", "spare"};  // every process of the job runs on host "h"
  Migration& m = FailRank1(j);
  REQUIRE(j.launched.started.size() == 1);
  CHECK(j.launched.started[0].host == "h");
  CHECK(j.launched.started[0].from_host == "h");
  CHECK(m.host == "h");
  CHECK(m.recovery.replacement == "spawned on h (the failed process's host)");
  j.h.Take();
  // A joiner of rank 1 that is not the one its agent started is no replacement (told to exit); the one it started is
  // matched.
  ReadyRank1(j, 150, 501);
  CHECK(j.h.Take() == V({"150:ABORT"}));
  j.h.procs.erase(150);
  ReadyRank1(j, 101, 700);
  CHECK(j.h.Take() == std::vector<std::string>{"101:MAP", "101:MAKE_IDS"});
  CHECK(m.recovery.replacement == "spawned pid 700 on h (the failed process's host)");
  CompleteRank1(j, m, 101);
  CHECK(m.recovery.epoch == 1);
}

TEST_CASE("replacement host: a host whose agent cannot start it, or whose replacement ends before it registers, is "
          "passed over for the next one in the same epoch; a silent host is never chosen") {
  RecJob j(3, {"spare"});
  j.launched.agents = {"h", "spare"};
  j.launched.refuse = {"h"};  // its node agent cannot be asked: the spare host at once
  Migration& m = FailRank1(j);
  REQUIRE(j.launched.started.size() == 1);
  CHECK(j.launched.started[0].host == "spare");
  CHECK(m.host == "spare");
  CHECK(m.recovery.replacement == "spawned on spare (a spare host)");
  // The spare host's node agent could not run it (it ended before it registered): the coordinator's host, the same
  // epoch and record, no new fence.
  j.h.Take();
  j.launched.exited.insert(kRemoteChild + 500);
  j.r->OnTick(j.h);
  REQUIRE(j.launched.started.size() == 2);
  CHECK(j.launched.started[1].host == trainmover::base::HostName());
  CHECK(j.h.migs.rbegin()->second.id == m.id);
  CHECK(m.state != MigState::kFailed);
  CHECK(m.recovery.epoch == 1);
  CHECK(j.h.Take().empty());
  CHECK(m.recovery.replacement == "spawned pid 501 on " + trainmover::base::HostName() + " (the coordinator's host)");
  ReadyRank1(j, 101, 501);
  CompleteRank1(j, m, 101);

  // Rank 2 (process 3) goes silent: not on its host "h", although a node agent is there.
  j.launched.refuse.clear();
  j.Snapshot(3, 14, 1);
  j.h.procs[3].lost_reason = "no heartbeat for 10000 ms";
  j.h.procs[3].state = ProcState::kLost;
  j.r->OnProcessLost(j.h, 3);
  REQUIRE(j.launched.started.size() == 3);
  CHECK(j.launched.started[2].host == "spare");
  CHECK(j.h.migs.rbegin()->second.recovery.replacement == "spawned on spare (a spare host)");
}
