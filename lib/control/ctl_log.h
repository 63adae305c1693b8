// SPDX-License-Identifier: Apache-2.0
// ctl_log.h: logging of the control layer. lib/control is linked into trainmoverd and tmctl as well as
// into libtrainmover, so it cannot use the shim's logger directly: it writes NCCL-style lines
//   host:pid:tid [rank] TRAINMOVER CONTROL LEVEL message
// to stderr, and the shim may install a sink that routes lines into its own logger instead.
// Thread-safe: one write(2) per line; SetCtlLogSink/SetCtlLogLevel are meant for start-up.
#ifndef TRAINMOVER_LIB_CONTROL_CTL_LOG_H_
#define TRAINMOVER_LIB_CONTROL_CTL_LOG_H_

namespace trainmover::control {

enum class CtlLevel : int { kWarn = 0, kInfo = 1, kTrace = 2 };

// Lines at or below this level are written. Default: from TRAINMOVER_DEBUG (WARN, INFO, TRACE), read on
// the first log call.
void SetCtlLogLevel(CtlLevel level);
bool CtlLogEnabled(CtlLevel level);
// A sink receives a formatted message without the prefix. nullptr restores the stderr writer.
using CtlLogSink = void (*)(CtlLevel level, const char* msg);
void SetCtlLogSink(CtlLogSink sink);
// The rank shown in brackets by the stderr writer (-1: none).
void SetCtlLogRank(int rank);

void CtlLogPrint(CtlLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

}  // namespace trainmover::control

#define TM_CTL_LOG(level, ...)                                                                               \
  do {                                                                                                       \
    if (::trainmover::control::CtlLogEnabled(level)) ::trainmover::control::CtlLogPrint(level, __VA_ARGS__); \
  } while (0)
#define CTL_WARN(...) TM_CTL_LOG(::trainmover::control::CtlLevel::kWarn, __VA_ARGS__)
#define CTL_INFO(...) TM_CTL_LOG(::trainmover::control::CtlLevel::kInfo, __VA_ARGS__)
#define CTL_TRACE(...) TM_CTL_LOG(::trainmover::control::CtlLevel::kTrace, __VA_ARGS__)

#endif  // TRAINMOVER_LIB_CONTROL_CTL_LOG_H_
