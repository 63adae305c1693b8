// SPDX-License-Identifier: Apache-2.0
// tape.h: the sandbox tape (docs/migration.md "The tape").
//
// Ownership: a Tape owns copies of every entry's bytes. Thread safety: building (Add, Decode) is single-
// threaded; const use (Match, Encode) from several threads at once is safe. Nothing here blocks or logs.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/shim_state.h"
#include "nccl_api.h"

namespace trainmover::shim {

// The tape (docs/migration.md "The tape"): one real iteration recorded by the leaver, between
// two consecutive safe points, replayed in the joiner's sandbox. Each entry is one operation on one VComm,
// named by the VComm's creation index (lineage; the coordinator has checked that the joiner's i-th
// communicator is the leaver's i-th) and its position in the iteration on that VComm (0, 1, ...), with its
// signature and, unless the tape's byte cap was reached, its output bytes (recvbuff after the call).

struct TapeSig {
  OpKind kind = OpKind::kAllReduce;
  uint8_t datatype = 0;  // ncclDataType_t
  int32_t op = -1;       // the application's ncclRedOp_t, -1 when not a reduction
  int32_t peer = -1;     // root or peer, -1 when none
  uint64_t count = 0;    // per-rank count, as NCCL's signature takes it
  bool operator==(const TapeSig&) const = default;
};
std::string TapeSigText(const TapeSig& s);  // "AllReduce count 4 dtype 7 op 0 peer -1"

struct TapeEntry {
  uint64_t comm_index = 0;  // Lineage::index of the VComm
  uint32_t position = 0;    // the position-th operation of the iteration on that VComm
  TapeSig sig;
  bool has_output = false;      // false: signature only (over the cap); the joiner emulates
  std::vector<uint8_t> output;  // recvbuff after the call (RecvBytes of the signature)
};

// Bytes of recvbuff (the tape's output) for an operation of this signature on nranks ranks; 0 for Send.
size_t TapeOutputBytes(const TapeSig& s, int nranks);

// An immutable set of entries with lookup by (comm_index, position). Not thread-safe to build; const use
// from several threads is safe.
class Tape {
 public:
  // Adds an entry; a second entry at the same (comm_index, position) replaces the first.
  void Add(TapeEntry e);
  size_t size() const { return entries_.size(); }
  uint64_t output_bytes() const;
  // The output of the operation at (comm_index, position) when the tape holds one whose signature equals
  // `sig` exactly and whose output has `bytes` bytes; otherwise nullptr and *why says what differed
  // ("no entry", "signature ...", "signature only", "size").
  const std::vector<uint8_t>* Match(uint64_t comm_index, uint32_t position, const TapeSig& sig, size_t bytes,
                                    std::string* why) const;
  // A self-describing little-endian blob (magic, version, entries in (comm_index, position) order), and its
  // strict inverse: a truncated or damaged blob, entries out of order or repeated, or one holding more than
  // max_bytes of outputs, is refused (false, *this unchanged); what decodes re-encodes to the same bytes.
  std::vector<uint8_t> Encode() const;
  bool Decode(const std::vector<uint8_t>& blob, uint64_t max_bytes);

 private:
  std::vector<TapeEntry> entries_;  // sorted by (comm_index, position)
};

// ---------------------------------------------------------------------------------------------------
// Recording on the leaver: armed for one iteration, between two consecutive safe points of the application
// thread. Every successful real operation then adds its ring signature and (within max_bytes in all) its
// output; an operation inside a group gets its output at the outermost ncclGroupEnd (before that it does not
// exist); outputs over the cap, of a null recvbuff, or of a group ended without running are signature-only.
// Device buffers are copied after a stream synchronisation (cudaMemcpy through the sandbox's staged path), so
// the results are unchanged; only the recorded iteration is slowed.

extern std::atomic<bool> g_tape_recording;
inline bool TapeRecording() { return g_tape_recording.load(std::memory_order_relaxed); }
// Application thread at a safe point: operations from now on are positions 0, 1, ... (per VComm), recorded.
void TapeRecordBegin(uint64_t max_bytes);
// Application thread at the next safe point: stops recording; the tape (null when not armed).
std::shared_ptr<Tape> TapeRecordEnd();
void TapeRecordOp(VComm* v, void* recvbuff, cudaStream_t stream);  // hot path, armed only
void TapeGroupStart();                                             // per-thread group depth
void TapeGroupEnd(bool ran);

// ---------------------------------------------------------------------------------------------------
// Replay in the joiner's sandbox. The agent installs the tape it received; the application thread marks each
// iteration's start at its safe points; the emulation path of every sandboxed operation asks TapeServe first.

// Installs (or with null, removes) the tape. Thread-safe; the tape stays alive while any operation uses it.
void InstallTape(std::shared_ptr<const Tape> tape);
// Called at a safe point by the application thread: operations issued from now on are positions 0, 1, ... of
// the iteration on their VComm.
void TapeIterationBegin();
// The sandbox's emulation path, with `v`'s ring already holding this operation's signature: when the tape has
// an entry at (v's creation index, position in the iteration) with exactly this signature and output size,
// copies its bytes into recvbuff (device memory staged through host) and returns true. Otherwise false: the
// caller emulates; the first fallback with an installed tape is logged at INFO with its reason.
bool TapeServe(VComm* v, void* recvbuff, cudaStream_t stream);
// Operations served from the tape since the process started / since the last reset, and fallbacks.
struct TapeCounters {
  uint64_t served = 0;
  uint64_t fallbacks = 0;
};
TapeCounters TapeCount();

}  // namespace trainmover::shim
