#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tm-train with libtrainmover preloaded (pass-through, no coordinator) ends with the same digest as without.
set -u
TMRUN=$1 TMTRAIN=$2 BACKEND=$3 SHIM=$4
[ "$BACKEND" = hostnccl ] || { echo "SKIP: tm-train is not linked against hostnccl (not built)"; exit 77; }
[ -e "$SHIM" ] || { echo "SKIP: $SHIM not built"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=(--steps 80 --params 3000 --seed 3 --extra-state-mb 1 --log-every 0)
digest() { sed -n 's/^\[[0-9]*\] final-state sha256:\([0-9a-f]*\)$/\1/p' "$1" | sort -u; }
"$TMRUN" -n 2 --no-shim -- "$TMTRAIN" "${args[@]}" > "$tmp/plain" 2>&1 || { echo "FAIL: plain run"; cat "$tmp/plain"; exit 1; }
"$TMRUN" -n 2 -- env LD_PRELOAD="$SHIM" "$TMTRAIN" "${args[@]}" > "$tmp/shim" 2>&1 \
  || { echo "FAIL: run under the shim"; cat "$tmp/shim"; exit 1; }
a=$(digest "$tmp/plain") b=$(digest "$tmp/shim")
echo "plain $a shim $b"
[ -n "$a" ] && [ "$(echo "$a" | wc -l)" = 1 ] && [ "$a" = "$b" ] || { echo "FAIL: digests differ"; exit 1; }
echo PASS
