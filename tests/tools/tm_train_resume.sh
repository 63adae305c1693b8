#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Checkpoint at step K, exit, resume: the same final digest as the uninterrupted run, bit for bit
# (with the extra state too). A checkpoint from another run is refused.
set -u
TMRUN=$1 TMTRAIN=$2 BACKEND=$3
[ "$BACKEND" = hostnccl ] || { echo "SKIP: tm-train is not linked against hostnccl (not built)"; exit 77; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
args=(--steps 120 --params 4000 --seed 9 --extra-state-mb 1 --log-every 0)
digest() { sed -n 's/^\[[0-9]*\] final-state sha256:\([0-9a-f]*\)$/\1/p' "$1" | sort -u; }

"$TMRUN" -n 2 -- "$TMTRAIN" "${args[@]}" > "$tmp/full" 2>&1 || { echo "FAIL: full run"; cat "$tmp/full"; exit 1; }
full=$(digest "$tmp/full")
[ "$(echo "$full" | wc -l)" = 1 ] && [ -n "$full" ] || { echo "FAIL: full run digests: $full"; exit 1; }

"$TMRUN" -n 2 -- "$TMTRAIN" "${args[@]}" --checkpoint-dir "$tmp/ckpt" --checkpoint-at 47 --exit-after-checkpoint \
  > "$tmp/save" 2>&1 || { echo "FAIL: checkpoint run"; cat "$tmp/save"; exit 1; }
for r in 0 1; do [ -s "$tmp/ckpt/rank-$r.ckpt" ] || { echo "FAIL: no rank-$r.ckpt"; fail=1; }; done
[ -z "$(ls "$tmp/ckpt" | grep tmp)" ] || { echo "FAIL: temporary files left: $(ls "$tmp/ckpt")"; fail=1; }
[ "$(grep -c 'checkpoint step 47 saved' "$tmp/save")" = 2 ] || { echo "FAIL: no save lines"; fail=1; }
grep -q "step 50 loss" "$tmp/save" && { echo "FAIL: went on after --exit-after-checkpoint"; fail=1; }

"$TMRUN" -n 2 -- "$TMTRAIN" "${args[@]}" --checkpoint-dir "$tmp/ckpt" --checkpoint-at 47 --resume \
  > "$tmp/resume" 2>&1 || { echo "FAIL: resume run"; cat "$tmp/resume"; exit 1; }
grep -q "start_step=47" "$tmp/resume" || { echo "FAIL: did not resume at 47"; fail=1; }
resumed=$(digest "$tmp/resume")
[ "$resumed" = "$full" ] || { echo "FAIL: resumed digest $resumed != uninterrupted $full"; fail=1; }

# Wrong seed: refused, non-zero.
"$TMRUN" -n 2 -- "$TMTRAIN" --steps 120 --params 4000 --seed 10 --extra-state-mb 1 --checkpoint-dir "$tmp/ckpt" \
  --resume > "$tmp/wrong" 2>&1 && { echo "FAIL: a checkpoint of another run was accepted"; fail=1; }
grep -q "different run" "$tmp/wrong" || { echo "FAIL: no reason given"; cat "$tmp/wrong"; fail=1; }
echo "uninterrupted $full resumed $resumed"
[ $fail = 0 ] && echo "PASS"
exit $fail
