// SPDX-License-Identifier: Apache-2.0
// straggler.h: finding the slow rank from the step windows the agents send with their heartbeats
// (docs/stragglers.md). Pure logic: no clock, no I/O, no coordinator; the coordinator's monitor
// (straggler_monitor.h) feeds it rounds and acts on what it says. Not thread-safe (one owner).
//
// A round holds, for each rank that reported since the previous round, the lower quartile of its steps' compute
// times over its latest window (time outside NCCL; messages.h StepWindow). Not the mean, nor even the median: the
// noise of a shared machine only ever adds time (a preemption, a late wake-up, a page-cache stall), and it adds
// it to some steps, so the faster quarter of a rank's steps is what it computes when nothing gets in its way,
// while a straggler (slower on at least three steps in four: a slow device, a throttled CPU, the test's
// slowdown) moves it fully. A rank's score is how far that is above the median of the *other*
// ranks' figures in the same round (score 0.3 = 30% above). Comparing with the peers
// of the same moment is what makes the job slowing down as a whole (a slower phase of the model, a shared
// file system, a paused coordinator) never flag anyone: the median moves with it.
//
// Warm-up: a process's first `warmup_windows` rounds are scored but never count towards a flag.
// Hysteresis: a rank is flagged after `flag_windows` consecutive rounds with score > threshold, and
// recovers after `clear_windows` consecutive rounds with score <= clear (clear < threshold). One slow step,
// or a pause shorter than a window, moves one window and never reaches flag_windows > 1 rounds.
#ifndef TRAINMOVER_LIB_CONTROL_STRAGGLER_H_
#define TRAINMOVER_LIB_CONTROL_STRAGGLER_H_

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "messages.h"

namespace trainmover::control {

struct StragglerParams {
  double threshold = 0.10;  // flag above the peers' median compute by more than this fraction
  double clear = 0.05;      // recover at or below the median plus this fraction (<= threshold)
  int flag_windows = 3;     // consecutive rounds above threshold to flag (>= 1)
  int clear_windows = 3;    // consecutive rounds at or below clear to recover (>= 1)
  int warmup_windows = 2;   // a process's first rounds only count towards its peers' medians (start-up, a
                            // replacement's cold caches and first operations on new communicators)
  // Empty when usable, else what is wrong, naming the field.
  std::string Check() const;
};

// One rank's latest window in a round.
struct RankSample {
  uint64_t process = 0;  // the coordinator's process id (a rank's replacement is another process)
  int32_t rank = -1;
  StepWindow window;
};

// What the detector knows of one process.
struct StragglerState {
  int32_t rank = -1;
  bool flagged = false;
  double score = 0;       // latest round: compute per step over the peers' median, minus 1
  double compute_ms = 0;  // latest window: the lower quartile of its steps' compute times
  double wait_ms = 0;     // latest window: mean wait per step
  int above = 0;          // consecutive rounds above threshold (while not flagged)
  int below = 0;          // consecutive rounds at or below clear (while flagged)
  uint64_t since_ns = 0;  // when it was last flagged or recovered (the caller's clock), 0: never
  uint64_t rounds = 0;    // rounds it took part in
};

struct StragglerChange {
  uint64_t process = 0;
  int32_t rank = -1;
  bool flagged = false;  // true: flagged in this round; false: recovered in this round
  StragglerState state;  // after the round
};

class StragglerDetector {
 public:
  explicit StragglerDetector(StragglerParams p) : p_(p) {}

  // One round over the samples (one per process; at least two with steps, else nothing happens and false is
  // returned). `now_ns` is only recorded (since_ns). Appends who was flagged or recovered to *changes.
  bool Round(const std::vector<RankSample>& samples, uint64_t now_ns, std::vector<StragglerChange>* changes);
  // A process left the job (exited, lost): its state goes.
  void Forget(uint64_t process) { states_.erase(process); }

  const std::map<uint64_t, StragglerState>& states() const { return states_; }
  const StragglerParams& params() const { return p_; }
  // The latest round's job step time (median over ranks of wall time per step), in ns; 0 before any round.
  double job_step_ns() const { return job_step_ns_; }

 private:
  StragglerParams p_;
  std::map<uint64_t, StragglerState> states_;
  double job_step_ns_ = 0;
};

enum class StragglerPolicy { kReport, kMigrate };

struct StragglerOptions {
  StragglerParams detector;
  StragglerPolicy policy = StragglerPolicy::kReport;
  uint64_t cooldown_ms = 600000;  // a rank is not moved again within this (after an attempt, whatever its end)
  // migrate: the joiner goes to the first of these hosts that is not the straggler's own; none listed (or
  // only its own): it is started like `tmctl migrate --spawn` without --to (on the coordinator's host). The job's
  // one list of spare hosts: the recovery engine takes it too (MakeRecoveryEngine; docs/recovery.md).
  std::vector<std::string> spare_hosts;
};

// The straggler flags, one table for trainmoverd and tmrun's embedded coordinator (docs/stragglers.md):
//   --straggler-policy report|migrate  --straggler-threshold F  --straggler-clear F  --straggler-windows N
//   --straggler-clear-windows N  --straggler-cooldown-s S  --straggler-spare-hosts H1,H2
struct StragglerFlag {
  const char* name;     // "--straggler-policy"
  const char* metavar;  // what the value is, for the usage text
  const char* help;     // one line, with the default
};
std::span<const StragglerFlag> StragglerFlags();
// Applies one of them. Returns 0 when `flag` is not one of them, 1 when it was applied, -1 on a bad value (*err
// names the flag and the value).
int ParseStragglerFlag(const std::string& flag, const std::string& value, StragglerOptions* o, std::string* err);

// The median of `v` (sorted in place); 0 when empty.
double Median(std::vector<double>& v);
// The lower quartile of `v` as the shim computes a window's (the element at index size/4 once sorted; `v` is
// reordered); 0 when empty.
double LowerQuartile(std::vector<double>& v);

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_STRAGGLER_H_
