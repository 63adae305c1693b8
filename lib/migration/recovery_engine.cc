// SPDX-License-Identifier: Apache-2.0
// The coordinator's failure-recovery engine: recovery_engine.h says what it does, docs/recovery.md the protocol.
// Snapshot bookkeeping in RankSnaps, one recovery at a time in RecCtx, one handler per event.
#include "recovery_engine.h"

#include <signal.h>

#include <algorithm>
#include <cinttypes>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "base/host.h"
#include "base/log.h"
#include "control/node.h"
#include "msgs.h"
#include "recovery.h"
#include "recovery_msgs.h"
#include "standby_pool.h"

namespace trainmover::control {

namespace {

// One rank's snapshots as the coordinator knows them.
struct RankSnaps {
  uint64_t owner = 0;                                // the process that holds the rank and sends them
  std::map<int64_t, uint32_t> taken;                 // the owner's own snapshots: step -> slot
  std::map<uint64_t, std::map<int64_t, uint32_t>> held;  // buddy process -> verified copies: step -> slot
  std::map<int64_t, std::set<uint64_t>> shipping;    // step -> buddies whose pull has not answered yet
  std::set<uint64_t> former;                         // processes that held the rank before the owner (ignored)
  std::map<uint32_t, rec::RecMsg> slots;             // the owner's slots as SNAP_TAKEN said: regions and descriptor
  uint64_t gone = 0;  // the latest buddy that left (a migrated leaver, a lost process) with copies of the rank
  int64_t wish = 0;   // TRAINMOVER_SNAPSHOT_EVERY=auto: the interval its holder last asked for (0: none yet)
};

// One failed rank of the recovery in progress, and its replacement.
struct Lost {
  uint64_t dead = 0, buddy = 0, joiner = 0;
  int32_t rank = -1;
  std::vector<uint64_t> keys;            // the dead rank's communicators, in its creation order
  pid_t child = 0;
  std::vector<std::string> hosts;        // where a replacement may still be spawned, in order (ReplacementHosts)
  std::string host;                      // where its replacement runs
  std::string took;                      // how the record describes the replacement
  std::vector<uint8_t> descriptor;       // the buddy's exposure of the dead rank's copy
  uint32_t buddy_pid = 0;                // the process that exposed it, as it registered
  bool tape_sent = false, fetch_sent = false, verified = false, switched = false;
};

// The recovery in progress: one failed rank, or several when a rank failed during the recovery of others
// (docs/recovery.md, "A second failure during a recovery").
struct RecCtx {
  uint64_t id = 0, epoch = 0;
  std::vector<Lost> lost;                // the first is the failure that started this epoch
  int64_t step = -1;                     // the rollback step S
  std::vector<uint64_t> keys;            // every communicator that contains a failed rank (fenced, rebuilt)
  // The newest step completed everywhere, as known here: the failed rank's last safe point or snapshot, and the step
  // before the lowest one a survivor held at (that one may have run on fenced communicators: the step in flight).
  int64_t completed = -1;
  std::set<uint64_t> survivors, held, rolled;
  std::map<uint64_t, std::vector<int64_t>> local;  // each held survivor's own snapshot steps (HELD)
  std::map<uint64_t, int64_t> held_at;              // and the step it is held at
  std::map<uint64_t, int64_t> fence_at;             // each survivor's last safe point passed at its fence (FENCE_AT)
  int64_t hold_after = -1;                          // the step HOLD_AFTER named
  bool hold_after_sent = false, ids_sent = false, switch_sent = false;
  size_t built_expected = 0, built_ok = 0;
  uint64_t detected_mono = 0;
  int attempt = 1;  // replacements tried for these failures, this epoch's included (kReplacementAttempts)
  std::string build_failed;          // the first BUILT not ok: retried once kBuildFailureGraceMs passed (OnTick)
  uint64_t build_failed_mono = 0;

  Lost* ByJoiner(uint64_t p) {
    for (Lost& l : lost) {
      if (l.joiner && l.joiner == p) return &l;
    }
    return nullptr;
  }
  bool IsDead(uint64_t p) const {
    return std::any_of(lost.begin(), lost.end(), [p](const Lost& l) { return l.dead == p; });
  }
  // What every survivor is told, in this order (OnProcessBack tells one that reconnected again).
  Command Fence() const {
    return rec::MakeRec(rec::Cmd::kFence, id, rec::RecMsg{.epoch = epoch, .rank = lost.front().rank, .words = keys});
  }
  Command HoldAfter() const {
    return rec::MakeRec(rec::Cmd::kHoldAfter, id, rec::RecMsg{.epoch = epoch, .step = hold_after});
  }
  Command Rollback() const { return rec::MakeRec(rec::Cmd::kRollback, id, rec::RecMsg{.epoch = epoch, .step = step}); }
  std::string Ranks() const {  // "rank 1" or "ranks 1 and 3"
    std::string s = lost.size() == 1 ? "rank " : "ranks ";
    for (size_t i = 0; i < lost.size(); ++i) {
      s += (i == 0 ? "" : i + 1 == lost.size() ? " and " : ", ") + std::to_string(lost[i].rank);
    }
    return s;
  }
};

// A replacement communicator that failed to build is retried this long after (Retry): a member's loss, which fails
// the builds of its peers at once, reaches the coordinator on its own connection and may come later under load.
constexpr int kBuildFailureGraceMs = 1000;

uint64_t MonoNs() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

// A TRAINMOVER_ variable of a process, as it registered its environment.
std::string EnvOf(const ProcessRec& p, const std::string& name) {
  const std::string prefix = "TRAINMOVER_" + name + "=";
  for (const std::string& kv : p.info.env) {
    if (kv.rfind(prefix, 0) == 0) return kv.substr(prefix.size());
  }
  return "";
}

// The rank a process claims: a worker's, or the rank a planned migration's joiner replaces once SWITCH went out for
// it (the commit point, docs/reliability.md: from then on the joiner holds the rank, even before every member
// confirmed the switch and the migration is marked done). -1: none.
int32_t Claim(EngineHost& h, const ProcessRec& p) {
  if (p.info.role == "worker") return p.info.rank;
  if (p.info.role != "joiner" || p.info.replace < 0) return -1;
  for (const auto& [id, m] : h.migrations()) {
    if (m.kind == kKindMigrate && m.switch_sent && !MigTerminal(m.state) &&
        std::find(m.ranks.begin(), m.ranks.end(), p.info.replace) != m.ranks.end()) {
      return p.info.replace;
    }
  }
  return -1;
}

// The process that holds or last held each rank: of the processes that claim it, alive or not, the newest (ids grow
// with registration: a switched leaver that has not exited yet registered before its joiner, a failed process before
// its replacement).
std::map<int32_t, const ProcessRec*> LastHolders(EngineHost& h) {
  std::map<int32_t, const ProcessRec*> out;
  for (const auto& [id, p] : h.processes()) {
    const int32_t r = Claim(h, p);
    if (r >= 0 && (!out.count(r) || out[r]->id < id)) out[r] = &p;
  }
  return out;
}

// The alive process that holds each rank (none for a rank whose holder failed: its leaver holds nothing either).
std::map<int32_t, const ProcessRec*> Holders(EngineHost& h) {
  std::map<int32_t, const ProcessRec*> out = LastHolders(h);
  std::erase_if(out, [](const auto& kv) { return kv.second->state != ProcState::kAlive; });
  return out;
}

// Whether `p` (alive or just lost) held its claimed rank: no newer process claims it.
bool HeldRank(EngineHost& h, const ProcessRec& p) {
  const int32_t r = Claim(h, p);
  const auto last = LastHolders(h);
  auto it = last.find(r);
  return r >= 0 && it != last.end() && it->second->id == p.id;
}

// A failure of the host rather than of the process: it went silent (no heartbeat, no answer to a probe), which a host
// that is down or cut off does too.
bool HostSilent(const ProcessRec& p) {
  return p.lost_reason.rfind("no heartbeat", 0) == 0 || p.lost_reason.find("no answer to a probe") != std::string::npos;
}

class RecoveryEngine final : public Engine {
 public:
  RecoveryEngine(std::unique_ptr<JoinerLauncher> l, std::vector<std::string> spare_hosts)
      : launcher_(std::move(l)), spare_hosts_(std::move(spare_hosts)) {}

  const char* kind() const override { return kKindRecover; }
  std::string Validate(EngineHost&, const Migration&) override {
    return "a recovery starts by itself when a rank fails; it cannot be requested";
  }
  void OnRequest(EngineHost&, Migration&) override {}
  void OnCancel(EngineHost& h, Migration& m) override {
    if (ctx_ && ctx_->id == m.id) Fail(h, "cancelled by the operator");
  }

