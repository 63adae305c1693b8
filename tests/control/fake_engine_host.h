// SPDX-License-Identifier: Apache-2.0
// fake_engine_host.h: what the coordinator does for its engines and monitors (control::EngineHost), in memory,
// for unit tests that drive an engine or the straggler monitor without processes or sockets
// (tests/migration/engine_unit.cc, tests/control/straggler_unit.cc). Commands are recorded, not sent; phases are
// stamped with a counter; every migration state transition is recorded in order (none after a terminal one, as
// the coordinator does).
#ifndef TRAINMOVER_TESTS_CONTROL_FAKE_ENGINE_HOST_H_
#define TRAINMOVER_TESTS_CONTROL_FAKE_ENGINE_HOST_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "control/coordinator.h"

namespace trainmover::control::testing {

class FakeEngineHost : public EngineHost {
 public:
  // A command as the fake saw it.
  struct Sent {
    uint64_t to;
    Command c;
  };

  std::map<uint64_t, ProcessRec> procs;
  std::map<uint64_t, CommRec> comm_recs;
  std::map<uint64_t, Migration> migs;
  std::vector<Sent> sent;
  std::vector<MigState> states;  // every transition, in order
  uint64_t clock = 1;

  // An alive worker holding `rank` on `host`.
  ProcessRec& AddWorker(uint64_t id, int32_t rank, const std::string& host = "h0") {
    ProcessRec& p = procs[id];
    p.id = id;
    p.state = ProcState::kAlive;
    p.info.role = "worker";
    p.info.rank = rank;
    p.info.host = host;
    return p;
  }

  bool SendCommand(uint64_t process, const Command& c) override {
    auto it = procs.find(process);
    if (it == procs.end() || it->second.state != ProcState::kAlive) return false;
    sent.push_back(Sent{process, c});
    return true;
  }
  // Marks it lost; the test hands it to the engines' OnProcessLost itself (`declared` lists them).
  void DeclareLost(uint64_t process, const std::string& why) override {
    auto it = procs.find(process);
    if (it == procs.end() || (it->second.state != ProcState::kAlive && !it->second.returning_by_ns)) return;
    it->second.returning_by_ns = 0;
    it->second.state = ProcState::kLost;
    it->second.lost_reason = why;
    declared.push_back(process);
  }
  std::vector<uint64_t> declared;
  void SetMember(uint64_t key, int32_t rank, uint64_t process) override { comm_recs[key].members[rank] = process; }
  void SetMigState(Migration& m, MigState s, const std::string& reason) override {
    if (MigTerminal(m.state)) return;
    m.state = s;
    if (!reason.empty()) m.reason = reason;
    states.push_back(s);
    if (MigTerminal(s)) {
      for (PhaseSpan& p : m.phases) {
        if (!p.end_ns) p.end_ns = clock;
      }
    }
  }
  void BeginPhase(Migration& m, uint64_t process, const std::string& phase) override {
    m.phases.push_back(PhaseSpan{process, phase, clock++, 0});
  }
  void EndPhase(Migration& m, uint64_t process, const std::string& phase) override {
    for (auto it = m.phases.rbegin(); it != m.phases.rend(); ++it) {
      if (it->process == process && it->phase == phase && !it->end_ns) {
        it->end_ns = clock++;
        return;
      }
    }
  }
  ProcessRec* FindProcess(uint64_t id) override {
    auto it = procs.find(id);
    return it == procs.end() ? nullptr : &it->second;
  }
  ProcessRec* FindProcessByRank(int32_t rank) override {
    for (auto& [id, p] : procs) {
      if (p.state == ProcState::kAlive && !p.fenced && p.info.role == "worker" && p.info.rank == rank) return &p;
    }
    return nullptr;
  }
  const std::map<uint64_t, ProcessRec>& processes() const override { return procs; }
  const std::map<uint64_t, CommRec>& comms() const override { return comm_recs; }
  // id 0: the latest.
  Migration* FindMigration(uint64_t id) override {
    if (migs.empty()) return nullptr;
    if (id == 0) return &migs.rbegin()->second;
    auto it = migs.find(id);
    return it == migs.end() ? nullptr : &it->second;
  }
  const std::map<uint64_t, Migration>& migrations() const override { return migs; }
  Migration& NewMigration(const std::string& kind, int32_t rank) override {
    Migration m;
    m.id = migs.empty() ? 1 : migs.rbegin()->first + 1;
    m.kind = kind;
    m.rank = rank;
    m.ranks = {rank};
    return migs[m.id] = m;
  }

  // Whether the coordinator-wide phase `name` (process 0) of `m` is open.
  bool PhaseOpen(const Migration& m, const std::string& name) const {
    for (const PhaseSpan& p : m.phases) {
      if (p.process == 0 && p.phase == name && !p.end_ns) return true;
    }
    return false;
  }
};

}  // namespace trainmover::control::testing

#endif  // TRAINMOVER_TESTS_CONTROL_FAKE_ENGINE_HOST_H_
