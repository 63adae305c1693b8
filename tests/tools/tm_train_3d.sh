#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tm-train --tp 2 --pp 2 on 8 ranks (DP 2): every rank ends with its own digest (8 different ones: stages,
# TP shards and ZeRO-1 optimizer shards differ), the same run after run and under the shim (tmrun's default,
# with --hostnccl) as without it; the watchdog thread polled on every rank; a world that is not a multiple of
# TP x PP is refused naming the flags.
set -u
TMRUN=$1 TMTRAIN=$2 BACKEND=$3
[ "$BACKEND" = hostnccl ] || { echo "SKIP: tm-train is not linked against hostnccl (not built)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
args=(--tp 2 --pp 2 --steps 60 --params 3000 --seed 5 --log-every 30)
digests() { sed -n 's/^\[\([0-9]*\)\] final-state sha256:\([0-9a-f]*\)$/\1 \2/p' "$1" | sort -n; }
run() {  # name, tmrun options...
  local name=$1; shift
  "$TMRUN" -n 8 "$@" -- "$TMTRAIN" "${args[@]}" > "$tmp/$name" 2>&1 || { echo "FAIL: $name: tmrun status $?"; tail -20 "$tmp/$name"; fail=1; }
}
run plain --no-shim --no-coordinator
run again --no-shim --no-coordinator
run shim --hostnccl
a=$(digests "$tmp/plain")
[ "$(echo "$a" | wc -l)" = 8 ] || { echo "FAIL: expected 8 digests, got:"; echo "$a"; fail=1; }
[ "$(echo "$a" | cut -d' ' -f2 | sort -u | wc -l)" = 8 ] || { echo "FAIL: the 8 ranks' digests are not all different"; fail=1; }
[ "$a" = "$(digests "$tmp/again")" ] || { echo "FAIL: digests changed between runs"; fail=1; }
[ "$a" = "$(digests "$tmp/shim")" ] || { echo "FAIL: digests under the shim (--hostnccl) differ"; fail=1; }
polled=$(grep -c "watchdog: [1-9][0-9]* polling rounds over 4 communicators, no error" "$tmp/shim")
[ "$polled" = 8 ] || { echo "FAIL: $polled of 8 ranks report watchdog polling"; fail=1; }
grep -q "^\[0\] \[rank 0\] init world=8 .*layout=tp2xpp2xdp2 stage=0 tp_rank=0 dp_rank=0" "$tmp/plain" \
  || { echo "FAIL: no layout in rank 0's init line"; fail=1; }
grep -q "^\[7\] \[rank 7\] init world=8 .*stage=1 tp_rank=1 dp_rank=1" "$tmp/plain" || { echo "FAIL: rank 7's coordinates"; fail=1; }
grep -q "^\[0\] \[rank 0\] step 60 loss " "$tmp/plain" || { echo "FAIL: no progress line"; fail=1; }
# 6 ranks cannot be split 2 x 2 x D
out=$("$TMRUN" -n 6 --no-shim --no-coordinator -- "$TMTRAIN" "${args[@]}" 2>&1)
[ $? != 0 ] && grep -q "is not a multiple of tp x pp" <<<"$out" || { echo "FAIL: 6 ranks with --tp 2 --pp 2 not refused:"; echo "$out" | tail -3; fail=1; }
echo "$a"
[ $fail = 0 ] && echo PASS
exit $fail
