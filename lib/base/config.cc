// SPDX-License-Identifier: Apache-2.0
#include "config.h"

#include <strings.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>

namespace trainmover::shim {

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

// The table. Keep in sync with Config and with Apply() below (a test checks every row parses).
// A constant-initialised array: nothing runs at load time.
constexpr ParamSpec kParams[] = {
    {"TRAINMOVER_NCCL_LIBRARY", ParamType::kPath, "", "path of an existing file",
     "The real NCCL library to forward to. Unset: the next libnccl in the process (RTLD_NEXT), else "
     "dlopen(\"libnccl.so.2\") skipping the shim itself."},
    {"TRAINMOVER_COORDINATOR", ParamType::kHostPort, "", "host:port (port 1..65535)",
     "Address of trainmoverd. Unset: plain pass-through, nothing else changes."},
    {"TRAINMOVER_TOKEN", ParamType::kString, "", "any text",
     "Shared secret that authenticates every control message (HMAC key)."},
    {"TRAINMOVER_ROLE", ParamType::kEnum, "worker", "worker|joiner|standby",
     "worker: a normal rank. joiner: replaces a rank; starts in the sandbox (no real communicators, "
     "collectives emulated locally). standby: starts in the sandbox like a joiner; nothing assigns it a rank yet "
     "(planned), so it is only listed by the coordinator."},
    {"TRAINMOVER_REPLACE", ParamType::kInt, "", "integer >= 0",
     "The rank a joiner takes over. Required for a joiner: a joiner without it is told to exit (no migration "
     "waits for it)."},
    {"TRAINMOVER_HOST", ParamType::kString, "", "a name of 1..255 characters without blanks",
     "The name this process's host is known by in the job (tmctl status, tmctl migrate --host, the choice "
     "between the same-host state path and the network). Unset: the kernel's host name. Set it where several "
     "hosts share one kernel (network namespaces, containers)."},
    {"TRAINMOVER_DEBUG", ParamType::kEnum, "WARN", "WARN|INFO|TRACE",
     "Log level (case-insensitive). Lines look like NCCL's: host:pid:tid [rank] TRAINMOVER LEVEL msg."},
    {"TRAINMOVER_DEBUG_FILE", ParamType::kString, "", "file name pattern (%h host, %p pid)",
     "Write the log to this file instead of stderr."},
    {"TRAINMOVER_DEBUG_SUBSYS", ParamType::kList, "ALL", "comma list of INIT,BIND,COMM,COLL,STATE,SANDBOX,AGENT,ALL",
     "Subsystems to log. COLL (one line per operation, TRACE) is only on when named."},
    {"TRAINMOVER_SHADOW_ITERS", ParamType::kInt, "1", "integer >= 1",
     "Safe points a joiner runs in the sandbox before it reports READY."},
    {"TRAINMOVER_HEARTBEAT_MS", ParamType::kInt, "1000", "integer >= 1",
     "Upper bound of the agent's heartbeat interval, in milliseconds: it heartbeats every min(this, the "
     "interval the coordinator gives, max(20, its heartbeat timeout / 4))."},
    {"TRAINMOVER_TAPE_MAX_BYTES", ParamType::kInt, "67108864", "integer >= 0",
     "Leaver: bytes of operation outputs its sandbox tape may hold (one iteration recorded for the joiner); "
     "operations beyond it are recorded by signature only and emulated by the joiner. 0: signatures only."},
    {"TRAINMOVER_SEAL_OVERLAP", ParamType::kEnum, "auto", "auto|on|off",
     "Leaver at the switch point: on = report AT_STEP first and checksum the state while the joiner already "
     "reads it; off = checksum first; auto = on unless the joiner is on this host and it has under 8 CPUs "
     "(both sides hashing at once then slow each other down, docs/migration.md)."},
    {"TRAINMOVER_FAULT", ParamType::kEnum, "", "corrupt-transfer|pass-first-proposal",
     "Test knob, never for production: corrupt-transfer makes a joiner's state checksums fail (the migration "
     "must abort and training continue); pass-first-proposal makes rank 0 answer its first switch proposal "
     "with PASSED (the coordinator must propose again and release the ranks held at the first one)."},
};

bool ParseInt(const char* v, int64_t min, int64_t* out) {
  errno = 0;
  char* end = nullptr;
  long long x = strtoll(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || x < min) return false;
  *out = x;
  return true;
}

bool ParseHostPort(const char* v, std::string* host, int* port) {
  std::string s(v);
  size_t colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) return false;
  int64_t p = 0;
  if (!ParseInt(s.c_str() + colon + 1, 1, &p) || p > 65535) return false;
  std::string h = s.substr(0, colon);
  if (h.size() > 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);  // [v6]:port
  *host = h;
  *port = static_cast<int>(p);
  return true;
}

