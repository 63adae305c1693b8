#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The exported (defined, dynamic) symbols of libtrainmover.so, its drop-in copy, the real libnccl.so.2 and
# the other libnccl.so.2 builds must be the same set (tm* excepted for the shim, which must export
# exactly tmShimSafePoint, tmShimRegister, tmShimUnregister, tmShimRank besides); and the shim has no global constructors.
# usage: test_symbols.sh SHIM DROPIN REAL [OTHER...]; exits 77 when REAL is absent.
set -u
SHIM=$1 DROPIN=$2 REAL=$3; shift 3
if [ ! -f "$REAL" ]; then echo "SKIP: real NCCL library $REAL not present"; exit 77; fi
syms() { nm -D --defined-only "$1" | awk '{print $3}' | sed 's/@.*//' | sort -u; }
want=$(syms "$REAL")
echo "real library: $(wc -l <<<"$want") symbols"
fail=0
for lib in "$SHIM" "$DROPIN" "$@"; do
  got=$(syms "$lib")
  tms=$(grep '^tm' <<<"$got" | tr '\n' ' ')
  case "$lib" in
    "$SHIM"|"$DROPIN")
      if [ "$tms" != "tmShimRank tmShimRegister tmShimSafePoint tmShimUnregister " ]; then
        echo "FAIL $lib: tm* exports are '$tms'"; fail=1
      fi
      got=$(grep -v '^tm' <<<"$got");;
  esac
  if d=$(diff <(echo "$want") <(echo "$got")); then
    echo "ok   $lib"
  else
    echo "FAIL $lib differs from $REAL (< missing, > extra):"; echo "$d"; fail=1
  fi
done
# Nothing runs at load time: no global constructors in the shim (house style; the shim initialises lazily).
for lib in "$SHIM" "$DROPIN"; do
  ctors=$(nm "$lib" 2>/dev/null | grep -c '_GLOBAL__sub_I' || true)
  if [ "$ctors" != 0 ]; then
    echo "FAIL $lib has $ctors global constructor(s):"; nm -C "$lib" | grep '_GLOBAL__sub_I'; fail=1
  else
    echo "ok   $lib: no global constructors"
  fi
done
exit $fail
