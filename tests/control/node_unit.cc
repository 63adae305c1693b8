// SPDX-License-Identifier: Apache-2.0
// The coordinator's directory of node agents and the processes they started (lib/control/node.h), against a fake
// coordinator: which agent serves a host, a start recorded and told, its end learnt from the agent's events or its
// loss, and the ended entries forgotten after their grace so that a long job does not keep one per process.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <cstdint>
#include <string>

#include "control/node.h"
#include "control/wire.h"
#include "fake_engine_host.h"
#include "migration/engine.h"

using namespace trainmover::control;

namespace {

// A fake coordinator with an alive node agent (process 10) on host "b".
struct World {
  testing::FakeEngineHost h;
  node::Directory dir;
  World() {
    ProcessRec& agent = h.AddWorker(10, -1, "b");
    agent.info.role = node::kRole;
    dir.OnTick(h);
  }
  void Report(node::Ev kind, uint64_t id, int32_t pid, const std::string& how = "") {
    dir.OnEvent(h, 10, node::MakeChildEvent(kind, node::Child{id, pid, how}));
  }
};

}  // namespace

TEST_CASE("a process started through a node agent: told, known by its pid, its end learnt once") {
  World w;
  std::string err;
  CHECK(w.dir.Start("a", node::Spawn{}, &err) == 0);  // no agent on host a
  CHECK(err.find("no node agent on host a") != std::string::npos);
  const uint64_t id = w.dir.Start("b", node::Spawn{}, &err);
  REQUIRE(id > 0);
  REQUIRE(w.h.sent.size() == 1);
  CHECK(w.h.sent[0].to == 10);
  std::string how;
  CHECK_FALSE(w.dir.Exited(id, &how));
  w.Report(node::Ev::kSpawned, id, 4242);
  CHECK(w.dir.Is(id, "b", 4242));
  CHECK_FALSE(w.dir.Is(id, "a", 4242));
  CHECK_FALSE(w.dir.Exited(id, &how));
  w.Report(node::Ev::kExited, id, 4242, "status 3");
  CHECK(w.dir.Exited(id, &how));
  CHECK(how == "status 3");
  CHECK(w.dir.known() == 0);  // asked and answered: forgotten at once
}

TEST_CASE("ended processes nobody asks about are forgotten after the grace, running ones never") {
  World w;
  std::string err;
  const uint64_t ended = w.dir.Start("b", node::Spawn{}, &err);
  const uint64_t running = w.dir.Start("b", node::Spawn{}, &err);
  w.Report(node::Ev::kSpawned, ended, 100);
  w.Report(node::Ev::kSpawned, running, 101);
  w.Report(node::Ev::kExited, ended, 100, "signal 9");
  const uint64_t t0 = 1'000'000'000ull;
  w.dir.ForgetEnded(t0);  // first seen ended now
  CHECK(w.dir.known() == 2);
  w.dir.ForgetEnded(t0 + node::Directory::kForgetEndedNs - 1);
  CHECK(w.dir.known() == 2);
  std::string how;
  w.dir.ForgetEnded(t0 + node::Directory::kForgetEndedNs);
  CHECK(w.dir.known() == 1);
  CHECK(w.dir.Exited(ended, &how));  // an id no longer known reads as ended
  CHECK_FALSE(w.dir.Exited(running, &how));
  w.dir.ForgetEnded(t0 + 100 * node::Directory::kForgetEndedNs);
  CHECK(w.dir.known() == 1);
  CHECK(w.dir.Is(running, "b", 101));
}

TEST_CASE("a lost node agent ends what it started, with the reason; events from another process are ignored") {
  World w;
  std::string err;
  const uint64_t id = w.dir.Start("b", node::Spawn{}, &err);
  w.dir.OnEvent(w.h, 11, node::MakeChildEvent(node::Ev::kExited, node::Child{id, 7, "status 0"}));
  std::string how;
  CHECK_FALSE(w.dir.Exited(id, &how));
  w.dir.OnProcessLost(w.h, 10);
  CHECK(w.dir.Exited(id, &how));
  CHECK(how == "its node agent was lost");
}

// A node agent's reconnection (the coordinator stopped or cut off for longer than the agent's silence timeout) used to
// end what it started: a recovery took its replacement for dead, spawned another elsewhere, and told the first to exit.
TEST_CASE("a node agent that reconnects keeps what it started; lost for good, they end") {
  World w;
  std::string err;
  const uint64_t id = w.dir.Start("b", node::Spawn{}, &err);
  w.Report(node::Ev::kSpawned, id, 4242);
  ProcessRec& agent = w.h.procs.at(10);
  agent.state = ProcState::kLost;
  agent.returning_by_ns = 1;  // BYE "reconnect"
  w.dir.OnProcessLost(w.h, 10);
  std::string how;
  CHECK_FALSE(w.dir.Exited(id, &how));
  CHECK(w.dir.Is(id, "b", 4242));
  SUBCASE("back: its child's end is learnt from it") {
    agent.state = ProcState::kAlive;
    agent.returning_by_ns = 0;
    w.dir.OnProcessBack(w.h, 10);
    w.Report(node::Ev::kExited, id, 4242, "status 0");
    CHECK(w.dir.Exited(id, &how));
    CHECK(how == "status 0");
  }
  SUBCASE("not back within the grace: lost for good, its child ended") {
    agent.returning_by_ns = 0;
    w.dir.OnProcessLost(w.h, 10);
    CHECK(w.dir.Exited(id, &how));
    CHECK(how == "its node agent was lost");
  }
}

TEST_CASE("a spawn request keeps the host-local variables only when the environment is of that host") {
  // The round trip of the flag, and a value other than 0 or 1 refused.
  node::Spawn sp;
  sp.argv = {"train"};
  sp.env = {"CUDA_VISIBLE_DEVICES=3"};
  sp.keep_host_env = true;
  Writer w;
  sp.Encode(w);
  std::vector<uint8_t> bytes = w.Take();
  node::Spawn back;
  Reader r(bytes.data(), bytes.size());
  REQUIRE(back.Decode(r));
  CHECK(back.keep_host_env);
  CHECK(back.env == sp.env);
  bytes.back() = 2;
  Reader bad(bytes.data(), bytes.size());
  CHECK_FALSE(back.Decode(bad));

  // Through the coordinator's launcher: a failed process of host b replaced on b keeps its devices (they are free);
  // one of host a started on b takes b's own.
  World wd;
  std::unique_ptr<JoinerLauncher> launcher = MakeNodeLauncher(&wd.dir, MakeProcessLauncher());
  for (const char* from : {"b", "a"}) {
    JoinerLauncher::Spec spec;
    spec.argv = {"train"};
    spec.env = {"CUDA_VISIBLE_DEVICES=3"};
    spec.host = "b";
    spec.from_host = from;
    spec.log = "joiner.log";
    std::string log, err;
    REQUIRE(launcher->Start(spec, &log, &err) >= kRemoteChild);
    CHECK(log == "b:joiner.log");
    const Command& c = wd.h.sent.back().c;
    node::Spawn told;
    Reader rc(c.body.data(), c.body.size());
    REQUIRE(told.Decode(rc));
    CHECK(told.keep_host_env == (std::string(from) == "b"));
  }
}
