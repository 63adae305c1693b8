#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The demo (docs/demo.md): tm-train on 4 ranks over hostnccl (CPU) under tmrun; the uninterrupted reference
# run, a cold restart from a checkpoint (the baseline) and a live migration of one rank under the shim with
# trainmoverd, both paying the same emulated costs: 1,800 ms framework start-up (tm-train --init-ms) and
# 1,090 ms communicator setup (HOSTNCCL_INIT_DELAY_MS); then a fresh job whose rank --kill-rank gets SIGKILL at
# the same step and is recovered (a spawned replacement, rollback; docs/recovery.md). Prints the migration's
# timeline, both downtimes, their ratio, the recovery's downtime and lost steps, and whether every rank's final
# digest equals the uninterrupted run's.
#
# Usage: tools/demo.sh <builddir> [--json] [--ranks N] [--steps N] [--params N] [--at K] [--migrate-rank R]
#                                  [--kill-rank R]
#        tools/demo.sh <builddir> --hosts [--json]   the move to another host (tools/demo_hosts.py; root)
# --json prints one JSON object (downtime_ms, cold_restart_ms, ratio, bit_identical, recovery, ...) on stdout.
# Exit status: 0 when every run finished with the reference's digests (live migration being unavailable is
# reported, not an error); non-zero on a real error.
set -euo pipefail
BUILD=${1:?usage: tools/demo.sh <builddir> [--json] [--ranks N] [--steps N] [--params N] [--at K] [--migrate-rank R] \
[--kill-rank R]}
shift
HARNESS=$(dirname "$0")/harness/tm-harness
for a in "$@"; do
  [ "$a" = --hosts ] && exec python3 "$(dirname "$0")/demo_hosts.py" "$BUILD" "${@/--hosts/}"
done
JSON=() RANKS=4 STEPS=800 PARAMS=20000 AT=100 MIGRATE=1 KILL=1
while [ $# -gt 0 ]; do
  case "$1" in
    --json) JSON=(--json) ;;
    --ranks) RANKS=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --params) PARAMS=$2; shift ;;
    --at) AT=$2; shift ;;
    --migrate-rank) MIGRATE=$2; shift ;;
    --kill-rank) KILL=$2; shift ;;
    *) echo "demo: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
command -v python3 > /dev/null || { echo "demo: python3 is needed (tools/harness/tm-harness)" >&2; exit 1; }
out=1; [ ${#JSON[@]} = 0 ] || out=2
echo "demo: tm-train, $RANKS ranks, $STEPS steps, $PARAMS parameters, NCCL = hostnccl (CPU) via tmrun;" \
  "interruption at step $AT; emulated costs: --init-ms 1800, HOSTNCCL_INIT_DELAY_MS=1090, --step-ms 5 (compute)" >&$out
exec python3 "$HARNESS" demo --build "$BUILD" --ranks "$RANKS" --steps "$STEPS" --params "$PARAMS" --at "$AT" \
  --migrate-rank "$MIGRATE" --kill-rank "$KILL" --init-ms 1800 --comm-init-ms 1090 --step-ms 5 "${JSON[@]}"
