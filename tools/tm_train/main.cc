// SPDX-License-Identifier: Apache-2.0
// tm-train: the reference workload. Data-parallel training of a small MLP with Adam over the NCCL API only,
// deterministic, with the two optional TrainMover calls (tmRegister, tmSafePoint). See docs/tm-train.md.
#include <fcntl.h>
#include <nccl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "common/kv_store.h"
#include "model.h"
#include "slowdown.h"
#include "state.h"
#include "trainmover/trainmover.h"

namespace {

// Ranks start at different times; rank 0 publishes the NCCL id in the store within this bound.
constexpr int kStoreConnectTimeoutMs = 30000;

struct Flags {
  int64_t steps = 100;
  int64_t params = 10000;
  uint64_t seed = 1;
  int64_t init_ms = 0;
  int64_t step_ms = 0;
  int64_t extra_state_mb = 0;
  int64_t log_every = 10;
  int64_t checkpoint_at = -1;
  int64_t store_timeout_ms = 120000;
  bool exit_after_checkpoint = false;
  bool resume = false;
  std::string checkpoint_dir;
  std::string timeline;
  tm_train::Slowdown::Options slow;  // --slow-rank, --slowdown, --slow-from-step, --step-jitter (slowdown.h)
};

int g_rank = 0;

[[noreturn]] void Die(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void Die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[rank %d] tm-train: error: ", g_rank);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fflush(stdout);
  exit(1);
}

ncclComm_t g_comm = nullptr;

#define NCCLCHECK(call)                                                                                       \
  do {                                                                                                        \
    ncclResult_t res_ = (call);                                                                               \
    if (res_ != ncclSuccess) {                                                                                \
      Die("%s failed at %s:%d: %s (%d); last error: %s", #call, __FILE__, __LINE__, ncclGetErrorString(res_), \
          static_cast<int>(res_), ncclGetLastError(g_comm));                                                  \
    }                                                                                                         \
  } while (0)

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
      "  --log-every N             progress line every N steps (default 10, 0 = never)\n"
      "  --checkpoint-dir D        directory of rank-<r>.ckpt files\n"
      "  --checkpoint-at K         save the state at step K (before iteration K runs)\n"
      "  --exit-after-checkpoint   exit 0 right after saving\n"
      "  --resume                  load the checkpoint in --checkpoint-dir and continue from its step\n"
      "  --timeline FILE           append JSON lines {rank, step, t_ns} at every safe point (%%r = rank)\n"
      "  --store-timeout-ms MS     how long to wait for the unique id in the store (default 120000)\n"
      "  --slow-rank R             the process started as rank R's worker (not a joiner) is a straggler\n"
      "  --slowdown F              ... computing F times as long (e.g. 1.3); SIGUSR1 toggles it in any process\n"
      "  --slow-from-step S        ... from step S on (default 0)\n"
      "  --step-jitter MS          every step sleeps a further uniform 0..MS ms (noise; default 0)\n");
}

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
      {"--timeline", true, [&](const std::string& v) { f.timeline = v; }},
      {"--slow-rank", true, [&](const std::string& v) { f.slow.slow_rank = static_cast<int>(ParseInt("--slow-rank", v, 0)); }},
      {"--slowdown", true, [&](const std::string& v) { f.slow.factor = ParseFactor("--slowdown", v, 1.0); }},
      {"--slow-from-step", true, [&](const std::string& v) { f.slow.from_step = ParseInt("--slow-from-step", v, 0); }},
      {"--step-jitter", true, [&](const std::string& v) { f.slow.jitter_ms = ParseFactor("--step-jitter", v, 0.0); }},
      {"--store-timeout-ms", true,
       [&](const std::string& v) { f.store_timeout_ms = ParseInt("--store-timeout-ms", v, 1); }},
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
  return f;
}

int EnvInt(const char* name, int dflt) {
  const char* s = getenv(name);
  if (!s || !*s) return dflt;
  return static_cast<int>(ParseInt(name, s, 0));
}

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// Appends one JSON line per safe point. O_APPEND and one write() per line, so ranks (and a joiner) may
// share a file.
class Timeline {
 public:
  void Open(std::string path, int rank) {
    for (size_t p; (p = path.find("%r")) != std::string::npos;) path.replace(p, 2, std::to_string(rank));
    fd_ = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) Die("cannot open timeline %s: %s", path.c_str(), strerror(errno));
  }
  void Mark(int rank, int64_t step, const char* role) {
    if (fd_ < 0) return;
    int64_t ns =
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
            .count();
    char line[160];
    int n = snprintf(line, sizeof(line), "{\"rank\":%d,\"step\":%" PRId64 ",\"t_ns\":%" PRId64 ",\"role\":\"%s\"}\n",
                     rank, step, ns, role);
    if (write(fd_, line, static_cast<size_t>(n)) != n) Die("timeline write failed: %s", strerror(errno));
  }

 private:
  int fd_ = -1;
};

