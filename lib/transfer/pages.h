// SPDX-License-Identifier: Apache-2.0
// What the hand-off does to the pages of host regions before the switch, on both sides (docs/transfer.md,
// "Huge pages"). Contents never change; every call is best effort (a kernel or memory that refuses leaves the
// region as it was, and the read works the same, only slower).
#ifndef TRAINMOVER_LIB_TRANSFER_PAGES_H_
#define TRAINMOVER_LIB_TRANSFER_PAGES_H_

#include <vector>

#include "transfer.h"

namespace trainmover::transfer::detail {

// Backs the 2 MiB-aligned interior of a host region with transparent huge pages now (MADV_COLLAPSE, Linux 6.1;
// no MADV_HUGEPAGE, so the region's later faults and khugepaged keep the process's own policy). process_vm_readv
// pins and walks the source one page at a time: 4 KiB pages read at about half the speed of 2 MiB ones here
// (docs/benchmarks.md). Returns the bytes now in huge pages (0 when refused: no THP, pinned or not anonymous
// memory, no free huge page). Regions that are not kHost are left alone (a device pointer is no VMA to advise).
uint64_t CollapseToHugePages(const Region& region);

// Maps every page of the joiner's host regions writable now, without changing a byte (MADV_POPULATE_WRITE,
// Linux 5.14), so that pages the joiner allocated but never touched do not fault one by one inside the read at
// the switch (a destination's faults cut the read to a third here).
void PopulateForWrite(const std::vector<Region>& regions);

}  // namespace trainmover::transfer::detail

#endif  // TRAINMOVER_LIB_TRANSFER_PAGES_H_
