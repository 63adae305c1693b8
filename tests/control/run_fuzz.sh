#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the control-protocol fuzz target with clang++ -fsanitize=fuzzer (the project compiler is g++)
# and runs it briefly. Usage: run_fuzz.sh SOURCE_ROOT BUILD_DIR [RUNS]. Exit 77 when clang/libFuzzer is absent.
set -euo pipefail
src=$1
out=$2/fuzz
runs=${3:-20000}
command -v clang++ >/dev/null || { echo "SKIP: clang++ not installed (apt-get install clang libclang-rt-14-dev)"; exit 77; }
mkdir -p "$out/corpus"
bin=$out/fuzz_control_parser
if ! clang++ -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$src/lib" -I"$src/tools/tmctl" \
    "$src/tests/control/fuzz_parser.cc" "$src/lib/control/wire.cc" "$src/lib/control/messages.cc" "$src/lib/control/node.cc" "$src/lib/migration/msgs.cc" \
    "$src/tools/tmctl/json.cc" -lcrypto -o "$bin" 2>"$out/build.log"; then
  if grep -q "fuzzer" "$out/build.log" && grep -qi "no such file\|cannot find" "$out/build.log"; then
    echo "SKIP: libFuzzer runtime missing (apt-get install libclang-rt-14-dev)"; cat "$out/build.log"; exit 77
  fi
  cat "$out/build.log"; exit 1
fi
# A few seeds so the fuzzer starts from real messages: a REGISTER payload and a frame.
printf '\x02\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x00\x00worker' > "$out/corpus/seed-register"
printf '\x00TCMP\x01\x00\x06\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' > "$out/corpus/seed-frame"
printf '\x03{"a":[1,2.5,"x",true,null,{"b":{}}]}' > "$out/corpus/seed-json"
"$bin" -runs="$runs" -max_len=4096 -timeout=10 "$out/corpus" 2>&1 | tail -5
echo "fuzz: $runs runs without a crash"
