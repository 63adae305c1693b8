#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tm-train's final state digests under the shim (preload and drop-in) equal those without it: 1 rank
# directly, and 3 ranks through tmrun when it is built.
# usage: test_tm_train.sh SHIM DROPIN_DIR HOSTNCCL_DIR TM_TRAIN [TMRUN]
set -u
SHIM=$1 DROPIN=$2 HN=$3 TRAIN=$4 TMRUN=${5:-}
export HOSTNCCL_TIMEOUT_MS=20000 UCX_WARN_UNUSED_ENV_VARS=n
fail=0
digests() { grep -o 'final-state sha256:[0-9a-f]*' | sort; }
compare() {  # name, command...
  local name=$1; shift
  local plain preload dropin
  plain=$(LD_LIBRARY_PATH="$HN" "$@" 2>&1 | digests)
  preload=$(LD_LIBRARY_PATH="$HN" LD_PRELOAD="$SHIM" "$@" 2>&1 | digests)
  dropin=$(LD_LIBRARY_PATH="$DROPIN:$HN" "$@" 2>&1 | digests)
  if [ -z "$plain" ]; then echo "FAIL $name: no digest without the shim"; fail=1; return; fi
  if [ "$plain" == "$preload" ] && [ "$plain" == "$dropin" ]; then
    echo "ok   $name: $(wc -l <<<"$plain") digest(s) identical ($(head -1 <<<"$plain" | cut -c1-40)...)"
  else
    echo "FAIL $name:"; echo "plain:   $plain"; echo "preload: $preload"; echo "dropin:  $dropin"; fail=1
  fi
}
compare "tm-train 1 rank" "$TRAIN" --steps 30 --log-every 0
# A 1-rank job in the joiner sandbox: every collective is emulated locally, and with n = 1 the emulation
# is exact, so the digest must equal the real run's.
plain=$(LD_LIBRARY_PATH="$HN" "$TRAIN" --steps 30 --log-every 0 2>&1 | digests)
sandbox=$(LD_LIBRARY_PATH="$HN" LD_PRELOAD="$SHIM" TRAINMOVER_ROLE=joiner TRAINMOVER_DEBUG=INFO \
          "$TRAIN" --steps 30 --log-every 0 2>&1)
if [ -n "$plain" ] && [ "$plain" == "$(digests <<<"$sandbox")" ] && grep -q "(sandboxed)" <<<"$sandbox"; then
  echo "ok   tm-train 1 rank in the joiner sandbox: digest identical"
else
  echo "FAIL sandbox run:"; echo "$sandbox" | tail -5; fail=1
fi
if [ -n "$TMRUN" ]; then
  compare "tm-train 3 ranks (tmrun)" "$TMRUN" -n 3 --no-shim -- "$TRAIN" --steps 30 --log-every 0
fi
exit $fail
