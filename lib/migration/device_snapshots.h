// SPDX-License-Identifier: Apache-2.0
// Failure recovery's snapshots of registered regions in CUDA device memory (docs/recovery.md, "Device memory"):
// stream-ordered device-to-host copies into the rank's host snapshot slots, started at a safe point and overlapping
// the next iteration.
//
// Ordering, without knowing the program's streams: a snapshot's copies run after every operation enqueued before the
// safe point on the legacy default stream, the calling thread's per-thread default stream and every stream a
// collective ran on since the previous snapshot (NoteStream, from the shim's collective path); and every collective
// issued while the copies are in flight makes its stream wait for them. So what the program orders after a
// collective of the next step (an optimizer that applies reduced gradients, a pipeline stage's update after its
// exchanges) cannot overwrite a region before it is copied. The contract (docs/recovery.md): a program does not write
// its registered device memory in the next step before that step's first collective.
//
// One object per process, owned by the recovery; Start on the application thread, the rest from any thread.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/cudart.h"

namespace trainmover::migration {

class DeviceSnapshots {
 public:
  struct Copy {
    void* host = nullptr;        // a snapshot slot's buffer
    const void* device = nullptr;  // the registered region
    size_t bytes = 0;
  };
  // Null (and *why says which call is missing) when the loaded CUDA runtime lacks a call the copies need.
  static std::unique_ptr<DeviceSnapshots> Create(const base::Cudart* rt, std::string* why);
  DeviceSnapshots(const DeviceSnapshots&) = delete;
  DeviceSnapshots& operator=(const DeviceSnapshots&) = delete;

  // Application thread, at a safe point: enqueues `copies` in the order above and returns their generation (> 0),
  // without waiting for them; 0 with *err on a CUDA error (nothing is gated then).
  uint64_t Start(const std::vector<Copy>& copies, std::string* err);
  // Whether the copies of the newest Start have run (the generation asked for or a later one); waits up to
  // `timeout_ms`, polling. On success the gate of `generation` is lifted. False with *err on a CUDA error or at
  // the deadline.
  bool Wait(uint64_t generation, int timeout_ms, std::string* err);
  // The collective path (NoteStream's hook): remembers `stream` for the next Start, and makes it wait for copies in
  // flight.
  void OnStream(cudaStream_t stream);

  // Copies now, blocking (every stream of the device drained first): a fenced safe point's exact state, a rollback.
  bool CopySync(void* dst, const void* src, size_t bytes, std::string* err);
  // Page-locks a snapshot slot's buffer so that the copies into it are asynchronous (a copy into pageable memory
  // returns only when done, the safe point would wait for it). Best effort: false when the runtime refuses.
  bool Pin(void* host, size_t bytes);
  void Unpin(void* host);

 private:
  explicit DeviceSnapshots(const base::Cudart* rt) : rt_(rt) {}
  std::string Error(const char* call, cudaError_t e) const;

  const base::Cudart* rt_;
  std::mutex mu_;
  cudaStream_t copy_stream_ = nullptr;  // made at the first Start, on the application thread (its device)
  cudaEvent_t done_ = nullptr;          // recorded after the newest Start's copies
  std::vector<cudaEvent_t> ready_;      // one per stream watched by a Start (reused)
  std::vector<cudaStream_t> seen_;      // streams of collectives since the last Start
  uint64_t generation_ = 0;             // of the newest Start
  std::atomic<uint64_t> gate_{0};       // the generation whose copies are in flight (0: none): collectives wait
};

}  // namespace trainmover::migration
