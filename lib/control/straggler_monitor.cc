// SPDX-License-Identifier: Apache-2.0
#include "straggler_monitor.h"

#include <algorithm>
#include <cinttypes>
#include <cstdlib>
#include <set>

#include "base/log.h"
#include "json_out.h"

namespace trainmover::control {

namespace {

constexpr size_t kHistoryRounds = 32;  // rounds kept for the baseline step time
constexpr size_t kBaselineRounds = 5;  // the job's step time before a straggler: the median of these rounds
constexpr uint64_t kVerifySpans = 4;    // after a migration: spans of flag_windows rounds before "not recovered"

const char* PolicyName(StragglerPolicy p) { return p == StragglerPolicy::kMigrate ? "migrate" : "report"; }

std::string Percent(double score) {
  char b[32];
  snprintf(b, sizeof(b), "%+.0f%%", score * 100);
  return b;
}

}  // namespace

StragglerMonitor::StragglerMonitor(StragglerOptions o, uint64_t round_timeout_ms, Migrate migrate)
    : opt_(std::move(o)),
      round_timeout_ns_(round_timeout_ms * 1000000ull),
      migrate_(std::move(migrate)),
      det_(opt_.detector) {}

void StragglerMonitor::OnWindow(uint64_t process, const StepWindow& w, uint64_t now_mono_ns) {
  if (w.steps == 0) return;
  Pending& p = pending_[process];
  if (p.window.steps == 0) p.first_ns = now_mono_ns;
  // Two windows before one round: the detector's figure (the lower quartile of the steps' compute) of the sum is
  // taken as theirs weighted by their steps; a window without one (0) makes the detector use the mean.
  const uint64_t steps = p.window.steps + w.steps;
  p.window.compute_p25_ns =
      p.window.steps == 0 ? w.compute_p25_ns
      : p.window.compute_p25_ns == 0 || w.compute_p25_ns == 0
          ? 0
          : (p.window.compute_p25_ns * p.window.steps + w.compute_p25_ns * w.steps) / steps;
  p.window.steps = static_cast<uint32_t>(std::min<uint64_t>(steps, UINT32_MAX));
  p.window.compute_ns += w.compute_ns;
  p.window.wait_ns += w.wait_ns;
}

void StragglerMonitor::OnTick(EngineHost& h, uint64_t now_mono_ns, uint64_t now_real_ns) {
  // The job's workers now; whoever else the detector or the pending set knows has left.
  std::vector<uint64_t> workers;
  for (const auto& [id, pr] : h.processes()) {
    if (pr.state == ProcState::kAlive && pr.info.role == "worker" && pr.info.rank >= 0) workers.push_back(id);
  }
  auto is_worker = [&](uint64_t id) { return std::binary_search(workers.begin(), workers.end(), id); };
  for (auto it = pending_.begin(); it != pending_.end();) it = is_worker(it->first) ? std::next(it) : pending_.erase(it);
  std::vector<uint64_t> gone;
  for (const auto& [id, st] : det_.states()) {
    if (!is_worker(id)) gone.push_back(id);
  }
  for (uint64_t id : gone) {
    det_.Forget(id);
    baseline_.erase(id);
  }

  size_t fresh = 0;
  uint64_t oldest = UINT64_MAX;
  for (const auto& [id, p] : pending_) {
    fresh += p.window.steps > 0;
    oldest = std::min(oldest, p.first_ns);
  }
  const bool all = fresh == workers.size() && fresh >= 2;
  const bool waited = fresh >= 2 && now_mono_ns - oldest > round_timeout_ns_;
  if (all || waited) RunRound(h, workers, now_real_ns);
  for (StragglerAction& a : actions_) {
    if (a.state != "done") Follow(h, a, now_real_ns);
  }
  if (opt_.policy == StragglerPolicy::kMigrate) Act(h, now_real_ns);
}

void StragglerMonitor::RunRound(EngineHost& h, const std::vector<uint64_t>& workers, uint64_t now_real_ns) {
  std::vector<RankSample> samples;
  for (uint64_t id : workers) {
    auto p = pending_.find(id);
    if (p == pending_.end()) continue;
    const ProcessRec* pr = h.FindProcess(id);
    samples.push_back(RankSample{id, pr ? pr->info.rank : -1, p->second.window});
  }
  pending_.clear();
  std::vector<StragglerChange> changes;
  if (!det_.Round(samples, now_real_ns, &changes)) return;
  ++rounds_;
  history_.push_back(det_.job_step_ns());
  if (history_.size() > kHistoryRounds) history_.pop_front();
  for (const StragglerChange& c : changes) {
    const ProcessRec* pr = h.FindProcess(c.process);
    const std::string who = pr ? pr->info.host + ":" + std::to_string(pr->info.pid) : "?";
    if (c.flagged) {
      baseline_[c.process] = BaselineStepNs(static_cast<size_t>(opt_.detector.flag_windows));
      TM_WARN(kLogControl,
              "straggler: rank %d (process %" PRIu64 ", %s) flagged: compute %.3f ms/step, %s against its peers' "
              "median for %d windows (threshold %+.0f%%, policy %s)",
              c.rank, c.process, who.c_str(), c.state.compute_ms, Percent(c.state.score).c_str(),
              opt_.detector.flag_windows, opt_.detector.threshold * 100, PolicyName(opt_.policy));
    } else {
      TM_WARN(kLogControl,
              "straggler: rank %d (process %" PRIu64 ", %s) recovered: compute %.3f ms/step, %s against its peers' "
              "median for %d windows",
              c.rank, c.process, who.c_str(), c.state.compute_ms, Percent(c.state.score).c_str(),
              opt_.detector.clear_windows);
    }
  }
}

// The rounds just before the straggler's streak, not an older figure from a quieter hour of the machine.
double StragglerMonitor::BaselineStepNs(size_t skip) const {
  std::vector<double> before;
  for (size_t i = skip; i < history_.size() && before.size() < kBaselineRounds; ++i) {
    before.push_back(history_[history_.size() - 1 - i]);
  }
  return Median(before);
}

// migrate policy: at most one action at a time, and none while any migration is in flight (the operator's
// included); the flagged rank with the highest score that is out of its cool-down.
void StragglerMonitor::Act(EngineHost& h, uint64_t now_real_ns) {
  for (const StragglerAction& a : actions_) {
    if (a.state != "done") return;
  }
  for (const auto& [id, m] : h.migrations()) {
    if (!MigTerminal(m.state)) return;
  }
  const StragglerState* pick = nullptr;
  uint64_t pick_id = 0;
  for (const auto& [id, st] : det_.states()) {
    if (!st.flagged) continue;
    auto last = last_action_ns_.find(st.rank);
    if (last != last_action_ns_.end() && now_real_ns - last->second < opt_.cooldown_ms * 1000000ull) continue;
    if (!pick || st.score > pick->score) {
      pick = &st;
      pick_id = id;
    }
  }
  if (!pick) return;
  const ProcessRec* pr = h.FindProcess(pick_id);
  StragglerAction a;
  a.rank = pick->rank;
  a.process = pick_id;
  a.score = pick->score;
  a.started_ns = now_real_ns;
  a.baseline_step_ms = baseline_.count(pick_id) ? baseline_.at(pick_id) / 1e6 : 0;
  a.slow_step_ms = det_.job_step_ns() / 1e6;
  for (const std::string& host : opt_.spare_hosts) {
    if (!pr || host != pr->info.host) {
      a.host = host;
      break;
    }
  }
  last_action_ns_[a.rank] = now_real_ns;
  MigrateReq q;
  q.rank = a.rank;
  q.host = a.host;
  q.spawn = 1;
  MigrateReply r = migrate_ ? migrate_(q) : MigrateReply{0, 0, "refused", "no migration engine"};
  a.migration = r.id;
  if (r.accepted) {
    a.state = "migrating";
    TM_WARN(kLogControl, "straggler: moving rank %d away (migration %" PRIu64 " to %s), policy migrate", a.rank, r.id,
            a.host.empty() ? "the coordinator's host" : a.host.c_str());
  } else {
    a.state = "done";
    a.outcome = "refused: " + r.message;
    a.ended_ns = now_real_ns;
    TM_WARN(kLogControl, "straggler: rank %d not moved: %s", a.rank, r.message.c_str());
  }
  actions_.push_back(std::move(a));
}

// A started action: the migration's end, then flag_windows rounds of the job's step time after it.
void StragglerMonitor::Follow(EngineHost& h, StragglerAction& a, uint64_t now_real_ns) {
  if (a.state == "migrating") {
    const Migration* m = h.FindMigration(a.migration);
    if (!m || !MigTerminal(m->state)) return;
    if (m->state != MigState::kDone) {
      a.state = "done";
      a.outcome = std::string("migration ") + MigStateName(m->state) + ": " + m->reason;
      a.ended_ns = now_real_ns;
      TM_WARN(kLogControl, "straggler: moving rank %d failed (migration %" PRIu64 " %s: %s); training goes on",
              a.rank, a.migration, MigStateName(m->state), m->reason.c_str());
      return;
    }
    a.state = "verifying";
    // The round under way may hold windows from before the switch; the replacement's first rounds are its warm-up
    // (cold caches, the first operations on new communicators), as the detector counts them.
    a.verify_from_round = rounds_ + 1 + static_cast<uint64_t>(opt_.detector.warmup_windows);
    return;
  }
  // Recovered once, for flag_windows rounds in a row, the job's step time is back within the threshold of its
  // figure before the straggler, or the rank's new process is within the threshold of its peers; a machine's
  // transient (the load of something else, the replacement's first steps) gets up to kVerifySpans such spans
  // before the verdict is "not recovered".
  const uint64_t need = static_cast<uint64_t>(opt_.detector.flag_windows);
  // The cause: the rank's new process computes no longer than its peers (a ratio, so the machine's load, which
  // swings the job's step time by 2-3x on a shared host, cancels out).
  if (rounds_ >= a.verify_from_round && rounds_ != a.seen_round) {
    a.seen_round = rounds_;
    const StragglerState* now = nullptr;
    for (const auto& [process, st] : det_.states()) {
      if (process != a.process && st.rank == a.rank && (!now || st.rounds > now->rounds)) now = &st;
    }
    if (now) a.after_score = now->score;
    a.rank_back_rounds = now && !now->flagged && now->score <= opt_.detector.threshold ? a.rank_back_rounds + 1 : 0;
  }
  if (rounds_ < a.verify_from_round + need) return;
  std::vector<double> after;  // the job's step time in the latest rounds after the switch
  for (size_t i = history_.size() - std::min<size_t>(need, history_.size()); i < history_.size(); ++i) {
    after.push_back(history_[i]);
  }
  a.after_step_ms = Median(after) / 1e6;
  const double ref = a.baseline_step_ms > 0 ? a.baseline_step_ms : a.slow_step_ms;
  const bool step_back = a.baseline_step_ms > 0 ? a.after_step_ms <= ref * (1 + opt_.detector.threshold)
                                                : a.after_step_ms * (1 + opt_.detector.threshold / 2) < ref;
  const bool back = step_back || a.rank_back_rounds >= static_cast<int>(need);
  if (!back && rounds_ < a.verify_from_round + need * kVerifySpans) return;
  a.state = "done";
  a.outcome = back ? "recovered" : "not recovered";
  a.ended_ns = now_real_ns;
  TM_WARN(kLogControl,
          "straggler: rank %d after migration %" PRIu64 ": job step %.3f ms (before the straggler %.3f ms, with it "
          "%.3f ms), the rank's compute %+.0f%% against its peers' median: %s",
          a.rank, a.migration, a.after_step_ms, a.baseline_step_ms, a.slow_step_ms, a.after_score * 100,
          a.outcome.c_str());
}

std::string StragglerMonitor::ProcessJson(uint64_t process) const {
  auto it = det_.states().find(process);
  if (it == det_.states().end()) {
    return ",\"straggler\":false,\"straggler_score\":null,\"straggler_since_ms\":null,\"compute_ms\":null,"
           "\"wait_ms\":null";
  }
  const StragglerState& s = it->second;
  return std::string(",\"straggler\":") + (s.flagged ? "true" : "false") +
         ",\"straggler_score\":" + JsonNumber(s.score, 4) +
         ",\"straggler_since_ms\":" + (s.since_ns ? std::to_string(s.since_ns / 1000000) : "null") +
         ",\"compute_ms\":" + JsonNumber(s.compute_ms, 4) + ",\"wait_ms\":" + JsonNumber(s.wait_ms, 4);
}

std::string StragglerMonitor::Json() const {
  const StragglerParams& p = opt_.detector;
  std::string o = "{\"policy\":" + JsonQuote(PolicyName(opt_.policy)) + ",\"threshold\":" + JsonNumber(p.threshold, 4) +
                  ",\"clear\":" + JsonNumber(p.clear, 4) + ",\"windows\":" + std::to_string(p.flag_windows) +
                  ",\"clear_windows\":" + std::to_string(p.clear_windows) +
                  ",\"cooldown_s\":" + std::to_string(opt_.cooldown_ms / 1000) + ",\"spare_hosts\":[";
  for (size_t i = 0; i < opt_.spare_hosts.size(); ++i) o += (i ? "," : "") + JsonQuote(opt_.spare_hosts[i]);
  o += "],\"rounds\":" + std::to_string(rounds_) + ",\"job_step_ms\":" + JsonNumber(det_.job_step_ns() / 1e6, 4) +
       ",\"actions\":[";
  for (size_t i = 0; i < actions_.size(); ++i) {
    const StragglerAction& a = actions_[i];
    o += std::string(i ? "," : "") + "{\"rank\":" + std::to_string(a.rank) + ",\"process\":" +
         std::to_string(a.process) + ",\"migration\":" + std::to_string(a.migration) + ",\"host\":" + JsonQuote(a.host) +
         ",\"score\":" + JsonNumber(a.score, 4) + ",\"state\":" + JsonQuote(a.state) +
         ",\"outcome\":" + JsonQuote(a.outcome) + ",\"baseline_step_ms\":" + JsonNumber(a.baseline_step_ms, 4) +
         ",\"slow_step_ms\":" + JsonNumber(a.slow_step_ms, 4) + ",\"after_step_ms\":" + JsonNumber(a.after_step_ms, 4) +
         ",\"after_score\":" + JsonNumber(a.after_score, 4) +
         ",\"started_ms\":" + std::to_string(a.started_ns / 1000000) +
         ",\"ended_ms\":" + (a.ended_ns ? std::to_string(a.ended_ns / 1000000) : "null") + "}";
  }
  return o + "]}";
}

std::string StragglerMonitor::MetricsText(const std::map<uint64_t, ProcessRec>& procs) const {
  std::string flag, score, compute, wait;
  for (const auto& [id, pr] : procs) {
    if (pr.state != ProcState::kAlive || pr.info.role != "worker" || pr.info.rank < 0) continue;
    auto it = det_.states().find(id);
    const std::string l = "{rank=\"" + std::to_string(pr.info.rank) + "\"} ";
    flag += "trainmover_straggler" + l + (it != det_.states().end() && it->second.flagged ? "1" : "0") + "\n";
    if (it == det_.states().end()) continue;
    score += "trainmover_straggler_score" + l + JsonNumber(it->second.score, 6) + "\n";
    compute += "trainmover_step_compute_seconds" + l + JsonNumber(it->second.compute_ms / 1e3, 9) + "\n";
    wait += "trainmover_step_wait_seconds" + l + JsonNumber(it->second.wait_ms / 1e3, 9) + "\n";
  }
  std::string o;
  o += "# HELP trainmover_straggler 1 while the rank is flagged as a straggler, else 0.\n";
  o += "# TYPE trainmover_straggler gauge\n" + flag;
  o += "# HELP trainmover_straggler_score Compute per step over the peers' median, minus 1 (latest window).\n";
  o += "# TYPE trainmover_straggler_score gauge\n" + score;
  o += "# HELP trainmover_step_compute_seconds Time per step outside NCCL (latest window).\n";
  o += "# TYPE trainmover_step_compute_seconds gauge\n" + compute;
  o += "# HELP trainmover_step_wait_seconds Time per step inside blocking NCCL calls (latest window).\n";
  o += "# TYPE trainmover_step_wait_seconds gauge\n" + wait;
  o += "# HELP trainmover_straggler_actions_total Migrations the straggler policy started, by outcome.\n";
  o += "# TYPE trainmover_straggler_actions_total counter\n";
  std::map<std::string, int> by{{"recovered", 0}, {"not recovered", 0}, {"failed", 0}, {"refused", 0}};
  for (const StragglerAction& a : actions_) {
    if (a.state != "done") continue;
    const std::string k = a.outcome.rfind("migration", 0) == 0 ? "failed" : a.outcome.substr(0, a.outcome.find(':'));
    ++by[k];
  }
  for (const auto& [k, v] : by) {
    o += "trainmover_straggler_actions_total{outcome=\"" + k + "\"} " + std::to_string(v) + "\n";
  }
  return o;
}

}  // namespace trainmover::control
