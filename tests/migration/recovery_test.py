#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Failure-recovery scenarios of tm-train under the shim (tmrun with its embedded coordinator, hostnccl).

usage: recovery_test.py TMRUN TMCTL TMTRAIN SHIM HOSTNCCL TRAINMOVERD SCENARIO

Every scenario runs tm-train on N ranks, makes ranks fail (SIGKILL, SIGSTOP) at given steps, and checks that the
job finishes with every rank's final digest (the replacement's for a failed rank) equal to an uninterrupted run's,
bit for bit, and what the coordinator reports of each recovery. Refusals check that the job fails with the reason
and never hangs. Exit 0 pass, 1 fail, 77 skip. Helpers (Job, reference, digests) are mig_test.py's.
"""
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mig_test as mt  # noqa: E402  (reads the same arguments)
from mig_test import Job, fail, WORK  # noqa: E402


def recoveries(job):
    return [m for m in job.status()["migrations"] if m.get("kind") == "recover"]


def pid_of(job, rank):
    for p in job.status()["processes"]:
        if p["state"] == "alive" and p["role"] == "worker" and p["rank"] == rank:
            return p["pid"]
    fail(f"{job.name}: no alive worker holds rank {rank}")


def wait_recovered(job, count, expect="done"):
    """Waits until `count` recoveries ended; the last must have ended `expect`."""
    deadline = time.monotonic() + mt.TIMEOUT
    while time.monotonic() < deadline:
        rs = [m for m in recoveries(job) if m["state"] in ("done", "failed")]
        if len(rs) >= count:
            r = rs[-1]
            if r["state"] != expect:
                fail(f"{job.name}: recovery {r['id']} ended {r['state']} ({r['reason']}), expected {expect}")
            return r
        if job.p.poll() is not None:
            fail(f"{job.name}: the job ended before recovery {count} ended")
        time.sleep(0.05)
    fail(f"{job.name}: recovery {count} did not end (hang?)")


def check_report(job, r, rank):
    rec = r["recovery"]
    if r["rank"] != rank or rec["rollback_step"] < 0 or rec["lost_steps"] < 0 or not rec["replacement"]:
        fail(f"{job.name}: recovery report {r}")
    # Snapshots every safe point: at most the steps between two safe points, plus the one in flight.
    if rec["lost_steps"] > 3:
        fail(f"{job.name}: {rec['lost_steps']} steps lost, at most 3 expected with TRAINMOVER_SNAPSHOT_EVERY=1")
    print(f"{job.name}: rank {rank} recovered: epoch {rec['epoch']}, detected by '{rec['detected_by']}', rolled back "
          f"to step {rec['rollback_step']} from {rec['failed_at_step']} ({rec['lost_steps']} lost), "
          f"downtime {r['downtime_ms']:.1f} ms, {rec['replacement']}")


def kill_plan(name, ranks, plan, steps=300, sig=signal.SIGKILL, env=None, tmrun_opts=()):
    """plan: list of (step, rank): at that step the rank's process gets `sig`; each must be recovered."""
    mt.clear_joiner_logs()
    job = Job(name, ranks, steps=steps, step_ms=8, env=env, tmrun_opts=tmrun_opts)
    failed = set()
    try:
        for n, (k, rank) in enumerate(plan, 1):
            job.wait_step(k)
            os.kill(pid_of(job, rank), sig)
            check_report(job, wait_recovered(job, n), rank)
            failed.add(rank)
        job.finish()
    finally:
        job.kill()
    job.check_digests(failed)
    return job


def scenario_kill():
    # rank 0, a middle rank and the last rank of 4; rank 0 of 2
    kill_plan("kill0", 4, [(20, 0)])
    kill_plan("kill_middle", 4, [(20, 2)])
    kill_plan("kill_last", 4, [(20, 3)])
    kill_plan("kill_pair", 2, [(20, 0)])


def scenario_twice():
    # two failures in a row: the same rank again (its replacement), then another
    kill_plan("twice", 4, [(20, 1), (60, 1), (100, 3)])


def scenario_blocked():
    # the others wait in an AllReduce for a rank that is stopped, then killed: they return (fenced) and recover
    mt.clear_joiner_logs()
    job = Job("blocked", 3, steps=300, step_ms=8)
    try:
        job.wait_step(20)
        pid = pid_of(job, 1)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.5)  # the survivors are now blocked in the AllReduce of their next step
        os.kill(pid, signal.SIGKILL)
        check_report(job, wait_recovered(job, 1), 1)
        job.finish()
    finally:
        job.kill()
    job.check_digests({1})


def scenario_silent():
    # SIGSTOP only: the host goes silent; the heartbeat timeout detects it (tmrun's coordinator: 10 s by default,
    # 1.5 s here), a shorter pause first must not evict anyone
    env = {"TRAINMOVER_HEARTBEAT_TIMEOUT_MS": "1500"}
    mt.clear_joiner_logs()
    job = Job("silent", 3, steps=400, step_ms=8, env=env)
    try:
        job.wait_step(20)
        pid = pid_of(job, 2)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(0.5)
        os.kill(pid, signal.SIGCONT)
        time.sleep(1.0)
        if recoveries(job):
            fail("silent: a pause shorter than the heartbeat timeout started a recovery")
        job.wait_step(60)
        os.kill(pid_of(job, 2), signal.SIGSTOP)
        r = wait_recovered(job, 1)
        if not r["recovery"]["detected_by"].startswith("no heartbeat"):
            fail(f"silent: detected by '{r['recovery']['detected_by']}', expected the heartbeat timeout")
        check_report(job, r, 2)
        job.finish()
    finally:
        job.kill()
    job.check_digests({2})


def scenario_refused():
    # TRAINMOVER_RECOVERY=off: the job fails as without recovery (tmrun reports the killed rank)
    job = Job("off", 3, steps=2000, step_ms=8, env={"TRAINMOVER_RECOVERY": "off"})
    try:
        job.wait_step(10)
        os.kill(pid_of(job, 1), signal.SIGKILL)
        rc = job.finish(expect_rc=None)
    finally:
        job.kill()
    with open(job.log, errors="replace") as f:
        log = f.read()
    if rc == 0 or "stopping the other ranks" not in log or recoveries(job) if job.p.poll() is None else rc == 0:
        fail(f"off: tmrun exited {rc}; expected the job to fail")
    print(f"off: the job failed as without recovery (tmrun exit {rc})")


SCENARIOS = {"kill": scenario_kill, "twice": scenario_twice, "blocked": scenario_blocked, "silent": scenario_silent,
             "refused": scenario_refused}

if __name__ == "__main__":
    for path in (mt.TMRUN, mt.TMCTL, mt.TMTRAIN, mt.SHIM, mt.HOSTNCCL):
        if not path or not os.path.exists(path):
            print(f"SKIP: {path or 'a tool'} not built")
            sys.exit(77)
    SCENARIOS[mt.SCENARIO]()
    print("PASS")
