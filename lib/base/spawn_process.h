// SPDX-License-Identifier: Apache-2.0
// spawn_process.h: starting a process whose output goes to a file (a joiner started by the coordinator or by a node
// agent). posix_spawn, so it is safe from a multi-threaded process.
#ifndef TRAINMOVER_LIB_BASE_SPAWN_PROCESS_H_
#define TRAINMOVER_LIB_BASE_SPAWN_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "status.h"

namespace trainmover::base {

struct SpawnSpec {
  std::vector<std::string> argv;  // argv[0] is looked up in PATH
  std::vector<std::string> env;   // NAME=value: the whole environment
  std::string dir;                // working directory ("" = the caller's)
  std::string log;                // stdout and stderr go there; stdin is /dev/null
  bool append = false;            // append to the log (else truncate it)
  bool new_session = false;       // setsid: the child outlives its starter's session and signals
};

// Starts the process; *pid is its pid. An error names the program and why.
Status SpawnProcess(const SpawnSpec& s, pid_t* pid);

}  // namespace trainmover::base

#endif  // TRAINMOVER_LIB_BASE_SPAWN_PROCESS_H_
