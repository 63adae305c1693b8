#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# hostnccl's libnccl.so.2 exports exactly the dynamic symbols of the real libnccl.so.2 (no more, no fewer),
# and never calls its own exported functions through the PLT (it sits under an interposer).
#   usage: hn_symbols.sh HOSTNCCL_LIB REAL_LIB
set -euo pipefail
lib=$1 real=$2
if [ ! -f "$real" ]; then echo "SKIP: real NCCL library $real absent"; exit 77; fi
syms() { nm -D --defined-only "$1" | awk '{print $3}' | sed 's/@.*//' | grep -v '^$' | sort -u; }
diff <(syms "$lib") <(syms "$real") || { echo "FAIL: exported symbols differ (< hostnccl, > real)"; exit 1; }
if readelf -r "$lib" | grep -E ' (p)?nccl[A-Z]' ; then echo "FAIL: PLT/GOT relocations against own API"; exit 1; fi
readelf -d "$lib" | grep -q 'SONAME.*\[libnccl.so.2\]' || { echo "FAIL: SONAME is not libnccl.so.2"; exit 1; }
echo "PASS: $(syms "$lib" | wc -l) symbols, same as $real"
