// SPDX-License-Identifier: Apache-2.0
// The coordinator's migration engine: docs/migration.md describes the protocol it drives. One MoveCtx per
// migration, one handler per event; the migration's own state is the coordinator's MigState, each moved
// rank's progress a PairStage, the tape relay a TapeRelay.
#include "engine.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "base/config.h"
#include "base/host.h"
#include "base/log.h"
#include "base/spawn_process.h"
#include "msgs.h"
#include "recovery_msgs.h"

extern char** environ;

namespace trainmover::control {

namespace {

constexpr size_t kMaxTapeRelay = size_t{1} << 30;  // D keeps at most this much tape per rank
constexpr size_t kTapePaceBytes = size_t{4} << 20;  // tape chunks wait while this much is queued to the joiner
constexpr uint64_t kNsPerMs = 1000000ull;

// Where one moved rank stands; every pair passes through these in order.
enum class PairStage {
  kAwaitingJoiner,  // sandbox: no joiner's READY matched the leaver yet
  kMatched,         // the joiner matched; MAP and EXPOSE sent once every pair matched
  kExposed,         // the leaver's transfer descriptor is here, sent on to the joiner in PREPARE
  kPrepared,        // the joiner is connected to the leaver's state (everything but the bytes done)
  kReading,         // the leaver reached S: READ sent to the joiner
  kVerified,        // the joiner read the state and the checksums matched
};

// The relay of the leaver's sandbox tape to its joiner.
enum class TapeRelay {
  kCollecting,  // chunks arriving from the leaver
  kComplete,    // the empty chunk arrived: forwarded as soon as the joiner registered
  kForwarded,   // sent to the joiner
  kDropped,     // over kMaxTapeRelay: not forwarded, the joiner emulates
};

// One rank moved: its leaver and joiner.
struct Pair {
  int32_t rank = -1;
  uint64_t leaver = 0, joiner = 0;
  PairStage stage = PairStage::kAwaitingJoiner;
  std::vector<uint64_t> keys;        // the leaver's communicators, in its creation order
  std::map<uint64_t, uint64_t> j2l;  // joiner comm_key -> leaver comm_key
  std::string verify_msg;
  pid_t child = 0;  // --spawn, until reaped
  std::string log;
  TapeRelay tape_relay = TapeRelay::kCollecting;
  std::vector<uint8_t> tape;
  uint64_t tape_to = 0;    // the joiner the tape is being forwarded to
  size_t tape_sent = 0;    // bytes of `tape` forwarded so far (paced to the joiner's connection)
};

// One migration, from the request to its end.
struct MoveCtx {
  std::vector<Pair> pairs;
  std::vector<uint64_t> keys;  // every communicator containing a leaver (first seen order)
  std::set<uint64_t> stayers;  // other members of those communicators
  size_t built_expected = 0, built_ok = 0;
  int64_t proposal = -1, margin = 2, max_seen = -1;  // the switch agreement
  uint64_t commit_at_ns = 0;  // monotonic: when the delayed COMMIT goes (MigrationDeadlines::commit_delay_ms)
  std::set<uint64_t> accepted, at_step, switched;
  bool switch_sent = false;
  // After SWITCH: the members that said SWITCHED, and the held processes that said they abandoned the migration at
  // their hold deadline (FAILED, on their next connection); `undone` once every held process did. `swapped`: the
  // stayers that swapped their communicators (their "swap comms" phase, sent at once; SWITCHED waits for their next
  // safe point, which a member out of step can hold up).
  std::set<uint64_t> confirmed, abandoned, swapped;
  bool undone = false;
  std::set<uint64_t> out_of_step;               // processes OutOfStep declared failed or told to end
  std::map<uint64_t, std::string> told_to_end;  // leavers out of step: FENCED with this line, again when they return
  uint64_t max_stall = 0;
  MigState deadline_state = MigState::kRequested;  // the state the deadline below runs for
  uint64_t state_since_ns = 0;                     // monotonic: when it was entered (or SWITCH sent)

