#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tm-harness cold on 2 ranks: the resumed ranks end with the uninterrupted run's digest, the measured downtime
# is positive and covers at least the emulated start-up costs it paid, and --json carries the required keys.
. "$(dirname "$0")/harness_prologue.sh"
python3 "$HARNESS" cold --build "$BUILD" --ranks 2 --steps 120 --params 4000 --seed 5 --extra-state-mb 1 --at 40 \
  --init-ms 200 --comm-init-ms 100 --json > "$tmp/out.json" 2> "$tmp/err"
rc=$?
cat "$tmp/err"
[ $rc = 0 ] || { echo "FAIL: tm-harness exited $rc"; cat "$tmp/out.json"; exit 1; }
python3 - "$tmp/out.json" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
fail = []
for key in ("downtime_ms", "cold_restart_ms", "ratio", "bit_identical", "reference", "cold_restart", "clock"):
    if key not in out:
        fail.append(f"no key {key}")
c = out.get("cold_restart", {})
if out.get("bit_identical") is not True or c.get("bit_identical") is not True:
    fail.append(f"not bit-identical: {c.get('digests')} vs {out.get('reference', {}).get('digest')}")
if sorted(c.get("digests", {})) != ["0", "1"] or set(c["digests"].values()) != {out["reference"]["digest"]}:
    fail.append(f"digests {c.get('digests')}")
# The restart slept 200 ms (--init-ms) and 100 ms (communicator init): the downtime cannot be shorter.
if not isinstance(out.get("cold_restart_ms"), (int, float)) or out["cold_restart_ms"] < 300:
    fail.append(f"cold_restart_ms {out.get('cold_restart_ms')} is not >= 300")
if c.get("k") != 40 or c.get("window_steps") != [39, 42] or c.get("checkpoint_bytes", 0) < 2 * (1 << 20):
    fail.append(f"k {c.get('k')}, window {c.get('window_steps')}, checkpoints {c.get('checkpoint_bytes')} B")
if out.get("downtime_ms") is not None or out.get("ratio") is not None:
    fail.append("cold mode reports a live downtime")
print("cold_restart_ms", out.get("cold_restart_ms"), "bit_identical", out.get("bit_identical"))
for f in fail:
    print("FAIL:", f)
sys.exit(1 if fail else 0)
PY
