#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tmrun forwards SIGTERM (and SIGINT) to every rank and exits with 128 + the signal.
set -u
TMRUN=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

for sig in TERM INT; do
  rm -f "$tmp"/got.* "$tmp"/ready.*
  "$TMRUN" -n 3 -- bash -c "trap 'echo \$RANK > $tmp/got.\$RANK; exit 0' $sig; touch $tmp/ready.\$RANK; while :; do sleep 0.05; done" \
    > "$tmp/out" 2>&1 &
  pid=$!
  for _ in $(seq 200); do [ "$(ls "$tmp"/ready.* 2>/dev/null | wc -l)" = 3 ] && break; sleep 0.05; done
  kill -s "$sig" "$pid"
  wait "$pid"
  rc=$?
  n=$(ls "$tmp"/got.* 2>/dev/null | wc -l)
  [ "$n" = 3 ] || { echo "FAIL: SIG$sig reached $n of 3 ranks"; cat "$tmp/out"; fail=1; }
  want=$(( 128 + $(kill -l "$sig") ))
  [ "$rc" = "$want" ] || { echo "FAIL: tmrun status $rc after SIG$sig, expected $want"; fail=1; }
done
[ $fail = 0 ] && echo "PASS"
exit $fail