  Pair* ByLeaver(uint64_t p) {
    for (Pair& x : pairs)
      if (x.leaver == p) return &x;
    return nullptr;
  }
  Pair* ByJoiner(uint64_t p) {
    for (Pair& x : pairs)
      if (x.joiner == p && p) return &x;
    return nullptr;
  }
  bool AllAtLeast(PairStage s) const {
    return std::all_of(pairs.begin(), pairs.end(), [s](const Pair& p) { return p.stage >= s; });
  }
  // Stayers and leavers: the processes that agree on S and wait there.
  std::vector<uint64_t> Participants() const {
    std::vector<uint64_t> v(stayers.begin(), stayers.end());
    for (const Pair& p : pairs) v.push_back(p.leaver);
    return v;
  }
  // Stayers and joiners: the processes that switch and report SWITCHED.
  std::vector<uint64_t> Members() const {
    std::vector<uint64_t> v(stayers.begin(), stayers.end());
    for (const Pair& p : pairs) {
      if (p.joiner) v.push_back(p.joiner);
    }
    return v;
  }
};

template <typename B>
Command Cmd(mig::Cmd kind, uint64_t migration, const B& body) {
  return mig::Make(static_cast<uint16_t>(kind), migration, body);
}

}  // namespace

// Why the process `l` holds several ranks (ncclCommInitAll, or one communicator it is a member of more than once),
// or empty. Such a process cannot be migrated: its ranks share one address space, one safe point and one state
// table, so a joiner would have to take all of them at once, from one process that replaces another.
static std::string SeveralRanks(EngineHost& h, const ProcessRec& l) {
  for (const auto& [key, c] : l.comm_info) {
    if (c.lineage.kind == static_cast<uint8_t>(LineageKind::kInitAll)) {
      return "its process holds " + std::to_string(c.nranks) +
             " ranks (ncclCommInitAll); a process with several ranks cannot be migrated";
    }
    auto it = h.comms().find(key);
    if (it == h.comms().end()) continue;
    int mine = 0;
    for (const auto& [rank, proc] : it->second.members) mine += proc == l.id;
    if (mine > 1) {
      return "its process holds " + std::to_string(mine) +
             " ranks of one communicator; a process with several ranks cannot be migrated";
    }
  }
  return "";
}

static std::string LineageText(const CommCreated& c) {
  std::string s = std::string(LineageKindName(c.lineage.kind)) + " #" + std::to_string(c.lineage.index) + " rank " +
                  std::to_string(c.rank) + "/" + std::to_string(c.nranks);
  if (c.lineage.kind == static_cast<uint8_t>(LineageKind::kSplit)) {
    s += " color " + std::to_string(c.lineage.color) + " key " + std::to_string(c.lineage.key);
  }
  if (!c.blocking) s += " non-blocking";
  return s;
}

// The joiner's communicators against the leaver's, the i-th with the i-th: the first difference, or empty
// (then *j2l maps each joiner comm_key to the leaver's).
std::string CompareLineages(const std::vector<CommCreated>& joiner, const std::vector<const CommCreated*>& leaver,
                            std::map<uint64_t, uint64_t>* j2l, bool any_rank) {
  if (joiner.size() != leaver.size()) {
    return "the joiner has " + std::to_string(joiner.size()) + " communicator(s), the leaver " +
           std::to_string(leaver.size());
  }
  for (size_t i = 0; i < leaver.size(); ++i) {
    const CommCreated &a = joiner[i], &b = *leaver[i];
    const Lineage &la = a.lineage, &lb = b.lineage;
    bool parent_ok =
        la.parent_key == 0 ? lb.parent_key == 0 : j2l->count(la.parent_key) && (*j2l)[la.parent_key] == lb.parent_key;
    // Every communicator's size and rank, Split children included: the joiner's sandbox answered from the leaver's
    // table (REGISTER_ACK), so a difference means the programs differ (or the table never arrived).
    const bool same_place = any_rank || (a.rank == b.rank && la.color == lb.color && la.key == lb.key);
    if (la.kind != lb.kind || a.nranks != b.nranks || !same_place || a.blocking != b.blocking ||
        la.excluded != lb.excluded || la.child_index != lb.child_index || !parent_ok) {
      return "communicator " + std::to_string(i) + ": joiner " + LineageText(a) + ", leaver " + LineageText(b);
    }
    (*j2l)[a.comm_key] = b.comm_key;
  }
  return "";
}

// The state tables by name and size: the first difference, or empty.
std::string CompareRegions(const std::vector<Region>& leaver, const std::vector<Region>& joiner) {
  std::map<std::string, uint64_t> lr, jr;
  for (const Region& g : leaver) lr[g.name] = g.bytes;
  for (const Region& g : joiner) jr[g.name] = g.bytes;
  for (auto& [name, bytes] : lr) {
    if (!jr.count(name)) return "state region '" + name + "' is registered by the leaver, not by the joiner";
    if (jr[name] != bytes)
      return "state region '" + name + "': " + std::to_string(jr[name]) + " bytes in the joiner, " +
             std::to_string(bytes) + " in the leaver";
  }
  for (auto& [name, bytes] : jr) {
    if (!lr.count(name)) return "state region '" + name + "' is registered by the joiner, not by the leaver";
  }
  return "";
}

// tmctl migrate --to H: only a joiner that registered from H may take part (with --spawn it is started there).
bool OnTargetHost(const Migration& m, const ProcessRec& p) { return m.host.empty() || p.info.host == m.host; }

// The leaver's command line, cwd and environment, as a joiner of `rank` (docs/migration.md, step 2).
JoinerLauncher::Spec JoinerSpec(const Migration& m, const ProcessRec& l, int32_t rank) {
  JoinerLauncher::Spec s;
  s.argv = l.info.cmdline;
  s.dir = l.info.cwd.empty() ? "." : l.info.cwd;
  s.log = s.dir + "/joiner-" + std::to_string(rank) + ".log";
  s.log_if_exists = s.dir + "/joiner-" + std::to_string(rank) + "-m" + std::to_string(m.id) + ".log";
  s.host = m.host;
  s.from_host = l.info.host;
  for (const std::string& kv : l.info.env) {
    if (kv.rfind("TRAINMOVER_ROLE=", 0) == 0 || kv.rfind("TRAINMOVER_REPLACE=", 0) == 0) continue;
    s.env.push_back(kv);
  }
  s.env.push_back("TRAINMOVER_ROLE=joiner");
  s.env.push_back("TRAINMOVER_REPLACE=" + std::to_string(rank));
  return s;
}

namespace {

class ProcessLauncher final : public JoinerLauncher {
 public:
  pid_t Start(const Spec& s, std::string* log, std::string* err) override {
    struct stat st;
    *log = stat(s.log.c_str(), &st) == 0 ? s.log_if_exists : s.log;
    // A leaver on another host (a recovery or a --spawn without a node agent there starts its joiner here) had
    // that host's address and devices: the joiner takes this host's (node.h, kHostLocalEnv).
    const bool elsewhere = !s.from_host.empty() && s.from_host != base::HostName();
    pid_t pid = 0;
    base::Status started = base::SpawnProcess(
        {s.argv, elsewhere ? node::WithThisHostsEnv(s.env) : s.env, s.dir, *log, false, false}, &pid);
    if (!started.ok()) {
      *err = started.message();
      return 0;
    }
    return pid;
  }
  bool Exited(pid_t pid, std::string* how) override {
    int st = 0;
    const pid_t r = waitpid(pid, &st, WNOHANG);
    if (r == -1 && errno == ECHILD) {  // reaped by the program that hosts the coordinator (tmrun's waitpid(-1))
      *how = "status unknown";
      return kill(pid, 0) != 0 && errno == ESRCH;
    }
    if (r != pid) return false;
    *how = WIFEXITED(st) ? "status " + std::to_string(WEXITSTATUS(st)) : "signal " + std::to_string(WTERMSIG(st));
    return true;
  }
  void Stop(pid_t pid) override { kill(pid, SIGTERM); }
};

// What every event handler works on.
struct On {
  EngineHost& h;
  Migration& m;
  MoveCtx& x;
  ProcessRec& from;
  const Event& e;
};

class MigrationEngine final : public Engine {
 public:
  MigrationEngine(std::unique_ptr<JoinerLauncher> l, MigrationDeadlines d) : launcher_(std::move(l)), deadlines_(d) {}

  const char* kind() const override { return kKindMigrate; }

  std::string Validate(EngineHost& h, const Migration& m) override {
    for (const auto& [id, other] : h.migrations()) {
      if (id != m.id && !MigTerminal(other.state))
        return "migration " + std::to_string(id) + " is still " + MigStateName(other.state);
    }
    std::vector<int32_t> ranks = m.ranks.empty() ? std::vector<int32_t>{m.rank} : m.ranks;
    for (size_t i = 0; i < ranks.size(); ++i) {
      const std::string r = std::to_string(ranks[i]);
      ProcessRec* l = h.FindProcessByRank(ranks[i]);
      if (std::find(ranks.begin(), ranks.begin() + static_cast<ptrdiff_t>(i), ranks[i]) != ranks.begin() + i)
        return "rank " + r + " is named twice";
      if (!l) return "no alive worker holds rank " + r + " (see tmctl status)";
      if (l->step < 0) return "rank " + r + " never called tmSafePoint: it cannot be migrated";
      if (std::string several = SeveralRanks(h, *l); !several.empty()) return "rank " + r + ": " + several;
    }
    MoveCtx x = Plan(h, m);
    for (uint64_t key : x.keys) {
      if (captured_.count(key)) {
        char hex[24];
        std::snprintf(hex, sizeof(hex), "%016" PRIx64, key);
        return std::string("communicator ") + hex +
               " was captured into a CUDA graph: the graph holds its real communicator, which a migration would "
               "replace";
      }
    }
    for (const Pair& pr : x.pairs) {
      if (pr.keys.empty()) return "rank " + std::to_string(pr.rank) + " is in no communicator";
    }
    return "";
  }

