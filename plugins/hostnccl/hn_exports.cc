// SPDX-License-Identifier: Apache-2.0
// ABI glue: the exported C symbols, generated from lib/nccl_api.h. Each nccl<name> and pnccl<name> forwards
// to hn::api::<name>; the version script (hn_exports.map) exports only these.
#include "hn_api.h"

#define HN_EXPORT extern "C" __attribute__((visibility("default")))
#define HN_DEFINE(ret, name, params, args)             \
  HN_EXPORT ret nccl##name params;                     \
  HN_EXPORT ret pnccl##name params;                    \
  ret nccl##name params { return hn::api::name args; } \
  ret pnccl##name params { return hn::api::name args; }
#define HN_DEFINE_NO_PNCCL(ret, name, params, args) \
  HN_EXPORT ret nccl##name params;                  \
  ret nccl##name params { return hn::api::name args; }
TM_NCCL_API(HN_DEFINE)
TM_NCCL_API_NO_PNCCL(HN_DEFINE_NO_PNCCL)
