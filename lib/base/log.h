// SPDX-License-Identifier: Apache-2.0
// The one logger of libtrainmover, trainmoverd, tmctl and tmrun, in NCCL's line format so both can be
// grepped together:
//   host:pid:tid [rank] TRAINMOVER LEVEL message
// The level and the subsystem mask are checked before any formatting; the macros are printf-checked.
// Thread-safe: one write(2) per line.
//
// Who configures it: the shim from its typed configuration (TRAINMOVER_DEBUG, _SUBSYS, _FILE, parsed once
// by lib/base/config.cc); programs without the shim (trainmoverd, tmctl, tmrun) call LogConfigureFromEnv
// (config.h) or LogSetLevel themselves. Until then the level is WARN and lines go to stderr.
#pragma once

#include <cstdint>

namespace trainmover::base {

enum class LogLevel : int { kWarn = 0, kInfo = 1, kTrace = 2 };

// Subsystems, a bit mask (TRAINMOVER_DEBUG_SUBSYS names them).
enum LogSubsys : uint32_t {
  kLogInit = 1u << 0,       // configuration, start-up
  kLogBind = 1u << 1,       // finding and binding the real NCCL
  kLogComm = 1u << 2,       // virtual communicators, handles
  kLogColl = 1u << 3,       // per-operation tracing (TRACE only; never on by default)
  kLogState = 1u << 4,      // safe points, registered regions
  kLogSandbox = 1u << 5,    // joiner sandbox emulation
  kLogControl = 1u << 6,    // the control plane: agent, coordinator, connections
  kLogMigration = 1u << 7,  // live migration (process side and engine)
  kLogTransfer = 1u << 8,   // the state hand-off
  kLogAll = 0xffffffffu,
};

extern int g_log_level;        // LogLevel as int; read racily on purpose (set at start-up)
extern uint32_t g_log_subsys;  // mask

inline bool LogEnabled(LogLevel level, uint32_t subsys) {
  return static_cast<int>(level) <= g_log_level && (subsys & g_log_subsys) != 0;
}

// Level, subsystem mask and file pattern (%h host, %p pid; null or "" = stderr) at once.
void LogConfigure(LogLevel level, uint32_t subsys, const char* file_pattern);
void LogSetLevel(LogLevel level);
// The rank printed in brackets: the logical rank of the first communicator the process made (-1 before;
// only the first call takes effect).
void LogSetRank(int rank);

// A sink receives every enabled line instead of the log file: `line` is the whole line without its newline,
// `message` the part after the prefix. nullptr restores the file. Meant for start-up (tests capture lines
// with it, a program may route them elsewhere).
struct LogRecord {
  LogLevel level;
  uint32_t subsys;
  const char* line;
  const char* message;
};
using LogSink = void (*)(const LogRecord& record);
void LogSetSink(LogSink sink);

void LogPrint(LogLevel level, uint32_t subsys, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 5, 6)));

}  // namespace trainmover::base

// The using-directive lets callers in any namespace name subsystems unqualified: TM_INFO(kLogState, ...).
#define TM_LOG(level, subsys, ...)                                                  \
  do {                                                                              \
    using namespace ::trainmover::base;                                             \
    if (::trainmover::base::LogEnabled(level, subsys))                              \
      ::trainmover::base::LogPrint(level, subsys, __FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
#define TM_WARN(subsys, ...) TM_LOG(::trainmover::base::LogLevel::kWarn, subsys, __VA_ARGS__)
#define TM_INFO(subsys, ...) TM_LOG(::trainmover::base::LogLevel::kInfo, subsys, __VA_ARGS__)
#define TM_TRACE(subsys, ...) TM_LOG(::trainmover::base::LogLevel::kTrace, subsys, __VA_ARGS__)
