#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tm-train on 1, 2 and 4 ranks under tmrun: the same digest on every rank, and run after run; the digest is
# each rank's last line; the timeline has one line per safe point.
set -u
TMRUN=$1 TMTRAIN=$2 BACKEND=$3
[ "$BACKEND" = hostnccl ] || { echo "SKIP: tm-train is not linked against hostnccl (not built)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
steps=150
declare -A first
for n in 1 2 4; do
  for run in 1 2; do
    d="$tmp/n$n-r$run"
    "$TMRUN" -n $n --output-dir "$d" -- "$TMTRAIN" --steps $steps --params 3000 --seed 5 --log-every 50 \
      --timeline "$d/timeline.jsonl" > /dev/null 2>&1
    rc=$?
    [ $rc = 0 ] || { echo "FAIL: n=$n run $run: tmrun status $rc"; cat "$d"/rank-*.log; fail=1; continue; }
    digests=$(for r in $(seq 0 $((n - 1))); do tail -n 1 "$d/rank-$r.log"; done | sort -u)
    if [ "$(echo "$digests" | wc -l)" != 1 ] || ! [[ "$digests" =~ ^final-state\ sha256:[0-9a-f]{64}$ ]]; then
      echo "FAIL: n=$n run $run: last lines differ or are not digests:"; echo "$digests"; fail=1; continue
    fi
    lines=$(wc -l < "$d/timeline.jsonl")
    [ "$lines" = $(( n * (steps + 1) )) ] || { echo "FAIL: n=$n: $lines timeline lines"; fail=1; }
    grep -q "^\[rank 0\] init world=$n .*startup_ms=" "$d/rank-0.log" || { echo "FAIL: no init line"; fail=1; }
    grep -q "^\[rank 0\] step $steps loss " "$d/rank-0.log" || { echo "FAIL: no progress line"; fail=1; }
    if [ $run = 1 ]; then first[$n]=$digests
    elif [ "${first[$n]}" != "$digests" ]; then echo "FAIL: n=$n digest changed between runs"; fail=1; fi
  done
  echo "n=$n: ${first[$n]:-}"
done
# Different world sizes see different data, so their digests differ.
[ "${first[1]:-a}" != "${first[2]:-a}" ] || { echo "FAIL: n=1 and n=2 digests are equal"; fail=1; }
[ $fail = 0 ] && echo "PASS"
exit $fail
