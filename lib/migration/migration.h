// SPDX-License-Identifier: Apache-2.0
// migration.h: the process side of a live migration (docs/migration.md): the joiner's sandbox exit, the
// leaver's state server and exit, every member's background build of replacement communicators, the
// switch-point agreement and the switch itself.
//
// InstallMigration is called once by the agent glue (lib/migration/shim_agent.cc) before the agent starts.
// It installs the agent's command handler and the shim's safe-point hook (which keeps reporting steps
// through ShimAgentSafePoint), both driving the process-side state machine (process.h) in the shim's world
// (shim_world.cc). Commands arrive on the agent thread and never block it for long: the communicator builds
// and the state hand-off run on background threads (tm-build, tm-fetch; tm-retire destroys the old
// communicators after a switch) that the machine owns and joins;
// everything that changes which real communicator a VComm uses runs on the application thread while it is
// held in tmSafePoint.
#ifndef TRAINMOVER_LIB_MIGRATION_MIGRATION_H_
#define TRAINMOVER_LIB_MIGRATION_MIGRATION_H_

#include "control/agent.h"

namespace trainmover::migration {

// Installs the command handler on `agent` (before agent->Start()) and the safe-point hook. Once.
void InstallMigration(control::Agent* agent);

}  // namespace trainmover::migration

#endif  // TRAINMOVER_LIB_MIGRATION_MIGRATION_H_
