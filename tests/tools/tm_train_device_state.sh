#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tm-train --device-state over the stand-in libcudart (tests/fake_cuda): the `extra` region in emulated device
# memory, its per-step upload left in flight, every collective on the program's own stream. On 2 ranks under the
# shim, with the stand-in's operations slowed so that an ordering mistake would show, the digest equals the plain
# run's (no shim, no runtime); one rank without the shim too; the flag's refusals name the flags.
set -u
TMRUN=$1 TMTRAIN=$2 BACKEND=$3 SHIM=$4 HOSTNCCL=$5 FAKE_CUDART=$6
[ "$BACKEND" = hostnccl ] || { echo "SKIP: tm-train is not linked against hostnccl (not built)"; exit 77; }
for f in "$SHIM" "$HOSTNCCL" "$FAKE_CUDART"; do [ -e "$f" ] || { echo "SKIP: $f not built"; exit 77; }; done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
args=(--steps 40 --params 3000 --seed 7 --extra-state-mb 1 --log-every 0)
digest() { sed -n 's/^\(\[[0-9]*\] \)\{0,1\}final-state sha256:\([0-9a-f]*\)$/\2/p' "$1" | sort -u; }
same() {  # name, reference file, file: one digest, the reference's
  local a b
  a=$(digest "$2") b=$(digest "$3")
  echo "$1: reference $a, device state $b"
  [ -n "$a" ] && [ "$(echo "$a" | wc -l)" = 1 ] && [ "$a" = "$b" ] || { echo "FAIL: $1: digests differ"; exit 1; }
}

"$TMRUN" -n 2 --no-shim -- "$TMTRAIN" "${args[@]}" > "$tmp/plain2" 2>&1 \
  || { echo "FAIL: plain run on 2 ranks"; cat "$tmp/plain2"; exit 1; }
"$TMRUN" -n 2 --no-coordinator -- env TM_FAKE_CUDA_OP_US=2000 LD_PRELOAD="$FAKE_CUDART:$SHIM" \
  TRAINMOVER_NCCL_LIBRARY="$HOSTNCCL" "$TMTRAIN" "${args[@]}" --device-state > "$tmp/device2" 2>&1 \
  || { echo "FAIL: --device-state on 2 ranks under the shim"; cat "$tmp/device2"; exit 1; }
same "2 ranks under the shim" "$tmp/plain2" "$tmp/device2"

"$TMTRAIN" "${args[@]}" > "$tmp/plain1" 2>&1 || { echo "FAIL: plain run on 1 rank"; cat "$tmp/plain1"; exit 1; }
LD_PRELOAD="$FAKE_CUDART" "$TMTRAIN" "${args[@]}" --device-state > "$tmp/device1" 2>&1 \
  || { echo "FAIL: --device-state on 1 rank"; cat "$tmp/device1"; exit 1; }
same "1 rank" "$tmp/plain1" "$tmp/device1"

refused() {  # expected words in the message, then tm-train's flags: exit 1 with the message
  local words=$1
  shift
  LD_PRELOAD="$FAKE_CUDART" "$TMTRAIN" "$@" > "$tmp/refused" 2>&1
  local rc=$?
  [ "$rc" = 1 ] && grep -q -- "$words" "$tmp/refused" \
    || { echo "FAIL: tm-train $* exited $rc without '$words'"; cat "$tmp/refused"; exit 1; }
}
refused "needs --extra-state-mb" --device-state
refused "not with --tp, --pp, --checkpoint-at or --resume" --device-state --extra-state-mb 1 --tp 1
refused "not with --tp, --pp, --checkpoint-at or --resume" --device-state --extra-state-mb 1 \
  --checkpoint-dir "$tmp/ckpt" --checkpoint-at 3
echo PASS
