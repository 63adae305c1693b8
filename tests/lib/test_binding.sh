#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Binding scenarios of libtrainmover (docs/shim.md "Binding"): each runs a small program and checks how
# the shim found the real library (its INFO line) and that the program's NCCL calls worked.
# usage: test_binding.sh SHIM DROPIN_DIR NULLNCCL_DIR BIND_APP BIND_APP_SHIM DLOPEN_APP
set -u
SHIM=$1 DROPIN=$2 NULLDIR=$3 APP=$4 APP_SHIM=$5 DLAPP=$6
LDSO=$(readelf -l "$APP" | sed -n 's/.*Requesting program interpreter: \(.*\)]/\1/p')
fail=0
check() {  # name, expected-method-regex, expected-stdout-regex, command...
  local name=$1 method=$2 want=$3; shift 3
  local out err
  out=$(env TRAINMOVER_DEBUG=INFO "$@" 2>/tmp/tm_bind_err.$$)
  err=$(cat /tmp/tm_bind_err.$$)
  if [ -n "$method" ] && ! grep -Eq "TRAINMOVER INFO bound .* \(found by $method\)" <<<"$err"; then
    echo "FAIL $name: expected binding by $method; log:"; echo "$err" | head -5; fail=1; return
  fi
  if ! grep -Eq "$want" <<<"$out"; then
    echo "FAIL $name: stdout '$out' does not match '$want'"; echo "$err" | head -5; fail=1; return
  fi
  echo "ok   $name: $(grep -Eo 'bound .*' <<<"$err" | head -1) | $out"
}
OK='version [0-9]+ result 0 sum (10|0)'
check "TRAINMOVER_NCCL_LIBRARY (preload)" "TRAINMOVER_NCCL_LIBRARY" "$OK" \
  LD_PRELOAD="$SHIM" LD_LIBRARY_PATH="$NULLDIR" TRAINMOVER_NCCL_LIBRARY="$NULLDIR/libnccl.so.2" "$APP"
check "RTLD_NEXT (preload, app linked to libnccl)" "RTLD_NEXT" "$OK" \
  LD_PRELOAD="$SHIM" LD_LIBRARY_PATH="$NULLDIR" "$APP"
check "dlopen fallback (app linked to the shim only)" "dlopen" "$OK" \
  LD_LIBRARY_PATH="$NULLDIR:$(dirname "$SHIM")" "$APP_SHIM"
check "drop-in (search of LD_LIBRARY_PATH)" "search" "$OK" \
  LD_LIBRARY_PATH="$DROPIN:$NULLDIR" "$APP"
check "drop-in + TRAINMOVER_NCCL_LIBRARY" "TRAINMOVER_NCCL_LIBRARY" "$OK" \
  LD_LIBRARY_PATH="$DROPIN" TRAINMOVER_NCCL_LIBRARY="$NULLDIR/libnccl.so.2" "$APP"
check "app dlopen()s libnccl.so.2, drop-in" "search" "version [0-9]+ result 0 shim yes" \
  LD_LIBRARY_PATH="$DROPIN:$NULLDIR" "$DLAPP"
check "TRAINMOVER_NCCL_LIBRARY = the shim itself" "" "result 2 lasterror .*is libtrainmover itself" \
  LD_PRELOAD="$SHIM" TRAINMOVER_NCCL_LIBRARY="$SHIM" LD_LIBRARY_PATH="$NULLDIR" "$APP"
check "TRAINMOVER_NCCL_LIBRARY missing file" "" "result 2 lasterror TRAINMOVER_NCCL_LIBRARY=/nonexistent/libnccl.so.2 cannot be loaded" \
  LD_PRELOAD="$SHIM" TRAINMOVER_NCCL_LIBRARY=/nonexistent/libnccl.so.2 LD_LIBRARY_PATH="$NULLDIR" "$APP"
# No real library anywhere the loader looks (cache inhibited): ncclSystemError and advice.
check "no real library" "" "result 2 lasterror .*set TRAINMOVER_NCCL_LIBRARY" \
  "$LDSO" --inhibit-cache --library-path "$(dirname "$SHIM")" "$APP_SHIM"
# The shim is the only libnccl.so.2 on the library path: no recursion; it either binds a non-shim file
# found through /etc/ld.so.conf (the system NCCL) or fails with the advice.
out=$(timeout 20 env TRAINMOVER_DEBUG=INFO "$LDSO" --inhibit-cache --library-path "$DROPIN" "$APP" 2>&1)
rc=$?
if [ $rc -ne 0 ] || grep -q "bound $DROPIN" <<<"$out"; then
  echo "FAIL shim-only drop-in: rc $rc"; echo "$out" | head -5; fail=1
else
  echo "ok   shim-only drop-in: no recursion ($(grep -Eo 'bound [^ ]*|result 2' <<<"$out" | head -1))"
fi
rm -f /tmp/tm_bind_err.$$
exit $fail
