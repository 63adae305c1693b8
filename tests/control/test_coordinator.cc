// SPDX-License-Identifier: Apache-2.0
// The coordinator with real sockets: agents register and report, tmctl-style clients query, hostile
// clients are rejected without effect, lost processes are detected, and a restarted coordinator
// rebuilds its view from the agents. The coordinator runs on a thread of this process; agent_probe
// processes stand in for training processes where a process must die.
#define DOCTEST_CONFIG_IMPLEMENT
#include <arpa/inet.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/hostport.h"
#include "control/agent.h"
#include "control/client.h"
#include "control/coordinator.h"
#include "common/json.h"
#include "migration/engine.h"

extern char** environ;
using namespace trainmover::control;
using tm_tools::Json;

namespace {

// Status -> (ok, *err): the checks below quote the message.
bool Ok(const trainmover::base::Status& st, std::string* err) {
  *err = st.message();
  return st.ok();
}

std::string g_probe;  // path of agent_probe (argv[1])
const char kToken[] = "test-token-0123456789";

struct Coord {
  std::unique_ptr<Coordinator> c;
  std::thread t;
  explicit Coord(int hb_timeout_ms = 600, const std::string& listen = "127.0.0.1:0", bool engine = true,
                 std::unique_ptr<Engine> extra = nullptr) {
    Coordinator::Options o;
    o.listen = listen;
    o.metrics_listen = "127.0.0.1:0";
    o.token = kToken;
    o.heartbeat_timeout_ms = hb_timeout_ms;
    c = std::make_unique<Coordinator>(o);
    if (engine) c->AddEngine(MakeMigrationEngine());
    if (extra) c->AddEngine(std::move(extra));
    std::string err;
    REQUIRE_MESSAGE(Ok(c->Start(), &err), err);
    t = std::thread([this] { c->Run(); });
  }
  ~Coord() { Halt(); }
  void Halt() {
    if (!t.joinable()) return;
    c->Stop();
    t.join();
    c.reset();
  }
  std::string addr() const { return c->address(); }
};

Json Status(const std::string& addr) {
  Client cl;
  std::string err;
  REQUIRE_MESSAGE(Ok(cl.Connect(addr, kToken, kClientTool, 5000), &err), err);
  JsonReply r;
  REQUIRE_MESSAGE(Ok(cl.Call(MsgType::kStatusReq, StatusReq{}, MsgType::kStatusReply, &r, 5000), &err), err);
  Json j;
  REQUIRE(tm_tools::ParseJson(r.json, &j));
  return j;
}

// Polls `pred` on the status document until it holds (or 20 s: a generous bound, not a timing claim).
Json WaitStatus(const std::string& addr, const std::function<bool(const Json&)>& pred) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  Json j;
  do {
    j = Status(addr);
    if (pred(j)) return j;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  } while (std::chrono::steady_clock::now() < deadline);
  return j;
}

int CountState(const Json& st, const std::string& state) {
  int n = 0;
  for (const Json& p : st["processes"].arr) n += p["state"].Str() == state;
  return n;
}

pid_t Spawn(const std::string& addr, int rank, int world, const char* key, const char* extra = nullptr) {
  std::string r = std::to_string(rank), w = std::to_string(world);
  const char* argv[] = {g_probe.c_str(), addr.c_str(), r.c_str(), w.c_str(), key, extra, nullptr};
  pid_t pid = -1;
  setenv("TRAINMOVER_TOKEN", kToken, 1);
  REQUIRE(posix_spawn(&pid, g_probe.c_str(), nullptr, nullptr, const_cast<char**>(argv), environ) == 0);
  return pid;
}

// An agent_probe with the agent's silence timeout `silence_ms`, its log (stderr) in `log`.
pid_t SpawnQuick(const std::string& addr, int rank, int world, const char* key, int silence_ms, const std::string& log) {
  std::string r = std::to_string(rank), w = std::to_string(world), ms = std::to_string(silence_ms);
  const char* argv[] = {g_probe.c_str(), addr.c_str(), r.c_str(), w.c_str(), key, "--silence-ms", ms.c_str(), nullptr};
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid = -1;
  setenv("TRAINMOVER_TOKEN", kToken, 1);
  REQUIRE(posix_spawn(&pid, g_probe.c_str(), &fa, nullptr, const_cast<char**>(argv), environ) == 0);
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

std::string ReadFile(const std::string& path) {
  std::string got;
  if (FILE* f = fopen(path.c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) got.append(buf, n);
    fclose(f);
  }
  return got;
}

void Reap(pid_t pid) {
  kill(pid, SIGKILL);
  int st;
  waitpid(pid, &st, 0);
}

// Raw bytes to the coordinator on a fresh connection; returns what came back before it closed.
std::string RawExchange(const std::string& addr, const std::vector<uint8_t>& bytes) {
  std::string err;
  int fd = -1;
  REQUIRE(ConnectTcp(addr, 2000, &fd).ok());
  fcntl(fd, F_SETFL, 0);  // blocking, with a receive timeout
  REQUIRE(write(fd, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size()));
  std::string got;
  char buf[4096];
  timeval tv{5, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) got.append(buf, static_cast<size_t>(n));
  close(fd);
  return got;
}

// Parses the first frame of raw bytes as one sent before a session (a REJECT: HMAC with the empty key).
FrameStatus ParsePreAuth(const std::string& got, Frame* f, size_t* used) {
  const auto* p = reinterpret_cast<const uint8_t*>(got.data());
  FrameHeader h;
  FrameStatus st = PeekFrame(p, got.size(), kMaxPayload, kMacBytes, &h, used);
  return st == FrameStatus::kOk ? OpenMacFrame(p, *used, "", "", f) : st;
}

// Decodes a REJECT frame from raw bytes ("" if none).
std::string RejectReason(const std::string& got) {
  Frame f;
  size_t used;
  if (ParsePreAuth(got, &f, &used) != FrameStatus::kOk || f.type != static_cast<uint16_t>(MsgType::kReject)) {
    return "";
  }
  Reject r;
  return DecodePayload(f.payload, &r) ? r.reason : "";
}

std::string HttpGet(const std::string& addr, const std::string& path) {
  std::string err;
  int fd = -1;
  REQUIRE(ConnectTcp(addr, 2000, &fd).ok());
  fcntl(fd, F_SETFL, 0);
  std::string req = "GET " + path + " HTTP/1.0\r\n\r\n";
  REQUIRE(write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size()));
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) got.append(buf, static_cast<size_t>(n));
  close(fd);
  return got;
}

Agent::Options AgentOptions(const std::string& addr, int rank, int world, const std::string& token = kToken) {
  Agent::Options o;
  o.coordinator = addr;
  o.token = token;
  o.self = DescribeSelf("worker", rank, world, -1);
  return o;
}

std::unique_ptr<Agent> MakeAgent(const std::string& addr, int rank, int world, const std::string& token = kToken) {
  return std::make_unique<Agent>(AgentOptions(addr, rank, world, token));
}

