#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The shim's overhead, in one run: (1) perf/shim_overhead (ns added per NCCL call, on nullnccl and hostnccl,
# interleaved); (2) tm-train steps/s with and without the shim (LD_PRELOAD), 1 rank and 3 ranks (tmrun),
# interleaved repetitions, median steps/s and ratio (goal: within 1%).
#   perf/shim_overhead.sh <builddir> [--quick] [--json FILE]
set -euo pipefail
BUILD=${1:?usage: shim_overhead.sh <builddir> [--quick] [--json FILE]}
shift
QUICK=0 JSON=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --json) JSON=$2; shift ;;
    *) echo "shim_overhead.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
SHIM=$BUILD/lib/shim/libtrainmover.so DROPIN=$BUILD/lib/shim/dropin/libnccl.so.2
NULL=$BUILD/plugins/nullnccl/libnccl.so.2 HN=$BUILD/plugins/hostnccl/libnccl.so.2
TRAIN=$BUILD/tools/tm_train/tm-train TMRUN=$BUILD/tools/tmrun/tmrun
export HOSTNCCL_TIMEOUT_MS=20000 UCX_WARN_UNUSED_ENV_VARS=n

calls_json=$("$BUILD/perf/shim_overhead" --shim "$SHIM" --dropin "$DROPIN" --nullnccl "$NULL" --hostnccl "$HN" \
             $([ $QUICK = 1 ] && echo --quick) | tee /dev/stderr | tail -1)

STEPS=$([ $QUICK = 1 ] && echo 400 || echo 2000)
REPS=$([ $QUICK = 1 ] && echo 3 || echo 5)
train_json=""
TL=$(mktemp -d)
trap 'rm -rf "$TL"' EXIT
# Runs tm-train (preload 0/1) and prints rank 0's steady-state time in ns from safe point 1 to the last one, read
# from its --timeline (start-up, binding and the first step's warm-up excluded: they are not per-step cost).
run_train() {  # preload(0/1), command...
  local pre=$1; shift
  rm -f "$TL/t.jsonl"
  if [ "$pre" = 1 ]; then
    LD_PRELOAD="$SHIM" LD_LIBRARY_PATH="$(dirname "$HN")" "$@" --timeline "$TL/t.jsonl" >/dev/null 2>&1
  else
    LD_LIBRARY_PATH="$(dirname "$HN")" "$@" --timeline "$TL/t.jsonl" >/dev/null 2>&1
  fi
  awk -F'[:,}]' '$2 == 0 && $4 == 1 {a = $6} $2 == 0 && $4 > last {last = $4; b = $6} END {print b - a}' "$TL/t.jsonl"
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
if [ -x "$TRAIN" ]; then
  printf "\n# tm-train (hostnccl, %d steps, %d interleaved repetitions; steady state: rank 0 safe points 1 to last)\n" "$STEPS" "$REPS"
  printf "%-10s %14s %14s %8s\n" "ranks" "plain_steps/s" "shim_steps/s" "ratio"
  for ranks in 1 3; do
    if [ $ranks = 1 ]; then cmd=("$TRAIN" --steps "$STEPS" --log-every 0)
    elif [ -x "$TMRUN" ]; then cmd=("$TMRUN" -n $ranks --no-shim -- "$TRAIN" --steps "$STEPS" --log-every 0)
    else continue; fi
    plain=() shim=()
    for r in $(seq "$REPS"); do
      if [ $((r % 2)) = 1 ]; then plain+=("$(run_train 0 "${cmd[@]}")"); shim+=("$(run_train 1 "${cmd[@]}")")
      else shim+=("$(run_train 1 "${cmd[@]}")"); plain+=("$(run_train 0 "${cmd[@]}")"); fi
    done
    pm=$(printf "%s\n" "${plain[@]}" | median) sm=$(printf "%s\n" "${shim[@]}" | median)
    line=$(awk -v s="$STEPS" -v p="$pm" -v q="$sm" -v n=$ranks \
      'BEGIN {ps=(s-2)/(p/1e9); qs=(s-2)/(q/1e9); printf "%-10d %14.1f %14.1f %8.4f|{\"ranks\":%d,\"plain_steps_per_s\":%.2f,\"shim_steps_per_s\":%.2f,\"ratio\":%.4f}", n, ps, qs, qs/ps, n, ps, qs, qs/ps}')
    echo "${line%%|*}"
    train_json+="${train_json:+,}${line#*|}"
  done
fi
all="{\"calls\":$calls_json,\"tm_train\":[$train_json]}"
echo "$all"
[ -n "$JSON" ] && echo "$all" > "$JSON"
exit 0
