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
// Made on first use (the shim runs no constructor at load time).
struct Address {
  std::mutex mu;
  std::string ip;  // guarded by mu
};
Address& TheAddress() {
  static Address* a = new Address();  // never destroyed: threads may ask while the process exits
  return *a;
}
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
  Address& a = TheAddress();
  std::lock_guard<std::mutex> lock(a.mu);
  return a.ip;
}

void SetHostAddress(const std::string& ip) {
  Address& a = TheAddress();
  std::lock_guard<std::mutex> lock(a.mu);
  a.ip = ip;
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
