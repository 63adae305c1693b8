// SPDX-License-Identifier: Apache-2.0
// hand_off.h: how this process's state hand-offs (a migration's, failure recovery's snapshot copies) set up
// lib/transfer: the key, the ptracer, the deadline (docs/transfer.md, "Security" and "Timeout"). Read from the
// process's configuration (TRAINMOVER_TOKEN, TRAINMOVER_TRANSFER_*, TRAINMOVER_HOLD_TIMEOUT_MS).
#ifndef TRAINMOVER_LIB_MIGRATION_HAND_OFF_H_
#define TRAINMOVER_LIB_MIGRATION_HAND_OFF_H_

#include <cstdint>
#include <string>

#include "transfer/transfer.h"

namespace trainmover::migration {

// The leaver's options: the job's token as the descriptor's key; when `destination` ("host H pid P", the
// joiner as the coordinator names it) is on this host, P as our ptracer (Yama ptrace_scope 1).
transfer::ServerOptions HandOffServerOptions(const std::string& destination);
// The joiner's (or a snapshot buddy's): the job's token as the key.
transfer::ClientOptions HandOffClientOptions();

// The deadline of reading `bytes` of state: TRAINMOVER_TRANSFER_FLOOR_MS + bytes at TRAINMOVER_TRANSFER_MIN_MBPS,
// at most INT32_MAX.
int HandOffTimeoutMs(uint64_t bytes);
// Empty when a hand-off of `bytes` fits in half of the hold deadline (the coordinator's switching deadline);
// otherwise the reason to refuse the migration, naming the parameters to change.
std::string HandOffTooSlow(uint64_t bytes);

}  // namespace trainmover::migration

#endif  // TRAINMOVER_LIB_MIGRATION_HAND_OFF_H_
