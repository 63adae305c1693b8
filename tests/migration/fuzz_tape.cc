// SPDX-License-Identifier: Apache-2.0
// libFuzzer target of the sandbox tape's decoder (lib/sandbox/tape_codec.cc): the joiner decodes the leaver's
// tape, which reaches it through the coordinator. Any input must be refused, or decode into entries within the
// cap that re-encode to exactly the same bytes, and lookups on the result stay in bounds.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "sandbox/tape.h"

namespace trainmover::shim {
// Link stand-in: the real one lives in lib/core/state.cc with the whole shim; the codec only prints it.
const char* OpKindName(OpKind) { return "op"; }
}  // namespace trainmover::shim

namespace ts = trainmover::shim;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint64_t cap = uint64_t{data[0]} * 16;  // the joiner's TRAINMOVER_TAPE_MAX_BYTES, small
  const std::vector<uint8_t> blob(data + 1, data + size);
  ts::Tape t;
  if (!t.Decode(blob, cap)) {
    if (t.size() != 0) abort();  // unchanged on refusal
    return 0;
  }
  if (t.output_bytes() > cap) abort();
  if (t.Encode() != blob) abort();
  std::string why;
  for (uint64_t ci = 0; ci < 4; ++ci) {
    for (uint32_t pos = 0; pos < 4; ++pos) {
      const std::vector<uint8_t>* out = t.Match(ci, pos, ts::TapeSig{}, 8, &why);
      if (out != nullptr && out->size() != 8) abort();
    }
  }
  return 0;
}
