#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Failure-recovery scenarios of tm-train under the shim (tmrun with its embedded coordinator, hostnccl).

usage: recovery_test.py TMRUN TMCTL TMTRAIN SHIM HOSTNCCL TRAINMOVERD SCENARIO

Every scenario runs tm-train on N ranks, makes ranks fail (SIGKILL, SIGSTOP) at given steps, and checks that the
job finishes with every rank's final digest (the replacement's for a failed rank) equal to an uninterrupted run's,
bit for bit, and what the coordinator reports of each recovery. Refusals check that the job fails with the reason
and never hangs. Exit 0 pass, 1 fail, 77 skip. Helpers (Job, reference, digests) are mig_test.py's.
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mig_test as mt  # noqa: E402  (reads the same arguments)
from mig_test import Job, fail, WORK  # noqa: E402
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "harness"))
from relay import Relay  # noqa: E402


# A job's command prefix: the process of rank 2 reaches the coordinator through the relay whose address is TM_RELAY.
RANK_2_VIA_RELAY = ["sh", "-c", '[ "$RANK" = 2 ] && export TRAINMOVER_COORDINATOR="$TM_RELAY"; exec "$@"', "sh"]


def recoveries(job):
    return [m for m in job.status()["migrations"] if m.get("kind") == "recover"]


def wait_ended(pid, seconds):
    """Whether process `pid` (not ours: the job's) ended, or is a zombie, within `seconds`."""
    def running():
        if not os.path.exists(f"/proc/{pid}"):
            return False
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and running():
        time.sleep(0.05)
    return not running()


def pid_of(job, rank):
    for p in job.status()["processes"]:
        if p["state"] == "alive" and p["role"] == "worker" and p["rank"] == rank:
            return p["pid"]
    fail(f"{job.name}: no alive worker holds rank {rank}")


def recoverable_pid(job, rank):
    """The pid of the worker of `rank` once a buddy holds a verified copy of one of its snapshots (snapshot_step in
    the status): its failure can be recovered from then on. The first snapshot waits for the slots' set-up, which
    takes from tens of ms to a second on a loaded machine, so a step count alone does not say it."""
    deadline = time.monotonic() + mt.TIMEOUT
    while time.monotonic() < deadline:
        for p in job.status()["processes"]:
            if p["state"] == "alive" and p["role"] == "worker" and p["rank"] == rank and p["snapshot_step"] >= 0:
                return p["pid"]
        time.sleep(0.05)
    fail(f"{job.name}: no snapshot of rank {rank} reached its buddy")


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
    # What the coordinator waits for: each process's state and step, the recovery's record. TM_TEST_GDB=1 also writes
    # every alive process's stacks to /tmp/gdb-PID.txt (how recovery_twice_3d's hang was found).
    s = job.status()
    print(json.dumps({"processes": s["processes"], "recoveries": recoveries(job)}))
    for p in s["processes"] if os.environ.get("TM_TEST_GDB") else []:
        if p["state"] == "alive":
            with open(f"/tmp/gdb-{p['pid']}.txt", "w") as f:
                subprocess.run(["gdb", "-p", str(p["pid"]), "-batch", "-ex", "thread apply all bt"], stdout=f,
                               stderr=subprocess.STDOUT, timeout=60)
    fail(f"{job.name}: recovery {count} did not end (hang?)")


def check_report(job, r, rank, every=1):
    """every: the job's TRAINMOVER_SNAPSHOT_EVERY, 0 for auto (the coordinator's interval, in the record)."""
    rec = r["recovery"]
    if r["rank"] != rank or rec["rollback_step"] < 0 or rec["lost_steps"] < 0 or not rec["replacement"]:
        fail(f"{job.name}: recovery report {r}")
    if every and rec["snapshot_every"] != every:
        fail(f"{job.name}: the record's snapshot interval is {rec['snapshot_every']}, the job's {every}")
    # Each rank snapshots at every `every`-th safe point and does not pass the next safe point before that snapshot
    # is on its buddy (docs/recovery.md, "the bound on lost steps"): at most `every` completed steps are trained
    # again, one more when the rank died while held at that next safe point for its snapshot's pull (the step it
    # completed on the way there is lost with the snapshot in flight).
    if rec["lost_steps"] > rec["snapshot_every"] + 1:
        fail(f"{job.name}: {rec['lost_steps']} steps lost, more than the snapshot interval {rec['snapshot_every']} + 1")
    print(f"{job.name}: rank {rank} recovered: epoch {rec['epoch']}, detected by '{rec['detected_by']}', rolled back "
          f"to step {rec['rollback_step']} from {rec['failed_at_step']} ({rec['lost_steps']} lost), "
          f"downtime {r['downtime_ms']:.1f} ms, {rec['replacement']}")


def kill_plan(name, ranks, plan, steps=300, sig=signal.SIGKILL, env=None, tmrun_opts=(), layout=(), daemon=False,
              **job_args):
    """plan: list of (step, rank): at that step the rank's process gets `sig`; each must be recovered. job_args: more
    of Job's (preload, train_args)."""
    mt.clear_joiner_logs()
    job = Job(name, ranks, steps=steps, step_ms=8, env=env, tmrun_opts=tmrun_opts, layout=layout, daemon=daemon,
              **job_args)
    every = int((env or {}).get("TRAINMOVER_SNAPSHOT_EVERY", "1"))
    failed = set()
    try:
        for n, (k, rank) in enumerate(plan, 1):
            job.wait_step(k)
            os.kill(recoverable_pid(job, rank), sig)
            check_report(job, wait_recovered(job, n), rank, every)
            failed.add(rank)
        job.finish()
    finally:
        job.kill()
    job.check_digests(failed)
    return job


def scenario_kill():
    # rank 0, a middle rank and the last rank of 4; rank 0 of 2; a snapshot every 4th step
    kill_plan("kill0", 4, [(20, 0)])
    kill_plan("kill_middle", 4, [(20, 2)])
    kill_plan("kill_last", 4, [(20, 3)])
    kill_plan("kill_pair", 2, [(20, 0)])
    kill_plan("kill_every4", 3, [(21, 1)], env={"TRAINMOVER_SNAPSHOT_EVERY": "4"})


def wait_interval(job):
    """TRAINMOVER_SNAPSHOT_EVERY=auto: waits until every alive worker was told the same interval above 1 (the
    coordinator's, from the ranks' measurements) and returns it."""
    deadline = time.monotonic() + mt.TIMEOUT
    while time.monotonic() < deadline:
        ended = job.p.poll() is not None  # before the query: the job's end takes tmctl's token file with it
        ws = [p for p in job.status()["processes"] if p["state"] == "alive" and p["role"] == "worker"] \
            if not ended else []
        told = {p["snapshot_every"] for p in ws}
        if len(ws) == job.ranks and len(told) == 1 and min(told) > 1:
            return min(told)
        if ended:
            fail(f"{job.name}: the job ended before an interval was picked")
        time.sleep(0.05)
    fail(f"{job.name}: no common snapshot interval above 1 was picked")