  void OnEvent(EngineHost& h, uint64_t p, const Event& e) override {
    SnapAfterSwitch(h);
    ProcessRec* from = h.FindProcess(p);
    if (!from || from->fenced) return;  // declared failed: whatever it says is of an old epoch
    if (e.kind >= standby::kFirstStandbyKind) return standbys_.OnEvent(h, *from, e);
    if (e.kind >= rec::kFirstRecoveryKind) {
      rec::RecMsg m;
      if (!DecodePayload(e.body, &m)) return;
      switch (static_cast<rec::Ev>(e.kind)) {
        case rec::Ev::kSnapTaken:
          return OnSnapTaken(h, *from, m);
        case rec::Ev::kSnapHeld:
          return OnSnapHeld(h, *from, m);
        case rec::Ev::kFenceAt:
          return OnFenceAt(h, *from, m);
        case rec::Ev::kHeld:
          return OnHeld(h, *from, m);
        case rec::Ev::kHeldExposed:
          return OnHeldExposed(h, *from, m);
        case rec::Ev::kRolledBack:
          return OnRolledBack(h, *from, m);
        case rec::Ev::kCommFault:
          return OnCommFault(h, *from, m);
        case rec::Ev::kSlotExposed:
          return OnSlotExposed(h, *from, m);
        case rec::Ev::kProbed:
          if (auto it = probes_.find(p); it != probes_.end() && it->second.number == static_cast<uint64_t>(m.step)) {
            probes_.erase(it);
          }
          return;
      }
      return;
    }
    if (!ctx_) return;
    if (e.kind == static_cast<uint16_t>(mig::Ev::kReady)) return OnReady(h, *from, e);
    if (e.migration != ctx_->id) return;
    switch (static_cast<mig::Ev>(e.kind)) {
      case mig::Ev::kIds:
        return OnIds(h, e);
      case mig::Ev::kBuilt:
        return OnBuilt(h, e);
      case mig::Ev::kPrepared:
        if (ctx_->ByJoiner(p)) {
          h.SendCommand(p, mig::Make(static_cast<uint16_t>(mig::Cmd::kRead), ctx_->id, mig::Step{ctx_->step}));
        }
        return;
      case mig::Ev::kVerified:
        return OnVerified(h, *from, e);
      case mig::Ev::kSwitched:
        if (Lost* l = ctx_->ByJoiner(p)) l->switched = true;
        return MaybeDone(h);
      case mig::Ev::kFailed: {
        mig::Reason r;
        (void)DecodePayload(e.body, &r);
        return Fail(h, "rank " + std::to_string(from->info.rank) + ": " + r.text);
      }
      case mig::Ev::kPhase: {
        mig::Phase ph;
        Migration* m = h.FindMigration(ctx_->id);
        if (m && DecodePayload(e.body, &ph)) m->phases.push_back(PhaseSpan{p, ph.name, ph.start_ns, ph.end_ns});
        return;
      }
      default:
        return;
    }
  }

  void OnProcessLost(EngineHost& h, uint64_t p) override {
    standbys_.OnProcessLost(p);
    ProcessRec* pr = h.FindProcess(p);
    // A buddy that is gone holds nothing any more, and answers no pull. One that is only reconnecting (BYE
    // "reconnect": alive, its copies in its memory) keeps its copies on record: they are offered again once it is
    // back (Offered, Complete: live buddies only), and dropped if it never comes back (lost for good, called again).
    const bool returning = pr && pr->returning_by_ns;
    for (auto& [rank, rs] : snaps_) {
      if (auto c = rs.held.find(p); c != rs.held.end() && !returning) {
        if (!c->second.empty()) rs.gone = p;
        rs.held.erase(c);
      }
      std::vector<int64_t> waiting;
      for (const auto& [step, buddies] : rs.shipping) {
        if (buddies.count(p)) waiting.push_back(step);
      }
      for (int64_t step : waiting) {  // on the buddies that are left: the owner must not wait for the one gone
        if (Answered(rs, step, p)) Shipped(h, rs, step);
      }
    }
    if (!pr) return;
    if (ctx_) {
      if (Lost* l = ctx_->ByJoiner(p); l && !ctx_->switch_sent) {
        return Retry(h, "the replacement of rank " + std::to_string(l->rank) + " (process " + std::to_string(p) +
                            ", pid " + std::to_string(pr->info.pid) + ") was lost");
      } else if (l) {
        // SWITCH and ROLLBACK went out: it holds the rank (the survivors roll back onto communicators with it), so
        // this recovery completes as if it had confirmed, and its loss is the next failure of that rank, recovered
        // under a new epoch once every survivor rolled back (as a survivor that fails during the switch).
        TM_WARN(kLogMigration, "coordinator: the replacement of rank %d (process %" PRIu64 ") was lost after the "
                               "switch of recovery %" PRIu64 "; recovered next", l->rank, p, ctx_->id);
        l->switched = true;
        next_.push_back(p);
        return MaybeDone(h);
      }
    }
    // A survivor whose program ended (BYE at exit) before it held: its last safe point was at or before the hold
    // step, so it will never hold, and without its state of the rollback step nobody can roll back with it. Failed
    // now with the reason, not after the survivors' hold limit.
    if (ctx_ && ctx_->survivors.count(p) && pr->state == ProcState::kExited && !ctx_->switch_sent &&
        !ctx_->held.count(p)) {
      return Fail(h, "rank " + std::to_string(pr->info.rank) + " (process " + std::to_string(p) + ") exited at step " +
                         std::to_string(pr->step) + " before it held at a safe point");
    }
    // A leaver after its switch holds nothing (its joiner holds the rank); a joiner after its switch holds it.
    if (pr->state == ProcState::kExited || !HeldRank(h, *pr)) return;
    if (pr->returning_by_ns) return;  // alive and reconnecting: failed only if it does not come back (coordinator.h)
    if (pr->info.role == "joiner") {  // lost before every member confirmed the switch: it held the rank all the same
      pr->info.rank = pr->info.replace;
      pr->info.role = "worker";
      pr->info.replace = -1;
    }
    if (ctx_ && ctx_->survivors.count(p)) return FailedDuring(h, *pr);
    if (EnvOf(*pr, "RECOVERY") == "off") {
      TM_WARN(kLogMigration, "coordinator: rank %d failed (%s); TRAINMOVER_RECOVERY=off: no recovery",
              pr->info.rank, pr->lost_reason.c_str());
      return;
    }
    if (pr->step < 0) {
      TM_WARN(kLogMigration, "coordinator: rank %d failed (%s); it never called tmSafePoint, so it cannot be "
                             "recovered: the job fails as it would without TrainMover",
              pr->info.rank, pr->lost_reason.c_str());
      return;
    }
    if (pr->regions.empty()) {
      TM_WARN(kLogMigration, "coordinator: rank %d failed (%s); it registered no state (tmRegister), so it cannot be "
                             "recovered", pr->info.rank, pr->lost_reason.c_str());
      return;
    }
    // Out of step after a migration's switch, and alive: without a copy to roll its rank back to, it is left as it was
    // (it comes back and trains on, out of step, as it would without recovery), not a reason to end the survivors.
    if (pr->lost_reason.rfind(kOutOfStep, 0) == 0 && Offered(h, pr->info.rank).empty()) {
      TM_WARN(kLogMigration, "coordinator: rank %d is %s, and %s: it cannot be recovered and stays out of step (its "
                             "next collective fails, as without failure recovery)",
              pr->info.rank, pr->lost_reason.c_str(), NoCopy(h, pr->info.rank).c_str());
      return;
    }
    Start(h, {pr});
  }

  // A survivor that reconnected during a recovery may have missed commands (one sent while it had no connection is
  // dropped): FENCE again (its agent answers FENCE_AT again), HOLD_AFTER and ROLLBACK if they went out; each is
  // idempotent at the agent. Without this a survivor that missed HOLD_AFTER waited out the hold limit, and every
  // other survivor with it.
  void OnProcessBack(EngineHost& h, uint64_t p) override {
    FenceStale(h);
    if (!ctx_ || !ctx_->survivors.count(p)) return;
    h.SendCommand(p, ctx_->Fence());
    if (ctx_->hold_after_sent) h.SendCommand(p, ctx_->HoldAfter());
    if (ctx_->switch_sent) h.SendCommand(p, ctx_->Rollback());
  }

  void OnTick(EngineHost& h) override {
    SnapAfterSwitch(h);
    FenceStale(h);
    standbys_.OnTick(h);
    DeclareUnanswered(h);
    if (!ctx_) return;
    RecCtx& x = *ctx_;
    if (MonoNs() - x.detected_mono > uint64_t{migration::kRecoveryHoldMs} * 1000000ull) {
      return Fail(h, "the recovery did not complete within " + std::to_string(migration::kRecoveryHoldMs) + " ms");
    }
    if (!x.build_failed.empty() && MonoNs() - x.build_failed_mono > uint64_t{kBuildFailureGraceMs} * 1000000ull) {
      return Retry(h, x.build_failed);
    }
    for (Lost& l : x.lost) {
      std::string how;
      if (l.child > 0 && !l.joiner && launcher_->Exited(l.child, &how)) {
        const pid_t child = std::exchange(l.child, 0);
        const bool remote = child >= kRemoteChild;
        const std::string why = "the replacement of rank " + std::to_string(l.rank) + " (" +
                                (remote ? "on host " + l.host + ", by its node agent" : "pid " + std::to_string(child)) +
                                ") exited (" + how + ") before it registered";
        // One started through a node agent that could not run it there: the next host of the list, same epoch.
        Migration* m = h.FindMigration(x.id);
        const ProcessRec* dead = h.FindProcess(l.dead);
        if (remote && !l.hosts.empty() && m && dead) {
          TM_WARN(kLogMigration, "coordinator: recovery %" PRIu64 ": %s; trying host %s", x.id, why.c_str(),
                  l.hosts.front().c_str());
          std::string err;
          if (!SpawnReplacement(*m, *dead, l, &err)) return Retry(h, why + "; " + err);
          return;
        }
        return Retry(h, why);
      }
      // The replacement runs its shadow iteration without a tape (the dead rank recorded none): an empty one at
      // once saves it the wait for one.
      for (const auto& [id, p] : h.processes()) {
        if (l.tape_sent || p.state != ProcState::kAlive || p.info.role != "joiner" || p.info.replace != l.rank ||
            (l.child > 0 && !launcher_->IsChild(l.child, p.info.host, p.info.pid))) {
          continue;
        }
        l.tape_sent = h.SendCommand(id, mig::Make(static_cast<uint16_t>(mig::Cmd::kTape), x.id, mig::Blob{}));
      }
    }
  }