CommCreated Comm(uint64_t key, int rank, int n, uint32_t index = 0) {
  CommCreated c;
  c.comm_key = key;
  c.lineage.kind = static_cast<uint8_t>(LineageKind::kInitRank);
  c.lineage.index = index;
  c.rank = rank;
  c.nranks = n;
  return c;
}

}  // namespace

TEST_CASE("four agents: one entry per communicator with every member, advancing steps, regions") {
  Coord co;
  std::vector<std::unique_ptr<Agent>> agents;
  for (int r = 0; r < 4; ++r) {
    agents.push_back(MakeAgent(co.addr(), r, 4));
    agents.back()->ReportCommCreated(Comm(0x1111, r, 4, 0));
    agents.back()->ReportCommCreated(Comm(0x2000 + r / 2, r % 2, 2, 1));  // two pairs
    agents.back()->ReportRegions({{"weights", 1000u + r}});
    agents.back()->Start();
  }
  for (int s = 0; s < 5; ++s) {
    for (auto& a : agents) a->ReportSafePoint(s);
  }
  Json st = WaitStatus(co.addr(), [](const Json& j) {
    if (j["processes"].arr.size() != 4 || j["communicators"].arr.size() != 3) return false;
    for (const Json& p : j["processes"].arr) {
      if (p["step"].Int() != 4) return false;
    }
    return true;
  });
  REQUIRE(st["processes"].arr.size() == 4);
  CHECK(CountState(st, "alive") == 4);
  REQUIRE(st["communicators"].arr.size() == 3);
  for (const Json& c : st["communicators"].arr) {
    CHECK(c["complete"].Bool());
    CHECK(c["members"].arr.size() == static_cast<size_t>(c["nranks"].Int()));
  }
  for (const Json& p : st["processes"].arr) {
    CHECK(p["step"].Int() == 4);
    CHECK(p["comms"].Int() == 2);
    REQUIRE(p["regions"].arr.size() == 1);
    CHECK(p["regions"].arr[0]["bytes"].Int() == 1000 + p["rank"].Int());
  }
  // Steps keep advancing.
  for (auto& a : agents) a->ReportSafePoint(9);
  st = WaitStatus(co.addr(), [](const Json& j) {
    for (const Json& p : j["processes"].arr) {
      if (p["step"].Int() != 9) return false;
    }
    return true;
  });
  for (const Json& p : st["processes"].arr) CHECK(p["step"].Int() == 9);
  // A destroyed communicator leaves the view.
  for (int r = 0; r < 4; ++r) agents[r]->ReportCommDestroyed(0x2000 + r / 2);
  st = WaitStatus(co.addr(), [](const Json& j) { return j["communicators"].arr.size() == 1; });
  CHECK(st["communicators"].arr.size() == 1);
  for (auto& a : agents) CHECK(a->connected());
  // Metrics count them.
  std::string m = HttpGet(co.c->metrics_address(), "/metrics");
  CHECK(m.find("HTTP/1.0 200 OK") == 0);
  CHECK(m.find("trainmover_processes{role=\"worker\",state=\"alive\"} 4\n") != std::string::npos);
  CHECK(m.find("trainmover_communicators 1\n") != std::string::npos);
  CHECK(HttpGet(co.c->metrics_address(), "/other").find("404") != std::string::npos);
}

TEST_CASE("wrong token: rejected, nothing revealed, nothing changed") {
  Coord co;
  auto good = MakeAgent(co.addr(), 0, 1);
  good->ReportCommCreated(Comm(0x77, 0, 1));
  good->Start();
  WaitStatus(co.addr(), [](const Json& j) { return j["communicators"].arr.size() == 1; });

  Client cl;
  std::string err;
  CHECK_FALSE(Ok(cl.Connect(co.addr(), "not-the-token", kClientTool, 5000), &err));
  CHECK(err.find("authentication failed") != std::string::npos);

  // A bad agent cannot register nor report.
  auto bad = MakeAgent(co.addr(), 5, 8, "not-the-token");
  bad->ReportCommCreated(Comm(0x99, 5, 8));
  bad->Start();
  // A raw HELLO with a forged MAC gets only a REJECT.
  Hello h;
  h.client_kind = kClientTool;
  auto frame = EncodeMacFrame(static_cast<uint16_t>(MsgType::kHello), EncodePayload(h), "guess");
  std::string got = RawExchange(co.addr(), frame);
  CHECK(RejectReason(got).find("authentication failed") != std::string::npos);
  Frame f;
  size_t used = 0;
  REQUIRE(ParsePreAuth(got, &f, &used) == FrameStatus::kOk);
  CHECK(used == got.size());  // the REJECT is all that came back
  // A STATUS request without a handshake gets only a REJECT, not the status.
  got = RawExchange(co.addr(), EncodeMacFrame(static_cast<uint16_t>(MsgType::kStatusReq), {}, kToken));
  CHECK(RejectReason(got).find("authentication required") != std::string::npos);
  CHECK(got.find("processes") == std::string::npos);

  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Json st = Status(co.addr());
  CHECK(st["processes"].arr.size() == 1);
  CHECK(st["communicators"].arr.size() == 1);
  CHECK_FALSE(bad->connected());
  bad->Stop();
}

