#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The key-value store protocol's fuzz target (fuzz_kv.cc), run for a bounded number of inputs through
# tests/run_libfuzzer.sh. Usage: run_fuzz_kv.sh SOURCE_ROOT BUILD_DIR [RUNS]. Exit 77 without clang/libFuzzer.
set -euo pipefail
src=$1
out=$2/fuzz_kv
runs=${3:-20000}
mkdir -p "$out/corpus"
# A seed: SET k=7, ADD k+=5, GET k (timeout 0).
{
  printf '\x01\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01k7'
  printf '\x03\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x08k\x00\x00\x00\x00\x00\x00\x00\x05'
  printf '\x02\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x04k\x00\x00\x00\x00'
} > "$out/corpus/seed-set-add-get"
cp "$src"/tests/tools/fuzz_regressions/* "$out/corpus/" 2>/dev/null || true
exec "$src/tests/run_libfuzzer.sh" "$out" fuzz_kv_store "$runs" -- -I"$src/lib" -I"$src/tools" -I"$src/common" \
  "$src/tests/tools/fuzz_kv.cc" "$src/tools/common/kv_store.cc" "$src/lib/base/crypto.cc" \
  "$src/lib/base/hostport.cc" "$src/lib/base/status.cc" "$src/lib/base/log.cc" -lcrypto -lpthread