  void OnRequest(EngineHost& h, Migration& m) override {
    if (m.ranks.empty()) m.ranks = {m.rank};
    MoveCtx& x = ctx_[m.id] = Plan(h, m);
    EndOpenPhase(h, m, 0, "requested");
    if (m.spawn && !SpawnJoiners(h, m, x)) return;
    h.SetMigState(m, MigState::kSandbox);
    h.BeginPhase(m, 0, "sandbox");
    for (Pair& pr : x.pairs) {  // the joiner's shadow iteration replays the leaver's next one (docs/migration.md)
      h.SendCommand(pr.leaver, Cmd(mig::Cmd::kRecordTape, m.id, mig::Step{0}));
    }
  }

  void OnCancel(EngineHost& h, Migration& m) override { Abort(h, m, "cancelled by the operator", false); }

  void OnProcessLost(EngineHost& h, uint64_t p) override {
    Reap();
    Migration* m = Active(h);
    if (!m) return;
    MoveCtx& x = ctx_[m->id];
    ProcessRec* pr = h.FindProcess(p);
    bool exited = pr && pr->state == ProcState::kExited;
    std::string who = "process " + std::to_string(p) + (pr ? " (rank " + std::to_string(pr->info.rank) + ")" : "");
    bool joiner_candidate = false;
    for (const Pair& q : x.pairs) {
      joiner_candidate |=
          pr && pr->info.role == "joiner" && pr->info.replace == q.rank && (q.joiner == 0 || q.joiner == p) &&
          OnTargetHost(*m, *pr);  // one elsewhere is told to exit (OnReady): its end is no loss
    }
    if (!x.ByLeaver(p) && !x.ByJoiner(p) && !x.stayers.count(p) && !joiner_candidate) return;
    if (!x.switch_sent) return Abort(h, *m, who + (exited ? " exited" : " was lost") + " before the switch", true);
    if (pr && pr->returning_by_ns) return;  // reconnecting: it says SWITCHED or that it abandoned once back
    if (x.ByLeaver(p)) return MaybeDone(h, *m, x);  // its BYE after the hand-off: MaybeDone may wait for it
    // A member that ends or is lost after SWITCH is not waited for: one that finished right at S has nothing more to
    // measure, and a lost one's failure is the failure recovery's (docs/recovery.md, "Right after a switch").
    if (!exited) TM_WARN(kLogMigration, "coordinator: migration %" PRIu64 ": %s lost after the switch", m->id, who.c_str());
    x.switched.insert(p);
    MaybeDone(h, *m, x);
  }

  void OnTick(EngineHost& h) override {
    Reap();
    Migration* m = Active(h);
    if (!m) return;
    MoveCtx& x = ctx_[m->id];
    if (PastDeadline(h, *m, x)) return;
    if (x.commit_at_ns && NowMonotonicNs() >= x.commit_at_ns && m->state == MigState::kAgreeing) Commit(h, *m, x);
    for (Pair& pr : x.pairs) MaybeSendTape(h, *m, pr);
    for (Pair& pr : x.pairs) {
      if (pr.child > 0 && pr.joiner == 0 && !CheckSpawned(h, *m, pr)) return;
    }
  }

  // A process that reconnected learns the outcome decided while it was away (docs/reliability.md, "The
  // commit point"): SWITCH once SWITCH was sent, ABORT once the migration ended without it.
  void OnProcessBack(EngineHost& h, uint64_t p) override {
    for (auto it = ctx_.rbegin(); it != ctx_.rend(); ++it) {
      Migration* m = h.FindMigration(it->first);
      MoveCtx& x = it->second;
      std::vector<uint64_t> involved = x.Participants(), members = x.Members();
      involved.insert(involved.end(), members.begin(), members.end());
      if (!m || std::find(involved.begin(), involved.end(), p) == involved.end()) continue;
      const ProcessRec* pr = h.FindProcess(p);
      if (pr && pr->fenced) {  // out of step: never told to switch; a leaver is told to end (a rank: the recovery's)
        if (auto it = x.told_to_end.find(p); it != x.told_to_end.end()) h.SendCommand(p, Fenced(*pr, it->second));
        return;
      }
      if (x.switch_sent && !x.undone) {
        h.SendCommand(p, Cmd(mig::Cmd::kSwitch, m->id, mig::Step{m->switch_step}));
      } else if (MigTerminal(m->state)) {
        h.SendCommand(p, Cmd(mig::Cmd::kAbort, m->id, mig::Reason{m->reason}));
      }
      return;
    }
  }

  void OnEvent(EngineHost& h, uint64_t p, const Event& e) override {
    Reap();
    ProcessRec* from = h.FindProcess(p);
    if (!from) return;
    if (e.kind == static_cast<uint16_t>(mig::Ev::kReady)) return OnReady(h, *from, e);
    if (e.kind == static_cast<uint16_t>(mig::Ev::kCaptured)) return OnCaptured(e);
    Migration* m = h.FindMigration(e.migration);
    if (m && e.migration && m->state == MigState::kDone && ctx_.count(m->id) &&
        e.kind == static_cast<uint16_t>(mig::Ev::kFailed)) {
      return OnFailedAfterDone(h, *m, ctx_[m->id], *from);
    }
    if (!m || e.migration == 0 || MigTerminal(m->state) || !ctx_.count(m->id)) return;  // ended, or not ours
    On on{h, *m, ctx_[m->id], *from, e};
    switch (static_cast<mig::Ev>(e.kind)) {
      case mig::Ev::kTape:
        return OnTape(on);
      case mig::Ev::kIds:
        return OnIds(on);
      case mig::Ev::kBuilt:
        return OnBuilt(on);
      case mig::Ev::kExposed:
        return OnExposed(on);
      case mig::Ev::kPrepared:
        return OnPrepared(on);
      case mig::Ev::kAccept:
        return OnAccept(on);
      case mig::Ev::kPassed:
        return OnPassed(on);
      case mig::Ev::kAtStep:
        return OnAtStep(on);
      case mig::Ev::kProgress:
        return OnProgress(on);
      case mig::Ev::kVerified:
        return OnVerified(on);
      case mig::Ev::kSwitched:
        return OnSwitched(on);
      case mig::Ev::kFailed:
        return OnFailed(on);
      case mig::Ev::kPhase:
        return OnPhase(on);
      default:
        return;
    }
  }