TEST_CASE("malformed, oversized, foreign and stalled input: rejected, and the coordinator still serves") {
  Coord co;
  // Foreign protocol.
  std::string got = RawExchange(co.addr(), std::vector<uint8_t>{'G', 'E', 'T', ' ', '/', '\r', '\n', '\r', '\n'});
  CHECK(RejectReason(got).find("bad magic") != std::string::npos);
  // Oversized frame header: refused from the header, nothing more read.
  uint8_t h[kHeaderBytes];
  FrameHeader hd;
  hd.type = static_cast<uint16_t>(MsgType::kHello);
  hd.length = 512u << 20;
  EncodeHeader(hd, h);
  got = RawExchange(co.addr(), std::vector<uint8_t>(h, h + sizeof(h)));
  CHECK(RejectReason(got) == "frame too large before authentication");
  // Before authentication even a modest frame is too large (HELLO needs a few dozen bytes).
  hd.length = static_cast<uint32_t>(Connection::kMaxPreAuthPayload + 1);
  EncodeHeader(hd, h);
  got = RawExchange(co.addr(), std::vector<uint8_t>(h, h + sizeof(h)));
  CHECK(RejectReason(got) == "frame too large before authentication");
  // Another protocol version.
  hd.length = 0;
  hd.version = 7;
  EncodeHeader(hd, h);
  got = RawExchange(co.addr(), std::vector<uint8_t>(h, h + sizeof(h)));
  CHECK(RejectReason(got) == "unsupported protocol version");
  // A HELLO whose payload is garbage (but correctly MACed).
  got = RawExchange(co.addr(),
                    EncodeMacFrame(static_cast<uint16_t>(MsgType::kHello), std::vector<uint8_t>{1, 2, 3}, kToken));
  CHECK(RejectReason(got) == "malformed HELLO");
  // Authenticated, then a malformed REGISTER.
  {
    Client cl;
    std::string err;
    REQUIRE(Ok(cl.Connect(co.addr(), kToken, kClientAgent, 5000), &err));
    REQUIRE(Ok(cl.Send(MsgType::kRegister, std::vector<uint8_t>(100, 0xff), 5000), &err));
    Frame f;
    CHECK_FALSE(Ok(cl.Receive(&f, 5000), &err));
    CHECK(err.find("malformed REGISTER") != std::string::npos);
  }
  // Authenticated agent reporting before REGISTER.
  {
    Client cl;
    std::string err;
    REQUIRE(Ok(cl.Connect(co.addr(), kToken, kClientAgent, 5000), &err));
    REQUIRE(Ok(cl.Send(MsgType::kSafePoint, EncodePayload(SafePoint{1, 1}), 5000), &err));
    Frame f;
    CHECK_FALSE(Ok(cl.Receive(&f, 5000), &err));
    CHECK(err.find("REGISTER first") != std::string::npos);
  }
  // A tool sending an agent message.
  {
    Client cl;
    std::string err;
    REQUIRE(Ok(cl.Connect(co.addr(), kToken, kClientTool, 5000), &err));
    REQUIRE(Ok(cl.Send(MsgType::kHeartbeat, EncodePayload(Heartbeat{}), 5000), &err));
    Frame f;
    CHECK_FALSE(Ok(cl.Receive(&f, 5000), &err));
    CHECK(err.find("unexpected message") != std::string::npos);
  }
  // A peer that sends half a header and stalls does not hold anyone up.
  std::string err;
  int stalled = -1;
  REQUIRE(ConnectTcp(co.addr(), 2000, &stalled).ok());
  REQUIRE(write(stalled, "TCMP", 4) == 4);
  Json st = Status(co.addr());
  CHECK(st["processes"].arr.empty());
  auto a = MakeAgent(co.addr(), 0, 1);
  a->Start();
  st = WaitStatus(co.addr(), [](const Json& j) { return j["processes"].arr.size() == 1; });
  CHECK(CountState(st, "alive") == 1);
  close(stalled);
  std::string m = HttpGet(co.c->metrics_address(), "/metrics");
  CHECK(m.find("trainmover_rejected_total 0\n") == std::string::npos);
}

TEST_CASE("a killed process is marked lost (connection closed); a stopped one by heartbeat timeout") {
  Coord co(600);
  pid_t killed = Spawn(co.addr(), 0, 2, "0x5");
  pid_t stopped = Spawn(co.addr(), 1, 2, "0x5");
  Json st = WaitStatus(co.addr(), [](const Json& j) {
    return CountState(j, "alive") == 2 && j["communicators"].arr.size() == 1 &&
           j["communicators"].arr[0]["complete"].Bool();
  });
  REQUIRE(CountState(st, "alive") == 2);
  Reap(killed);
  st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "lost") == 1; });
  REQUIRE(CountState(st, "lost") == 1);
  for (const Json& p : st["processes"].arr) {
    if (p["state"].Str() == "lost") {
      CHECK(p["pid"].Int() == killed);
      // Its connection ended (EOF, or a reset when a frame was still unread in its socket when it was killed),
      // not its heartbeats.
      const std::string why = p["lost_reason"].Str();
      CHECK((why.find("closed") != std::string::npos || why.find("reset by peer") != std::string::npos));
    }
  }
  kill(stopped, SIGSTOP);  // the socket stays open: only the missing heartbeats tell
  st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "lost") == 2; });
  REQUIRE(CountState(st, "lost") == 2);
  for (const Json& p : st["processes"].arr) {
    if (p["pid"].Int() == stopped) CHECK(p["lost_reason"].Str().find("no heartbeat") != std::string::npos);
  }
  std::string m = HttpGet(co.c->metrics_address(), "/metrics");
  CHECK(m.find("trainmover_processes{role=\"worker\",state=\"lost\"} 2\n") != std::string::npos);
  CHECK(m.find("trainmover_heartbeats_missed_total 0\n") == std::string::npos);
  // It comes back when it resumes: reconnects and re-registers as the same process.
  kill(stopped, SIGCONT);
  st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "alive") == 1; });
  CHECK(CountState(st, "alive") == 1);
  CHECK(st["processes"].arr.size() == 2);
  Reap(stopped);
}

TEST_CASE("a restarted coordinator rebuilds its view from the agents") {
  auto co = std::make_unique<Coord>(2000);
  std::string addr = co->addr();
  std::vector<std::unique_ptr<Agent>> agents;
  for (int r = 0; r < 3; ++r) {
    agents.push_back(MakeAgent(addr, r, 3));
    agents.back()->ReportCommCreated(Comm(0xabc, r, 3));
    agents.back()->ReportRegions({{"w", 8}});
    agents.back()->ReportSafePoint(10);
    agents.back()->Start();
  }
  WaitStatus(addr, [](const Json& j) { return CountState(j, "alive") == 3; });
  co->Halt();
  // While it is gone, training goes on: reports are accepted and never block.
  for (int s = 11; s <= 20; ++s) {
    for (auto& a : agents) a->ReportSafePoint(s);
  }
  co.reset();
  co = std::make_unique<Coord>(2000, addr);  // same address, fresh state
  // The agents' own count of registrations too: the status can show a process alive before its agent thread read
  // the REGISTER_ACK.
  Json st = WaitStatus(addr, [&](const Json& j) {
    for (auto& a : agents) {
      if (a->connections() < 2) return false;
    }
    if (CountState(j, "alive") != 3 || j["communicators"].arr.size() != 1) return false;
    for (const Json& p : j["processes"].arr) {
      if (p["step"].Int() != 20) return false;
    }
    return true;
  });
  REQUIRE(CountState(st, "alive") == 3);
  REQUIRE(st["communicators"].arr.size() == 1);
  CHECK(st["communicators"].arr[0]["complete"].Bool());
  for (const Json& p : st["processes"].arr) {
    CHECK(p["step"].Int() == 20);
    CHECK(p["regions"].arr.size() == 1);
  }
  for (auto& a : agents) CHECK(a->connections() >= 2);
}

TEST_CASE("agent: a full ring drops safe points and counts them, the latest step still arrives") {
  Coord co;
  Agent::Options o = AgentOptions(co.addr(), 0, 1);
  o.ring_slots = 8;
  Agent a(o);
  for (int s = 0; s < 100; ++s) a.ReportSafePoint(s);  // not started: nothing drains the ring
  CHECK(a.dropped() == 92);
  CHECK(a.latest_step() == 99);
  a.Start();
  Json st = WaitStatus(co.addr(), [](const Json& j) {
    return j["processes"].arr.size() == 1 && j["processes"].arr[0]["step"].Int() == 99 &&
           j["processes"].arr[0]["dropped_reports"].Int() == 92;
  });
  REQUIRE(st["processes"].arr.size() == 1);
  CHECK(st["processes"].arr[0]["step"].Int() == 99);
  CHECK(st["processes"].arr[0]["dropped_reports"].Int() == 92);
}

