// SPDX-License-Identifier: Apache-2.0
// The coordinator's migration engine: docs/migration.md describes the protocol it drives.
#include "engine.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "base/log.h"
#include "msgs.h"

extern char** environ;

namespace trainmover::control {

namespace {

// One rank moved: its leaver and joiner.
struct Pair {
  int32_t rank = -1;
  uint64_t leaver = 0, joiner = 0;
  std::vector<uint64_t> keys;        // the leaver's communicators, in its creation order
  std::map<uint64_t, uint64_t> j2l;  // joiner comm_key -> leaver comm_key
  bool ready = false, exposed = false, fetch_sent = false, verified = false;
  std::vector<uint8_t> descriptor;
  std::string verify_msg;
  pid_t child = 0;  // --spawn
  std::string log;
  std::vector<uint8_t> tape;  // the leaver's sandbox tape (EVENT TAPE chunks), forwarded to the joiner
  bool tape_done = false, tape_sent = false;
};

constexpr size_t kMaxTapeRelay = size_t{1} << 30;  // D keeps at most this much tape per rank

struct Ctx {
  std::vector<Pair> pairs;
  std::vector<uint64_t> keys;  // every communicator containing a leaver (first seen order)
  std::set<uint64_t> stayers;  // other members of those communicators
  size_t built_expected = 0, built_ok = 0;
  int64_t proposal = -1, margin = 2, max_seen = -1;
  bool round_passed = false;
  std::set<uint64_t> accepted, at_step, switched;
  bool switch_sent = false;
  uint64_t max_stall = 0;
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
  bool IsLeaver(uint64_t p) { return ByLeaver(p) != nullptr; }
};

std::string LineageText(const CommCreated& c) {
  std::string s = std::string(LineageKindName(c.lineage.kind)) + " #" + std::to_string(c.lineage.index) + " rank " +
                  std::to_string(c.rank) + "/" + std::to_string(c.nranks);
  if (c.lineage.kind == static_cast<uint8_t>(LineageKind::kSplit)) {
    s += " color " + std::to_string(c.lineage.color) + " key " + std::to_string(c.lineage.key);
  }
  return s;
}

class Engine : public MigrationEngine {
 public:
  void OnRequest(Coordinator& c, Migration& m) override {
    Ctx& x = ctx_[m.id];
    if (m.ranks.empty()) m.ranks = {m.rank};
    for (int32_t r : m.ranks) {
      Pair pr;
      pr.rank = r;
      pr.leaver = c.FindProcessByRank(r)->id;
      x.pairs.push_back(pr);
    }
    for (Pair& pr : x.pairs) {
      ProcessRec* l = c.FindProcess(pr.leaver);
      std::vector<std::pair<uint32_t, uint64_t>> order;
      for (const auto& [key, info] : l->comm_info) order.push_back({info.lineage.index, key});
      std::sort(order.begin(), order.end());
      for (auto& [idx, key] : order) {
        pr.keys.push_back(key);
        if (std::find(x.keys.begin(), x.keys.end(), key) == x.keys.end()) x.keys.push_back(key);
      }
    }
    for (uint64_t key : x.keys) {
      auto it = c.comms().find(key);
      if (it == c.comms().end()) continue;
      for (auto& [rank, proc] : it->second.members) {
        if (!x.IsLeaver(proc)) x.stayers.insert(proc);
      }
    }
    EndPhase(c, m, 0, "requested");
    for (uint64_t key : x.keys) {
      if (captured_.count(key)) {
        char hex[24];
        std::snprintf(hex, sizeof(hex), "%016" PRIx64, key);
        c.SetMigState(m, MigState::kRefused,
                      std::string("communicator ") + hex +
                          " was captured into a CUDA graph: the graph holds its real "
                          "communicator, which a migration would replace");
        return;
      }
    }
    for (Pair& pr : x.pairs) {
      if (pr.keys.empty()) {
        c.SetMigState(m, MigState::kRefused, "rank " + std::to_string(pr.rank) + " is in no communicator");
        return;
      }
    }
    if (m.spawn) {
      c.SetMigState(m, MigState::kSpawning);
      for (Pair& pr : x.pairs) {
        std::string err = Spawn(m, *c.FindProcess(pr.leaver), &pr);
        if (!err.empty())
          return Abort(c, m, "cannot spawn the joiner of rank " + std::to_string(pr.rank) + ": " + err, true);
        m.joiner_log += (m.joiner_log.empty() ? "" : ", ") + pr.log;
      }
    }
    c.SetMigState(m, MigState::kSandbox);
    c.BeginPhase(m, 0, "sandbox");
    for (Pair& pr : x.pairs) {  // the joiner's shadow iteration replays the leaver's next one (docs/migration.md)
      c.SendCommand(pr.leaver, mig::Make(static_cast<uint16_t>(mig::Cmd::kRecordTape), m.id, mig::Step{0}));
    }
  }

