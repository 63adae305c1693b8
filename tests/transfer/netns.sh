#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# The cross-host path without two hosts: leaver and joiner in two network namespaces joined by a veth pair
# (10.x addresses inside our own namespaces only), UCX over tcp, the joiner forced onto the UCX path. Then the
# leaver's host cut off before the joiner connects (its address removed and the joiner's ARP entry for it pinned,
# so SYNs vanish without an answer, as with a host that is down): the fetch must fail within its 2 s timeout and
# the joiner's teardown neither hang nor abort (UCX's default blocking connect() would wait about 2 minutes).
#   netns.sh <transfer_peer>
# Skips (77) without root or without ip netns.
set -u
PEER=${1:?usage: netns.sh <transfer_peer>}
[ "$(id -u)" -eq 0 ] || { echo "SKIP: needs root for ip netns"; exit 77; }
command -v ip >/dev/null || { echo "SKIP: no ip (iproute2)"; exit 77; }
A=tmxa$$ B=tmxb$$
NET=$(( ($$ % 250) + 1 ))
DIR=$(mktemp -d)
cleanup() {
  [ -n "${SPID:-}" ] && kill "$SPID" 2>/dev/null
  ip netns del "$A" 2>/dev/null
  ip netns del "$B" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT
if ! ip netns add "$A" 2>/dev/null; then echo "SKIP: ip netns add not permitted here"; exit 77; fi
ip netns add "$B" || exit 1
ip link add "va$$" type veth peer name "vb$$" || { echo "SKIP: cannot create veth"; exit 77; }
ip link set "va$$" netns "$A" && ip link set "vb$$" netns "$B" || exit 1
ip -n "$A" addr add "10.213.$NET.1/24" dev "va$$" && ip -n "$B" addr add "10.213.$NET.2/24" dev "vb$$" || exit 1
ip -n "$A" link set "va$$" up && ip -n "$B" link set "vb$$" up || exit 1
ip -n "$A" link set lo up && ip -n "$B" link set lo up
export UCX_TLS=tcp
UCX_NET_DEVICES="va$$" timeout 50 ip netns exec "$A" "$PEER" serve "$DIR/desc" 3000001 5 &
SPID=$!
UCX_NET_DEVICES="vb$$" timeout 40 ip netns exec "$B" "$PEER" fetch "$DIR/desc" 3000001 5
CRC=$?
wait "$SPID"
SRC=$?
SPID=
echo "fetch exit $CRC, serve exit $SRC"
[ "$CRC" -eq 0 ] && [ "$SRC" -eq 0 ] || exit 1

UCX_NET_DEVICES="va$$" timeout 50 ip netns exec "$A" "$PEER" serve "$DIR/cut" 3000001 5 &
SPID=$!
UCX_NET_DEVICES="vb$$" timeout 30 ip netns exec "$B" "$PEER" fetch-cut "$DIR/cut" 3000001 5 &
CPID=$!
for _ in $(seq 100); do [ -s "$DIR/cut" ] && break; sleep 0.1; done
MAC=$(ip -n "$A" -br link show "va$$" | awk '{print $3}')
ip -n "$B" neigh replace "10.213.$NET.1" lladdr "$MAC" dev "vb$$" nud permanent || exit 1
ip -n "$A" addr del "10.213.$NET.1/24" dev "va$$" || exit 1
touch "$DIR/cut.cut"
wait "$CPID"
CRC=$?
echo "fetch from a cut-off host: exit $CRC (124: it hung)"
[ "$CRC" -eq 0 ]
