#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tmrun propagates a failing rank's exit status and stops the other ranks; an early exit 0 is fine.
set -u
TMRUN=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

# Rank 1 exits 3; ranks 0 and 2 would sleep for a minute and record their pids.
start=$(date +%s)
"$TMRUN" -n 3 --grace-ms 2000 -- bash -c "echo \$\$ > $tmp/pid.\$RANK; if [ \$RANK = 1 ]; then sleep 0.3; exit 3; fi; exec sleep 60" \
  > "$tmp/out" 2>&1
rc=$?
elapsed=$(( $(date +%s) - start ))
[ "$rc" = 3 ] || { echo "FAIL: tmrun exit status $rc, expected 3"; fail=1; }
[ "$elapsed" -lt 30 ] || { echo "FAIL: tmrun took ${elapsed}s; the other ranks were not stopped"; fail=1; }
for r in 0 2; do
  pid=$(cat "$tmp/pid.$r")
  if kill -0 "$pid" 2>/dev/null; then echo "FAIL: rank $r (pid $pid) still alive"; kill -9 "$pid"; fail=1; fi
done
grep -q "rank 1 .* exited with status 3" "$tmp/out" || { echo "FAIL: no report of rank 1"; cat "$tmp/out"; fail=1; }

# A rank killed by a signal: status 128 + signal.
"$TMRUN" -n 2 -- bash -c 'if [ $RANK = 0 ]; then kill -KILL $$; fi; exec sleep 60' > "$tmp/out2" 2>&1
rc=$?
[ "$rc" = 137 ] || { echo "FAIL: rank killed by SIGKILL gave tmrun status $rc, expected 137"; fail=1; }

# A rank that ignores SIGTERM is killed after the grace period.
"$TMRUN" -n 2 --grace-ms 300 -- bash -c \
  "if [ \$RANK = 0 ]; then while [ ! -e $tmp/armed ]; do sleep 0.02; done; exit 5; fi; trap '' TERM; touch $tmp/armed; sleep 60 & wait"  \
  > "$tmp/out3" 2>&1
rc=$?
[ "$rc" = 5 ] || { echo "FAIL: status $rc, expected 5"; fail=1; }
grep -q "SIGKILL" "$tmp/out3" || { echo "FAIL: no SIGKILL after the grace period"; cat "$tmp/out3"; fail=1; }

# A rank that exits 0 early (a migrated-away leaver) does not stop the job.
"$TMRUN" -n 2 -- bash -c 'if [ $RANK = 0 ]; then exit 0; fi; sleep 0.5; echo done' > "$tmp/out4" 2>&1
rc=$?
[ "$rc" = 0 ] || { echo "FAIL: early exit 0 gave status $rc"; fail=1; }
grep -qx "\[1\] done" "$tmp/out4" || { echo "FAIL: rank 1 did not finish"; cat "$tmp/out4"; fail=1; }

# A command that cannot be started.
"$TMRUN" -n 2 -- /nonexistent/program > "$tmp/out5" 2>&1
rc=$?
[ "$rc" = 127 ] || { echo "FAIL: missing program gave status $rc, expected 127"; fail=1; }

[ $fail = 0 ] && echo "PASS"
exit $fail
