// SPDX-License-Identifier: Apache-2.0
// shim_overhead: what libtrainmover adds to one NCCL call. The same 1-element float allreduce on a 1-rank
// communicator, called directly on a backend and through a shim instance bound to that same backend,
// interleaved batch by batch in one process (these machines are noisy: only paired differences count).
//
// Backends: nullnccl (does nothing: the shim's own cost) and hostnccl (a real host implementation). On nullnccl a
// third path is measured in the same rounds: a second shim instance (a copy of libtrainmover.so, hence its own
// globals) with TRAINMOVER_STEP_TIMING=off, so the per-call step timing (lib/core/comm_timing.h) reads as the paired
// difference of two shims that differ only in it ("step timing" line: on - off, and the ratio on/off). With
// --baseline OLD.so (another build of libtrainmover.so, e.g. before a change), a third row measures that build on
// nullnccl in the same run, so a change's cost reads as the difference of two rows measured side by side.
// Each backend gets its own shim instance: libtrainmover.so for the first, the drop-in libnccl.so.2 (the
// same code, another file, hence separate globals) for the second, each bound with TRAINMOVER_NCCL_LIBRARY.
//
// Method: R rounds; in each, a batch of B calls on every path (direct, through the shim, ...; the order rotated
// from round to round); per-call time = batch time / B. Reported: median and p99 over rounds of the per-call time
// of each path and of the paired difference with the direct path (added ns per call), and the ratio of medians.
#include <dlfcn.h>
#include <nccl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

namespace {

using AllReduceFn = ncclResult_t (*)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t, cudaStream_t);
using GetIdFn = ncclResult_t (*)(ncclUniqueId*);
using InitFn = ncclResult_t (*)(ncclComm_t*, int, ncclUniqueId, int);
using DestroyFn = ncclResult_t (*)(ncclComm_t);

struct Api {
  AllReduceFn all_reduce;
  GetIdFn get_id;
  InitFn init;
  DestroyFn destroy;
  ncclComm_t comm = nullptr;
};

bool Load(void* h, Api* api, const char* what) {
  api->all_reduce = reinterpret_cast<AllReduceFn>(dlsym(h, "ncclAllReduce"));
  api->get_id = reinterpret_cast<GetIdFn>(dlsym(h, "ncclGetUniqueId"));
  api->init = reinterpret_cast<InitFn>(dlsym(h, "ncclCommInitRank"));
  api->destroy = reinterpret_cast<DestroyFn>(dlsym(h, "ncclCommDestroy"));
  ncclUniqueId id;
  if (!api->all_reduce || !api->get_id || !api->init || api->get_id(&id) != ncclSuccess ||
      api->init(&api->comm, 1, id, 0) != ncclSuccess) {
    fprintf(stderr, "shim_overhead: cannot make a 1-rank communicator through %s\n", what);
    return false;
  }
  return true;
}

double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(q * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

double BatchNs(const Api& a, int batch) {
  float x = 1.0f, y = 0.0f;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < batch; ++i) a.all_reduce(&x, &y, 1, ncclFloat32, ncclSum, a.comm, nullptr);
  auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() / batch;
}

struct Row {
  std::string backend;
  double direct_med, direct_p99, shim_med, shim_p99, added_med, added_p99, ratio;
};

// Per-call ns of every path in every round: [path][round]. The paths' order rotates from round to round.
std::vector<std::vector<double>> Measure(const std::vector<const Api*>& paths, int rounds, int batch) {
  for (int w = 0; w < 20; ++w) {
    for (const Api* a : paths) BatchNs(*a, batch);  // warm up
  }
  std::vector<std::vector<double>> ns(paths.size());
  for (int r = 0; r < rounds; ++r) {
    for (size_t k = 0; k < paths.size(); ++k) {
      const size_t p = (k + static_cast<size_t>(r)) % paths.size();
      ns[p].push_back(BatchNs(*paths[p], batch));
    }
  }
  return ns;
}

