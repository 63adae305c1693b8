// SPDX-License-Identifier: Apache-2.0
#include "host.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cstdlib>
#include <mutex>

namespace trainmover::base {
namespace {
std::mutex g_address_mu;
std::string g_address;  // guarded by g_address_mu
}  // namespace

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

std::string HostAddress() {
  std::lock_guard<std::mutex> lock(g_address_mu);
  return g_address;
}

void SetHostAddress(const std::string& ip) {
  std::lock_guard<std::mutex> lock(g_address_mu);
  g_address = ip;
}

std::string InterfaceOf(const std::string& ip) {
  in_addr want{};
  if (inet_pton(AF_INET, ip.c_str(), &want) != 1) return "";
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return "";
  std::string name;
  for (ifaddrs* a = list; a != nullptr && name.empty(); a = a->ifa_next) {
    if (a->ifa_addr == nullptr || a->ifa_addr->sa_family != AF_INET || (a->ifa_flags & IFF_LOOPBACK)) continue;
    if (reinterpret_cast<const sockaddr_in*>(a->ifa_addr)->sin_addr.s_addr == want.s_addr) name = a->ifa_name;
  }
  freeifaddrs(list);
  return name;
}

}  // namespace trainmover::base