 private:
  // ---- snapshots

  // The rank whose snapshots a process takes: a worker's, a recovery's replacement's (a standby's too), or the rank a
  // migration's joiner replaces. A replacement snapshots only once it switched in, and its SNAP_TAKEN may come before
  // the migration or recovery is done and names it a worker.
  int32_t SnapshotRank(const ProcessRec& p) {
    if (const Lost* l = ctx_ ? ctx_->ByJoiner(p.id) : nullptr) return l->rank;
    if (p.info.role == "worker") return p.info.rank;
    return p.info.role == "joiner" ? p.info.replace : -1;  // it snapshots once switched in
  }

  // The rank's book, for its owner `p` whose snapshot of `step` just came. A new process holds the rank (a migration's
  // joiner, a recovery's replacement): the one before it is heard no more and its own slots leave with it, but the
  // copies its buddies verified of the steps before `step` stay: the state is the rank's, not the process's, and the
  // new holder continues the same timeline (from the switch step, or the rollback step whose later copies the
  // rollback dropped). Until the new holder's first snapshot is on a buddy, they are the rank's only copies.
  RankSnaps& SnapsOf(int32_t rank, const ProcessRec& p, int64_t step) {
    RankSnaps& rs = snaps_[rank];
    if (rs.owner != p.id) {
      std::set<uint64_t> former = std::move(rs.former);
      if (rs.owner) former.insert(rs.owner);
      std::map<uint64_t, std::map<int64_t, uint32_t>> held = std::move(rs.held);
      for (auto& [b, steps] : held) std::erase_if(steps, [&](const auto& kv) { return kv.first >= step; });
      // The wish stays: a new holder of the rank has the same state to snapshot, until it has measured its own.
      rs = RankSnaps{.owner = p.id, .held = std::move(held), .former = std::move(former), .wish = rs.wish};
    }
    return rs;
  }

  // The buddies of `rank` (held by `owner`, which may be a joiner on another host than the rank's holder so far),
  // TRAINMOVER_SNAPSHOT_COPIES of them: on other hosts first, then the next ranks on its own host. Hosts are taken
  // in the order of their lowest rank; the rank at local index i of host h takes the rank at index i (modulo its
  // size) of host h+1, then of h+2, ..., then the other hosts' remaining ranks in order after it. Equal hosts thus
  // hold one copy per buddy each, however the ranks are spread: the next rank on another host made, on two hosts of
  // two ranks, ranks 0 and 2 hold two copies each and 1 and 3 none, which the memory bound (TRAINMOVER_SNAPSHOT_MEMORY)
  // reckons without.
  std::vector<uint64_t> Buddies(EngineHost& h, const ProcessRec& owner, int32_t rank) {
    std::map<int32_t, const ProcessRec*> workers = Holders(h);  // a switched joiner, not its leaver
    workers[rank] = &owner;
    const std::string copies_env = EnvOf(owner, "SNAPSHOT_COPIES");
    const size_t copies = copies_env.empty() ? 1 : static_cast<size_t>(std::max(1, atoi(copies_env.c_str())));
    std::vector<std::string> hosts;  // by lowest rank
    std::map<std::string, std::vector<const ProcessRec*>> on;  // each host's ranks, ascending
    for (const auto& [r, p] : workers) {
      if (on[p->info.host].empty()) hosts.push_back(p->info.host);
      on[p->info.host].push_back(p);
    }
    const size_t home = static_cast<size_t>(std::find(hosts.begin(), hosts.end(), owner.info.host) - hosts.begin());
    const std::vector<const ProcessRec*>& mine = on[owner.info.host];
    const size_t index = static_cast<size_t>(std::find(mine.begin(), mine.end(), &owner) - mine.begin());
    std::vector<uint64_t> out;
    auto take = [&](const ProcessRec* p) {
      if (out.size() < copies && p != &owner && std::find(out.begin(), out.end(), p->id) == out.end()) {
        out.push_back(p->id);
      }
    };
    for (size_t d = 1; d < hosts.size(); ++d) {
      const std::vector<const ProcessRec*>& there = on[hosts[(home + d) % hosts.size()]];
      take(there[index % there.size()]);
    }
    for (bool other_host : {true, false}) {  // then in rank order after `rank`, cyclic
      for (auto it = workers.upper_bound(rank); it != workers.end(); ++it) {
        if ((it->second->info.host != owner.info.host) == other_host) take(it->second);
      }
      for (auto it = workers.begin(); it != workers.end() && it->first < rank; ++it) {
        if ((it->second->info.host != owner.info.host) == other_host) take(it->second);
      }
    }
    return out;
  }

  // An owner's snapshot: its buddies pull it. Not during a recovery: the survivors hold (their own steps come with
  // HELD) and a copy of the old timeline would be moot; the owner's wait for it ends with the fence.
  void OnSnapTaken(EngineHost& h, const ProcessRec& from, const rec::RecMsg& m) {
    if (const uint64_t mig = SwitchPending(h, from, m.step)) return waiting_.push_back(Waiting{mig, from.id, m});
    // During a recovery, only the new timeline's: from a survivor that rolled back, or the switched replacement.
    const Lost* replacement = ctx_ ? ctx_->ByJoiner(from.id) : nullptr;
    if (ctx_ && !ctx_->rolled.count(from.id) && !(replacement && replacement->switched)) return;
    const int32_t rank = SnapshotRank(from);
    if (rank < 0 || snaps_[rank].former.count(from.id)) return;  // a leaver's late snapshot: its joiner owns the rank
    RankSnaps& rs = SnapsOf(rank, from, m.step);
    auto forget_slot = [&](std::map<int64_t, uint32_t>& steps) {
      std::erase_if(steps, [&](const auto& kv) { return kv.second == m.slot; });
    };
    forget_slot(rs.taken);
    rs.taken[m.step] = m.slot;
    if (m.every > 0) rs.wish = m.every;
    rs.slots[m.slot] = rec::RecMsg{.slot = m.slot, .regions = m.regions, .blob = m.blob};
    rec::RecMsg pull = m;  // with the owner's slot descriptor
    pull.rank = rank;
    pull.epoch = epoch_;  // a copy verified before the next failure's epoch is counted only before it
    const std::vector<uint64_t> buddies = Buddies(h, from, rank);
    for (uint64_t b : buddies) {
      forget_slot(rs.held[b]);
      h.SendCommand(b, rec::MakeRec(rec::Cmd::kSnapPull, 0, pull));
    }
    if (buddies.empty()) return Shipped(h, rs, m.step);  // nobody to copy to: the owner must not wait
    rs.shipping[m.step] = std::set<uint64_t>(buddies.begin(), buddies.end());
  }

  // A stayer snapshots a planned migration's switch step before it is held there (docs/reliability.md, "The commit
  // point"), so that its rank can be recovered at that step if it ends up out of step. When a leaver of that migration
  // would be its buddy, the pull waits for the outcome (SnapAfterSwitch): the leaver leaves at the switch, taking the
  // copy with it, and from SWITCH on its joiner is the buddy, as for the stayer's later snapshots. The migration, or 0.
  uint64_t SwitchPending(EngineHost& h, const ProcessRec& from, int64_t step) {
    const std::map<int32_t, const ProcessRec*> holders = Holders(h);
    for (const auto& [id, mig] : h.migrations()) {
      if (mig.kind != kKindMigrate || mig.switch_sent || mig.state != MigState::kSwitching || step < mig.switch_step) {
        continue;
      }
      const int32_t rank = SnapshotRank(from);
      const std::vector<uint64_t> buddies = rank >= 0 ? Buddies(h, from, rank) : std::vector<uint64_t>{};
      for (int32_t r : mig.ranks) {
        auto l = holders.find(r);
        if (l != holders.end() && std::find(buddies.begin(), buddies.end(), l->second->id) != buddies.end()) return id;
      }
    }
    return 0;
  }

  // The snapshots held back by SwitchPending, once their migration switched or ended without: handled as they came.
  void SnapAfterSwitch(EngineHost& h) {
    for (size_t i = 0; i < waiting_.size();) {
      const Migration* mig = h.FindMigration(waiting_[i].migration);
      ProcessRec* from = h.FindProcess(waiting_[i].from);
      if (mig && !mig->switch_sent && !MigTerminal(mig->state)) {
        ++i;
        continue;
      }
      const Waiting w = waiting_[i];
      waiting_.erase(waiting_.begin() + static_cast<ptrdiff_t>(i));
      if (from && !from->fenced && from->state == ProcState::kAlive) OnSnapTaken(h, *from, w.snap);
    }
  }

