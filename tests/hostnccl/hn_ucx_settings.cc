// SPDX-License-Identifier: Apache-2.0
// HOSTNCCL_UCX (docs/hostnccl.md, "What a worker costs"): what hostnccl's UCX context gives each communicator's
// worker, read from the shared memory the worker mapped (/proc/self/maps). Modes, each in its own process (the
// context is made once per process):
// - lean (the default): no sysv segment, the posix receive pool small (64-segment growth: about 1 MiB);
// - ucx: UCX's defaults: sysv segments, and the posix receive pool of 512 segments (over 4 MiB);
// - user_pool: lean, with UCX_POSIX_RX_BUFS_GROW=512 in the environment: the user's pool, still no sysv;
// - user_mm_pool: the same with UCX_MM_RX_BUFS_GROW=512, the variable of the very setting hostnccl makes (posix and
//   sysv pools both);
// - user_tls: lean, with UCX_TLS=all in the environment: UCX's transports and pools (hostnccl sets neither).
#include <string>

#include <fstream>
#include <sstream>

#include "hn_harness.h"

namespace {

struct SharedMaps {
  int sysv = 0;           // mappings of sysv segments
  uint64_t posix = 0;     // bytes of posix shared memory (UCX's FIFOs and receive pools)
};

SharedMaps ReadMaps() {
  SharedMaps m;
  std::ifstream f("/proc/self/maps");
  for (std::string line; std::getline(f, line);) {
    std::istringstream in(line);
    std::string range, perms, offset, dev, inode, path;
    in >> range >> perms >> offset >> dev >> inode >> path;
    if (path.rfind("/SYSV", 0) == 0) ++m.sysv;
    if (path.find("ucx_shm_posix") == std::string::npos) continue;
    const size_t dash = range.find('-');
    m.posix += std::stoull(range.substr(dash + 1), nullptr, 16) - std::stoull(range.substr(0, dash), nullptr, 16);
  }
  return m;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode != "lean" && mode != "ucx" && mode != "user_pool" && mode != "user_mm_pool" && mode != "user_tls") {
    fprintf(stderr, "usage: hn_ucx_settings lean|ucx|user_pool|user_mm_pool|user_tls\n");
    return 2;
  }
  for (const char* v : {"UCX_TLS", "UCX_MM_RX_BUFS_GROW", "UCX_POSIX_RX_BUFS_GROW", "UCX_SYSV_RX_BUFS_GROW"}) unsetenv(v);
  setenv("HOSTNCCL_UCX", mode == "ucx" ? "ucx" : "lean", 1);
  if (mode == "user_pool") setenv("UCX_POSIX_RX_BUFS_GROW", "512", 1);
  if (mode == "user_mm_pool") setenv("UCX_MM_RX_BUFS_GROW", "512", 1);
  if (mode == "user_tls") setenv("UCX_TLS", "all", 1);
  int failures = 0;
  const SharedMaps before = ReadMaps();
  ncclComm_t comm = nullptr;
  HT_NCCL(ncclCommInitAll(&comm, 1, nullptr));
  const SharedMaps with = ReadMaps();
  const int sysv = with.sysv - before.sysv;
  const uint64_t posix = with.posix - before.posix;
  fprintf(stderr, "%s: the worker mapped %d sysv segment(s) and %llu KiB of posix shared memory\n", mode.c_str(), sysv,
          static_cast<unsigned long long>(posix >> 10));
  constexpr uint64_t kMiB = 1 << 20;
  const bool lean_tls = mode == "lean" || mode == "user_pool" || mode == "user_mm_pool", lean_pool = mode == "lean";
  if (lean_tls) {
    HT_EXPECT(sysv == 0, "%d sysv segments with sysv left out", sysv);
  } else {
    HT_EXPECT(sysv > 0, "no sysv segment with UCX's transports");
  }
  if (lean_pool) {
    HT_EXPECT(posix > 0 && posix < 2 * kMiB, "posix shared memory %llu B, expected a 64-segment pool",
              static_cast<unsigned long long>(posix));
  } else {
    HT_EXPECT(posix > 4 * kMiB, "posix shared memory %llu B, expected a 512-segment pool",
              static_cast<unsigned long long>(posix));
  }
  HT_NCCL(ncclCommDestroy(comm));
  const SharedMaps after = ReadMaps();
  HT_EXPECT(after.sysv == before.sysv && after.posix == before.posix, "the destroy left shared memory mapped");
  return failures == 0 ? 0 : 1;
}