ncclUniqueId ExchangeUniqueId(int rank, int world, const Flags& f) {
  ncclUniqueId id;
  const char* store = getenv("TMRUN_STORE");
  if (!store || !*store) {
    if (world > 1) Die("WORLD_SIZE=%d needs TMRUN_STORE=host:port (start ranks with tmrun)", world);
    NCCLCHECK(ncclGetUniqueId(&id));
    return id;
  }
  tm_tools::KvClient kv;
  if (trainmover::base::Status st = kv.Connect(store, kStoreConnectTimeoutMs, tm_tools::StoreTokenFromEnv()); !st.ok()) {
    Die("store: %s", st.message().c_str());
  }
  const std::string key = "tm-train/nccl-unique-id";
  if (rank == 0) {
    NCCLCHECK(ncclGetUniqueId(&id));
    tm_tools::KvStatus st = kv.Set(key, std::string(id.internal, sizeof(id.internal)));
    if (st != tm_tools::KvStatus::kOk) Die("store SET %s: %s", key.c_str(), tm_tools::KvStatusName(st));
  } else {
    std::string v;
    tm_tools::KvStatus st = kv.Get(key, static_cast<uint32_t>(f.store_timeout_ms), &v);
    if (st != tm_tools::KvStatus::kOk) Die("store GET %s: %s", key.c_str(), tm_tools::KvStatusName(st));
    if (v.size() != sizeof(id.internal)) Die("store: unique id of %zu bytes", v.size());
    memcpy(id.internal, v.data(), sizeof(id.internal));
  }
  return id;
}

}  // namespace

