#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Migration across hosts: downtime and in-migration state bandwidth between network namespaces, side by side
with ucx_perftest (ucp_get over tcp) between the same namespaces, with and without tc shaping.

usage: multihost_bench.py --build DIR [--sizes-mb 16,64] [--shape none,10gbit:50us] [--quick] [--json FILE]

Each point: three hosts (tests/multihost/nethosts.py), a 2 x 2 tm-train job on hosts 1-2 with an extra
registered region of S MiB per rank, rank 1 moved from host 1 to host 3 by an operator-started joiner.
ucx_perftest reads S MiB from host 1 to host 3 in the same run. The goal printed per point (issue "across
machines"): downtime <= state bytes / ucx_perftest bandwidth + one mean step + 5 ms. Asserts no speed; exit
0 when every migration finished with every rank's digest equal, 1 otherwise, 77 without namespaces.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "harness"))
import nethosts  # noqa: E402

MIB = 1 << 20


def perftest(c, size, port=13400 + os.getpid() % 1000):
    """ucx_perftest ucp_get of `size` bytes from host 1 (server) to host 3: bytes/s, or None."""
    srv = c.spawn(0, ["ucx_perftest", "-p", str(port)], "perftest-server.log")
    time.sleep(0.5)
    rc, out = c.run(2, ["ucx_perftest", c.addr(0), "-p", str(port), "-t", "ucp_get", "-s", str(size), "-n",
                        str(max(3, min(50, (512 * MIB) // size))), "-w", "2"], timeout=120)
    srv.wait(timeout=10)
    m = re.search(r"^Final:\s+\S+\s+\S+\s+\S+\s+\S+\s+(\S+)\s+(\S+)", out, re.M)
    return float(m.group(2)) * MIB if rc == 0 and m else None


def mean_step_ms(c):
    a = {p["rank"]: p["step"] for p in c.wait_step(1)}
    t0 = time.monotonic()
    time.sleep(1.0)
    b = {p["rank"]: p["step"] for p in c.wait_step(1)}
    return 1000.0 * (time.monotonic() - t0) / max(1, min(b[r] - a[r] for r in a))


def point(bins, size_mb, shape, step_ms):
    work = tempfile.mkdtemp(prefix="multihost-bench-")
    c = nethosts.Cluster(bins, work)
    row = {"state_mib": size_mb, "shape": shape}
    try:
        c.make()
        if shape != "none":
            rate, delay = shape.split(":")
            row["shape_applied"] = c.shape(rate, delay)
        bw = perftest(c, size_mb * MIB)
        row["perftest_gbs"] = bw / 1e9 if bw else None
        steps = 100000  # the job is stopped once the migration is measured
        extra = ["--extra-state-mb", str(size_mb)]
        nodes = c.start_job(steps, step_ms, extra=extra)
        c.wait_step(20)
        row["step_ms"] = mean_step_ms(c)
        m, joiners, out = c.migrate(["--rank", "1"], [1], c.train_cmd(steps, step_ms, extra))
        row["state"] = m["state"]
        mv = re.search(r"state moved: ([\d.]+) (\S+) in ([\d.]+) ms \(([\d.]+) GB/s\)", out)
        dt = re.search(r"downtime: ([\d.]+) ms", out)
        row["bytes"] = m.get("bytes_total") or 0
        row["transfer_ms"] = float(mv.group(3)) if mv else None
        row["transfer_gbs"] = float(mv.group(4)) if mv else None
        row["downtime_ms"] = float(dt.group(1)) if dt else None
        c.wait_step(m.get("switch_step", 0) + 20)  # training went on across hosts after the switch
        row["trains_after"] = True
        for p in nodes + joiners:
            os.killpg(p.pid, 15)
    except nethosts.Unavailable:
        raise
    except Exception as e:  # a failed point is reported, not fatal for the sweep
        row["error"] = str(e)
    finally:
        c.close()
    if row.get("perftest_gbs") and row.get("downtime_ms") is not None:
        bound = row["bytes"] / (row["perftest_gbs"] * 1e9) * 1e3 + row["step_ms"] + 5.0
        row["bound_ms"] = bound
        row["goal_met"] = row["downtime_ms"] <= bound
        if row.get("transfer_gbs"):
            row["transfer_vs_perftest"] = row["transfer_gbs"] / row["perftest_gbs"]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", required=True)
    ap.add_argument("--sizes-mb", default="16,64")
    ap.add_argument("--shape", default="none,10gbit:50us", help="comma list of none or RATE:DELAY (tc netem)")
    ap.add_argument("--step-ms", type=int, default=10)
    ap.add_argument("--quick", action="store_true", help="16 MiB, unshaped and shaped")
    ap.add_argument("--json")
    a, _ = ap.parse_known_args()
    sizes = [16] if a.quick else [int(x) for x in a.sizes_mb.split(",") if x]
    b = os.path.abspath(a.build)
    bins = dict(tmrun=f"{b}/tools/tmrun/tmrun", tmctl=f"{b}/tools/tmctl/tmctl", tm_train=f"{b}/tools/tm_train/tm-train",
                shim=f"{b}/lib/shim/libtrainmover.so", hostnccl=f"{b}/plugins/hostnccl/libnccl.so.2")
    rows = []
    print("Migration across hosts (network namespaces; UCX over tcp; 2 x 2 ranks + a joiner on a third host)")
    print(f"{'shape':>14} {'state':>8} {'perftest':>10} {'in-mig':>10} {'ratio':>6} {'step':>7} {'downtime':>9} "
          f"{'bound':>8}  goal")
    for shape in a.shape.split(","):
        for s in sizes:
            try:
                r = point(bins, s, shape, a.step_ms)
            except nethosts.Unavailable as e:
                print(f"SKIP: {e}")
                return 77
            rows.append(r)

            def f(k, fmt):
                return fmt.format(r[k]) if r.get(k) is not None else "n/a"
            verdict = "error: " + r["error"] if "error" in r else ("met" if r.get("goal_met") else "NOT met")
            print(f"{shape:>14} {s:>5}MiB {f('perftest_gbs', '{:.2f}GB/s'):>10} {f('transfer_gbs', '{:.2f}GB/s'):>10} "
                  f"{f('transfer_vs_perftest', '{:.2f}'):>6} {f('step_ms', '{:.1f}ms'):>7} "
                  f"{f('downtime_ms', '{:.1f}ms'):>9} {f('bound_ms', '{:.1f}ms'):>8}  {verdict}", flush=True)
    for r in rows:
        if r.get("shape_applied"):
            print(f"shape {r['shape']}: applied {r['shape_applied']}")
            break
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0 if all(r.get("state") == "done" and "error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
