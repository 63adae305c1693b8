#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tm-train on 4 ranks over hostnccl under the shim, with trainmoverd:
#  - tmctl status --json shows the 4 processes, one entry for their communicator with all 4 members,
#    and advancing steps;
#  - trainmoverd is killed and restarted mid-run: training goes on, the final digests equal an
#    uninterrupted run's, and the restarted coordinator rebuilds its view;
#  - a wrong token is rejected and reveals nothing; malformed and oversized frames are rejected and the
#    coordinator still serves;
#  - a killed worker is marked lost.
# Usage: control_train.sh TRAINMOVERD TMCTL TMRUN TMTRAIN BACKEND SHIM
set -u
D=$1 CTL=$2 TMRUN=$3 TMTRAIN=$4 BACKEND=$5 SHIM=$6
[ "$BACKEND" = hostnccl ] || { echo "SKIP: tm-train is not linked against hostnccl (not built)"; exit 77; }
[ -e "$SHIM" ] || { echo "SKIP: $SHIM not built"; exit 77; }
command -v python3 >/dev/null || { echo "SKIP: python3 missing"; exit 77; }
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; wait 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$tmp"/*.log; do echo "--- $f"; tail -20 "$f"; done; exit 1; }
export TRAINMOVER_TOKEN=control-train-$$-$RANDOM-0123456789
args=(--steps 800 --params 3000 --seed 5 --extra-state-mb 1 --log-every 0 --step-ms 15)
digest() { sed -n 's/^\[[0-9]*\] final-state sha256:\([0-9a-f]*\)$/\1/p' "$1" | sort -u; }

start_d() {  # start trainmoverd on $1 (host:port), sets DPID and ADDR
  "$D" --listen "$1" --heartbeat-timeout-ms 4000 > "$tmp/d$2.out" 2> "$tmp/d$2.log" &
  DPID=$!
  pids+=("$DPID")
  for _ in $(seq 100); do [ -s "$tmp/d$2.out" ] && break; sleep 0.05; done
  ADDR=$(head -1 "$tmp/d$2.out")
  [ -n "$ADDR" ] || fail "trainmoverd did not start"
}
status() { "$CTL" --coordinator "$ADDR" status --json; }
# check PY_EXPR: polls status until the python expression (over `s`, the status) is true; 30 s bound.
check() {
  for _ in $(seq 300); do
    if status > "$tmp/status.json" 2>/dev/null && python3 -c "
import json,sys
s=json.load(open('$tmp/status.json'))
sys.exit(0 if ($1) else 1)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "last status:"; cat "$tmp/status.json"; return 1
}
alive4='len([p for p in s["processes"] if p["state"]=="alive"])==4'
comm4='len(s["communicators"])==1 and s["communicators"][0]["complete"] and len(s["communicators"][0]["members"])==4 and sorted(m["rank"] for m in s["communicators"][0]["members"])==[0,1,2,3]'
minstep() { python3 -c "import json;s=json.load(open('$tmp/status.json'));print(min(p['step'] for p in s['processes'] if p['state']=='alive'))"; }

# 1. The reference: an uninterrupted run under the shim, no coordinator.
"$TMRUN" -n 4 -- env LD_PRELOAD="$SHIM" "$TMTRAIN" "${args[@]}" > "$tmp/ref.log" 2>&1 || fail "reference run"
ref=$(digest "$tmp/ref.log")
[ -n "$ref" ] && [ "$(echo "$ref" | wc -l)" = 1 ] || fail "reference digests"

# 2. The same run with trainmoverd.
start_d 127.0.0.1:0 1
TRAINMOVER_COORDINATOR=$ADDR "$TMRUN" -n 4 -- env LD_PRELOAD="$SHIM" "$TMTRAIN" "${args[@]}" > "$tmp/run.log" 2>&1 &
RUN=$!
pids+=("$RUN")
check "$alive4 and $comm4" || fail "status does not show 4 processes and their communicator"
s1=$(minstep)
check "min(p['step'] for p in s['processes'])>$s1+5" || fail "steps do not advance"
echo "view: 4 processes, 1 communicator with 4 members, steps advancing past $s1"

# 3. Wrong token: rejected, nothing revealed.
out=$(TRAINMOVER_TOKEN=wrong-token-0123456789 "$CTL" --coordinator "$ADDR" status --json 2>&1) &&
  fail "a wrong token was accepted"
echo "$out" | grep -q "authentication failed" || fail "no clear rejection: $out"
echo "$out" | grep -q "processes\|$(hostname)" && fail "the rejection revealed state: $out"
# 4. Malformed, oversized and foreign frames: rejected; the coordinator still serves.
python3 - "$ADDR" <<'PY' || fail "raw frames"
import socket, struct, sys
host, port = sys.argv[1].rsplit(':', 1)
def send(b):
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(b)
    d = b''
    try:
        while True:
            x = s.recv(4096)
            if not x: break
            d += x
    except socket.timeout:
        pass
    return d
assert b'bad magic' in send(b'GET / HTTP/1.0\r\n\r\n')
assert b'frame too large' in send(struct.pack('<IHHQI', 0x504d4354, 2, 1, 0, 1 << 30))
assert b'authentication failed' in send(struct.pack('<IHHQI', 0x504d4354, 2, 1, 0, 4) + b'\0' * 36)
print("raw frames rejected")
PY
check "$alive4" || fail "the coordinator stopped serving after bad input"

# 5. Kill the coordinator mid-run and restart it on the same address: the view is rebuilt.
kill -9 "$DPID"
sleep 1
start_d "$ADDR" 2
check "$alive4 and $comm4" || fail "the restarted coordinator did not rebuild its view"
s2=$(minstep)
check "min(p['step'] for p in s['processes'])>$s2+5" || fail "steps do not advance after the restart"
echo "restart: view rebuilt, steps advancing past $s2"
wait "$RUN" || fail "training failed while the coordinator restarted"
got=$(digest "$tmp/run.log")
echo "reference $ref with-restart $got"
[ "$got" = "$ref" ] || fail "digests differ"
check 'all(p["state"]=="exited" for p in s["processes"])' || fail "finished processes are not shown as exited"
# One WARN line per rank for the outage (then one when reconnected), nothing more.
for r in 0 1 2 3; do
  n=$(grep -c "^\[$r\] .*TRAINMOVER WARN agent: coordinator .* unreachable" "$tmp/run.log")
  [ "$n" = 1 ] || fail "rank $r logged $n 'unreachable' lines, expected 1"
done

# 6. A killed worker is marked lost.
TRAINMOVER_COORDINATOR=$ADDR "$TMRUN" -n 2 --grace-ms 60000 -- env LD_PRELOAD="$SHIM" "$TMTRAIN" --steps 100000 \
  --params 3000 --log-every 0 --step-ms 20 > "$tmp/lost.log" 2>&1 &
pids+=("$!")
check 'len([p for p in s["processes"] if p["state"]=="alive" and p["rank"]>=0])==2' || fail "second job not seen"
victim=$(python3 -c "import json;s=json.load(open('$tmp/status.json'));print([p['pid'] for p in s['processes'] if p['state']=='alive' and p['rank']==1][0])")
kill -9 "$victim"
check "[p['state'] for p in s['processes'] if p['pid']==$victim]==['lost']" || fail "killed worker $victim not marked lost"
echo "worker $victim marked lost"
echo PASS