def scenario_kill_auto():
    # TRAINMOVER_SNAPSHOT_EVERY=auto with snapshots expensive for the step (4 MiB of extra state: its copy and its
    # pull cost several 4 ms steps): the ranks measure, the coordinator picks one interval above 1 for all; rank 1
    # killed two intervals later is recovered bit-identical, at most the recorded interval lost.
    mt.clear_joiner_logs()
    layout = ("--extra-state-mb", "4")
    # Budget 0.1 and 1500 steps: at 0.5 and 600 steps a CI run at load 16 (steps stretched by the load, so the
    # snapshots looked cheap) ended the job before any interval above 1 was picked.
    job = Job("kill_auto", 3, steps=1500, step_ms=4, layout=layout,
              env={"TRAINMOVER_SNAPSHOT_EVERY": "auto", "TRAINMOVER_SNAPSHOT_BUDGET": "0.1"})
    try:
        every = wait_interval(job)
        step = max(p["step"] for p in job.status()["processes"] if p["role"] == "worker")
        job.wait_step(min(step + 2 * every + 1, job.steps - 100))
        os.kill(recoverable_pid(job, 1), signal.SIGKILL)
        r = wait_recovered(job, 1)
        check_report(job, r, 1, every=0)
        if r["recovery"]["snapshot_every"] < 2:
            fail(f"{job.name}: recorded snapshot interval {r['recovery']['snapshot_every']}, expected the adaptive one")
        print(f"{job.name}: interval {every} picked; the record's bound {r['recovery']['snapshot_every']}")
        job.finish()
    finally:
        job.kill()
    job.check_digests({1})


def scenario_kill_3d():
    # tm-train's 3D-parallel workload (TP 2 x PP 2: split communicators, pipeline Send/Recv): a middle rank killed;
    # every rank's own digest equal to the uninterrupted run's (more failures in a row: twice_3d).
    kill_plan("kill_3d", 4, [(20, 1)], layout=("--tp", "2", "--pp", "2"))


def scenario_twice_3d():
    # Failures in a row in the 3D workload (TP 2 x PP 2): a middle rank; then rank 0, whose buddy is now that rank's
    # replacement; then the replacement itself. Each recovery completes, every digest bit-identical (the second
    # failure once did not complete within 50 s: docs/recovery.md, "Known bugs").
    kill_plan("twice_3d", 4, [(20, 1), (60, 0), (100, 1)], layout=("--tp", "2", "--pp", "2"))


def scenario_fence_skew_3d():
    # docs/recovery.md, "Fence": the survivors' fences arrive at different points of the step. In the 3D workload
    # (TP 2 x PP 2) rank 1 is killed while rank 2's control connection is cut for 1 s (its fence comes 1 s late):
    # rank 0 (stage 0) is fenced at once and reaches its next safe point first; rank 2 (stage 1) passes that safe
    # point unfenced and, in the step after it, waits for rank 0 in the pipeline exchange, on a communicator without
    # the failed rank. Held at its own next safe point, rank 0 never sent that exchange: the job hung (recovery_twice_3d
    # in CI, one run in 8 at load 13). Every survivor must pass its safe points up to the newest one any survivor had
    # passed at its fence (HOLD_AFTER), so the recovery completes, every digest bit-identical.
    mt.clear_joiner_logs()
    relay = Relay()
    # Steps of 50 ms (tm-train sleeps after the step's last collective): the kill lands after that collective in most
    # steps, and rank 0's fence (about 10 ms after the kill) comes before its next safe point.
    job = Job("fence_skew_3d", 4, steps=150, step_ms=50, env={"TM_RELAY": relay.addr}, wrap=RANK_2_VIA_RELAY,
              layout=("--tp", "2", "--pp", "2"))
    relay.target = job.addr
    try:
        job.wait_step(20)
        victim = recoverable_pid(job, 1)
        relay.cut_open()
        os.kill(victim, signal.SIGKILL)
        time.sleep(1.0)
        relay.restore()
        check_report(job, wait_recovered(job, 1), 1)
        job.finish()
    finally:
        job.kill()
        relay.sock.close()
    job.check_digests({1})


def scenario_late_coordinator_3d():
    # The agents register only after every communicator exists (by chance on a loaded machine; here the coordinator
    # starts late). In the 3D workload a process's first communicator is its DP group's (rank 0 of 1): each process
    # must still register with its launcher's rank. All four once registered as rank 0: three ranks' snapshots were
    # never relayed, each waited kShipWaitMs at every safe point, and the job crawled (recovery_kill_3d and
    # recovery_twice_3d in CI at load 15-20: "step 20 not reached").
    job = Job("late_coordinator_3d", 4, steps=300, step_ms=8, layout=("--tp", "2", "--pp", "2"), daemon="late")
    try:
        job.wait_step(20)
        ranks = sorted((p["rank"], p["world"]) for p in job.status()["processes"] if p["role"] == "worker")
        if ranks != [(r, 4) for r in range(4)]:
            fail(f"late_coordinator_3d: the workers registered as (rank, world) {ranks}, not their launcher's")
        for r in range(4):  # every rank's snapshots reach a buddy
            recoverable_pid(job, r)
        # And a failure is recovered (with the coordinator started late, one stayed "building" for good before the
        # survivors held at one safe point: docs/recovery.md, "3. Fence").
        os.kill(recoverable_pid(job, 1), signal.SIGKILL)
        check_report(job, wait_recovered(job, 1), 1)
        job.finish()
    finally:
        job.kill()
    with open(job.log, errors="replace") as f:
        if "is not on its buddy after" in f.read():
            fail("late_coordinator_3d: a safe point waited out kShipWaitMs")
    job.check_digests({1})
    print("late_coordinator_3d: ranks 0-3 of 4 registered, every snapshot shipped, rank 1 recovered, digests equal the "
          "uninterrupted run's")


def scenario_twice():
    # two failures in a row: the same rank again (its replacement), then another
    kill_plan("twice", 4, [(20, 1), (60, 1), (100, 3)])


def wait_recovery(job, n, ready):
    """Waits until recovery `n` (1-based) is under way and ready(record) holds; returns the record."""
    deadline = time.monotonic() + mt.TIMEOUT
    while time.monotonic() < deadline:
        rs = recoveries(job)
        if len(rs) >= n and rs[n - 1]["state"] in ("done", "failed"):
            fail(f"{job.name}: recovery {n} ended {rs[n - 1]['state']} ({rs[n - 1]['reason']}) before the second failure")
        if len(rs) >= n and ready(rs[n - 1]):
            return rs[n - 1]
        if job.p.poll() is not None:
            fail(f"{job.name}: the job ended during recovery {n}")
        time.sleep(0.02)
    fail(f"{job.name}: recovery {n} never got under way")


def transferring(r):
    return any(p["phase"] == "transfer" and p["end_ms"] is None for p in r["phases"])