  // A joiner's snapshot slot, set up in its sandbox. For a planned migration's joiner before its switch, the first
  // pulls after the switch are taken off it (docs/recovery.md, "The joiner's first pulls after a switch"): the buddies
  // its rank will have connect to the slot and read it once now (SNAP_WARM), and after its last slot the joiner does
  // the same with every slot of the ranks whose buddy its leaver is, which it replaces from the switch on. Then the
  // end of the batch (SNAP_WARM rank -1), which its PREPARED waits for; a joiner that is no migration's (a
  // recovery's replacement: the survivors are held, their snapshot threads serve the recovery) gets that alone.
  void OnSlotExposed(EngineHost& h, const ProcessRec& from, const rec::RecMsg& m) {
    const int32_t rank = from.info.role == "joiner" ? from.info.replace : -1;
    const std::map<int32_t, const ProcessRec*> holders = Holders(h);
    const auto leaver = holders.find(rank);
    bool migrating = false;
    for (const auto& [id, mig] : h.migrations()) {
      migrating |= mig.kind == kKindMigrate && !mig.switch_sent && !MigTerminal(mig.state) &&
                   std::find(mig.ranks.begin(), mig.ranks.end(), rank) != mig.ranks.end();
    }
    migrating &= leaver != holders.end() && leaver->second->id != from.id && m.slot < migration::kSnapshotSlots;
    if (migrating) {
      const rec::RecMsg warm{.rank = rank, .slot = m.slot, .regions = m.regions, .blob = m.blob};
      for (uint64_t b : Buddies(h, from, rank)) h.SendCommand(b, rec::MakeRec(rec::Cmd::kSnapWarm, 0, warm));
    }
    if (m.slot + 1 < migration::kSnapshotSlots) return;
    for (const auto& [r, rs] : snaps_) {
      const auto owner = holders.find(r);
      if (!migrating || r == rank || owner == holders.end() || owner->second->id != rs.owner) continue;
      const std::vector<uint64_t> buddies = Buddies(h, *owner->second, r);
      if (std::find(buddies.begin(), buddies.end(), leaver->second->id) == buddies.end()) continue;
      for (const auto& [slot, d] : rs.slots) {
        rec::RecMsg warm = d;
        warm.rank = r;
        h.SendCommand(from.id, rec::MakeRec(rec::Cmd::kSnapWarm, 0, warm));
      }
    }
    h.SendCommand(from.id, rec::MakeRec(rec::Cmd::kSnapWarm, 0, rec::RecMsg{.rank = -1}));
  }

  void OnSnapHeld(EngineHost& h, const ProcessRec& buddy, const rec::RecMsg& m) {
    auto it = snaps_.find(m.rank);
    if (m.epoch != epoch_ || it == snaps_.end()) return;  // an older epoch's copy belongs to an abandoned timeline
    RankSnaps& rs = it->second;
    auto slot = rs.taken.find(m.step);
    if (m.ok && slot != rs.taken.end() && slot->second == m.slot) {
      rs.held[buddy.id][m.step] = m.slot;
      if (ProcessRec* owner = h.FindProcess(rs.owner)) owner->snapshot_step = m.step;
    }
    if (Answered(rs, m.step, buddy.id)) {
      Shipped(h, rs, m.step);
      DropFormerBuddies(h, rs, m.rank, m.step);
    }
  }

  // After a regrouping (a planned migration to another host changes which ranks are on which host, so which rank is
  // whose buddy), the copies a former buddy holds of `rank` are dropped once every present buddy holds a verified
  // copy of `step`, newer than all of them: they count against that process's TRAINMOVER_SNAPSHOT_MEMORY share. Not
  // during a recovery (its choice of the rollback step reads the book as it is).
  void DropFormerBuddies(EngineHost& h, RankSnaps& rs, int32_t rank, int64_t step) {
    const ProcessRec* owner = h.FindProcess(rs.owner);
    if (ctx_ || owner == nullptr || owner->state != ProcState::kAlive) return;
    const std::vector<uint64_t> buddies = Buddies(h, *owner, rank);
    for (uint64_t b : buddies) {
      auto held = rs.held.find(b);
      if (held == rs.held.end() || !held->second.count(step)) return;
    }
    for (auto it = rs.held.begin(); it != rs.held.end();) {
      const bool former = std::find(buddies.begin(), buddies.end(), it->first) == buddies.end();
      if (!former || (!it->second.empty() && it->second.rbegin()->first >= step)) {
        ++it;
        continue;
      }
      h.SendCommand(it->first, rec::MakeRec(rec::Cmd::kSnapDrop, 0, rec::RecMsg{.rank = rank, .step = step}));
      it = rs.held.erase(it);
    }
  }

  // `buddy` answered the pull of `step`, or is gone: true when it was the last one the owner waited for.
  static bool Answered(RankSnaps& rs, int64_t step, uint64_t buddy) {
    auto it = rs.shipping.find(step);
    if (it == rs.shipping.end() || !it->second.erase(buddy) || !it->second.empty()) return false;
    rs.shipping.erase(it);
    return true;
  }

  // The owner may go on (its next snapshot waits for this one), and keeps the newest step complete everywhere.
  void Shipped(EngineHost& h, const RankSnaps& rs, int64_t step) {
    const int64_t every = Interval(h);
    if (ProcessRec* owner = h.FindProcess(rs.owner); owner && every > 0) owner->snapshot_every = every;
    h.SendCommand(rs.owner, rec::MakeRec(rec::Cmd::kSnapShipped, 0,
                                         rec::RecMsg{.step = step, .complete = Complete(h), .every = every}));
  }

  // TRAINMOVER_SNAPSHOT_EVERY=auto (docs/recovery.md, "Adaptive interval"): the job's interval is the largest any
  // rank's holder asks for, since every rank must snapshot the same steps and the costliest rank must stay within
  // the budget; 0 while none asked (a fixed interval, or nothing measured yet). Its changes are logged and kept.
  int64_t Interval(EngineHost& h) {
    int64_t every = 0;
    for (const auto& [rank, p] : Holders(h)) {
      auto it = snaps_.find(rank);
      if (it != snaps_.end()) every = std::max(every, it->second.wish);
    }
    if (every > 0 && every != every_) {
      TM_INFO(kLogMigration, "coordinator: snapshot interval %" PRId64 " -> %" PRId64 " (TRAINMOVER_SNAPSHOT_EVERY=auto)",
              every_, every);
      every_before_ = every_;
      every_ = every;
    }
    return every;
  }

  // The bound on the steps a recovery of `p`'s rank trains again: its fixed TRAINMOVER_SNAPSHOT_EVERY, or under auto
  // the interval in effect, the previous one when that was larger (a rank that heard of a smaller interval late took
  // its next snapshot at a multiple of the previous one).
  int64_t LostBound(const ProcessRec& p) const {
    const std::string fixed = EnvOf(p, "SNAPSHOT_EVERY");
    const int64_t n = fixed.empty() ? 1 : atoll(fixed.c_str());
    if (n > 0) return n;
    return std::max<int64_t>({1, every_, every_before_});
  }

  // The newest step that every live worker holds itself and a live buddy of it holds a verified copy of.
  int64_t Complete(EngineHost& h) {
    std::optional<std::set<int64_t>> common;
    const std::map<int32_t, const ProcessRec*> holders = Holders(h);
    for (const auto& [rank, rs] : snaps_) {
      auto o = holders.find(rank);
      if (o == holders.end() || o->second->id != rs.owner) continue;
      std::set<int64_t> steps;
      for (const auto& [b, copies] : rs.held) {
        const ProcessRec* bp = h.FindProcess(b);
        if (!bp || bp->state != ProcState::kAlive) continue;
        for (const auto& [step, slot] : copies) {
          if (rs.taken.count(step) && (!common || common->count(step))) steps.insert(step);
        }
      }
      common = std::move(steps);
    }
    return common && !common->empty() ? *common->rbegin() : -1;
  }

  // ---- detection by the NCCL library (docs/recovery.md, "Detection")

  // A process's background poll says a real communicator failed: the library does not say which peer, so every
  // other alive member is probed; its agent thread answers at once unless the process is dead or frozen.
  void OnCommFault(EngineHost& h, const ProcessRec& from, const rec::RecMsg& m) {
    if (m.words.empty()) return;
    auto comm = h.comms().find(m.words[0]);
    if (comm == h.comms().end()) return;
    for (const auto& [rank, q] : comm->second.members) {
      const ProcessRec* pr = h.FindProcess(q);
      if (q == from.id || !pr || pr->state != ProcState::kAlive || probes_.count(q)) continue;
      Probe pb{++probe_number_, MonoNs(), "rank " + std::to_string(from.info.rank) + "'s NCCL library reported " +
                                              "communicator " + std::to_string(m.words[0]) + " failed (" +
                                              NcclResultName(m.slot) + ")"};
      TM_WARN(kLogMigration, "coordinator: %s; probing its member rank %d (process %" PRIu64 ")", pb.why.c_str(),
              pr->info.rank, q);
      if (h.SendCommand(q, rec::MakeRec(rec::Cmd::kProbe, 0, rec::RecMsg{.step = static_cast<int64_t>(pb.number)}))) {
        probes_[q] = std::move(pb);
      }
    }
  }

