// SPDX-License-Identifier: Apache-2.0
#include "binding.h"

#include <dlfcn.h>
#include <glob.h>
#include <link.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "base/config.h"
#include "base/log.h"
#include "comm_timing.h"
#include "shim_state.h"
#include "tm_build_config.h"  // TM_VERSION

namespace trainmover::shim {

RealNccl g_real;
int g_init_state = static_cast<int>(InitState::kNotYet);
bool g_shim_error_set = false;

namespace {

// Function-local statics and plain arrays only: nothing runs at load time.
BindInfo& BindState() {
  static BindInfo* info = new BindInfo();  // never destroyed: calls may come from threads during exit
  return *info;
}
char g_shim_error[1024];
std::mutex g_error_mu;

// Minimum version of the real library: the ABI (ncclConfig_t, the API list) is NCCL 2.28's.
constexpr int kMinVersion = 22800;
constexpr int kMaxVersion = 30000;

// Any library that exports tmShimSafePoint is a shim (this one, or another copy of it): never bind to it.
bool IsShim(void* handle) { return dlsym(handle, "tmShimSafePoint") != nullptr; }

std::string SelfPath() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&EnsureInit), &info) && info.dli_fname) return info.dli_fname;
  return "";
}

bool SameFile(const std::string& a, const std::string& b) {
  struct stat sa, sb;
  if (stat(a.c_str(), &sa) != 0 || stat(b.c_str(), &sb) != 0) return false;
  return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

std::string HandlePath(void* handle) {
  struct link_map* lm = nullptr;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &lm) == 0 && lm && lm->l_name) return lm->l_name;
  return "";
}

// Fills g_real from `handle`. Returns false when the library lacks ncclGetVersion (not an NCCL).
bool LoadTable(void* handle) {
#define TM_LOOKUP(ret, name, params, args) g_real.name = reinterpret_cast<ret(*) params>(dlsym(handle, "nccl" #name));
  TM_NCCL_API(TM_LOOKUP)
  TM_NCCL_API_NO_PNCCL(TM_LOOKUP)
#undef TM_LOOKUP
  int missing = 0;
#define TM_COUNT_MISSING(ret, name, params, args)                                 \
  if (!g_real.name) {                                                             \
    ++missing;                                                                    \
    TM_INFO(kLogBind, "real library lacks nccl%s; calls to it will fail", #name); \
  }
  TM_NCCL_API(TM_COUNT_MISSING)
#undef TM_COUNT_MISSING
  (void)missing;
  return g_real.GetVersion != nullptr;
}

// Appends the directories named by an ld.so.conf file (and the files it includes).
void ReadLdSoConf(const char* path, std::vector<std::string>* dirs, int depth) {
  FILE* f = fopen(path, "re");
  if (!f || depth > 4) {
    if (f) fclose(f);
    return;
  }
  char line[4096];
  while (fgets(line, sizeof(line), f)) {
    char* s = line;
    if (char* hash = strchr(s, '#')) *hash = '\0';
    while (*s == ' ' || *s == '\t') ++s;
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' ' || s[n - 1] == '\t')) s[--n] = '\0';
    if (n == 0) continue;
    if (strncmp(s, "include", 7) == 0 && (s[7] == ' ' || s[7] == '\t')) {
      char* pat = s + 8;
      while (*pat == ' ' || *pat == '\t') ++pat;
      glob_t g{};
      if (glob(pat, 0, nullptr, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; ++i) ReadLdSoConf(g.gl_pathv[i], dirs, depth + 1);
      }
      globfree(&g);
    } else if (s[0] == '/') {
      dirs->push_back(s);
    }
  }
  fclose(f);
}

// dlopen("libnccl.so.2") returned the shim (drop-in mode: our own file is libnccl.so.2 on the path).
// Look for the next libnccl.so.2 in LD_LIBRARY_PATH and the standard directories, skipping our file.
void* SearchPath(const std::string& self, std::string* found) {
  std::vector<std::string> dirs;
  if (const char* lp = getenv("LD_LIBRARY_PATH")) {
    std::string s(lp);
    size_t pos = 0;
    while (pos <= s.size()) {
      size_t c = s.find(':', pos);
      dirs.push_back(s.substr(pos, c == std::string::npos ? std::string::npos : c - pos));
      if (c == std::string::npos) break;
      pos = c + 1;
    }
  }
  ReadLdSoConf("/etc/ld.so.conf", &dirs, 0);  // what the ld.so cache was built from
  for (const char* d :
       {"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}) {
    dirs.push_back(d);
  }
  for (const std::string& d : dirs) {
    if (d.empty()) continue;
    std::string p = d + "/libnccl.so.2";
    if (access(p.c_str(), R_OK) != 0 || SameFile(p, self)) continue;
    void* h = dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      TM_INFO(kLogBind, "skipping %s: %s", p.c_str(), dlerror());
      continue;
    }
    if (IsShim(h)) {
      dlclose(h);
      continue;
    }
    *found = p;
    return h;
  }
  return nullptr;
}