 private:
  // Pairs, communicators and stayers of a request (its ranks were validated).
  static MoveCtx Plan(EngineHost& h, const Migration& m) {
    MoveCtx x;
    for (int32_t r : m.ranks.empty() ? std::vector<int32_t>{m.rank} : m.ranks) {
      Pair pr;
      pr.rank = r;
      pr.leaver = h.FindProcessByRank(r)->id;
      x.pairs.push_back(pr);
    }
    for (Pair& pr : x.pairs) {
      ProcessRec* l = h.FindProcess(pr.leaver);
      std::vector<std::pair<uint32_t, uint64_t>> order;
      for (const auto& [key, info] : l->comm_info) order.push_back({info.lineage.index, key});
      std::sort(order.begin(), order.end());
      for (auto& [idx, key] : order) {
        pr.keys.push_back(key);
        if (std::find(x.keys.begin(), x.keys.end(), key) == x.keys.end()) x.keys.push_back(key);
      }
    }
    for (uint64_t key : x.keys) {
      auto it = h.comms().find(key);
      if (it == h.comms().end()) continue;
      for (auto& [rank, proc] : it->second.members) {
        if (!x.ByLeaver(proc)) x.stayers.insert(proc);
      }
    }
    return x;
  }

  // --spawn: one joiner per pair. False when the migration failed.
  bool SpawnJoiners(EngineHost& h, Migration& m, MoveCtx& x) {
    h.SetMigState(m, MigState::kSpawning);
    for (Pair& pr : x.pairs) {
      const ProcessRec& l = *h.FindProcess(pr.leaver);
      std::string err;
      if (l.info.cmdline.empty()) {
        err = "the leaver reported no command line";
      } else {
        pr.child = launcher_->Start(JoinerSpec(m, l, pr.rank), &pr.log, &err);
      }
      if (pr.child <= 0) {
        Abort(h, m, "cannot spawn the joiner of rank " + std::to_string(pr.rank) + ": " + err, true);
        return false;
      }
      TM_INFO(kLogMigration, "coordinator: migration %" PRIu64 ": spawned joiner pid %d for rank %d, output in %s",
              m.id, pr.child, pr.rank, pr.log.c_str());
      m.joiner_log += (m.joiner_log.empty() ? "" : ", ") + pr.log;
    }
    return true;
  }

  // A spawned child that has not become the pair's joiner yet: false (and the migration failed) when it exited
  // or registered with another role.
  bool CheckSpawned(EngineHost& h, Migration& m, Pair& pr) {
    std::string how;
    if (launcher_->Exited(pr.child, &how)) {
      pr.child = 0;
      Abort(h, m,
            "the spawned joiner of rank " + std::to_string(pr.rank) + " exited (" + how +
                ") before it was ready; see " + pr.log,
            true);
      return false;
    }
    for (const auto& [id, p] : h.processes()) {
      if (p.info.role != "joiner" && launcher_->IsChild(pr.child, p.info.host, p.info.pid)) {
        Abort(h, m,
              "the spawned process registered as a " + p.info.role +
                  ", not as a joiner: is the shim (libtrainmover) in its environment?",
              true);
        return false;
      }
    }
    return true;
  }

  // Sends a complete tape to the pair's joiner once it has registered (a process of role joiner replacing the
  // pair's rank; the matched one when READY already named it), in chunks of one frame, then an empty chunk.
  void MaybeSendTape(EngineHost& h, Migration& m, Pair& pr) {
    if (pr.tape_relay != TapeRelay::kComplete) return;
    for (const auto& [id, p] : h.processes()) {
      if (pr.tape_to || p.state != ProcState::kAlive || p.info.role != "joiner" || p.info.replace != pr.rank ||
          !OnTargetHost(m, p)) {
        continue;
      }
      if (pr.joiner == 0 || pr.joiner == id) pr.tape_to = id;
    }
    if (!pr.tape_to) return;
    // Paced: a chunk goes only while little is queued to the joiner (the rest on the next tick), so a large tape
    // never fills its connection's buffer.
    while (pr.tape_sent < pr.tape.size() && h.QueuedBytes(pr.tape_to) < kTapePaceBytes) {
      const size_t n = std::min(mig::kMaxBlob, pr.tape.size() - pr.tape_sent);
      mig::Blob chunk{std::vector<uint8_t>(pr.tape.begin() + static_cast<ptrdiff_t>(pr.tape_sent),
                                           pr.tape.begin() + static_cast<ptrdiff_t>(pr.tape_sent + n))};
      if (!h.SendCommand(pr.tape_to, Cmd(mig::Cmd::kTape, m.id, chunk))) return;
      pr.tape_sent += n;
    }
    if (pr.tape_sent < pr.tape.size()) return;
    h.SendCommand(pr.tape_to, Cmd(mig::Cmd::kTape, m.id, mig::Blob{}));
    pr.tape_relay = TapeRelay::kForwarded;
    pr.tape.clear();
    pr.tape.shrink_to_fit();
  }

  void OnCaptured(const Event& e) {
    mig::KeyList kl;
    if (DecodePayload(e.body, &kl)) captured_.insert(kl.keys.begin(), kl.keys.end());
  }

  // The joiner's READY: matched against its leaver; when every pair matched, phase 1 starts.
  void OnReady(EngineHost& h, ProcessRec& j, const Event& e) {
    for (const auto& [id, other] : h.migrations()) {  // the replacement of a failed rank: the recovery's
      const bool recovered = std::count(other.ranks.begin(), other.ranks.end(), j.info.replace) > 0;
      if (other.kind != kKindMigrate && !MigTerminal(other.state) && recovered) return;
    }
    mig::Ready r;
    Migration* m = Active(h);
    auto refuse_joiner = [&](const std::string& why) {
      h.SendCommand(j.id, Cmd(mig::Cmd::kAbort, m ? m->id : 0, mig::Reason{why}));
    };
    if (!DecodePayload(e.body, &r)) return refuse_joiner("malformed READY");
    Pair* pair = nullptr;
    if (m) {
      for (Pair& q : ctx_[m->id].pairs) {
        if (q.rank == j.info.replace && q.stage == PairStage::kAwaitingJoiner) pair = &q;
      }
    }
    if (!m || !pair || (m->state != MigState::kSandbox && m->state != MigState::kSpawning)) {
      TM_WARN(kLogMigration,
              "coordinator: joiner process %" PRIu64 " for rank %d is not expected by any migration; told to exit",
              j.id, j.info.replace);
      return refuse_joiner("no migration of rank " + std::to_string(j.info.replace) + " waits for a joiner");
    }
    if (!OnTargetHost(*m, j)) {  // --to H: a joiner elsewhere is turned away, the move waits on
      const std::string why = "the joiner of rank " + std::to_string(pair->rank) + " registered on host " +
                              j.info.host + ", but the migration is to host " + m->host;
      TM_WARN(kLogMigration, "coordinator: migration %" PRIu64 ": %s; told to exit", m->id, why.c_str());
      return refuse_joiner(why);
    }
    ProcessRec* l = h.FindProcess(pair->leaver);
    std::vector<const CommCreated*> lc;
    for (uint64_t k : pair->keys) {
      auto it = l ? l->comm_info.find(k) : decltype(l->comm_info.end()){};
      if (!l || it == l->comm_info.end()) {  // the leaver destroyed one of its communicators since the request
        const std::string why = "the leaver of rank " + std::to_string(pair->rank) +
                                " no longer has every communicator it had at the request";
        refuse_joiner(why);
        return Abort(h, *m, why, true);
      }
      lc.push_back(&it->second);
    }
    std::map<uint64_t, uint64_t> j2l;
    std::string diff = CompareLineages(r.comms, lc, &j2l);
    if (diff.empty()) diff = CompareRegions(l->regions, r.regions);
    if (!diff.empty()) {
      std::string why = "the joiner of rank " + std::to_string(pair->rank) + " does not match the leaver: " + diff;
      refuse_joiner(why);
      Abort(h, *m, why, false);
      h.SetMigState(*m, MigState::kRefused, why);
      return;
    }
    pair->joiner = j.id;
    pair->j2l = std::move(j2l);
    pair->stage = PairStage::kMatched;
    if (pair->rank == m->rank) m->joiner = j.id;
    if (ctx_[m->id].AllAtLeast(PairStage::kMatched)) StartBuilding(h, *m, ctx_[m->id]);
  }

