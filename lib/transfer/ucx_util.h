// SPDX-License-Identifier: Apache-2.0
// UCX set-up shared by the leaver (server.cc) and the joiner's UCX path (ucx_path.cc).
#ifndef TRAINMOVER_LIB_TRANSFER_UCX_UTIL_H_
#define TRAINMOVER_LIB_TRANSFER_UCX_UTIL_H_

#include <ucp/api/ucp.h>

#include <string>
#include <vector>

#include "transfer.h"

namespace trainmover::transfer::detail {

Status UcxError(const std::string& what, ucs_status_t st);

// A context with RMA (and wake-up for the server's sleeping progress thread). Transports come from
// `transports` when given, else from UCX_TLS/UCX's defaults. Unless the user chose otherwise with
// UCX_KEEPALIVE_INTERVAL, peers are checked every second so that a dead leaver is noticed quickly.
// Null on failure.
Status MakeContext(const std::string& transports, bool wakeup, ucp_context_h* context);
// A worker of `context` (UCS_THREAD_MODE_SERIALIZED: one thread at a time); null on failure.
Status MakeWorker(ucp_context_h context, ucp_worker_h* worker);
// Both; nothing is left on failure.
Status MakeContextAndWorker(const std::string& transports, bool wakeup, ucp_context_h* context, ucp_worker_h* worker);

ucs_memory_type_t UcsType(MemoryType t);

// What a mapping allows. Never remote write: the leaver's regions and control block are read by the joiner,
// and the joiner's regions are only the local end of its gets.
enum class Access { kLocal, kRemoteRead };

// Maps [ptr, ptr+size) with `access` (ucp_mem_map's protection flags; transports that register memory with
// the NIC enforce them, docs/transfer.md says where UCX cannot). `type` kAuto lets UCX detect; *found
// (optional) reports what it is. `rkey` (optional) receives the packed remote key.
Status MapRegion(ucp_context_h context, void* ptr, size_t size, MemoryType type, Access access, ucp_mem_h* memh,
                 std::vector<uint8_t>* rkey, MemoryType* found);

}  // namespace trainmover::transfer::detail

#endif  // TRAINMOVER_LIB_TRANSFER_UCX_UTIL_H_
