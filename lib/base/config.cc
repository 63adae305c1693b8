// SPDX-License-Identifier: Apache-2.0
#include "base/config.h"

#include <strings.h>

#include <cctype>
#include <cerrno>
#include <climits>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "base/crypto.h"
#include "base/hostport.h"
#include "base/spawn_process.h"

namespace trainmover::shim {

using base::kLogAll;
using base::kLogColl;

const char* RoleName(Role r) {
  switch (r) {
    case Role::kWorker:
      return "worker";
    case Role::kJoiner:
      return "joiner";
    case Role::kStandby:
      return "standby";
  }
  return "?";
}

namespace {

// The parsers the rows of params.h name. Each returns false when the value is not accepted.

bool ParseText(const char* v, const char*, std::string* out) {
  *out = v;
  return true;
}

// TRAINMOVER_TOKEN: a shared secret long enough not to be guessed from a recorded handshake.
bool ParseSecret(const char* v, const char*, std::string* out) {
  if (strlen(v) < base::crypto::kMinSecretBytes) return false;
  *out = v;
  return true;
}

// TRAINMOVER_HOST: a printable name without blanks, read by base::HostName() (host.h), which the tools share.
bool ParseHostName(const char* v, const char*, std::string* out) {
  const size_t n = strlen(v);
  if (n == 0 || n > 255) return false;
  for (size_t i = 0; i < n; ++i) {
    if (!isgraph(static_cast<unsigned char>(v[i]))) return false;
  }
  *out = v;
  return true;
}

// The lower bound comes from the accepted text, "integer >= N", so the documentation and the check agree.
bool ParseInt(const char* v, const char* accepted, int64_t* out) {
  long long min = 0, max = LLONG_MAX;
  if (sscanf(accepted, "integer >= %lld and <= %lld", &min, &max) < 1) return false;
  errno = 0;
  char* end = nullptr;
  long long x = strtoll(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || x < min || x > max) return false;
  *out = x;
  return true;
}

// TRAINMOVER_SNAPSHOT_EVERY: an interval >= 1, or "auto" (any case), kept as 0.
bool ParseEvery(const char* v, const char*, int64_t* out) {
  if (strcasecmp(v, "auto") == 0) {
    *out = 0;
    return true;
  }
  return ParseInt(v, "integer >= 1", out);
}

// A share: a decimal number in (0, 1].
bool ParseFraction(const char* v, const char*, double* out) {
  errno = 0;
  char* end = nullptr;
  const double x = strtod(v, &end);
  if (errno != 0 || end == v || *end != '\0' || !(x > 0.0 && x <= 1.0)) return false;
  *out = x;
  return true;
}

// One of the '|'-separated choices of the accepted text, exactly.
bool ParseOneOf(const char* v, const char* accepted, std::string* out) {
  const size_t n = strlen(v);
  for (const char* p = accepted; *p;) {
    const char* bar = strchr(p, '|');
    const size_t len = bar ? static_cast<size_t>(bar - p) : strlen(p);
    if (len == n && strncmp(p, v, n) == 0) {
      *out = v;
      return true;
    }
    p += len + (bar ? 1 : 0);
  }
  return false;
}

bool ParseCoordinator(const char* v, const char*, std::string* out) {
  std::string host;
  uint16_t port = 0;
  if (!base::ParseHostPort(v, &host, &port).ok() || port == 0) return false;
  *out = v;
  return true;
}

bool ParseRole(const char* v, const char*, Role* out) {
  for (Role r : {Role::kWorker, Role::kJoiner, Role::kStandby}) {
    if (strcasecmp(v, RoleName(r)) == 0) {
      *out = r;
      return true;
    }
  }
  return false;
}

bool ParseLevel(const char* v, const char*, LogLevel* out) {
  static const struct {
    const char* name;
    LogLevel level;
  } kLevels[] = {{"WARN", LogLevel::kWarn}, {"INFO", LogLevel::kInfo}, {"TRACE", LogLevel::kTrace}};
  for (const auto& l : kLevels) {
    if (strcasecmp(v, l.name) == 0) {
      *out = l.level;
      return true;
    }
  }
  return false;
}

bool ParseSubsys(const char* v, const char*, uint32_t* out) {
  using namespace base;
  static const struct {
    const char* name;
    uint32_t bits;
  } kNames[] = {{"INIT", kLogInit},
                {"BIND", kLogBind},
                {"COMM", kLogComm},
                {"COLL", kLogColl},
                {"STATE", kLogState},
                {"SANDBOX", kLogSandbox},
                {"CONTROL", kLogControl},
                {"MIGRATION", kLogMigration},
                {"TRANSFER", kLogTransfer},
                {"AGENT", kLogControl | kLogMigration},  // the name before control and migration had their own
                {"ALL", kLogAll & ~kLogColl}};
  uint32_t mask = 0;
  std::string s(v);
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    bool found = false;
    for (const auto& n : kNames) {
      if (strcasecmp(item.c_str(), n.name) == 0) {
        mask |= n.bits;
        found = true;
      }
    }
    if (!found) return false;
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  *out = mask;
  return true;
}

// The value of a parameter without a default.
template <typename T>
T Unset() {
  return T{};
}
template <>
int64_t Unset<int64_t>() {
  return -1;
}

// A constant-initialised table: nothing runs at load time.
constexpr ParamSpec kParams[] = {
#define TM_PARAM_SPEC(NAME, field, Type, Parse, kind, def, accepted, doc) \
  {"TRAINMOVER_" #NAME, kind, def, accepted, doc},
    TM_PARAMS(TM_PARAM_SPEC)
#undef TM_PARAM_SPEC
};

}  // namespace

Config::Config() {
#define TM_PARAM_DEFAULT(NAME, field, Type, Parse, kind, def, accepted, doc) \
  field = Unset<Type>();                                                     \
  if (def[0] != '\0' && !Parse(def, accepted, &field)) abort(); /* a row whose default it rejects */
  TM_PARAMS(TM_PARAM_DEFAULT)
#undef TM_PARAM_DEFAULT
}

const std::vector<ParamSpec>& ConfigParams() {
  static const std::vector<ParamSpec> params(std::begin(kParams), std::end(kParams));
  return params;
}

Status ConfigParse(const EnvFn& getenv_fn, Config* out) {
  Config c;
  const char* v = nullptr;
  auto invalid = [&v](const char* name, const char* accepted) {
    // A secret's value is never repeated, not even a wrong one (it may be the right token with a typo).
    const std::string shown = base::IsSecretEnvName(name)
                                  ? "(hidden, " + std::to_string(strlen(v)) + " characters)"
                                  : "'" + std::string(v) + "'";
    return Status::Error(std::string(name) + "=" + shown + " is invalid: accepted values are " + accepted);
  };
#define TM_PARAM_PARSE(NAME, field, Type, Parse, kind, def, accepted, doc) \
  v = getenv_fn("TRAINMOVER_" #NAME);                                      \
  if (v != nullptr && *v != '\0' && !Parse(v, accepted, &c.field)) return invalid("TRAINMOVER_" #NAME, accepted);
  TM_PARAMS(TM_PARAM_PARSE)
#undef TM_PARAM_PARSE
  if (!c.coordinator.empty()) {
    uint16_t port = 0;
    TM_CHECK(base::ParseHostPort(c.coordinator, &c.coordinator_host, &port));
    c.coordinator_port = port;
  }
  *out = c;
  return Status::Ok();
}

const ConfigResult& ConfigGet() {
  static ConfigResult result;
  static std::once_flag once;
  std::call_once(once, [] {
    Status st = ConfigParse([](const char* n) { return static_cast<const char*>(getenv(n)); }, &result.config);
    if (!st.ok()) {
      result.error = st.message();
      result.config = Config();
    }
  });
  return result;
}

Status LogConfigureFromEnv(LogLevel level_when_unset) {
  const ConfigResult& cr = ConfigGet();
  if (!cr.error.empty()) return Status::Error(cr.error);
  const char* debug = getenv("TRAINMOVER_DEBUG");  // set or not; its value was parsed by ConfigGet
  base::LogConfigure(debug && *debug ? cr.config.debug : level_when_unset, cr.config.debug_subsys,
                     cr.config.debug_file.c_str());
  return Status::Ok();
}

std::string ConfigMarkdownTable() {
  auto code = [](const char* s) { return s[0] ? "`" + std::string(s) + "`" : std::string("(unset)"); };
  auto cell = [](const char* s) {  // a '|' would end the cell
    std::string out;
    for (; *s; ++s) out += *s == '|' ? std::string(", ") : std::string(1, *s);
    return out;
  };
  std::string t = "| variable | type | default | accepted | meaning |\n|---|---|---|---|---|\n";
  for (const ParamSpec& p : kParams) {
    t += "| `" + std::string(p.name) + "` | " + p.type + " | " + code(p.default_value) + " | " + cell(p.accepted) +
         " | " + cell(p.doc) + " |\n";
  }
  return t;
}

}  // namespace trainmover::shim