TEST_CASE("migrate/cancel/timeline: validated, recorded, answered clearly until the engine exists") {
  Coord co;
  auto a = MakeAgent(co.addr(), 0, 2);
  a->ReportCommCreated(Comm(0x42, 0, 2));
  a->Start();
  auto b = MakeAgent(co.addr(), 1, 2);
  b->ReportCommCreated(Comm(0x42, 1, 2));
  b->ReportSafePoint(3);
  b->Start();
  WaitStatus(co.addr(), [](const Json& j) {
    if (CountState(j, "alive") != 2) return false;
    for (const Json& p : j["processes"].arr) {
      if (p["rank"].Int() == 1 && p["step"].Int() != 3) return false;
    }
    return true;
  });
  Client cl;
  std::string err;
  REQUIRE(Ok(cl.Connect(co.addr(), kToken, kClientTool, 5000), &err));
  MigrateReply r;
  REQUIRE(Ok(cl.Call(MsgType::kMigrateReq, MigrateReq{7, "", 0}, MsgType::kMigrateReply, &r, 5000), &err));
  CHECK_FALSE(r.accepted);
  CHECK(r.state == "refused");
  CHECK(r.message.find("no alive worker holds rank 7") != std::string::npos);
  REQUIRE(Ok(cl.Call(MsgType::kMigrateReq, MigrateReq{0, "", 0}, MsgType::kMigrateReply, &r, 5000), &err));
  CHECK(r.state == "refused");
  CHECK(r.message.find("never called tmSafePoint") != std::string::npos);
  // Accepted by the migration engine (no --spawn: it waits for a joiner), then cancelled by the operator.
  REQUIRE(Ok(cl.Call(MsgType::kMigrateReq, MigrateReq{1, "hostB", 0}, MsgType::kMigrateReply, &r, 5000), &err));
  CHECK(r.accepted);
  CHECK(r.id == 3);
  CHECK(r.state == "sandbox");
  CHECK(r.message.find("no process or node agent has registered from host 'hostB' yet") != std::string::npos);
  CancelReply c;
  REQUIRE(Ok(cl.Call(MsgType::kCancelReq, CancelReq{0}, MsgType::kCancelReply, &c, 5000), &err));
  CHECK(c.ok);
  CHECK(c.message == "migration 3 cancelled");
  REQUIRE(Ok(cl.Call(MsgType::kCancelReq, CancelReq{0}, MsgType::kCancelReply, &c, 5000), &err));
  CHECK_FALSE(c.ok);
  CHECK(c.message == "no active migration to cancel");
  REQUIRE(Ok(cl.Call(MsgType::kCancelReq, CancelReq{3}, MsgType::kCancelReply, &c, 5000), &err));
  CHECK(c.message == "migration 3 already cancelled");
  JsonReply t;
  REQUIRE(Ok(cl.Call(MsgType::kTimelineReq, TimelineReq{0}, MsgType::kTimelineReply, &t, 5000), &err));
  REQUIRE(t.ok);
  Json tj;
  REQUIRE(tm_tools::ParseJson(t.json, &tj));
  CHECK(tj["otherData"]["migration"].Int() == 3);
  bool phase = false;
  for (const Json& e : tj["traceEvents"].arr) phase |= e["ph"].Str() == "X" && e["name"].Str() == "requested";
  CHECK(phase);
  REQUIRE(Ok(cl.Call(MsgType::kTimelineReq, TimelineReq{99}, MsgType::kTimelineReply, &t, 5000), &err));
  CHECK_FALSE(t.ok);
  Json st = Status(co.addr());
  REQUIRE(st["migrations"].arr.size() == 3);
  CHECK(st["migrations"].arr[2]["host"].Str() == "hostB");
  std::string m = HttpGet(co.c->metrics_address(), "/metrics");
  CHECK(m.find("trainmover_migrations_total{outcome=\"refused\"} 2\n") != std::string::npos);
  CHECK(m.find("trainmover_migrations_total{outcome=\"cancelled\"} 1\n") != std::string::npos);
  CHECK(m.find("trainmover_migration_phase_seconds_count{phase=\"requested\"} 1\n") != std::string::npos);
}

TEST_CASE("migrate: without an engine of its kind, a request is refused and says why") {
  Coord co(600, "127.0.0.1:0", /*engine=*/false);
  Client cl;
  std::string err;
  REQUIRE(Ok(cl.Connect(co.addr(), kToken, kClientTool, 5000), &err));
  MigrateReply r;
  REQUIRE(Ok(cl.Call(MsgType::kMigrateReq, MigrateReq{0, "", 0}, MsgType::kMigrateReply, &r, 5000), &err));
  CHECK_FALSE(r.accepted);
  CHECK(r.state == "refused");
  CHECK(r.message ==
        "migration 1 refused: this coordinator has no engine for requests of kind 'migrate' (its owner installs one "
        "with Coordinator::AddEngine)");
}

// ---- faults and attacks (docs/reliability.md)

// An engine that lets a test freeze the coordinator's loop (as SIGSTOP or a deadlock would), make it throw, or
// make it send more than a peer reads.
struct TestEngine final : Engine {
  std::atomic<int> freeze_ms{0};
  std::atomic<bool> throw_on_tick{false};
  const char* kind() const override { return "test"; }
  std::string Validate(EngineHost&, const Migration&) override { return ""; }
  void OnRequest(EngineHost&, Migration&) override {}
  void OnCancel(EngineHost&, Migration&) override {}
  void OnProcessLost(EngineHost&, uint64_t) override {}
  void OnEvent(EngineHost& h, uint64_t p, const Event& e) override {
    if (e.kind == 900) throw std::out_of_range("map::at");  // what comm_info.at() once did
    if (e.kind == 901) {  // 40 MiB of commands to a peer that does not read
      Command c;
      c.kind = 7;
      c.body.assign(1000000, 0x5a);
      for (int i = 0; i < 40; ++i) h.SendCommand(p, c);
    }
  }
  void OnTick(EngineHost&) override {
    if (int ms = freeze_ms.exchange(0)) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    if (throw_on_tick.exchange(false)) throw std::runtime_error("a bug in a tick");
  }
};