int main(int argc, char** argv) {
  const auto t_start = std::chrono::steady_clock::now();
  setvbuf(stdout, nullptr, _IOLBF, 0);
  const int rank = EnvInt("RANK", 0);
  const int world = EnvInt("WORLD_SIZE", 1);
  g_rank = rank;
  Flags f = ParseFlags(argc, argv);
  if (world < 1 || rank >= world) Die("RANK=%d WORLD_SIZE=%d is not a valid rank", rank, world);
  const char* role = getenv("TRAINMOVER_ROLE");
  if (!role || !*role) role = "worker";

  // Emulated framework start-up (CUDA context, JIT, data loaders on a real cluster): labelled, explicit.
  if (f.init_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(f.init_ms));
  const double init_emulated_ms = MsSince(t_start);

  const tm_train::Dims dims = tm_train::DimsForParams(f.params);
  const size_t np = static_cast<size_t>(dims.NumParams());
  const tm_train::Task task(dims, f.seed);
  std::vector<float> params(np), adam_m(np, 0.0f), adam_v(np, 0.0f), grad(np);
  std::vector<float> scratch(tm_train::ScratchFloats(dims));
  std::vector<float> x(static_cast<size_t>(dims.batch * dims.in)), y(static_cast<size_t>(dims.batch * dims.out));
  const size_t extra_words = static_cast<size_t>(f.extra_state_mb) * (1u << 20) / sizeof(uint64_t);
  std::vector<uint64_t> extra(extra_words);
  tm_train::InitParams(dims, f.seed, params.data());
  tm_train::InitExtraState(f.seed, extra.data(), extra.size());

  std::vector<tm_train::Region> regions = {{"params", params.data(), np * sizeof(float)},
                                           {"adam_m", adam_m.data(), np * sizeof(float)},
                                           {"adam_v", adam_v.data(), np * sizeof(float)}};
  if (extra_words > 0) regions.push_back({"extra", extra.data(), extra_words * sizeof(uint64_t)});
  for (const tm_train::Region& r : regions) {
    tmResult_t rc = tmRegister(r.name.c_str(), r.ptr, r.bytes);
    if (rc != tmSuccess) Die("tmRegister(%s, %zu bytes) failed: %d", r.name.c_str(), r.bytes, static_cast<int>(rc));
  }

  const tm_train::CheckpointMeta meta{f.seed, dims.NumParams(), rank, world};
  int64_t step = 0;
  if (f.resume) {
    if (trainmover::base::Status st =
            tm_train::LoadCheckpoint(tm_train::CheckpointPath(f.checkpoint_dir, rank), meta, regions, &step);
        !st.ok()) {
      Die("resume: %s", st.message().c_str());
    }
  }
  const int64_t resumed_from = f.resume ? step : -1;
  if (f.checkpoint_at >= 0) {
    std::error_code ec;
    std::filesystem::create_directories(f.checkpoint_dir, ec);
    if (ec) Die("cannot create --checkpoint-dir %s: %s", f.checkpoint_dir.c_str(), ec.message().c_str());
  }

  const auto t_comm = std::chrono::steady_clock::now();
  ncclUniqueId id = ExchangeUniqueId(rank, world, f);
  NCCLCHECK(ncclCommInitRank(&g_comm, world, id, rank));
  const double comm_init_ms = MsSince(t_comm);
  const auto t_bcast = std::chrono::steady_clock::now();
  if (!f.resume) NCCLCHECK(ncclBroadcast(params.data(), params.data(), np, ncclFloat, 0, g_comm, nullptr));
  const double bcast_ms = MsSince(t_bcast);
  printf("[rank %d] init world=%d role=%s params=%" PRId64 " dims=%" PRId64 "x%" PRId64 "x%" PRId64
         " state_bytes=%zu init_emulated_ms=%.1f comm_init_ms=%.1f bcast_ms=%.1f startup_ms=%.1f start_step=%" PRId64
         "\n",
         rank, world, role, dims.NumParams(), dims.in, dims.hidden, dims.out,
         np * 3 * sizeof(float) + extra_words * sizeof(uint64_t), init_emulated_ms, comm_init_ms, bcast_ms,
         MsSince(t_start), step);

  Timeline timeline;
  if (!f.timeline.empty()) timeline.Open(f.timeline, rank);
  const tm_train::AdamConfig adam;
  const float inv_world = 1.0f / static_cast<float>(world);
  float loss_sum = 0.0f;
  tm_train::Slowdown slowdown;
  slowdown.Start(f.slow, rank, strcmp(role, "worker") == 0);

  for (;;) {
    step = tmSafePoint(step);
    timeline.Mark(rank, step, role);
    if (step == f.checkpoint_at && step != resumed_from) {
      if (trainmover::base::Status st =
              tm_train::SaveCheckpoint(tm_train::CheckpointPath(f.checkpoint_dir, rank), meta, step, regions);
          !st.ok()) {
        Die("checkpoint: %s", st.message().c_str());
      }
      printf("[rank %d] checkpoint step %" PRId64 " saved to %s\n", rank, step,
             tm_train::CheckpointPath(f.checkpoint_dir, rank).c_str());
      if (f.exit_after_checkpoint) break;
    }
    if (step >= f.steps) break;
    task.Batch(rank, step, x.data(), y.data());
    slowdown.ComputeBegin();
    float loss = tm_train::ForwardBackward(dims, params.data(), x.data(), y.data(), grad.data(), scratch.data());
    slowdown.ComputeEnd();
    NCCLCHECK(ncclAllReduce(grad.data(), grad.data(), np, ncclFloat, ncclSum, g_comm, nullptr));
    for (float& g : grad) g *= inv_world;
    tm_train::AdamStep(adam, step, np, grad.data(), params.data(), adam_m.data(), adam_v.data());
    tm_train::UpdateExtraState(f.seed, step, extra.data(), extra.size());
    loss_sum = loss;
    NCCLCHECK(ncclAllReduce(&loss_sum, &loss_sum, 1, ncclFloat, ncclSum, g_comm, nullptr));
    if (f.step_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(f.step_ms));
    slowdown.EndStep(step, f.step_ms);
    ++step;
    if (f.log_every > 0 && (step % f.log_every == 0 || step == f.steps)) {
      printf("[rank %d] step %" PRId64 " loss %.9g\n", rank, step, static_cast<double>(loss_sum * inv_world));
    }
  }

  NCCLCHECK(ncclCommDestroy(g_comm));
  g_comm = nullptr;
  printf("final-state sha256:%s\n", tm_train::StateDigest(regions).c_str());
  fflush(stdout);
  return 0;
}