  // Phase 1: MAP to each joiner, EXPOSE to each leaver, MAKE_IDS to one joiner.
  void StartBuilding(EngineHost& h, Migration& m, MoveCtx& x) {
    EndOpenPhase(h, m, 0, "sandbox");
    h.SetMigState(m, MigState::kReady);
    h.SetMigState(m, MigState::kBuilding);
    h.BeginPhase(m, 0, "build");
    for (const Pair& q : x.pairs) {
      mig::KeyList map;
      for (auto& [jk, lk] : q.j2l) map.keys.insert(map.keys.end(), {jk, lk});
      h.SendCommand(q.joiner, Cmd(mig::Cmd::kMap, m.id, map));
      ProcessRec* jr = h.FindProcess(q.joiner);
      std::string where = "host " + (jr ? jr->info.host : "?") + " pid " + (jr ? std::to_string(jr->info.pid) : "?");
      h.SendCommand(q.leaver, Cmd(mig::Cmd::kExpose, m.id, mig::Reason{where}));
    }
    // One joiner makes every fresh id: the bootstrap roots live in processes that stay.
    h.SendCommand(x.pairs.front().joiner, Cmd(mig::Cmd::kMakeIds, m.id, mig::KeyList{x.keys}));
  }

  void OnTape(const On& o) {
    mig::Blob b;
    Pair* lp = o.x.ByLeaver(o.from.id);
    if (!lp || lp->tape_relay != TapeRelay::kCollecting || !DecodePayload(o.e.body, &b)) return;
    if (b.bytes.empty()) {
      lp->tape_relay = TapeRelay::kComplete;
      return MaybeSendTape(o.h, o.m, *lp);
    }
    if (lp->tape.size() + b.bytes.size() > kMaxTapeRelay) {  // a bound on D's memory: the joiner emulates
      lp->tape.clear();
      lp->tape_relay = TapeRelay::kDropped;
      TM_WARN(kLogMigration, "coordinator: migration %" PRIu64 ": the tape of rank %d exceeds %zu bytes; not forwarded",
              o.m.id, lp->rank, kMaxTapeRelay);
      return;
    }
    lp->tape.insert(lp->tape.end(), b.bytes.begin(), b.bytes.end());
  }

  // The fresh ids: BUILD to every member of each communicator (a leaver's place goes to its joiner).
  void OnIds(const On& o) {
    mig::Ids ids;
    if (!DecodePayload(o.e.body, &ids)) return Abort(o.h, o.m, "malformed IDS", true);
    std::map<uint64_t, mig::Build> per;
    for (const mig::IdEntry& ie : ids.ids) {
      auto it = o.h.comms().find(ie.comm_key);
      if (it == o.h.comms().end()) return Abort(o.h, o.m, "a communicator of the leaver disappeared", true);
      for (auto& [rank, proc] : it->second.members) {
        Pair* lp = o.x.ByLeaver(proc);
        per[lp ? lp->joiner : proc].entries.push_back(mig::BuildEntry{ie.comm_key, ie.id, it->second.nranks, rank});
        ++o.x.built_expected;
      }
    }
    for (auto& [proc, b] : per) o.h.SendCommand(proc, Cmd(mig::Cmd::kBuild, o.m.id, b));
  }

  void OnBuilt(const On& o) {
    mig::Built b;
    if (!DecodePayload(o.e.body, &b)) return Abort(o.h, o.m, "malformed BUILT", true);
    if (!b.ok) return Abort(o.h, o.m, "building a replacement communicator failed: " + b.message, true);
    ++o.x.built_ok;
    MaybePropose(o.h, o.m, o.x);
  }

  void OnExposed(const On& o) {
    mig::Blob b;
    if (!DecodePayload(o.e.body, &b)) return Abort(o.h, o.m, "malformed EXPOSED", true);
    Pair* lp = o.x.ByLeaver(o.from.id);
    if (!lp) return;
    lp->stage = PairStage::kExposed;
    for (const Region& r : o.from.regions) o.m.bytes_total += r.bytes;
    o.h.SendCommand(lp->joiner, Cmd(mig::Cmd::kPrepare, o.m.id, mig::Prepare{std::move(b.bytes), o.from.info.pid}));
  }

  // The joiner connected to its leaver's state: at S only the bytes are left.
  void OnPrepared(const On& o) {
    Pair* jp = o.x.ByJoiner(o.from.id);
    if (!jp || jp->stage != PairStage::kExposed) return;
    jp->stage = PairStage::kPrepared;
    MaybePropose(o.h, o.m, o.x);
  }

  // Every participant accepted the proposal: COMMIT, the migration is switching.
  void OnAccept(const On& o) {
    mig::Step s;
    if (!DecodePayload(o.e.body, &s) || s.step != o.x.proposal || o.m.state != MigState::kAgreeing) return;
    o.x.accepted.insert(o.from.id);
    if (o.x.accepted.size() < o.x.stayers.size() + o.x.pairs.size()) return;
    if (deadlines_.commit_delay_ms == 0) return Commit(o.h, o.m, o.x);
    if (!o.x.commit_at_ns) o.x.commit_at_ns = NowMonotonicNs() + deadlines_.commit_delay_ms * 1000000;  // OnTick
  }

  void Commit(EngineHost& h, Migration& m, MoveCtx& x) {
    x.commit_at_ns = 0;
    m.switch_step = x.proposal;
    EndOpenPhase(h, m, 0, "propose step " + std::to_string(x.proposal));
    h.SetMigState(m, MigState::kSwitching);
    h.EndPhase(m, 0, "agree");
    h.BeginPhase(m, 0, "switch");
    for (uint64_t q : x.Participants()) h.SendCommand(q, Cmd(mig::Cmd::kCommit, m.id, mig::Step{x.proposal}));
  }