TEST_CASE("a frozen coordinator is noticed by its agents within the silence timeout; they come back when it thaws") {
  auto* engine = new TestEngine;
  Coord co(600, "127.0.0.1:0", true, std::unique_ptr<Engine>(engine));  // KEEPALIVE every 150 ms
  Agent::Options o = AgentOptions(co.addr(), 0, 1);
  o.silence_timeout_ms = 400;
  Agent a(o);
  a.Start();
  WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "alive") == 1; });
  // Quiet but alive: the keepalives keep the agent connected well past its silence timeout.
  std::this_thread::sleep_for(std::chrono::milliseconds(1200));
  CHECK(a.connected());
  CHECK(a.connections() == 1);
  engine->freeze_ms = 2500;  // the loop stops: the socket stays open, nothing is sent
  const auto t0 = std::chrono::steady_clock::now();
  while (a.connected() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const auto noticed = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  CHECK_FALSE(a.connected());
  CHECK(noticed.count() >= 300);   // never before the timeout (less the last keepalive's age)
  CHECK(noticed.count() < 1500);   // the deadline: 400 ms of silence (plus the loop's 50 ms poll)
  Json st = WaitStatus(co.addr(), [&](const Json& j) { return a.connections() == 2 && CountState(j, "alive") == 1; });
  CHECK(a.connections() == 2);  // re-registered as the same process once the coordinator answered again
  CHECK(st["processes"].arr.size() == 1);
}

TEST_CASE("an exception in the coordinator costs the sender its connection, never the daemon") {
  auto* engine = new TestEngine;
  Coord co(2000, "127.0.0.1:0", true, std::unique_ptr<Engine>(engine));
  auto a = MakeAgent(co.addr(), 0, 1);
  a->Start();
  WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "alive") == 1; });
  Event e;
  e.kind = 900;
  a->SendEvent(e);
  WaitStatus(co.addr(), [&](const Json&) { return a->connections() == 2; });
  CHECK(a->connections() == 2);  // rejected, reconnected
  engine->throw_on_tick = true;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Json st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "alive") == 1; });
  CHECK(CountState(st, "alive") == 1);
  std::string m = HttpGet(co.c->metrics_address(), "/metrics");
  CHECK(m.find("trainmover_rejected_total 1\n") != std::string::npos);
}

TEST_CASE("a peer that does not read: its connection fails and it is lost, nothing is dropped silently") {
  auto* engine = new TestEngine;
  Coord co(60000, "127.0.0.1:0", true, std::unique_ptr<Engine>(engine));
  Client cl;
  std::string err;
  REQUIRE(Ok(cl.Connect(co.addr(), kToken, kClientAgent, 5000), &err));
  Register r = DescribeSelf("worker", 0, 1, -1);
  REQUIRE(Ok(cl.Send(MsgType::kRegister, EncodePayload(r), 5000), &err));
  Event e;
  e.kind = 901;
  REQUIRE(Ok(cl.Send(MsgType::kEvent, EncodePayload(e), 5000), &err));  // and never reads again
  Json st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "lost") == 1; });
  REQUIRE(CountState(st, "lost") == 1);
  CHECK(st["processes"].arr[0]["lost_reason"].Str().find("does not read") != std::string::npos);
}

namespace {

// One connection of a coordinator that answers REGISTER and then keeps sending KEEPALIVE but reads nothing more
// (its side of the link, or its reading, is stuck); tells it what the agent sent afterwards when asked.
struct DeafCoordinator {
  int listen_fd = -1;
  std::string addr;
  DeafCoordinator() { REQUIRE(ListenTcp("127.0.0.1:0", &listen_fd, &addr).ok()); }
  ~DeafCoordinator() { close(listen_fd); }
  std::unique_ptr<Connection> Accept() {
    pollfd p{listen_fd, POLLIN, 0};
    REQUIRE(poll(&p, 1, 20000) == 1);
    int fd = accept(listen_fd, nullptr, nullptr);
    REQUIRE(fd >= 0);
    return std::make_unique<Connection>(fd, Connection::Side::kServer, kToken);
  }
  // Reads up to the first frame of `type` (120 s at most: 16 MiB of small sealed frames read at a load of 25 took
  // over 20 s); the frames before it are counted in *before.
  static bool ReadUntil(Connection& c, MsgType type, Frame* out, size_t* before = nullptr) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
    while (std::chrono::steady_clock::now() < deadline && !c.failed()) {
      pollfd p{c.fd(), POLLIN, 0};
      poll(&p, 1, 50);
      const bool open = c.ReadSome();
      while (c.Next(out)) {
        if (out->type == static_cast<uint16_t>(type)) return true;
        if (before) ++*before;
      }
      c.Flush();
      if (!open) return false;
    }
    return false;
  }
  static void Ack(Connection& c) {
    RegisterAck a;
    a.process_id = 7;
    a.heartbeat_interval_ms = 100;
    c.SendMsg(MsgType::kRegisterAck, a);
    c.Flush();
  }
};

// Filling 16 MiB with safe points (about 280,000 sealed frames) is a throughput test: in the sanitized -O0 builds
// it did not fill within 90 s. There, control_wire checks the same connection behaviour (every frame whole, then
// the BYE) on one Connection.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitizedBuild = true;
#else
constexpr bool kSanitizedBuild = false;
#endif
// The double-close case closes a socket the coordinator's thread accepted, from the test's thread, on purpose:
// ThreadSanitizer reports exactly that close (a race on the descriptor) as its data race, so it runs elsewhere.
#if defined(__SANITIZE_THREAD__)
constexpr bool kThreadSanitizer = true;
#else
constexpr bool kThreadSanitizer = false;
#endif

}  // namespace

