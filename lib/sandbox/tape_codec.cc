// SPDX-License-Identifier: Apache-2.0
// The tape itself (tape.h, class Tape): lookup, and the blob the leaver sends the joiner through the
// coordinator, decoded strictly (bytes from another process). Apart from recording and replay (tape.cc) so that
// its fuzzer (tests/migration/fuzz_tape.cc) builds it alone.
#include <algorithm>
#include <cstdio>
#include <cstring>

#include "nccl_dtype.h"
#include "tape.h"

namespace trainmover::shim {

std::string TapeSigText(const TapeSig& s) {
  char buf[128];
  std::snprintf(buf, sizeof(buf), "%s count %llu dtype %d op %d peer %d", OpKindName(s.kind),
                static_cast<unsigned long long>(s.count), s.datatype, s.op, s.peer);
  return buf;
}

size_t TapeOutputBytes(const TapeSig& s, int nranks) {
  if (s.kind == OpKind::kSend) return 0;
  const size_t one = s.count * common::DtypeSize(static_cast<ncclDataType_t>(s.datatype));
  switch (s.kind) {  // recvbuff as NCCL's signatures define it
    case OpKind::kAllGather:
    case OpKind::kAlltoAll:
    case OpKind::kGather:
      return one * static_cast<size_t>(nranks);
    default:
      return one;
  }
}

namespace {
bool EntryLess(const TapeEntry& a, uint64_t ci, uint32_t pos) {
  return a.comm_index < ci || (a.comm_index == ci && a.position < pos);
}
constexpr uint32_t kTapeMagic = 0x45504154;  // "TAPE"
constexpr uint32_t kTapeVersion = 1;
constexpr uint64_t kTapeMaxEntries = uint64_t{1} << 24;

template <typename T>
void Put(std::vector<uint8_t>* out, T v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);  // little-endian hosts only (x86-64, aarch64)
  out->insert(out->end(), p, p + sizeof(T));
}
struct Reader {
  const std::vector<uint8_t>& b;
  size_t at = 0;
  template <typename T>
  bool Get(T* v) {
    if (b.size() - at < sizeof(T)) return false;
    std::memcpy(v, b.data() + at, sizeof(T));
    at += sizeof(T);
    return true;
  }
};
}  // namespace

void Tape::Add(TapeEntry e) {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), e, [](const TapeEntry& a, const TapeEntry& b) {
    return EntryLess(a, b.comm_index, b.position);
  });
  if (it != entries_.end() && it->comm_index == e.comm_index && it->position == e.position) {
    *it = std::move(e);
  } else {
    entries_.insert(it, std::move(e));
  }
}

uint64_t Tape::output_bytes() const {
  uint64_t n = 0;
  for (const TapeEntry& e : entries_) n += e.output.size();
  return n;
}

const std::vector<uint8_t>* Tape::Match(uint64_t ci, uint32_t pos, const TapeSig& sig, size_t bytes,
                                        std::string* why) const {
  auto it = std::lower_bound(entries_.begin(), entries_.end(), 0,
                             [&](const TapeEntry& a, int) { return EntryLess(a, ci, pos); });
  if (it == entries_.end() || it->comm_index != ci || it->position != pos) {
    *why = "no entry";
    return nullptr;
  }
  if (!(it->sig == sig)) {
    *why = "signature differs: tape " + TapeSigText(it->sig) + ", here " + TapeSigText(sig);
    return nullptr;
  }
  if (!it->has_output) {
    *why = "signature only (over the tape's byte cap)";
    return nullptr;
  }
  if (it->output.size() != bytes) {
    *why = "output size differs: tape " + std::to_string(it->output.size()) + ", here " + std::to_string(bytes);
    return nullptr;
  }
  return &it->output;
}

std::vector<uint8_t> Tape::Encode() const {
  std::vector<uint8_t> out;
  Put(&out, kTapeMagic);
  Put(&out, kTapeVersion);
  Put<uint64_t>(&out, entries_.size());
  for (const TapeEntry& e : entries_) {
    Put(&out, e.comm_index);
    Put(&out, e.position);
    Put(&out, static_cast<uint8_t>(e.sig.kind));
    Put(&out, e.sig.datatype);
    Put(&out, e.sig.op);
    Put(&out, e.sig.peer);
    Put(&out, e.sig.count);
    Put<uint8_t>(&out, e.has_output ? 1 : 0);
    Put<uint64_t>(&out, e.output.size());
    out.insert(out.end(), e.output.begin(), e.output.end());
  }
  return out;
}

bool Tape::Decode(const std::vector<uint8_t>& blob, uint64_t max_bytes) {
  Reader r{blob};
  uint32_t magic = 0, version = 0;
  uint64_t n = 0, total = 0;
  if (!r.Get(&magic) || !r.Get(&version) || !r.Get(&n) || magic != kTapeMagic || version != kTapeVersion ||
      n > kTapeMaxEntries) {
    return false;
  }
  Tape t;
  for (uint64_t i = 0; i < n; ++i) {
    TapeEntry e;
    uint8_t kind = 0, has = 0;
    uint64_t len = 0;
    if (!r.Get(&e.comm_index) || !r.Get(&e.position) || !r.Get(&kind) || !r.Get(&e.sig.datatype) ||
        !r.Get(&e.sig.op) || !r.Get(&e.sig.peer) || !r.Get(&e.sig.count) || !r.Get(&has) || !r.Get(&len)) {
      return false;
    }
    if (kind > static_cast<uint8_t>(OpKind::kRecv) || has > 1 || (!has && len) || len > blob.size() - r.at ||
        len > max_bytes - total) {
      return false;
    }
    // Encode writes the entries in (comm_index, position) order, each once: anything else is not a tape (and
    // appending in order keeps decoding linear in the entries).
    if (!t.entries_.empty() && !EntryLess(t.entries_.back(), e.comm_index, e.position)) return false;
    e.sig.kind = static_cast<OpKind>(kind);
    e.has_output = has == 1;
    e.output.assign(blob.begin() + static_cast<ptrdiff_t>(r.at), blob.begin() + static_cast<ptrdiff_t>(r.at + len));
    r.at += len;
    total += len;
    t.entries_.push_back(std::move(e));
  }
  if (r.at != blob.size()) return false;
  *this = std::move(t);
  return true;
}

}  // namespace trainmover::shim