  // Sends a complete tape to the pair's joiner once it has registered (a process of role joiner replacing the
  // pair's rank; the matched one when READY already named it), in chunks of one frame, then an empty chunk.
  void MaybeSendTape(Coordinator& c, Migration& m, Pair& pr) {
    if (!pr.tape_done || pr.tape_sent) return;
    for (const auto& [id, p] : c.processes()) {
      if (p.state != ProcState::kAlive || p.info.role != "joiner" || p.info.replace != pr.rank) continue;
      if (pr.joiner != 0 && pr.joiner != id) continue;
      for (size_t at = 0; at < pr.tape.size(); at += mig::kMaxBlob) {
        const size_t n = std::min(mig::kMaxBlob, pr.tape.size() - at);
        mig::Blob chunk{std::vector<uint8_t>(pr.tape.begin() + static_cast<ptrdiff_t>(at),
                                             pr.tape.begin() + static_cast<ptrdiff_t>(at + n))};
        c.SendCommand(id, mig::Make(static_cast<uint16_t>(mig::Cmd::kTape), m.id, chunk));
      }
      c.SendCommand(id, mig::Make(static_cast<uint16_t>(mig::Cmd::kTape), m.id, mig::Blob{}));
      pr.tape_sent = true;
      pr.tape.clear();
      pr.tape.shrink_to_fit();
      return;
    }
  }

  void OnCancel(Coordinator& c, Migration& m) override { Abort(c, m, "cancelled by the operator", false); }

  void OnProcessLost(Coordinator& c, uint64_t p) override {
    Reap();
    Migration* m = Active(c);
    if (!m) return;
    Ctx& x = ctx_[m->id];
    ProcessRec* pr = c.FindProcess(p);
    bool exited = pr && pr->state == ProcState::kExited;
    std::string who = "process " + std::to_string(p) + (pr ? " (rank " + std::to_string(pr->info.rank) + ")" : "");
    bool joiner_candidate = false;
    for (const Pair& q : x.pairs) {
      joiner_candidate |=
          pr && pr->info.role == "joiner" && pr->info.replace == q.rank && (q.joiner == 0 || q.joiner == p);
    }
    bool involved = x.IsLeaver(p) || x.ByJoiner(p) || x.stayers.count(p) || joiner_candidate;
    if (!involved) return;
    if (!x.switch_sent) {
      Abort(c, *m, who + (exited ? " exited" : " was lost") + " before the switch", true);
      return;
    }
    if (x.IsLeaver(p)) return;  // its BYE after the hand-off
    if (exited && x.stayers.count(p)) {
      x.switched.insert(p);  // finished right at S: nothing more to measure
      MaybeDone(c, *m);
      return;
    }
    TM_WARN(kLogMigration, "coordinator: migration %" PRIu64 ": %s lost after the switch", m->id, who.c_str());
  }

