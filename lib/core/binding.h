// SPDX-License-Identifier: Apache-2.0
// Binding to the real NCCL library: the function-pointer table generated from nccl_api.h and the
// one-time initialisation (configuration, logging, finding and checking the real library).
#pragma once

#include <string>

#include "nccl_api.h"

namespace trainmover::shim {

// One pointer per NCCL function, named like the function without the nccl prefix. A pointer is null
// when the real library lacks that symbol (the shim's function then fails with ncclInvalidUsage).
struct RealNccl {
#define TM_REAL_FIELD(ret, name, params, args) ret(*name) params = nullptr;
  TM_NCCL_API(TM_REAL_FIELD)
  TM_NCCL_API_NO_PNCCL(TM_REAL_FIELD)
#undef TM_REAL_FIELD
};

extern RealNccl g_real;

enum class InitState : int { kNotYet = 0, kReady = 1, kFailed = 2 };
extern int g_init_state;  // InitState; written once under call_once, read after EnsureInit

struct BindInfo {
  std::string path;    // the file bound
  std::string method;  // "TRAINMOVER_NCCL_LIBRARY", "RTLD_NEXT", "dlopen", "search"
  int version = 0;     // real ncclGetVersion
  void* handle = nullptr;
};
const BindInfo& GetBindInfo();

// Runs the one-time initialisation (idempotent, thread-safe). Returns ncclSuccess, or the code every NCCL
// call must fail with (ncclInvalidArgument: bad configuration; ncclSystemError: no real library), with
// the message set as the shim's last error.
ncclResult_t EnsureInit();

inline bool Ready() {
  return __builtin_expect(__atomic_load_n(&g_init_state, __ATOMIC_ACQUIRE) == static_cast<int>(InitState::kReady), 1);
}

// The last-error text when the shim itself failed a call. ncclGetLastError returns it while set;
// a call that the real library fails clears it (so the real text shows again).
void SetShimError(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void ClearShimError();
const char* ShimErrorOrNull();
extern bool g_shim_error_set;

}  // namespace trainmover::shim
