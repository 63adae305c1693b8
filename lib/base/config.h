// SPDX-License-Identifier: Apache-2.0
// The one typed registry of TRAINMOVER_* environment variables.
//
// Every parameter has a name, a type, a default and a description (kParams). They are read once, on the
// first NCCL call (ConfigGet), and validated: a present but invalid value makes that and every later NCCL
// call fail with ncclInvalidArgument, and the message names the variable and the accepted values. An
// empty value counts as unset. `trainmover-info` prints the same table (ConfigDescribe).
//
// Adding a parameter: one row in kParams (config.cc) and one field in Config.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "log.h"

namespace trainmover::shim {

enum class Role { kWorker, kJoiner, kStandby };
const char* RoleName(Role r);

struct Config {
  std::string nccl_library;      // TRAINMOVER_NCCL_LIBRARY ("" = search)
  std::string coordinator;       // TRAINMOVER_COORDINATOR as given ("" = plain pass-through)
  std::string coordinator_host;  // parsed host
  int coordinator_port = 0;      // parsed port
  std::string token;             // TRAINMOVER_TOKEN
  Role role = Role::kWorker;     // TRAINMOVER_ROLE
  int64_t replace = -1;          // TRAINMOVER_REPLACE (-1 = none)
  LogLevel debug = LogLevel::kWarn;
  std::string debug_file;  // TRAINMOVER_DEBUG_FILE (pattern, %h %p)
  uint32_t debug_subsys = kLogAll & ~kLogColl;
  int64_t shadow_iters = 1;     // TRAINMOVER_SHADOW_ITERS >= 1
  int64_t heartbeat_ms = 1000;  // TRAINMOVER_HEARTBEAT_MS >= 1
  int64_t tape_max_bytes = int64_t{64} << 20;  // TRAINMOVER_TAPE_MAX_BYTES >= 0
  std::string seal_overlap = "auto";  // TRAINMOVER_SEAL_OVERLAP: auto|on|off
  std::string fault;            // TRAINMOVER_FAULT (test knob: corrupt-transfer|pass-first-proposal; "" = none)
};

enum class ParamType { kString, kPath, kInt, kEnum, kHostPort, kList };

struct ParamSpec {
  const char* name;
  ParamType type;
  const char* default_value;  // as text; "" = unset
  const char* accepted;       // human text of accepted values (e.g. "worker|joiner|standby", "integer >= 1")
  const char* doc;
};

// All parameters, in display order.
const std::vector<ParamSpec>& ConfigParams();

// Parses the environment through `getenv_fn` (defaults to ::getenv). Returns true and fills *out, or
// false with *error = "TRAINMOVER_X='v' is invalid: accepted values are ..." for the first bad value.
using EnvFn = std::function<const char*(const char*)>;
bool ConfigParse(const EnvFn& getenv_fn, Config* out, std::string* error);

// The process configuration, parsed once on first use (thread-safe). `error` is non-empty when invalid.
struct ConfigResult {
  Config config;
  std::string error;
};
const ConfigResult& ConfigGet();

}  // namespace trainmover::shim
