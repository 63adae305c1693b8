// SPDX-License-Identifier: Apache-2.0
// snapshot_interval.h: the adaptive snapshot interval (TRAINMOVER_SNAPSHOT_EVERY=auto; docs/recovery.md, "Adaptive
// interval"). Each rank measures what a snapshot costs its safe points and how long its steps take, and asks for the
// interval this rule gives; the coordinator uses the largest any rank asks for and sends it to every rank with
// SNAP_SHIPPED. Intervals are powers of two and snapshots are taken at their multiples, so two ranks that briefly use
// different intervals (one has heard of a change, the other not yet) still snapshot every multiple of the larger one:
// the steps a rollback needs are held by every rank throughout.
#ifndef TRAINMOVER_LIB_MIGRATION_SNAPSHOT_INTERVAL_H_
#define TRAINMOVER_LIB_MIGRATION_SNAPSHOT_INTERVAL_H_

#include <cstdint>

namespace trainmover::migration {

// The largest interval auto picks: it bounds the steps a recovery trains again when snapshots are very expensive
// (their cost then exceeds the budget, and the rank says so once).
inline constexpr int64_t kMaxSnapshotInterval = 1024;

// The smallest power of two N in [1, kMaxSnapshotInterval] with cost_ns <= budget * N * step_ns: one snapshot's cost
// (its copy plus the safe point's wait for the buddy's pull) spread over the N steps it covers stays within `budget`
// of the step time (kMaxSnapshotInterval when none fits). Pure; any thread.
inline int64_t FittingInterval(double cost_ns, double step_ns, double budget) {
  int64_t n = 1;
  while (n < kMaxSnapshotInterval && cost_ns > budget * static_cast<double>(n) * step_ns) n *= 2;
  return n;
}

// The interval a rank asks for, given the one in effect (`current`): larger at once when the snapshots cost more
// than `budget`; smaller only when the smaller one fits under half the budget, so that measurements near a boundary
// do not move the interval back and forth (each change costs a step or two of disagreement between the ranks).
inline int64_t SnapshotInterval(double cost_ns, double step_ns, double budget, int64_t current) {
  const int64_t fit = FittingInterval(cost_ns, step_ns, budget);
  if (fit >= current) return fit;
  const int64_t comfortable = FittingInterval(cost_ns, step_ns, budget / 2);
  return comfortable < current ? comfortable : current;
}

}  // namespace trainmover::migration

#endif  // TRAINMOVER_LIB_MIGRATION_SNAPSHOT_INTERVAL_H_
