// SPDX-License-Identifier: Apache-2.0
// The adaptive snapshot interval's rule (lib/migration/snapshot_interval.h; docs/recovery.md, "Adaptive interval").
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "migration/snapshot_interval.h"

using trainmover::migration::FittingInterval;
using trainmover::migration::kMaxSnapshotInterval;
using trainmover::migration::SnapshotInterval;

TEST_CASE("the smallest power of two whose steps absorb one snapshot's cost within the budget") {
  const double ms = 1e6;
  CHECK(FittingInterval(0, 10 * ms, 0.02) == 1);           // free snapshots: every step
  CHECK(FittingInterval(0.19 * ms, 10 * ms, 0.02) == 1);   // under 2% of one step
  CHECK(FittingInterval(0.21 * ms, 10 * ms, 0.02) == 2);   // just over: every other step
  CHECK(FittingInterval(5 * ms, 10 * ms, 0.02) == 32);     // 25 steps needed: the next power of two
  CHECK(FittingInterval(4 * ms, 10 * ms, 0.02) == 32);     // 20 steps
  CHECK(FittingInterval(3.1 * ms, 10 * ms, 0.02) == 16);   // 15.5 steps
  CHECK(FittingInterval(40 * ms, 2 * ms, 0.25) == 128);    // another budget: 80 steps
  CHECK(FittingInterval(1e12, 1 * ms, 0.02) == kMaxSnapshotInterval);  // never fits: capped
  CHECK(FittingInterval(1 * ms, 0, 0.02) == kMaxSnapshotInterval);     // no measurable step time
  for (int64_t n = 1; n <= kMaxSnapshotInterval; n *= 2) {  // each power of two is the answer somewhere
    CHECK(FittingInterval(static_cast<double>(n) * 0.02 * 1e6, 1e6, 0.02) == n);
  }
}

TEST_CASE("larger at once, smaller only when the smaller fits under half the budget") {
  const double ms = 1e6;
  // 7.5 steps needed at 2%: from 1 or 4, up to 8 at once.
  CHECK(SnapshotInterval(1.5 * ms, 10 * ms, 0.02, 1) == 8);
  CHECK(SnapshotInterval(1.5 * ms, 10 * ms, 0.02, 4) == 8);
  CHECK(SnapshotInterval(1.5 * ms, 10 * ms, 0.02, 8) == 8);
  // In effect 16: 8 fits the budget but not half of it (16 at 1%): stays 16, no flapping near a boundary.
  CHECK(SnapshotInterval(1.5 * ms, 10 * ms, 0.02, 16) == 16);
  // In effect 64 and the cost fell: down to what fits under half the budget (16 at 1%), not to 8.
  CHECK(SnapshotInterval(1.5 * ms, 10 * ms, 0.02, 64) == 16);
  // A cost that halved (4 would fit) keeps 8, which is what fits under half the budget; 30% more moves it up.
  CHECK(SnapshotInterval(0.75 * ms, 10 * ms, 0.02, 8) == 8);
  CHECK(SnapshotInterval(1.95 * ms, 10 * ms, 0.02, 8) == 16);
  // Snapshots became free: back to every step.
  CHECK(SnapshotInterval(0, 10 * ms, 0.02, 64) == 1);
}
