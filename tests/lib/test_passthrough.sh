#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Pass-through exactness: errors_app prints every result code and ncclGetLastError text for a list of bad
# (and a few good) calls; the output with the shim (preload and drop-in) must equal the output without it.
# usage: test_passthrough.sh SHIM DROPIN_DIR REAL_DIR ERRORS_APP
set -u
SHIM=$1 DROPIN=$2 REAL_DIR=$3 APP=$4
export HOSTNCCL_TIMEOUT_MS=20000 UCX_WARN_UNUSED_ENV_VARS=n
plain=$(LD_LIBRARY_PATH="$REAL_DIR" "$APP" 2>/dev/null) || { echo "FAIL: app failed without the shim"; exit 1; }
preload=$(LD_LIBRARY_PATH="$REAL_DIR" LD_PRELOAD="$SHIM" "$APP" 2>/dev/null)
dropin=$(LD_LIBRARY_PATH="$DROPIN:$REAL_DIR" "$APP" 2>/dev/null)
fail=0
for mode in preload dropin; do
  if d=$(diff <(echo "$plain") <(echo "${!mode}")); then
    echo "ok   $mode: $(wc -l <<<"$plain") lines identical"
  else
    echo "FAIL $mode differs from the plain run (< plain, > shim):"; echo "$d"; fail=1
  fi
done
echo "--- plain run:"; echo "$plain"
exit $fail
