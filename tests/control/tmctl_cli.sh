#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tmctl and tmrun's control plane from the outside:
#  - usage errors: non-zero exit (2), the usage text, a message that says what to do; no --token (ps shows it),
#    no token under 16 characters;
#  - env lists every TRAINMOVER_* parameter and hides the token;
#  - migrate/cancel/watch/timeline against a live coordinator with agent_probe processes: a refused
#    request is explained, watch ends with the migration's final state, timeline writes Chrome trace JSON;
#  - tmrun starts an embedded coordinator (random token in a private file) that tmctl can query, and
#    --no-coordinator gives plain pass-through ranks.
# Usage: tmctl_cli.sh TRAINMOVERD TMCTL AGENT_PROBE TMRUN
set -u
D=$1 CTL=$2 PROBE=$3 TMRUN=${4:-}
command -v python3 >/dev/null || { echo "SKIP: python3 missing"; exit 77; }
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
unset TRAINMOVER_COORDINATOR TRAINMOVER_TOKEN

usage_case() {  # expected-message args...
  local want=$1; shift
  out=$("$CTL" "$@" 2>&1); rc=$?
  [ $rc = 2 ] || fail "tmctl $* exited $rc, expected 2"
  echo "$out" | grep -q "$want" || fail "tmctl $*: no '$want' in: $out"
  echo "$out" | grep -q "usage: tmctl" || fail "tmctl $*: no usage text"
}
usage_case "no command given"
usage_case "unknown command 'frobnicate'" frobnicate
usage_case "migrate needs --rank R" --coordinator 127.0.0.1:1 migrate
usage_case "timeline needs --out FILE" --coordinator 127.0.0.1:1 timeline
usage_case "no coordinator: pass --coordinator" status
usage_case "no token" --coordinator 127.0.0.1:1 status
usage_case "is not a migration id" --coordinator 127.0.0.1:1 cancel abc
# The token never on the command line (ps shows it), and never a short one.
usage_case "token on the command line is visible" --coordinator 127.0.0.1:1 --token a-token-of-24-characters status
TRAINMOVER_TOKEN=short usage_case "at least 16" --coordinator 127.0.0.1:1 status
"$CTL" --help | grep -q "usage: tmctl" || fail "--help"
out=$(TRAINMOVER_TOKEN=a-token-of-24-characters "$CTL" --coordinator 127.0.0.1:1 status 2>&1) &&
  fail "status against nothing succeeded"
echo "$out" | grep -q "coordinator 127.0.0.1:1" || fail "unreachable coordinator not named: $out"

out=$(TRAINMOVER_TOKEN=s3cret-0123456789abcdef "$CTL" env) || fail "env"
for v in TRAINMOVER_COORDINATOR TRAINMOVER_TOKEN TRAINMOVER_ROLE TRAINMOVER_REPLACE TRAINMOVER_DEBUG; do
  echo "$out" | grep -q "^$v " || fail "env does not list $v"
done
echo "$out" | grep -q s3cret && fail "env printed the token"
out=$(TRAINMOVER_TOKEN=s3cret "$CTL" env 2>&1) && fail "env accepted a token of 6 characters"
echo "$out" | grep -q "TRAINMOVER_TOKEN=(hidden, 6 characters) is invalid" || fail "env: short token not named: $out"
echo "$out" | grep -q s3cret && fail "env printed the short token"
TRAINMOVER_ROLE=bogus "$CTL" env > /dev/null 2>&1 && fail "env accepted an invalid TRAINMOVER_ROLE"
echo "usage and env: ok"

export TRAINMOVER_TOKEN=cli-$$-$RANDOM-0123456789
"$D" --heartbeat-timeout-ms 2000 > "$tmp/d.out" 2> "$tmp/d.log" &
pids+=("$!")
for _ in $(seq 100); do [ -s "$tmp/d.out" ] && break; sleep 0.05; done
A=$(head -1 "$tmp/d.out")
export TRAINMOVER_COORDINATOR=$A
for r in 0 1; do "$PROBE" "$A" $r 2 0x77 & pids+=("$!"); done
for _ in $(seq 200); do
  "$CTL" status --json > "$tmp/s.json" 2>/dev/null && python3 -c "
import json,sys; s=json.load(open('$tmp/s.json'))
sys.exit(0 if len(s['processes'])==2 and all(p['step']>=0 for p in s['processes']) else 1)" && break
  sleep 0.1
