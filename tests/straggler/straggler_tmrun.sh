#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tmrun's --straggler-* options (trainmoverd's table, lib/control/straggler.h) reach its embedded coordinator: a rank
# reads the coordinator's status document with tmctl; bad values and options without an embedded coordinator are
# refused at start.
#   straggler_tmrun.sh TMRUN TMCTL
set -u
TMRUN=$1 TMCTL=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
unset TRAINMOVER_COORDINATOR TRAINMOVER_TOKEN
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2"; fail=1; fi; }
# The "stragglers" member of the status document rank 0 of `tmrun -n 2 [options]` read from the embedded coordinator.
stragglers() {
  "$TMRUN" -n 2 --no-prefix "$@" -- bash -c "[ \$RANK = 0 ] && '$TMCTL' status --json > '$tmp/status.json'; true" \
    > "$tmp/out" 2>&1 || { echo "tmrun failed: $(cat "$tmp/out")"; return; }
  python3 -c 'import json, sys; s = json.load(open(sys.argv[1]))["stragglers"]; s.pop("rounds"); s.pop("job_step_ms")
print(json.dumps(s, sort_keys=True))' "$tmp/status.json"
}

got=$(stragglers --straggler-policy migrate --straggler-threshold 0.25 --straggler-clear 0.1 --straggler-windows 4 \
      --straggler-clear-windows 2 --straggler-cooldown-s 30 --straggler-spare-hosts spareA,spareB)
want='{"actions": [], "clear": 0.1, "clear_windows": 2, "cooldown_s": 30, "policy": "migrate", "spare_hosts": ["spareA", "spareB"], "threshold": 0.25, "windows": 4}'
check '[ "$got" = "$want" ]' "options given: $got"
got=$(stragglers)
want='{"actions": [], "clear": 0.05, "clear_windows": 3, "cooldown_s": 600, "policy": "report", "spare_hosts": [], "threshold": 0.1, "windows": 3}'
check '[ "$got" = "$want" ]' "defaults: $got"

"$TMRUN" --help > "$tmp/help" 2>&1
for f in policy threshold clear windows clear-windows cooldown-s spare-hosts; do
  check 'grep -q -- "--straggler-$f " "$tmp/help"' "--help lists --straggler-$f"
done
"$TMRUN" -n 1 --straggler-policy evict -- true > "$tmp/bad" 2>&1; rc=$?
check '[ $rc = 2 ] && grep -q -- "--straggler-policy" "$tmp/bad"' "a bad value is a usage error: $(cat "$tmp/bad")"
"$TMRUN" -n 1 --straggler-clear 0.5 -- true > "$tmp/bad" 2>&1; rc=$?
check '[ $rc = 2 ] && grep -q "clear" "$tmp/bad"' "clear above the threshold is a usage error: $(cat "$tmp/bad")"
"$TMRUN" -n 1 --no-coordinator --straggler-policy migrate -- true > "$tmp/bad" 2>&1; rc=$?
check '[ $rc = 1 ] && grep -q "embedded coordinator" "$tmp/bad"' "refused with --no-coordinator: $(cat "$tmp/bad")"
TRAINMOVER_TOKEN=straggler-tmrun-test-token-0123456789 "$TMRUN" -n 1 --coordinator 127.0.0.1:1 \
  --straggler-windows 5 -- true > "$tmp/bad" 2>&1; rc=$?
check '[ $rc = 1 ] && grep -q "embedded coordinator" "$tmp/bad"' "refused with --coordinator: $(cat "$tmp/bad")"

[ $fail = 0 ] && echo "PASS"
exit $fail