# The replacement waits 3 s before it reads its state (TRAINMOVER_FAULT=slow-transfer, joiners only) and every
# communicator init takes 700 ms: a recovery lasts seconds, a wide window to strike in.
SLOW_RECOVERY = dict(mt.SLOW_BUILD, TRAINMOVER_FAULT="slow-transfer")


def wait_renewed(job, first):
    """Waits until a recovery after `first` is done; each one from `first` on before it must have been abandoned for
    the next epoch (one more than the strike's may come between: the struck process's peers can report their builds
    failed on it before its own loss is seen, kBuildFailureGraceMs). Returns first's final record and the done one."""
    deadline = time.monotonic() + mt.TIMEOUT
    while time.monotonic() < deadline:
        rs = [r for r in recoveries(job) if r["id"] >= first["id"]]
        for a, b in zip(rs, rs[1:]):
            if a["state"] != "failed" or "abandoned for a new epoch" not in a["reason"] or \
                    b["recovery"]["epoch"] != a["recovery"]["epoch"] + 1:
                fail(f"{job.name}: recovery {a['id']} ended {a['state']} ({a['reason']}), then recovery {b['id']} of "
                     f"epoch {b['recovery']['epoch']}: expected abandoned for the next epoch")
        if len(rs) > 1 and rs[-1]["state"] in ("done", "failed"):
            if rs[-1]["state"] != "done":
                fail(f"{job.name}: recovery {rs[-1]['id']} ended failed ({rs[-1]['reason']})")
            if len(rs) > 2:
                print(f"{job.name}: {len(rs) - 2} more recovery abandoned between: {[r['reason'] for r in rs[1:-1]]}")
            return rs[0], rs[-1]
        if job.p.poll() is not None:
            fail(f"{job.name}: the job ended before the recovery after {first['id']} was done")
        time.sleep(0.05)
    fail(f"{job.name}: no recovery after {first['id']} was done (hang?)")


def strike_during_recovery(name, ready, strike, check, failed):
    """A 4-rank job (SLOW_RECOVERY): rank 1 killed at step 20; strike(job, first) once its recovery `first` is under
    way and ready(first). The first recovery must end abandoned for a new epoch, the next one done in the next epoch:
    check(job, first, old, new) with the first's final record; then every digest (the replacements' for `failed`)
    bit-identical."""
    mt.clear_joiner_logs()
    job = Job(name, 4, steps=300, step_ms=8, env=SLOW_RECOVERY)
    try:
        job.wait_step(20)
        os.kill(recoverable_pid(job, 1), signal.SIGKILL)
        first = wait_recovery(job, 1, ready)
        strike(job, first)
        old, r = wait_renewed(job, first)
        check(job, first, old, r)
        job.finish()
    finally:
        job.kill()
    job.check_digests(failed)


def scenario_second_failure():
    # A second rank killed while the first one's recovery is under way: as soon as it is seen (its replacement
    # starting or warming up), and while the replacement reads its state. The recovery is abandoned and a new epoch
    # recovers both ranks together from the newest snapshot complete on live buddies; every digest bit-identical.
    # Then the same with the first rank's only buddy as the second: refused cleanly (its snapshot is gone with it),
    # each survivor ends saying why.
    def both(job, first, old, r):
        if sorted(r["ranks"]) != [1, 3]:
            fail(f"{job.name}: the second recovery is of ranks {r['ranks']}, expected 1 and 3")
        print(f"{job.name}: rank 3 killed while recovery {first['id']} was {first['state']} "
              f"(phases {[p['phase'] for p in first['phases']]})")
        check_report(job, r, 3)
    for when, ready in (("early", lambda r: True), ("transfer", transferring)):
        strike_during_recovery(f"second_failure_{when}", ready, lambda job, first: os.kill(pid_of(job, 3), signal.SIGKILL),
                               both, {1, 3})

    def buddy_during(job):
        os.kill(recoverable_pid(job, 1), signal.SIGKILL)
        wait_recovery(job, 1, transferring)
        os.kill(pid_of(job, 2), signal.SIGKILL)
    rc, log = failed_job("second_failure_buddy", 4, buddy_during, env=SLOW_RECOVERY, survivors_end_alone=True, at=20)
    said = set(re.findall(r"\[(\d+)\] .*failure recovery impossible: (ranks 2 and 1 failed and cannot be recovered: "
                          r"no snapshot of rank 1 is complete on a live buddy[^;]*);", log))
    if {r for r, _ in said} != {"0", "3"}:
        fail(f"second_failure_buddy: survivors' reasons {said}; expected ranks 0 and 3 to end saying why")
    print(f"second_failure_buddy: the job failed (tmrun exit {rc}); the survivors said: {sorted(said)[0][1]}")


def stopped_then_killed(name, stop, **job_args):
    """3 ranks: rank `stop` is stopped, 0.5 s later rank 1 is killed; a stopped survivor is resumed once rank 1's
    memory is gone. Rank 1 must be recovered and every digest bit-identical."""
    mt.clear_joiner_logs()
    job = Job(name, 3, **job_args)
    try:
        job.wait_step(10)
        victim = recoverable_pid(job, 1)
        stopped = pid_of(job, stop)
        os.kill(stopped, signal.SIGSTOP)
        time.sleep(0.5)  # the running ranks are now blocked in an AllReduce on the stopped one
        os.kill(victim, signal.SIGKILL)
        if stopped != victim:
            wait_gone(job, victim)
            os.kill(stopped, signal.SIGCONT)
        check_report(job, wait_recovered(job, 1), 1)
        job.finish()
    finally:
        job.kill()
    job.check_digests({1})


def wait_gone(job, pid):
    """Waits until process pid has exited (a zombie or reaped): its memory is released by then."""
    deadline = time.monotonic() + mt.TIMEOUT
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return
        except FileNotFoundError:
            return
        time.sleep(0.01)
    fail(f"{job.name}: process {pid} did not exit after SIGKILL")


def scenario_blocked():
    # the others wait in an AllReduce for a rank that is stopped, then killed: they return (fenced) and recover
    stopped_then_killed("blocked", 1, steps=300, step_ms=8)


def scenario_blocked_cma():
    # A 1 MB model (250,000 parameters): each step's gradient AllReduce sends messages of 333 KB, which on one host
    # the receivers read straight out of the sender's memory (UCX's cma rendezvous, process_vm_readv). Rank 0 is
    # stopped; rank 1 runs into the AllReduce rank 0 is in or about to enter, posts its messages and waits on it (its
    # buddy, rank 2, keeps running, so rank 1 never waits at a safe point for a snapshot pull instead); rank 1 is
    # killed, and once its memory is gone rank 0 resumes and reads its messages: the reads fail (ESRCH). Rank 0 must
    # get hostnccl's error and be fenced and recovered like rank 2, every digest bit-identical; UCX 1.13 aborted it
    # there before hostnccl put an error callback on every endpoint (docs/hostnccl.md, "Transport"; with
    # HOSTNCCL_PEER_ERRORS=none in the environment it still does, and recovery is then impossible).
    stopped_then_killed("blocked_cma", 0, params=250000, steps=60, step_ms=30)