done
"$CTL" status > "$tmp/table" || fail "status"
grep -q "0x0000000000000077" "$tmp/table" || fail "status table lacks the communicator: $(cat "$tmp/table")"
grep -q "0:[0-9] 1:[0-9]" "$tmp/table" || fail "status table lacks the members"
out=$("$CTL" migrate --rank 5 2>&1) && fail "migrating an unknown rank succeeded"
echo "$out" | grep -q "no alive worker holds rank 5" || fail "unclear refusal: $out"
out=$("$CTL" migrate --rank 1 --spawn 2>&1); rc=$?
echo "$out" | grep -q "not implemented yet\|started" || fail "unclear migrate answer: $out"
out=$("$CTL" watch 2 2>&1) ; echo "$out" | grep -q "migration 2 \(failed\|done\|cancelled\)" || fail "watch: $out"
"$CTL" timeline 2 --out "$tmp/trace.json" > /dev/null || fail "timeline"
python3 -c "
import json; t=json.load(open('$tmp/trace.json'))
assert any(e['ph']=='X' for e in t['traceEvents']), t
assert all('pid' in e and 'name' in e for e in t['traceEvents'])" || fail "timeline is not Chrome trace JSON"
out=$("$CTL" timeline 99 --out "$tmp/x.json" 2>&1) && fail "timeline of a missing migration succeeded"
echo "$out" | grep -q "no migration with id 99" || fail "timeline 99: $out"
out=$("$CTL" cancel 2>&1) && fail "cancel with nothing active succeeded"
echo "$out" | grep -q "no active migration" || fail "cancel: $out"
echo "migrate/watch/timeline/cancel: ok"

if [ -z "$TMRUN" ] || [ ! -x "$TMRUN" ]; then echo "tmrun not built: embedded coordinator not checked"; echo PASS; exit 0; fi
unset TRAINMOVER_COORDINATOR TRAINMOVER_TOKEN
"$TMRUN" -n 2 -- sh -c "echo coord=\${TRAINMOVER_COORDINATOR:-none} tok=\${#TRAINMOVER_TOKEN}; exec '$PROBE' \"\$TRAINMOVER_COORDINATOR\" \$RANK 2 0x99 --steps 3000 --step-ms 10" \
  > "$tmp/tmrun.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do grep -q "tmrun: coordinator" "$tmp/tmrun.log" && break; sleep 0.05; done
line=$(grep "tmrun: coordinator" "$tmp/tmrun.log") || fail "tmrun did not announce its coordinator: $(cat "$tmp/tmrun.log")"
EA=$(echo "$line" | sed -n 's/^tmrun: coordinator \([^ ]*\) .*/\1/p')
TF=$(echo "$line" | sed -n 's/.*--token-file \([^ ]*\) status.*/\1/p')
[ "$(stat -c %a "$TF")" = 600 ] || fail "token file $TF is not private"
ok=0
for _ in $(seq 200); do
  "$CTL" --coordinator "$EA" --token-file "$TF" status --json > "$tmp/e.json" 2>/dev/null && python3 -c "
import json,sys; s=json.load(open('$tmp/e.json'))
sys.exit(0 if len([p for p in s['processes'] if p['state']=='alive'])==2 and s['communicators'][0]['complete'] else 1)" \
    && { ok=1; break; }
  sleep 0.1
done
[ $ok = 1 ] || fail "the embedded coordinator does not show the 2 ranks"
grep -q "coord=$EA tok=48" "$tmp/tmrun.log" || fail "ranks did not get the coordinator and a token"
# A joiner started with tmrun --join (given the job's token file) finds the job's coordinator through its store.
S=$(sed -n 's/^tmrun: 2 ranks, store \([^ ]*\)$/\1/p' "$tmp/tmrun.log")
out=$("$TMRUN" --join --replace 1 --store "$S" --token-file "$TF" -n 2 -- sh -c \
  'echo jcoord=$TRAINMOVER_COORDINATOR jtok=$TRAINMOVER_TOKEN role=$TRAINMOVER_ROLE' 2>&1) || fail "join: $out"
echo "$out" | grep -q "jcoord=$EA jtok=$(cat "$TF") role=joiner" || fail "the joiner did not get the job's coordinator: $out"
out=$("$TMRUN" -n 1 --no-coordinator -- sh -c 'echo coord=${TRAINMOVER_COORDINATOR:-none}' 2>&1)
echo "$out" | grep -q "coord=none" || fail "--no-coordinator: $out"
echo "$out" | grep -q "tmrun: coordinator" && fail "--no-coordinator still started one"
echo "tmrun embedded coordinator: ok"
echo PASS
