#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Two ranks in two network namespaces joined by a veth pair (two "hosts" on one machine), UCX over TCP.
# Neither namespace has a default route, so each rank advertises its veth address through
# HOSTNCCL_SOCKET_IFADDR (the default, 127.0.0.1, would not be reachable from the other namespace).
#   usage: hn_netns.sh HN_RANK_PROGRAM
set -uo pipefail
prog=$1
if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null; then echo "SKIP: needs root and iproute2"; exit 77; fi
a=hn$$a b=hn$$b net="10.$(( ($$ / 250) % 200 + 20 )).$(( $$ % 250 ))"
cleanup() { ip netns del "$a" 2>/dev/null; ip netns del "$b" 2>/dev/null; rm -rf "$dir"; }
dir=$(mktemp -d)
trap cleanup EXIT
if ! ip netns add "$a" 2>/dev/null || ! ip netns add "$b"; then echo "SKIP: cannot create network namespaces"; exit 77; fi
ip link add "v$$a" type veth peer name "v$$b" || { echo "SKIP: cannot create veth"; exit 77; }
ip link set "v$$a" netns "$a" && ip link set "v$$b" netns "$b"
ip -n "$a" addr add "$net.1/24" dev "v$$a" && ip -n "$b" addr add "$net.2/24" dev "v$$b"
for ns in "$a" "$b"; do ip -n "$ns" link set lo up; done
ip -n "$a" link set "v$$a" up && ip -n "$b" link set "v$$b" up
export UCX_TLS=tcp,self UCX_WARN_UNUSED_ENV_VARS=n HOSTNCCL_TIMEOUT_MS=20000
HOSTNCCL_SOCKET_IFADDR=$net.1 timeout 50 ip netns exec "$a" "$prog" 0 2 "$dir/id" & p0=$!
HOSTNCCL_SOCKET_IFADDR=$net.2 timeout 50 ip netns exec "$b" "$prog" 1 2 "$dir/id" & p1=$!
rc=0
wait $p0 || rc=1
wait $p1 || rc=1
[ $rc -eq 0 ] && echo "PASS: two ranks across network namespaces" || echo "FAIL"
exit $rc
