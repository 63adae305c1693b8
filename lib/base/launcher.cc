// SPDX-License-Identifier: Apache-2.0
#include "base/launcher.h"

#include <cerrno>
#include <cstdlib>

#include "base/log.h"

namespace trainmover::base {
namespace {

bool ParseCount(const char* s, long lo, long* out) {
  if (!s || !*s) return false;
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(s, &end, 10);
  if (*end != '\0' || errno != 0 || v < lo || v > (1L << 30)) return false;
  *out = v;
  return true;
}

}  // namespace

LauncherIdentity LauncherFromEnv() {
  LauncherIdentity id;
  const char* rank = std::getenv("RANK");
  const char* world = std::getenv("WORLD_SIZE");
  if (!rank && !world) return id;
  long r = 0, w = 0;
  if (!ParseCount(rank, 0, &r) || !ParseCount(world, 1, &w) || r >= w) {
    TM_WARN(kLogInit, "launcher variables RANK='%s' WORLD_SIZE='%s' are not a rank of a world: ignored",
            rank ? rank : "", world ? world : "");
    return id;
  }
  id.rank = static_cast<int>(r);
  id.world = static_cast<int>(w);
  id.launcher = std::getenv("TORCHELASTIC_RUN_ID") ? "torchrun" : std::getenv("TMRUN_STORE") ? "tmrun" : "env";
  return id;
}

int LocalWorldFromEnv() {
  long n = 1;
  return ParseCount(std::getenv("LOCAL_WORLD_SIZE"), 1, &n) ? static_cast<int>(n) : 1;
}

}  // namespace trainmover::base
