#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Stragglers (docs/stragglers.md): ./run bench straggler.

1. Time to detect versus slowdown (1.1x, 1.2x, 1.5x, 2x): real runs, tm-train on hostnccl under the shim with
   trainmoverd at its default detector parameters (3 ranks, --step-ms 5, one-second windows): seconds and steps
   from the slowdown (--slow-from-step) to the flag, read from the status document polled every 50 ms.
2. False positives per 10,000 steps under jitter: a real run (3 ranks, --step-jitter 4, no straggler; every flag the
   coordinator logs counts), and the detector fed synthetic windows of measured-shaped noise (perf/straggler_fp,
   stated as such) with detection in steps under the same noise.
3. Job steps/s before the straggler, while it runs, and after --straggler-policy migrate moved it: one real run,
   from rank 0's tm-train timeline (rank 0 is never moved).

usage: straggler_bench.py --build DIR [--json FILE] [--quick]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools", "harness"))
from stragglers import Job, rate  # noqa: E402

HB_TIMEOUT_MS = 4000  # one-second windows
SLOW_FROM = 300


def detect(build, work, slowdown, timeout_s):
    job = Job(build, work, f"detect-{slowdown}", ranks=3, steps=100000, heartbeat_timeout_ms=HB_TIMEOUT_MS,
              train_args=["--slow-rank", "1", "--slowdown", str(slowdown), "--slow-from-step", str(SLOW_FROM)])
    try:
        s = job.watch(lambda s: any(p["rank"] == 1 and p["step"] >= SLOW_FROM for p in job.workers(s)),
                      timeout=60, every=0.02)
        if not s:
            return None
        t0 = time.monotonic()
        s = job.watch(lambda s: any(p["straggler"] for p in job.workers(s)), timeout=timeout_s, every=0.05)
        if not s:
            return {"slowdown": slowdown, "detected": False, "after_s": None, "after_steps": None, "others": 0}
        flagged = [p for p in job.workers(s) if p["straggler"]]
        return {"slowdown": slowdown, "detected": flagged[0]["rank"] == 1, "after_s": round(time.monotonic() - t0, 2),
                "after_steps": flagged[0]["step"] - SLOW_FROM, "score": flagged[0]["straggler_score"],
                "others": len([p for p in flagged if p["rank"] != 1])}
    finally:
        job.stop()


def jitter(build, work, steps):
    job = Job(build, work, "jitter", ranks=3, steps=steps, heartbeat_timeout_ms=HB_TIMEOUT_MS,
              train_args=["--step-jitter", "4"])
    try:
        job.watch(lambda s: False, timeout=900, every=0.5)
        job.finish()
        s = job.status()
        flags = job.coordinator_log().count(") flagged:")
        scores = [o[4] for obs in job.seen.values() for o in obs if o[4] is not None]
        return {"steps": steps, "flags": flags, "per_10k_steps": round(flags * 10000 / steps, 3),
                "rounds": s["stragglers"]["rounds"] if s else None, "max_score": max(scores) if scores else None}
    finally:
        job.stop()


def migrate(build, work, steps):
    job = Job(build, work, "migrate", ranks=3, steps=steps, heartbeat_timeout_ms=HB_TIMEOUT_MS,
              train_args=["--slow-rank", "1", "--slowdown", "1.5", "--slow-from-step", str(SLOW_FROM)],
              coordinator_args=["--straggler-policy", "migrate"])
    try:
        job.watch(lambda s: False, timeout=300, every=0.2)
        job.finish()
        s = job.status()
        acts = s["stragglers"]["actions"]
        mig = {m["id"]: m for m in s["migrations"]}
        switch = next((mig[a["migration"]]["switch_step"] for a in acts if a["migration"] in mig), None)
        times = job.step_times(0)
        last = times[-1][0]
        out = {"actions": acts, "switch_step": switch, "steps": last,
               "before_steps_per_s": rate(times, 100, SLOW_FROM)}
        if switch and switch > SLOW_FROM:
            out["during_steps_per_s"] = rate(times, SLOW_FROM + 20, switch)
            out["after_steps_per_s"] = rate(times, switch + 20, last - 5)
        return out
    finally:
        job.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--json")
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    work = tempfile.mkdtemp(prefix="straggler-bench-")
    result = {"load": open("/proc/loadavg").read().split()[:3], "cpus": os.cpu_count()}

    print(f"# 1. time to detect (real runs: 3 ranks, --step-ms 5, hostnccl, default detector, 1 s windows; "
          f"load {' '.join(result['load'])})")
    print(f"{'slowdown':>9} {'detected':>9} {'after_s':>8} {'after_steps':>12} {'score':>7} {'others':>7}")
    rows = []
    for slowdown in ([1.2, 2.0] if a.quick else [1.1, 1.2, 1.5, 2.0]):
        r = detect(build, work, slowdown, timeout_s=20)
        if r is None:
            print(f"{slowdown:>9} run failed")
            continue
        rows.append(r)
        print(f"{slowdown:>9} {str(r['detected']):>9} {str(r['after_s']):>8} {str(r['after_steps']):>12} "
              f"{r.get('score', 0) or 0:>+7.2f} {r['others']:>7}")
    result["detect"] = rows

    n = 2000 if a.quick else 10000
    print(f"\n# 2a. false positives under jitter, real run (3 ranks, --step-jitter 4, no straggler, {n} steps)")
    j = jitter(build, work, n)
    result["jitter"] = j
    print(f"flags {j['flags']} in {j['steps']} steps = {j['per_10k_steps']} per 10,000 steps ({j['rounds']} rounds, "
          f"highest score seen {j['max_score']})")
    print("\n# 2b. false positives under jitter (the detector on synthetic, measured-shaped noise)")
    fp = subprocess.run([os.path.join(build, "perf", "straggler_fp"), "--steps", "200000" if a.quick else "1000000"],
                        capture_output=True, text=True, check=True).stdout
    print("\n".join(fp.splitlines()[:-1]))
    result["false_positives"] = json.loads(fp.splitlines()[-1])

    print("\n# 3. job steps/s before, during and after the policy's migration (real run, rank 0's timeline)")
    m = migrate(build, work, 2500 if a.quick else 4000)
    result["migrate"] = m
    for k in ("before_steps_per_s", "during_steps_per_s", "after_steps_per_s"):
        v = m.get(k)
        print(f"{k:>22}: {v:.1f}" if v else f"{k:>22}: n/a")
    for act in m["actions"]:
        print(f"  action: rank {act['rank']} migration {act['migration']} {act['state']} {act['outcome']} "
              f"(job step {act['baseline_step_ms']:.2f} -> {act['slow_step_ms']:.2f} -> {act['after_step_ms']:.2f} ms)")
    print(json.dumps(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
