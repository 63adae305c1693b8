#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The sandbox tape decoder's fuzz target (fuzz_tape.cc), run for a bounded number of inputs through
# tests/run_libfuzzer.sh. Usage: run_fuzz_tape.sh SOURCE_ROOT BUILD_DIR NCCL_INCLUDE [RUNS]. Exit 77 without
# clang/libFuzzer.
set -euo pipefail
src=$1
out=$2/fuzz_tape
nccl_inc=$3
runs=${4:-20000}
mkdir -p "$out/corpus"
# A seed: cap 16*16 bytes, then a tape of one AllReduce entry (comm 2, position 0, float, sum) with 8 output bytes.
{
  printf '\x10'
  printf 'TAPE\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00'
  printf '\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x07\x00\x00\x00\x00\xff\xff\xff\xff'
  printf '\x02\x00\x00\x00\x00\x00\x00\x00\x01\x08\x00\x00\x00\x00\x00\x00\x00ABCDEFGH'
} > "$out/corpus/seed-one-entry"
cp "$src"/tests/migration/fuzz_regressions/* "$out/corpus/" 2>/dev/null || true
exec "$src/tests/run_libfuzzer.sh" "$out" fuzz_sandbox_tape "$runs" -- -I"$src/lib" -I"$src/common" -I"$nccl_inc" \
  "$src/tests/migration/fuzz_tape.cc" "$src/lib/sandbox/tape_codec.cc"
