// SPDX-License-Identifier: Apache-2.0
#include "host.h"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
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

uint64_t HostMemoryBytes(const std::string& meminfo, const std::string& cgroup, const std::string& cgroup_root) {
  uint64_t total = 0;
  std::ifstream mi(meminfo);
  for (std::string key; mi >> key;) {
    unsigned long long kib = 0;
    if (key == "MemTotal:" && mi >> kib) {
      total = static_cast<uint64_t>(kib) * 1024;
      break;
    }
    mi.ignore(1 << 12, '\n');
  }
  // The cgroup's limit, the lowest of its own and its ancestors' (a limit set on a parent binds too): v2 ("0::/path",
  // memory.max: bytes or "max") or v1 ("N:memory:/path" or a controller list with memory in it,
  // memory/path/memory.limit_in_bytes; "no limit" is a huge number, above MemTotal). Inside a container without a
  // cgroup namespace the path names the host's view and does not exist here: the prefixes down to the root cover it.
  auto lower = [&](const std::string& file) {
    std::ifstream lim(file);
    unsigned long long bytes = 0;
    // v1's "no limit" (about 2^63) is no figure, even when MemTotal could not be read.
    if (lim >> bytes && bytes > 0 && bytes < (1ull << 62) && (total == 0 || bytes < total)) total = bytes;
  };
  std::ifstream cg(cgroup);
  for (std::string line; std::getline(cg, line);) {
    const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string controllers = "," + line.substr(a + 1, b - a - 1) + ",";
    std::string dir, file;
    if (controllers == ",,") {
      dir = cgroup_root, file = "/memory.max";
    } else if (controllers.find(",memory,") != std::string::npos) {
      dir = cgroup_root + "/memory", file = "/memory.limit_in_bytes";
    } else {
      continue;
    }
    for (std::string path = line.substr(b + 1); !path.empty(); path.resize(path.rfind('/'))) {
      lower(dir + path + file);
      if (path.rfind('/') == std::string::npos) break;
    }
    lower(dir + file);
  }
  return total;
}

uint64_t HostMemoryBytes() { return HostMemoryBytes("/proc/meminfo", "/proc/self/cgroup", "/sys/fs/cgroup"); }

}  // namespace trainmover::base