  void OnTick(Coordinator& c) override {
    Reap();
    Migration* m = Active(c);
    if (!m) return;
    Ctx& x = ctx_[m->id];
    for (Pair& pr : x.pairs) MaybeSendTape(c, *m, pr);
    for (Pair& pr : x.pairs) {
      if (pr.child <= 0 || pr.joiner != 0) continue;
      int st = 0;
      if (waitpid(pr.child, &st, WNOHANG) == pr.child) {
        pr.child = 0;
        std::string how =
            WIFEXITED(st) ? "status " + std::to_string(WEXITSTATUS(st)) : "signal " + std::to_string(WTERMSIG(st));
        return Abort(c, *m,
                     "the spawned joiner of rank " + std::to_string(pr.rank) + " exited (" + how +
                         ") before it was ready; see " + pr.log,
                     true);
      }
      for (const auto& [id, p] : c.processes()) {
        if (p.info.pid == static_cast<uint32_t>(pr.child) && p.info.role != "joiner") {
          return Abort(c, *m,
                       "the spawned process registered as a " + p.info.role +
                           ", not as a joiner: is the shim (libtrainmover) in its environment?",
                       true);
        }
      }
    }
  }

  void OnEvent(Coordinator& c, uint64_t p, const Event& e) override {
    Reap();
    ProcessRec* pr = c.FindProcess(p);
    if (!pr) return;
    if (e.kind == static_cast<uint16_t>(mig::Ev::kReady)) return OnReady(c, *pr, e);
    if (e.kind == static_cast<uint16_t>(mig::Ev::kCaptured)) {
      mig::KeyList kl;
      if (DecodePayload(e.body, &kl)) captured_.insert(kl.keys.begin(), kl.keys.end());
      return;
    }
    Migration* m = c.FindMigration(e.migration);
    if (!m || e.migration == 0 || MigTerminal(m->state)) return;  // late events of an ended migration
    Ctx& x = ctx_[m->id];
    switch (static_cast<mig::Ev>(e.kind)) {
      case mig::Ev::kTape: {
        mig::Blob b;
        Pair* lp = x.ByLeaver(p);
        if (!lp || lp->tape_done || !DecodePayload(e.body, &b)) return;
        if (b.bytes.empty()) {
          lp->tape_done = true;
          return MaybeSendTape(c, *m, *lp);
        }
        if (lp->tape.size() + b.bytes.size() > kMaxTapeRelay) {  // a bound on D's memory: the joiner emulates
          lp->tape.clear();
          lp->tape_done = lp->tape_sent = true;
          TM_WARN(kLogMigration, "coordinator: migration %" PRIu64 ": the tape of rank %d exceeds %zu bytes; not forwarded", m->id,
                   lp->rank, kMaxTapeRelay);
          return;
        }
        lp->tape.insert(lp->tape.end(), b.bytes.begin(), b.bytes.end());
        return;
      }
      case mig::Ev::kIds: {
        mig::Ids ids;
        if (!DecodePayload(e.body, &ids)) return Abort(c, *m, "malformed IDS", true);
        std::map<uint64_t, mig::Build> per;
        for (const mig::IdEntry& ie : ids.ids) {
          auto it = c.comms().find(ie.comm_key);
          if (it == c.comms().end()) return Abort(c, *m, "a communicator of the leaver disappeared", true);
          for (auto& [rank, proc] : it->second.members) {
            Pair* lp = x.ByLeaver(proc);
            uint64_t to = lp ? lp->joiner : proc;
            per[to].entries.push_back(mig::BuildEntry{ie.comm_key, ie.id, it->second.nranks, rank});
            ++x.built_expected;
          }
        }
        for (auto& [proc, b] : per) {
          c.SendCommand(proc, mig::Make(static_cast<uint16_t>(mig::Cmd::kBuild), m->id, b));
        }
        return;
      }
      case mig::Ev::kBuilt: {
        mig::Built b;
        if (!DecodePayload(e.body, &b)) return Abort(c, *m, "malformed BUILT", true);
        if (!b.ok) return Abort(c, *m, "building a replacement communicator failed: " + b.message, true);
        ++x.built_ok;
        return MaybePropose(c, *m);
      }
      case mig::Ev::kExposed: {
        mig::Blob b;
        if (!DecodePayload(e.body, &b)) return Abort(c, *m, "malformed EXPOSED", true);
        Pair* lp = x.ByLeaver(p);
        if (!lp) return;
        lp->descriptor = std::move(b.bytes);
        lp->exposed = true;
        for (const Region& r : pr->regions) m->bytes_total += r.bytes;
        return MaybePropose(c, *m);
      }
      case mig::Ev::kAccept: {
        mig::Step s;
        if (!DecodePayload(e.body, &s) || s.step != x.proposal || m->state != MigState::kAgreeing) return;
        x.accepted.insert(p);
        if (x.accepted.size() == x.stayers.size() + x.pairs.size()) {
          m->switch_step = x.proposal;
          EndPhase(c, *m, 0, "propose step " + std::to_string(x.proposal));
          c.SetMigState(*m, MigState::kSwitching);
          c.EndPhase(*m, 0, "agree");
          c.BeginPhase(*m, 0, "switch");
          for (uint64_t q : Participants(*m, x)) {
            c.SendCommand(q, mig::Make(static_cast<uint16_t>(mig::Cmd::kCommit), m->id, mig::Step{x.proposal}));
          }
        }
        return;
      }
      case mig::Ev::kPassed: {
        mig::Step s;
        if (!DecodePayload(e.body, &s) || m->state != MigState::kAgreeing) return;
        x.max_seen = std::max(x.max_seen, s.step);
        if (!x.round_passed) {
          x.round_passed = true;
          x.margin *= 2;
          Propose(c, *m);
        }
        return;
      }
      case mig::Ev::kAtStep: {
        mig::Step s;
        if (!DecodePayload(e.body, &s) || s.step != m->switch_step) return;
        x.at_step.insert(p);
        if (Pair* lp = x.ByLeaver(p); lp && !lp->fetch_sent) {
          lp->fetch_sent = true;
          c.SendCommand(lp->joiner,
                        mig::Make(static_cast<uint16_t>(mig::Cmd::kFetchFrom), m->id, mig::Blob{lp->descriptor}));
        }
        return MaybeSwitch(c, *m);
      }
      case mig::Ev::kProgress: {
        mig::Progress pg;
        if (DecodePayload(e.body, &pg) && x.pairs.size() == 1) m->bytes_done = pg.done;
        return;
      }
      case mig::Ev::kVerified: {
        mig::Built b;
        if (!DecodePayload(e.body, &b)) return Abort(c, *m, "malformed VERIFIED", true);
        if (!b.ok) return Abort(c, *m, "state transfer failed: " + b.message, true);
        Pair* jp = x.ByJoiner(p);
        if (!jp) return;
        jp->verified = true;
        jp->verify_msg = b.message;
        m->bytes_done = 0;
        for (const Pair& q : x.pairs) {
          if (!q.verified) continue;
          if (ProcessRec* l = c.FindProcess(q.leaver)) {
            for (const Region& r : l->regions) m->bytes_done += r.bytes;
          }
        }
        return MaybeSwitch(c, *m);
      }
      case mig::Ev::kSwitched: {
        mig::Switched s;
        if (!DecodePayload(e.body, &s)) return;
        if (!x.ByJoiner(p)) x.max_stall = std::max(x.max_stall, s.stall_ns);
        x.switched.insert(p);
        return MaybeDone(c, *m);
      }
      case mig::Ev::kFailed: {
        mig::Reason r;
        DecodePayload(e.body, &r);
        if (!x.switch_sent) Abort(c, *m, "rank " + std::to_string(pr->info.rank) + ": " + r.text, true);
        return;
      }
      case mig::Ev::kPhase: {
        mig::Phase ph;
        if (DecodePayload(e.body, &ph)) m->phases.push_back(PhaseSpan{p, ph.name, ph.start_ns, ph.end_ns});
        return;
      }
      default:
        return;
    }
  }

