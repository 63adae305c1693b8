// SPDX-License-Identifier: Apache-2.0
// The one parser of network addresses written as text (TRAINMOVER_COORDINATOR, --listen, TMRUN_STORE, ...).
#pragma once

#include <cstdint>
#include <string>

#include "base/status.h"

namespace trainmover::base {

// Accepts "host:port" and "[v6]:port" (the brackets are removed from *host); port is decimal 0..65535
// (0 asks the kernel for a free port when listening; callers that connect reject it). The host is not
// resolved here. The error names the text and what is wrong with it.
Status ParseHostPort(const std::string& s, std::string* host, uint16_t* port);

}  // namespace trainmover::base
