// SPDX-License-Identifier: Apache-2.0
// host.h: the name and the address this process's host is known by in the job.
//
// The name is TRAINMOVER_HOST when set (so that several "hosts" can share one kernel: network namespaces in
// tests, or containers on one machine), else the kernel's host name. Everything that tells one host from
// another uses it: the agent's REGISTER (tmctl status, `tmctl migrate --host H`, node agents), the state
// hand-off's choice between the same-host path and the network, log lines.
//
// The address is the one the job reaches this host at: the local end of the agent's connection to the
// coordinator (the coordinator's network is the job's). The state hand-off gives UCX the interface that
// holds it, so that bytes between hosts take the network the job runs on (UCX_NET_DEVICES, when the user
// sets it, wins).
#ifndef TRAINMOVER_LIB_BASE_HOST_H_
#define TRAINMOVER_LIB_BASE_HOST_H_

#include <cstdint>
#include <string>

namespace trainmover::base {

// Read once; thread-safe. Never empty ("?" when the kernel has no name either).
const std::string& HostName();

// The address the job knows this host by ("" until the agent connected). Thread-safe.
std::string HostAddress();
void SetHostAddress(const std::string& ip);

// The name of the local interface that holds IPv4 address `ip` ("" when none does, or for a loopback
// address, which says nothing about the network between hosts).
std::string InterfaceOf(const std::string& ip);

// The memory this process's host gives it: MemTotal from `meminfo`, or the lowest cgroup limit on it when that is
// lower (v2 `memory.max`, v1 `memory.limit_in_bytes`, of the cgroup named in `cgroup` and of its ancestors, under
// `cgroup_root`); 0 when none can be read. The paths are
// parameters for the tests; HostMemoryBytes() reads this process's (/proc/meminfo, /proc/self/cgroup, /sys/fs/cgroup).
uint64_t HostMemoryBytes(const std::string& meminfo, const std::string& cgroup, const std::string& cgroup_root);
uint64_t HostMemoryBytes();

}  // namespace trainmover::base

#endif  // TRAINMOVER_LIB_BASE_HOST_H_