  // A probed process that did not answer within kProbeMs is dead or frozen: declared failed (and recovered).
  void DeclareUnanswered(EngineHost& h) {
    std::vector<std::pair<uint64_t, std::string>> due;
    for (auto it = probes_.begin(); it != probes_.end();) {
      const ProcessRec* pr = h.FindProcess(it->first);
      if (!pr || pr->state != ProcState::kAlive) {
        it = probes_.erase(it);
      } else if (MonoNs() - it->second.sent_mono > uint64_t{kProbeMs} * 1000000ull) {
        due.push_back({it->first, it->second.why + "; no answer to a probe within " + std::to_string(kProbeMs) + " ms"});
        it = probes_.erase(it);
      } else {
        ++it;
      }
    }
    for (const auto& [q, why] : due) h.DeclareLost(q, why);
  }

  static std::string NcclResultName(uint32_t r) {
    static const char* const kNames[] = {"ncclSuccess", "ncclUnhandledCudaError", "ncclSystemError",
                                         "ncclInternalError", "ncclInvalidArgument", "ncclInvalidUsage",
                                         "ncclRemoteError"};
    return r < std::size(kNames) ? kNames[r] : "ncclResult " + std::to_string(r);
  }

  // ---- a failure

  // The newest step that, for every failed rank, a live buddy holds a copy of, and that every survivor holds itself
  // (as it said when held); with one such buddy per failed rank.
  std::optional<int64_t> PickStep(EngineHost& h, std::string* why) {
    RecCtx& x = *ctx_;
    std::vector<std::map<int64_t, uint64_t, std::greater<>>> offered;
    for (const Lost& l : x.lost) {
      offered.push_back(Offered(h, l.rank));
      if (offered.back().empty()) {
        *why = NoCopy(h, l.rank);
        return std::nullopt;
      }
    }
    for (const auto& [step, b] : offered.front()) {
      bool everywhere = true;
      for (const auto& o : offered) everywhere &= o.count(step) > 0;
      for (uint64_t q : x.survivors) {
        const std::vector<int64_t>& own = x.local.at(q);
        everywhere &= std::find(own.begin(), own.end(), step) != own.end();
      }
      if (!everywhere) continue;
      for (size_t i = 0; i < x.lost.size(); ++i) x.lost[i].buddy = offered[i].at(step);
      return step;
    }
    *why = "no snapshot step of " + x.Ranks() + " held by a live buddy is held by every survivor";
    return std::nullopt;
  }

  // Why `rank` cannot be recovered when no live buddy holds a copy of it, with where its copies went.
  std::string NoCopy(EngineHost& h, int32_t rank) {
    std::string why = "no snapshot of rank " + std::to_string(rank) + " is complete on a live buddy";
    auto it = snaps_.find(rank);
    const ProcessRec* gone = it != snaps_.end() && it->second.gone ? h.FindProcess(it->second.gone) : nullptr;
    if (gone) {
      why += " (its copies were on process " + std::to_string(gone->id) + ", which " +
             (gone->state == ProcState::kExited ? "left" : "was lost") + " before another buddy held a copy)";
    }
    return why;
  }

  // The steps of `rank` that a live buddy holds a verified copy of, newest first, each with one such buddy.
  std::map<int64_t, uint64_t, std::greater<>> Offered(EngineHost& h, int32_t rank) {
    std::map<int64_t, uint64_t, std::greater<>> offered;
    auto it = snaps_.find(rank);
    if (it == snaps_.end()) return offered;
    for (const auto& [b, steps] : it->second.held) {
      const ProcessRec* bp = h.FindProcess(b);
      if (!bp || bp->state != ProcState::kAlive) continue;
      for (const auto& [step, slot] : steps) offered.emplace(step, b);
    }
    return offered;
  }

  // A new epoch for the failed processes `dead` (the new failure first; more than one when a rank failed during the
  // recovery of others, which was abandoned for this one).
  // `completed`: the abandoned recovery's (the steps completed everywhere end with the first failure; the ranks that
  // failed since were fenced then, so what they ran after it does not count).
  // `attempt`: the replacements tried for these failures so far, this one included (Retry).
  void Start(EngineHost& h, const std::vector<const ProcessRec*>& dead, const std::string& note = "",
             std::optional<int64_t> completed = std::nullopt, int attempt = 1) {
    const ProcessRec& first = *dead.front();
    Migration& m = h.NewMigration(kKindRecover, first.info.rank);
    m.leaver = first.id;
    m.spawn = true;
    m.recovery.epoch = ++epoch_;
    m.recovery.detected_by = first.lost_reason + note;
    m.recovery.detected_ns = m.created_ns;
    RecCtx x;
    x.id = m.id;
    x.epoch = m.recovery.epoch;
    x.detected_mono = MonoNs();
    x.attempt = attempt;
    int64_t reached = -1;
    m.ranks.clear();
    for (const ProcessRec* d : dead) {
      Lost l;
      l.dead = d->id;
      l.rank = d->info.rank;
      m.ranks.push_back(l.rank);
      reached = std::max(reached, d->step);
      // The dead rank's last safe point as reported; its last snapshot may have come after that report.
      x.completed = std::max(x.completed, completed ? *completed : d->step);
      auto own = snaps_.find(l.rank);
      if (!completed && own != snaps_.end() && own->second.owner == d->id && !own->second.taken.empty()) {
        x.completed = std::max(x.completed, own->second.taken.rbegin()->first);
      }
      // Its communicators, in its creation order: fenced, then rebuilt with the replacement.
      std::vector<std::pair<uint32_t, uint64_t>> order;
      for (const auto& [key, info] : d->comm_info) order.push_back({info.lineage.index, key});
      std::sort(order.begin(), order.end());
      for (auto& [idx, key] : order) {
        l.keys.push_back(key);
        if (std::find(x.keys.begin(), x.keys.end(), key) == x.keys.end()) x.keys.push_back(key);
      }
      x.lost.push_back(std::move(l));
    }
    for (const auto& [rank, p] : Holders(h)) {  // a switched joiner is one, its leaver is not
      if (x.IsDead(p->id)) continue;
      x.survivors.insert(p->id);
      reached = std::max(reached, p->step);
    }
    m.recovery.failed_at_step = reached;
    m.recovery.snapshot_every = LostBound(first);
    TM_WARN(kLogMigration, "coordinator: rank %d (process %" PRIu64 ") failed: %s%s; recovery %" PRIu64 " of %s, epoch %" PRIu64,
            first.info.rank, first.id, first.lost_reason.c_str(), note.c_str(), m.id, x.Ranks().c_str(), x.epoch);
    if (HostSilent(first) && first.info.host == base::HostName() && first.info.pid > 0) {
      kill(static_cast<pid_t>(first.info.pid), SIGKILL);  // silent (stopped, hung): it must not come back
    }
    ctx_ = std::move(x);
    // Refused at once when no copy of a dead rank survives; the step itself is picked once every survivor is held
    // and has said which of its own snapshots it holds (HELD).
    for (const Lost& l : ctx_->lost) {
      if (Offered(h, l.rank).empty()) {
        return Fail(h, NoCopy(h, l.rank));
      }
    }
    // Fenced only once a recovery goes ahead: a refused one leaves the process free to come back (a live process whose
    // control connection was cut re-registers and trains on, as it would with recovery off).
    for (const ProcessRec* d : dead) {
      if (ProcessRec* dp = h.FindProcess(d->id)) dp->fenced = true;
      declared_[d->id] = Declared{ctx_->epoch, d->info.rank, MonoNs()};
    }
    h.BeginPhase(m, 0, "fence");
    for (uint64_t q : ctx_->survivors) h.SendCommand(q, ctx_->Fence());
    for (size_t i = 0; i < dead.size(); ++i) {
      Lost& l = ctx_->lost[i];
      if (TakeStandby(h, m, *dead[i], l)) continue;
      std::string err = "the failed rank reported no command line";
      l.hosts = ReplacementHosts(dead[i]->info.host, !HostSilent(*dead[i]),
                                 [this](const std::string& host) { return launcher_->CanStartOn(host); }, spare_hosts_,
                                 base::HostName());
      if (dead[i]->info.cmdline.empty() || !SpawnReplacement(m, *dead[i], l, &err)) {
        return Fail(h, "cannot start the replacement of rank " + std::to_string(l.rank) + ": " + err);
      }
    }
    if (std::any_of(ctx_->lost.begin(), ctx_->lost.end(), [](const Lost& l) { return !l.joiner; })) {
      h.SetMigState(m, MigState::kSpawning);
      h.BeginPhase(m, 0, "replacement start");
    }
    MaybePick(h);  // no survivor (a job of one rank... or all held already)
  }

  // A survivor failed during the recovery (FailedDuring's caller checked). Before the switch, the recovery is
  // abandoned (its replacements dropped, its staged communicators aborted) and a new epoch recovers every failed rank
  // at once; after it (SWITCH and ROLLBACK are out: some processes may already train on), this recovery completes
  // without the new failure, which is recovered next.
  void FailedDuring(EngineHost& h, const ProcessRec& p) {
    RecCtx& x = *ctx_;
    if (x.switch_sent) {
      TM_WARN(kLogMigration, "coordinator: rank %d failed while recovery %" PRIu64 " switches; recovered next",
              p.info.rank, x.id);
      x.survivors.erase(p.id);
      x.held.erase(p.id);
      x.rolled.erase(p.id);
      next_.push_back(p.id);
      return MaybeDone(h);
    }
    x.survivors.erase(p.id);
    const std::vector<const ProcessRec*> dead = DeadOf(h, &p);
    Renew(h, dead, "rank " + std::to_string(p.info.rank) + " failed during it: abandoned for a new epoch",
          "; during recovery " + std::to_string(x.id) + " of " + RanksOf(dead, 1), x.attempt);
  }

