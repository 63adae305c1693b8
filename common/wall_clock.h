// SPDX-License-Identifier: Apache-2.0
// The wall-clock stamp of a TRACE log line, shared by the shim's log (lib/base/log.cc) and hostnccl's
// (plugins/hostnccl): "seconds.microseconds " of CLOCK_REALTIME, one format, so that the lines of every process of
// a job, shim and hostnccl alike, merge into one timeline. Header-only; thread-safe.
#pragma once

#include <time.h>

#include <cstddef>
#include <cstdio>

namespace trainmover::common {

// Writes the stamp into buf (at most n bytes, NUL-terminated); returns what snprintf returns.
inline int WallClockStamp(char* buf, size_t n) {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  return snprintf(buf, n, "%lld.%06ld ", static_cast<long long>(ts.tv_sec), ts.tv_nsec / 1000);
}

}  // namespace trainmover::common