bool ParseSubsys(const char* v, uint32_t* out) {
  static const struct {
    const char* name;
    uint32_t bit;
  } kNames[] = {{"INIT", kLogInit},   {"BIND", kLogBind},       {"COMM", kLogComm},   {"COLL", kLogColl},
                {"STATE", kLogState}, {"SANDBOX", kLogSandbox}, {"AGENT", kLogAgent}, {"ALL", kLogAll & ~kLogColl}};
  uint32_t mask = 0;
  std::string s(v);
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t comma = s.find(',', pos);
    std::string item = s.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    bool found = false;
    for (const auto& n : kNames) {
      if (strcasecmp(item.c_str(), n.name) == 0) {
        mask |= n.bit;
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

// Applies one present, non-empty value. Returns false when invalid.
bool Apply(const ParamSpec& p, const char* v, Config* c) {
  std::string name = p.name;
  if (name == "TRAINMOVER_NCCL_LIBRARY") {
    c->nccl_library = v;
    return true;  // existence is checked at bind time, with a precise message
  }
  if (name == "TRAINMOVER_COORDINATOR") {
    c->coordinator = v;
    return ParseHostPort(v, &c->coordinator_host, &c->coordinator_port);
  }
  if (name == "TRAINMOVER_HOST") {
    const size_t n = strlen(v);
    if (n == 0 || n > 255) return false;
    for (size_t i = 0; i < n; ++i) {
      if (isspace(static_cast<unsigned char>(v[i])) || !isprint(static_cast<unsigned char>(v[i]))) return false;
    }
    return true;  // read by base::HostName() (lib/base/host.h), which the tools share
  }
  if (name == "TRAINMOVER_TOKEN") {
    c->token = v;
    return true;
  }
  if (name == "TRAINMOVER_ROLE") {
    if (strcasecmp(v, "worker") == 0)
      c->role = Role::kWorker;
    else if (strcasecmp(v, "joiner") == 0)
      c->role = Role::kJoiner;
    else if (strcasecmp(v, "standby") == 0)
      c->role = Role::kStandby;
    else
      return false;
    return true;
  }
  if (name == "TRAINMOVER_REPLACE") return ParseInt(v, 0, &c->replace);
  if (name == "TRAINMOVER_DEBUG") {
    if (strcasecmp(v, "WARN") == 0)
      c->debug = LogLevel::kWarn;
    else if (strcasecmp(v, "INFO") == 0)
      c->debug = LogLevel::kInfo;
    else if (strcasecmp(v, "TRACE") == 0)
      c->debug = LogLevel::kTrace;
    else
      return false;
    return true;
  }
  if (name == "TRAINMOVER_DEBUG_FILE") {
    c->debug_file = v;
    return true;
  }
  if (name == "TRAINMOVER_DEBUG_SUBSYS") return ParseSubsys(v, &c->debug_subsys);
  if (name == "TRAINMOVER_SHADOW_ITERS") return ParseInt(v, 1, &c->shadow_iters);
  if (name == "TRAINMOVER_HEARTBEAT_MS") return ParseInt(v, 1, &c->heartbeat_ms);
  if (name == "TRAINMOVER_TAPE_MAX_BYTES") return ParseInt(v, 0, &c->tape_max_bytes);
  if (name == "TRAINMOVER_SEAL_OVERLAP") {
    const std::string t(v);
    if (t != "auto" && t != "on" && t != "off") return false;
    c->seal_overlap = t;
    return true;
  }
  if (name == "TRAINMOVER_FAULT") {
    if (std::string(v) != "corrupt-transfer" && std::string(v) != "pass-first-proposal") return false;
    c->fault = v;
    return true;
  }
  return false;  // a row without an Apply branch: caught by the unit test
}

}  // namespace

const std::vector<ParamSpec>& ConfigParams() {
  static const std::vector<ParamSpec> params(std::begin(kParams), std::end(kParams));
  return params;
}

bool ConfigParse(const EnvFn& getenv_fn, Config* out, std::string* error) {
  Config c;
  for (const ParamSpec& p : kParams) {
    const char* v = getenv_fn(p.name);
    if (v == nullptr || *v == '\0') continue;
    if (!Apply(p, v, &c)) {
      *error = std::string(p.name) + "='" + v + "' is invalid: accepted values are " + p.accepted;
      return false;
    }
  }
  *out = c;
  error->clear();
  return true;
}

const ConfigResult& ConfigGet() {
  static ConfigResult result;
  static std::once_flag once;
  std::call_once(once, [] {
    if (!ConfigParse([](const char* n) { return static_cast<const char*>(getenv(n)); }, &result.config,
                     &result.error)) {
      result.config = Config();
    }
  });
  return result;
}

}  // namespace trainmover::shim