  // The replacement of a failed rank is gone before the switch (lost, or exited before it registered), or a
  // replacement communicator failed to build (under load a survivor's build may report a dead replacement before its
  // connection is seen closed): the recovery is abandoned for a new epoch of the same failed ranks, which takes
  // another standby when one fits, else spawns, as the first did; at most kReplacementAttempts in all. After that
  // the recovery fails with the reason. (A replacement lost once SWITCH went out held the rank: OnProcessLost.)
  void Retry(EngineHost& h, const std::string& why) {
    RecCtx& x = *ctx_;
    if (x.switch_sent) return Fail(h, why + " during the switch");
    if (x.attempt >= kReplacementAttempts) {
      return Fail(h, why + " (" + std::to_string(x.attempt) + " replacements tried)");
    }
    Renew(h, DeadOf(h, nullptr), why + ": abandoned for a new epoch",
          "; " + why + " in recovery " + std::to_string(x.id), x.attempt + 1);
  }

  // The processes of the recovery's failed ranks, `first` (a survivor that failed too) ahead when given.
  std::vector<const ProcessRec*> DeadOf(EngineHost& h, const ProcessRec* first) const {
    std::vector<const ProcessRec*> dead;
    if (first) dead.push_back(first);
    for (const Lost& l : ctx_->lost) {
      if (const ProcessRec* d = h.FindProcess(l.dead)) dead.push_back(d);
    }
    return dead;
  }

  // Abandons the recovery in progress (Drop, its record failed with `why`) for a new epoch of `dead`, whose record's
  // detected_by ends with `note`; the steps completed everywhere still end with the first failure.
  void Renew(EngineHost& h, const std::vector<const ProcessRec*>& dead, const std::string& why, const std::string& note,
             int attempt) {
    const int64_t completed = Completed(*ctx_);
    Drop(h, why);
    Start(h, dead, note, completed, attempt);
  }

  static std::string RanksOf(const std::vector<const ProcessRec*>& dead, size_t from) {
    std::string s = dead.size() - from == 1 ? "rank " : "ranks ";
    for (size_t i = from; i < dead.size(); ++i) s += (i == from ? "" : ", ") + std::to_string(dead[i]->info.rank);
    return s;
  }

  // Every survivor held: the rollback step, and each failed rank's buddy exposes its copy at that step.
  void MaybePick(EngineHost& h) {
    RecCtx& x = *ctx_;
    if (x.step >= 0 || x.held.size() < x.survivors.size()) return;
    std::string why;
    std::optional<int64_t> pick = PickStep(h, &why);
    if (!pick) return Fail(h, why);
    x.step = *pick;
    if (Migration* m = h.FindMigration(x.id)) {
      m->recovery.rollback_step = x.step;
      m->switch_step = x.step;
      h.EndPhase(*m, 0, "fence");
    }
    for (const Lost& l : x.lost) {
      TM_WARN(kLogMigration, "coordinator: recovery %" PRIu64 ": rolling back to step %" PRId64 " (rank %d's snapshot "
                             "held by process %" PRIu64 ")", x.id, x.step, l.rank, l.buddy);
      h.SendCommand(l.buddy, rec::MakeRec(rec::Cmd::kExposeHeld, x.id, rec::RecMsg{.rank = l.rank, .step = x.step}));
    }
  }

  // A process declared failed that is heard from again (it was stopped or cut off, not dead) must not come back into a
  // job that has moved on: the coordinator keeps it lost (ProcessRec::fenced) and tells it to end (FENCED).
  void FenceStale(EngineHost& h) {
    for (auto it = declared_.begin(); it != declared_.end();) {
      ProcessRec* p = h.FindProcess(it->first);
      if (!p || p->state == ProcState::kExited) {
        it = declared_.erase(it);
        continue;
      }
      if (p->last_heartbeat_ns > it->second.at_mono) {
        TM_WARN(kLogMigration, "coordinator: process %" PRIu64 " (rank %d), declared failed in epoch %" PRIu64
                               ", is back: told to end (stale epoch)", p->id, it->second.rank, it->second.epoch);
        h.SendCommand(p->id, rec::MakeRec(rec::Cmd::kFenced, 0, rec::RecMsg{.epoch = it->second.epoch,
                                                                           .rank = it->second.rank}));
        it = declared_.erase(it);
        continue;
      }
      ++it;
    }
  }

  // A replacement's READY: matched against its dead rank like a joiner against its leaver. Any other joiner of a rank
  // under recovery (a failed migration's, an abandoned recovery's replacement) is told to exit at once: the migration
  // engine leaves those READYs to this one, and nothing else would ever answer it (docs/reliability.md).
  void OnReady(EngineHost& h, ProcessRec& j, const Event& e) {
    RecCtx& x = *ctx_;
    Migration* m = h.FindMigration(x.id);
    const bool ours = std::any_of(x.lost.begin(), x.lost.end(), [&](const Lost& c) { return c.rank == j.info.replace; });
    const bool matched = std::any_of(x.lost.begin(), x.lost.end(), [&](const Lost& c) { return c.joiner == j.id; });
    if (!m || j.info.role != "joiner" || !ours || matched) return;
    Lost* l = nullptr;
    for (Lost& c : x.lost) {
      if (j.info.replace == c.rank && !c.joiner && (c.child <= 0 || launcher_->IsChild(c.child, j.info.host, j.info.pid))) {
        l = &c;
      }
    }
    if (!l) {
      TM_WARN(kLogMigration, "coordinator: joiner process %" PRIu64 " (pid %u) for rank %d is not the replacement of "
                             "recovery %" PRIu64 "; told to exit", j.id, j.info.pid, j.info.replace, x.id);
      const std::string why = "rank " + std::to_string(j.info.replace) + " is being recovered (recovery " +
                              std::to_string(x.id) + "); this process is not its replacement";
      h.SendCommand(j.id, mig::Make(static_cast<uint16_t>(mig::Cmd::kAbort), x.id, mig::Reason{why}));
      return;
    }
    mig::Ready r;
    ProcessRec* dead = h.FindProcess(l->dead);
    if (!DecodePayload(e.body, &r) || !dead) return Fail(h, "malformed READY from the replacement");
    std::vector<const CommCreated*> dc;
    for (uint64_t k : l->keys) dc.push_back(&dead->comm_info.at(k));
    std::map<uint64_t, uint64_t> j2l;
    std::string diff = CompareLineages(r.comms, dc, &j2l);
    if (diff.empty()) diff = CompareRegions(dead->regions, r.regions);
    if (!diff.empty()) {
      l->joiner = j.id;  // told to exit by the abort
      return Fail(h, "the replacement of rank " + std::to_string(l->rank) + " does not match it: " + diff);
    }
    l->took = Spawned(*dead, *l, j.info.pid);  // its pid, as it registered (a node agent's child: now known)
    Describe(*m);
    Adopt(h, *m, *l, j.id, j2l);
  }

  // A waiting standby (docs/recovery.md, "Standbys") instead of a spawned replacement, when one fits: ASSIGN, then
  // the same commands as to a spawned one once it is ready. False when none fits (logged): spawn one.
  bool TakeStandby(EngineHost& h, Migration& m, const ProcessRec& dead, Lost& l) {
    std::vector<const CommCreated*> dc;
    for (uint64_t k : l.keys) dc.push_back(&dead.comm_info.at(k));
    std::string why;
    std::optional<StandbyPool::Pick> pick = standbys_.Take(h, dead, dc, &why);
    if (!pick) {
      TM_WARN(kLogMigration, "coordinator: recovery %" PRIu64 ": rank %d: %s; spawning a replacement", m.id, l.rank,
              why.c_str());
      return false;
    }
    TM_WARN(kLogMigration, "coordinator: recovery %" PRIu64 ": the replacement of rank %d is %s", m.id, l.rank,
            pick->describe.c_str());
    const int32_t world = std::max(dead.info.world, l.rank + 1);
    h.SendCommand(pick->process, standby::Make(standby::Cmd::kAssign, m.id, standby::Assign{l.rank, world}));
    const ProcessRec* standby = h.FindProcess(pick->process);
    l.host = standby ? standby->info.host : "";
    l.took = pick->describe;
    Describe(m);
    Adopt(h, m, l, pick->process, pick->j2l);
    return true;
  }

  // Spawns the replacement of `l` on the first host of l.hosts that starts it; each host tried is taken off the list
  // (one whose node agent cannot start it, or whose replacement ends before it registers, is not tried again in this
  // epoch: OnTick goes on down the list). False with *err, the last host's reason, when none did.
  bool SpawnReplacement(Migration& m, const ProcessRec& dead, Lost& l, std::string* err) {
    while (!l.hosts.empty()) {
      const std::string host = l.hosts.front();
      l.hosts.erase(l.hosts.begin());
      JoinerLauncher::Spec spec = JoinerSpec(m, dead, l.rank);
      spec.host = host;
      std::string log;
      l.child = launcher_->Start(spec, &log, err);
      if (l.child <= 0) {
        l.child = 0;
        TM_WARN(kLogMigration, "coordinator: recovery %" PRIu64 ": cannot start the replacement of rank %d on host %s: "
                               "%s%s%s", m.id, l.rank, host.c_str(), err->c_str(), l.hosts.empty() ? "" : "; trying host ",
                l.hosts.empty() ? "" : l.hosts.front().c_str());
        *err = "on host " + host + ": " + *err;
        continue;
      }
      l.host = host;
      l.took = Spawned(dead, l, l.child < kRemoteChild ? static_cast<uint32_t>(l.child) : 0);
      if (m.joiner_log.empty() || l.dead == ctx_->lost.front().dead) m.joiner_log = log;
      Describe(m);
      TM_WARN(kLogMigration, "coordinator: recovery %" PRIu64 ": replacement of rank %d %s, output in %s", m.id, l.rank,
              l.took.c_str(), log.c_str());
      return true;
    }
    return false;
  }