def scenario_silent():
    # SIGSTOP only: the process goes silent; the heartbeat timeout detects it (tmrun's coordinator: 10 s by default,
    # 1.5 s here); a shorter pause first must not evict anyone
    mt.clear_joiner_logs()
    job = Job("silent", 3, steps=400, step_ms=8, tmrun_opts=["--heartbeat-timeout-ms", "1500"])
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
        os.kill(recoverable_pid(job, 2), signal.SIGSTOP)
        r = wait_recovered(job, 1)
        if not r["recovery"]["detected_by"].startswith("no heartbeat"):
            fail(f"silent: detected by '{r['recovery']['detected_by']}', expected the heartbeat timeout")
        check_report(job, r, 2)
        job.finish()
    finally:
        job.kill()
    job.check_digests({2})


def scenario_nccl_detected():
    # A rank frozen (SIGSTOP: its control connection and its liveness connections stay open) while the others wait in
    # an AllReduce on it; the coordinator's heartbeat timeout is 60 s. hostnccl gives up on the frozen peer after
    # HOSTNCCL_TIMEOUT_MS (5 s) and sets the communicator's asynchronous error; the survivors' background poll
    # (TRAINMOVER_COMM_POLL_MS) reports it, the coordinator probes the communicator's members and declares the one
    # that does not answer failed, long before the heartbeat timeout would: the recovery says so, and every digest
    # is bit-identical.
    mt.clear_joiner_logs()
    job = Job("nccl_detected", 3, steps=300, step_ms=8, env={"HOSTNCCL_TIMEOUT_MS": "5000"},
              tmrun_opts=["--heartbeat-timeout-ms", "60000"])
    try:
        job.wait_step(20)
        t0 = time.monotonic()
        os.kill(recoverable_pid(job, 2), signal.SIGSTOP)
        r = wait_recovered(job, 1)
        how = r["recovery"]["detected_by"]
        if "NCCL library reported communicator" not in how or "no answer to a probe" not in how:
            fail(f"nccl_detected: detected by '{how}', expected the library's report and the probe")
        check_report(job, r, 2)
        print(f"nccl_detected: recovered {time.monotonic() - t0:.1f} s after the SIGSTOP (heartbeat timeout 60 s)")
        job.finish()
    finally:
        job.kill()
    job.check_digests({2})


def failed_job(name, ranks, strike, env=None, daemon=False, survivors_end_alone=False, at=10):
    """Runs a job that must fail: strike(job) makes it; returns tmrun's exit status and log. With
    survivors_end_alone the ranks ignore tmrun's SIGTERM (60 s grace), so each survivor ends by itself."""
    job = Job(name, ranks, steps=3000, step_ms=8, env=env, daemon=daemon, ignore_term=survivors_end_alone,
              tmrun_opts=("--grace-ms", "60000") if survivors_end_alone else ())
    try:
        job.wait_step(at)
        strike(job)
        rc = job.finish(expect_rc=None)
    finally:
        job.kill()
    with open(job.log, errors="replace") as f:
        log = f.read()
    if rc == 0:
        fail(f"{name}: the job ended 0")
    return rc, log


def scenario_refused():
    # TRAINMOVER_RECOVERY=off: the job fails as without recovery (tmrun reports the killed rank's status)
    rc, log = failed_job("off", 3, lambda j: os.kill(pid_of(j, 1), signal.SIGKILL), env={"TRAINMOVER_RECOVERY": "off"})
    if rc != 128 + signal.SIGKILL or "stopping the other ranks" not in log:
        fail(f"off: tmrun exited {rc}; expected the job to fail with the killed rank's status")
    print(f"off: the job failed as without recovery (tmrun exit {rc})")

    # A rank and its buddy (the next rank) at once: its snapshot is gone with the buddy; every survivor ends with
    # the reason by itself.
    def both(job):
        a, b = recoverable_pid(job, 1), recoverable_pid(job, 2)  # refused for the lost buddy, not for no snapshot yet
        os.kill(a, signal.SIGKILL)
        os.kill(b, signal.SIGKILL)
    rc, log = failed_job("buddy_lost", 4, both, survivors_end_alone=True)
    said = set(re.findall(r"\[(\d+)\] .*failure recovery impossible: (ranks? [\d and]+ failed and cannot be recovered: .*?);",
                          log))
    if {r for r, _ in said} != {"0", "3"}:
        fail(f"buddy_lost: survivors' reasons {said}; expected ranks 0 and 3 to end saying why (see {log[-2000:]})")
    print(f"buddy_lost: the job failed (tmrun exit {rc}); the survivors said: {sorted(said)[0][1]}")

    # The coordinator lost first: a rank's failure reaches the survivors' program as without TrainMover.
    def coordinator_then_rank(job):
        job.daemon.kill()
        time.sleep(0.5)
        os.kill(pid_of_ps(job, 1), signal.SIGKILL)
    rc, log = failed_job("coordinator_lost", 3, coordinator_then_rank, daemon=True, survivors_end_alone=True)
    errs = set(re.findall(r"\[rank (\d+)\] tm-train: error: (nccl\w+)", log))
    if not errs or "1" in {r for r, _ in errs}:
        fail(f"coordinator_lost: no survivor reported the failed collective: {errs}")
    print(f"coordinator_lost: the job failed (tmrun exit {rc}); survivors saw the error: {sorted(errs)}")


