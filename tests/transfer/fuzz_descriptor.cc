// SPDX-License-Identifier: Apache-2.0
// libFuzzer target for the transfer descriptor decoder: the joiner decodes a blob that came from another
// process through the coordinator. The first byte chooses what the rest is:
//   even: a whole descriptor, MAC included, checked with the job's key: anything the fuzzer makes must be
//         refused with kBadDescriptor (it cannot forge the MAC), never crash;
//   odd:  a body, given a valid MAC with that key (what a job member could send), so that the fuzzer reaches
//         the parser: it must either be refused with kBadDescriptor or decode into a descriptor that keeps the
//         decoder's promises (bounded counts, no wrapping ranges, unique names, rkeys for non-empty regions)
//         and re-encodes to exactly the same bytes.
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "transfer/descriptor.h"

namespace tt = trainmover::transfer;

namespace {

const char kKey[] = "fuzz job token 0123456789";

std::vector<uint8_t> WithMac(const uint8_t* body, size_t size) {
  std::string msg = "trainmover transfer descriptor v4";
  msg.append(reinterpret_cast<const char*>(body), size);
  std::vector<uint8_t> out(body, body + size);
  uint8_t mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), kKey, sizeof(kKey) - 1, reinterpret_cast<const uint8_t*>(msg.data()), msg.size(), mac, &len);
  out.insert(out.end(), mac, mac + len);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const bool authentic = data[0] & 1;
  ++data;
  --size;
  std::vector<uint8_t> blob = authentic ? WithMac(data, size) : std::vector<uint8_t>(data, data + size);
  tt::detail::DescriptorData d;
  tt::Status s = tt::detail::DecodeDescriptor(blob, kKey, &d);
  if (!authentic) {
    if (s.code() != tt::Code::kBadDescriptor) abort();  // a forged MAC never passes
    return 0;
  }
  if (!s.ok()) {
    if (s.code() != tt::Code::kBadDescriptor) abort();
    return 0;
  }
  if (d.regions.size() > tt::kMaxRegions || d.worker_address.empty()) abort();
  if (d.control.size != tt::detail::ControlBytes(d.regions.size())) abort();
  std::set<std::string> names;
  for (const tt::detail::RemoteRegion& r : d.regions) {
    if (r.name.empty() || r.name.size() > 255 || !names.insert(r.name).second) abort();
    if (r.address + r.size < r.address) abort();
    if (r.size > 0 && r.rkey.empty()) abort();
  }
  std::vector<uint8_t> again;
  if (!tt::detail::EncodeDescriptor(d, kKey, &again).ok()) abort();
  if (again != blob) abort();
  return 0;
}
