// SPDX-License-Identifier: Apache-2.0
#include "flags.h"

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include "driver.h"

namespace tm_train {
namespace {

int64_t ParseInt(const std::string& flag, const std::string& v, int64_t lo) {
  char* end = nullptr;
  errno = 0;
  long long x = strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < lo)
    Die("%s: expected an integer >= %" PRId64 ", got '%s'", flag.c_str(), lo, v.c_str());
  return x;
}

double ParseFactor(const std::string& flag, const std::string& v, double lo) {
  char* end = nullptr;
  errno = 0;
  double x = strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || errno != 0 || !(x >= lo && x <= 1e6))
    Die("%s: expected a number >= %g, got '%s'", flag.c_str(), lo, v.c_str());
  return x;
}

void Usage() {
  printf(
      "usage: tm-train [flags]   (rank from RANK, world from WORLD_SIZE, store from TMRUN_STORE)\n"
      "  --steps N                 iterations to run (default 100)\n"
      "  --params N                model size in parameters (default 10000)\n"
      "  --seed S                  seed of data, teacher and initial weights (default 1)\n"
      "  --init-ms MS              emulated framework start-up cost, slept at start (default 0)\n"
      "  --step-ms MS              emulated compute time added to every step (default 0)\n"
      "  --extra-state-mb N        an extra registered region of N MiB updated every step (default 0)\n"
      "  --device-state            keep the extra region in CUDA device memory (dlopens libcudart; needs\n"
      "                            --extra-state-mb; data parallel only, without checkpoints)\n"
      "  --log-every N             progress line every N steps (default 10, 0 = never)\n"
      "  --checkpoint-dir D        directory of rank-<r>.ckpt files\n"
      "  --checkpoint-at K         save the state at step K (before iteration K runs)\n"
      "  --exit-after-checkpoint   exit 0 right after saving\n"
      "  --resume                  load the checkpoint in --checkpoint-dir and continue from its step\n"
      "  --no-safe-points          never call tmSafePoint (a program without it: no migration, no recovery)\n"
      "  --timeline FILE           append JSON lines {rank, step, t_ns} at every safe point (%%r = rank)\n"
      "  --fixed-rank              read the rank once from RANK, never through tmRank (a standby can then\n"
      "                            take only the rank it warmed up as)\n"
      "  --store-timeout-ms MS     how long to wait for a unique id in the store (default 120000)\n"
      "  --tp T                    3D-parallel workload: tensor-parallel degree (default 1 there)\n"
      "  --pp P                    3D-parallel workload: pipeline stages (default 1 there); DP = world / (T*P)\n"
      "  --micro-batches M         3D: micro-batches per step through the pipeline (default 2)\n"
      "  --watchdog-ms MS          3D: the watchdog thread's ncclCommGetAsyncError period (default 20)\n"
      "  --slow-rank R             the process started as rank R's worker (not a joiner) is a straggler\n"
      "  --slowdown F              ... taking F times as long per step (e.g. 1.3); SIGUSR1 toggles it in any process\n"
      "  --slow-from-step S        ... from step S on (default 0)\n"
      "  --step-jitter MS          every step sleeps a further uniform 0..MS ms (noise; default 0)\n");
}

}  // namespace

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  struct Opt {
    const char* name;
    bool has_arg;
    std::function<void(const std::string&)> set;
  };
  const Opt opts[] = {
      {"--steps", true, [&](const std::string& v) { f.steps = ParseInt("--steps", v, 0); }},
      {"--params", true, [&](const std::string& v) { f.params = ParseInt("--params", v, 1); }},
      {"--seed", true, [&](const std::string& v) { f.seed = static_cast<uint64_t>(ParseInt("--seed", v, 0)); }},
      {"--init-ms", true, [&](const std::string& v) { f.init_ms = ParseInt("--init-ms", v, 0); }},
      {"--step-ms", true, [&](const std::string& v) { f.step_ms = ParseInt("--step-ms", v, 0); }},
      {"--extra-state-mb", true, [&](const std::string& v) { f.extra_state_mb = ParseInt("--extra-state-mb", v, 0); }},
      {"--log-every", true, [&](const std::string& v) { f.log_every = ParseInt("--log-every", v, 0); }},
      {"--checkpoint-dir", true, [&](const std::string& v) { f.checkpoint_dir = v; }},
      {"--checkpoint-at", true, [&](const std::string& v) { f.checkpoint_at = ParseInt("--checkpoint-at", v, 0); }},
      {"--exit-after-checkpoint", false, [&](const std::string&) { f.exit_after_checkpoint = true; }},
      {"--resume", false, [&](const std::string&) { f.resume = true; }},
      {"--no-safe-points", false, [&](const std::string&) { f.no_safe_points = true; }},
      {"--fixed-rank", false, [&](const std::string&) { f.fixed_rank = true; }},
      {"--device-state", false, [&](const std::string&) { f.device_state = true; }},
      {"--timeline", true, [&](const std::string& v) { f.timeline = v; }},
      {"--store-timeout-ms", true,
       [&](const std::string& v) { f.store_timeout_ms = ParseInt("--store-timeout-ms", v, 1); }},
      {"--tp", true, [&](const std::string& v) { f.tp = ParseInt("--tp", v, 1); }},
      {"--pp", true, [&](const std::string& v) { f.pp = ParseInt("--pp", v, 1); }},
      {"--micro-batches", true, [&](const std::string& v) { f.micro_batches = ParseInt("--micro-batches", v, 1); }},
      {"--watchdog-ms", true, [&](const std::string& v) { f.watchdog_ms = ParseInt("--watchdog-ms", v, 1); }},
      {"--slow-rank", true, [&](const std::string& v) { f.slow.slow_rank = static_cast<int>(ParseInt("--slow-rank", v, 0)); }},
      {"--slowdown", true, [&](const std::string& v) { f.slow.factor = ParseFactor("--slowdown", v, 1.0); }},
      {"--slow-from-step", true, [&](const std::string& v) { f.slow.from_step = ParseInt("--slow-from-step", v, 0); }},
      {"--step-jitter", true, [&](const std::string& v) { f.slow.jitter_ms = ParseFactor("--step-jitter", v, 0.0); }},
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i], v;
    if (a == "--help" || a == "-h") {
      Usage();
      exit(0);
    }
    size_t eq = a.find('=');
    bool inline_value = eq != std::string::npos;
    if (inline_value) {
      v = a.substr(eq + 1);
      a = a.substr(0, eq);
    }
    const Opt* o = nullptr;
    for (const Opt& c : opts) {
      if (a == c.name) o = &c;
    }
    if (!o) Die("unknown flag '%s' (see --help)", argv[i]);
    if (o->has_arg && !inline_value) {
      if (i + 1 >= argc) Die("%s needs a value", o->name);
      v = argv[++i];
    } else if (!o->has_arg && inline_value) {
      Die("%s takes no value", o->name);
    }
    o->set(v);
  }
  if ((f.resume || f.checkpoint_at >= 0) && f.checkpoint_dir.empty())
    Die("--checkpoint-at/--resume need --checkpoint-dir");
  if (f.exit_after_checkpoint && f.checkpoint_at < 0) Die("--exit-after-checkpoint needs --checkpoint-at");
  if ((f.slow.slow_rank >= 0) != (f.slow.factor > 0)) Die("--slow-rank and --slowdown go together");
  if (f.device_state) {
    if (f.extra_state_mb == 0) Die("--device-state needs --extra-state-mb N with N > 0 (the region it places)");
    // Only the data-parallel workload places `extra` on the device; checkpoint files are written from and read
    // into host memory.
    if (f.Parallel3D() || f.checkpoint_at >= 0 || f.resume)
      Die("--device-state works only in the data-parallel workload: not with --tp, --pp, --checkpoint-at or --resume");
  }
  if (f.Parallel3D()) {
    if (f.tp == 0) f.tp = 1;
    if (f.pp == 0) f.pp = 1;
  }
  return f;
}

}  // namespace tm_train
