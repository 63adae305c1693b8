// SPDX-License-Identifier: Apache-2.0
// The tm* functions libtrainmover exports besides the NCCL API (include/trainmover/trainmover.h resolves
// them at run time). The export map is generated from this list and lib/nccl_api.h.
#pragma once

#define TM_SHIM_EXPORTS(X) \
  X(tmShimSafePoint)       \
  X(tmShimRegister)        \
  X(tmShimUnregister)      \
  X(tmShimRank)