 private:
  Migration* Active(Coordinator& c) {
    for (auto it = ctx_.rbegin(); it != ctx_.rend(); ++it) {
      Migration* m = c.FindMigration(it->first);
      if (m && !MigTerminal(m->state)) return m;
    }
    return nullptr;
  }

  void Reap() {
    for (auto& [id, x] : ctx_) {
      for (Pair& p : x.pairs) {
        if (p.child > 0 && p.joiner != 0 && waitpid(p.child, nullptr, WNOHANG) == p.child) p.child = 0;
      }
    }
  }

  static void EndPhase(Coordinator& c, Migration& m, uint64_t p, const std::string& name) {
    for (const PhaseSpan& s : m.phases) {
      if (s.process == p && s.phase == name && s.end_ns == 0) return c.EndPhase(m, p, name);
    }
  }

  // Stayers and the leaver: the processes that agree on S and wait there.
  static std::vector<uint64_t> Participants(const Migration&, const Ctx& x) {
    std::vector<uint64_t> v(x.stayers.begin(), x.stayers.end());
    for (const Pair& p : x.pairs) v.push_back(p.leaver);
    return v;
  }
  static std::vector<uint64_t> Members(const Migration&, const Ctx& x) {
    std::vector<uint64_t> v(x.stayers.begin(), x.stayers.end());
    for (const Pair& p : x.pairs) {
      if (p.joiner) v.push_back(p.joiner);
    }
    return v;
  }