  // A participant is past the proposal: propose again with a doubled margin. A PASSED does not say which
  // proposal it answers, so each one re-proposes; the processes held at an older proposal are released.
  void OnPassed(const On& o) {
    mig::Step s;
    if (!DecodePayload(o.e.body, &s) || o.m.state != MigState::kAgreeing) return;
    o.x.max_seen = std::max(o.x.max_seen, s.step);
    o.x.margin *= 2;
    Propose(o.h, o.m, o.x);
  }

  // A participant waits at S; a leaver's AT_STEP lets its joiner start reading.
  void OnAtStep(const On& o) {
    mig::Step s;
    if (!DecodePayload(o.e.body, &s) || s.step != o.m.switch_step) return;
    o.x.at_step.insert(o.from.id);
    if (Pair* lp = o.x.ByLeaver(o.from.id); lp && lp->stage == PairStage::kPrepared) {
      lp->stage = PairStage::kReading;
      o.h.SendCommand(lp->joiner, Cmd(mig::Cmd::kRead, o.m.id, mig::Step{s.step}));
    }
    MaybeSwitch(o.h, o.m, o.x);
  }

  void OnProgress(const On& o) {
    mig::Progress pg;
    if (DecodePayload(o.e.body, &pg) && o.x.pairs.size() == 1) o.m.bytes_done = pg.done;
  }

  void OnVerified(const On& o) {
    mig::Built b;
    if (!DecodePayload(o.e.body, &b)) return Abort(o.h, o.m, "malformed VERIFIED", true);
    if (!b.ok) return Abort(o.h, o.m, "state transfer failed: " + b.message, true);
    Pair* jp = o.x.ByJoiner(o.from.id);
    if (!jp) return;
    jp->stage = PairStage::kVerified;
    jp->verify_msg = b.message;
    o.m.bytes_done = 0;
    for (const Pair& q : o.x.pairs) {
      if (q.stage != PairStage::kVerified) continue;
      if (ProcessRec* l = o.h.FindProcess(q.leaver)) {
        for (const Region& r : l->regions) o.m.bytes_done += r.bytes;
      }
    }
    MaybeSwitch(o.h, o.m, o.x);
  }

  void OnSwitched(const On& o) {
    mig::Switched s;
    if (!DecodePayload(o.e.body, &s)) return;
    if (!o.x.ByJoiner(o.from.id)) o.x.max_stall = std::max(o.x.max_stall, s.stall_ns);
    o.x.switched.insert(o.from.id);
    o.x.confirmed.insert(o.from.id);
    MaybeDone(o.h, o.m, o.x);
  }

  void OnFailed(const On& o) {
    mig::Reason r;
    DecodePayload(o.e.body, &r);
    if (!o.x.switch_sent) return Abort(o.h, o.m, "rank " + std::to_string(o.from.info.rank) + ": " + r.text, true);
    const std::vector<uint64_t> held = o.x.Participants();
    if (std::find(held.begin(), held.end(), o.from.id) == held.end() || o.x.confirmed.count(o.from.id)) return;
    // A held process that heard no SWITCH before its hold deadline abandoned the migration (docs/reliability.md, "The
    // commit point"). When every one did, SWITCH reached none of them: only joiners can have switched, alone on
    // replacements that nobody else uses. The switch is undone: ABORT ends them, the leavers keep their ranks.
    TM_WARN(kLogMigration, "coordinator: migration %" PRIu64 ": process %" PRIu64 " (rank %d) abandoned it after SWITCH "
            "was sent: %s", o.m.id, o.from.id, o.from.info.rank, r.text.c_str());
    o.x.abandoned.insert(o.from.id);
    if (o.x.abandoned.size() < held.size()) return MaybeDone(o.h, o.m, o.x);
    o.x.undone = true;
    // A joiner that switched in reported the leaver's communicators as its own: the leaver holds its places again.
    for (const Pair& p : o.x.pairs) {
      const ProcessRec* l = o.h.FindProcess(p.leaver);
      for (uint64_t key : p.keys) {
        if (l && l->comm_info.count(key)) o.h.SetMember(key, l->comm_info.at(key).rank, p.leaver);
      }
    }
    Abort(o.h, o.m, "SWITCH reached none of the held processes before their hold deadline; every one abandoned the "
          "migration, so the switch is undone (a joiner that switched in ends, the leaver keeps its rank)", true);
  }

  // A held process says it abandoned the migration after it was marked done (its hold deadline came later, or its
  // word waited for its next connection): a leaver that did not leave, out of step (OutOfStep).
  void OnFailedAfterDone(EngineHost& h, Migration& m, MoveCtx& x, const ProcessRec& from) {
    const std::vector<uint64_t> held = x.Participants();
    if (!x.switch_sent || x.confirmed.count(from.id) || std::find(held.begin(), held.end(), from.id) == held.end()) return;
    TM_WARN(kLogMigration, "coordinator: migration %" PRIu64 ": process %" PRIu64 " (rank %d) abandoned it after it was "
            "done", m.id, from.id, from.info.rank);
    x.abandoned.insert(from.id);
    OutOfStep(h, m, x, {}, false);
  }

  void OnPhase(const On& o) {
    mig::Phase ph;
    if (!DecodePayload(o.e.body, &ph)) return;
    o.m.phases.push_back(PhaseSpan{o.from.id, ph.name, ph.start_ns, ph.end_ns});
    if (ph.name == "swap comms" && o.x.stayers.count(o.from.id)) o.x.swapped.insert(o.from.id);
  }

  // Phase 1 is over when every replacement is built and every joiner is connected to its leaver's state: agree
  // on S.
  void MaybePropose(EngineHost& h, Migration& m, MoveCtx& x) {
    if (!x.AllAtLeast(PairStage::kPrepared)) return;
    if (m.state != MigState::kBuilding || x.built_ok < x.built_expected || x.built_expected == 0) return;
    EndOpenPhase(h, m, 0, "build");
    h.SetMigState(m, MigState::kAgreeing);
    h.BeginPhase(m, 0, "agree");
    Propose(h, m, x);
  }

  void Propose(EngineHost& h, Migration& m, MoveCtx& x) {
    int64_t top = x.max_seen;
    for (uint64_t q : x.Participants()) {
      if (ProcessRec* pr = h.FindProcess(q)) top = std::max(top, pr->step);
    }
    if (x.proposal >= 0) EndOpenPhase(h, m, 0, "propose step " + std::to_string(x.proposal));
    x.proposal = std::max(top, x.proposal) + x.margin;
    x.commit_at_ns = 0;  // a delayed COMMIT (slow-commit) was for the proposal before
    h.BeginPhase(m, 0, "propose step " + std::to_string(x.proposal));
    x.accepted.clear();
    TM_INFO(kLogMigration,
            "coordinator: migration %" PRIu64 ": proposing the switch at step %" PRId64 " (margin %" PRId64 ")", m.id,
            x.proposal, x.margin);
    for (uint64_t q : x.Participants()) h.SendCommand(q, Cmd(mig::Cmd::kPropose, m.id, mig::Step{x.proposal}));
  }

