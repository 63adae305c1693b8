// SPDX-License-Identifier: Apache-2.0
// The data-parallel workload (docs/tm-train.md, "What it does"): the whole model on every rank, one
// communicator, the gradient all-reduced, Adam replicated. Every rank ends with the same state.
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <thread>
#include <vector>

#include "device_state.h"
#include "driver.h"
#include "model.h"

namespace tm_train {

int RunDataParallel(const Flags& f, const RankInfo& start, std::chrono::steady_clock::time_point t_start) {
  RankInfo who = start;  // the rank changes when a standby takes a failed rank's place (TrainLoop)
  const int rank = who.rank, world = who.world;
  // Emulated framework start-up (CUDA context, JIT, data loaders on a real cluster): labelled, explicit.
  if (f.init_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(f.init_ms));
  const double init_emulated_ms = MsSince(t_start);

  const Dims dims = DimsForParams(f.params);
  const size_t np = static_cast<size_t>(dims.NumParams());
  const Task task(dims, f.seed);
  std::vector<float> params(np), adam_m(np, 0.0f), adam_v(np, 0.0f), grad(np);
  std::vector<float> scratch(ScratchFloats(dims));
  std::vector<float> x(static_cast<size_t>(dims.batch * dims.in)), y(static_cast<size_t>(dims.batch * dims.out));
  const size_t extra_words = static_cast<size_t>(f.extra_state_mb) * (1u << 20) / sizeof(uint64_t);
  InitParams(dims, f.seed, params.data());
  // `extra` lives on the host, or with --device-state in device memory (the same values, so the same digest).
  std::vector<uint64_t> extra;
  std::unique_ptr<DeviceExtraState> device_extra;
  void* extra_ptr = nullptr;
  if (f.device_state) {
    device_extra = std::make_unique<DeviceExtraState>(f.seed, extra_words);
    extra_ptr = device_extra->device_ptr();
  } else {
    extra.resize(extra_words);
    InitExtraState(f.seed, extra.data(), extra.size());
    extra_ptr = extra.data();
  }
  // Every collective runs on this stream: the default one (nullptr), or with --device-state the program's own
  // non-blocking stream, as a GPU program's would (the shim watches the streams collectives run on).
  const cudaStream_t stream = device_extra ? device_extra->stream() : nullptr;

  std::vector<Region> regions = {{"params", params.data(), np * sizeof(float)},
                                 {"adam_m", adam_m.data(), np * sizeof(float)},
                                 {"adam_v", adam_v.data(), np * sizeof(float)}};
  if (extra_words > 0) regions.push_back({"extra", extra_ptr, extra_words * sizeof(uint64_t)});
  RegisterRegions(regions);
  const CheckpointMeta meta{f.seed, dims.NumParams(), rank, world};
  const int64_t step = PrepareCheckpoint(f, meta, regions);

  const auto t_comm = std::chrono::steady_clock::now();
  IdStore ids(world, f);
  ncclUniqueId id = ids.Get("tm-train/nccl-unique-id", rank == 0);
  ncclComm_t comm = nullptr;
  NCCLCHECK(ncclCommInitRank(&comm, world, id, rank));
  const double comm_init_ms = MsSince(t_comm);
  const auto t_bcast = std::chrono::steady_clock::now();
  if (!f.resume) NCCLCHECK(ncclBroadcast(params.data(), params.data(), np, ncclFloat, 0, comm, stream));
  const double bcast_ms = MsSince(t_bcast);
  printf("[rank %d] init world=%d role=%s params=%" PRId64 " dims=%" PRId64 "x%" PRId64 "x%" PRId64
         " state_bytes=%zu init_emulated_ms=%.1f comm_init_ms=%.1f bcast_ms=%.1f startup_ms=%.1f start_step=%" PRId64
         "\n",
         rank, world, who.role, dims.NumParams(), dims.in, dims.hidden, dims.out,
         np * 3 * sizeof(float) + extra_words * sizeof(uint64_t), init_emulated_ms, comm_init_ms, bcast_ms,
         MsSince(t_start), step);

  const AdamConfig adam;
  const float inv_world = 1.0f / static_cast<float>(world);
  TrainLoop(f, who, meta, regions, step, [&](int64_t s) {
    task.Batch(who.rank, s, x.data(), y.data());
    float loss = ForwardBackward(dims, params.data(), x.data(), y.data(), grad.data(), scratch.data());
    NCCLCHECK(ncclAllReduce(grad.data(), grad.data(), np, ncclFloat, ncclSum, comm, stream));
    for (float& g : grad) g *= inv_world;
    AdamStep(adam, s, np, grad.data(), params.data(), adam_m.data(), adam_v.data());
    if (device_extra) {
      device_extra->Update(f.seed, s);  // returns with the upload in flight (device_state.cc says why)
    } else {
      UpdateExtraState(f.seed, s, extra.data(), extra.size());
    }
    NCCLCHECK(ncclAllReduce(&loss, &loss, 1, ncclFloat, ncclSum, comm, stream));
    return loss * inv_world;
  });

  NCCLCHECK(ncclCommDestroy(comm));
  // With --device-state the digest is taken over a host copy of the device region, so that it is comparable, bit
  // for bit, with a run without the flag.
  std::vector<uint64_t> extra_on_host;
  std::vector<Region> digested = regions;
  if (device_extra) {
    extra_on_host = device_extra->CopyToHost();
    digested.back().ptr = extra_on_host.data();
  }
  printf("final-state sha256:%s\n", StateDigest(digested).c_str());
  fflush(stdout);
  return 0;
}

}  // namespace tm_train
