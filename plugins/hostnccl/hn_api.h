// SPDX-License-Identifier: Apache-2.0
// The internal implementation of every exported function, declared from the one X-macro list. The exported
// nccl<name>/pnccl<name> symbols (hn_exports.cc) forward here; nothing inside the library calls an exported
// symbol, so an interposer above the library is never re-entered.
#pragma once

#include "nccl_api.h"

namespace hn::api {
#define HN_DECLARE(ret, name, params, args) ret name params;
TM_NCCL_API(HN_DECLARE)
TM_NCCL_API_NO_PNCCL(HN_DECLARE)
#undef HN_DECLARE
}  // namespace hn::api
