// SPDX-License-Identifier: Apache-2.0
// straggler_fp: false positives of the straggler detector (lib/control/straggler.h) per 10,000 steps, fed with
// synthetic windows of measured-shaped noise, and the time to flag a straggler in the same noise.
//
// Noise model (per step, per rank, independent): compute = base * (1 + U(0, jitter)) plus, with probability p, a
// preemption of U(3, 10) ms: the shape measured on the shared 2-core development machine (docs/stragglers.md,
// "Noise"). Windows of W steps, 8 ranks, the default detector parameters unless given. Deterministic (seeded).
//   straggler_fp [--steps N] [--window W] [--json FILE] [--straggler-threshold F --straggler-windows N ...]
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "control/straggler.h"

namespace ctl = trainmover::control;

namespace {

struct Noise {
  const char* name;
  double jitter;   // relative uniform jitter
  double preempt;  // probability of a 3..10 ms preemption per step
};

struct Sim {
  std::mt19937_64 rng{2026};
  double base_ms = 10;
  int window = 50;
  ctl::StepWindow Window(const Noise& n, double slow) {
    std::uniform_real_distribution<double> u(0, 1), pre(3, 10);
    std::vector<double> ms;
    ctl::StepWindow w{static_cast<uint32_t>(window), 0, static_cast<uint64_t>(window * 1e6), 0};
    for (int i = 0; i < window; ++i) {
      double c = base_ms * slow * (1 + n.jitter * u(rng)) + (u(rng) < n.preempt ? pre(rng) : 0);
      ms.push_back(c);
      w.compute_ns += static_cast<uint64_t>(c * 1e6);
    }
    w.compute_p25_ns = static_cast<uint64_t>(ctl::LowerQuartile(ms) * 1e6);
    return w;
  }
  // Runs `steps` steps of 8 ranks (rank 5 slowed by `slow` after the first 10 windows, past the warm-up);
  // returns the flags, and in *first_flag_step the steps from the slowdown to rank 5's first flag (-1: never).
  int Run(const Noise& n, const ctl::StragglerParams& p, long steps, double slow, long* first_flag_step) {
    ctl::StragglerDetector d(p);
    std::vector<ctl::StragglerChange> ch;
    int flags = 0;
    *first_flag_step = -1;
    for (long s = 0; s < steps; s += window) {
      std::vector<ctl::RankSample> in;
      const long from = 10L * window;
      for (int r = 0; r < 8; ++r) {
        in.push_back(ctl::RankSample{static_cast<uint64_t>(r + 1), r, Window(n, r == 5 && s >= from ? slow : 1)});
      }
      ch.clear();
      d.Round(in, static_cast<uint64_t>(s), &ch);
      for (const ctl::StragglerChange& c : ch) {
        if (!c.flagged) continue;
        ++flags;
        if (c.rank == 5 && *first_flag_step < 0) *first_flag_step = s + window - 10L * window;
      }
    }
    return flags;
  }
};

}  // namespace

const char kUsage[] =
    "usage: straggler_fp [--steps N] [--window W] [--json FILE] [--straggler-threshold F] [--straggler-windows N]\n"
    "                    [--straggler-clear F] [--straggler-clear-windows N]\n";

int main(int argc, char** argv) {
  long steps = 1000000;
  int window = 50;
  std::string json_path;
  ctl::StragglerOptions opt;  // the detector's parameters: trainmoverd's --straggler-* flags, its parser
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const std::string v = i + 1 < argc ? argv[i + 1] : "";
    std::string err;
    int r = ctl::ParseStragglerFlag(a, v, &opt, &err);
    if (r == 0 && i + 1 < argc && (a == "--steps" || a == "--window" || a == "--json")) {
      r = 1;
      if (a == "--steps") steps = atol(v.c_str());
      if (a == "--window") window = atoi(v.c_str());
      if (a == "--json") json_path = v;
    }
    if (r != 1 || steps < 1 || window < 1) {
      fprintf(stderr, "straggler_fp: %s\n%s", err.empty() ? ("bad argument " + a).c_str() : err.c_str(), kUsage);
      return 2;
    }
    ++i;
  }
  if (std::string err = opt.detector.Check(); !err.empty()) {
    fprintf(stderr, "straggler_fp: %s\n%s", err.c_str(), kUsage);
    return 2;
  }
  const Noise noises[] = {{"quiet", 0.02, 0.0},
                          {"jitter 50%", 0.5, 0.0},
                          {"jitter 50% + preempt 10%", 0.5, 0.1},
                          {"jitter 50% + preempt 30%", 0.5, 0.3}};
  const ctl::StragglerParams& p = opt.detector;
  printf(
      "# straggler_fp: 8 ranks, 10 ms base compute, windows of %d steps, %ld steps per noise, threshold %.2f, "
      "%d windows (synthetic, measured-shaped noise)\n",
      window, steps, p.threshold, p.flag_windows);
  printf("%-28s %18s", "noise", "false_pos/10k");
  const double slows[] = {1.1, 1.2, 1.5, 2.0};
  for (double s : slows) printf("  detect@%.1fx(steps)", s);
  printf("\n");
  std::string json = "[";
  int wrong = 0;  // quiet noise flagged, or a 2x straggler never flagged: the detector is broken
  for (const Noise& n : noises) {
    Sim sim;
    sim.window = window;
    long unused;
    int fp = sim.Run(n, p, steps, 1.0, &unused);
    const double per10k = fp * 10000.0 / static_cast<double>(steps);
    printf("%-28s %18.4f", n.name, per10k);
    if (n.jitter < 0.1 && fp > 0) ++wrong;
    json += std::string(json.size() > 1 ? "," : "") + "{\"noise\":\"" + n.name +
            "\",\"false_positives_per_10k_steps\":" + std::to_string(per10k) + ",\"detect_steps\":{";
    for (size_t k = 0; k < sizeof(slows) / sizeof(slows[0]); ++k) {
      long at = -1;
      sim.Run(n, p, 200L * window, slows[k], &at);
      printf("  %19s", at < 0 ? "never" : std::to_string(at).c_str());
      if (slows[k] >= 2 && at < 0) ++wrong;
      json += std::string(k ? "," : "") + "\"" + std::to_string(slows[k]).substr(0, 3) + "\":" + std::to_string(at);
    }
    json += "}}";
    printf("\n");
  }
  json += "]";
  printf("# wrong: %d (quiet noise flagged, or a 2x straggler never flagged)\n", wrong);
  printf("%s\n", json.c_str());
  if (!json_path.empty()) {
    FILE* f = fopen(json_path.c_str(), "w");
    if (f) {
      fprintf(f, "%s\n", json.c_str());
      fclose(f);
    }
  }
  return wrong ? 1 : 0;
}