// `through` against `direct`, paired round by round.
Row Compare(const std::string& name, const std::vector<double>& direct, const std::vector<double>& through) {
  std::vector<double> added;
  for (size_t r = 0; r < direct.size(); ++r) added.push_back(through[r] - direct[r]);
  return Row{name,
             Quantile(direct, 0.5),
             Quantile(direct, 0.99),
             Quantile(through, 0.5),
             Quantile(through, 0.99),
             Quantile(added, 0.5),
             Quantile(added, 0.99),
             Quantile(through, 0.5) / Quantile(direct, 0.5)};
}

// A private copy of a library file (dlopen of another path gives another instance, with its own globals); the
// copy is removed once loaded. nullptr on failure (message printed).
void* OpenCopy(const std::string& path, const char* tag) {
  char dir[] = "/tmp/shim_overhead-XXXXXX";
  if (!mkdtemp(dir)) return nullptr;
  const std::string copy = std::string(dir) + "/" + tag + ".so";
  {
    std::ifstream in(path, std::ios::binary);
    std::ofstream out(copy, std::ios::binary);
    out << in.rdbuf();
  }
  void* h = dlopen(copy.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) fprintf(stderr, "shim_overhead: %s\n", dlerror());
  unlink(copy.c_str());
  rmdir(dir);
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  std::string shim, dropin, null_lib, host_lib, baseline, json;
  int rounds = 300, batch = 2000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--shim")
      shim = next();
    else if (a == "--dropin")
      dropin = next();
    else if (a == "--nullnccl")
      null_lib = next();
    else if (a == "--hostnccl")
      host_lib = next();
    else if (a == "--baseline")
      baseline = next();
    else if (a == "--rounds")
      rounds = std::atoi(next().c_str());
    else if (a == "--batch")
      batch = std::atoi(next().c_str());
    else if (a == "--json")
      json = next();
    else if (a == "--quick")
      rounds = 50, batch = 500;
    else {
      fprintf(stderr,
              "usage: shim_overhead --shim libtrainmover.so --dropin dropin/libnccl.so.2 --nullnccl PATH "
              "[--hostnccl PATH] [--baseline OLD.so] [--rounds R] [--batch B] [--quick] [--json FILE]\n");
      return 2;
    }
  }
  if (shim.empty() || dropin.empty() || null_lib.empty() || rounds < 1 || batch < 1) {
    fprintf(stderr, "shim_overhead: --shim, --dropin and --nullnccl are required (see --help)\n");
    return 2;
  }
  // A backend and the shim instances bound to it (each read TRAINMOVER_* at its first call, in Load).
  struct Shim {
    std::string name;  // the row
    void* handle;
    const char* timing;  // TRAINMOVER_STEP_TIMING for this instance
  };
  struct Backend {
    std::string name, path;
    std::vector<Shim> shims;
  };
  std::vector<Backend> backends;
  {
    void* on = dlopen(shim.c_str(), RTLD_NOW | RTLD_LOCAL);
    void* off = OpenCopy(shim, "timing-off");
    if (!on || !off) {
      if (!on) fprintf(stderr, "shim_overhead: %s\n", dlerror());
      return 1;
    }
    Backend b{"nullnccl", null_lib, {{"nullnccl", on, "on"}, {"null/off", off, "off"}}};
    if (!baseline.empty()) {
      void* base = dlopen(baseline.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!base) {
        fprintf(stderr, "shim_overhead: %s\n", dlerror());
        return 1;
      }
      b.shims.push_back({"null/base", base, "on"});
    }
    backends.push_back(b);
  }
  if (!host_lib.empty()) {
    void* h = dlopen(dropin.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      fprintf(stderr, "shim_overhead: %s\n", dlerror());
      return 1;
    }
    backends.push_back({"hostnccl", host_lib, {{"hostnccl", h, "on"}}});
  }
  std::vector<Row> rows;
  Row timing_cost{};
  for (const Backend& b : backends) {
    void* back = dlopen(b.path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!back) {
      fprintf(stderr, "shim_overhead: %s\n", dlerror());
      return 1;
    }
    std::vector<Api> apis(1 + b.shims.size());
    if (!Load(back, &apis[0], b.path.c_str())) return 1;
    setenv("TRAINMOVER_NCCL_LIBRARY", b.path.c_str(), 1);
    for (size_t k = 0; k < b.shims.size(); ++k) {
      setenv("TRAINMOVER_STEP_TIMING", b.shims[k].timing, 1);
      if (!Load(b.shims[k].handle, &apis[k + 1], b.shims[k].name.c_str())) return 1;
    }
    unsetenv("TRAINMOVER_STEP_TIMING");
    std::vector<const Api*> paths;
    for (const Api& a : apis) paths.push_back(&a);
    const std::vector<std::vector<double>> ns = Measure(paths, rounds, batch);
    for (size_t k = 0; k < b.shims.size(); ++k) rows.push_back(Compare(b.shims[k].name, ns[0], ns[k + 1]));
    // The timing's own cost: the shim with it against the shim without it, paired per round.
    if (b.name == "nullnccl") timing_cost = Compare("timing", ns[2], ns[1]);
    for (Api& a : apis) a.destroy(a.comm);
  }
  printf("# shim_overhead: 1-element float allreduce, 1-rank communicator; %d rounds x %d calls, interleaved\n", rounds,
         batch);
  printf("# ns per call (median / p99 over rounds); added = shim - direct, paired per round; goal: added < 50 ns\n");
  printf("# null/off: the same shim with TRAINMOVER_STEP_TIMING=off (no per-call timing), in the same rounds\n");
  printf("%-10s %12s %12s %12s %12s %12s %12s %8s\n", "backend", "direct_med", "direct_p99", "shim_med", "shim_p99",
         "added_med", "added_p99", "ratio");
  for (const Row& r : rows) {
    printf("%-10s %12.1f %12.1f %12.1f %12.1f %12.1f %12.1f %8.3f\n", r.backend.c_str(), r.direct_med, r.direct_p99,
           r.shim_med, r.shim_p99, r.added_med, r.added_p99, r.ratio);
  }
  const Row& t = timing_cost;
  printf(
      "# step timing (nullnccl): on %.1f ns, off %.1f ns per call (medians); on - off, paired: median %.1f ns, "
      "p99 %.1f ns; ratio on/off %.3f\n",
      t.shim_med, t.direct_med, t.added_med, t.added_p99, t.ratio);
  std::string js = "{\"benchmark\":\"shim_overhead\",\"rounds\":" + std::to_string(rounds) +
                   ",\"batch\":" + std::to_string(batch) + ",\"goal_added_ns\":50,\"results\":[";
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    char buf[512];
    snprintf(buf, sizeof(buf),
             "%s{\"backend\":\"%s\",\"direct_ns_median\":%.2f,\"direct_ns_p99\":%.2f,\"shim_ns_median\":%.2f,"
             "\"shim_ns_p99\":%.2f,\"added_ns_median\":%.2f,\"added_ns_p99\":%.2f,\"ratio\":%.4f}",
             i ? "," : "", r.backend.c_str(), r.direct_med, r.direct_p99, r.shim_med, r.shim_p99, r.added_med,
             r.added_p99, r.ratio);
    js += buf;
  }
  char buf[256];
  snprintf(buf, sizeof(buf),
           "],\"step_timing\":{\"on_ns_median\":%.2f,\"off_ns_median\":%.2f,\"cost_ns_median\":%.2f,"
           "\"cost_ns_p99\":%.2f,\"ratio\":%.4f}}",
           t.shim_med, t.direct_med, t.added_med, t.added_p99, t.ratio);
  js += buf;
  printf("%s\n", js.c_str());
  if (!json.empty()) {
    FILE* f = fopen(json.c_str(), "w");
    if (f) {
      fprintf(f, "%s\n", js.c_str());
      fclose(f);
    }
  }
  return 0;
}
