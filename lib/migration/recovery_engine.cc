// SPDX-License-Identifier: Apache-2.0
// The coordinator's failure-recovery engine: recovery_engine.h says what it does, docs/recovery.md the protocol.
// Snapshot bookkeeping in RankSnaps, one recovery at a time in RecCtx, one handler per event.
#include "recovery_engine.h"

#include <signal.h>

#include <algorithm>
#include <cinttypes>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "base/host.h"
#include "base/log.h"
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
};

// A snapshot round: every worker snapshots the same step, every buddy verifies its copy; then it is complete.
struct Round {
  int64_t step = -1;           // -1: no round in flight
  std::set<uint64_t> owners;   // the workers asked (SNAP_AT)
  std::set<uint64_t> taken;    // their SNAP_TAKEN arrived
  size_t pulls = 0, answered = 0;  // copies asked of buddies, answers (SNAP_HELD)
  bool failed = false;
  uint64_t started_mono = 0;
};

// Rounds start at most this often (a bound on the coordinator's snapshot traffic: four messages per rank per round)
// and are given up after kRoundTimeoutNs.
constexpr uint64_t kMinRoundIntervalNs = 20000000ull;
constexpr uint64_t kRoundTimeoutNs = 30000000000ull;

// The recovery in progress.
struct RecCtx {
  uint64_t id = 0, epoch = 0, dead = 0, buddy = 0, joiner = 0;
  int32_t rank = -1;
  int64_t step = -1;                     // the rollback step S
  std::vector<uint64_t> keys;            // the dead rank's communicators, in its creation order
  std::set<uint64_t> survivors, held, rolled;
  pid_t child = 0;
  std::vector<uint8_t> descriptor;       // the buddy's exposure of the dead rank's copy
  bool tape_sent = false, fetch_sent = false, verified = false, switch_sent = false, joiner_switched = false;
  size_t built_expected = 0, built_ok = 0;
  uint64_t detected_mono = 0;
};

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

class RecoveryEngine final : public Engine {
 public:
  explicit RecoveryEngine(std::unique_ptr<JoinerLauncher> l) : launcher_(std::move(l)) {}

  const char* kind() const override { return kKindRecover; }
  std::string Validate(EngineHost&, const Migration&) override {
    return "a recovery starts by itself when a rank fails; it cannot be requested";
  }
  void OnRequest(EngineHost&, Migration&) override {}
  void OnCancel(EngineHost& h, Migration& m) override {
    if (ctx_ && ctx_->id == m.id) Fail(h, "cancelled by the operator");
  }