  // "spawned pid P on host H (why there)"; pid 0: not known yet (a node agent's child, until it registers).
  static std::string Spawned(const ProcessRec& dead, const Lost& l, uint32_t pid) {
    const char* why = l.host == dead.info.host      ? "the failed process's host"
                      : l.host == base::HostName() ? "the coordinator's host"
                                                   : "a spare host";
    return "spawned " + (pid ? "pid " + std::to_string(pid) + " " : std::string()) + "on " + l.host + " (" + why + ")";
  }

  // The record says where each replacement runs: `host` is the first failed rank's, `replacement` names each.
  void Describe(Migration& m) const {
    m.host = ctx_->lost.front().host;
    m.recovery.replacement.clear();
    for (const Lost& l : ctx_->lost) {
      if (l.took.empty()) continue;
      m.recovery.replacement += (m.recovery.replacement.empty() ? "" : "; ") +
                                (ctx_->lost.size() == 1 ? l.took : "rank " + std::to_string(l.rank) + ": " + l.took);
    }
  }

  // A replacement (spawned and ready, or a standby) is matched: MAP its communicators to the dead rank's; once every
  // failed rank has one, MAKE_IDS to the first (one process makes every fresh id, as in a planned migration); PREPARE
  // once the buddy exposed its copy.
  void Adopt(EngineHost& h, Migration& m, Lost& l, uint64_t j, const std::map<uint64_t, uint64_t>& j2l) {
    RecCtx& x = *ctx_;
    l.joiner = j;
    if (l.dead == x.lost.front().dead) m.joiner = j;
    mig::KeyList map;
    for (auto& [jk, lk] : j2l) map.keys.insert(map.keys.end(), {jk, lk});
    h.SendCommand(j, mig::Make(static_cast<uint16_t>(mig::Cmd::kMap), m.id, map));
    MaybeFetch(h, l);
    if (x.ids_sent || std::any_of(x.lost.begin(), x.lost.end(), [](const Lost& c) { return !c.joiner; })) return;
    x.ids_sent = true;
    if (m.state == MigState::kSpawning) h.EndPhase(m, 0, "replacement start");
    h.SetMigState(m, MigState::kReady);
    h.SetMigState(m, MigState::kBuilding);
    h.BeginPhase(m, 0, "build");
    h.SendCommand(x.lost.front().joiner, mig::Make(static_cast<uint16_t>(mig::Cmd::kMakeIds), m.id, mig::KeyList{x.keys}));
  }

  // The fresh ids: BUILD to every member of each communicator, each replacement at its dead rank's place.
  void OnIds(EngineHost& h, const Event& e) {
    RecCtx& x = *ctx_;
    mig::Ids ids;
    if (!DecodePayload(e.body, &ids)) return Fail(h, "malformed IDS");
    std::map<uint64_t, mig::Build> per;
    for (const mig::IdEntry& ie : ids.ids) {
      auto it = h.comms().find(ie.comm_key);
      if (it == h.comms().end()) return Fail(h, "a communicator of a failed rank disappeared");
      for (auto& [rank, proc] : it->second.members) {
        uint64_t to = proc;
        for (const Lost& l : x.lost) to = Stood(proc, l.dead) ? l.joiner : to;
        if (!x.ByJoiner(to) && !x.survivors.count(to)) return Fail(h, "a member of a rebuilt communicator is gone");
        per[to].entries.push_back(mig::BuildEntry{ie.comm_key, ie.id, it->second.nranks, rank});
        ++x.built_expected;
      }
    }
    for (auto& [proc, b] : per) h.SendCommand(proc, mig::Make(static_cast<uint16_t>(mig::Cmd::kBuild), x.id, b));
  }

  void OnBuilt(EngineHost& h, const Event& e) {
    mig::Built b;
    if (!DecodePayload(e.body, &b)) return Fail(h, "malformed BUILT");
    if (!b.ok) {  // the loss that caused it, if any, may still be on its way: it names the new epoch then
      if (ctx_->build_failed.empty()) {
        ctx_->build_failed = "building a replacement communicator failed: " + b.message;
        ctx_->build_failed_mono = MonoNs();
      }
      return;
    }
    ++ctx_->built_ok;
    MaybeRollBack(h);
  }

  void OnHeldExposed(EngineHost& h, const ProcessRec& from, const rec::RecMsg& m) {
    if (!ctx_ || m.step != ctx_->step) return;
    for (Lost& l : ctx_->lost) {
      if (l.rank != m.rank || l.buddy != from.id) continue;
      if (!m.ok) return Fail(h, "the buddy cannot expose its copy of rank " + std::to_string(m.rank) + ": " + m.text);
      l.descriptor = m.blob;
      l.buddy_pid = from.info.pid;
      return MaybeFetch(h, l);
    }
  }

  // The replacement connects to the buddy's copy (PREPARE), then reads it at once (READ on PREPARED): the copy
  // does not change, so there is no switch step to wait for.
  void MaybeFetch(EngineHost& h, Lost& l) {
    if (!l.joiner || l.descriptor.empty() || l.fetch_sent) return;
    l.fetch_sent = true;
    Migration* m = h.FindMigration(ctx_->id);
    if (m && std::count_if(ctx_->lost.begin(), ctx_->lost.end(), [](const Lost& c) { return c.fetch_sent; }) == 1) {
      h.BeginPhase(*m, 0, "transfer");
    }
    h.SendCommand(l.joiner,
                  mig::Make(static_cast<uint16_t>(mig::Cmd::kPrepare), ctx_->id, mig::Prepare{l.descriptor, l.buddy_pid}));
  }

  void OnVerified(EngineHost& h, const ProcessRec& from, const Event& e) {
    mig::Built b;
    Lost* l = ctx_->ByJoiner(from.id);
    if (!l) return;
    if (!DecodePayload(e.body, &b)) return Fail(h, "malformed VERIFIED");
    if (!b.ok) return Fail(h, "reading the snapshot of rank " + std::to_string(l->rank) + " from the buddy failed: " +
                              b.message);
    l->verified = true;
    Migration* m = h.FindMigration(ctx_->id);
    if (m) {
      for (const Region& r : from.regions) m->bytes_done += r.bytes;
      m->bytes_total = m->bytes_done;
      if (std::all_of(ctx_->lost.begin(), ctx_->lost.end(), [](const Lost& c) { return c.verified; })) {
        h.EndPhase(*m, 0, "transfer");
      }
    }
    MaybeRollBack(h);
  }

  // Once every survivor said which safe point it had passed when its fence came: each passes its safe points up to
  // the newest of those and holds at the first after it (HOLD_AFTER). Held at its own next safe point instead, a
  // survivor fenced just before a safe point would hold there while another, fenced just after it, waits for it in
  // the next step on a communicator without the failed rank (docs/recovery.md, "Fence").
  void OnFenceAt(EngineHost& h, const ProcessRec& from, const rec::RecMsg& m) {
    if (!ctx_ || m.epoch != ctx_->epoch || !ctx_->survivors.count(from.id) || ctx_->hold_after_sent) return;
    RecCtx& x = *ctx_;
    x.fence_at[from.id] = m.step;
    int64_t newest = -1;
    for (uint64_t q : x.survivors) {
      auto it = x.fence_at.find(q);
      if (it == x.fence_at.end()) return;
      newest = std::max(newest, it->second);
    }
    x.hold_after_sent = true;
    x.hold_after = newest;
    for (uint64_t q : x.survivors) h.SendCommand(q, x.HoldAfter());
  }

  void OnHeld(EngineHost& h, const ProcessRec& from, const rec::RecMsg& m) {
    if (!ctx_ || m.epoch != ctx_->epoch || !ctx_->survivors.count(from.id)) return;
    ctx_->held.insert(from.id);
    std::vector<int64_t> own;
    for (uint64_t w : m.words) own.push_back(static_cast<int64_t>(w));
    ctx_->local[from.id] = own;
    ctx_->held_at[from.id] = m.step;
    if (Migration* mg = h.FindMigration(ctx_->id)) mg->recovery.failed_at_step = std::max(mg->recovery.failed_at_step, m.step);
    MaybePick(h);
    if (ctx_) MaybeRollBack(h);
  }