  // SWITCH once every joiner verified and every participant waits at S (no old-communicator operation is
  // pending anywhere).
  void MaybeSwitch(EngineHost& h, Migration& m, MoveCtx& x) {
    if (!x.AllAtLeast(PairStage::kVerified)) return;
    if (x.switch_sent || x.at_step.size() < x.stayers.size() + x.pairs.size()) return;
    if (PastDeadline(h, m, x)) return;  // too late: the held processes may be giving up (never a split)
    x.switch_sent = m.switch_sent = true;
    x.state_since_ns = NowMonotonicNs();
    for (uint64_t q : x.Members()) h.SendCommand(q, Cmd(mig::Cmd::kSwitch, m.id, mig::Step{m.switch_step}));
    for (const Pair& p : x.pairs) h.SendCommand(p.leaver, Cmd(mig::Cmd::kSwitch, m.id, mig::Step{m.switch_step}));
    MaybeDone(h, m, x);
  }

  // Done once every member switched (or was lost after SWITCH) or abandoned. When no stayer switched, the leavers'
  // word decides between done and undone (OnFailed): a leaver that is still there is waited for, up to the deadline.
  void MaybeDone(EngineHost& h, Migration& m, MoveCtx& x, bool at_deadline = false) {
    if (!x.switch_sent || MigTerminal(m.state)) return;
    for (uint64_t q : x.Members()) {
      if (!x.switched.count(q) && !x.abandoned.count(q)) return;
    }
    for (const Pair& p : x.pairs) {
      const ProcessRec* l = h.FindProcess(p.leaver);
      const bool there = l && (l->state == ProcState::kAlive || l->returning_by_ns);
      if (!at_deadline && NoStayerSwitched(x) && there && !x.abandoned.count(p.leaver)) return;
    }
    if (!x.abandoned.empty()) {  // the others switched: these are out of step with them (and say so in their logs)
      std::string who;
      for (uint64_t q : x.abandoned) who += (who.empty() ? "" : ", ") + std::to_string(q);
      m.reason = "SWITCH sent; process(es) " + who + " abandoned it at their hold deadline, out of step";
    }
    m.downtime_ns = x.max_stall;
    EndOpenPhase(h, m, 0, "switch");
    for (const Pair& p : x.pairs) {
      if (ProcessRec* j = h.FindProcess(p.joiner)) {
        j->info.role = "worker";  // it holds the rank now (and can be migrated in turn)
        j->info.replace = -1;
        // The leaver's rank and world, not the rank in the joiner's first communicator (a subgroup's in a
        // program that makes its groups lazily, as PyTorch does).
        j->info.rank = p.rank;
        if (const ProcessRec* l = h.FindProcess(p.leaver)) {
          j->info.world = l->info.world;
          // It took the leaver's places at SWITCH: so the coordinator knows, even before it reports them (it may
          // never, out of step), and a recovery of its rank fences and rebuilds them with a replacement there.
          for (uint64_t k : p.keys) {
            auto c = l->comm_info.find(k);
            if (c == l->comm_info.end()) continue;
            if (!j->comm_info.count(k)) j->comm_info[k] = c->second;
            h.SetMember(k, c->second.rank, p.joiner);
          }
        }
      }
      TM_INFO(kLogMigration, "coordinator: migration %" PRIu64 ": rank %d: %s", m.id, p.rank, p.verify_msg.c_str());
    }
    h.SetMigState(m, MigState::kDone);
    TM_INFO(kLogMigration, "coordinator: migration %" PRIu64 " done at step %" PRId64 "; downtime %.1f ms", m.id,
            m.switch_step, m.downtime_ns / 1e6);
    if (!at_deadline) OutOfStep(h, m, x, {}, false);
  }

  // After the switch, a process that did not take it while a stayer did is out of step (docs/reliability.md, "The
  // commit point"): a stayer or a joiner that abandoned the migration at its hold deadline, or never said it switched by
  // the confirmation deadline (`silent`), holds a place in the replacement communicators that it does not fill; its
  // rank is declared failed, and the failure recovery fences the others, rolls them back and replaces it (or, when it
  // cannot, says why and leaves things as they were). A leaver that did not leave (abandoned; at the deadline, still
  // there) holds nothing any more, its joiner holds its rank: it is fenced and told to end. Nothing when no stayer is
  // known to have switched (the held processes' word decides then: done or undone).
  void OutOfStep(EngineHost& h, Migration& m, MoveCtx& x, const std::set<uint64_t>& silent, bool at_deadline) {
    if (NoStayerSwitched(x)) return;
    std::string declared, ended;
    for (uint64_t q : x.Members()) {
      ProcessRec* pr = h.FindProcess(q);
      if (!pr || (!x.abandoned.count(q) && !silent.count(q)) || pr->state == ProcState::kExited ||
          !x.out_of_step.insert(q).second) {
        continue;
      }
      const std::string why = kOutOfStep + std::to_string(m.id) + ": " +
                              (x.abandoned.count(q) ? "it abandoned the switch at its hold deadline"
                                                    : "it did not confirm the switch within TRAINMOVER_HOLD_TIMEOUT_MS / 2") +
                              " while the others switched";
      TM_WARN(kLogMigration, "coordinator: process %" PRIu64 " (rank %d) is %s; declared failed", q, pr->info.rank,
              why.c_str());
      declared += (declared.empty() ? "" : ", ") + std::to_string(q);
      h.DeclareLost(q, why);
    }
    for (const Pair& p : x.pairs) {
      ProcessRec* l = h.FindProcess(p.leaver);
      const bool there = l && (l->state == ProcState::kAlive || l->returning_by_ns);
      if (!there || (!x.abandoned.count(p.leaver) && !at_deadline) || !x.out_of_step.insert(p.leaver).second) continue;
      const std::string line = "migration " + std::to_string(m.id) + ": this process (rank " + std::to_string(p.rank) +
                               ") did not leave with the switch (out of step); rank " + std::to_string(p.rank) +
                               " is its joiner's now: it ends without touching the job";
      TM_WARN(kLogMigration, "coordinator: migration %" PRIu64 ": the leaver, process %" PRIu64 " (rank %d), did not "
              "leave with the switch; told to end", m.id, p.leaver, p.rank);
      l->fenced = true;  // never found as rank R's worker again, kept lost if it comes back (told again then)
      x.told_to_end[p.leaver] = line;
      h.SendCommand(p.leaver, Fenced(*l, line));
      ended += (ended.empty() ? "" : ", ") + std::to_string(p.leaver);
    }
    auto add = [&m](const std::string& what) { m.reason += (m.reason.empty() ? "" : "; ") + what; };
    if (!declared.empty()) add("out of step: process(es) " + declared + " declared failed (failure recovery)");
    if (!ended.empty()) add("out of step: leaver process(es) " + ended + " told to end");
  }

