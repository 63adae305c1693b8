#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Stragglers end to end: tm-train on hostnccl under the shim with trainmoverd (docs/stragglers.md).

usage: straggler_test.py BUILD SCENARIO      (exit 0 pass, 1 fail)

detect   3 ranks; the process of rank 2 computes 30% longer from step 200 (--slow-rank/--slowdown): it is flagged
         within a bounded time and number of steps, no other rank ever is; tmctl status/stragglers, the status
         JSON, the Prometheus gauge and the log line say so; SIGUSR1 makes it fast again and it recovers (log
         line); every digest equals the run without the shim.
jitter   3 ranks with --step-jitter and no straggler, 1500 steps: no rank is ever flagged.
migrate  --straggler-policy migrate: the slow rank 1 is migrated (a spawned joiner, which is not slow), the
         coordinator finds the job's step time back to its figure before the straggler ("recovered"), and every
         rank, the joiner included, ends bit-identical to the run without the shim.

The coordinator runs with the detector's defaults (threshold +10% for 3 one-second windows): its figure, the lower
quartile of a window's step compute times, ignores the time a loaded machine adds to some steps (docs/stragglers.md,
"Noise"; at load average 43 on the 2-core development machine the highest score seen without a straggler was
+0.16 in one window, never three in a row), except the migrate scenario (MIGRATE_DETECTOR, below). The detector on
synthetic series: tests/control/straggler_unit.cc.
"""
import os
import re
import sys
import tempfile
import time

BUILD = os.path.abspath(sys.argv[1])
SCENARIO = sys.argv[2]
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "harness"))
from stragglers import Job, reference  # noqa: E402

WORK = tempfile.mkdtemp(prefix=f"straggler-{SCENARIO}-")
HB_TIMEOUT_MS = 4000  # heartbeats (and windows) every second
WINDOW_S = HB_TIMEOUT_MS / 4 / 1000
JOBS = []


def fail(msg):
    print(f"FAIL: {msg}")
    for job in JOBS:
        print(f"--- {job.name}: coordinator log (tail)\n{''.join(job.coordinator_log().splitlines(True)[-20:])}")
        with open(job.log, errors="replace") as f:
            print(f"--- {job.name}: job log (tail)\n{''.join(f.readlines()[-10:])}")
    for job in JOBS:
        job.stop()
    sys.exit(1)


def start(name, coordinator_args=(), **kw):
    job = Job(BUILD, WORK, name, ranks=3, heartbeat_timeout_ms=HB_TIMEOUT_MS,
              coordinator_args=list(coordinator_args),
              **kw)
    JOBS.append(job)
    return job


def check_digests(job, migrated=()):
    want = reference(BUILD, WORK, job.ranks, job.steps)
    got = job.digests(migrated)
    if sorted(got) != list(range(job.ranks)) or set(got.values()) != {want}:
        fail(f"{job.name}: digests {got}, the run without the shim {want}")
    print(f"{job.name}: all {job.ranks} digests equal the run without the shim ({want[:16]}...)")


def scenario_detect():
    slow_from = 200
    job = start("detect", steps=3000, train_args=["--slow-rank", "2", "--slowdown", "1.3", "--slow-from-step",
                                                   str(slow_from)])
    # When rank 2 reaches the step the slowdown starts, then when it is flagged.
    s = job.watch(lambda s: any(p["rank"] == 2 and p["step"] >= slow_from for p in job.workers(s)), every=0.02)
    if not s:
        fail("detect: the job never reached the slowdown")
    t_slow = time.monotonic()
    s = job.watch(lambda s: any(p["straggler"] for p in job.workers(s)), timeout=30)
    if not s:
        fail("detect: no rank flagged within 30 s")
    t_flag = time.monotonic()
    flagged = [p for p in job.workers(s) if p["straggler"]]
    step = flagged[0]["step"]
    # The bound: flag_windows rounds, one partial window on each side, two for a loaded machine.
    bound_s = (s["stragglers"]["windows"] + 4) * WINDOW_S
    print(f"detect: rank {flagged[0]['rank']} flagged {t_flag - t_slow:.2f} s and {step - slow_from} steps after the "
          f"slowdown began (score {flagged[0]['straggler_score']:+.2f}; bound {bound_s:.1f} s)")
    if [p["rank"] for p in flagged] != [2]:
        fail(f"detect: flagged {[p['rank'] for p in flagged]}, expected [2]")
    if t_flag - t_slow > bound_s:
        fail(f"detect: flagged after {t_flag - t_slow:.2f} s, bound {bound_s:.1f} s")
    # Above the threshold, and no upper bound: on a loaded machine the slowed process also pays a second wake-up
    # per step (its slowdown is a sleep), so it is measured well above +30% (+107% at load 43).
    if not flagged[0]["straggler_score"] > s["stragglers"]["threshold"] or not flagged[0]["straggler_since_ms"]:
        fail(f"detect: score/since {flagged[0]}")
    rc, out = job.ctl("status")
    row = next((line for line in out.splitlines() if re.search(r"\s2/3\s", line)), "")
    if rc or "STRAGGLER" not in out or "yes +" not in row:
        fail(f"detect: tmctl status shows no straggler on rank 2:\n{out}")
    rc, out = job.ctl("stragglers")
    if rc or not re.search(r"^2\s+\d+\s+\S+\s+[\d.]+\s+[\d.]+\s+[\d.]+%\s+yes", out, re.M):
        fail(f"detect: tmctl stragglers:\n{out}")
    metrics = job.metrics_text()
    if 'trainmover_straggler{rank="2"} 1' not in metrics or 'trainmover_straggler{rank="0"} 0' not in metrics:
        fail(f"detect: metrics:\n{metrics}")
    if not re.search(r"straggler: rank 2 \(process \d+, \S+\) flagged", job.coordinator_log()):
        fail("detect: no log line for the flag")
    # SIGUSR1 toggles the slowdown off in that process: it recovers.
    os.kill(job.pid_of_rank(2), 10)
    s = job.watch(lambda s: not any(p["straggler"] for p in job.workers(s)), timeout=30)
    if not s:
        fail("detect: rank 2 never recovered after SIGUSR1")
    if not re.search(r"straggler: rank 2 \(process \d+, \S+\) recovered", job.coordinator_log()):
        fail("detect: no log line for the recovery")
    print(f"detect: rank 2 recovered {time.monotonic() - t_flag:.2f} s after the flag (SIGUSR1 at the flag)")
    job.watch(lambda s: False, timeout=120)  # to the end, recording
    if job.finish() != 0:
        fail("detect: the job failed")
    others = {r for r in job.ever_flagged().values() if r != 2}
    if others:
        fail(f"detect: ranks {others} were flagged too")
    job.stop()
    check_digests(job)


def scenario_jitter():
    job = start("jitter", steps=1500, train_args=["--step-jitter", "4"])
    job.watch(lambda s: False, timeout=120)
    if job.finish() != 0:
        fail("jitter: the job failed")
    flagged = job.ever_flagged()
    rounds = job.status()["stragglers"]["rounds"]
    job.stop()
    if flagged:
        fail(f"jitter: flagged without a straggler: {flagged}")
    if "flagged" in job.coordinator_log():
        fail("jitter: a flag in the coordinator's log")
    if rounds < 10:
        fail(f"jitter: only {rounds} detector rounds: the run says nothing")
    scores = [o[4] for obs in job.seen.values() for o in obs if o[4] is not None]
    print(f"jitter: no rank flagged in {job.steps} steps ({rounds} detector rounds; highest score seen "
          f"{max(scores):+.3f}, load {open('/proc/loadavg').read().split()[0]})")


# The migrate scenario's verification compares the job's step time after the move with the figure before the
# straggler, within the threshold; on the shared 2-core machine the job's step time itself swings 3x within seconds
# with the load (22 ms before, 8 ms with the straggler, 36 ms after, at load 25-45: "not recovered" at the default
# 10%), so this scenario keeps the wider detector of the first version (docs/stragglers.md, "Noise").
MIGRATE_DETECTOR = ["--straggler-threshold", "0.2", "--straggler-windows", "5"]


def scenario_migrate():
    slow_from = 200
    job = start("migrate", steps=5000,  # long enough for four verification spans after the move
                train_args=["--slow-rank", "1", "--slowdown", "1.3", "--slow-from-step", str(slow_from)],
                coordinator_args=["--straggler-policy", "migrate", "--straggler-cooldown-s", "600"] + MIGRATE_DETECTOR)

    def done(s):
        acts = s["stragglers"]["actions"]
        return acts and acts[0]["state"] == "done"
    s = job.watch(done, timeout=90)
    if not s:
        fail("migrate: no straggler action ended")
    a = s["stragglers"]["actions"][0]
    print(f"migrate: rank {a['rank']} moved by migration {a['migration']}: job step {a['baseline_step_ms']:.2f} ms "
          f"before, {a['slow_step_ms']:.2f} ms with the straggler, {a['after_step_ms']:.2f} ms after: {a['outcome']}")
    if a["rank"] != 1 or a["outcome"] != "recovered":
        fail(f"migrate: action {a}")
    mig = next(m for m in s["migrations"] if m["id"] == a["migration"])
    if mig["state"] != "done" or not mig["spawn"]:
        fail(f"migrate: migration {mig}")
    log = job.coordinator_log()
    for want in (r"straggler: rank 1 \(process \d+, \S+\) flagged", r"straggler: moving rank 1 away",
                 r"straggler: rank 1 after migration \d+: .*: recovered"):
        if not re.search(want, log):
            fail(f"migrate: no log line /{want}/")
    if job.finish(timeout=300) != 0:  # 5,000 steps: 50 s quiet, over 120 s at load 20
        fail("migrate: the job failed (or did not end within 300 s)")
    # Every rank the policy moved (rank 1; another only if the machine's noise made it look slow) ends from its
    # joiner's log.
    s = job.status()
    done = {m["id"] for m in s["migrations"] if m["state"] == "done"}
    moved = sorted({a["rank"] for a in s["stragglers"]["actions"] if a["migration"] in done})
    if moved != [1]:
        print(f"migrate: the policy also moved ranks {[r for r in moved if r != 1]}: {s['stragglers']['actions']}")
    job.stop()
    check_digests(job, migrated=moved)


try:
    {"detect": scenario_detect, "jitter": scenario_jitter, "migrate": scenario_migrate}[SCENARIO]()
finally:
    for j in JOBS:
        j.stop()
print("PASS")
