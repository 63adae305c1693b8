#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# hostnccl's bootstrap decoders' fuzz target (fuzz_bootstrap.cc), run for a bounded number of inputs through
# tests/run_libfuzzer.sh. Usage: run_fuzz.sh SOURCE_ROOT BUILD_DIR [RUNS]. Exit 77 without clang/libFuzzer.
set -euo pipefail
src=$1
out=$2/fuzz_bootstrap
runs=${3:-20000}
mkdir -p "$out/corpus"
# Seeds: a table of two ranks (addresses of 3 and 1 bytes) and a hello of rank 1 of 2.
printf '\x00\x02\x00\x7f\x00\x00\x01\x39\x30\x03\x00\x00\x00abc\x7f\x00\x00\x01\x3a\x30\x01\x00\x00\x00z' \
  > "$out/corpus/seed-table"
printf '\x01\x02\x00HNCHELLO\x01\x02\x03\x04\x05\x06\x07\x08\x02\x00\x00\x00\x01\x00\x00\x00\x7f\x00\x00\x01\x39\x30\x00\x00\x10\x00\x00\x00' \
  > "$out/corpus/seed-hello"
cp "$src"/tests/hostnccl/fuzz_regressions/* "$out/corpus/" 2>/dev/null || true
exec "$src/tests/run_libfuzzer.sh" "$out" fuzz_hostnccl_bootstrap "$runs" -- -I"$src/plugins/hostnccl" \
  "$src/tests/hostnccl/fuzz_bootstrap.cc" "$src/plugins/hostnccl/hn_bootstrap.cc"