TEST_CASE("a coordinator that reads nothing of 16 MiB queued: the agent closes after a BYE saying why, nothing cut "
          "short, and registers again" * doctest::skip(kSanitizedBuild)) {
  DeafCoordinator co;
  Agent::Options o = AgentOptions(co.addr, 0, 1);
  o.silence_timeout_ms = 30000;  // keepalives keep coming: this is no silence
  o.ring_slots = 1 << 16;        // the flood below passes whole
  Agent a(o);
  a.Start();
  std::unique_ptr<Connection> first = co.Accept();
  Frame f;
  REQUIRE(DeafCoordinator::ReadUntil(*first, MsgType::kRegister, &f));
  DeafCoordinator::Ack(*first);
  while (!a.connected()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  // The process reports safe points, many (one frame each), while the coordinator keeps sending and reads nothing.
  const auto t0 = std::chrono::steady_clock::now();
  auto keepalive = t0;
  int64_t step = 0;
  while (a.connected() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(90)) {
    for (int i = 0; i < 4096; ++i) a.ReportSafePoint(++step);
    std::this_thread::yield();
    if (std::chrono::steady_clock::now() - keepalive > std::chrono::milliseconds(50)) {
      first->Send(MsgType::kKeepalive, {});
      first->Flush();
      keepalive = std::chrono::steady_clock::now();
    }
  }
  REQUIRE_FALSE(a.connected());  // it gave up on this connection: it queued Connection::kMaxQueued
  const int64_t stalled_at = step;
  // The coordinator reads again: every frame whole and in order (no REJECT of a cut frame), then the BYE saying why.
  size_t frames = 0;
  REQUIRE(DeafCoordinator::ReadUntil(*first, MsgType::kBye, &f, &frames));
  CHECK_FALSE(first->failed());
  CHECK(frames * 60 > Connection::kMaxQueued);  // safe points of about 60 bytes each: the 16 MiB were all read
  Bye bye;
  REQUIRE(DecodePayload(f.payload, &bye));
  CHECK(bye.reason == "reconnect: the peer does not read: 16 MiB queued");
  // Then it closes this connection (FIN, not a reset) and registers again on a new one, the latest step replayed.
  Frame none;
  CHECK_FALSE(DeafCoordinator::ReadUntil(*first, MsgType::kKeepalive, &none));
  CHECK(first->error().find("reset") == std::string::npos);
  std::unique_ptr<Connection> second = co.Accept();
  REQUIRE(DeafCoordinator::ReadUntil(*second, MsgType::kRegister, &f));
  DeafCoordinator::Ack(*second);
  REQUIRE(DeafCoordinator::ReadUntil(*second, MsgType::kSafePoint, &f));
  SafePoint sp;
  REQUIRE(DecodePayload(f.payload, &sp));
  CHECK(sp.step >= stalled_at);
  while (!a.connected() && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(120)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  CHECK(a.connections() == 2);
}

TEST_CASE("a flood of unauthenticated connections from one address: bounded, the job and tmctl still served") {
  Coord co(2000);
  auto a = MakeAgent(co.addr(), 0, 1);
  a->Start();
  WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "alive") == 1; });
  std::vector<int> fds;
  for (int i = 0; i < 100; ++i) {
    int fd = -1;
    REQUIRE(ConnectTcp(co.addr(), 2000, &fd).ok());
    fds.push_back(fd);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  int closed = 0;
  for (int fd : fds) {
    char b;
    closed += read(fd, &b, 1) == 0;  // non-blocking: 0 = closed by the coordinator, -1/EAGAIN = held
  }
  CHECK(closed == 100 - 64);  // the oldest ones went; 64 are held (until their HELLO deadline)
  const auto t0 = std::chrono::steady_clock::now();
  Json st = Status(co.addr());  // an authenticated tool is not counted against the flood
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(2));
  CHECK(CountState(st, "alive") == 1);
  CHECK(a->connected());
  for (int fd : fds) close(fd);
}

// The coordinator's end of the TCP connection whose local end is `client_fd` (both live in this process).
int ServerEndOf(int client_fd) {
  sockaddr_storage mine{};
  socklen_t len = sizeof(mine);
  REQUIRE(getsockname(client_fd, reinterpret_cast<sockaddr*>(&mine), &len) == 0);
  for (int fd = 3; fd < 1024; ++fd) {
    sockaddr_storage peer{};
    socklen_t plen = sizeof(peer);
    if (fd != client_fd && getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &plen) == 0 && plen == len &&
        memcmp(&peer, &mine, len) == 0) {
      return fd;
    }
  }
  return -1;
}

TEST_CASE("a socket closed under the coordinator (a double close elsewhere in its process) never takes the next "
          "connection with it" * doctest::skip(kThreadSanitizer)) {
  // tmrun hosts the coordinator next to its own threads: one closing a number twice closes a peer's socket, and
  // the kernel gives the number to the next accepted connection. The coordinator must drop the old record
  // without closing the number again, or the new connection (a tmctl status in CI) dies before HELLO_ACK.
  Coord co(60000);
  auto a = MakeAgent(co.addr(), 0, 1);
  a->Start();
  WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "alive") == 1; });
  std::string host;
  uint16_t port = 0;
  REQUIRE(trainmover::base::ParseHostPort(co.addr(), &host, &port).ok());
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(port);
  inet_pton(AF_INET, host.c_str(), &to.sin_addr);
  for (int round = 0; round < 20; ++round) {
    int fd = -1;
    REQUIRE(ConnectTcp(co.addr(), 2000, &fd).ok());
    int server_fd = -1;
    for (int i = 0; i < 200 && server_fd < 0; ++i) {  // until the coordinator accepted it
      server_fd = ServerEndOf(fd);
      if (server_fd < 0) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    REQUIRE(server_fd >= 0);
    // The next connection's socket exists before the number is freed, so that the coordinator's accept is what
    // takes the number (in tmrun it could be any file: nothing can tell then, hence the warning).
    const int next = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(next >= 0);
    close(server_fd);  // the "someone else": the number is free again
    if (round % 2) std::this_thread::sleep_for(std::chrono::milliseconds(150));  // also after a poll saw it
    REQUIRE(connect(next, reinterpret_cast<sockaddr*>(&to), sizeof(to)) == 0);
    Connection tool(next, Connection::Side::kClient, kToken);
    tool.StartHello(kClientTool);
    Frame f;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!tool.authenticated() && !tool.failed() && std::chrono::steady_clock::now() < deadline) {
      REQUIRE(tool.Flush());
      pollfd p{next, POLLIN, 0};
      if (poll(&p, 1, 50) == 1) REQUIRE_MESSAGE(tool.ReadSome(), tool.error());
      tool.Next(&f);
    }
    CHECK_MESSAGE(tool.authenticated(), "round ", round, ": ", tool.error());
    close(fd);
  }
  CHECK(CountState(Status(co.addr()), "alive") == 1);
  CHECK(a->connected());
}

TEST_CASE("REGISTER carries no secret, and a command line it cannot carry exactly is left out") {
  setenv("TRAINMOVER_TOKEN", kToken, 1);
  setenv("MY_SERVICE_API_KEY", "hunter2", 1);
  setenv("TM_TEST_PLAIN", "visible", 1);
  Register r = DescribeSelf("worker", 0, 1, -1);
  std::string all;
  for (const std::string& kv : r.env) all += kv + "\n";
  CHECK(all.find(kToken) == std::string::npos);
  CHECK(all.find("hunter2") == std::string::npos);
  CHECK(all.find("TM_TEST_PLAIN=visible\n") != std::string::npos);
  CHECK_FALSE(r.cmdline.empty());
  // A variable over kMaxString (a long PATH): no truncated copy, the whole description is left out.
  setenv("TM_TEST_LONG", std::string(kMaxString + 100, 'x').c_str(), 1);
  r = DescribeSelf("worker", 0, 1, -1);
  CHECK(r.cmdline.empty());
  CHECK(r.env.empty());
  unsetenv("TM_TEST_LONG");
  unsetenv("MY_SERVICE_API_KEY");
  unsetenv("TM_TEST_PLAIN");
}

