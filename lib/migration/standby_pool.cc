// SPDX-License-Identifier: Apache-2.0
// The coordinator's general standbys: standby_pool.h says what the pool does, docs/recovery.md why.
#include "standby_pool.h"

#include <cinttypes>

#include "base/log.h"
#include "engine.h"

namespace trainmover::control {

void StandbyPool::OnEvent(EngineHost&, ProcessRec& from, const Event& e) {
  standby::Ready r;
  if (e.kind != static_cast<uint16_t>(standby::Ev::kReady) || from.info.role != "standby") return;
  if (!DecodePayload(e.body, &r)) {
    TM_WARN(kLogMigration, "coordinator: malformed STANDBY_READY from process %" PRIu64 "; it is not used", from.id);
    return;
  }
  TM_INFO(kLogMigration,
          "coordinator: standby process %" PRIu64 " (pid %u) ready, warmed up as rank %d; %s, %zu communicator(s)",
          from.id, from.info.pid, r.warm_rank, r.follows_rank ? "reads its rank through tmRank" : "fixed rank",
          r.sandbox.comms.size());
  from.standby = ProcessRec::StandbyView{true, r.follows_rank != 0};
  ready_[from.id] = std::move(r);
}

void StandbyPool::OnProcessLost(uint64_t process) { ready_.erase(process); }

void StandbyPool::OnTick(EngineHost& h) {
  bool alive_worker = false;
  for (const auto& [id, p] : h.processes()) {
    if (p.info.role != "worker") continue;
    workers_seen_ = true;
    alive_worker |= p.state == ProcState::kAlive;
  }
  for (const auto& [id, m] : h.migrations()) alive_worker |= !MigTerminal(m.state);  // a rank is changing hands
  if (!workers_seen_ || alive_worker) return;
  for (const auto& [id, p] : h.processes()) {
    if (p.info.role != "standby" || p.state != ProcState::kAlive || dismissed_.count(id)) continue;
    dismissed_.insert(id);
    ready_.erase(id);
    h.SendCommand(id, standby::Make(standby::Cmd::kDismiss, 0, mig::Reason{"the job has ended (no worker left)"}));
  }
}

std::optional<StandbyPool::Pick> StandbyPool::Take(EngineHost& h, const ProcessRec& dead,
                                                   const std::vector<const CommCreated*>& dead_comms,
                                                   std::string* why) {
  const int32_t rank = dead.info.rank;
  std::string first_reason;
  for (const bool any_rank : {false, true}) {
    for (const auto& [id, r] : ready_) {
      const ProcessRec* p = h.FindProcess(id);
      if (!p || p->state != ProcState::kAlive || p->info.role != "standby") continue;
      const std::string who = "standby process " + std::to_string(id) + " (pid " + std::to_string(p->info.pid) +
                              ", warmed up as rank " + std::to_string(r.warm_rank) + ")";
      if (any_rank == (r.warm_rank == rank)) continue;  // each standby is tried in one round only
      std::string diff;
      if (any_rank && !r.follows_rank) diff = "its program does not read its rank through tmRank";
      std::map<uint64_t, uint64_t> j2l;
      if (diff.empty()) diff = CompareLineages(r.sandbox.comms, dead_comms, &j2l, any_rank);
      if (diff.empty()) diff = CompareRegions(dead.regions, r.sandbox.regions);
      if (!diff.empty()) {
        if (first_reason.empty()) first_reason = who + ": " + diff;
        continue;
      }
      const uint64_t taken = id;  // id refers into the entry erased next
      Pick pick{taken, std::move(j2l), who};
      ready_.erase(taken);
      if (ProcessRec* q = h.FindProcess(taken)) q->standby.ready = false;
      return pick;
    }
  }
  *why = first_reason.empty() ? "no standby is waiting" : "no standby fits rank " + std::to_string(rank) + "; " +
                                                               first_reason;
  return std::nullopt;
}

}  // namespace trainmover::control