  // Everyone switches together: each replacement holds its dead rank's state of S (verified), every replacement
  // communicator is built, every survivor waits at a safe point.
  void MaybeRollBack(EngineHost& h) {
    RecCtx& x = *ctx_;
    const bool verified = std::all_of(x.lost.begin(), x.lost.end(), [](const Lost& l) { return l.verified; });
    if (x.switch_sent || !verified || x.built_expected == 0 || x.built_ok < x.built_expected ||
        x.held.size() < x.survivors.size()) {
      return;
    }
    x.switch_sent = true;
    Migration* m = h.FindMigration(x.id);
    if (m) {
      h.EndPhase(*m, 0, "build");
      h.SetMigState(*m, MigState::kSwitching);
      h.BeginPhase(*m, 0, "rollback");
    }
    for (const Lost& l : x.lost) {
      h.SendCommand(l.joiner, mig::Make(static_cast<uint16_t>(mig::Cmd::kSwitch), x.id, mig::Step{x.step}));
      // The failed rank's copies after S belong to the abandoned timeline (its replacement continues from S).
      if (auto it = snaps_.find(l.rank); it != snaps_.end()) {
        for (auto& [b, steps] : it->second.held) std::erase_if(steps, [&](const auto& kv) { return kv.first > x.step; });
      }
    }
    for (uint64_t q : x.survivors) h.SendCommand(q, x.Rollback());
  }

  void OnRolledBack(EngineHost& h, const ProcessRec& from, const rec::RecMsg& m) {
    if (!ctx_ || m.epoch != ctx_->epoch || !ctx_->survivors.count(from.id)) return;
    ctx_->rolled.insert(from.id);
    // The steps after S are trained again: its snapshots of the old timeline beyond S are forgotten (before it
    // snapshots the new timeline, which it does as soon as it goes on, maybe before the recovery is marked done).
    auto it = snaps_.find(SnapshotRank(from));
    if (it != snaps_.end() && it->second.owner == from.id) {
      RankSnaps& rs = it->second;
      std::erase_if(rs.taken, [&](const auto& kv) { return kv.first > m.step; });
      for (auto& [b, steps] : rs.held) std::erase_if(steps, [&](const auto& kv) { return kv.first > m.step; });
      rs.shipping.clear();
    }
    MaybeDone(h);
  }

  void MaybeDone(EngineHost& h) {
    RecCtx& x = *ctx_;
    const bool switched = std::all_of(x.lost.begin(), x.lost.end(), [](const Lost& l) { return l.switched; });
    if (!switched || x.rolled.size() < x.survivors.size()) return;
    Migration* m = h.FindMigration(x.id);
    if (!m) return;
    m->downtime_ns = MonoNs() - x.detected_mono;
    m->recovery.lost_steps = std::max<int64_t>(0, Completed(x) - x.step);
    h.EndPhase(*m, 0, "rollback");
    for (const Lost& l : x.lost) {
      if (ProcessRec* j = h.FindProcess(l.joiner)) {
        j->info.role = "worker";  // it holds the rank now (a standby too)
        j->info.replace = -1;
        j->info.rank = l.rank;
        if (const ProcessRec* d = h.FindProcess(l.dead)) {
          j->info.world = d->info.world;
          // It took the dead rank's communicators at the switch: known as its own even before it reported them, so
          // that its own loss right after the switch fences them (Start).
          for (uint64_t k : l.keys) {
            if (!j->comm_info.count(k) && d->comm_info.count(k)) j->comm_info[k] = d->comm_info.at(k);
          }
          took_over_[j->id] = d->id;
        }
      }
    }
    h.SetMigState(*m, MigState::kDone);
    TM_WARN(kLogMigration,
            "coordinator: recovery %" PRIu64 " of %s done: rolled back to step %" PRId64 ", %" PRId64
            " step(s) lost, %.1f ms from detection to training",
            m->id, x.Ranks().c_str(), x.step, m->recovery.lost_steps, m->downtime_ns / 1e6);
    ctx_.reset();
    StartNext(h);
  }

  // Whether `member` (as a communicator's member table has it) is `dead`'s place: `dead` itself, or a process whose
  // place it took in a recovery and that the table still names (a replacement lost before it reported its own).
  bool Stood(uint64_t member, uint64_t dead) const {
    for (int hops = 0; dead && hops < 64; ++hops) {
      if (member == dead) return true;
      auto it = took_over_.find(dead);
      dead = it == took_over_.end() ? 0 : it->second;
    }
    return false;
  }

  // The newest step completed everywhere as known: the failed ranks' last safe point or snapshot, and the step before
  // the lowest one a survivor is held at (a survivor may have run that one on fenced communicators: in flight).
  static int64_t Completed(const RecCtx& x) {
    if (x.held_at.empty()) return x.completed;
    const auto lowest = std::min_element(x.held_at.begin(), x.held_at.end(),
                                         [](const auto& a, const auto& b) { return a.second < b.second; });
    return std::max(x.completed, lowest->second - 1);
  }

  // A rank that failed while the previous recovery switched: recovered now, under the next epoch.
  void StartNext(EngineHost& h) {
    std::vector<uint64_t> next = std::move(next_);
    next_.clear();
    for (uint64_t p : next) {
      const ProcessRec* pr = h.FindProcess(p);
      if (!pr) continue;
      if (ctx_) {
        FailedDuring(h, *pr);
      } else {
        Start(h, {pr});
      }
    }
  }

  // Drops the recovery in progress: its replacements and the staged builds (ABORT; a replacement not registered yet
  // is stopped), its record failed with `why`. The survivors stay fenced (the caller decides what comes next).
  void Drop(EngineHost& h, const std::string& why) {
    RecCtx& x = *ctx_;
    std::vector<uint64_t> to(x.survivors.begin(), x.survivors.end());
    for (const Lost& l : x.lost) {
      if (l.joiner) to.push_back(l.joiner);
      if (l.child > 0 && !l.joiner) launcher_->Stop(l.child);
    }
    for (uint64_t q : to) h.SendCommand(q, mig::Make(static_cast<uint16_t>(mig::Cmd::kAbort), x.id, mig::Reason{why}));
    if (Migration* m = h.FindMigration(x.id)) h.SetMigState(*m, MigState::kFailed, why);
    ctx_.reset();
  }

  // Recovery impossible: the recovery is dropped and the survivors end with the reason (GIVE_UP); the job fails as
  // the failure would have failed it, saying why.
  void Fail(EngineHost& h, const std::string& why) {
    const RecCtx& x = *ctx_;
    TM_WARN(kLogMigration, "coordinator: recovery of %s impossible: %s", x.Ranks().c_str(), why.c_str());
    rec::RecMsg give_up{.text = x.Ranks() + " failed and cannot be recovered: " + why};
    const std::set<uint64_t> survivors = x.survivors;
    const uint64_t id = x.id;
    Drop(h, why);
    for (uint64_t q : survivors) h.SendCommand(q, rec::MakeRec(rec::Cmd::kGiveUp, id, give_up));
    next_.clear();
  }

  std::unique_ptr<JoinerLauncher> launcher_;
  std::vector<std::string> spare_hosts_;  // the job's spare hosts (--straggler-spare-hosts), for spawned replacements
  StandbyPool standbys_;
  std::map<int32_t, RankSnaps> snaps_;
  std::map<uint64_t, uint64_t> took_over_;  // a recovery's replacement -> the failed process whose place it took
  int64_t every_ = 0, every_before_ = 0;  // the auto interval distributed now, and the one before it (0: none)
  std::optional<RecCtx> ctx_;
  uint64_t epoch_ = 0;
  struct Declared {
    uint64_t epoch = 0;
    int32_t rank = -1;
    uint64_t at_mono = 0;
  };
  std::map<uint64_t, Declared> declared_;  // processes declared failed, until they exit or are told to end
  std::vector<uint64_t> next_;  // failed while a recovery switched: recovered once it is done
  struct Waiting {
    uint64_t migration = 0, from = 0;
    rec::RecMsg snap;  // its SNAP_TAKEN
  };
  std::vector<Waiting> waiting_;  // snapshots of a switch step whose pull waits for the switch (SwitchPending)
  struct Probe {
    uint64_t number = 0, sent_mono = 0;
    std::string why;
  };
  std::map<uint64_t, Probe> probes_;  // process -> the probe it has not answered yet
  uint64_t probe_number_ = 0;
};

}  // namespace

std::vector<std::string> ReplacementHosts(const std::string& dead_host, bool own_failure,
                                          const std::function<bool(const std::string&)>& can_start,
                                          const std::vector<std::string>& spares, const std::string& here) {
  std::vector<std::string> hosts;
  auto add = [&hosts](const std::string& host) {
    if (std::find(hosts.begin(), hosts.end(), host) == hosts.end()) hosts.push_back(host);
  };
  if (own_failure && (dead_host == here || can_start(dead_host))) add(dead_host);
  for (const std::string& spare : spares) {
    if (spare != dead_host && spare != here && can_start(spare)) add(spare);
  }
  add(here);
  return hosts;
}

std::unique_ptr<Engine> MakeRecoveryEngine(std::unique_ptr<JoinerLauncher> launcher,
                                           std::vector<std::string> spare_hosts) {
  return std::make_unique<RecoveryEngine>(launcher ? std::move(launcher) : MakeProcessLauncher(),
                                          std::move(spare_hosts));
}

void AddJobEngines(Coordinator& coord, const std::vector<std::string>& spare_hosts) {
  auto nodes = std::make_unique<node::Directory>();
  node::Directory* directory = nodes.get();
  coord.AddEngine(std::move(nodes));
  coord.AddEngine(MakeMigrationEngine(MakeNodeLauncher(directory, MakeProcessLauncher())));
  coord.AddEngine(MakeRecoveryEngine(MakeNodeLauncher(directory, MakeProcessLauncher()), spare_hosts));
}

}  // namespace trainmover::control
