// SPDX-License-Identifier: Apache-2.0
#include "tape.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "base/log.h"
#include "nccl_dtype.h"
#include "sandbox.h"

namespace trainmover::shim {

// ---------------------------------------------------------------------------------------------------
// Recording

std::atomic<bool> g_tape_recording{false};

namespace {

struct Pending {  // an operation inside a group: its output is copied at the outermost ncclGroupEnd
  size_t entry;   // index in Recorder::entries
  void* recv;
  size_t bytes;
  cudaStream_t stream;
};

struct Recorder {
  std::mutex mu;
  std::vector<TapeEntry> entries;  // under mu
  uint64_t max_bytes = 0, bytes = 0;
};
Recorder& Rec() {
  static Recorder* r = new Recorder();
  return *r;
}
thread_local int t_group_depth = 0;
thread_local std::vector<Pending>* t_pending = nullptr;  // allocated on first grouped op, never freed

// Copies one output into entry i (mu held), or leaves it signature-only.
void FillOutput(Recorder& r, size_t i, const void* recv, size_t bytes, cudaStream_t stream) {
  TapeEntry& e = r.entries[i];
  if (recv == nullptr || r.bytes + bytes > r.max_bytes) return;
  e.output.resize(bytes);
  if (bytes > 0 && !CopyFromBuffer(e.output.data(), recv, bytes, stream)) {
    e.output.clear();
    return;
  }
  e.has_output = true;
  r.bytes += bytes;
}

}  // namespace

void TapeRecordBegin(uint64_t max_bytes) {
  Recorder& r = Rec();
  {
    std::lock_guard<std::mutex> lk(r.mu);
    r.entries.clear();
    r.bytes = 0;
    r.max_bytes = max_bytes;
  }
  for (VComm* v : LiveVComms()) v->tape_base = v->seq.load(std::memory_order_relaxed);
  g_tape_recording.store(true, std::memory_order_release);
}

std::shared_ptr<Tape> TapeRecordEnd() {
  if (!g_tape_recording.exchange(false)) return nullptr;
  Recorder& r = Rec();
  std::lock_guard<std::mutex> lk(r.mu);
  auto tape = std::make_shared<Tape>();
  for (TapeEntry& e : r.entries) tape->Add(std::move(e));
  r.entries.clear();
  if (t_pending) t_pending->clear();
  return tape;
}

void TapeRecordOp(VComm* v, void* recv, cudaStream_t stream) {
  const uint64_t seq = v->seq.load(std::memory_order_relaxed);
  if (seq <= v->tape_base || seq - 1 - v->tape_base > UINT32_MAX) return;  // issued before the arming
  const OpSig& o = v->ring[(seq - 1) & (kOpRing - 1)];
  TapeEntry e;
  e.comm_index = v->lineage.index;
  e.position = static_cast<uint32_t>(seq - 1 - v->tape_base);
  e.sig = TapeSig{o.kind, o.datatype, o.op, o.peer, o.count};
  const size_t bytes = TapeOutputBytes(e.sig, v->lineage.nranks);
  Recorder& r = Rec();
  std::lock_guard<std::mutex> lk(r.mu);
  r.entries.push_back(std::move(e));
  if (t_group_depth > 0) {
    if (!t_pending) t_pending = new std::vector<Pending>();
    t_pending->push_back(Pending{r.entries.size() - 1, recv, bytes, stream});
  } else {
    FillOutput(r, r.entries.size() - 1, recv, bytes, stream);
  }
}

void TapeGroupStart() { ++t_group_depth; }

void TapeGroupEnd(bool ran) {
  if (t_group_depth > 0) --t_group_depth;
  if (t_group_depth > 0 || !t_pending || t_pending->empty()) return;
  Recorder& r = Rec();
  std::lock_guard<std::mutex> lk(r.mu);
  for (const Pending& p : *t_pending) {
    if (ran && p.entry < r.entries.size()) FillOutput(r, p.entry, p.recv, p.bytes, p.stream);
  }
  t_pending->clear();
}

// ---------------------------------------------------------------------------------------------------
// Replay

namespace {
struct TapeSlot {
  std::mutex mu;
  std::shared_ptr<const Tape> tape;  // under mu
};
TapeSlot& Slot() {  // built on first use, never destroyed (no work in global constructors or at exit)
  static TapeSlot* slot = new TapeSlot();
  return *slot;
}
std::atomic<bool> g_tape_on{false};
std::atomic<uint64_t> g_served{0}, g_fallbacks{0};
std::atomic<bool> g_logged{false};
}  // namespace

void InstallTape(std::shared_ptr<const Tape> tape) {
  std::lock_guard<std::mutex> lk(Slot().mu);
  g_tape_on = tape != nullptr;
  Slot().tape = std::move(tape);
  g_logged = false;
}

void TapeIterationBegin() {
  for (VComm* v : LiveVComms()) v->tape_base = v->seq.load(std::memory_order_relaxed);
}

bool TapeServe(VComm* v, void* recv, cudaStream_t stream) {
  if (!g_tape_on.load(std::memory_order_acquire)) return false;
  std::shared_ptr<const Tape> tape;
  {
    std::lock_guard<std::mutex> lk(Slot().mu);
    tape = Slot().tape;
  }
  if (!tape) return false;
  const uint64_t seq = v->seq.load(std::memory_order_relaxed);
  const OpSig& e = v->ring[(seq - 1) & (kOpRing - 1)];
  TapeSig sig;
  sig.kind = e.kind;
  sig.datatype = e.datatype;
  sig.op = e.op;
  sig.peer = e.peer;
  sig.count = e.count;
  const size_t bytes = TapeOutputBytes(sig, v->lineage.nranks);
  const uint64_t pos = seq - 1 - v->tape_base;
  std::string why;
  const std::vector<uint8_t>* out =
      pos > UINT32_MAX ? nullptr : tape->Match(v->lineage.index, static_cast<uint32_t>(pos), sig, bytes, &why);
  if (out == nullptr && pos > UINT32_MAX) why = "position out of range";
  if (out != nullptr && bytes > 0 && recv == nullptr) {
    out = nullptr;
    why = "null recvbuff";
  }
  if (out != nullptr && bytes > 0 && !CopyToBuffer(recv, out->data(), bytes, stream)) {
    out = nullptr;
    why = "copying the tape's bytes into recvbuff failed";
  }
  if (out == nullptr) {
    g_fallbacks.fetch_add(1, std::memory_order_relaxed);
    if (!g_logged.exchange(true)) {
      TM_INFO(kLogSandbox, "sandbox: tape: comm #%llu op %llu of the iteration (%s): %s; emulated locally",
              static_cast<unsigned long long>(v->lineage.index), static_cast<unsigned long long>(pos),
              TapeSigText(sig).c_str(), why.c_str());
    }
    return false;
  }
  g_served.fetch_add(1, std::memory_order_relaxed);
  return true;
}

TapeCounters TapeCount() { return TapeCounters{g_served.load(), g_fallbacks.load()}; }

}  // namespace trainmover::shim
