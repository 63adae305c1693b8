#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The transfer descriptor's fuzz target (fuzz_descriptor.cc), run for a bounded number of inputs through
# tests/run_libfuzzer.sh. Usage: run_fuzz.sh SOURCE_ROOT BUILD_DIR [RUNS]. Exit 77 when clang or its libFuzzer
# runtime is absent.
set -euo pipefail
src=$1
out=$2/fuzz
runs=${3:-20000}
mkdir -p "$out/corpus"
# A seed so that the fuzzer starts from a valid body (the leading \x01 asks the target to add the MAC): header,
# nonce, host identity, a 3-byte worker address, the control block of one region (64 bytes, 2-byte rkey), one
# region "w" of 16 bytes with a 1-byte rkey.
{
  printf '\x01'
  printf 'TMXD\x04\x00\x00\x00'
  printf 'nonce-0123456789'
  printf '\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10'
  printf '\x07\x00\x00\x00\x00\x00\x00\x00\x2a\x00\x00\x00'
  printf '\x03\x00\x00\x00abc'
  printf '\x00\x10\x00\x00\x00\x00\x00\x00\x40\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00kk'
  printf '\x01\x00\x00\x00'
  printf '\x01w\x00\x20\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00r'
} > "$out/corpus/seed-one-region"
# Crashes found earlier, kept as regression inputs (tests/transfer/fuzz_regressions/).
cp "$src"/tests/transfer/fuzz_regressions/* "$out/corpus/" 2>/dev/null || true
exec "$src/tests/run_libfuzzer.sh" "$out" fuzz_transfer_descriptor "$runs" -- -I"$src/lib" -I"$src/lib/transfer" \
  "$src/tests/transfer/fuzz_descriptor.cc" "$src/lib/transfer/descriptor.cc" "$src/lib/transfer/status.cc" \
  "$src/lib/base/host.cc" "$src/lib/base/crypto.cc" -lcrypto
