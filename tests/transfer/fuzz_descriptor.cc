// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the transfer descriptor decoder: the joiner decodes a blob that came from another
// process through the coordinator. Any input must either be refused with kBadDescriptor or decode into a
// descriptor that satisfies the decoder's promises (bounded counts, no wrapping ranges, unique names, rkeys
// for non-empty regions) and re-encodes to exactly the same bytes.
#include <cstdint>
#include <cstdlib>
#include <set>

#include "transfer/descriptor.h"

namespace tt = trainmover::transfer;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tt::detail::DescriptorData d;
  tt::Status s = tt::detail::DecodeDescriptor(std::span<const uint8_t>(data, size), &d);
  if (!s.ok()) {
    if (s.code() != tt::Code::kBadDescriptor) abort();
    return 0;
  }
  if (d.regions.size() > tt::kMaxRegions || d.worker_address.empty()) abort();
  if (d.control.size != 8 * (tt::detail::kControlHeaderWords + d.regions.size())) abort();
  std::set<std::string> names;
  for (const tt::detail::RemoteRegion& r : d.regions) {
    if (r.name.empty() || r.name.size() > 255 || !names.insert(r.name).second) abort();
    if (r.address + r.size < r.address) abort();
    if (r.size > 0 && r.rkey.empty()) abort();
  }
  std::vector<uint8_t> again;
  if (!tt::detail::EncodeDescriptor(d, &again).ok()) abort();
  if (again.size() != size || !std::equal(again.begin(), again.end(), data)) abort();
  return 0;
}
