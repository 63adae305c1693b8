#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Invalid TRAINMOVER_* values: the first NCCL call fails with ncclInvalidArgument (4), ncclGetLastError and a
# WARN line name the variable and the accepted values; trainmover-info exits non-zero naming it.
# usage: test_config.sh SHIM NULLNCCL_DIR BIND_APP [TRAINMOVER_INFO]
set -u
SHIM=$1 NULLDIR=$2 APP=$3 INFO=${4:-}
fail=0
run() { LD_PRELOAD="$SHIM" LD_LIBRARY_PATH="$NULLDIR" "$@" "$APP" 2>/tmp/tm_cfg_err.$$; }
for kv in "TRAINMOVER_ROLE=leader:worker|joiner|standby" "TRAINMOVER_SHADOW_ITERS=0:integer >= 1" \
          "TRAINMOVER_COORDINATOR=nohost:host:port" "TRAINMOVER_DEBUG=LOUD:WARN|INFO|TRACE" \
          "TRAINMOVER_REPLACE=x:integer >= 0" "TRAINMOVER_HEARTBEAT_MS=-5:integer >= 1" \
          "TRAINMOVER_TOKEN=short-token:at least 16 characters"; do
  assign=${kv%%:*}; accepted=${kv#*:}; var=${assign%%=*}
  out=$(run env "$assign")
  err=$(cat /tmp/tm_cfg_err.$$)
  if grep -q "^result 4 lasterror TrainMover: $var=.* is invalid: accepted values are $accepted" <<<"$out" &&
     grep -q "TRAINMOVER WARN $var=" <<<"$err"; then
    echo "ok   $assign -> ncclInvalidArgument"
  else
    echo "FAIL $assign: stdout '$out' stderr '$err'"; fail=1
  fi
  if [ -n "$INFO" ]; then
    if env "$assign" "$INFO" >/tmp/tm_cfg_info.$$ 2>&1; then
      echo "FAIL trainmover-info accepted $assign"; fail=1
    elif ! grep -q "$var" /tmp/tm_cfg_info.$$; then
      echo "FAIL trainmover-info did not name $var"; fail=1
    fi
  fi
done
out=$(run env TRAINMOVER_ROLE=worker TRAINMOVER_SHADOW_ITERS=3)
grep -q "^version .* result 0" <<<"$out" && echo "ok   valid values accepted" || { echo "FAIL valid: $out"; fail=1; }
if [ -n "$INFO" ]; then
  if TRAINMOVER_ROLE=joiner "$INFO" >/tmp/tm_cfg_info.$$ 2>&1 && grep -q "TRAINMOVER_ROLE.*joiner" /tmp/tm_cfg_info.$$; then
    echo "ok   trainmover-info prints values"
  else
    echo "FAIL trainmover-info:"; cat /tmp/tm_cfg_info.$$; fail=1
  fi
fi
if [ -n "$INFO" ]; then  # a token is never printed, valid or not
  if TRAINMOVER_TOKEN=the-secret-token-0123456789 "$INFO" >/tmp/tm_cfg_info.$$ 2>&1 &&
     grep -q "TRAINMOVER_TOKEN = (set, hidden)" /tmp/tm_cfg_info.$$ && ! grep -q the-secret-token /tmp/tm_cfg_info.$$ &&
     ! TRAINMOVER_TOKEN=short-token "$INFO" 2>&1 | grep -q short-token; then
    echo "ok   trainmover-info hides the token"
  else
    echo "FAIL trainmover-info shows the token:"; cat /tmp/tm_cfg_info.$$; fail=1
  fi
fi
rm -f /tmp/tm_cfg_err.$$ /tmp/tm_cfg_info.$$
exit $fail
