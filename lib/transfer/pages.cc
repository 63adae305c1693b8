// SPDX-License-Identifier: Apache-2.0
#include "pages.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

namespace trainmover::transfer::detail {

uint64_t CollapseToHugePages(const Region& r) {
  constexpr uintptr_t kHuge = uintptr_t{2} << 20;
  if (r.type != MemoryType::kHost || r.size < kHuge) return 0;
  const uintptr_t start = (reinterpret_cast<uintptr_t>(r.ptr) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(r.ptr) + r.size) & ~(kHuge - 1);
  if (end <= start) return 0;
  return madvise(reinterpret_cast<void*>(start), end - start, MADV_COLLAPSE) == 0 ? end - start : 0;
}

void PopulateForWrite(const std::vector<Region>& regions) {
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  for (const Region& r : regions) {
    if (r.type != MemoryType::kHost || r.size == 0) continue;
    uintptr_t start = reinterpret_cast<uintptr_t>(r.ptr) & ~(page - 1);
    uintptr_t end = (reinterpret_cast<uintptr_t>(r.ptr) + r.size + page - 1) & ~(page - 1);
    (void)madvise(reinterpret_cast<void*>(start), end - start, MADV_POPULATE_WRITE);
  }
}

}  // namespace trainmover::transfer::detail
