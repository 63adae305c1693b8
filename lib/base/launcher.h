// SPDX-License-Identifier: Apache-2.0
// launcher.h: what the launcher that started this process says about it.
//
// torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, ROLE_RANK, MASTER_ADDR,
// MASTER_PORT and TORCHELASTIC_* for every worker; tmrun sets the same launcher variables (and TMRUN_STORE);
// Slurm jobs that use torch.distributed's env:// initialisation set RANK and WORLD_SIZE themselves. The shim
// takes only the process's identity from them: its global rank and the job's world size, which the agent
// reports when it registers. Without them the coordinator names a process by its rank in its first
// communicator, which in a framework that creates communicators lazily (PyTorch makes a group's NCCL
// communicator at its first collective) may be a subgroup's (docs/getting-started.md, "torchrun").
// Everything else stays the launcher's business: LOCAL_RANK picks a device in the program, MASTER_ADDR/PORT
// serve the framework's own rendezvous, TORCHELASTIC_RESTART_COUNT > 0 is a new incarnation whose processes
// register afresh. These are not TRAINMOVER_* parameters: a value that is not a rank is ignored (one WARN),
// never an error, since the launcher owns it.
#ifndef TRAINMOVER_LIB_BASE_LAUNCHER_H_
#define TRAINMOVER_LIB_BASE_LAUNCHER_H_

#include <string>

namespace trainmover::base {

struct LauncherIdentity {
  int rank = -1;         // RANK, -1 when unset or invalid
  int world = -1;        // WORLD_SIZE, -1 when unset or invalid (both are, or neither)
  std::string launcher;  // "torchrun" (TORCHELASTIC_RUN_ID set), "tmrun" (TMRUN_STORE set), "env", or ""
};

// Reads the environment. No side effect but the log line about invalid values.
LauncherIdentity LauncherFromEnv();

// LOCAL_WORLD_SIZE (the job's processes on this host, set by torchrun and tmrun), or 1 when unset or not a count.
int LocalWorldFromEnv();

}  // namespace trainmover::base

#endif  // TRAINMOVER_LIB_BASE_LAUNCHER_H_
