// SPDX-License-Identifier: Apache-2.0
// spawn_process.h: starting a process whose output goes to a file (a joiner started by the coordinator or by a node
// agent). posix_spawn, so it is safe from a multi-threaded process.
#ifndef TRAINMOVER_LIB_BASE_SPAWN_PROCESS_H_
#define TRAINMOVER_LIB_BASE_SPAWN_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <string_view>
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

// Starts the process; *pid is its pid. An error names the program and why. Secrets never travel in a spec
// (docs/reliability.md, "Secrets"): every variable of the caller's own environment whose name is a secret's
// (IsSecretEnvName) and that the spec does not set is added, so the child gets the job's token from whoever
// starts it.
Status SpawnProcess(const SpawnSpec& s, pid_t* pid);

// Whether the variable `name_or_kv` ("NAME" or "NAME=value") holds a secret: TRAINMOVER_TOKEN, or a name that
// contains TOKEN, SECRET, PASSWORD, PASSWD, CREDENTIAL, PRIVATE_KEY, API_KEY, APIKEY or ACCESS_KEY (any case).
// Such variables are never sent over the network (REGISTER, a node agent's SPAWN).
bool IsSecretEnvName(std::string_view name_or_kv);

}  // namespace trainmover::base

#endif  // TRAINMOVER_LIB_BASE_SPAWN_PROCESS_H_