TEST_CASE("a forked child (a data-loader worker) does not keep its parent's control connection open") {
  Coord co(60000);  // no heartbeat timeout within the test: only the connection closing can tell
  pid_t parent = Spawn(co.addr(), 0, 1, "0x5", "--fork-child");
  Json st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "alive") == 1; });
  REQUIRE(CountState(st, "alive") == 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the child was forked after registering
  const auto t0 = std::chrono::steady_clock::now();
  Reap(parent);
  st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "lost") == 1; });
  REQUIRE(CountState(st, "lost") == 1);
  CHECK(st["processes"].arr[0]["lost_reason"].Str().find("closed") != std::string::npos);
  // Seen at once, not when the child (alive 10 s, its stdio closed) ends.
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
}

TEST_CASE("the coordinator refuses a token shorter than 16 characters") {
  Coordinator::Options o;
  o.token = "short-token";
  Coordinator c(o);
  const trainmover::base::Status st = c.Start();
  CHECK_FALSE(st.ok());
  CHECK(st.message().find("at least 16 characters") != std::string::npos);
  CHECK(st.message().find("TRAINMOVER_TOKEN") != std::string::npos);
  CHECK(st.message().find("short-token") == std::string::npos);
}

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  if (argc < 2) {
    std::fprintf(stderr, "usage: test_control_coordinator AGENT_PROBE [doctest options]\n");
    return 2;
  }
  g_probe = argv[1];
  doctest::Context ctx;
  ctx.applyCommandLine(argc - 1, argv + 1);
  return ctx.run();
}

TEST_CASE("a joiner's REGISTER_ACK carries the table of the rank it replaces, in creation order") {
  Coord co;
  auto holder = MakeAgent(co.addr(), 1, 2);
  CommCreated split = Comm(0x51, 0, 1, 1);
  split.lineage.kind = static_cast<uint8_t>(LineageKind::kSplit);
  split.device = 1;
  split.blocking = 0;
  holder->ReportCommCreated(split);  // reported first, created second: the table is in creation order
  holder->ReportCommCreated(Comm(0x50, 1, 2, 0));
  holder->Start();
  WaitStatus(co.addr(), [](const Json& j) { return j["communicators"].arr.size() == 2; });

  std::mutex mu;
  std::vector<RegisterAck> acks;
  auto joiner = [&](int replace) {
    Agent::Options o;
    o.coordinator = co.addr();
    o.token = kToken;
    o.self = DescribeSelf("joiner", -1, -1, replace);
    auto a = std::make_unique<Agent>(o);
    a->SetRegisteredHandler([&](const RegisterAck& ack) {
      std::lock_guard<std::mutex> lock(mu);
      acks.push_back(ack);
    });
    a->Start();
    return a;
  };
  auto wait_acks = [&](size_t n) {
    for (int i = 0; i < 500; ++i) {
      {
        std::lock_guard<std::mutex> lock(mu);
        if (acks.size() >= n) return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  };
  auto j1 = joiner(1);
  REQUIRE(wait_acks(1));
  {
    std::lock_guard<std::mutex> lock(mu);
    CHECK(acks[0].has_table == 1);
    REQUIRE(acks[0].replaced_comms.size() == 2);
    CHECK(acks[0].replaced_comms[0].comm_key == 0x50);
    CHECK(acks[0].replaced_comms[0].nranks == 2);
    CHECK(acks[0].replaced_comms[1].comm_key == 0x51);
    CHECK(acks[0].replaced_comms[1].nranks == 1);
    CHECK(acks[0].replaced_comms[1].device == 1);
    CHECK(acks[0].replaced_comms[1].blocking == 0);
  }
  auto j7 = joiner(7);  // no process holds rank 7: no table
  REQUIRE(wait_acks(2));
  std::lock_guard<std::mutex> lock(mu);
  CHECK(acks[1].has_table == 0);
  CHECK(acks[1].replaced_comms.empty());
}

TEST_CASE("a report with an impossible size is ignored; the process stays and its other reports count") {
  Coord co;
  auto a = MakeAgent(co.addr(), 0, 2);
  CommCreated unsized = Comm(0x60, 0, 2, 1);
  unsized.nranks = -1;  // what a non-blocking Split used to report before its size was known
  a->ReportCommCreated(unsized);
  a->ReportCommCreated(Comm(0x61, 0, 2, 0));
  a->Start();
  Json st = WaitStatus(co.addr(), [](const Json& j) { return j["communicators"].arr.size() == 1; });
  REQUIRE(st["communicators"].arr.size() == 1);
  CHECK(st["communicators"].arr[0]["key"].Str() == "0x0000000000000061");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(a->connected());
  CHECK(a->connections() == 1);  // never dropped, so never replayed
}

// Every OnProcessLost the coordinator gives its engines: which process, and whether it was only reconnecting
// (ProcessRec::returning_by_ns) or lost for good.
struct LossRecorder final : Engine {
  struct Loss {
    uint64_t process;
    bool returning;
    std::string reason;
  };
  mutable std::mutex mu;
  std::vector<Loss> losses;
  std::atomic<int> freeze_ms{0};
  void OnTick(EngineHost&) override {
    if (int ms = freeze_ms.exchange(0)) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
  }
  const char* kind() const override { return "record-losses"; }
  std::string Validate(EngineHost&, const Migration&) override { return "records only"; }
  void OnRequest(EngineHost&, Migration&) override {}
  void OnCancel(EngineHost&, Migration&) override {}
  void OnEvent(EngineHost&, uint64_t, const Event&) override {}
  void OnProcessLost(EngineHost& h, uint64_t p) override {
    const ProcessRec* pr = h.FindProcess(p);
    std::lock_guard<std::mutex> lk(mu);
    losses.push_back({p, pr && pr->returning_by_ns != 0, pr ? pr->lost_reason : ""});
  }
  std::vector<Loss> Of(uint64_t p) const {
    std::lock_guard<std::mutex> lk(mu);
    std::vector<Loss> out;
    for (const Loss& l : losses) {
      if (l.process == p) out.push_back(l);
    }
    return out;
  }
};

// The id the coordinator gave the process with this pid (0: none).
uint64_t IdOfPid(const Json& st, int64_t pid) {
  for (const Json& p : st["processes"].arr) {
    if (p["pid"].Int() == pid) return static_cast<uint64_t>(p["id"].Int());
  }
  return 0;
}

TEST_CASE("a process that gives up on a frozen coordinator says it will reconnect: lost, never failed; one that "
          "then dies is declared failed when its grace ends") {
  auto* losses = new LossRecorder;
  Coord co(600, "127.0.0.1:0", true, std::unique_ptr<Engine>(losses));  // KEEPALIVE every 150 ms
  Agent::Options o = AgentOptions(co.addr(), 0, 2);
  o.silence_timeout_ms = 400;
  Agent live(o);
  live.Start();
  char tmpl[] = "/tmp/tm-reconnect-XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  const std::string log = std::string(tmpl) + "/probe.log";
  pid_t dies = SpawnQuick(co.addr(), 1, 2, "0x9", 400, log);
  Json st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "alive") == 2; });
  REQUIRE(CountState(st, "alive") == 2);
  const uint64_t live_id = live.process_id(), dies_id = IdOfPid(st, dies);
  REQUIRE(dies_id != 0);
  losses->freeze_ms = 4000;  // the loop stops: nothing is read, nothing sent
  // Both agents give up on the silent connection (BYE "reconnect" waits in the frozen coordinator's socket buffer);
  // then one of the two processes is killed before the coordinator could hear it come back.
  const auto t0 = std::chrono::steady_clock::now();
  while (ReadFile(log).find("unreachable (no word from the coordinator") == std::string::npos &&
         std::chrono::steady_clock::now() - t0 < std::chrono::seconds(3)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  REQUIRE_MESSAGE(ReadFile(log).find("unreachable (no word from the coordinator") != std::string::npos, ReadFile(log));
  Reap(dies);
  // After the thaw: the live process is back as itself, the other is declared lost for good once its grace (5 s: the
  // heartbeat timeout, at least 5 s) has passed since its BYE was read (the live one's heartbeats are the proof that
  // the coordinator hears the job).
  st = WaitStatus(co.addr(), [&](const Json& j) {
    for (const Json& p : j["processes"].arr) {
      if (static_cast<uint64_t>(p["id"].Int()) == dies_id &&
          p["lost_reason"].Str().find("after it said it would reconnect") == std::string::npos) {
        return false;
      }
    }
    return live.connections() >= 2 && CountState(j, "alive") == 1;
  });
  CHECK(live.connections() >= 2);  // 2; more when a loaded machine starved the coordinator past 750 ms before
  CHECK(live.process_id() == live_id);
  CHECK(st["processes"].arr.size() == 2);
  for (const Json& p : st["processes"].arr) {
    if (static_cast<uint64_t>(p["id"].Int()) == live_id) CHECK(p["state"].Str() == "alive");
    if (static_cast<uint64_t>(p["id"].Int()) == dies_id) {
      CHECK(p["state"].Str() == "lost");
      CHECK(p["lost_reason"].Str().find("no heartbeat for 5000 ms after it said it would reconnect") !=
            std::string::npos);
    }
  }
  // What the engines were told: the live process only ever "reconnecting" (a migration aborts, no recovery starts);
  // the dead one "reconnecting", then lost for good.
  const std::vector<LossRecorder::Loss> of_live = losses->Of(live_id), of_dead = losses->Of(dies_id);
  REQUIRE(of_live.size() >= 1);
  for (const LossRecorder::Loss& l : of_live) {
    CHECK(l.returning);
    CHECK(l.reason.find("reconnecting") != std::string::npos);
  }
  REQUIRE(of_dead.size() == 2);
  CHECK(of_dead[0].returning);
  CHECK_FALSE(of_dead[1].returning);
  std::remove(log.c_str());
  rmdir(tmpl);
}

