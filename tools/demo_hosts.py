#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The cross-host demo (./run demo --hosts; docs/demo.md): three "hosts" on this machine (network namespaces
on a bridge, each with its own address and TRAINMOVER_HOST), tm-train on 2 x 2 ranks across hosts 1 and 2
(`tmrun --nnodes 2 --master ...`), rank 1 moved live from host 1 to host 3 by a joiner started there
(`tmrun --join --replace 1 --master ...`), its state over the network (UCX over tcp). Prints the downtime,
the state moved and whether every rank ended bit-identical to an uninterrupted run on one host.

usage: demo_hosts.py BUILD [--json]      (root: network namespaces; exit 77 with the reason otherwise)
"""
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "harness"))
import nethosts  # noqa: E402


def main():
    build = os.path.abspath(sys.argv[1])
    as_json = "--json" in sys.argv[2:]
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if as_json else (lambda m: print(m, flush=True))
    bins = dict(tmrun=f"{build}/tools/tmrun/tmrun", tmctl=f"{build}/tools/tmctl/tmctl",
                tm_train=f"{build}/tools/tm_train/tm-train", shim=f"{build}/lib/shim/libtrainmover.so",
                hostnccl=f"{build}/plugins/hostnccl/libnccl.so.2")
    work = tempfile.mkdtemp(prefix="demo-hosts-")
    c = nethosts.Cluster(bins, work)
    steps, step_ms = 600, 10
    try:
        c.make()
    except nethosts.Unavailable as e:
        say(f"demo --hosts: skipped: {e}")
        return 77
    try:
        say(f"demo --hosts: hosts host1 {c.addr(0)}, host2 {c.addr(1)}, host3 {c.addr(2)} (network namespaces on a "
            f"bridge); tm-train {steps} steps on 2 x 2 ranks, UCX over tcp")
        ref = os.path.join(work, "reference.log")
        with open(ref, "w") as f:
            subprocess.run([bins["tmrun"], "-n", "4", "--no-coordinator", "--"] + c.train_cmd(steps, 0), stdout=f,
                           stderr=subprocess.STDOUT, timeout=nethosts.TIMEOUT, check=True)
        want = set(nethosts.digests(ref).values())
        nodes = c.start_job(steps, step_ms)
        hosts = {p["rank"]: p["host"] for p in c.wait_step(50)}
        say(f"  running: ranks on hosts {hosts}; coordinator {c.coord} on host1")
        say("  moving rank 1: host1 -> host3 (tmctl migrate --rank 1; tmrun --join --replace 1 on host3)")
        m, joiners, out = c.migrate(["--rank", "1"], [1], c.train_cmd(steps, step_ms))
        for p in nodes + joiners:
            p.wait(timeout=nethosts.TIMEOUT)
        got = {r: d for k in (0, 1) for r, d in nethosts.digests(os.path.join(work, f"node{k}.log")).items() if r != 1}
        got.update(nethosts.digests(os.path.join(work, "joiner-1.log")))
        identical = len(want) == 1 and sorted(got) == [0, 1, 2, 3] and set(got.values()) == want
        moved = re.search(r"state moved: (.*)", out)
        result = {"migration": m["state"], "switch_step": m["switch_step"], "downtime_ms": m.get("downtime_ms"),
                  "state_moved": moved.group(1) if moved else None, "bit_identical": identical,
                  "from": "host1", "to": "host3"}
        if as_json:
            print(json.dumps(result))
        else:
            say(f"  migration {m['state']} at step {m['switch_step']}: downtime {m.get('downtime_ms', 0):.1f} ms; "
                f"state moved {result['state_moved']}")
            say(f"  every rank's final state equals the uninterrupted run's: {'yes' if identical else 'NO'}")
        return 0 if identical and m["state"] == "done" else 1
    finally:
        c.close()


if __name__ == "__main__":
    sys.exit(main())
