#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Two ranks in two network namespaces joined by a veth pair (two "hosts" on one machine), UCX over TCP.
# Neither namespace has a default route, so each rank advertises its veth address through
# HOSTNCCL_SOCKET_IFADDR (the default, 127.0.0.1, would not be reachable from the other namespace).
#   usage: hn_netns.sh HN_RANK_PROGRAM
set -uo pipefail
prog=$1
source "$(dirname "$0")/two_netns.sh"
export UCX_TLS=tcp,self UCX_WARN_UNUSED_ENV_VARS=n HOSTNCCL_TIMEOUT_MS=20000
HOSTNCCL_SOCKET_IFADDR=$net.1 timeout 50 ip netns exec "$a" "$prog" 0 2 "$dir/id" & p0=$!
HOSTNCCL_SOCKET_IFADDR=$net.2 timeout 50 ip netns exec "$b" "$prog" 1 2 "$dir/id" & p1=$!
rc=0
wait $p0 || rc=1
wait $p1 || rc=1
[ $rc -eq 0 ] && echo "PASS: two ranks across network namespaces" || echo "FAIL"
exit $rc