  void OnEvent(EngineHost& h, uint64_t p, const Event& e) override {
    ProcessRec* from = h.FindProcess(p);
    if (!from) return;
    if (e.kind >= standby::kFirstStandbyKind) return standbys_.OnEvent(h, *from, e);
    if (e.kind >= rec::kFirstRecoveryKind) {
      rec::RecMsg m;
      if (!DecodePayload(e.body, &m)) return;
      switch (static_cast<rec::Ev>(e.kind)) {
        case rec::Ev::kSnapTaken:
          return OnSnapTaken(h, *from, m);
        case rec::Ev::kSnapHeld:
          return OnSnapHeld(h, *from, m);
        case rec::Ev::kHeld:
          return OnHeld(h, *from, m);
        case rec::Ev::kHeldExposed:
          return OnHeldExposed(h, m);
        case rec::Ev::kRolledBack:
          return OnRolledBack(h, *from, m);
        case rec::Ev::kSnapMissed:
          if (m.step == round_.step && round_.owners.count(p)) {
            margin_ = std::min<int64_t>(margin_ * 2, 1024);  // the next round starts further ahead
            round_.failed = true;
            EndRound(h);
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
        if (p == ctx_->joiner) {
          h.SendCommand(p, mig::Make(static_cast<uint16_t>(mig::Cmd::kRead), ctx_->id, mig::Step{ctx_->step}));
        }
        return;
      case mig::Ev::kVerified:
        return OnVerified(h, *from, e);
      case mig::Ev::kSwitched:
        if (p == ctx_->joiner) ctx_->joiner_switched = true;
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
    for (auto& [rank, rs] : snaps_) rs.held.erase(p);  // a buddy that is gone holds nothing any more
    if (round_.step >= 0) {  // the round cannot complete without it (and a recovery may start now)
      round_.failed = true;
      EndRound(h);
    }
    ProcessRec* pr = h.FindProcess(p);
    if (!pr) return;
    if (ctx_ && p == ctx_->joiner && !ctx_->joiner_switched) {
      return Fail(h, "the replacement of rank " + std::to_string(ctx_->rank) + " was lost");
    }
    if (pr->state == ProcState::kExited || pr->info.role != "worker" || pr->info.rank < 0) return;
    if (ctx_ && ctx_->survivors.count(p)) {
      return Fail(h, "rank " + std::to_string(pr->info.rank) + " failed too during the recovery of rank " +
                         std::to_string(ctx_->rank));
    }
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
    auto snaps = snaps_.find(pr->info.rank);
    if (snaps == snaps_.end() || snaps->second.owner != p) {
      TM_WARN(kLogMigration, "coordinator: rank %d failed (%s); it took no snapshot (no registered state, or a "
                             "process without the shim's recovery), so it cannot be recovered",
              pr->info.rank, pr->lost_reason.c_str());
      return;
    }
    Start(h, *pr);
  }

  void OnTick(EngineHost& h) override {
    standbys_.OnTick(h);
    if (round_.step >= 0 && MonoNs() - round_.started_mono > kRoundTimeoutNs) {
      round_.failed = true;
      EndRound(h);
    }
    MaybeStartRound(h);
    if (!ctx_) return;
    RecCtx& x = *ctx_;
    if (MonoNs() - x.detected_mono > uint64_t{migration::kRecoveryHoldMs} * 1000000ull) {
      return Fail(h, "the recovery did not complete within " + std::to_string(migration::kRecoveryHoldMs) + " ms");
    }
    std::string how;
    if (x.child > 0 && !x.joiner && launcher_->Exited(x.child, &how)) {
      x.child = 0;
      return Fail(h, "the replacement of rank " + std::to_string(x.rank) + " exited (" + how + ") before it was ready");
    }
    // The replacement runs its shadow iteration without a tape (the dead rank recorded none): an empty one at once
    // saves it the wait for one.
    for (const auto& [id, p] : h.processes()) {
      if (x.tape_sent || p.state != ProcState::kAlive || p.info.role != "joiner" || p.info.replace != x.rank ||
          (x.child > 0 && p.info.pid != static_cast<uint32_t>(x.child))) {
        continue;
      }
      x.tape_sent = h.SendCommand(id, mig::Make(static_cast<uint16_t>(mig::Cmd::kTape), x.id, mig::Blob{}));
    }
  }

 private:
  // ---- snapshots

  RankSnaps& SnapsOf(const ProcessRec& p) {
    RankSnaps& rs = snaps_[p.info.rank];
    if (rs.owner != p.id) rs = RankSnaps{.owner = p.id};  // a new process holds the rank: its own timeline
    return rs;
  }

  // The buddies of `rank`: the next ranks in order, those on other hosts first, TRAINMOVER_SNAPSHOT_COPIES of them.
  std::vector<uint64_t> Buddies(EngineHost& h, const ProcessRec& owner) {
    std::map<int32_t, const ProcessRec*> workers;
    for (const auto& [id, p] : h.processes()) {
      if (p.state == ProcState::kAlive && p.info.role == "worker" && p.info.rank >= 0) workers[p.info.rank] = &p;
    }
    const std::string copies_env = EnvOf(owner, "SNAPSHOT_COPIES");
    const size_t copies = copies_env.empty() ? 1 : static_cast<size_t>(std::max(1, atoi(copies_env.c_str())));
    std::vector<const ProcessRec*> order;
    for (auto it = workers.upper_bound(owner.info.rank); it != workers.end(); ++it) order.push_back(it->second);
    for (auto it = workers.begin(); it != workers.end() && it->first < owner.info.rank; ++it) order.push_back(it->second);
    std::vector<uint64_t> out;
    for (bool other_host : {true, false}) {
      for (const ProcessRec* p : order) {
        if (out.size() < copies && (p->info.host != owner.info.host) == other_host) out.push_back(p->id);
      }
    }
    return out;
  }

  // The next round, when none is in flight and no recovery runs: at the first multiple of TRAINMOVER_SNAPSHOT_EVERY
  // at least `margin_` steps above every worker's latest step (a worker already there answers SNAP_MISSED).
  void MaybeStartRound(EngineHost& h) {
    const uint64_t now = MonoNs();
    if (ctx_ || round_.step >= 0 || now - last_round_mono_ < kMinRoundIntervalNs) return;
    Round r;
    int64_t top = -1, every = 1;
    for (const auto& [id, p] : h.processes()) {
      if (p.state != ProcState::kAlive || p.info.role != "worker" || p.info.rank < 0 || p.step < 0 ||
          p.regions.empty() || EnvOf(p, "RECOVERY") == "off") {
        continue;
      }
      r.owners.insert(id);
      top = std::max(top, p.step);
      const std::string e = EnvOf(p, "SNAPSHOT_EVERY");
      if (!e.empty()) every = std::max<int64_t>(1, atoll(e.c_str()));
    }
    if (r.owners.empty()) return;
    r.step = (top + margin_ + every - 1) / every * every;
    r.started_mono = now;
    last_round_mono_ = now;
    round_ = r;
    for (uint64_t q : r.owners) h.SendCommand(q, rec::MakeRec(rec::Cmd::kSnapAt, 0, rec::RecMsg{.step = r.step}));
  }

  void OnSnapTaken(EngineHost& h, const ProcessRec& from, const rec::RecMsg& m) {
    if (m.step != round_.step || !round_.owners.count(from.id) || round_.taken.count(from.id)) return;
    RankSnaps& rs = SnapsOf(from);
    auto forget_slot = [&](std::map<int64_t, uint32_t>& steps) {
      std::erase_if(steps, [&](const auto& kv) { return kv.second == m.slot; });
    };
    forget_slot(rs.taken);
    rs.taken[m.step] = m.slot;
    round_.taken.insert(from.id);
    rec::RecMsg pull = m;  // with the owner's slot descriptor
    pull.rank = from.info.rank;
    for (uint64_t b : Buddies(h, from)) {
      forget_slot(rs.held[b]);
      round_.pulls++;
      h.SendCommand(b, rec::MakeRec(rec::Cmd::kSnapPull, 0, pull));
    }
    MaybeEndRound(h);
  }

  void OnSnapHeld(EngineHost& h, const ProcessRec& buddy, const rec::RecMsg& m) {
    auto it = snaps_.find(m.rank);
    if (m.step != round_.step || it == snaps_.end()) return;
    auto slot = it->second.taken.find(m.step);
    if (m.ok && slot != it->second.taken.end()) {
      it->second.held[buddy.id][m.step] = slot->second;
    } else {
      round_.failed = true;
    }
    round_.answered++;
    MaybeEndRound(h);
  }

  void MaybeEndRound(EngineHost& h) {
    if (round_.taken.size() == round_.owners.size() && round_.answered == round_.pulls) EndRound(h);
  }

  // A complete round is the newest step every rank can roll back to: each keeps it (SNAP_COMPLETE) until the next.
  void EndRound(EngineHost& h) {
    const Round r = round_;
    round_ = Round{};
    if (!r.failed) {
      margin_ = std::max<int64_t>(2, margin_ / 2);
      for (uint64_t q : r.owners) h.SendCommand(q, rec::MakeRec(rec::Cmd::kSnapComplete, 0, rec::RecMsg{.step = r.step}));
      MaybeStartRound(h);  // back to back while the interval allows (else the next tick)
    }
  }

  // ---- a failure

  // The newest step that a live buddy holds of the dead rank and every survivor holds itself, and that buddy.
  std::optional<std::pair<int64_t, uint64_t>> PickStep(EngineHost& h, int32_t rank, const std::set<uint64_t>& survivors,
                                                       std::string* why) {
    std::map<int64_t, uint64_t, std::greater<>> offered;  // step -> a buddy holding it
    auto it = snaps_.find(rank);
    if (it != snaps_.end()) {
      for (const auto& [b, steps] : it->second.held) {
        const ProcessRec* bp = h.FindProcess(b);
        if (!bp || bp->state != ProcState::kAlive) continue;
        for (const auto& [step, slot] : steps) offered.emplace(step, b);
      }
    }
    if (offered.empty()) {
      *why = "no snapshot of rank " + std::to_string(rank) + " is complete on a live buddy";
      return std::nullopt;
    }
    for (const auto& [step, b] : offered) {
      bool everywhere = true;
      for (uint64_t q : survivors) {
        const ProcessRec* qp = h.FindProcess(q);
        auto qs = qp ? snaps_.find(qp->info.rank) : snaps_.end();
        everywhere &= qs != snaps_.end() && qs->second.owner == q && qs->second.taken.count(step);
      }
      if (everywhere) return std::make_pair(step, b);
    }
    *why = "no snapshot step of rank " + std::to_string(rank) + " held by its buddy is held by every survivor";
    return std::nullopt;
  }

  void Start(EngineHost& h, const ProcessRec& dead) {
    const int32_t rank = dead.info.rank;
    Migration& m = h.NewMigration(kKindRecover, rank);
    m.leaver = dead.id;
    m.spawn = true;
    m.recovery.epoch = ++epoch_;
    m.recovery.detected_by = dead.lost_reason;
    m.recovery.detected_ns = m.created_ns;
    RecCtx x;
    x.id = m.id;
    x.epoch = m.recovery.epoch;
    x.dead = dead.id;
    x.rank = rank;
    x.detected_mono = MonoNs();
    int64_t reached = dead.step;
    for (const auto& [id, p] : h.processes()) {
      if (id == dead.id || p.state != ProcState::kAlive || p.info.role != "worker" || p.info.rank < 0) continue;
      x.survivors.insert(id);
      reached = std::max(reached, p.step);
    }
    m.recovery.failed_at_step = reached;
    TM_WARN(kLogMigration, "coordinator: rank %d (process %" PRIu64 ") failed: %s; recovery %" PRIu64 ", epoch %" PRIu64,
            rank, dead.id, dead.lost_reason.c_str(), m.id, x.epoch);
    if (dead.lost_reason.rfind("no heartbeat", 0) == 0 && dead.info.host == base::HostName() && dead.info.pid > 0) {
      kill(static_cast<pid_t>(dead.info.pid), SIGKILL);  // silent (stopped, hung): it must not come back
    }
    ctx_ = x;
    round_ = Round{};  // a round in flight is moot: the survivors hold at their next safe point
    std::string why;
    std::optional<std::pair<int64_t, uint64_t>> pick = PickStep(h, rank, x.survivors, &why);
    if (!pick) return Fail(h, why);
    ctx_->step = pick->first;
    ctx_->buddy = pick->second;
    m.recovery.rollback_step = pick->first;
    m.switch_step = pick->first;
    // The dead rank's communicators, in its creation order: fenced, then rebuilt with the replacement.
    std::vector<std::pair<uint32_t, uint64_t>> order;
    for (const auto& [key, info] : dead.comm_info) order.push_back({info.lineage.index, key});
    std::sort(order.begin(), order.end());
    for (auto& [idx, key] : order) ctx_->keys.push_back(key);
    h.BeginPhase(m, 0, "fence");
    rec::RecMsg fence{.epoch = x.epoch, .rank = rank, .words = ctx_->keys};
    for (uint64_t q : x.survivors) h.SendCommand(q, rec::MakeRec(rec::Cmd::kFence, m.id, fence));
    h.SendCommand(ctx_->buddy, rec::MakeRec(rec::Cmd::kExposeHeld, m.id, rec::RecMsg{.rank = rank, .step = ctx_->step}));
    if (TakeStandby(h, m, dead)) return;
    h.SetMigState(m, MigState::kSpawning);
    h.BeginPhase(m, 0, "replacement start");
    std::string err, log;
    if (dead.info.cmdline.empty()) {
      err = "the failed rank reported no command line";
    } else {
      ctx_->child = launcher_->Start(JoinerSpec(m, dead, rank), &log, &err);
    }
    if (ctx_->child <= 0) return Fail(h, "cannot start the replacement of rank " + std::to_string(rank) + ": " + err);
    m.joiner_log = log;
    m.recovery.replacement = "spawned pid " + std::to_string(ctx_->child);
    TM_WARN(kLogMigration, "coordinator: recovery %" PRIu64 ": rolling back to step %" PRId64
                           " (snapshot held by process %" PRIu64 "); replacement pid %d, output in %s",
            m.id, ctx_->step, ctx_->buddy, ctx_->child, log.c_str());
  }

  // The replacement's READY: matched against the dead rank like a joiner against its leaver.
  void OnReady(EngineHost& h, ProcessRec& j, const Event& e) {
    RecCtx& x = *ctx_;
    Migration* m = h.FindMigration(x.id);
    if (j.info.role != "joiner" || j.info.replace != x.rank || x.joiner || !m) return;
    if (x.child > 0 && j.info.pid != static_cast<uint32_t>(x.child)) return;  // e.g. an abandoned migration's joiner
    mig::Ready r;
    ProcessRec* dead = h.FindProcess(x.dead);
    if (!DecodePayload(e.body, &r) || !dead) return Fail(h, "malformed READY from the replacement");
    std::vector<const CommCreated*> dc;
    for (uint64_t k : x.keys) dc.push_back(&dead->comm_info.at(k));
    std::map<uint64_t, uint64_t> j2l;
    std::string diff = CompareLineages(r.comms, dc, &j2l);
    if (diff.empty()) diff = CompareRegions(dead->regions, r.regions);
    if (!diff.empty()) {
      x.joiner = j.id;  // told to exit by the abort
      return Fail(h, "the replacement of rank " + std::to_string(x.rank) + " does not match it: " + diff);
    }
    h.EndPhase(*m, 0, "replacement start");
    Adopt(h, *m, j.id, j2l);
  }

  // A waiting standby (docs/recovery.md, "Standbys") instead of a spawned replacement, when one fits: ASSIGN, then
  // the same commands as to a spawned one once it is ready. False: none fits (logged), spawn one.
  bool TakeStandby(EngineHost& h, Migration& m, const ProcessRec& dead) {
    std::vector<const CommCreated*> dc;
    for (uint64_t k : ctx_->keys) dc.push_back(&dead.comm_info.at(k));
    std::string why;
    std::optional<StandbyPool::Pick> pick = standbys_.Take(h, dead, dc, &why);
    if (!pick) {
      TM_WARN(kLogMigration, "coordinator: recovery %" PRIu64 ": %s; spawning a replacement", m.id, why.c_str());
      return false;
    }
    m.recovery.replacement = pick->describe;
    TM_WARN(kLogMigration, "coordinator: recovery %" PRIu64 ": rolling back to step %" PRId64
                           " (snapshot held by process %" PRIu64 "); the replacement is %s",
            m.id, ctx_->step, ctx_->buddy, pick->describe.c_str());
    const int32_t world = std::max(dead.info.world, ctx_->rank + 1);
    h.SendCommand(pick->process, standby::Make(standby::Cmd::kAssign, m.id, standby::Assign{ctx_->rank, world}));
    Adopt(h, m, pick->process, pick->j2l);
    return true;
  }

  // The replacement (spawned and ready, or a standby) is matched: MAP its communicators to the dead rank's, MAKE_IDS,
  // and PREPARE once the buddy exposed its copy.
  void Adopt(EngineHost& h, Migration& m, uint64_t j, const std::map<uint64_t, uint64_t>& j2l) {
    ctx_->joiner = j;
    m.joiner = j;
    h.SetMigState(m, MigState::kReady);
    h.SetMigState(m, MigState::kBuilding);
    h.BeginPhase(m, 0, "build");
    mig::KeyList map;
    for (auto& [jk, lk] : j2l) map.keys.insert(map.keys.end(), {jk, lk});
    h.SendCommand(j, mig::Make(static_cast<uint16_t>(mig::Cmd::kMap), m.id, map));
    h.SendCommand(j, mig::Make(static_cast<uint16_t>(mig::Cmd::kMakeIds), m.id, mig::KeyList{ctx_->keys}));
    MaybeFetch(h);
  }

  // The fresh ids: BUILD to every member of each communicator, the replacement at the dead rank's place.
  void OnIds(EngineHost& h, const Event& e) {
    RecCtx& x = *ctx_;
    mig::Ids ids;
    if (!DecodePayload(e.body, &ids)) return Fail(h, "malformed IDS");
    std::map<uint64_t, mig::Build> per;
    for (const mig::IdEntry& ie : ids.ids) {
      auto it = h.comms().find(ie.comm_key);
      if (it == h.comms().end()) return Fail(h, "a communicator of the failed rank disappeared");
      for (auto& [rank, proc] : it->second.members) {
        const uint64_t to = proc == x.dead ? x.joiner : proc;
        if (to != x.joiner && !x.survivors.count(to)) return Fail(h, "a member of a rebuilt communicator is gone");
        per[to].entries.push_back(mig::BuildEntry{ie.comm_key, ie.id, it->second.nranks, rank});
        ++x.built_expected;
      }
    }
    for (auto& [proc, b] : per) h.SendCommand(proc, mig::Make(static_cast<uint16_t>(mig::Cmd::kBuild), x.id, b));
  }

  void OnBuilt(EngineHost& h, const Event& e) {
    mig::Built b;
    if (!DecodePayload(e.body, &b)) return Fail(h, "malformed BUILT");
    if (!b.ok) return Fail(h, "building a replacement communicator failed: " + b.message);
    ++ctx_->built_ok;
    MaybeRollBack(h);
  }

  void OnHeldExposed(EngineHost& h, const rec::RecMsg& m) {
    if (!ctx_ || m.rank != ctx_->rank || m.step != ctx_->step) return;
    if (!m.ok) return Fail(h, "the buddy cannot expose its copy of rank " + std::to_string(m.rank) + ": " + m.text);
    ctx_->descriptor = m.blob;
    MaybeFetch(h);
  }

  // The replacement connects to the buddy's copy (PREPARE), then reads it at once (READ on PREPARED): the copy
  // does not change, so there is no switch step to wait for.
  void MaybeFetch(EngineHost& h) {
    RecCtx& x = *ctx_;
    if (!x.joiner || x.descriptor.empty() || x.fetch_sent) return;
    x.fetch_sent = true;
    if (Migration* m = h.FindMigration(x.id)) h.BeginPhase(*m, 0, "transfer");
    h.SendCommand(x.joiner, mig::Make(static_cast<uint16_t>(mig::Cmd::kPrepare), x.id, mig::Blob{x.descriptor}));
  }

  void OnVerified(EngineHost& h, const ProcessRec& from, const Event& e) {
    mig::Built b;
    if (from.id != ctx_->joiner) return;
    if (!DecodePayload(e.body, &b)) return Fail(h, "malformed VERIFIED");
    if (!b.ok) return Fail(h, "reading the snapshot from the buddy failed: " + b.message);
    ctx_->verified = true;
    Migration* m = h.FindMigration(ctx_->id);
    if (m) {
      h.EndPhase(*m, 0, "transfer");
      for (const Region& r : from.regions) m->bytes_done += r.bytes;
      m->bytes_total = m->bytes_done;
    }
    MaybeRollBack(h);
  }

  void OnHeld(EngineHost& h, const ProcessRec& from, const rec::RecMsg& m) {
    if (!ctx_ || m.epoch != ctx_->epoch || !ctx_->survivors.count(from.id)) return;
    ctx_->held.insert(from.id);
    if (Migration* mg = h.FindMigration(ctx_->id)) {
      mg->recovery.failed_at_step = std::max(mg->recovery.failed_at_step, m.step);
      if (ctx_->held.size() == ctx_->survivors.size()) h.EndPhase(*mg, 0, "fence");
    }
    MaybeRollBack(h);
  }

  // Everyone switches together: the replacement holds the dead rank's state of S (verified), every replacement
  // communicator is built, every survivor waits at a safe point.
  void MaybeRollBack(EngineHost& h) {
    RecCtx& x = *ctx_;
    if (x.switch_sent || !x.verified || x.built_expected == 0 || x.built_ok < x.built_expected ||
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
    h.SendCommand(x.joiner, mig::Make(static_cast<uint16_t>(mig::Cmd::kSwitch), x.id, mig::Step{x.step}));
    rec::RecMsg rb{.epoch = x.epoch, .step = x.step};
    for (uint64_t q : x.survivors) h.SendCommand(q, rec::MakeRec(rec::Cmd::kRollback, x.id, rb));
  }

  void OnRolledBack(EngineHost& h, const ProcessRec& from, const rec::RecMsg& m) {
    if (!ctx_ || m.epoch != ctx_->epoch) return;
    ctx_->rolled.insert(from.id);
    MaybeDone(h);
  }

  void MaybeDone(EngineHost& h) {
    RecCtx& x = *ctx_;
    if (!x.joiner_switched || x.rolled.size() < x.survivors.size()) return;
    Migration* m = h.FindMigration(x.id);
    if (!m) return;
    m->downtime_ns = MonoNs() - x.detected_mono;
    m->recovery.lost_steps = m->recovery.failed_at_step - x.step;
    h.EndPhase(*m, 0, "rollback");
    if (ProcessRec* j = h.FindProcess(x.joiner)) {
      j->info.role = "worker";  // it holds the rank now (a standby too)
      j->info.replace = -1;
      j->info.rank = x.rank;
      if (const ProcessRec* d = h.FindProcess(x.dead)) j->info.world = d->info.world;
    }
    // The steps after S are trained again: snapshots of the old timeline beyond S are forgotten.
    for (auto& [rank, rs] : snaps_) {
      std::erase_if(rs.taken, [&](const auto& kv) { return kv.first > x.step && rs.owner != x.joiner; });
      for (auto& [b, steps] : rs.held) std::erase_if(steps, [&](const auto& kv) { return kv.first > x.step; });
    }
    h.SetMigState(*m, MigState::kDone);
    TM_WARN(kLogMigration,
            "coordinator: recovery %" PRIu64 " of rank %d done: rolled back to step %" PRId64 ", %" PRId64
            " step(s) lost, %.1f ms from detection to training",
            m->id, x.rank, x.step, m->recovery.lost_steps, m->downtime_ns / 1e6);
    ctx_.reset();
  }

  // Recovery impossible: the replacement and the staged builds are dropped (ABORT) and the survivors end with
  // the reason (GIVE_UP); the job fails as the failure would have failed it, saying why.
  void Fail(EngineHost& h, const std::string& why) {
    RecCtx& x = *ctx_;
    TM_WARN(kLogMigration, "coordinator: recovery of rank %d impossible: %s", x.rank, why.c_str());
    std::vector<uint64_t> to(x.survivors.begin(), x.survivors.end());
    if (x.joiner) to.push_back(x.joiner);
    for (uint64_t q : to) h.SendCommand(q, mig::Make(static_cast<uint16_t>(mig::Cmd::kAbort), x.id, mig::Reason{why}));
    rec::RecMsg give_up{.text = "rank " + std::to_string(x.rank) + " failed and cannot be recovered: " + why};
    for (uint64_t q : x.survivors) h.SendCommand(q, rec::MakeRec(rec::Cmd::kGiveUp, x.id, give_up));
    if (x.child > 0 && !x.joiner) launcher_->Stop(x.child);
    if (Migration* m = h.FindMigration(x.id)) h.SetMigState(*m, MigState::kFailed, why);
    ctx_.reset();
  }

  std::unique_ptr<JoinerLauncher> launcher_;
  StandbyPool standbys_;
  std::map<int32_t, RankSnaps> snaps_;
  Round round_;
  int64_t margin_ = 2;  // steps ahead of the furthest worker a round is placed
  uint64_t last_round_mono_ = 0;
  std::optional<RecCtx> ctx_;
  uint64_t epoch_ = 0;
};

}  // namespace

std::unique_ptr<Engine> MakeRecoveryEngine(std::unique_ptr<JoinerLauncher> launcher) {
  return std::make_unique<RecoveryEngine>(launcher ? std::move(launcher) : MakeProcessLauncher());
}

}  // namespace trainmover::control
