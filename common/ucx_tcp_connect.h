// SPDX-License-Identifier: Apache-2.0
// How every UCX context of the project connects over tcp, shared by the state transfer (lib/transfer/ucx_util.cc)
// and hostnccl (plugins/hostnccl): UCX 1.13 connects with a blocking connect() inside ucp_ep_create by default
// (UCX_TCP_CONN_NB=n), which to a host that is cut off (SYNs unanswered) returns only when the kernel gives up, about
// 2 minutes later, past any deadline or abort. Non-blocking, the connection completes (or fails, through the
// endpoint's error handling) under worker progress, where every wait has its deadline. Header-only.
#pragma once

#include <ucp/api/ucp.h>

#include <cstdlib>

namespace trainmover::common {

// Asks `config` for non-blocking tcp connections, unless the environment sets UCX_TCP_CONN_NB (the user's choice).
// UCX 1.13 matches a transport's key without its "TCP_" prefix here ("TCP_CONN_NB" is accepted and does nothing:
// tests/transfer/netns.sh hangs with it).
inline ucs_status_t PreferNonBlockingTcpConnect(ucp_config_t* config) {
  if (std::getenv("UCX_TCP_CONN_NB") != nullptr) return UCS_OK;
  return ucp_config_modify(config, "CONN_NB", "y");
}

}  // namespace trainmover::common
