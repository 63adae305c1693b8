#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds one libFuzzer target with clang++ -fsanitize=fuzzer,address,undefined (the project compiler is g++)
# and runs it for a bounded number of inputs from the seeds its caller put in OUT/corpus.
#   usage: run_libfuzzer.sh OUT NAME RUNS -- CLANG_ARGS (sources, -I, -l ...)
# Exit 77 when clang or its libFuzzer runtime is absent; 1 on a build failure or a crash (the input that
# crashed is kept as OUT/crash-*).
set -euo pipefail
out=$1 name=$2 runs=$3
shift 3
[ "${1:-}" = -- ] && shift
command -v clang++ >/dev/null || { echo "SKIP: clang++ not installed (apt-get install clang libclang-rt-14-dev)"; exit 77; }
mkdir -p "$out/corpus"
bin=$out/$name
if ! clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined "$@" \
    -o "$bin" 2>"$out/build.log"; then
  if grep -q "fuzzer" "$out/build.log" && grep -qi "no such file\|cannot find" "$out/build.log"; then
    echo "SKIP: libFuzzer runtime missing (apt-get install libclang-rt-14-dev)"; cat "$out/build.log"; exit 77
  fi
  cat "$out/build.log"; exit 1
fi
"$bin" -runs="$runs" -max_len=4096 -timeout=10 -artifact_prefix="$out/" "$out/corpus" 2>&1 | tail -5
echo "fuzz: $runs runs without a crash"
