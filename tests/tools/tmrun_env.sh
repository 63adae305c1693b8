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
for _ in $(seq 200); do grep -q "token-file" "$tmp/job.err" 2>/dev/null && break; sleep 0.05; done
tokfile=$(sed -n 's/.*--token-file \([^ ]*\) status.*/\1/p' "$tmp/job.err")
TRAINMOVER_TOKEN= "$TMRUN" --join --replace 2 --store "$store" -n 4 -- true > "$tmp/join0" 2>&1; rc=$?
check '[ $rc = 2 ] && grep -q "token" "$tmp/join0"' "a joiner without the job's token is refused: $(cat "$tmp/join0")"
TRAINMOVER_TOKEN=not-the-job-token-0123456789 "$TMRUN" --join --replace 2 --store "$store" -n 4 -- true \
  > "$tmp/join1" 2>&1; rc=$?
check '[ $rc = 1 ] && grep -q "refused the token" "$tmp/join1"' "a joiner with a wrong token is refused: $(cat "$tmp/join1")"
"$TMRUN" --join --replace 2 --store "$store" --token-file "$tokfile" -n 4 -- bash -c "$show; echo \$MASTER_PORT \$TMRUN_STORE" > "$tmp/join" 2>&1
check '[ $? = 0 ]' "joiner status"
check 'grep -qx "\[2\] 2 4 2 4 127.0.0.1 127.0.0.1 joiner 2" "$tmp/join"' "joiner environment: $(cat "$tmp/join")"
check 'grep -qx "\[2\] $(cat "$tmp/mport") $store" "$tmp/join"' "joiner sees the job's MASTER_PORT and store"
"$TMRUN" --join --replace 2 --store "$store" --token-file "$tokfile" -n 3 -- true > "$tmp/join2" 2>&1
check '[ $? = 2 ]' "a joiner with the wrong -n is refused"
touch "$tmp/stop"
wait $job
check '[ $? = 0 ]' "job status"

# Two nodes on one machine: node 0 serves the store at --master; global rank = node * 2 + local rank.
export TRAINMOVER_TOKEN=tmrun-env-test-token-0123456789
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nshow='echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $GROUP_RANK $MASTER_ADDR ${TMRUN_STORE}"'
"$TMRUN" --nnodes 2 --node-rank 1 --master "127.0.0.1:$port" -n 2 --no-coordinator -- bash -c "$nshow" \
  > "$tmp/node1" 2>&1 & node1=$!
"$TMRUN" --nnodes 2 --node-rank 0 --master "127.0.0.1:$port" -n 2 --no-coordinator -- bash -c "$nshow" \
  > "$tmp/node0" 2>&1
check '[ $? = 0 ]' "node 0 status: $(cat "$tmp/node0")"
wait $node1; check '[ $? = 0 ]' "node 1 status: $(cat "$tmp/node1")"
check 'grep -qx "\[1\] 1 4 1 2 0 127.0.0.1 127.0.0.1:$port" "$tmp/node0"' "node 0 rank 1 environment: $(cat "$tmp/node0")"
check 'grep -qx "\[2\] 2 4 0 2 1 127.0.0.1 127.0.0.1:$port" "$tmp/node1"' "node 1 rank 2 environment: $(cat "$tmp/node1")"
check 'grep -qx "\[3\] 3 4 1 2 1 127.0.0.1 127.0.0.1:$port" "$tmp/node1"' "node 1 rank 3 environment"
check 'grep -q "node 0 of 2, 2 ranks, store 127.0.0.1:$port" "$tmp/node0"' "node 0 announces itself"
# A node whose layout disagrees with node 0's is refused.
"$TMRUN" --nnodes 2 --node-rank 1 --master "127.0.0.1:$port" -n 2 --no-coordinator -- true > /dev/null 2>&1 &
bad0=$!
"$TMRUN" --nnodes 2 --node-rank 0 --master "127.0.0.1:$port" -n 3 --no-coordinator -- sleep 1 > /dev/null 2>&1
wait $bad0; check '[ $? = 2 ]' "node 1 with -n 2 refused by a job of 2 x 3"

# Usage errors.
"$TMRUN" -- true > /dev/null 2>&1; check '[ $? = 2 ]' "missing -n"
"$TMRUN" -n 2 > /dev/null 2>&1; check '[ $? = 2 ]' "missing command"
"$TMRUN" -n 2 --bogus true > /dev/null 2>&1; check '[ $? = 2 ]' "unknown option"
"$TMRUN" --join -n 2 -- true > /dev/null 2>&1; check '[ $? = 2 ]' "--join without --replace"
"$TMRUN" --nnodes 2 -n 2 -- true > /dev/null 2>&1; check '[ $? = 2 ]' "--nnodes 2 without --master"
"$TMRUN" --nnodes 2 --node-rank 2 --master 127.0.0.1:1 -n 2 -- true > /dev/null 2>&1
check '[ $? = 2 ]' "--node-rank beyond --nnodes"
TRAINMOVER_TOKEN= "$TMRUN" --nnodes 2 --master 127.0.0.1:1 -n 2 -- true > "$tmp/notoken" 2>&1
check '[ $? = 2 ] && grep -q TRAINMOVER_TOKEN "$tmp/notoken"' "--nnodes 2 needs the job's token"

[ $fail = 0 ] && echo "PASS"
exit $fail
