// SPDX-License-Identifier: Apache-2.0
// CUDA device memory through the transfer: leaver and joiner regions in device memory (cudaMalloc through
// a lazily loaded libcudart), UCX path, kAuto detection, checksums staged through host. Exits 77 with the
// reason where there is no libcudart, no GPU, or UCX without CUDA support.
#include <dlfcn.h>

#include <cstdio>
#include <vector>

#include "test_pattern.h"
#include "transfer/transfer.h"

namespace tt = trainmover::transfer;

int main() {
  void* lib = nullptr;
  for (const char* name : {"libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"}) {
    if ((lib = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
  }
  if (lib == nullptr) {
    printf("SKIP: no libcudart\n");
    return 77;
  }
  auto count = reinterpret_cast<int (*)(int*)>(dlsym(lib, "cudaGetDeviceCount"));
  auto malloc_ = reinterpret_cast<int (*)(void**, size_t)>(dlsym(lib, "cudaMalloc"));
  auto free_ = reinterpret_cast<int (*)(void*)>(dlsym(lib, "cudaFree"));
  auto memcpy_ = reinterpret_cast<int (*)(void*, const void*, size_t, int)>(dlsym(lib, "cudaMemcpy"));
  int n = 0;
  if (count == nullptr || malloc_ == nullptr || free_ == nullptr || memcpy_ == nullptr || count(&n) != 0 || n == 0) {
    printf("SKIP: no CUDA device\n");
    return 77;
  }
  const size_t size = (32u << 20) + 5;
  std::vector<unsigned char> host(size), back(size);
  transfer_test::Fill(&host, 99);
  void *src = nullptr, *dst = nullptr;
  if (malloc_(&src, size) != 0 || malloc_(&dst, size) != 0 || memcpy_(src, host.data(), size, 1) != 0) {
    printf("FAIL: cudaMalloc/cudaMemcpy\n");
    return 1;
  }
  std::unique_ptr<tt::StateServer> server;
  std::unique_ptr<tt::StateClient> client;
  tt::Status s = tt::StateServer::Create({}, &server);
  if (s.ok()) s = server->Expose({{"dev", src, size, tt::MemoryType::kAuto}});
  if (!s.ok() && (s.code() == tt::Code::kUcx || s.code() == tt::Code::kUnsupported)) {
    printf("SKIP: UCX cannot map device memory here: %s\n", s.ToString().c_str());
    return 77;
  }
  if (s.ok()) s = server->Seal();
  if (s.ok()) s = tt::StateClient::Create({}, &client);
  tt::FetchResult r;
  if (s.ok()) s = client->Fetch(server->Descriptor(), {{"dev", dst, size, tt::MemoryType::kCuda}}, {}, &r);
  if (!s.ok()) {
    printf("FAIL: %s\n", s.ToString().c_str());
    return 1;
  }
  if (memcpy_(back.data(), dst, size, 2) != 0 || back != host) {
    printf("FAIL: device bytes differ\n");
    return 1;
  }
  printf("ok: %zu bytes device->device over %s, %.3f GB/s, verified %d\n", size, tt::FetchPathName(r.path), r.gbps,
         r.verified);
  free_(src);
  free_(dst);
  return r.verified && r.path == tt::FetchPath::kUcx ? 0 : 1;
}