ncclResult_t Bind(const Config& cfg) {
  std::string self = SelfPath();
  void* h = nullptr;
  std::string method;
  if (!cfg.nccl_library.empty()) {
    method = "TRAINMOVER_NCCL_LIBRARY";
    if (SameFile(cfg.nccl_library, self)) {
      SetShimError("TRAINMOVER_NCCL_LIBRARY=%s is libtrainmover itself; set it to the real libnccl.so.2",
                   cfg.nccl_library.c_str());
      return ncclSystemError;
    }
    h = dlopen(cfg.nccl_library.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      SetShimError("TRAINMOVER_NCCL_LIBRARY=%s cannot be loaded: %s", cfg.nccl_library.c_str(), dlerror());
      return ncclSystemError;
    }
    if (IsShim(h)) {
      SetShimError("TRAINMOVER_NCCL_LIBRARY=%s is a TrainMover shim, not a real NCCL", cfg.nccl_library.c_str());
      return ncclSystemError;
    }
  } else {
    // The next definition after us in the global lookup order (LD_PRELOAD with the app linked to NCCL).
    Dl_info info{};
    void* next = dlsym(RTLD_NEXT, "ncclGetVersion");
    if (next && dladdr(next, &info) && info.dli_fname && !SameFile(info.dli_fname, self)) {
      void* cand = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
      if (cand && !IsShim(cand)) {
        h = cand;
        method = "RTLD_NEXT";
      } else if (cand) {
        dlclose(cand);
      }
    }
    if (!h) {
      void* cand = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
      if (cand && !IsShim(cand)) {
        h = cand;
        method = "dlopen";
      } else if (cand) {
        // Drop-in mode: the libnccl.so.2 the loader gives is this shim. Look for the next one.
        dlclose(cand);
        std::string found;
        h = SearchPath(self, &found);
        if (h) method = "search";
      }
    }
    if (!h) {
      SetShimError(
          "TrainMover: no real NCCL library found (not linked, not on the library path); set "
          "TRAINMOVER_NCCL_LIBRARY to the path of the real libnccl.so.2");
      return ncclSystemError;
    }
  }
  if (!LoadTable(h)) {
    SetShimError(
        "TrainMover: %s (%s) does not export ncclGetVersion; set TRAINMOVER_NCCL_LIBRARY to the real "
        "libnccl.so.2",
        HandlePath(h).c_str(), method.c_str());
    return ncclSystemError;
  }
  int version = 0;
  ncclResult_t r = g_real.GetVersion(&version);
  if (r != ncclSuccess || version < kMinVersion || version >= kMaxVersion) {
    SetShimError(
        "TrainMover: %s reports NCCL version %d; this shim needs NCCL 2.x >= 2.28 (set "
        "TRAINMOVER_NCCL_LIBRARY to a matching libnccl.so.2)",
        HandlePath(h).c_str(), version);
    return ncclSystemError;
  }
  BindState().path = HandlePath(h);
  BindState().method = method;
  BindState().version = version;
  BindState().handle = h;
  TM_INFO(kLogBind, "bound %s (found by %s), NCCL version %d", BindState().path.c_str(), method.c_str(), version);
  return ncclSuccess;
}

ncclResult_t g_init_result = ncclSuccess;

}  // namespace

const BindInfo& GetBindInfo() { return BindState(); }

ncclResult_t EnsureInit() {
  static std::once_flag once;
  std::call_once(once, [] {
    const ConfigResult& cr = ConfigGet();
    base::LogConfigure(cr.config.debug, cr.config.debug_subsys, cr.config.debug_file.c_str());
    g_comm_timing.store(cr.config.step_timing != "off", std::memory_order_relaxed);
    if (!cr.error.empty()) {
      // Debug settings may be the invalid ones: the warning is printed at WARN whatever they say.
      SetShimError("TrainMover: %s", cr.error.c_str());
      TM_WARN(kLogInit, "%s", cr.error.c_str());
      g_init_result = ncclInvalidArgument;
    } else {
      TM_INFO(kLogInit, "libtrainmover %s, role %s%s%s", TM_VERSION, RoleName(cr.config.role),
              cr.config.coordinator.empty() ? "" : ", coordinator ", cr.config.coordinator.c_str());
      g_init_result = Bind(cr.config);
      if (g_init_result != ncclSuccess) TM_WARN(kLogBind, "%s", ShimErrorOrNull());
    }
    // The agent (and its VComm observer) starts before the shim is marked ready: another thread's NCCL call that
    // finds the shim ready finds the observer installed, so no communicator goes unreported.
    if (g_init_result == ncclSuccess && !cr.config.coordinator.empty()) {
      if (&tmAgentStart != nullptr) {
        tmAgentStart(&cr.config);
      } else {
        TM_WARN(kLogInit, "TRAINMOVER_COORDINATOR is set but this build has no agent; running as pass-through");
      }
    }
    __atomic_store_n(&g_init_state,
                     static_cast<int>(g_init_result == ncclSuccess ? InitState::kReady : InitState::kFailed),
                     __ATOMIC_RELEASE);
  });
  return g_init_result;
}

void SetShimError(const char* fmt, ...) {
  std::lock_guard<std::mutex> lock(g_error_mu);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_shim_error, sizeof(g_shim_error), fmt, ap);
  va_end(ap);
  __atomic_store_n(&g_shim_error_set, true, __ATOMIC_RELEASE);
}

void ClearShimError() {
  // A failed bind or bad configuration stays the answer for good.
  if (g_init_state != static_cast<int>(InitState::kFailed))
    __atomic_store_n(&g_shim_error_set, false, __ATOMIC_RELEASE);
}

const char* ShimErrorOrNull() { return __atomic_load_n(&g_shim_error_set, __ATOMIC_ACQUIRE) ? g_shim_error : nullptr; }

}  // namespace trainmover::shim
