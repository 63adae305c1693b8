// SPDX-License-Identifier: Apache-2.0
// Prints the linker version script of libtrainmover: every NCCL function of common/nccl_api.h (ncclX and,
// where the real library has it, pncclX) and the tm* entry points; everything else local.
#include <cstdio>

#include "nccl_api.h"
#include "tm_exports.h"

int main() {
  std::printf("{\n  global:\n");
#define TM_PRINT_BOTH(ret, name, params, args) std::printf("    nccl%s;\n    pnccl%s;\n", #name, #name);
#define TM_PRINT_ONE(ret, name, params, args) std::printf("    nccl%s;\n", #name);
#define TM_PRINT_TM(name) std::printf("    %s;\n", #name);
  TM_NCCL_API(TM_PRINT_BOTH)
  TM_NCCL_API_NO_PNCCL(TM_PRINT_ONE)
  TM_SHIM_EXPORTS(TM_PRINT_TM)
  std::printf("  local:\n    *;\n};\n");
  return 0;
}
