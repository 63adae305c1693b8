#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The demo: tm-train on 4 ranks under tmrun over hostnccl (CPU), progress, then the final digests, which
# must all be equal. Usage: tools/demo.sh <builddir> [--json] [--ranks N] [--steps N] [--params N]
# Exit status: 0 when every rank finished with the same digest, non-zero otherwise.
set -euo pipefail
BUILD=${1:?usage: tools/demo.sh <builddir> [--json] [--ranks N] [--steps N] [--params N]}
shift
JSON=0 RANKS=4 STEPS=300 PARAMS=20000
while [ $# -gt 0 ]; do
  case "$1" in
    --json) JSON=1 ;;
    --ranks) RANKS=$2; shift ;;
    --steps) STEPS=$2; shift ;;
    --params) PARAMS=$2; shift ;;
    *) echo "demo: unknown argument '$1'" >&2; exit 2 ;;
  esac
  shift
done
TMRUN=$BUILD/tools/tmrun/tmrun
TMTRAIN=$BUILD/tools/tm_train/tm-train
for b in "$TMRUN" "$TMTRAIN"; do [ -x "$b" ] || { echo "demo: $b not built" >&2; exit 1; }; done
[ -e "$BUILD/plugins/hostnccl/libnccl.so.2" ] || { echo "demo: hostnccl not built" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
say() { [ $JSON = 1 ] && echo "$@" >&2 || echo "$@"; }

say "demo: tm-train, $RANKS ranks, $STEPS steps, $PARAMS parameters, NCCL = hostnccl (CPU) via tmrun"
start=$(date +%s%N)
set +e
# tmrun relays every rank's output with a "[r] " prefix; keep a copy to check the digests.
"$TMRUN" -n "$RANKS" -- "$TMTRAIN" --steps "$STEPS" --params "$PARAMS" --seed 1 --log-every 50 2>&1 \
  | tee "$tmp/out" | { if [ $JSON = 1 ]; then cat >&2; else cat; fi; }
rc=${PIPESTATUS[0]}
set -e
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))

mapfile -t digests < <(sed -n 's/^\[\([0-9]*\)\] final-state sha256:\([0-9a-f]\{64\}\)$/\1 \2/p' "$tmp/out" | sort -n)
unique=$(printf '%s\n' "${digests[@]#* }" | sort -u | grep -c . || true)
ok=0
if [ "$rc" = 0 ] && [ "${#digests[@]}" = "$RANKS" ] && [ "$unique" = 1 ]; then ok=1; fi

if [ $JSON = 1 ]; then
  printf '{"ranks":%d,"steps":%d,"params":%d,"tmrun_status":%d,"elapsed_ms":%d,"digests":[' \
    "$RANKS" "$STEPS" "$PARAMS" "$rc" "$elapsed_ms"
  sep=""
  for d in "${digests[@]}"; do printf '%s{"rank":%s,"sha256":"%s"}' "$sep" "${d% *}" "${d#* }"; sep=","; done
  printf '],"all_equal":%s}\n' "$([ $ok = 1 ] && echo true || echo false)"
else
  echo
  echo "final digests:"
  for d in "${digests[@]}"; do echo "  rank ${d% *}: ${d#* }"; done
  if [ $ok = 1 ]; then
    echo "demo: PASS: all $RANKS ranks finished with the same state digest (${elapsed_ms} ms)"
  else
    echo "demo: FAIL: tmrun status $rc, ${#digests[@]} of $RANKS digests, $unique distinct"
  fi
fi
[ $ok = 1 ]
