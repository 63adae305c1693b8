# SPDX-License-Identifier: Apache-2.0
# Sourced by the hostnccl tests that need two "hosts" on one machine: two network namespaces, $a at $net.1 and $b at
# $net.2, joined by a veth pair, lo up in both, and a scratch directory $dir; all removed when the test exits. Exits
# 77 (skip) without root, iproute2 or namespaces.
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
