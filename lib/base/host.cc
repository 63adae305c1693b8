// SPDX-License-Identifier: Apache-2.0
#include "host.h"

#include <unistd.h>

#include <cstdlib>

namespace trainmover::base {

const std::string& HostName() {
  static const std::string name = [] {
    const char* env = std::getenv("TRAINMOVER_HOST");
    if (env && *env) return std::string(env);
    char host[256] = {};
    if (gethostname(host, sizeof(host) - 1) != 0 || !host[0]) return std::string("?");
    return std::string(host);
  }();
  return name;
}

}  // namespace trainmover::base