def pid_of_ps(job, rank, missing_ok=False):
    """The pid of the tm-train process of `rank` (RANK in its environment), without the coordinator."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if b"tm-train" in cmd.split(b"\0")[0] and f"RANK={rank}".encode() in env and \
                f"TRAINMOVER_COORDINATOR={job.addr}".encode() in env:
            return int(pid)
    if missing_ok:
        return None
    fail(f"{job.name}: no tm-train process of rank {rank}")


def scenario_during_migration():
    # A stayer, then the leaver, killed while a planned migration builds: the migration is abandoned, the dead
    # rank recovered, the digests bit-identical.
    for victim in ("stayer", "leaver"):
        name = f"during_migration_{victim}"
        mt.clear_joiner_logs()
        job = Job(name, 4, steps=300, step_ms=10, env=mt.SLOW_BUILD)
        try:
            job.wait_step(10)
            for rank in (1, 2):
                recoverable_pid(job, rank)
            ctl = job.start_migrate(1)
            _, leaver, _ = job.wait_state(("building",))
            dead = 1 if victim == "leaver" else 2
            os.kill(leaver if victim == "leaver" else pid_of(job, 2), signal.SIGKILL)
            ctl.communicate(timeout=mt.TIMEOUT)
            r = wait_recovered(job, 1)
            mig = [m for m in job.status()["migrations"] if m.get("kind") == "migrate"][-1]
            if mig["state"] != "failed":
                fail(f"{name}: the migration ended {mig['state']}, expected failed")
            check_report(job, r, dead)
            job.finish()
        finally:
            job.kill()
        job.check_digests({dead})


def scenario_stale():
    # A stopped rank declared failed by the heartbeat timeout and replaced, then woken up (SIGCONT): it must not come
    # back. Its host is named apart (TRAINMOVER_HOST), so the coordinator cannot kill it as it does a silent process
    # on its own host: the fence alone keeps it out (FENCED: it ends, status 1, saying why), tmrun expects that exit,
    # and the job ends bit-identical.
    mt.clear_joiner_logs()
    job = Job("stale", 3, steps=400, step_ms=8, hosts=3, tmrun_opts=["--heartbeat-timeout-ms", "1500"])
    try:
        job.wait_step(20)
        pid = recoverable_pid(job, 2)
        os.kill(pid, signal.SIGSTOP)
        r = wait_recovered(job, 1)
        check_report(job, r, 2)
        os.kill(pid, signal.SIGCONT)
        if not wait_ended(pid, 15):
            fail(f"stale: the woken process {pid} still runs 15 s after SIGCONT")
        workers = [p for p in job.status()["processes"] if p["role"] == "worker" and p["rank"] == 2]
        if [p["state"] for p in workers if p["pid"] == pid] != ["lost"] or \
                sum(p["state"] == "alive" for p in workers) != 1:
            fail(f"stale: rank 2's processes after the wake-up: {workers}")
        job.finish()
    finally:
        job.kill()
    with open(job.log, errors="replace") as f:
        log = f.read()
    if "declared failed in epoch 1 and replaced; it ends without touching the job (stale epoch)" not in log:
        fail("stale: the woken process did not say why it ended")
    job.check_digests({2})
    print(f"stale: the woken process {pid} was refused (stale epoch) and ended; the job ended bit-identical")


def scenario_no_safe_points():
    # A program that never calls tmSafePoint cannot be recovered: the job fails as it does without the shim (the
    # killed rank's status from tmrun), with one line from the coordinator saying why.
    job = Job("no_safe_points", 3, steps=3000, step_ms=8, layout=("--no-safe-points",))  # tm-train's flag
    try:
        deadline = time.monotonic() + mt.TIMEOUT
        while time.monotonic() < deadline and pid_of_ps(job, 1, missing_ok=True) is None:
            time.sleep(0.05)
        time.sleep(1.5)  # training
        os.kill(pid_of_ps(job, 1), signal.SIGKILL)
        rc = job.finish(expect_rc=None)
    finally:
        job.kill()
    with open(job.log, errors="replace") as f:
        log = f.read()
    why = re.findall(r"rank 1 failed \(.*\); it never called tmSafePoint, so it cannot be recovered", log)
    # As without the shim (tmrun --no-shim, tm_train_fail): tmrun stops the job with the killed rank's status.
    if rc != 128 + signal.SIGKILL or "stopping the other ranks" not in log or len(why) != 1:
        fail(f"no_safe_points: tmrun exited {rc}; lines saying why: {len(why)}")
    print(f"no_safe_points: the job failed as without the shim (tmrun exit {rc}), one line: {why[0]}")


def scenario_no_snapshot_yet():
    # A rank killed before any snapshot of it is complete on its buddy (the first at step 100000): refused, every
    # survivor ends saying why.
    rc, log = failed_job("no_snapshot", 3, lambda j: os.kill(pid_of(j, 1), signal.SIGKILL),
                         env={"TRAINMOVER_SNAPSHOT_EVERY": "100000"}, survivors_end_alone=True, at=10)
    # Not fenced (nothing to roll back to), the survivors blocked on rank 1 get the library's error, each after the
    # line saying why (as without TrainMover, plus the reason).
    said = set(re.findall(r"^\[(\d+)\] .*failure recovery: rank 1 failed and cannot be recovered: (.*)$", log, re.M))
    if {r for r, _ in said} != {"0", "2"} or not all("no snapshot of rank 1" in w for _, w in said):
        fail(f"no_snapshot: survivors' reasons {said}")
    print(f"no_snapshot: the job failed (tmrun exit {rc}); the survivors said: {sorted(said)[0][1]}")

    # Snapshots that would not fit in TRAINMOVER_SNAPSHOT_MEMORY's share of this host's memory (here a few KB per
    # process): none taken, each rank says so once with the figures, training goes on (step 10 is reached), and a
    # failure is refused as for a rank without a snapshot.
    rc, log = failed_job("no_memory", 3, lambda j: os.kill(pid_of(j, 1), signal.SIGKILL),
                         env={"TRAINMOVER_SNAPSHOT_MEMORY": "0.000001"}, survivors_end_alone=True, at=10)
    warned = re.findall(r"^\[(\d+)\] .*failure recovery: no snapshots of this rank \(a failure of it will be refused\): "
                        r"4 snapshots of .* more than this process's share \(TRAINMOVER_SNAPSHOT_MEMORY=0\.00 of", log, re.M)
    said = set(re.findall(r"^\[(\d+)\] .*failure recovery: rank 1 failed and cannot be recovered: (.*)$", log, re.M))
    if sorted(warned) != ["0", "1", "2"]:
        fail(f"no_memory: the ranks that said their snapshots do not fit: {warned}; expected each of 0, 1, 2 once")
    if {r for r, _ in said} != {"0", "2"} or not all("no snapshot of rank 1" in w for _, w in said):
        fail(f"no_memory: survivors' reasons {said}")
    print(f"no_memory: no snapshots (each rank said why), the failure refused (tmrun exit {rc})")


def standbys(job):
    """The standbys the coordinator lists (role standby), alive or not."""
    return [p for p in job.status()["processes"] if p["role"] == "standby"]


def wait_standbys(job, count):
    """Waits until `count` standbys are registered and alive; returns them (their "replace" is the warm rank)."""
    deadline = time.monotonic() + mt.TIMEOUT
    while time.monotonic() < deadline:
        alive = [p for p in standbys(job) if p["state"] == "alive"]
        if len(alive) >= count:
            return alive
        if job.p.poll() is not None:
            fail(f"{job.name}: the job ended before {count} standby(s) registered")
        time.sleep(0.05)
    fail(f"{job.name}: {count} standby(s) never registered")


def standby_digests(job):
    """{K: digest} that standby K printed; tmrun relays a standby's lines as [sK]."""
    out = {}
    with open(job.log, errors="replace") as f:
        for line in f:
            m = re.match(r"^\[s(\d+)\] final-state sha256:([0-9a-f]+)$", line.strip())
            if m:
                out[int(m.group(1))] = m.group(2)
    return out