  std::string Spawn(const Migration& m, const ProcessRec& l, Pair* x) {
    const int32_t rank = x->rank;
    if (l.info.cmdline.empty()) return "the leaver reported no command line";
    std::string dir = l.info.cwd.empty() ? "." : l.info.cwd;
    std::string log = dir + "/joiner-" + std::to_string(rank) + ".log";
    struct stat st;
    if (stat(log.c_str(), &st) == 0)
      log = dir + "/joiner-" + std::to_string(rank) + "-m" + std::to_string(m.id) + ".log";
    std::vector<std::string> env;
    for (const std::string& kv : l.info.env) {
      if (kv.rfind("TRAINMOVER_ROLE=", 0) == 0 || kv.rfind("TRAINMOVER_REPLACE=", 0) == 0) continue;
      env.push_back(kv);
    }
    env.push_back("TRAINMOVER_ROLE=joiner");
    env.push_back("TRAINMOVER_REPLACE=" + std::to_string(rank));
    std::vector<char*> argv, envp;
    for (const std::string& a : l.info.cmdline) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (std::string& kv : env) envp.push_back(kv.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addchdir_np(&fa, dir.c_str());
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = 0;
    int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return std::string(argv[0]) + ": " + strerror(rc);
    x->child = pid;
    x->log = log;
    TM_INFO(kLogMigration, "coordinator: migration %" PRIu64 ": spawned joiner pid %d for rank %d, output in %s", m.id, pid, rank,
             log.c_str());
    return "";
  }

  void OnReady(Coordinator& c, ProcessRec& j, const Event& e) {
    mig::Ready r;
    Migration* m = Active(c);
    auto refuse_joiner = [&](const std::string& why) {
      c.SendCommand(j.id, mig::Make(static_cast<uint16_t>(mig::Cmd::kAbort), m ? m->id : 0, mig::Reason{why}));
    };
    if (!DecodePayload(e.body, &r)) return refuse_joiner("malformed READY");
    Pair* pp = nullptr;
    if (m) {
      for (Pair& q : ctx_[m->id].pairs) {
        if (q.rank == j.info.replace && q.joiner == 0) pp = &q;
      }
    }
    if (!m || !pp || (m->state != MigState::kSandbox && m->state != MigState::kSpawning)) {
      TM_WARN(kLogMigration, "coordinator: joiner process %" PRIu64 " for rank %d is not expected by any migration; told to exit",
               j.id, j.info.replace);
      return refuse_joiner("no migration of rank " + std::to_string(j.info.replace) + " waits for a joiner");
    }
    Ctx& x = ctx_[m->id];
    Pair& pair = *pp;
    ProcessRec* l = c.FindProcess(pair.leaver);
    // Lineage: the i-th communicator of each, in creation order.
    std::vector<const CommCreated*> lc;
    for (uint64_t k : pair.keys) lc.push_back(&l->comm_info.at(k));
    std::string diff;
    std::map<uint64_t, uint64_t> j2l;
    if (r.comms.size() != lc.size()) {
      diff = "the joiner has " + std::to_string(r.comms.size()) + " communicator(s), the leaver " +
             std::to_string(lc.size());
    }
    for (size_t i = 0; diff.empty() && i < lc.size(); ++i) {
      const CommCreated &a = r.comms[i], &b = *lc[i];
      const Lineage &la = a.lineage, &lb = b.lineage;
      bool parent_ok =
          la.parent_key == 0 ? lb.parent_key == 0 : j2l.count(la.parent_key) && j2l[la.parent_key] == lb.parent_key;
      // A sandboxed Split child does not know its real size (the sandbox splits as if every rank chose this
      // rank's color): its nranks/rank are not compared; the replacement gets the leaver's.
      const bool sized = la.kind != static_cast<uint8_t>(LineageKind::kSplit);
      if (la.kind != lb.kind || (sized && (a.nranks != b.nranks || a.rank != b.rank)) || la.color != lb.color ||
          la.key != lb.key || la.excluded != lb.excluded || la.child_index != lb.child_index || !parent_ok) {
        diff = "communicator " + std::to_string(i) + ": joiner " + LineageText(a) + ", leaver " + LineageText(b);
      }
      j2l[a.comm_key] = b.comm_key;
    }
    if (diff.empty()) {
      std::map<std::string, uint64_t> lr, jr;
      for (const Region& g : l->regions) lr[g.name] = g.bytes;
      for (const Region& g : r.regions) jr[g.name] = g.bytes;
      for (auto& [name, bytes] : lr) {
        if (!diff.empty()) break;
        if (!jr.count(name))
          diff = "state region '" + name + "' is registered by the leaver, not by the joiner";
        else if (jr[name] != bytes)
          diff = "state region '" + name + "': " + std::to_string(jr[name]) + " bytes in the joiner, " +
                 std::to_string(bytes) + " in the leaver";
      }
      for (auto& [name, bytes] : jr) {
        if (diff.empty() && !lr.count(name))
          diff = "state region '" + name + "' is registered by the joiner, not by the leaver";
      }
    }
    if (!diff.empty()) {
      std::string why = "the joiner of rank " + std::to_string(pair.rank) + " does not match the leaver: " + diff;
      refuse_joiner(why);
      Abort(c, *m, why, false);
      c.SetMigState(*m, MigState::kRefused, why);
      return;
    }
    pair.joiner = j.id;
    pair.j2l = j2l;
    pair.ready = true;
    if (pair.rank == m->rank) m->joiner = j.id;
    for (const Pair& q : x.pairs) {
      if (!q.ready) return;  // wait for every joiner
    }
    EndPhase(c, *m, 0, "sandbox");
    c.SetMigState(*m, MigState::kReady);
    c.SetMigState(*m, MigState::kBuilding);
    c.BeginPhase(*m, 0, "build");
    for (const Pair& q : x.pairs) {
      mig::KeyList map;
      for (auto& [jk, lk] : q.j2l) map.keys.insert(map.keys.end(), {jk, lk});
      c.SendCommand(q.joiner, mig::Make(static_cast<uint16_t>(mig::Cmd::kMap), m->id, map));
      ProcessRec* jr = c.FindProcess(q.joiner);
      std::string where = "host " + (jr ? jr->info.host : "?") + " pid " + (jr ? std::to_string(jr->info.pid) : "?");
      c.SendCommand(q.leaver, mig::Make(static_cast<uint16_t>(mig::Cmd::kExpose), m->id, mig::Reason{where}));
    }
    // One joiner makes every fresh id: the bootstrap roots live in processes that stay.
    mig::KeyList keys;
    keys.keys = x.keys;
    c.SendCommand(x.pairs.front().joiner, mig::Make(static_cast<uint16_t>(mig::Cmd::kMakeIds), m->id, keys));
  }

  void MaybePropose(Coordinator& c, Migration& m) {
    Ctx& x = ctx_[m.id];
    for (const Pair& p : x.pairs) {
      if (!p.exposed) return;
    }
    if (m.state != MigState::kBuilding || x.built_ok < x.built_expected || x.built_expected == 0) return;
    EndPhase(c, m, 0, "build");
    c.SetMigState(m, MigState::kAgreeing);
    c.BeginPhase(m, 0, "agree");
    Propose(c, m);
  }

  void Propose(Coordinator& c, Migration& m) {
    Ctx& x = ctx_[m.id];
    int64_t top = x.max_seen;
    for (uint64_t q : Participants(m, x)) {
      if (ProcessRec* pr = c.FindProcess(q)) top = std::max(top, pr->step);
    }
    if (x.proposal >= 0) EndPhase(c, m, 0, "propose step " + std::to_string(x.proposal));
    x.proposal = std::max(top, x.proposal) + x.margin;
    c.BeginPhase(m, 0, "propose step " + std::to_string(x.proposal));
    x.accepted.clear();
    x.round_passed = false;
    TM_INFO(kLogMigration, "coordinator: migration %" PRIu64 ": proposing the switch at step %" PRId64 " (margin %" PRId64 ")", m.id,
             x.proposal, x.margin);
    for (uint64_t q : Participants(m, x)) {
      c.SendCommand(q, mig::Make(static_cast<uint16_t>(mig::Cmd::kPropose), m.id, mig::Step{x.proposal}));
    }
  }

  void MaybeSwitch(Coordinator& c, Migration& m) {
    Ctx& x = ctx_[m.id];
    for (const Pair& p : x.pairs) {
      if (!p.verified) return;
    }
    if (x.switch_sent || x.at_step.size() < x.stayers.size() + x.pairs.size()) return;
    x.switch_sent = true;
    for (uint64_t q : Members(m, x)) {
      c.SendCommand(q, mig::Make(static_cast<uint16_t>(mig::Cmd::kSwitch), m.id, mig::Step{m.switch_step}));
    }
    for (const Pair& p : x.pairs) {
      c.SendCommand(p.leaver, mig::Make(static_cast<uint16_t>(mig::Cmd::kSwitch), m.id, mig::Step{m.switch_step}));
    }
    MaybeDone(c, m);
  }

  void MaybeDone(Coordinator& c, Migration& m) {
    Ctx& x = ctx_[m.id];
    if (!x.switch_sent) return;
    for (uint64_t q : Members(m, x)) {
      if (!x.switched.count(q)) return;
    }
    m.downtime_ns = x.max_stall;
    EndPhase(c, m, 0, "switch");
    for (const Pair& p : x.pairs) {
      if (ProcessRec* j = c.FindProcess(p.joiner)) {
        j->info.role = "worker";  // it holds the rank now (and can be migrated in turn)
        j->info.replace = -1;
      }
      TM_INFO(kLogMigration, "coordinator: migration %" PRIu64 ": rank %d: %s", m.id, p.rank, p.verify_msg.c_str());
    }
    c.SetMigState(m, MigState::kDone);
    TM_INFO(kLogMigration, "coordinator: migration %" PRIu64 " done at step %" PRId64 "; downtime %.1f ms", m.id, m.switch_step,
             m.downtime_ns / 1e6);
  }

  void Abort(Coordinator& c, Migration& m, const std::string& why, bool fail) {
    Ctx& x = ctx_[m.id];
    std::vector<uint64_t> to = Participants(m, x);
    for (const Pair& p : x.pairs) {
      if (p.joiner) to.push_back(p.joiner);
      if (p.child > 0 && p.joiner == 0) kill(p.child, SIGTERM);  // spawned, but never became this migration's joiner
    }
    for (uint64_t q : to) c.SendCommand(q, mig::Make(static_cast<uint16_t>(mig::Cmd::kAbort), m.id, mig::Reason{why}));
    for (const PhaseSpan& s : std::vector<PhaseSpan>(m.phases)) {
      if (s.end_ns == 0) c.EndPhase(m, s.process, s.phase);
    }
    if (fail) c.SetMigState(m, MigState::kFailed, why);
  }

  std::map<uint64_t, Ctx> ctx_;
  std::set<uint64_t> captured_;  // comm_keys some member reported captured into a CUDA graph
};

}  // namespace

std::unique_ptr<MigrationEngine> MakeMigrationEngine() { return std::make_unique<Engine>(); }

}  // namespace trainmover::control
