#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# A peer that goes away while a rank's endpoint to it is still connecting must be an error of that rank's init,
# never an abort inside UCX. Two ranks on one "host" (a network namespace with a veth, the other end in a second
# namespace so that the link is up), UCX over tcp only (as across hosts): an endpoint between them then has two tcp
# lanes, the veth for its messages and lo for UCX's WIREUP messages. Rank 1 inits lazily (HOSTNCCL_CONNECT=lazy)
# and kills itself 500 ms after init without progressing its worker; rank 0 (eager) is in its lane exchange with
# rank 1 meanwhile. Before 2026-12-03 rank 0's first rendezvous send queued UCX's WIREUP request on the lo lane
# while that connection was still waiting for rank 1, and rank 1's death failed it: UCX 1.13 aborted rank 0
# (`ucp_request.c:684 Assertion ... got REQ message`, status 134), every run. Now init connects every endpoint
# before the exchange of endpoint ids (docs/hostnccl.md, "Bootstrap"): rank 0 gets ncclRemoteError (status 1).
#   usage: hn_leaves_connecting.sh HN_RANK_PROGRAM
set -uo pipefail
prog=$1
source "$(dirname "$0")/two_netns.sh"
export UCX_TLS=tcp,self UCX_WARN_UNUSED_ENV_VARS=n HOSTNCCL_TIMEOUT_MS=10000 HOSTNCCL_SOCKET_IFADDR=$net.1
HOSTNCCL_CONNECT=eager timeout 40 ip netns exec "$a" "$prog" 0 2 "$dir/id" > "$dir/r0.log" 2>&1 & p0=$!
HOSTNCCL_CONNECT=lazy HN_RANK_KILL_AFTER_INIT_MS=500 timeout 40 ip netns exec "$a" "$prog" 1 2 "$dir/id" \
  > "$dir/r1.log" 2>&1 & p1=$!
wait $p0; rc0=$?
wait $p1; rc1=$?
cat "$dir/r0.log"
if [ $rc0 -eq 1 ] && grep -q "ncclCommInitRank.*remote process exited or there was a network error" "$dir/r0.log"; then
  echo "PASS: rank 0's init failed with ncclRemoteError (rank 1: status $rc1)"
  exit 0
fi
echo "FAIL: rank 0 ended with status $rc0 (1 and ncclRemoteError expected; 134 is UCX's abort), rank 1 with $rc1"
exit 1
