// SPDX-License-Identifier: Apache-2.0
// tm-train: the reference workload, over the NCCL API only, deterministic, with the two optional TrainMover
// calls (tmRegister, tmSafePoint). Data parallel by default (data_parallel.cc); tensor x pipeline x data
// parallel with --tp/--pp (parallel.cc). See docs/tm-train.md.
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "driver.h"
#include "flags.h"

int main(int argc, char** argv) {
  const auto t_start = std::chrono::steady_clock::now();
  setvbuf(stdout, nullptr, _IOLBF, 0);
  tm_train::RankInfo who;
  who.rank = tm_train::EnvInt("RANK", 0);
  who.world = tm_train::EnvInt("WORLD_SIZE", 1);
  tm_train::SetErrorRank(who.rank);
  const tm_train::Flags f = tm_train::ParseFlags(argc, argv);
  if (who.world < 1 || who.rank >= who.world)
    tm_train::Die("RANK=%d WORLD_SIZE=%d is not a valid rank", who.rank, who.world);
  if (const char* role = getenv("TRAINMOVER_ROLE"); role && *role) who.role = role;
  return f.Parallel3D() ? tm_train::RunParallel3D(f, who, t_start) : tm_train::RunDataParallel(f, who, t_start);
}
