// SPDX-License-Identifier: Apache-2.0
// Logging for libtrainmover, in NCCL's line format so both can be grepped together:
//   host:pid:tid [rank] TRAINMOVER INFO message
// The level (TRAINMOVER_DEBUG) and subsystem mask (TRAINMOVER_DEBUG_SUBSYS) are checked before any
// formatting; TM_LOG is printf-format-checked. Thread-safe: one write(2) per line.
#pragma once

#include <cstdint>

namespace trainmover::shim {

enum class LogLevel : int { kWarn = 0, kInfo = 1, kTrace = 2 };

// Subsystems, a bit mask.
enum LogSubsys : uint32_t {
  kLogInit = 1u << 0,     // configuration, start-up
  kLogBind = 1u << 1,     // finding and binding the real NCCL
  kLogComm = 1u << 2,     // virtual communicators, handles
  kLogColl = 1u << 3,     // per-operation tracing (TRACE only; never on by default)
  kLogState = 1u << 4,    // safe points, registered regions
  kLogSandbox = 1u << 5,  // joiner sandbox emulation
  kLogAgent = 1u << 6,    // agent / migration (used by lib/control users)
  kLogAll = 0xffffffffu,
};

extern int g_log_level;        // LogLevel as int; read racily on purpose (set once at init)
extern uint32_t g_log_subsys;  // mask

inline bool LogEnabled(LogLevel level, uint32_t subsys) {
  return static_cast<int>(level) <= g_log_level && (subsys & g_log_subsys) != 0;
}

// Applies TRAINMOVER_DEBUG / _SUBSYS / _FILE from the parsed configuration (see config.h). Called once.
void LogConfigure(LogLevel level, uint32_t subsys, const char* file_pattern);
// The rank printed in brackets (the logical rank of the first communicator made in the process).
void LogSetRank(int rank);

void LogPrint(LogLevel level, uint32_t subsys, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 5, 6)));

}  // namespace trainmover::shim

#define TM_LOG(level, subsys, ...)                                                  \
  do {                                                                              \
    if (::trainmover::shim::LogEnabled(level, subsys))                              \
      ::trainmover::shim::LogPrint(level, subsys, __FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
#define TM_WARN(subsys, ...) TM_LOG(::trainmover::shim::LogLevel::kWarn, subsys, __VA_ARGS__)
#define TM_INFO(subsys, ...) TM_LOG(::trainmover::shim::LogLevel::kInfo, subsys, __VA_ARGS__)
#define TM_TRACE(subsys, ...) TM_LOG(::trainmover::shim::LogLevel::kTrace, subsys, __VA_ARGS__)