def check_standby_digests(job, took):
    """took: {rank: standby K} for the ranks a standby took; every other rank's digest (a spawned replacement's from
    its joiner log) is checked by check_digests. All bit-identical to the uninterrupted run's."""
    want = mt.reference(job.ranks, job.params, job.steps, job.layout)
    got = standby_digests(job)
    for rank, k in took.items():
        if got.get(k) != want:
            fail(f"{job.name}: standby {k} (rank {rank}) ended with digest {got.get(k)}, uninterrupted run {want}")
    print(f"{job.name}: standby digest(s) {sorted(took.items())} equal the uninterrupted run's")


def standby_replaces(job, rank, n, pid):
    """Kills rank's process; the job's n-th recovery must take the standby of `pid` (and no spawned process)."""
    os.kill(recoverable_pid(job, rank), signal.SIGKILL)
    r = wait_recovered(job, n)
    check_report(job, r, rank)
    took_standby(job, r, pid)
    return r


def took_standby(job, r, pid):
    """The recovery record `r` names the standby of that pid as the replacement, and no replacement was spawned."""
    replacement = r["recovery"]["replacement"]
    if f"pid {pid}," not in replacement or not replacement.startswith("standby process"):
        fail(f"{job.name}: the replacement was '{replacement}', expected the standby of pid {pid}")
    holder = [p for p in job.status()["processes"] if p["pid"] == pid]
    if not holder or holder[0]["role"] != "worker" or holder[0]["rank"] != r["rank"]:
        fail(f"{job.name}: after the recovery the standby of pid {pid} is {holder}, expected the worker of rank {r['rank']}")


def scenario_standby():
    # tmrun --standby 2: standby K warms up as rank K (of 3). An idle standby killed: nothing happens to the job. Then
    # rank 2 killed: the other standby, warmed up as rank 0, takes rank 2's place (tm-train reads its rank through
    # tmRank): its communicators rebuilt at rank 2's place, its state rank 2's snapshot from the buddy. The job ends 0
    # and every digest (the standby's for rank 2) equals the uninterrupted run's.
    mt.clear_joiner_logs()
    job = Job("standby_any", 3, steps=300, step_ms=8, tmrun_opts=["--standby", "2"])
    try:
        job.wait_step(10)
        sb = {p["replace"]: p for p in wait_standbys(job, 2)}
        if sorted(sb) != [0, 1]:
            fail(f"standby_any: standbys warm up as ranks {sorted(sb)}, expected [0, 1]")
        os.kill(sb[1]["pid"], signal.SIGKILL)
        time.sleep(0.5)
        if recoveries(job):
            fail("standby_any: an idle standby's death started a recovery")
        job.wait_step(30)
        standby_replaces(job, 2, 1, sb[0]["pid"])
        job.finish()
    finally:
        job.kill()
    if any(f.startswith("joiner-") for f in os.listdir(WORK)):
        fail("standby_any: a replacement was spawned although a standby fitted")
    with open(job.log, errors="replace") as f:
        log = f.read()
    if "standby 0 (pid" not in log or "standby 1 (pid" not in log:
        fail("standby_any: tmrun did not report its standbys")
    job.check_digests(set(), elsewhere={2})  # ranks 0 and 1; rank 2 is the standby's
    check_standby_digests(job, {2: 0})


def scenario_standby_fixed():
    # A program that reads its rank once (tm-train --fixed-rank, no tmRank): the standby (warmed up as rank 0) cannot
    # take rank 1, which gets a spawned replacement; then rank 0 is killed and the standby takes it.
    mt.clear_joiner_logs()
    job = Job("standby_fixed", 3, steps=300, step_ms=8, tmrun_opts=["--standby", "1"], train_args=["--fixed-rank"])
    try:
        job.wait_step(10)
        sb = wait_standbys(job, 1)[0]
        os.kill(recoverable_pid(job, 1), signal.SIGKILL)
        r = wait_recovered(job, 1)
        check_report(job, r, 1)
        if not r["recovery"]["replacement"].startswith("spawned pid"):
            fail(f"standby_fixed: rank 1 was replaced by '{r['recovery']['replacement']}', expected a spawned process")
        job.wait_step(r["recovery"]["rollback_step"] + 30)
        standby_replaces(job, 0, 2, sb["pid"])
        job.finish()
    finally:
        job.kill()
    job.check_digests({1}, elsewhere={0})  # rank 2; rank 1 from its spawned replacement's log
    check_standby_digests(job, {0: 0})


def replacement_pid(job, r):
    """The pid of recovery record r's replacement ("spawned pid P" or "standby process N (pid P, ...)")."""
    m = re.search(r"pid (\d+)", r["recovery"]["replacement"])
    if not m:
        fail(f"{job.name}: recovery {r['id']} names no replacement pid: '{r['recovery']['replacement']}'")
    return int(m.group(1))


def check_retried(job, first, old, r):
    """Recovery `first` (its final record `old`) was abandoned because its replacement died, and the next one, `r`,
    recovered the same rank alone with a spawned replacement."""
    if not re.search(r"(was lost|exited .*before it registered|building a replacement communicator failed)",
                     old["reason"]):
        fail(f"{job.name}: the first recovery ended {old['reason']}, expected abandoned for the lost replacement")
    if r["ranks"] != [first["rank"]] or not r["recovery"]["replacement"].startswith("spawned pid"):
        fail(f"{job.name}: the retry {r['ranks']} by '{r['recovery']['replacement']}', expected rank {first['rank']} by "
             f"a spawned replacement")
    print(f"{job.name}: the replacement {first['recovery']['replacement']} died while recovery {first['id']} was "
          f"{first['state']}: {old['reason']}")
    check_report(job, r, first["rank"])


def scenario_replacement_lost():
    # Rank 1 killed, then its spawned replacement killed before the switch: as soon as it is seen (starting or warming
    # up), and while it reads its state. The recovery is abandoned for a new epoch of rank 1 that spawns another
    # replacement; the job ends bit-identical. Then every replacement killed as it appears: after
    # kReplacementAttempts (3) the recovery fails, each survivor ends saying why, and tmrun fails the job.
    for when, ready in (("early", lambda r: True), ("transfer", transferring)):
        strike_during_recovery(f"replacement_lost_{when}", ready,
                               lambda job, first: os.kill(replacement_pid(job, first), signal.SIGKILL),
                               check_retried, {1})

    def every_replacement(job):
        os.kill(recoverable_pid(job, 1), signal.SIGKILL)
        for n in (1, 2, 3):
            os.kill(replacement_pid(job, wait_recovery(job, n, lambda r: True)), signal.SIGKILL)
    mt.clear_joiner_logs()
    rc, log = failed_job("replacement_lost_all", 4, every_replacement, env=SLOW_RECOVERY, survivors_end_alone=True,
                         at=20)
    said = set(re.findall(r"\[(\d+)\] .*failure recovery impossible: (rank 1 failed and cannot be recovered: the "
                          r"replacement of rank 1 .*\(3 replacements tried\));", log))
    if {r for r, _ in said} != {"0", "2", "3"}:
        fail(f"replacement_lost_all: survivors' reasons {said}; expected ranks 0, 2 and 3 to end saying why")
    print(f"replacement_lost_all: the job failed (tmrun exit {rc}); the survivors said: {sorted(said)[0][1]}")


