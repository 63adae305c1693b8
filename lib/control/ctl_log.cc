// SPDX-License-Identifier: Apache-2.0
#include "ctl_log.h"

#include <strings.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>

namespace trainmover::control {

namespace {
std::atomic<int> g_level{-1};  // -1: not read yet
std::atomic<CtlLogSink> g_sink{nullptr};
std::atomic<int> g_rank{-1};

int LevelFromEnv() {
  const char* s = std::getenv("TRAINMOVER_DEBUG");
  if (!s) return 0;
  if (strcasecmp(s, "INFO") == 0) return 1;
  if (strcasecmp(s, "TRACE") == 0) return 2;
  return 0;
}
}  // namespace

void SetCtlLogLevel(CtlLevel level) { g_level.store(static_cast<int>(level)); }
void SetCtlLogSink(CtlLogSink sink) { g_sink.store(sink); }
void SetCtlLogRank(int rank) { g_rank.store(rank); }

bool CtlLogEnabled(CtlLevel level) {
  int l = g_level.load(std::memory_order_relaxed);
  if (l < 0) {
    l = LevelFromEnv();
    g_level.store(l);
  }
  return static_cast<int>(level) <= l;
}

void CtlLogPrint(CtlLevel level, const char* fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  if (CtlLogSink sink = g_sink.load()) {
    sink(level, msg);
    return;
  }
  static const char* kNames[] = {"WARN", "INFO", "TRACE"};
  char host[64] = "?";
  gethostname(host, sizeof(host) - 1);
  char line[1280];
  int rank = g_rank.load();
  int n;
  if (rank >= 0) {
    n = snprintf(line, sizeof(line), "%s:%d:%ld [%d] TRAINMOVER CONTROL %s %s\n", host, getpid(),
                 static_cast<long>(syscall(SYS_gettid)), rank, kNames[static_cast<int>(level)], msg);
  } else {
    n = snprintf(line, sizeof(line), "%s:%d:%ld TRAINMOVER CONTROL %s %s\n", host, getpid(),
                 static_cast<long>(syscall(SYS_gettid)), kNames[static_cast<int>(level)], msg);
  }
  if (n > 0) {
    ssize_t w = write(2, line, static_cast<size_t>(n) < sizeof(line) ? static_cast<size_t>(n) : sizeof(line) - 1);
    (void)w;
  }
}

}  // namespace trainmover::control
