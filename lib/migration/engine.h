// SPDX-License-Identifier: Apache-2.0
// engine.h: the coordinator's side of a live migration (docs/migration.md). The program that owns a
// Coordinator installs one (trainmoverd, tmrun's embedded coordinator); it drives each migration's state
// machine from the events the agents send (lib/migration/msgs.h) and keeps its timeline. Coordinator
// thread only.
//
// --spawn starts the joiner with posix_spawn from the coordinator's process, with the leaver's command
// line, working directory and environment plus TRAINMOVER_ROLE=joiner and TRAINMOVER_REPLACE=R; its
// stdout and stderr go to <leaver cwd>/joiner-<R>.log (joiner-<R>-m<id>.log when that exists), which the
// MIGRATE reply names. The child is reaped by the coordinator's process (tmrun reaps every child).
#ifndef TRAINMOVER_LIB_MIGRATION_ENGINE_H_
#define TRAINMOVER_LIB_MIGRATION_ENGINE_H_

#include <memory>

#include "control/coordinator.h"

namespace trainmover::control {

// The planned-migration engine, to hand to Coordinator::SetEngine before Run().
std::unique_ptr<MigrationEngine> MakeMigrationEngine();

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_MIGRATION_ENGINE_H_