def scenario_replacement_switched():
    # Rank 1 killed; its spawned replacement killed after the recovery's SWITCH went out, before it switched in and
    # confirmed (TRAINMOVER_FAULT=slow-switch: it waits 3 s first; the survivors, rolled back, wait in their first
    # operation on it). It held rank 1 from the SWITCH on: the recovery completes, and its loss is the next failure of
    # rank 1, recovered under epoch 2 by another spawned replacement; every digest bit-identical.
    mt.clear_joiner_logs()
    job = Job("replacement_switched", 4, steps=300, step_ms=8, env={"TRAINMOVER_FAULT": "slow-switch"})
    try:
        job.wait_step(20)
        os.kill(recoverable_pid(job, 1), signal.SIGKILL)
        first = wait_recovery(job, 1, lambda r: any(p["phase"] == "rollback" for p in r["phases"]))
        os.kill(replacement_pid(job, first), signal.SIGKILL)
        r = wait_recovered(job, 2)
        old = recoveries(job)[0]
        if old["state"] != "done":
            fail(f"{job.name}: the first recovery ended {old['state']} ({old['reason']}), expected done")
        if r["recovery"]["epoch"] != 2 or not r["recovery"]["replacement"].startswith("spawned pid"):
            fail(f"{job.name}: the second recovery {r}")
        print(f"{job.name}: the replacement {first['recovery']['replacement']} died after the switch; recovery "
              f"{r['id']} (epoch 2) recovered rank 1 again")
        check_report(job, r, 1)
        job.finish()
    finally:
        job.kill()
    job.check_digests({1})


def scenario_standby_lost():
    # tmrun --standby 1 on 3 ranks: rank 2 killed, the standby takes its place and is killed before the switch (it
    # reads its state 3 s late, TRAINMOVER_FAULT=slow-transfer): a new epoch of rank 2 spawns a replacement (no
    # standby is left); the job ends 0, every digest bit-identical.
    mt.clear_joiner_logs()
    job = Job("standby_lost", 3, steps=300, step_ms=8, env=SLOW_RECOVERY, tmrun_opts=["--standby", "1"])
    try:
        job.wait_step(10)
        sb = wait_standbys(job, 1)[0]
        deadline = time.monotonic() + mt.TIMEOUT
        while not [p for p in standbys(job) if p["pid"] == sb["pid"] and p["standby"]["ready"]]:
            if time.monotonic() > deadline:
                fail("standby_lost: the standby never became ready")
            time.sleep(0.05)
        job.wait_step(30)
        os.kill(recoverable_pid(job, 2), signal.SIGKILL)
        first = wait_recovery(job, 1, lambda r: True)
        if replacement_pid(job, first) != sb["pid"] or not first["recovery"]["replacement"].startswith("standby"):
            fail(f"standby_lost: rank 2 was taken by '{first['recovery']['replacement']}', expected the standby "
                 f"(pid {sb['pid']})")
        os.kill(sb["pid"], signal.SIGKILL)
        check_retried(job, first, *wait_renewed(job, first))
        job.finish()
    finally:
        job.kill()
    if standby_digests(job):
        fail(f"standby_lost: the killed standby printed a digest: {standby_digests(job)}")
    job.check_digests({2})


def swapped(job):
    """The latest migration's record once a stayer swapped its communicators (SWITCH went out), else None."""
    ms = [m for m in job.status()["migrations"] if m.get("kind") == "migrate"]
    if ms and any(p["phase"] == "swap comms" for p in ms[-1].get("phases", [])):
        return ms[-1]
    return None


def scenario_after_switch():
    # A rank killed right after a live migration's switch, before the snapshots are shipped again to the new joiner
    # (it replaced the leaver as some ranks' buddy): the joiner waits 3 s after it switched in
    # (TRAINMOVER_FAULT=slow-first-op, joiners only), the stayers wait in their first operation on the replacements,
    # and the victim is killed then. Each case is recovered, every digest bit-identical: the joiner (its rank's state
    # is the leaver's snapshots on the leaver's buddy), the stayer whose buddy was the leaver (now the joiner), the
    # leaver's buddy, the last stayer. The joiner is a survivor in the stayers' cases: fenced while it waits, it keeps
    # the switch step's snapshot (its state is exact there), the only step it holds.
    for victim, rank in (("joiner", 1), ("stayer0", 0), ("stayer2", 2), ("stayer3", 3)):
        name = f"after_switch_{victim}"
        mt.clear_joiner_logs()
        job = Job(name, 4, steps=300, step_ms=8, env={"TRAINMOVER_FAULT": "slow-first-op"})
        try:
            job.wait_step(20)
            ctl = job.start_migrate(1)
            deadline = time.monotonic() + mt.TIMEOUT
            while time.monotonic() < deadline and not swapped(job):
                time.sleep(0.02)
            mig = swapped(job)
            if not mig:
                fail(f"{name}: the migration never switched")
            pids = {p["id"]: p["pid"] for p in job.status()["processes"]}
            if victim == "stayer0":
                # Its copies left with the leaver (its buddy): the snapshot it took at the switch must reach the joiner
                # first (a pull of milliseconds; killed before, it is refused saying so: engine_unit). Still inside
                # the joiner's 3 s, before the joiner's own first snapshot.
                time.sleep(1.0)
            os.kill(pids[mig["joiner"]] if victim == "joiner" else pid_of(job, rank), signal.SIGKILL)
            ctl.communicate(timeout=mt.TIMEOUT)
            r = wait_recovered(job, 1)
            check_report(job, r, rank)
            job.finish()
        finally:
            job.kill()
        job.check_digests({1, rank})  # rank 1 from its joiner's log (or its replacement's: the newest)


