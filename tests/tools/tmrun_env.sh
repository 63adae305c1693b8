#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# tmrun's rank environment, output prefixing and --output-dir, and a joiner started with --join.
set -u
TMRUN=$1
tmp=$(mktemp -d)
trap 'kill $job 2>/dev/null; rm -rf "$tmp"' EXIT
fail=0
check() { if ! eval "$1"; then echo "FAIL: $2"; fail=1; fi; }

show='echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $MASTER_ADDR ${TMRUN_STORE%:*} ${TRAINMOVER_ROLE:-none} ${TRAINMOVER_REPLACE:-none}"'
"$TMRUN" -n 2 -- bash -c "$show; echo to-stderr >&2" > "$tmp/out" 2> "$tmp/err"
check '[ $? = 0 ]' "tmrun status"
check 'grep -qx "\[0\] 0 2 0 2 127.0.0.1 127.0.0.1 none none" "$tmp/out"' "rank 0 environment: $(cat "$tmp/out")"
check 'grep -qx "\[1\] 1 2 1 2 127.0.0.1 127.0.0.1 none none" "$tmp/out"' "rank 1 environment"
check 'grep -qx "\[1\] to-stderr" "$tmp/err"' "stderr relayed with prefix"
check 'grep -q "tmrun: 2 ranks, store 127.0.0.1:[0-9]" "$tmp/err"' "store address printed"

"$TMRUN" -n 2 --no-prefix -- bash -c 'echo plain' > "$tmp/out" 2>/dev/null
check '[ "$(grep -cx plain "$tmp/out")" = 2 ]' "--no-prefix"

"$TMRUN" -n 2 --output-dir "$tmp/logs" -- bash -c 'echo out $RANK; echo err $RANK >&2' > "$tmp/out" 2>/dev/null
check 'grep -qx "out 1" "$tmp/logs/rank-1.log" && grep -qx "err 1" "$tmp/logs/rank-1.log"' "--output-dir rank-1.log"
check '[ ! -s "$tmp/out" ]' "--output-dir leaves stdout empty"

# A joiner: a running job (its ranks wait), then tmrun --join against its store.
"$TMRUN" -n 4 -- bash -c "echo \$MASTER_PORT > $tmp/mport; while [ ! -e $tmp/stop ]; do sleep 0.05; done" \
  > "$tmp/job.out" 2> "$tmp/job.err" &
job=$!
for _ in $(seq 200); do grep -q "store" "$tmp/job.err" 2>/dev/null && break; sleep 0.05; done
store=$(sed -n 's/.*store \(127.0.0.1:[0-9]*\).*/\1/p' "$tmp/job.err")
"$TMRUN" --join --replace 2 --store "$store" -n 4 -- bash -c "$show; echo \$MASTER_PORT \$TMRUN_STORE" > "$tmp/join" 2>&1
check '[ $? = 0 ]' "joiner status"
check 'grep -qx "\[2\] 2 4 2 4 127.0.0.1 127.0.0.1 joiner 2" "$tmp/join"' "joiner environment: $(cat "$tmp/join")"
check 'grep -qx "\[2\] $(cat "$tmp/mport") $store" "$tmp/join"' "joiner sees the job's MASTER_PORT and store"
"$TMRUN" --join --replace 2 --store "$store" -n 3 -- true > "$tmp/join2" 2>&1
check '[ $? = 2 ]' "a joiner with the wrong -n is refused"
touch "$tmp/stop"
wait $job
check '[ $? = 0 ]' "job status"

# Usage errors.
"$TMRUN" -- true > /dev/null 2>&1; check '[ $? = 2 ]' "missing -n"
"$TMRUN" -n 2 > /dev/null 2>&1; check '[ $? = 2 ]' "missing command"
"$TMRUN" -n 2 --bogus true > /dev/null 2>&1; check '[ $? = 2 ]' "unknown option"
"$TMRUN" --join -n 2 -- true > /dev/null 2>&1; check '[ $? = 2 ]' "--join without --replace"

[ $fail = 0 ] && echo "PASS"
exit $fail
