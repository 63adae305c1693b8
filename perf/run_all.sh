#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Runs the benchmarks of perf/ (./run bench [name] [--quick] [bench args...]).
#   perf/run_all.sh <builddir> [transfer|hostnccl|shim|migration|recovery|multihost|straggler|faults|all] [--quick]
#                   [args passed to the benchmark]
# Each benchmark prints its table and writes JSON (and CSV where it has one) to perf/results/.
# Ratios are against ucx_perftest run in the same invocation on the same machine (these machines are noisy).
set -euo pipefail
BUILD=${1:?usage: run_all.sh <builddir> [transfer|hostnccl|shim|migration|all] [--quick] [args]}
shift
NAME=all
if [ $# -gt 0 ] && [[ $1 != -* ]]; then NAME=$1; shift; fi
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/results
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
command -v ucx_perftest >/dev/null || echo "run_all: ucx_perftest not found (apt-get install ucx-utils); ratios will be n/a" >&2

run_one() {
  local name=$1 exe=$2
  shift 2
  if [ ! -x "$exe" ]; then
    echo "run_all: $name: $exe not built (missing dependency?)" >&2
    return 1
  fi
  echo "== $name ($(date -u +%H:%M:%SZ), $(nproc) cpus, load $(cut -d' ' -f1-3 /proc/loadavg))"
  "$exe" "$@" | tee "$OUT/$name-$STAMP.txt"
}

QUICK=()
for arg in "$@"; do [ "$arg" = --quick ] && QUICK=(--quick); done
rc=0
case $NAME in
  transfer|all)
    run_one transfer_bench "$BUILD/perf/transfer_bench" --json "$OUT/transfer_bench-$STAMP.json" \
      --csv "$OUT/transfer_bench-$STAMP.csv" "$@" || rc=1 ;;&
  hostnccl|all)
    run_one hostnccl_bench "$BUILD/perf/hostnccl_bench" --op all --json "$OUT/hostnccl_bench-$STAMP.json" "$@" \
      || rc=1 ;;&
  shim|all)
    # The shim helper's benchmark (its own script); takes only --quick.
    run_one shim_overhead "$HERE/shim_overhead.sh" "$BUILD" --json "$OUT/shim_overhead-$STAMP.json" \
      ${QUICK[@]+"${QUICK[@]}"} || rc=1 ;;&
  migration)
    # Live migration vs cold restart (perf/migration_bench.py; CSV, JSON and SVG in perf/results). Not in `all`:
    # the full sweep takes minutes. Takes --quick, --no-perftest and its own options.
    run_one migration_bench "$HERE/migration_bench.py" --build "$BUILD" --out-dir "$OUT" --stamp "$STAMP" "$@" \
      || rc=1 ;;
  recovery)
    # A failure recovered by a spawned replacement vs a cold restart from a disk checkpoint, at 2 and 4 ranks
    # (perf/recovery_bench.py over tm-harness failure). Not in `all`.
    run_one recovery_bench "$HERE/recovery_bench.py" --build "$BUILD" --json "$OUT/recovery_bench-$STAMP.json" \
      "$@" || rc=1 ;;
  multihost)
    # Migration across network namespaces next to ucx_perftest between them (perf/multihost_bench.py; root).
    run_one multihost_bench "$HERE/multihost_bench.py" --build "$BUILD" --json "$OUT/multihost_bench-$STAMP.json" \
      "$@" || rc=1 ;;
  straggler)
    # Time to detect, false positives under jitter, steps/s around the policy's migration (perf/straggler_bench.py).
    # Not in `all`: real runs of about two minutes. Takes --quick.
    run_one straggler_bench "$HERE/straggler_bench.py" --build "$BUILD" --json "$OUT/straggler_bench-$STAMP.json" \
      "$@" || rc=1 ;;
  faults)
    # The full fault matrix of a live migration (tests/faults/fault_matrix.py long: every phase x process x fault,
    # about half a minute a cell); rewrites the FAULT-MATRIX block of docs/reliability.md. Not in `all`.
    B=$(cd "$BUILD" && pwd)
    run_one fault_matrix "$HERE/../tests/faults/fault_matrix.py" "$B/tools/tmrun/tmrun" "$B/tools/tmctl/tmctl" \
      "$B/tools/tm_train/tm-train" "$B/lib/shim/libtrainmover.so" "$B/plugins/hostnccl/libnccl.so.2" \
      "$B/tools/trainmoverd/trainmoverd" long --doc "$HERE/../docs/reliability.md" "$@" || rc=1 ;;
  transfer|hostnccl|shim|all) ;;
  *) echo "run_all: unknown benchmark '$NAME' (transfer, hostnccl, shim, migration, recovery, multihost, straggler, faults, all)" >&2
     exit 2 ;;
esac
echo "results in $OUT (*-$STAMP.*)"
exit $rc
