// SPDX-License-Identifier: Apache-2.0
// The one list of TRAINMOVER_* parameters. Everything else is produced from it: the typed fields of Config
// (config.h), the parser and its error messages (config.cc), trainmover-info's listing and its --markdown
// table (which is the table in docs/configuration.md; tests/lib/test_config_doc.sh fails when the page is
// stale) and `tmctl env`.
//
// X(NAME, field, Type, Parse, "kind", "default", "accepted", "description")
//   NAME      the variable is TRAINMOVER_<NAME>
//   field     the member of Config, of type Type
//   Parse     bool Parse(const char* value, const char* accepted, Type* out): the value -> the field
//   kind      the type as the documentation names it
//   default   as text, parsed by Parse into the field's initial value; "" = unset (strings empty, integers
//             -1, enums their first value)
//   accepted  the accepted values in words; ParseInt reads its bounds from "integer >= N" or "integer >= N and
//             <= M" (every time in milliseconds has one: 30 days, so deadlines in nanoseconds cannot overflow),
//             ParseOneOf its choices from "a|b|c"
// Adding a parameter: one row here; then regenerate the doc table (trainmover-info --markdown).
#pragma once

// clang-format off
#define TM_PARAMS(X)                                                                                          \
  X(NCCL_LIBRARY, nccl_library, std::string, ParseText, "path", "", "path of an existing file",            \
    "The real NCCL library to forward to. Unset: the next libnccl in the process (RTLD_NEXT), else "          \
    "dlopen(\"libnccl.so.2\") skipping the shim itself (docs/shim.md, Binding).")                             \
  X(COORDINATOR, coordinator, std::string, ParseCoordinator, "host:port", "", "host:port (port 1..65535), [v6]:port", \
    "Address of trainmoverd. Unset: plain pass-through, nothing else changes.")                              \
  X(TOKEN, token, std::string, ParseSecret, "string", "", "at least 16 characters",                         \
    "The job's shared secret: it authenticates the handshake of every control connection, and the keys that " \
    "encrypt and authenticate every later frame are derived from it (docs/protocol.md). Never printed.")      \
  X(ROLE, role, Role, ParseRole, "enum", "worker", "worker|joiner|standby",                                  \
    "worker: a normal rank. joiner: replaces a rank; starts in the sandbox (no real communicators, "          \
    "collectives emulated locally). standby: a spare started with the job's command line; warms up in the "   \
    "sandbox as the rank its launcher gave it (RANK) and waits; on a failure the coordinator may make it the " \
    "failed rank's replacement (docs/recovery.md, \"Standbys\"). Any case.")                                 \
  X(REPLACE, replace, int64_t, ParseInt, "int", "", "integer >= 0",                                          \
    "The rank a joiner takes over. Required for a joiner: a joiner without it is told to exit (no migration " \
    "waits for it).")                                                                                          \
  X(HOST, host, std::string, ParseHostName, "string", "", "a name of 1..255 characters without blanks",     \
    "The name this process's host is known by in the job (tmctl status, tmctl migrate --host/--to, node "     \
    "agents, the choice between the same-host state path and the network). Unset: the kernel's host name. "   \
    "Set it where several hosts share one kernel (network namespaces, containers).")                         \
  X(DEBUG, debug, LogLevel, ParseLevel, "enum", "WARN", "WARN|INFO|TRACE",                                   \
    "Log level (any case). Lines look like NCCL's: host:pid:tid [rank] TRAINMOVER LEVEL msg.")               \
  X(DEBUG_FILE, debug_file, std::string, ParseText, "pattern", "", "file name pattern (%h host, %p pid)",    \
    "Write the log to this file instead of stderr.")                                                          \
  X(DEBUG_SUBSYS, debug_subsys, uint32_t, ParseSubsys, "list", "ALL",                                        \
    "comma list of INIT,BIND,COMM,COLL,STATE,SANDBOX,CONTROL,MIGRATION,TRANSFER,AGENT,ALL",                  \
    "Subsystems to log. COLL (one line per operation, TRACE) is only on when named; AGENT is "                \
    "CONTROL,MIGRATION.")                                                                                     \
  X(SHADOW_ITERS, shadow_iters, int64_t, ParseInt, "int", "1", "integer >= 1",                               \
    "Safe points a joiner runs in the sandbox before it reports READY.")                                     \
  X(HEARTBEAT_MS, heartbeat_ms, int64_t, ParseInt, "int", "1000",                                             \
    "integer >= 1 and <= 2592000000",                                                                         \
    "Upper bound of the agent's heartbeat interval, in milliseconds: it heartbeats every min(this, the "       \
    "interval the coordinator gives, max(20, its heartbeat timeout / 4)).")                                   \
  X(COORDINATOR_TIMEOUT_MS, coordinator_timeout_ms, int64_t, ParseInt, "int", "10000",                        \
    "integer >= 100 and <= 2592000000",                                                                       \
    "Agent: a coordinator connection silent this long (no frame, not even its KEEPALIVE every heartbeat "    \
    "interval) is dropped and re-made, so a frozen coordinator or a cut link is noticed. At least five of "   \
    "the coordinator's heartbeat intervals are always allowed: more than its heartbeat timeout, so a live "   \
    "process never closes its connection first (docs/reliability.md).")                      \
  X(HOLD_TIMEOUT_MS, hold_timeout_ms, int64_t, ParseInt, "int", "120000",                                     \
    "integer >= 1000 and <= 2592000000",                                                                      \
    "The longest a process is held at a migration's switch step. A process held this long without the "     \
    "coordinator's decision abandons the migration and continues on its current communicators; the "        \
    "coordinator never sends SWITCH later than half of it after COMMIT (it aborts instead). Give it at "      \
    "least twice the longest state hand-off (docs/reliability.md).")                                        \
  X(TRANSFER_MIN_MBPS, transfer_min_mbps, int64_t, ParseInt, "int", "100", "integer >= 1",                 \
    "The slowest state hand-off to wait for, in MB/s (10^6 bytes): a joiner gives its read of S bytes "       \
    "TRAINMOVER_TRANSFER_FLOOR_MS + S / this before it fails, and refuses the migration before anyone is "   \
    "held when that exceeds half of TRAINMOVER_HOLD_TIMEOUT_MS (docs/transfer.md, Timeout).")                \
  X(TRANSFER_FLOOR_MS, transfer_floor_ms, int64_t, ParseInt, "int", "10000",                                  \
    "integer >= 100 and <= 2592000000",                                                                       \
    "The fixed part of the state hand-off's deadline, in milliseconds (connection, the leaver's checksums, " \
    "a small state); the part that grows with the state is set by TRAINMOVER_TRANSFER_MIN_MBPS.")           \
  X(PHASE_TIMEOUT_MS, phase_timeout_ms, int64_t, ParseInt, "int", "600000",                                   \
    "integer >= 1000 and <= 2592000000",                                                                      \
    "Coordinator: the longest a migration may stay in spawning, sandbox, ready, building or agreeing; "      \
    "past it the migration is aborted and training continues undisturbed. Process: the longest it builds a "  \
    "replacement communicator before it gives up; a joiner exits when SWITCH has not come within twice this " \
    "plus TRAINMOVER_HOLD_TIMEOUT_MS of its READY (a standby: of its ASSIGN; docs/reliability.md).")           \
  X(TAPE_MAX_BYTES, tape_max_bytes, int64_t, ParseInt, "int", "67108864", "integer >= 0",                    \
    "Leaver: bytes of operation outputs its sandbox tape may hold (one iteration recorded for the joiner); "  \
    "operations beyond it are recorded by signature only and emulated by the joiner. 0: signatures only "     \
    "(docs/migration.md, The tape).")                                                                         \
  X(SEAL_OVERLAP, seal_overlap, std::string, ParseOneOf, "enum", "auto", "auto|on|off",                     \
    "Leaver at the switch point: on = report AT_STEP first and checksum the state while the joiner already "  \
    "reads it; off = checksum first; auto = on unless the joiner is on this host and it has under 8 CPUs "    \
    "(both sides hashing at once then slow each other down, docs/migration.md).")                             \
  X(HUGE_PAGES, huge_pages, std::string, ParseOneOf, "enum", "on", "on|off",                               \
    "State transfer (docs/transfer.md, Huge pages): on = the leaver's exposed regions, the joiner's prepared "  \
    "ones and the snapshot slots are collapsed into transparent huge pages (MADV_COLLAPSE of each region's "  \
    "2 MiB-aligned interior, best effort, contents unchanged) before the switch, so the same-host read walks "\
    "2 MiB pages instead of 4 KiB ones; costs a copy of the state in the build phase. off = pages untouched.") \
  X(RECOVERY, recovery, std::string, ParseOneOf, "enum", "on", "on|off",                                   \
    "Failure recovery (docs/recovery.md): on = with a coordinator, a program that calls tmSafePoint keeps "   \
    "snapshots of its registered state on a buddy rank, and when a rank dies the survivors roll back to the " \
    "newest snapshot complete everywhere while a replacement takes the dead rank's place; off = no snapshots, " \
    "a dead rank fails the job as it would without the shim.")                                                \
  X(SNAPSHOT_EVERY, snapshot_every, int64_t, ParseEvery, "int or auto", "1", "integer >= 1, or auto",     \
    "Failure recovery: a snapshot of the registered state at every N-th safe point (steps divisible by N); "  \
    "a recovery loses at most N steps. auto (0 in the field): a power of two the coordinator picks and "      \
    "distributes, the smallest that keeps every rank's snapshot cost under TRAINMOVER_SNAPSHOT_BUDGET "       \
    "(docs/recovery.md, Adaptive interval); set it on every rank alike.")                                     \
  X(SNAPSHOT_BUDGET, snapshot_budget, double, ParseFraction, "fraction", "0.02", "a number > 0 and <= 1",    \
    "Failure recovery with TRAINMOVER_SNAPSHOT_EVERY=auto: the share of the step time that snapshots may "     \
    "cost a rank (its copy plus its wait for the buddy's pull, per snapshot, over the interval's steps).")    \
  X(SNAPSHOT_COPIES, snapshot_copies, int64_t, ParseInt, "int", "1", "integer >= 1",                        \
    "Failure recovery: buddies holding a copy of each rank's snapshot (on other hosts when there are any); "  \
    "a recovery survives the loss of up to N-1 of them together with the rank.")                             \
  X(SNAPSHOT_MEMORY, snapshot_memory, double, ParseFraction, "fraction", "0.5", "a number > 0 and <= 1",     \
    "Failure recovery: the share of this host's memory (MemTotal, or the cgroup's limit when lower) that the " \
    "job's snapshots on this host may take, split evenly over its LOCAL_WORLD_SIZE processes (1 when unset). " \
    "A process whose 4 snapshots plus the copies it holds for TRAINMOVER_SNAPSHOT_COPIES ranks would not fit " \
    "in its share takes none (one WARN with the figures; a failure of its rank is then refused) instead of "  \
    "risking the job to the out-of-memory killer; a buddy refuses a copy that would not fit.")                 \
  X(COMM_POLL_MS, comm_poll_ms, int64_t, ParseInt, "int", "200",                                              \
    "integer >= 0 and <= 2592000000",                                                                         \
    "Failure recovery: how often a background thread (tm-commpoll) asks ncclCommGetAsyncError of each real "  \
    "communicator, so that a peer the NCCL library reports failed is reported to the coordinator even while " \
    "the program calls nothing; the coordinator probes that communicator's members and declares one that "    \
    "does not answer failed (docs/recovery.md, Detection). 0: no poll.")                                      \
  X(STEP_TIMING, step_timing, std::string, ParseOneOf, "enum", "on", "on|off",                            \
    "Step timing for the straggler detector (docs/stragglers.md): on = every blocking NCCL call is timed "     \
    "(two time-stamp counter reads and one relaxed atomic add) and the heartbeat carries the step window; "    \
    "off = nothing timed and no window sent (the detector does not see this process). For measuring its cost " \
    "(perf/shim_overhead) or ruling it out.")                                                                 \
  X(FAULT, fault, std::string, ParseOneOf, "enum", "",                                                        \
    "corrupt-transfer|pass-first-proposal|slow-commit|slow-ready|slow-transfer|slow-first-op|slow-switch|"   \
    "tamper-descriptor",                                                                                      \
    "Test knob, never for production: corrupt-transfer makes a joiner's state checksums fail (the migration " \
    "must abort and training continue); pass-first-proposal makes rank 0 answer its first switch proposal "  \
    "with PASSED (the coordinator must propose again and release the ranks held at the first one); "          \
    "slow-commit makes a coordinator send COMMIT 3 s after the last ACCEPT, the ranks held at the agreed step " \
    "meanwhile (a wide agreeing phase for the fault matrix); slow-ready makes a joiner wait 3 s after its "   \
    "shadow iterations before it sends READY (a wide sandbox phase); "                                        \
    "slow-transfer makes a joiner wait 3 s before it reads the state (a wide switching phase for the fault "  \
    "tests, docs/reliability.md); slow-first-op makes a joiner wait 3 s after it switched in, so that the "  \
    "stayers wait in their first operation on the replacements (the fault matrix's first-op cells); "        \
    "slow-switch makes a joiner wait 3 s after SWITCH came before it switches in (and confirms it), a wide "  \
    "window for a replacement lost after a recovery's switch (docs/recovery.md); "                            \
    "tamper-descriptor makes a leaver change one byte of its transfer descriptor after it was MACed, as an "  \
    "attacker on the way would (the joiner must refuse it and training continue).")
// clang-format on
