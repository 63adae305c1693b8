#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tm-harness failure on 3 ranks: rank 1 gets SIGKILL past step 30, the coordinator recovers it, and every rank
# (the replacement for rank 1) ends with the uninterrupted run's digest; the record has a positive downtime and the
# steps lost. The same failure without a coordinator (crash: checkpoint at 30, the job fails, --resume) ends
# bit-identical too; both have a failure-to-next-step time.
. "$(dirname "$0")/harness_prologue.sh"
python3 "$HARNESS" failure --build "$BUILD" --ranks 3 --steps 1500 --params 4000 --seed 5 --at 30 --kill-rank 1 \
  --init-ms 200 --comm-init-ms 100 --step-ms 3 --timeout-s "$HARNESS_TIMEOUT_S" --json > "$tmp/out.json" 2> "$tmp/err"
rc=$?
cat "$tmp/err"
[ $rc = 0 ] || { echo "FAIL: tm-harness exited $rc"; cat "$tmp/out.json"; exit 1; }
python3 - "$tmp/out.json" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
rv, cr = out["recovery"], out["crash_restart"]
fail = []
if cr.get("bit_identical") is not True or cr.get("lost_steps", -1) < 1:
    fail.append(f"crash restart: bit_identical {cr.get('bit_identical')}, lost_steps {cr.get('lost_steps')}")
for what, x in (("crash restart", cr), ("recovery", rv)):
    if not isinstance(x.get("failure_to_step_ms"), (int, float)) or x["failure_to_step_ms"] <= 0:
        fail.append(f"{what}: failure_to_step_ms {x.get('failure_to_step_ms')}")
if not isinstance(out.get("recovery_ratio"), (int, float)):
    fail.append(f"recovery_ratio {out.get('recovery_ratio')}")
if out.get("bit_identical") is not True or rv.get("bit_identical") is not True:
    fail.append(f"not bit-identical: {rv.get('digests')} vs {out['reference']['digest']}")
if set(rv.get("digests", {})) != {"0", "1", "2"}:
    fail.append(f"digests of ranks {sorted(rv.get('digests', {}))}")
if rv.get("rank") != 1 or not rv.get("replacement"):
    fail.append(f"rank {rv.get('rank')}, replacement {rv.get('replacement')!r}")
if not isinstance(rv.get("downtime_ms"), (int, float)) or rv["downtime_ms"] <= 0:
    fail.append(f"downtime_ms {rv.get('downtime_ms')}")
if not isinstance(rv.get("lost_steps"), int) or rv["lost_steps"] < 0 or \
        rv["failed_at_step"] - rv["rollback_step"] - 1 != rv["lost_steps"] or rv["failed_at_step"] < 30:
    fail.append(f"lost_steps {rv.get('lost_steps')}, from step {rv.get('failed_at_step')} to {rv.get('rollback_step')}")
print("recovery downtime_ms", rv.get("downtime_ms"), "lost_steps", rv.get("lost_steps"), "bit_identical",
      out.get("bit_identical"), "failure to step: crash", cr.get("failure_to_step_ms"), "recovery",
      rv.get("failure_to_step_ms"))
for f in fail:
    print("FAIL:", f)
sys.exit(1 if fail else 0)
PY
