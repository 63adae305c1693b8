// SPDX-License-Identifier: Apache-2.0
// The typed configuration of TRAINMOVER_* environment variables, produced from the one list in params.h.
//
// The variables are read once, on the first NCCL call (ConfigGet), and validated: a present but invalid value
// makes that and every later NCCL call fail with ncclInvalidArgument, and the message names the variable
// and the accepted values. An empty value counts as unset. `trainmover-info` prints the same list.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "base/log.h"
#include "base/params.h"
#include "base/status.h"

namespace trainmover::shim {

using base::LogLevel;
using base::Status;

enum class Role { kWorker, kJoiner, kStandby };
const char* RoleName(Role r);

struct Config {
  Config();  // every field at its default (params.h)
#define TM_PARAM_FIELD(NAME, field, Type, Parse, kind, def, accepted, doc) Type field;
  TM_PARAMS(TM_PARAM_FIELD)
#undef TM_PARAM_FIELD
  // Derived from `coordinator` when it is set.
  std::string coordinator_host;
  int coordinator_port = 0;
};

struct ParamSpec {
  const char* name;           // TRAINMOVER_...
  const char* type;           // as the documentation names it: int, enum, path, ...
  const char* default_value;  // as text; "" = unset
  const char* accepted;       // human text of the accepted values
  const char* doc;
};

// All parameters, in the order of params.h.
const std::vector<ParamSpec>& ConfigParams();

// Parses the environment through `getenv_fn` (::getenv in the shim). Fills *out, or fails with
// "TRAINMOVER_X='v' is invalid: accepted values are ..." for the first bad value.
using EnvFn = std::function<const char*(const char*)>;
Status ConfigParse(const EnvFn& getenv_fn, Config* out);

// The process configuration, parsed once on first use (thread-safe). `error` is non-empty when invalid.
struct ConfigResult {
  Config config;
  std::string error;
};
const ConfigResult& ConfigGet();

// For programs without the shim (trainmoverd, tmctl, tmrun): configures the logger from TRAINMOVER_DEBUG,
// _SUBSYS and _FILE through the same registry; `level_when_unset` applies when TRAINMOVER_DEBUG is unset.
// An invalid value is reported by the returned Status and leaves the logger at its defaults.
Status LogConfigureFromEnv(LogLevel level_when_unset);

// The parameter table of docs/configuration.md (between its TM_PARAMS markers), one row per parameter.
std::string ConfigMarkdownTable();

}  // namespace trainmover::shim
