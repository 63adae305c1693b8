// SPDX-License-Identifier: Apache-2.0
// DeviceSnapshots (lib/migration/device_snapshots.h) on the stand-in CUDA runtime (tests/fake_cuda, preloaded by
// meson), whose stream operations each lag TM_FAKE_CUDA_OP_US behind the host: a snapshot holds what the program's
// stream wrote before the safe point even when that write lands late, and not what the program writes in the next
// step even when the snapshot's copy is held up behind other work. Each of the two orderings (after the collective
// streams' work, before the next collectives') is what one case fails without.
#include <dlfcn.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "base/cudart.h"
#include "migration/device_snapshots.h"

namespace {

using trainmover::migration::DeviceSnapshots;

// The calls the test itself makes, as a program would: the runtime libtrainmover found (base::Cudart, which has all
// of them but cudaMalloc) and cudaMalloc from the same preloaded library.
struct Program {
  const trainmover::base::Cudart* rt = trainmover::base::CudartIfLoaded();
  decltype(&::cudaMalloc) cudaMalloc = nullptr;
  bool ok = false;
  Program() {
    void* h = dlopen("libcudart.so.12", RTLD_NOW | RTLD_NOLOAD);
    if (h == nullptr || rt == nullptr) return;
    cudaMalloc = reinterpret_cast<decltype(&::cudaMalloc)>(dlsym(h, "cudaMalloc"));
    ok = cudaMalloc && rt->cudaMemcpyAsync && rt->cudaStreamCreateWithFlags && rt->cudaEventCreateWithFlags &&
         rt->cudaEventRecord && rt->cudaStreamWaitEvent && rt->cudaDeviceSynchronize;
  }
  cudaStream_t Stream() {
    cudaStream_t s = nullptr;
    REQUIRE(rt->cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) == cudaSuccess);
    return s;
  }
  // `ops` copies of a byte on `s`, each lagging: work that keeps `s` busy for a while.
  void Busy(cudaStream_t s, int ops) {
    static uint8_t from = 0, to = 0;
    for (int i = 0; i < ops; ++i) REQUIRE(rt->cudaMemcpyAsync(&to, &from, 1, cudaMemcpyHostToHost, s) == cudaSuccess);
  }
  // Makes `waiter` wait for everything enqueued on `s` so far.
  void After(cudaStream_t waiter, cudaStream_t s) {
    cudaEvent_t e = nullptr;
    REQUIRE(rt->cudaEventCreateWithFlags(&e, cudaEventDisableTiming) == cudaSuccess);
    REQUIRE(rt->cudaEventRecord(e, s) == cudaSuccess);
    REQUIRE(rt->cudaStreamWaitEvent(waiter, e, 0) == cudaSuccess);
  }
};

constexpr size_t kBytes = (1u << 20) + 3;

bool All(const std::vector<uint8_t>& v, uint8_t b) {
  for (uint8_t x : v) {
    if (x != b) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("no runtime, or one without the calls: no device snapshots, and why") {
  std::string why;
  CHECK(DeviceSnapshots::Create(nullptr, &why) == nullptr);
  CHECK(why == "no CUDA runtime is loaded");
  trainmover::base::Cudart partial = *trainmover::base::CudartIfLoaded();
  partial.cudaEventQuery = nullptr;
  CHECK(DeviceSnapshots::Create(&partial, &why) == nullptr);
  CHECK(why == std::string(partial.soname) + " has no cudaEventQuery");
}

// One step and the start of the next: the program's stream runs a collective (the shim sees its stream) and writes
// the region after `write_lag` operations of another stream (an optimizer behind a long backward pass); the safe
// point starts the snapshot behind `copy_lag` operations on the default stream (work the program enqueued there) and
// the host goes on at once; the next step runs a collective on the program's stream and writes the region again.
// Returns the snapshot's bytes' first value after checking they are all one value, and that the program's own order
// held (the next write is what the region holds in the end).
static int SnapshotOfStep(int write_lag, int copy_lag) {
  Program p;
  REQUIRE(p.ok);
  std::string why, err;
  std::unique_ptr<DeviceSnapshots> d = DeviceSnapshots::Create(trainmover::base::CudartIfLoaded(), &why);
  REQUIRE_MESSAGE(d != nullptr, why);
  void* region = nullptr;
  REQUIRE(p.cudaMalloc(&region, kBytes) == cudaSuccess);
  std::vector<uint8_t> step_write(kBytes, 0x11), next_write(kBytes, 0x22), slot(kBytes, 0);
  cudaStream_t program = p.Stream(), other = p.Stream();

  d->OnStream(program);
  p.Busy(other, write_lag);
  p.After(program, other);
  REQUIRE(p.rt->cudaMemcpyAsync(region, step_write.data(), kBytes, cudaMemcpyHostToDevice, program) == cudaSuccess);
  p.Busy(cudaStreamLegacy, copy_lag);
  const uint64_t gen = d->Start({{slot.data(), region, kBytes}}, &err);
  REQUIRE_MESSAGE(gen != 0, err);
  d->OnStream(program);
  REQUIRE(p.rt->cudaMemcpyAsync(region, next_write.data(), kBytes, cudaMemcpyHostToDevice, program) == cudaSuccess);

  REQUIRE_MESSAGE(d->Wait(gen, 30000, &err), err);
  CHECK(All(slot, slot[0]));
  REQUIRE(p.rt->cudaDeviceSynchronize() == cudaSuccess);
  std::vector<uint8_t> now(kBytes, 0);
  REQUIRE(d->CopySync(now.data(), region, kBytes, &err));
  CHECK(All(now, 0x22));
  return slot[0];
}

TEST_CASE("a snapshot holds the step's write when it lands late (ordered after the collective streams' work)") {
  // Without the wait on the program's stream the copy runs at once, before the write (0xA5: never written).
  CHECK(SnapshotOfStep(/*write_lag=*/40, /*copy_lag=*/0) == 0x11);
}

TEST_CASE("a snapshot does not hold the next step's write when its copy is held up (the next collective waits)") {
  // Without the gate the next write lands while the copy still waits behind the default stream's work (0x22).
  CHECK(SnapshotOfStep(/*write_lag=*/0, /*copy_lag=*/40) == 0x11);
}

TEST_CASE("Wait: a later snapshot's completion answers for an earlier one; a generation never started is an error") {
  Program p;
  REQUIRE(p.ok);
  std::string why, err;
  std::unique_ptr<DeviceSnapshots> d = DeviceSnapshots::Create(trainmover::base::CudartIfLoaded(), &why);
  REQUIRE(d != nullptr);
  void* region = nullptr;
  REQUIRE(p.cudaMalloc(&region, 4096) == cudaSuccess);
  std::vector<uint8_t> a(4096), b(4096), seed(4096, 0x5c);
  REQUIRE(d->CopySync(region, seed.data(), seed.size(), &err));  // host to device, drained
  const uint64_t g1 = d->Start({{a.data(), region, a.size()}}, &err);
  const uint64_t g2 = d->Start({{b.data(), region, b.size()}}, &err);
  REQUIRE(g1 != 0);
  REQUIRE(g2 == g1 + 1);
  CHECK(d->Wait(g1, 30000, &err));
  CHECK(d->Wait(g2, 30000, &err));
  CHECK(All(a, 0x5c));
  CHECK(All(b, 0x5c));
  CHECK_FALSE(d->Wait(g2 + 1, 100, &err));
  CHECK(err.find("were started") != std::string::npos);
  CHECK(d->Pin(a.data(), a.size()));
  d->Unpin(a.data());
}
