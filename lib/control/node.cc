// SPDX-License-Identifier: Apache-2.0
#include "node.h"

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

namespace trainmover::control::node {

void Spawn::Encode(Writer& w) const {
  w.U64(id);
  w.StrList(argv);
  w.StrList(env);
  w.Str(dir);
  w.Str(log);
  w.U8(keep_host_env ? 1 : 0);
}

bool Spawn::Decode(Reader& r) {
  id = r.U64();
  argv = r.StrList();
  env = r.StrList();
  dir = r.Str();
  log = r.Str();
  const uint8_t keep = r.U8();
  keep_host_env = keep == 1;
  return keep <= 1 && r.AtEnd() && !argv.empty() && !argv[0].empty();
}

void Child::Encode(Writer& w) const {
  w.U64(id);
  w.U32(static_cast<uint32_t>(pid));
  w.Str(how);
}

bool Child::Decode(Reader& r) {
  id = r.U64();
  pid = static_cast<int32_t>(r.U32());
  how = r.Str(256);
  return r.AtEnd();
}

namespace {
template <typename T>
std::vector<uint8_t> Body(const T& m) {
  Writer w;
  m.Encode(w);
  return w.Take();
}
}  // namespace

std::vector<std::string> WithThisHostsEnv(const std::vector<std::string>& env) {
  std::vector<std::string> out;
  for (const std::string& kv : env) {
    bool local = false;
    for (const char* name : kHostLocalEnv) local |= kv.rfind(std::string(name) + "=", 0) == 0;
    if (!local) out.push_back(kv);
  }
  for (const char* name : kHostLocalEnv) {
    if (const char* v = getenv(name)) out.push_back(std::string(name) + "=" + v);
  }
  return out;
}

Command MakeSpawn(const Spawn& s) { return Command{static_cast<uint16_t>(Cmd::kSpawn), 0, Body(s)}; }

Command MakeStop(uint64_t id) { return Command{static_cast<uint16_t>(Cmd::kStop), 0, Body(Child{id, 0, ""})}; }

Event MakeChildEvent(Ev kind, const Child& c) { return Event{static_cast<uint16_t>(kind), 0, Body(c)}; }

void Directory::OnEvent(EngineHost& h, uint64_t process, const Event& e) {
  host_ = &h;
  if (e.kind != static_cast<uint16_t>(Ev::kSpawned) && e.kind != static_cast<uint16_t>(Ev::kExited)) return;
  node::Child c;
  Reader r(e.body.data(), e.body.size());
  if (!c.Decode(r)) return;
  auto it = children_.find(c.id);
  if (it == children_.end() || it->second.agent != process) return;  // not one this agent was asked for
  it->second.pid = c.pid;
  if (e.kind == static_cast<uint16_t>(Ev::kExited) || c.pid == 0) {
    it->second.ended = true;
    it->second.how = c.how;
  }
}

void Directory::OnProcessLost(EngineHost& h, uint64_t process) {
  host_ = &h;
  // A node agent that said it reconnects (BYE "reconnect", or a new connection replaced its old one) is not gone: what
  // it started runs on, and their ends come once it is back (its agent queues them). Lost for good (the coordinator's
  // grace ran out: this is called again), they are ended.
  if (const ProcessRec* agent = h.FindProcess(process); agent && agent->returning_by_ns) return;
  for (auto& [id, c] : children_) {
    if (c.agent == process && !c.ended) {
      c.ended = true;
      c.how = "its node agent was lost";
    }
  }
}

void Directory::OnTick(EngineHost& h) {
  host_ = &h;
  // std::chrono's steady clock (CLOCK_MONOTONIC): this file is also built into the parser's fuzz target, alone.
  ForgetEnded(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count()));
}

void Directory::ForgetEnded(uint64_t now_ns) {
  for (auto it = children_.begin(); it != children_.end();) {
    Child& c = it->second;
    if (c.ended && c.ended_ns == 0) c.ended_ns = now_ns;
    if (c.ended && now_ns - c.ended_ns >= kForgetEndedNs) {
      it = children_.erase(it);
    } else {
      ++it;
    }
  }
}

uint64_t Directory::AgentOn(const std::string& host) const {
  if (!host_) return 0;
  for (const auto& [id, p] : host_->processes()) {
    if (p.info.role == kRole && p.info.host == host && p.state == ProcState::kAlive) return id;
  }
  return 0;
}

uint64_t Directory::Start(const std::string& host, Spawn s, std::string* err) {
  const uint64_t agent = AgentOn(host);
  if (agent == 0) {
    *err = "no node agent on host " + host + " (start `tmrun --node --master ADDR:PORT` there)";
    return 0;
  }
  s.id = next_id_++;
  Command c = MakeSpawn(s);
  if (c.body.size() > kMaxPayload - 64) {  // room for the COMMAND's own header
    *err = "the command line and environment do not fit one frame";
    return 0;
  }
  if (!host_->SendCommand(agent, c)) {
    *err = "the node agent on host " + host + " is not connected";
    return 0;
  }
  children_[s.id] = Child{agent, 0, false, 0, ""};
  return s.id;
}

bool Directory::Exited(uint64_t id, std::string* how) {
  auto it = children_.find(id);
  if (it == children_.end()) return true;
  if (!it->second.ended) return false;
  *how = it->second.how;
  children_.erase(it);
  return true;
}

bool Directory::Is(uint64_t id, const std::string& host, uint32_t pid) const {
  auto it = children_.find(id);
  if (it == children_.end() || it->second.pid <= 0 || static_cast<uint32_t>(it->second.pid) != pid || !host_) {
    return false;
  }
  const ProcessRec* agent = host_->FindProcess(it->second.agent);
  return agent && agent->info.host == host;
}

void Directory::Stop(uint64_t id) {
  auto it = children_.find(id);
  if (it != children_.end() && !it->second.ended && host_) host_->SendCommand(it->second.agent, MakeStop(id));
}

}  // namespace trainmover::control::node
