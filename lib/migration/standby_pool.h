// SPDX-License-Identifier: Apache-2.0
// standby_pool.h: the coordinator's general standbys (docs/recovery.md, "Standbys"). A standby is a process started
// with the job's command line and TRAINMOVER_ROLE=standby: it warms up in the sandbox as the rank its launcher gave
// it, reports STANDBY_READY (its communicators, its state table, whether the program reads its rank through tmRank)
// and waits. The failure-recovery engine owns one pool and offers it each failed rank before it spawns a replacement;
// once the job has ended the pool dismisses the standbys still waiting (they exit 0), so that no launcher waits for
// them. Coordinator thread only.
#ifndef TRAINMOVER_LIB_MIGRATION_STANDBY_POOL_H_
#define TRAINMOVER_LIB_MIGRATION_STANDBY_POOL_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "control/coordinator.h"
#include "standby_msgs.h"

namespace trainmover::control {

class StandbyPool {
 public:
  // A standby given a failed rank: the process, and the map of its comm_keys to the failed rank's (for MAP).
  struct Pick {
    uint64_t process = 0;
    std::map<uint64_t, uint64_t> j2l;
    std::string describe;  // "standby process N (pid P, warmed up as rank W)": the recovery's replacement
  };

  // A standby event (kind >= standby::kFirstStandbyKind) of a process of role standby.
  void OnEvent(EngineHost& h, ProcessRec& from, const Event& e);
  // A process lost or gone: if it was a standby, it is no longer offered.
  void OnProcessLost(uint64_t process);
  // Once the job has ended (workers were seen, none is alive, no migration or recovery runs), DISMISS to every
  // standby still waiting.
  void OnTick(EngineHost& h);
  // The standby that takes the place of `dead`, whose communicators are `dead_comms` (its creation order); it
  // leaves the pool. First a standby warmed up as that rank that matches it exactly (any program), then one whose
  // program reads its rank through tmRank, matched by position (CompareLineages' any_rank). None: nullopt and *why
  // (no standby waits, or the first reason each one did not fit).
  std::optional<Pick> Take(EngineHost& h, const ProcessRec& dead, const std::vector<const CommCreated*>& dead_comms,
                           std::string* why);

 private:
  std::map<uint64_t, standby::Ready> ready_;  // process id -> its STANDBY_READY, while it waits
  std::set<uint64_t> dismissed_;
  bool workers_seen_ = false;
};

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_MIGRATION_STANDBY_POOL_H_
