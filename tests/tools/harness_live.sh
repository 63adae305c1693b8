#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tm-harness live on 2 ranks: a live migration of rank 1 (tmctl migrate --spawn) ends with the uninterrupted
# run's digest on every rank and a positive downtime. Skips (77) while tm-harness says migration is unavailable.
. "$(dirname "$0")/harness_prologue.sh"
python3 "$HARNESS" live --build "$BUILD" --ranks 2 --steps 1500 --params 4000 --seed 5 --at 30 --migrate-rank 1 \
  --init-ms 200 --comm-init-ms 100 --step-ms 3 --timeout-s "$HARNESS_TIMEOUT_S" --json > "$tmp/out.json" 2> "$tmp/err"
rc=$?
cat "$tmp/err"
if [ $rc = 3 ]; then
  python3 -c 'import json,sys; o=json.load(open(sys.argv[1])); assert o["live"]["available"] is False and o["live"]["reason"]' \
    "$tmp/out.json" || { echo "FAIL: exit 3 without a reason in the JSON"; exit 1; }
  echo "SKIP: live migration unavailable: $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["live"]["reason"])' "$tmp/out.json")"
  exit 77
fi
[ $rc = 0 ] || { echo "FAIL: tm-harness exited $rc"; cat "$tmp/out.json"; exit 1; }
python3 - "$tmp/out.json" <<'PY'
import json, sys
out = json.load(open(sys.argv[1]))
lv = out["live"]
fail = []
if out.get("bit_identical") is not True or lv.get("bit_identical") is not True:
    fail.append(f"not bit-identical: {lv.get('digests')} vs {out['reference']['digest']}")
if set(lv.get("digests", {})) != {"0", "1"}:
    fail.append(f"digests of ranks {sorted(lv.get('digests', {}))}")
if not isinstance(out.get("downtime_ms"), (int, float)) or out["downtime_ms"] <= 0:
    fail.append(f"downtime_ms {out.get('downtime_ms')}")
print("downtime_ms", out.get("downtime_ms"), "bit_identical", out.get("bit_identical"))
for f in fail:
    print("FAIL:", f)
sys.exit(1 if fail else 0)
PY