  static Command Fenced(const ProcessRec& p, const std::string& line) {
    return rec::MakeRec(rec::Cmd::kFenced, 0, rec::RecMsg{.rank = p.info.rank, .text = line});
  }

  // ABORT to every process involved; spawned children that never became joiners are stopped.
  void Abort(EngineHost& h, Migration& m, const std::string& why, bool fail) {
    MoveCtx& x = ctx_[m.id];
    std::vector<uint64_t> to = x.Participants();
    for (const Pair& p : x.pairs) {
      if (p.joiner) to.push_back(p.joiner);
      if (p.child > 0 && p.joiner == 0) launcher_->Stop(p.child);
    }
    for (uint64_t q : to) h.SendCommand(q, Cmd(mig::Cmd::kAbort, m.id, mig::Reason{why}));
    for (const PhaseSpan& s : std::vector<PhaseSpan>(m.phases)) {
      if (s.end_ns == 0) h.EndPhase(m, s.process, s.phase);
    }
    if (fail) h.SetMigState(m, MigState::kFailed, why);
  }

  // The one deadline check (MigrationDeadlines): true when it ended the migration. The deadline of a state runs
  // from when this check first saw it; the switch's from COMMIT, then again from SWITCH for the confirmations.
  bool PastDeadline(EngineHost& h, Migration& m, MoveCtx& x) {
    const uint64_t now = NowMonotonicNs();
    if (m.state != x.deadline_state) {
      x.deadline_state = m.state;
      x.state_since_ns = now;
    }
    const bool switching = m.state == MigState::kSwitching;
    const uint64_t limit_ms = switching ? deadlines_.switch_ms : deadlines_.phase_ms;
    if (MigTerminal(m.state) || now - x.state_since_ns <= limit_ms * kNsPerMs) return false;
    // SWITCH sent and no stayer confirmed it yet: maybe none received it. Their word (SWITCHED, or that they abandoned
    // at their hold deadline) comes once they are back; wait for it up to UnconfirmedWaitMs after SWITCH.
    const bool none_confirmed = NoStayerSwitched(x);
    if (x.switch_sent && none_confirmed && now - x.state_since_ns <= UnconfirmedWaitMs() * kNsPerMs) return false;
    if (!x.switch_sent) {
      const std::string why = std::string("the ") + MigStateName(m.state) + " phase exceeded its deadline of " +
                              std::to_string(limit_ms) + " ms (" +
                              (switching ? "TRAINMOVER_HOLD_TIMEOUT_MS / 2" : "TRAINMOVER_PHASE_TIMEOUT_MS") + ")";
      TM_WARN(kLogMigration, "coordinator: migration %" PRIu64 ": %s; aborting", m.id, why.c_str());
      Abort(h, m, why, true);
      return true;
    }
    std::string silent;  // switched, but some members never said so (nor swapped their communicators)
    std::set<uint64_t> quiet;
    for (uint64_t q : x.Members()) {
      if (!x.switched.count(q) && !x.abandoned.count(q) && !x.swapped.count(q)) {
        silent += (silent.empty() ? "" : ", ") + std::to_string(q);
        quiet.insert(q);
      }
      x.switched.insert(q);
    }
    MaybeDone(h, m, x, /*at_deadline=*/true);
    const uint64_t waited_ms = none_confirmed ? UnconfirmedWaitMs() : limit_ms;
    if (!silent.empty()) {
      m.reason += std::string(m.reason.empty() ? "" : "; ") + "SWITCH sent; process(es) " + silent +
                  " never confirmed it within " + std::to_string(waited_ms) + " ms";
    }
    OutOfStep(h, m, x, quiet, true);
    TM_WARN(kLogMigration, "coordinator: migration %" PRIu64 ": %s", m.id, m.reason.c_str());
    return true;
  }

  // SWITCH went out and no stayer has said SWITCHED or swapped its communicators (yet): maybe no held process received
  // it. Also when there are no stayers (a one-rank job, every rank migrated): then only the leavers' word (their end,
  // or that they abandoned) tells a switch from a joiner switched in alone.
  static bool NoStayerSwitched(const MoveCtx& x) {
    return std::none_of(x.stayers.begin(), x.stayers.end(),
                        [&](uint64_t q) { return x.confirmed.count(q) > 0 || x.swapped.count(q) > 0; });
  }

  // How long after SWITCH the coordinator waits for the held processes' word while no stayer confirmed: the phase
  // deadline, and at least twice the hold deadline (TRAINMOVER_HOLD_TIMEOUT_MS = 2 x switch_ms): a held process
  // abandons up to one hold deadline after SWITCH and says so on its next connection.
  uint64_t UnconfirmedWaitMs() const { return std::max(deadlines_.phase_ms, 4 * deadlines_.switch_ms); }

  Migration* Active(EngineHost& h) {
    for (auto it = ctx_.rbegin(); it != ctx_.rend(); ++it) {
      Migration* m = h.FindMigration(it->first);
      if (m && !MigTerminal(m->state)) return m;
    }
    return nullptr;
  }

  // Spawned joiners that became joiners are reaped here once they exit.
  void Reap() {
    for (auto& [id, x] : ctx_) {
      for (Pair& p : x.pairs) {
        std::string how;
        if (p.child > 0 && p.joiner != 0 && launcher_->Exited(p.child, &how)) p.child = 0;
      }
    }
  }

  static void EndOpenPhase(EngineHost& h, Migration& m, uint64_t p, const std::string& name) {
    for (const PhaseSpan& s : m.phases) {
      if (s.process == p && s.phase == name && s.end_ns == 0) return h.EndPhase(m, p, name);
    }
  }

  std::unique_ptr<JoinerLauncher> launcher_;
  MigrationDeadlines deadlines_;
  std::map<uint64_t, MoveCtx> ctx_;
  std::set<uint64_t> captured_;  // comm_keys some member reported captured into a CUDA graph
};

}  // namespace

std::unique_ptr<JoinerLauncher> MakeProcessLauncher() { return std::make_unique<ProcessLauncher>(); }

MigrationDeadlines DeadlinesFromConfig() {
  MigrationDeadlines d;
  const shim::ConfigResult& c = shim::ConfigGet();
  if (!c.error.empty()) return d;
  d.phase_ms = static_cast<uint64_t>(c.config.phase_timeout_ms);
  d.switch_ms = static_cast<uint64_t>(c.config.hold_timeout_ms) / 2;
  d.commit_delay_ms = c.config.fault == "slow-commit" ? 3000 : 0;
  return d;
}

std::unique_ptr<Engine> MakeMigrationEngine(std::unique_ptr<JoinerLauncher> launcher, MigrationDeadlines deadlines) {
  return std::make_unique<MigrationEngine>(launcher ? std::move(launcher) : MakeProcessLauncher(), deadlines);
}

}  // namespace trainmover::control