def scenario_out_of_step():
    # docs/reliability.md, "The commit point": SWITCH withheld from one stayer (rank 2: its control connection goes
    # through a relay that stops forwarding, as a link that goes down, once the coordinator has its AT_STEP and its
    # switch-step snapshot is on its buddy) until it abandons the migration at its hold deadline, while the others
    # switched. The joiner waits 3 s before it reads (TRAINMOVER_FAULT=slow-transfer) so that there is time to cut in
    # between; hold deadline 10 s (SWITCH at most 5 s after COMMIT), the heartbeat timeout 30 s (no other detection
    # comes first). Expected: the coordinator declares rank 2 out of step (its confirmation deadline), the recovery
    # replaces it from the switch step, the out-of-step process ends once it is heard again (stale epoch), every digest
    # bit-identical, and the survivors stand still no longer than the confirmation deadline plus the recovery.
    mt.clear_joiner_logs()
    relay = Relay()
    env = {"TRAINMOVER_HOLD_TIMEOUT_MS": "10000", "TRAINMOVER_FAULT": "slow-transfer", "TM_RELAY": relay.addr,
           "TRAINMOVER_TRANSFER_FLOOR_MS": "1000"}
    job = Job("out_of_step", 4, steps=1500, step_ms=10, env=env, wrap=RANK_2_VIA_RELAY,
              tmrun_opts=["--heartbeat-timeout-ms", "30000"])
    relay.target = job.addr
    try:
        job.wait_step(20)
        recoverable_pid(job, 2)
        stayer = pid_of(job, 2)
        ctl = job.start_migrate(1)
        deadline = time.monotonic() + mt.TIMEOUT
        while time.monotonic() < deadline:
            s = job.status()
            m = [x for x in s["migrations"] if x.get("kind") == "migrate"]
            p2 = [p for p in s["processes"] if p["pid"] == stayer]
            if m and m[-1]["state"] == "switching" and m[-1]["switch_step"] >= 0 and p2 and \
                    p2[0]["snapshot_step"] >= m[-1]["switch_step"]:
                break  # its AT_STEP came before (it is sent before the snapshot's SNAP_TAKEN)
            if m and m[-1]["state"] in ("done", "failed", "cancelled"):
                fail(f"out_of_step: the migration went on to {m[-1]['state']} before the cut ({m[-1]['reason']})")
            time.sleep(0.02)
        else:
            fail("out_of_step: rank 2 never held its switch-step snapshot on its buddy")
        relay.cut_open()  # its connection only: its replacement, started later with its environment, gets through
        cut_at = time.monotonic()
        r = wait_recovered(job, 1)
        check_report(job, r, 2)
        if "out of step after the switch of migration" not in r["recovery"]["detected_by"]:
            fail(f"out_of_step: the recovery was started by '{r['recovery']['detected_by']}'")
        ctl.communicate(timeout=mt.TIMEOUT)
        mig = [x for x in job.status()["migrations"] if x.get("kind") == "migrate"][-1]
        if mig["state"] != "done" or "declared failed" not in mig["reason"]:
            fail(f"out_of_step: the migration ended {mig['state']} ({mig['reason']})")
        # The withheld process abandons at its hold deadline, then is heard again and told to end.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with open(job.log, errors="replace") as f:
                if re.search(r"^\[2\] .*no decision from the coordinator within 10000 ms", f.read(), re.M):
                    break
            time.sleep(0.05)
        else:
            fail("out_of_step: rank 2 never abandoned the migration at its hold deadline")
        relay.restore()
        print(f"out_of_step: cut {time.monotonic() - cut_at:.1f} s; migration: {mig['reason']}")
        if not wait_ended(stayer, 20):
            fail(f"out_of_step: the out-of-step process {stayer} still runs 20 s after it was heard again")
        job.finish()
    finally:
        job.kill()
        relay.sock.close()
    with open(job.log, errors="replace") as f:
        log = f.read()
    if not re.search(r"^\[2\] .*declared failed in epoch 1 and replaced; it ends without touching the job", log, re.M):
        fail("out_of_step: the out-of-step process did not say why it ended")
    job.check_digests({1, 2})
    print("out_of_step: rank 2 out of step after the switch, recovered; the out-of-step process ended; bit-identical")


def scenario_device():
    # tm-train --device-state: its extra region is device memory of the stand-in CUDA runtime (tests/fake_cuda), whose
    # stream operations each lag TM_FAKE_CUDA_OP_US behind the host; tm-train's write of the region is still in flight
    # on its own stream at every safe point, and the next one is ordered after the next step's AllReduce. A snapshot
    # copied too early (before the write) or too late (after the next one) rolls back to a wrong state and the digests
    # differ. Rank 1 of 3 killed: the survivors restore their device regions from their snapshots, the spawned
    # replacement reads rank 1's into device memory (staged through host: this UCX has no CUDA support). Then with a
    # standby (warmed up as rank 0 in the sandbox, device memory included) taking rank 2's place.
    if not mt.FAKE_CUDART or not os.path.exists(mt.FAKE_CUDART):
        print("SKIP: the stand-in libcudart is not built")
        sys.exit(77)
    device = dict(layout=["--extra-state-mb", "1"], preload=mt.FAKE_CUDART, train_args=["--device-state"],
                  env={"TM_FAKE_CUDA_OP_US": "2000"})
    jobs = [kill_plan("device_kill", 3, [(20, 1)], **device)]
    mt.clear_joiner_logs()
    job = Job("device_standby", 3, steps=300, step_ms=8, tmrun_opts=["--standby", "1"], **device)
    jobs.append(job)
    try:
        job.wait_step(10)
        sb = wait_standbys(job, 1)[0]
        job.wait_step(30)
        standby_replaces(job, 2, 1, sb["pid"])
        # A planned migration of a rank with device memory: the leaver stages its device region through host
        # memory (this UCX cannot read device memory), the joiner's read stages it back to its device.
        job.wait_step(60)
        job.migrate(0)
        job.finish()
    finally:
        job.kill()
    job.check_digests({0}, elsewhere={2})
    check_standby_digests(job, {2: 0})
    for j in jobs:
        with open(j.log, errors="replace") as f:
            log = f.read()
        if "cannot be snapshotted" in log or "no snapshot of step" in log:
            fail(f"{j.name}: a rank took no snapshot of its device memory:\n" +
                 "\n".join(x for x in log.splitlines() if "snapshot" in x)[:2000])
    print("device: device-memory state recovered twice (spawned replacement, standby) and moved once (planned), "
          "bit-identical")


SCENARIOS = {"device": scenario_device, "out_of_step": scenario_out_of_step, "kill_auto": scenario_kill_auto, "replacement_switched": scenario_replacement_switched, "replacement_lost": scenario_replacement_lost, "standby_lost": scenario_standby_lost, "kill": scenario_kill, "kill_3d": scenario_kill_3d, "twice": scenario_twice, "fence_skew_3d": scenario_fence_skew_3d,
             "second_failure": scenario_second_failure, "twice_3d": scenario_twice_3d,
             "late_coordinator_3d": scenario_late_coordinator_3d, "blocked": scenario_blocked,
             "blocked_cma": scenario_blocked_cma,
             "nccl_detected": scenario_nccl_detected,
             "silent": scenario_silent, "stale": scenario_stale, "refused": scenario_refused,
             "no_safe_points": scenario_no_safe_points, "no_snapshot": scenario_no_snapshot_yet,
             "during_migration": scenario_during_migration, "standby": scenario_standby,
             "standby_fixed": scenario_standby_fixed, "after_switch": scenario_after_switch}

if __name__ == "__main__":
    for path in (mt.TMRUN, mt.TMCTL, mt.TMTRAIN, mt.SHIM, mt.HOSTNCCL):
        if not path or not os.path.exists(path):
            print(f"SKIP: {path or 'a tool'} not built")
            sys.exit(77)
    SCENARIOS[mt.SCENARIO]()
    print("PASS")
