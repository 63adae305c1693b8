// SPDX-License-Identifier: Apache-2.0
// A program that dlopen()s libnccl.so.2 itself (as some frameworks do) and calls through dlsym.
// Prints "version V result R" or "dlopen failed".
#include <dlfcn.h>
#include <nccl.h>

#include <cstdio>

int main() {
  void* h = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    std::printf("dlopen failed: %s\n", dlerror());
    return 1;
  }
  auto get_version = reinterpret_cast<ncclResult_t (*)(int*)>(dlsym(h, "ncclGetVersion"));
  auto get_id = reinterpret_cast<ncclResult_t (*)(ncclUniqueId*)>(dlsym(h, "ncclGetUniqueId"));
  auto init = reinterpret_cast<ncclResult_t (*)(ncclComm_t*, int, ncclUniqueId, int)>(dlsym(h, "ncclCommInitRank"));
  auto destroy = reinterpret_cast<ncclResult_t (*)(ncclComm_t)>(dlsym(h, "ncclCommDestroy"));
  auto shim = dlsym(h, "tmShimSafePoint");
  int version = 0;
  ncclResult_t r = get_version(&version);
  ncclUniqueId id;
  ncclComm_t comm = nullptr;
  if (r == ncclSuccess) r = get_id(&id);
  if (r == ncclSuccess) r = init(&comm, 1, id, 0);
  if (r == ncclSuccess) r = destroy(comm);
  std::printf("version %d result %d shim %s\n", version, r, shim ? "yes" : "no");
  return 0;
}
