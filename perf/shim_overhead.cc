// SPDX-License-Identifier: Apache-2.0
// shim_overhead: what libtrainmover adds to one NCCL call. The same 1-element float allreduce on a 1-rank
// communicator, called directly on a backend and through a shim instance bound to that same backend,
// interleaved batch by batch in one process (these machines are noisy: only paired differences count).
//
// Backends: nullnccl (does nothing: the shim's own cost) and hostnccl (a real host implementation). With
// --baseline OLD.so (another build of libtrainmover.so, e.g. before a change), a third row measures that build on
// nullnccl in the same run, so a change's cost reads as the difference of two rows measured side by side.
// Each backend gets its own shim instance: libtrainmover.so for the first, the drop-in libnccl.so.2 (the
// same code, another file, hence separate globals) for the second, each bound with TRAINMOVER_NCCL_LIBRARY.
//
// Method: R rounds; in each, a batch of B calls direct and a batch of B calls through the shim (order
// alternating); per-call time = batch time / B. Reported: median and p99 over rounds of the per-call time
// of each path and of the paired difference (added ns per call), and the ratio of medians.
#include <dlfcn.h>
#include <nccl.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
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
  struct Pair {
    std::string name, backend, shim;
  };
  std::vector<Pair> pairs = {{"nullnccl", null_lib, shim}};
  if (!host_lib.empty()) pairs.push_back({"hostnccl", host_lib, dropin});
  if (!baseline.empty()) pairs.push_back({"null/base", null_lib, baseline});
  std::vector<Row> rows;
  for (const Pair& p : pairs) {
    void* back = dlopen(p.backend.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!back) {
      fprintf(stderr, "shim_overhead: %s\n", dlerror());
      return 1;
    }
    setenv("TRAINMOVER_NCCL_LIBRARY", p.backend.c_str(), 1);  // read by the shim instance's first call
    void* sh = dlopen(p.shim.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!sh) {
      fprintf(stderr, "shim_overhead: %s\n", dlerror());
      return 1;
    }
    Api direct, through;
    if (!Load(back, &direct, p.backend.c_str()) || !Load(sh, &through, p.shim.c_str())) return 1;
    for (int w = 0; w < 20; ++w) BatchNs(direct, batch), BatchNs(through, batch);  // warm up
    std::vector<double> d, s, added;
    for (int r = 0; r < rounds; ++r) {
      double a, b;
      if (r % 2 == 0) {
        a = BatchNs(direct, batch);
        b = BatchNs(through, batch);
      } else {
        b = BatchNs(through, batch);
        a = BatchNs(direct, batch);
      }
      d.push_back(a);
      s.push_back(b);
      added.push_back(b - a);
    }
    Row row{p.name,
            Quantile(d, 0.5),
            Quantile(d, 0.99),
            Quantile(s, 0.5),
            Quantile(s, 0.99),
            Quantile(added, 0.5),
            Quantile(added, 0.99),
            Quantile(s, 0.5) / Quantile(d, 0.5)};
    rows.push_back(row);
    direct.destroy(direct.comm);
    through.destroy(through.comm);
  }
  printf("# shim_overhead: 1-element float allreduce, 1-rank communicator; %d rounds x %d calls, interleaved\n", rounds,
         batch);
  printf("# ns per call (median / p99 over rounds); added = shim - direct, paired per round; goal: added < 50 ns\n");
  printf("%-10s %12s %12s %12s %12s %12s %12s %8s\n", "backend", "direct_med", "direct_p99", "shim_med", "shim_p99",
         "added_med", "added_p99", "ratio");
  for (const Row& r : rows) {
    printf("%-10s %12.1f %12.1f %12.1f %12.1f %12.1f %12.1f %8.3f\n", r.backend.c_str(), r.direct_med, r.direct_p99,
           r.shim_med, r.shim_p99, r.added_med, r.added_p99, r.ratio);
  }
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
  js += "]}";
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
