// SPDX-License-Identifier: Apache-2.0
// A small training-like program with a split communicator, for the migration tests: a world communicator
// (ncclCommInitRank, id through tmrun's store) and a child split by rank parity; one registered region;
// every step two allreduces on the world and one on the child, then a deterministic update. The update
// only uses world-reduced values, so every rank ends with the same state: prints
// "final-state sha256:<hex>" like tm-train. Usage (under tmrun): split_app STEPS STEP_MS
#include <chrono>
#include <thread>
#include <vector>

#include "test_app.h"
#include "trainmover/trainmover.h"

using test_app::Check;

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  if (argc < 3) return 2;
  const long steps = std::atol(argv[1]), step_ms = std::atol(argv[2]);
  const int rank = test_app::EnvInt("RANK", 0), world = test_app::EnvInt("WORLD_SIZE", 1);
  std::vector<float> w(4096), g(w.size()), h(w.size());
  for (size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>(i % 97) * 0.01f;
  if (tmRegister("w", w.data(), w.size() * sizeof(float)) != tmSuccess) return 1;

  const ncclUniqueId id = test_app::WorldId(rank, "split-app/id");
  ncclComm_t comm, child;
  Check(ncclCommInitRank(&comm, world, id, rank), "ncclCommInitRank");
  Check(ncclCommSplit(comm, rank % 2, rank, &child, nullptr), "ncclCommSplit");

  for (long step = 0;;) {
    step = tmSafePoint(step);
    if (step >= steps) break;
    for (size_t i = 0; i < w.size(); ++i) g[i] = w[i] * 0.5f + static_cast<float>((rank + 1) * (step + 1) % 7) * 0.01f;
    Check(ncclAllReduce(g.data(), g.data(), g.size(), ncclFloat, ncclSum, comm, nullptr), "world allreduce");
    for (size_t i = 0; i < w.size(); ++i) h[i] = g[i] * static_cast<float>(rank % 3);
    Check(ncclAllReduce(h.data(), h.data(), h.size(), ncclFloat, ncclSum, child, nullptr), "child allreduce");
    Check(ncclAllReduce(h.data(), h.data(), h.size(), ncclFloat, ncclSum, comm, nullptr), "world allreduce 2");
    for (size_t i = 0; i < w.size(); ++i) w[i] = 0.9f * w[i] + 0.001f * g[i] - 0.0005f * h[i];
    if (step_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(step_ms));
    ++step;
  }
  Check(ncclCommDestroy(child), "destroy child");
  Check(ncclCommDestroy(comm), "destroy world");
  test_app::PrintDigest(w.data(), w.size() * sizeof(float));
  return 0;
}
