// SPDX-License-Identifier: Apache-2.0
// host.h: the name this process's host is known by in the job.
//
// TRAINMOVER_HOST when set (so that several "hosts" can share one kernel: network namespaces in tests, or
// containers on one machine), else the kernel's host name. Everything that tells one host from another
// uses it: the agent's REGISTER (tmctl status, `tmctl migrate --host H`), the state hand-off's choice
// between the same-host path and the network, log lines.
#ifndef TRAINMOVER_LIB_BASE_HOST_H_
#define TRAINMOVER_LIB_BASE_HOST_H_

#include <string>

namespace trainmover::base {

// Read once; thread-safe. Never empty ("?" when the kernel has no name either).
const std::string& HostName();

}  // namespace trainmover::base

#endif  // TRAINMOVER_LIB_BASE_HOST_H_
