// SPDX-License-Identifier: Apache-2.0
// straggler_monitor.h: the coordinator's straggler handling (docs/stragglers.md). It collects the step
// windows the agents send with their heartbeats into rounds, runs the detector (straggler.h), logs one line
// when a rank is flagged and one when it recovers, serves the figures to `tmctl status` / `tmctl stragglers`
// (status JSON) and to Prometheus, and, with the migrate policy, moves a flagged rank away with a planned
// live migration (a MIGRATE request with --spawn, like the operator's), then checks that the job's step time
// came back and reports the outcome either way.
//
// Rounds: a round is run when every alive worker has sent a window since the previous round, or, when some
// stay silent (a process that stopped stepping sends no window), `round_timeout` after the first fresh one,
// over whoever reported. Windows that arrive twice before a round are summed.
//
// Coordinator thread only, like the rest of the coordinator.
#ifndef TRAINMOVER_LIB_CONTROL_STRAGGLER_MONITOR_H_
#define TRAINMOVER_LIB_CONTROL_STRAGGLER_MONITOR_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "coordinator.h"
#include "straggler.h"

namespace trainmover::control {

// One migration the policy started, and what came of it.
struct StragglerAction {
  uint64_t migration = 0;  // 0 when the request was refused before being recorded
  int32_t rank = -1;
  uint64_t process = 0;  // the straggler (the leaver)
  std::string host;      // target host ("" = the coordinator's)
  double score = 0;      // the straggler's score when the action started
  std::string state;     // migrating, verifying, done
  std::string outcome;   // recovered | not recovered | migration failed: ... | refused: ...
  double baseline_step_ms = 0;  // the job's step time before the straggler (0: unknown)
  double slow_step_ms = 0;      // when the action started
  double after_step_ms = 0;     // after the migration (verifying rounds)
  double after_score = 0;       // the rank's new process's latest score (compute over its peers' median, minus 1)
  int rank_back_rounds = 0;     // consecutive verifying rounds with that score within the threshold
  uint64_t seen_round = 0;
  uint64_t started_ns = 0, ended_ns = 0;  // realtime
  uint64_t verify_from_round = 0;
};

class StragglerMonitor {
 public:
  using Migrate = std::function<MigrateReply(const MigrateReq&)>;
  // round_timeout_ms: how long a round waits for silent workers (the coordinator gives 3 heartbeat intervals).
  StragglerMonitor(StragglerOptions o, uint64_t round_timeout_ms, Migrate migrate);

  // A heartbeat of `process` carried a window.
  void OnWindow(uint64_t process, const StepWindow& w, uint64_t now_mono_ns);
  // About every 100 ms: rounds, log lines, the policy.
  void OnTick(EngineHost& h, uint64_t now_mono_ns, uint64_t now_real_ns);

  // Status JSON: the fields of one process (starting with a comma), and the "stragglers" member.
  std::string ProcessJson(uint64_t process) const;
  std::string Json() const;
  // Prometheus: per-rank gauges (the alive worker holding each rank) and the actions by outcome.
  std::string MetricsText(const std::map<uint64_t, ProcessRec>& procs) const;

  const StragglerDetector& detector() const { return det_; }
  const std::vector<StragglerAction>& actions() const { return actions_; }

 private:
  struct Pending {
    StepWindow window;
    uint64_t first_ns = 0;  // monotonic arrival of the first window summed here
  };
  void RunRound(EngineHost& h, const std::vector<uint64_t>& workers, uint64_t now_real_ns);
  void Act(EngineHost& h, uint64_t now_real_ns);
  void Follow(EngineHost& h, StragglerAction& a, uint64_t now_real_ns);
  // The median job step time of the kBaselineRounds rounds before the latest `skip` ones; 0 when none.
  double BaselineStepNs(size_t skip) const;

  StragglerOptions opt_;
  uint64_t round_timeout_ns_;
  Migrate migrate_;
  StragglerDetector det_;
  std::map<uint64_t, Pending> pending_;
  uint64_t rounds_ = 0;
  std::deque<double> history_;             // the job's step time in the latest rounds, newest last
  std::map<uint64_t, double> baseline_;    // process -> the job's step time before its flag's streak
  std::vector<StragglerAction> actions_;
  std::map<int32_t, uint64_t> last_action_ns_;  // rank -> realtime of the latest action on it
};

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_STRAGGLER_MONITOR_H_
