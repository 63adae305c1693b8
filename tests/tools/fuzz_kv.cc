// SPDX-License-Identifier: Apache-2.0
// libFuzzer target of the key-value store's protocol (tools/common/kv_store.h): the bytes an authenticated
// client sends, as a stream of requests, through the server's own header decoding, bound check and table.
// Nothing may crash; every answer keeps the protocol's promises (bounded values, ADD's 8-byte result, at most
// kKvMaxKeys keys, a checked header before any body is taken).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/kv_store.h"

using namespace tm_tools;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  KvTable table;
  size_t at = 0;
  while (size - at >= kKvHeaderBytes) {
    char hdr[kKvHeaderBytes];
    std::memcpy(hdr, data + at, sizeof(hdr));
    at += sizeof(hdr);
    const KvHeader h = DecodeKvHeader(hdr);
    const KvStatus check = CheckKvHeader(h);
    if (check != KvStatus::kOk) {
      if (h.key_len != 0 && h.key_len <= kKvMaxKey && h.val_len <= kKvMaxValue) abort();
      return 0;  // the server answers and closes the connection
    }
    if (size - at < static_cast<size_t>(h.key_len) + h.val_len) return 0;  // the client stalls: body deadline
    std::string key(reinterpret_cast<const char*>(data + at), h.key_len);
    at += h.key_len;
    std::string val(reinterpret_cast<const char*>(data + at), h.val_len);
    at += h.val_len;
    if (h.op == static_cast<uint8_t>(KvOp::kGet) && val.size() == 4) val.assign(4, '\0');  // never wait here
    std::string out;
    const KvStatus st = table.Handle(static_cast<KvOp>(h.op), key, val, &out);
    if (st == KvStatus::kOk && h.op == static_cast<uint8_t>(KvOp::kAdd) && out.size() != 8) abort();
    if (out.size() > kKvMaxValue) abort();
    if (st != KvStatus::kOk && !out.empty()) abort();
    if (table.size() > kKvMaxKeys) abort();
  }
  return 0;
}