TEST_CASE("a coordinator that hears no process declares none failed; silence is blamed once another is heard") {
  auto* losses = new LossRecorder;
  Coord co(600, "127.0.0.1:0", true, std::unique_ptr<Engine>(losses));  // KEEPALIVE every 150 ms
  pid_t a = Spawn(co.addr(), 0, 2, "0x11"), b = Spawn(co.addr(), 1, 2, "0x11");
  Json st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "alive") == 2; });
  REQUIRE(CountState(st, "alive") == 2);
  const uint64_t a_id = IdOfPid(st, a), b_id = IdOfPid(st, b);
  // Both silent at once, for four heartbeat timeouts: what a coordinator whose own link is down sees. Nobody is
  // declared failed (the old rule killed both, one after the other).
  kill(a, SIGSTOP);
  kill(b, SIGSTOP);
  std::this_thread::sleep_for(std::chrono::milliseconds(2400));
  st = Status(co.addr());
  CHECK(CountState(st, "alive") == 2);
  CHECK(losses->Of(a_id).empty());
  CHECK(losses->Of(b_id).empty());
  kill(a, SIGCONT);
  kill(b, SIGCONT);
  st = WaitStatus(co.addr(), [](const Json& j) {
    int fresh = 0;  // heard since the resume
    for (const Json& p : j["processes"].arr) fresh += p["state"].Str() == "alive" && p["heartbeat_age_ms"].Int() < 300;
    return fresh == 2;
  });
  CHECK(CountState(st, "alive") == 2);
  CHECK(st["processes"].arr.size() == 2);
  // An agent may have given up on its side meanwhile (its own silence timeout is far longer here): then it said so.
  for (uint64_t id : {a_id, b_id}) {
    for (const LossRecorder::Loss& l : losses->Of(id)) CHECK(l.returning);
  }
  // One silent while the other is heard: that one is declared, by its heartbeats, as before.
  kill(b, SIGSTOP);
  st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "lost") == 1; });
  REQUIRE(CountState(st, "lost") == 1);
  for (const Json& p : st["processes"].arr) {
    if (p["state"].Str() == "lost") {
      CHECK(static_cast<uint64_t>(p["id"].Int()) == b_id);
      CHECK(p["lost_reason"].Str().find("no heartbeat") != std::string::npos);
    }
  }
  CHECK_FALSE(losses->Of(b_id).back().returning);
  kill(b, SIGCONT);
  Reap(a);
  Reap(b);
}

TEST_CASE("a connection that ends while the coordinator hears nobody is a reconnection until its grace runs out") {
  // After a cut of the coordinator's host, an agent that gave up on the silent connection closed it and its BYE
  // "reconnect" was lost with the link; the close (a reset, answering the held KEEPALIVEs) reaches the coordinator
  // first. A process killed then is still declared, one return grace later.
  auto* losses = new LossRecorder;
  Coord co(600, "127.0.0.1:0", true, std::unique_ptr<Engine>(losses));
  pid_t a = Spawn(co.addr(), 0, 2, "0x12"), b = Spawn(co.addr(), 1, 2, "0x12");
  Json st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "alive") == 2; });
  REQUIRE(CountState(st, "alive") == 2);
  const uint64_t a_id = IdOfPid(st, a);
  kill(a, SIGSTOP);
  kill(b, SIGSTOP);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // past the 600 ms timeout: nobody heard
  Reap(a);                                                        // its connection ends, no BYE
  st = WaitStatus(co.addr(), [](const Json& j) { return CountState(j, "lost") == 1; });
  REQUIRE(losses->Of(a_id).size() == 1);
  CHECK(losses->Of(a_id)[0].returning);
  CHECK(losses->Of(a_id)[0].reason.find("just after this coordinator heard nobody") != std::string::npos);
  kill(b, SIGCONT);  // heard again; a never registers again: lost for good once its grace ran out
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (losses->Of(a_id).size() < 2 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE(losses->Of(a_id).size() == 2);
  CHECK_FALSE(losses->Of(a_id)[1].returning);
  CHECK(losses->Of(a_id)[1].reason.find("after it said it would reconnect") != std::string::npos);
  Reap(b);
}
