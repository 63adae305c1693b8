// SPDX-License-Identifier: Apache-2.0
#include "base/log.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>

#include "wall_clock.h"

namespace trainmover::base {

int g_log_level = static_cast<int>(LogLevel::kWarn);
uint32_t g_log_subsys = kLogAll & ~kLogColl;

namespace {
std::atomic<int> g_log_fd{STDERR_FILENO};
std::atomic<int> g_log_rank{-1};
std::atomic<LogSink> g_log_sink{nullptr};
char g_host[64] = "";

const char* LevelName(LogLevel l) {
  switch (l) {
    case LogLevel::kWarn:
      return "WARN";
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kTrace:
      return "TRACE";
  }
  return "?";
}

// Expands %h (host) and %p (pid) as NCCL_DEBUG_FILE does.
std::string ExpandPattern(const char* p) {
  std::string out;
  for (; *p; ++p) {
    if (p[0] == '%' && p[1] == 'h') {
      out += g_host;
      ++p;
    } else if (p[0] == '%' && p[1] == 'p') {
      out += std::to_string(getpid());
      ++p;
    } else {
      out += *p;
    }
  }
  return out;
}

void ReadHost() {
  if (g_host[0] != '\0') return;
  gethostname(g_host, sizeof(g_host) - 1);
  if (char* dot = strchr(g_host, '.')) *dot = '\0';
}
}  // namespace

void LogConfigure(LogLevel level, uint32_t subsys, const char* file_pattern) {
  ReadHost();
  g_log_level = static_cast<int>(level);
  g_log_subsys = subsys;
  if (file_pattern && *file_pattern) {
    std::string path = ExpandPattern(file_pattern);
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd >= 0) g_log_fd.store(fd);
  }
}

void LogSetLevel(LogLevel level) { g_log_level = static_cast<int>(level); }

void LogSetRank(int rank) {
  int expected = -1;
  g_log_rank.compare_exchange_strong(expected, rank);
}

void LogSetSink(LogSink sink) { g_log_sink.store(sink); }

void LogPrint(LogLevel level, uint32_t subsys, const char* file, int line, const char* fmt, ...) {
  ReadHost();
  char buf[1024];
  int n = snprintf(buf, sizeof(buf), "%s:%d:%ld [%d] TRAINMOVER %s ", g_host, getpid(), (long)syscall(SYS_gettid),
                   g_log_rank.load(std::memory_order_relaxed), LevelName(level));
  const int prefix = std::min<int>(n, sizeof(buf) - 2);
  if (level == LogLevel::kTrace && n < (int)sizeof(buf)) {
    const char* base = strrchr(file, '/');
    n += snprintf(buf + n, sizeof(buf) - n, "%s:%d ", base ? base + 1 : file, line);
  }
  if (g_log_level >= static_cast<int>(LogLevel::kTrace) && n < (int)sizeof(buf)) {
    n += common::WallClockStamp(buf + n, sizeof(buf) - n);  // one timeline for every process of a job
  }
  if (n < (int)sizeof(buf) - 1) {
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof(buf) - 1 - n, fmt, ap);
    va_end(ap);
    n = (m < 0) ? n : std::min<int>(n + m, sizeof(buf) - 2);
  } else {
    n = sizeof(buf) - 2;
  }
  if (LogSink sink = g_log_sink.load()) {
    buf[n] = '\0';
    sink(LogRecord{level, subsys, buf, buf + prefix});
    return;
  }
  buf[n++] = '\n';
  ssize_t w = write(g_log_fd.load(std::memory_order_relaxed), buf, n);
  (void)w;
}

}  // namespace trainmover::base
