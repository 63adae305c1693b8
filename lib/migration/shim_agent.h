// SPDX-License-Identifier: Apache-2.0
// shim_agent.h: the agent inside libtrainmover. Compiled into the shim only (it uses lib/core/shim_state.h).
//
// The shim calls tmAgentStart(config) once, after a successful initialisation, when
// TRAINMOVER_COORDINATOR is set (lib/core/binding.cc). tmAgentStart creates the process's Agent, installs the
// VComm observer (communicator created/destroyed), the safe-point hook (reports the step) and a tick that
// polls the region table. The control layer logs through the same logger (base/log.h).
//
// Migration (process.cc) then owns the safe-point hook: it calls ShimAgentSafePoint(step) from its own hook
// so progress keeps being reported, and it installs its command handler with ShimAgent().
#ifndef TRAINMOVER_LIB_CONTROL_SHIM_AGENT_H_
#define TRAINMOVER_LIB_CONTROL_SHIM_AGENT_H_

#include <cstdint>

#include "control/agent.h"

namespace trainmover::shim {
struct VComm;
}

namespace trainmover::control {

// The COMM_CREATED report of a VComm (its current comm_key, lineage, rank, nranks).
CommCreated DescribeVComm(const shim::VComm* v);

// The process's agent, or nullptr when TRAINMOVER_COORDINATOR is unset or the shim is not initialised.
// Thread-safe; the agent lives until the process exits.
Agent* ShimAgent();

// Reports a safe point to the agent (lock-free; no-op without an agent).
void ShimAgentSafePoint(int64_t step);

}  // namespace trainmover::control

#endif  // TRAINMOVER_LIB_CONTROL_SHIM_AGENT_H_
