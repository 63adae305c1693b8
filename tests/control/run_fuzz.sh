#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The control-protocol fuzz target (fuzz_parser.cc), run briefly through tests/run_libfuzzer.sh.
# Usage: run_fuzz.sh SOURCE_ROOT BUILD_DIR [RUNS]. Exit 77 when clang/libFuzzer is absent.
set -euo pipefail
src=$1
out=$2/fuzz
runs=${3:-20000}
mkdir -p "$out/corpus"
# A few seeds so the fuzzer starts from real messages: a REGISTER payload and a frame.
printf '\x02\x00\x00\x00\x00\x00\x00\x00\x00\x06\x00\x00\x00worker' > "$out/corpus/seed-register"
printf '\x00TCMP\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' > "$out/corpus/seed-frame"
printf '\x04TCMP\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x06\x00ABCDEFGHIJKLMNOP' > "$out/corpus/seed-sealed"
# Inputs that once crashed it (regressions), run first.
cp "$src/tests/control/fuzz_regressions/"* "$out/corpus/"
printf '\x03{"a":[1,2.5,"x",true,null,{"b":{}}]}' > "$out/corpus/seed-json"
exec "$src/tests/run_libfuzzer.sh" "$out" fuzz_control_parser "$runs" -- -I"$src/lib" -I"$src/tools" \
  "$src/tests/control/fuzz_parser.cc" "$src/lib/base/crypto.cc" "$src/lib/control/wire.cc" "$src/lib/control/messages.cc" \
  "$src/lib/control/node.cc" "$src/lib/migration/msgs.cc" "$src/lib/migration/recovery_msgs.cc" \
  "$src/lib/migration/standby_msgs.cc" \
  "$src/tools/common/json.cc" -lcrypto
