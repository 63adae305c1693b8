// SPDX-License-Identifier: Apache-2.0
// What several transfer tests need besides their data (test_pattern.h): whole reads and writes on a pipe to a forked
// leaver, and whether UCX here can address CUDA device memory.
#ifndef TRAINMOVER_TESTS_TRANSFER_TEST_SUPPORT_H_
#define TRAINMOVER_TESTS_TRANSFER_TEST_SUPPORT_H_

#include <ucp/api/ucp.h>
#include <unistd.h>

#include <cstddef>

namespace transfer_test {

inline bool WriteAll(int fd, const void* p, size_t n) {
  for (const char* c = static_cast<const char*>(p); n > 0;) {
    const ssize_t w = write(fd, c, n);
    if (w <= 0) return false;
    c += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

inline bool ReadAll(int fd, void* p, size_t n) {
  for (char* c = static_cast<char*>(p); n > 0;) {
    const ssize_t r = read(fd, c, n);
    if (r <= 0) return false;
    c += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

// Whether UCX here (default configuration, as the client's) can address CUDA device memory: 1 yes, 0 no, -1 UCX
// does not start. A context of its own, gone on return.
inline int UcxSupportsCuda() {
  ucp_config_t* config = nullptr;
  if (ucp_config_read(nullptr, nullptr, &config) != UCS_OK) return -1;
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES;
  params.features = UCP_FEATURE_RMA;
  ucp_context_h context = nullptr;
  const ucs_status_t st = ucp_init(&params, config, &context);
  ucp_config_release(config);
  if (st != UCS_OK) return -1;
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  int cuda = -1;
  if (ucp_context_query(context, &attr) == UCS_OK) cuda = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
  ucp_cleanup(context);
  return cuda;
}

}  // namespace transfer_test

#endif  // TRAINMOVER_TESTS_TRANSFER_TEST_SUPPORT_H_
