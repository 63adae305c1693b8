// SPDX-License-Identifier: Apache-2.0
#include "driver.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include "trainmover/trainmover.h"

namespace tm_train {
namespace {

// Ranks start at different times; a publisher sets its id in the store within this bound.
constexpr int kStoreConnectTimeoutMs = 30000;

int g_error_rank = 0;

// Appends one JSON line per safe point. O_APPEND and one write() per line, so ranks (and a joiner) may
// share a file.
class Timeline {
 public:
  void Open(std::string path, int rank) {
    for (size_t p; (p = path.find("%r")) != std::string::npos;) path.replace(p, 2, std::to_string(rank));
    fd_ = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd_ < 0) Die("cannot open timeline %s: %s", path.c_str(), strerror(errno));
  }
  ~Timeline() {
    if (fd_ >= 0) close(fd_);
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

}  // namespace

void SetErrorRank(int rank) { g_error_rank = rank; }

void Die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "[rank %d] tm-train: error: ", g_error_rank);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  fflush(stdout);
  exit(1);
}

int EnvInt(const char* name, int dflt) {
  const char* s = getenv(name);
  if (!s || !*s) return dflt;
  char* end = nullptr;
  errno = 0;
  long long x = strtoll(s, &end, 10);
  if (*end != '\0' || errno != 0 || x < 0 || x > INT32_MAX) Die("%s: expected an integer >= 0, got '%s'", name, s);
  return static_cast<int>(x);
}

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

IdStore::IdStore(int world, const Flags& f) : timeout_ms_(static_cast<uint32_t>(f.store_timeout_ms)) {
  const char* store = getenv("TMRUN_STORE");
  if (!store || !*store) {
    if (world > 1) Die("WORLD_SIZE=%d needs TMRUN_STORE=host:port (start ranks with tmrun)", world);
    return;
  }
  if (trainmover::base::Status st = kv_.Connect(store, kStoreConnectTimeoutMs, tm_tools::StoreTokenFromEnv());
      !st.ok()) {
    Die("store: %s", st.message().c_str());
  }
  connected_ = true;
}

ncclUniqueId IdStore::Get(const std::string& key, bool publisher) {
  ncclUniqueId id;
  if (!connected_) {
    NCCLCHECK(ncclGetUniqueId(&id));
    return id;
  }
  if (publisher) {
    NCCLCHECK(ncclGetUniqueId(&id));
    tm_tools::KvStatus st = kv_.Set(key, std::string(id.internal, sizeof(id.internal)));
    if (st != tm_tools::KvStatus::kOk) Die("store SET %s: %s", key.c_str(), tm_tools::KvStatusName(st));
  } else {
    std::string v;
    tm_tools::KvStatus st = kv_.Get(key, timeout_ms_, &v);
    if (st != tm_tools::KvStatus::kOk) Die("store GET %s: %s", key.c_str(), tm_tools::KvStatusName(st));
    if (v.size() != sizeof(id.internal)) Die("store: unique id %s of %zu bytes", key.c_str(), v.size());
    memcpy(id.internal, v.data(), sizeof(id.internal));
  }
  return id;
}

void RegisterRegions(const std::vector<Region>& regions) {
  for (const Region& r : regions) {
    tmResult_t rc = tmRegister(r.name.c_str(), r.ptr, r.bytes);
    if (rc != tmSuccess) Die("tmRegister(%s, %zu bytes) failed: %d", r.name.c_str(), r.bytes, static_cast<int>(rc));
  }
}

int64_t PrepareCheckpoint(const Flags& f, const CheckpointMeta& meta, const std::vector<Region>& regions) {
  int64_t step = 0;
  if (f.resume) {
    if (trainmover::base::Status st = LoadCheckpoint(CheckpointPath(f.checkpoint_dir, meta.rank), meta, regions, &step);
        !st.ok()) {
      Die("resume: %s", st.message().c_str());
    }
  }
  if (f.checkpoint_at >= 0) {
    std::error_code ec;
    std::filesystem::create_directories(f.checkpoint_dir, ec);
    if (ec) Die("cannot create --checkpoint-dir %s: %s", f.checkpoint_dir.c_str(), ec.message().c_str());
  }
  return step;
}

void TrainLoop(const Flags& f, RankInfo& who, const CheckpointMeta& meta, const std::vector<Region>& regions,
               int64_t step, const Iteration& iteration) {
  Timeline timeline;
  if (!f.timeline.empty()) timeline.Open(f.timeline, who.rank);
  const int64_t resumed_from = f.resume ? step : -1;
  Slowdown slowdown;
  slowdown.Start(f.slow, who.rank, std::string(who.role) == "worker");
  for (;;) {
    if (!f.no_safe_points) step = tmSafePoint(step);
    if (const int rank = f.fixed_rank ? who.rank : tmRank(who.rank); rank != who.rank) {
      printf("[rank %d] standby warmed up as rank %d takes the place of rank %d at step %" PRId64 "\n", rank, who.rank,
             rank, step);
      who.rank = rank;
      SetErrorRank(rank);
    }
    timeline.Mark(who.rank, step, who.role);
    if (step == f.checkpoint_at && step != resumed_from) {
      const std::string path = CheckpointPath(f.checkpoint_dir, who.rank);
      CheckpointMeta held = meta;
      held.rank = who.rank;
      if (trainmover::base::Status st = SaveCheckpoint(path, held, step, regions); !st.ok()) {
        Die("checkpoint: %s", st.message().c_str());
      }
      printf("[rank %d] checkpoint step %" PRId64 " saved to %s\n", who.rank, step, path.c_str());
      if (f.exit_after_checkpoint) return;
    }
    if (step >= f.steps) return;
    slowdown.ComputeBegin();
    const float loss = iteration(step);
    slowdown.ComputeEnd();
    if (f.step_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(f.step_ms));
    slowdown.EndStep(step, f.step_ms);
    ++step;
    if (f.log_every > 0 && (step % f.log_every == 0 || step == f.steps)) {
      printf("[rank %d] step %" PRId64 " loss %.9g\n", who.rank, step, static_cast<double>(loss));
    }
  }
}

}  // namespace tm_train
