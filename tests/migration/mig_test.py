#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Live-migration scenarios of tm-train under the shim (tmrun with its embedded coordinator, hostnccl).

usage: mig_test.py TMRUN TMCTL TMTRAIN SHIM HOSTNCCL TRAINMOVERD SCENARIO

Every scenario runs tm-train on N ranks, migrates ranks with `tmctl migrate --rank R --spawn` when the job
reaches the given steps (or makes one fail in a given way), and checks the final digest of every rank, the
joiner's replacing the leaver's, against an uninterrupted run's: bit for bit. Exit 0 pass, 1 fail, 77 skip.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "harness"))
from nethosts import digests  # noqa: E402  {rank or None: sha256} of a tmrun log

TMRUN, TMCTL, TMTRAIN, SHIM, HOSTNCCL, TRAINMOVERD = (os.path.abspath(a) for a in sys.argv[1:7])
SCENARIO = sys.argv[7]
FAKE_CUDART = os.path.abspath(sys.argv[8]) if len(sys.argv) > 8 else ""
SPLIT_APP = os.path.abspath(sys.argv[9]) if len(sys.argv) > 9 else ""
TP_DP_APP = os.path.abspath(sys.argv[10]) if len(sys.argv) > 10 else ""
WORK = tempfile.mkdtemp(prefix="mig-test-")
# Scenario "numpy": the ranks are python/examples/numpy_ddp.py (NumPy over the NCCL API through ctypes, with the
# trainmover Python module) run by TM_PYTHON (an interpreter with NumPy) instead of tm-train.
PYTHON = os.environ.get("TM_PYTHON", "")
NUMPY_EXAMPLE = os.path.abspath(os.environ["TM_NUMPY_EXAMPLE"]) if os.environ.get("TM_NUMPY_EXAMPLE") else ""
# The hang guards below, times TM_TEST_TIMEOUT_SCALE (`./run test --sanitize` sets 3, as it triples meson's
# limits: sanitized ranks run several times slower; TSan at load 50 passed 50 s in migration_abort_joiner).
SCALE = int(os.environ.get("TM_TEST_TIMEOUT_SCALE", "1"))
TIMEOUT = 50 * SCALE
REFERENCE_TIMEOUT = 300 * SCALE  # an uninterrupted run to the end (migration_fast: 60,000 steps; 3D), on a loaded machine (150 s was passed at load 35)


def fail(msg):
    print(f"FAIL: {msg}")
    for name in sorted(os.listdir(WORK)):
        if name.endswith(".log"):
            with open(os.path.join(WORK, name), errors="replace") as f:
                tail = f.readlines()[-15:]
            print(f"--- {name}\n{''.join(tail)}")
    sys.exit(1)


def sanitizer_runtimes(lib):
    """The sanitizer runtimes `lib` links (a `./run test --sanitize` build's): a program not built with them (the
    Python interpreter) must have them preloaded, as it cannot dlopen one later (ThreadSanitizer's: "cannot allocate
    memory in static TLS block", migration_numpy's run without the shim)."""
    out = subprocess.run(["ldd", lib], capture_output=True, text=True).stdout
    return re.findall(r"=> (\S*/lib(?:a|t|ub)san\.so\S*) ", out)


def numpy_cmd(params, steps, step_ms, shim=True):
    pythonpath = os.path.dirname(os.path.dirname(NUMPY_EXAMPLE))  # python/: the trainmover module
    preload = sanitizer_runtimes(HOSTNCCL) + ([SHIM] if shim else [])
    return (["env"] + ([f"LD_PRELOAD={':'.join(preload)}"] if preload else []) +
            [f"TRAINMOVER_NCCL_LIBRARY={HOSTNCCL}", f"PYTHONPATH={pythonpath}", PYTHON, NUMPY_EXAMPLE,
             "--steps", str(steps), "--params", str(params), "--seed", "7", "--step-ms", str(step_ms)])


def train_cmd(params, steps, step_ms, preload="", layout=()):
    """layout: tm-train's --tp/--pp flags (the 3D-parallel workload), empty for data parallel."""
    if SCENARIO == "numpy":
        return numpy_cmd(params, steps, step_ms)
    return ["env", f"LD_PRELOAD={preload + ':' if preload else ''}{SHIM}", f"TRAINMOVER_NCCL_LIBRARY={HOSTNCCL}", TMTRAIN, "--steps", str(steps),
            "--params", str(params), "--seed", "7", "--log-every", "0", "--step-ms", str(step_ms)] + list(layout)


REF = {}


def split_cmd(steps, step_ms, app="split"):
    exe = TP_DP_APP if app == "tp_dp" else SPLIT_APP
    return ["env", f"LD_PRELOAD={SHIM}", f"TRAINMOVER_NCCL_LIBRARY={HOSTNCCL}", exe, str(steps), str(step_ms)]


def job_cmd(params, steps, step_ms, preload="", layout=()):
    """tm-train (layout: its --tp/--pp flags), or one of the test programs when params names it ("split", "tp_dp")."""
    if params in ("split", "tp_dp"):
        return split_cmd(steps, step_ms, params)
    return train_cmd(params, steps, step_ms, preload, layout)


def reference(ranks, params, steps, layout=()):
    """The uninterrupted run's digest: one for every rank (data parallel), or {rank: digest} with a 3D layout
    (each rank its own: stages, TP shards and optimizer shards differ). layout: tm-train flags that change the result
    (--tp/--pp; --extra-state-mb, which keeps data parallelism). Run once per key and shared."""
    key = (ranks, params, steps, tuple(layout))
    if key not in REF:
        log = os.path.join(WORK, f"ref-{ranks}-{params}-{'x'.join(layout[1::2]) or 'dp'}.log")
        cmd = job_cmd(params, steps, 0, layout=layout)
        with open(log, "w") as f:
            rc = subprocess.run([TMRUN, "-n", str(ranks), "--no-coordinator", "--"] + cmd,
                                stdout=f, stderr=subprocess.STDOUT, timeout=REFERENCE_TIMEOUT).returncode
        d = digests(log)
        parallel_3d = "--tp" in layout or "--pp" in layout  # other flags (--extra-state-mb) keep data parallelism
        distinct = ranks if parallel_3d else 1
        if rc != 0 or len(set(d.values())) != distinct or len(d) != ranks:
            fail(f"reference run on {ranks} ranks: rc {rc}, digests {d}")
        REF[key] = d if parallel_3d else next(iter(d.values()))
    return REF[key]


class Job:
    def __init__(self, name, ranks, params=3000, steps=240, step_ms=4, env=None, daemon=False, preload="",
                 tmrun_opts=(), ignore_term=False, layout=(), hosts=0, train_args=(), wrap=()):
        """layout: tm-train --tp/--pp flags; hosts: split the ranks in order over that many TRAINMOVER_HOSTs
        (node0, node1, ...; a joiner the coordinator spawns runs on the coordinator's host and takes its
        host-local variables, so it is on neither); train_args: more tm-train flags that do not change
        the result (the reference run goes without them); wrap: a command each rank is started through (sh -c ...)."""
        self.name, self.ranks, self.params, self.steps, self.layout = name, ranks, params, steps, layout
        self.log = os.path.join(WORK, f"{name}.log")
        self.f = open(self.log, "w")
        env = dict(os.environ, **(env or {}))
        self.addr, self.daemon, opts = None, None, []
        if daemon:  # a trainmoverd of our own (it can be killed without killing the job)
            token = f"mig-test-{os.getpid()}-0123456789"
            self.token_file = os.path.join(WORK, "token")
            with open(self.token_file, "w") as f:
                f.write(token)
            dout = open(os.path.join(WORK, f"{name}-trainmoverd.log"), "w")
            daemon_env = dict(env, TRAINMOVER_TOKEN=token)
            if daemon == "late":  # started only once every rank created its communicators (below): a free port now
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    self.addr = f"127.0.0.1:{s.getsockname()[1]}"
            else:
                self.daemon = subprocess.Popen([TRAINMOVERD, "--listen", "127.0.0.1:0"], env=daemon_env,
                                               stdout=subprocess.PIPE, stderr=dout, text=True)
                self.addr = self.daemon.stdout.readline().strip()
            env.update(TRAINMOVER_COORDINATOR=self.addr, TRAINMOVER_TOKEN=token)
            opts = []  # tmrun uses the coordinator in TRAINMOVER_COORDINATOR instead of embedding one
        cmd = job_cmd(params, steps, step_ms, preload, layout) + list(train_args)
        if hosts:
            cmd = ["sh", "-c", f'TRAINMOVER_HOST=node$((RANK / {ranks // hosts})) exec "$@"', "sh"] + cmd
        cmd = list(wrap) + cmd
        if ignore_term:  # the ranks ignore tmrun's SIGTERM (inherited SIG_IGN), so they live to see their own errors
            cmd = ["sh", "-c", 'trap "" TERM; exec "$@"', "sh"] + cmd
        self.p = subprocess.Popen([TMRUN, "-n", str(ranks)] + list(tmrun_opts) + opts + ["--"] + cmd,
                                  stdout=self.f, stderr=subprocess.STDOUT, cwd=WORK, env=env, start_new_session=True)
        if daemon == "late":  # the agents register only after every communicator exists (as on a loaded machine)
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline and self.p.poll() is None:
                with open(self.log, errors="replace") as f:
                    if len(re.findall(r"\] init world=", f.read())) == ranks:
                        break
                time.sleep(0.05)
            else:
                self.kill()
                fail(f"{name}: the ranks did not all start")
            self.daemon = subprocess.Popen([TRAINMOVERD, "--listen", self.addr], env=daemon_env, cwd=WORK,
                                           stdout=subprocess.DEVNULL, stderr=dout, text=True)
            host, port = self.addr.rsplit(":", 1)
            deadline = time.monotonic() + TIMEOUT  # listening before the first tmctl (once "connection refused")
            while time.monotonic() < deadline and self.daemon.poll() is None:
                try:
                    socket.create_connection((host, int(port)), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            else:
                self.kill()
                fail(f"{name}: the late coordinator does not listen on {self.addr}")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not self.addr:
            with open(self.log, errors="replace") as f:
                m = re.search(r"tmrun: coordinator (\S+) \(tmctl --coordinator \S+ --token-file (\S+)", f.read())
            if m:
                self.addr, self.token_file = m.group(1), m.group(2)
                with open(self.log, errors="replace") as f:
                    self.store = re.search(r"store (\S+)", f.read()).group(1)
            time.sleep(0.05)
        if not self.addr:
            self.kill()
            fail(f"{name}: tmrun printed no coordinator address")

    def ctl(self, *args, timeout=TIMEOUT):
        r = subprocess.run([TMCTL, "--coordinator", self.addr, "--token-file", self.token_file] + list(args),
                           capture_output=True, text=True, timeout=timeout)
        return r.returncode, r.stdout + r.stderr

    def status(self):
        rc, out = self.ctl("status", "--json")
        if rc != 0:
            fail(f"{self.name}: tmctl status: {out}")
        return json.loads(out)

    def wait_step(self, k):
        """Waits until every alive worker is past step k."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            s = self.status()
            if s:
                ws = [p for p in s["processes"] if p["state"] == "alive" and p["role"] == "worker"]
                if len(ws) == self.ranks and min(p["step"] for p in ws) >= k:
                    return
            if self.p.poll() is not None:
                fail(f"{self.name}: the job ended before step {k}")
            time.sleep(0.05)
        fail(f"{self.name}: step {k} not reached")

    def migrate(self, rank, spawn=True, expect="done"):
        ranks = rank if isinstance(rank, list) else [rank]
        rank = ranks[0]
        args = ["migrate"] + [a for r in ranks for a in ("--rank", str(r))] + (["--spawn"] if spawn else [])
        rc, out = self.ctl(*args)
        with open(os.path.join(WORK, f"tmctl-{self.name}.log"), "a") as f:
            f.write(out)
        s = self.status()
        mig = [m for m in s["migrations"] if m["rank"] == rank][-1]
        if mig["state"] != expect:
            fail(f"{self.name}: migration of rank {rank} ended {mig['state']} ({mig['reason']}), expected {expect}")
        if expect == "done" and ("downtime" not in out or "state moved" not in out):
            fail(f"{self.name}: tmctl migrate printed no report:\n{out}")
        print(f"{self.name}: rank {rank} {mig['state']} at step {mig['switch_step']} {mig['reason']}")
        return mig, out

    def finish(self, expect_rc=0, timeout=TIMEOUT):
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            fail(f"{self.name}: the job did not finish (hang?)")
        self.f.close()
        if expect_rc is not None and rc != expect_rc:
            fail(f"{self.name}: tmrun exited {rc}")
        return rc

    def kill(self):
        try:
            os.killpg(self.p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if self.daemon and self.daemon.poll() is None:
            self.daemon.kill()

    def start_migrate(self, rank):
        return subprocess.Popen([TMCTL, "--coordinator", self.addr, "--token-file", self.token_file, "migrate",
                                 "--rank", str(rank), "--spawn"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)

    def wait_state(self, states):
        """Waits until the latest migration is in one of `states` with its joiner known; returns the record and
        the pids of its leaver and joiner."""
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            s = self.status()
            if s["migrations"] and s["migrations"][-1]["state"] in states and s["migrations"][-1]["joiner"]:
                m = s["migrations"][-1]
                pids = {p["id"]: p["pid"] for p in s["processes"]}
                return m, pids[m["leaver"]], pids[m["joiner"]]
            time.sleep(0.02)
        fail(f"{self.name}: no migration reached {states}")

    def check_digests(self, migrated, elsewhere=()):
        """Every rank's digest equals the reference: the joiner's (latest joiner log of the rank) for migrated.
        elsewhere: ranks whose digest the caller checks itself (a standby's, in tmrun's log as [sK])."""
        want = reference(self.ranks, self.params, self.steps, self.layout)
        want = want if isinstance(want, dict) else {r: want for r in range(self.ranks)}
        want = {r: d for r, d in want.items() if r not in elsewhere}
        got = {r: d for r, d in digests(self.log).items() if r is not None and r not in migrated}
        for r in migrated:
            logs = sorted((f for f in os.listdir(WORK) if re.match(rf"joiner-{r}(-m\d+)?\.log$", f)),
                          key=lambda f: os.path.getmtime(os.path.join(WORK, f)))
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and r not in got:
                d = digests(os.path.join(WORK, logs[-1])) if logs else {}
                if None in d:
                    got[r] = d[None]
                time.sleep(0.05)
        if got != want:
            fail(f"{self.name}: digests {got}, uninterrupted run {want}")
        # A rank's snapshot is on its buddy within a step or two; the 10 s bound of the wait for it is for a lost
        # buddy, never the normal case (a migrated rank's first snapshots were once dropped and it waited 10 s).
        for f in [self.log] + [os.path.join(WORK, f) for f in os.listdir(WORK) if f.startswith("joiner-")]:
            with open(f, errors="replace") as fh:
                stalled = [line for line in fh if "is not on its buddy after" in line]
            if stalled:
                fail(f"{self.name}: a safe point waited out its snapshot: {stalled[0].strip()}")
        print(f"{self.name}: all {len(want)} digests checked here equal the uninterrupted run's "
              f"({len(set(want.values()))} distinct, {next(iter(want.values()))[:16]}...)")


def clear_joiner_logs():
    for f in os.listdir(WORK):
        if f.startswith("joiner-"):
            os.unlink(os.path.join(WORK, f))


def run_plan(name, ranks, plan, steps=300, **job_kw):
    """plan: list of (step, [ranks]) migrated in turn. 8 ms steps leave the last migration ~0.8 s of training.
    job_kw: more of Job's arguments (layout, hosts). Returns the finished job."""
    clear_joiner_logs()
    job = Job(name, ranks, steps=steps, step_ms=8, **job_kw)
    migrated = set()
    try:
        for k, rs in plan:
            job.wait_step(k)
            for r in rs:  # an int: one migration; a list: one migration moving all of them
                job.migrate(r)
                migrated.update(r if isinstance(r, list) else [r])
        job.finish()
    finally:
        job.kill()
    job.check_digests(migrated)
    return job


def scenario_basic():
    for ranks in (2, 3, 4, 8):
        last = ranks - 1
        run_plan(f"n{ranks}", ranks, [(5, [0]), (60, [ranks // 2]), (200, [last])])


def scenario_twice():
    run_plan("twice", 4, [(10, [2]), (40, [2]), (80, [2])])


def scenario_fast():
    # sub-millisecond iterations (no emulated compute): the switch agreement still converges, for two ranks moved
    # at once. The four ranks spin through their steps and starve the joiners on 2 busy cores: enough steps that
    # the migration fits even when a sandbox takes several seconds (a CI run at load 16 ended 15,000 steps during
    # one sandbox). The end may take long under load.
    clear_joiner_logs()
    job = Job("fast", 4, params=500, steps=40000, step_ms=0)
    try:
        job.wait_step(100)
        job.migrate([0, 3])
        job.finish(timeout=REFERENCE_TIMEOUT)
    finally:
        job.kill()
    job.check_digests({0, 3})


def scenario_repropose():
    # rank 0 answers the first proposal PASSED (test knob): D proposes again, the ranks held at the first
    # proposal are released, and everyone switches at the second
    clear_joiner_logs()
    job = Job("repropose", 3, step_ms=5, env={"TRAINMOVER_FAULT": "pass-first-proposal"})
    try:
        job.wait_step(10)
        _, out = job.migrate(1)
        rounds = re.findall(r"propose step (\d+)", out)
        if len(set(rounds)) < 2:
            fail(f"repropose: expected at least two proposals, the report shows {sorted(set(rounds))}")
        print(f"repropose: proposals at steps {sorted(set(rounds), key=int)}")
        job.finish()
    finally:
        job.kill()
    job.check_digests({1})


def scenario_split():
    if not SPLIT_APP or not os.path.exists(SPLIT_APP):
        print("SKIP: split_app was not built")
        sys.exit(77)
    clear_joiner_logs()
    job = Job("split", 4, params="split", steps=300, step_ms=8)
    try:
        job.wait_step(10)
        job.migrate(1)  # in the world and in the odd half; the even half is not touched
        job.wait_step(100)
        job.migrate([0, 3])
        job.finish()
    finally:
        job.kill()
    job.check_digests({0, 1, 3})


def scenario_tp_dp():
    # TP 2 x DP 2 made with ncclCommSplit (DP non-blocking): the joiners' sandboxes size every communicator as the
    # leaver's (the program checks ncclCommCount and sizes its buffers from it); every rank moved in turn, rank 1
    # twice (its second move compares with a process that was itself a joiner)
    if not TP_DP_APP or not os.path.exists(TP_DP_APP):
        print("SKIP: tp_dp_app was not built")
        sys.exit(77)
    clear_joiner_logs()
    job = Job("tp_dp", 4, params="tp_dp", steps=1200, step_ms=8)  # the last move starts with >= 6 s of training left
    try:
        for k, r in ((10, 0), (80, 1), (160, 2), (240, 3), (320, 1)):
            job.wait_step(k)
            job.migrate(r)
        job.finish()
    finally:
        job.kill()
    job.check_digests({0, 1, 2, 3})


def scenario_pair():
    run_plan("pair", 2, [(10, [0, 1])])  # every rank of a communicator of 2, in turn


def scenario_several():
    # several ranks in one request: rank 0 and the last; then both ranks of a pair at once; then 3 of 4
    run_plan("several4", 4, [(10, [[0, 3]]), (80, [[1, 2, 3]])])
    run_plan("several2", 2, [(10, [[0, 1]])])


def scenario_tape():
    """The leaver records one real iteration (signatures and outputs); the joiner's shadow iteration replays it:
    the joiner reports N > 0 operations served from the tape, and every digest is still bit-identical."""
    clear_joiner_logs()
    env = {"TRAINMOVER_DEBUG": "INFO", "TRAINMOVER_DEBUG_SUBSYS": "AGENT,SANDBOX"}
    job = Job("tape", 3, steps=300, step_ms=8, env=env)
    try:
        job.wait_step(10)
        job.migrate(1)
        job.finish()
    finally:
        job.kill()
    job.check_digests({1})
    with open(job.log, errors="replace") as f:
        rec = re.search(r"sandbox tape recorded: (\d+) operations, (\d+) output bytes", f.read())
    with open(os.path.join(WORK, "joiner-1.log"), errors="replace") as f:
        text = f.read()
    served = re.search(r"(\d+) ops served from the tape, (\d+) emulated after a tape mismatch", text)
    if not rec or int(rec.group(1)) == 0:
        fail(f"tape: the leaver recorded no tape ({rec and rec.group(0)})")
    if not served or int(served.group(1)) == 0:
        fail(f"tape: the joiner served no operation from the tape ({served and served.group(0)}); see joiner-1.log")
    print(f"tape: leaver recorded {rec.group(1)} ops ({rec.group(2)} bytes); joiner served {served.group(1)} "
          f"from the tape, {served.group(2)} emulated after a mismatch")


def scenario_host():
    """tmctl migrate --host H: every rank on host H in one migration (here every process shares the hostname)."""
    clear_joiner_logs()
    host = socket.gethostname()
    job = Job("host", 2, steps=300, step_ms=8)
    try:
        job.wait_step(10)
        rc, out = job.ctl("migrate", "--host", "no-such-host.invalid", "--spawn")
        if rc != 1 or "no alive worker" not in out:
            fail(f"host: an unknown host was not refused (rc {rc}): {out}")
        rc, out = job.ctl("migrate", "--host", host, "--rank", "0")
        if rc != 2:
            fail(f"host: --host with --rank was not a usage error (rc {rc})")
        rc, out = job.ctl("migrate", "--host", host, "--spawn")
        with open(os.path.join(WORK, "tmctl-host.log"), "w") as f:
            f.write(out)
        if rc != 0 or f"host {host}: ranks 0 1" not in out or "downtime" not in out:
            fail(f"host: tmctl migrate --host {host} (rc {rc}):\n{out}")
        migs = job.status()["migrations"]
        if len(migs) != 1 or migs[0]["state"] != "done":
            fail(f"host: expected one migration done, got {migs}")
        print(f"host: ranks 0 and 1 moved in one migration (switch step {migs[0]['switch_step']})")
        job.finish()
    finally:
        job.kill()
    job.check_digests({0, 1})


TP2_PP2 = ("--tp", "2", "--pp", "2")  # 8 ranks: DP 2; stage 0 = ranks 0-3, stage 1 = ranks 4-7; TP groups {0,1}, {2,3}, ...
TP2_PP4 = ("--tp", "2", "--pp", "4")  # 8 ranks: DP 1; stages {0,1}, {2,3}, {4,5}, {6,7}


def migrate_host(job, host, ranks):
    """tmctl migrate --host H --spawn: every rank on H in one migration."""
    rc, out = job.ctl("migrate", "--host", host, "--spawn", timeout=2 * TIMEOUT)
    with open(os.path.join(WORK, f"tmctl-{job.name}.log"), "a") as f:
        f.write(out)
    mig = job.status()["migrations"][-1]
    want = f"host {host}: ranks {' '.join(map(str, ranks))}"
    if rc != 0 or want not in out or mig["state"] != "done":
        fail(f"{job.name}: tmctl migrate --host {host} (rc {rc}, {mig['state']} {mig['reason']}):\n{out}")
    print(f"{job.name}: host {host} (ranks {ranks}) done at step {mig['switch_step']}")


def check_watchdogs(job):
    """Every rank's watchdog thread (the stayers' and the joiners') polled through the switches and saw no error."""
    text = open(job.log, errors="replace").read()
    for f in os.listdir(WORK):
        if re.match(r"joiner-\d+(-m\d+)?\.log$", f):
            text += open(os.path.join(WORK, f), errors="replace").read()
    seen = {int(r) for r in re.findall(r"\[rank (\d+)\] watchdog: [1-9]\d* polling rounds over 4 communicators, no error", text)}
    if seen != set(range(job.ranks)):
        fail(f"{job.name}: watchdog reports from ranks {sorted(seen)}, expected all {job.ranks}")


def scenario_3d():
    """tm-train --tp 2 --pp 2 on 8 ranks (TP 2 x PP 2 x DP 2: a Split TP communicator, a non-blocking pipeline one
    from a fresh id with grouped send/recv, a ZeRO-1 DP one from a fresh id, a watchdog thread), on two hosts
    (node0: stage 0, node1: stage 1). In one job, one after the other: rank 0 (first stage; it published the world's
    and its groups' ids), rank 7 (last stage) right after it, both ranks of the TP group {2, 3} in one migration,
    then every rank still on host node1 (tmctl migrate --host: 4, 5 and 6; rank 7's joiner was spawned on the
    coordinator's host, whose host-local variables it took). Every rank's digest equals the uninterrupted run's."""
    clear_joiner_logs()
    job = Job("3d", 8, steps=700, step_ms=8, layout=TP2_PP2, hosts=2)
    try:
        job.wait_step(10)
        job.migrate(0)
        job.migrate(7)
        job.wait_step(max(p["step"] for p in job.status()["processes"] if p["state"] == "alive") + 10)
        job.migrate([2, 3])
        migrate_host(job, "node1", [4, 5, 6])
        job.finish()
    finally:
        job.kill()
    job.check_digests({0, 2, 3, 4, 5, 6, 7})
    check_watchdogs(job)


def scenario_3d_middle():
    """tm-train --tp 2 --pp 4 on 8 ranks: a rank of a middle stage (stage 1: it receives from one neighbour and sends
    to the other in each grouped exchange), then one of the other middle stage (stage 2), one after the other."""
    check_watchdogs(run_plan("3d-middle", 8, [(10, [2, 5])], steps=500, layout=TP2_PP4))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scenario_torchrun():
    """A job started the way torchrun starts one, without torchrun (there is no torch here): 8 tm-train --tp 2 --pp 2
    processes started by hand, each with exactly the variables torchrun gives a worker (RANK, LOCAL_RANK, WORLD_SIZE,
    GROUP_RANK, ROLE_*, MASTER_ADDR/PORT, TORCHELASTIC_*), the shim preloaded and a trainmoverd of our own, as
    docs/getting-started.md shows for torchrun. tm-train's first communicator is its DP group's (as PyTorch's lazy
    initialisation makes it), so the coordinator knows each process's rank only from RANK: status must show ranks
    0-7 and `tmctl migrate --rank 5 --spawn` must move process 5, whose joiner inherits the torchrun environment;
    every digest equals the uninterrupted run's."""
    steps, params, world = 500, 3000, 8
    token = f"mig-test-torchrun-{os.getpid()}-0123456789"
    base = dict(os.environ, TRAINMOVER_TOKEN=token)
    for k in ("TRAINMOVER_COORDINATOR", "TMRUN_STORE", "TMRUN_STORE_TOKEN", "RANK", "WORLD_SIZE"):
        base.pop(k, None)
    logs = {n: open(os.path.join(WORK, f"torchrun-{n}.log"), "w") for n in ("store", "trainmoverd")}
    # tm-train's own rendezvous (a PyTorch program's is torch's TCPStore at MASTER_ADDR:MASTER_PORT): a store alone.
    store = subprocess.Popen([TMRUN, "-n", "1", "--no-shim", "--no-coordinator", "--", "sleep", "600"], env=base,
                             stdout=logs["store"], stderr=subprocess.STDOUT, start_new_session=True)
    daemon = subprocess.Popen([TRAINMOVERD, "--listen", "127.0.0.1:0"], env=base, stdout=subprocess.PIPE,
                              stderr=logs["trainmoverd"], text=True)
    procs = []
    try:
        addr = daemon.stdout.readline().strip()
        deadline = time.monotonic() + 20
        store_addr = None
        while not store_addr and time.monotonic() < deadline:
            m = re.search(r"store (\S+)", open(os.path.join(WORK, "torchrun-store.log")).read())
            store_addr = m and m.group(1)
            time.sleep(0.05)
        if not addr or not store_addr:
            fail(f"torchrun: no coordinator ({addr}) or store ({store_addr})")
        master_port = free_port()
        for r in range(world):
            env = dict(base, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                       GROUP_RANK="0", GROUP_WORLD_SIZE="1", ROLE_RANK=str(r), ROLE_WORLD_SIZE=str(world),
                       ROLE_NAME="default", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(master_port),
                       TORCHELASTIC_RUN_ID="mig-test", TORCHELASTIC_RESTART_COUNT="0", TORCHELASTIC_MAX_RESTARTS="0",
                       TORCHELASTIC_USE_AGENT_STORE="True", TORCH_NCCL_ASYNC_ERROR_HANDLING="1", OMP_NUM_THREADS="1",
                       TRAINMOVER_COORDINATOR=addr, TMRUN_STORE=store_addr, TMRUN_STORE_TOKEN=token)
            with open(os.path.join(WORK, f"torchrun-rank-{r}.log"), "w") as out:
                procs.append(subprocess.Popen(train_cmd(params, steps, 8, layout=TP2_PP2), env=env, cwd=WORK,
                                              stdout=out, stderr=subprocess.STDOUT))
        job = Job.__new__(Job)  # only its tmctl helpers: the processes are ours, not a tmrun's
        job.name, job.addr, job.token_file, job.ranks, job.p = "torchrun", addr, os.path.join(WORK, "token"), world, procs[0]
        with open(job.token_file, "w") as f:
            f.write(token)
        job.wait_step(10)
        ranks = sorted(p["rank"] for p in job.status()["processes"] if p["state"] == "alive")
        if ranks != list(range(world)):
            fail(f"torchrun: the coordinator sees ranks {ranks}, RANK says 0-{world - 1}")
        clear_joiner_logs()
        job.migrate(5)
        rcs = [p.wait(timeout=TIMEOUT) for p in procs]
        if rcs != [0] * world:
            fail(f"torchrun: exit statuses {rcs}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        daemon.kill()
        os.killpg(store.pid, signal.SIGKILL)
    want = reference(world, params, steps, TP2_PP2)
    got = {r: digests(os.path.join(WORK, f"torchrun-rank-{r}.log")).get(None) for r in range(world) if r != 5}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and got.get(5) is None:
        got[5] = digests(os.path.join(WORK, "joiner-5.log")).get(None) if os.path.exists(os.path.join(WORK, "joiner-5.log")) else None
        time.sleep(0.05)
    joiner = open(os.path.join(WORK, "joiner-5.log"), errors="replace").read()
    if "role=joiner" not in joiner:
        fail("torchrun: joiner-5.log is not a joiner's")
    if got != want:
        fail(f"torchrun: digests {got}, uninterrupted run {want}")
    print(f"torchrun: ranks 0-7 from RANK, rank 5 migrated; all {world} digests equal the uninterrupted run's")


def scenario_mismatch():
    clear_joiner_logs()
    job = Job("mismatch", 3, step_ms=25)
    try:
        job.wait_step(10)
        # tmctl migrate without --spawn waits for a joiner the operator starts: one with another model size.
        ctl = subprocess.Popen([TMCTL, "--coordinator", job.addr, "--token-file", job.token_file, "migrate", "--rank",
                                "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(0.3)
        env = dict(os.environ, RANK="1", WORLD_SIZE="3", TRAINMOVER_ROLE="joiner", TRAINMOVER_REPLACE="1",
                   TRAINMOVER_DEBUG="INFO", TRAINMOVER_COORDINATOR=job.addr, TRAINMOVER_TOKEN=open(job.token_file).read().strip())
        env["TMRUN_STORE"] = job.store
        jl = open(os.path.join(WORK, "joiner-bad.log"), "w")
        joiner = subprocess.Popen(train_cmd(5000, job.steps, 0), env=env, stdout=jl, stderr=subprocess.STDOUT)
        out, _ = ctl.communicate(timeout=TIMEOUT)
        jrc = joiner.wait(timeout=TIMEOUT)
        if "refused" not in out or "state region '" not in out:
            fail(f"mismatch: tmctl did not report a refusal naming the region: {out}")
        if jrc == 0:
            fail("mismatch: the refused joiner exited 0")
        print(f"mismatch: refused: {out.strip().splitlines()[-1]}")
        job.finish()
    finally:
        job.kill()
    job.check_digests(set())


def pid_gone(pid, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:  # a zombie child of ours counts as gone
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        time.sleep(0.05)
    return False


SLOW_BUILD = {"HOSTNCCL_INIT_DELAY_MS": "700"}  # a wide phase-1 window to strike in


def abort_case(name, what, env=None, daemon=False, rank=1, expect_reason="", stayers_see_error=False):
    """Starts a migration of `rank`, strikes during phase 1 (what: joiner, leaver, coordinator, none), and checks
    that the migration failed, its joiner exited, and (except when the leaver dies) training finished with the
    uninterrupted digests."""
    clear_joiner_logs()
    # stayers_see_error: tmrun waits 60 s after its SIGTERM, which the ranks ignore, so a stayer that ends does so
    # because its own collective failed.
    job = Job(name, 4, steps=300, step_ms=10, env=env, daemon=daemon,
              tmrun_opts=("--grace-ms", "60000") if stayers_see_error else (), ignore_term=stayers_see_error)
    try:
        job.wait_step(10)
        ctl = job.start_migrate(rank)
        joiner = None
        if what != "none":
            _, leaver, joiner = job.wait_state(("building",))
            if what == "joiner":
                os.kill(joiner, signal.SIGKILL)
            elif what == "leaver":
                os.kill(leaver, signal.SIGKILL)
            elif what == "coordinator":
                job.daemon.kill()
        out, _ = ctl.communicate(timeout=TIMEOUT)
        if what == "leaver":  # tmrun stops the job when a rank dies (and its embedded coordinator with it)
            if "failed" not in out and "connection closed" not in out:
                fail(f"{name}: tmctl migrate said: {out}")
        elif what != "coordinator":
            s = job.status()
            m = s["migrations"][-1]
            reasons = (expect_reason,) if isinstance(expect_reason, str) else expect_reason
            if m["state"] != "failed" or not any(r in m["reason"] for r in reasons):
                fail(f"{name}: migration {m['state']} ({m['reason']}), expected failed with '{expect_reason}'")
            print(f"{name}: migration failed as expected: {m['reason']}")
            joiner = joiner or {p["id"]: p["pid"] for p in s["processes"]}.get(m["joiner"])
        if joiner and not pid_gone(joiner, 15):
            fail(f"{name}: the joiner (pid {joiner}) did not exit")
        rc = job.finish(expect_rc=None)
    finally:
        job.kill()
    if what == "leaver":
        if rc == 0:
            fail(f"{name}: the job ended 0 although a rank was killed")
        print(f"{name}: the stayers failed with an error (tmrun exit {rc}), no hang")
        if stayers_see_error:
            with open(job.log, errors="replace") as f:
                errs = re.findall(r"\[rank (\d+)\] tm-train: error: (nccl\w+)\(.*failed at .*?: (.*?) \(\d+\)", f.read())
            if not errs or str(rank) in {r for r, _, _ in errs}:
                fail(f"{name}: no stayer reported a failed collective (errors: {errs}); see {job.log}")
            r, call, what_err = errs[0]
            print(f"{name}: stayer rank {r}: {call} failed: {what_err}")
        return
    if rc != 0:
        fail(f"{name}: tmrun exited {rc}")
    job.check_digests(set())


def scenario_abort_joiner():
    # Whichever the coordinator hears first: the joiner's lost connection, or the stayers' replacement
    # communicator failing on the dead joiner (under load the second can come first).
    abort_case("abort-joiner", "joiner", env=SLOW_BUILD,
               expect_reason=("before the switch", "building a replacement communicator failed"))


def scenario_abort_leaver():
    # Without failure recovery (recovery_test.py's during_migration has it on: the dead leaver is recovered).
    no_recovery = dict(SLOW_BUILD, TRAINMOVER_RECOVERY="off")
    abort_case("abort-leaver", "leaver", env=no_recovery, expect_reason="before the switch")
    # The same with the ranks ignoring tmrun's SIGTERM: a stayer itself sees the collective error.
    abort_case("abort-leaver-stayer", "leaver", env=no_recovery, stayers_see_error=True)


def scenario_abort_coordinator():
    abort_case("abort-coordinator", "coordinator", env=SLOW_BUILD, daemon=True)


def scenario_abort_transfer():
    abort_case("abort-transfer", "none", env={"TRAINMOVER_FAULT": "corrupt-transfer"}, rank=2,
               expect_reason="state transfer failed")
    # The same with the leaver hashing while the joiner reads (the joiner may fail before the leaver's Seal ends).
    abort_case("abort-transfer-overlap", "none", env={"TRAINMOVER_FAULT": "corrupt-transfer",
                                                      "TRAINMOVER_SEAL_OVERLAP": "on"}, rank=2,
               expect_reason="state transfer failed")


def scenario_attack_descriptor():
    """A transfer descriptor changed on its way (TRAINMOVER_FAULT=tamper-descriptor: one byte after the leaver's
    MAC) is refused by the joiner before it reads a byte; the migration fails, training is bit-identical."""
    abort_case("attack-descriptor", "none", env={"TRAINMOVER_FAULT": "tamper-descriptor"}, rank=1,
               expect_reason="MAC mismatch")


def scenario_seal_overlap():
    """TRAINMOVER_SEAL_OVERLAP=on|off: the leaver seals while the joiner reads, or first; both bit-identical. With
    on, the leaver's AT_STEP precedes its seal, so the joiner's transfer starts before the seal ends (checked in the
    timeline: the leaver reports its "seal" span after AT_STEP, the joiner's "transfer" span begins on READ)."""
    for mode in ("on", "off"):
        clear_joiner_logs()
        job = Job(f"seal-{mode}", 2, steps=300, step_ms=8, env={"TRAINMOVER_SEAL_OVERLAP": mode})
        try:
            job.wait_step(10)
            mig, _ = job.migrate(1)
            s = job.status()
            rc, out = job.ctl("timeline", str(mig["id"]), "--out", os.path.join(WORK, f"seal-{mode}.json"))
            if rc != 0:
                fail(f"seal-{mode}: tmctl timeline: {out}")
            with open(os.path.join(WORK, f"seal-{mode}.json")) as f:
                ev = json.load(f)
            ev = ev["traceEvents"] if isinstance(ev, dict) else ev
            span = {e.get("name"): e for e in ev if e.get("ph") == "X"}
            if "seal" not in span or "transfer" not in span:
                fail(f"seal-{mode}: no seal/transfer span in the timeline: {sorted(span)}")
            seal_end = span["seal"]["ts"] + span["seal"]["dur"]
            xfer_start = span["transfer"]["ts"]
            if mode == "off" and xfer_start < seal_end:
                fail(f"seal-off: the transfer began {seal_end - xfer_start} us before the seal ended")
            print(f"seal-{mode}: transfer starts {xfer_start - seal_end:+.0f} us after the seal ends")
            job.finish()
        finally:
            job.kill()
        job.check_digests({1})


def scenario_captured():
    if not FAKE_CUDART or not os.path.exists(FAKE_CUDART):
        print("SKIP: the fake libcudart was not built")
        sys.exit(77)
    job = Job("captured", 3, step_ms=10, env={"TM_FAKE_CAPTURE": "1"}, preload=FAKE_CUDART)
    try:
        job.wait_step(10)
        mig, out = job.migrate(1, expect="refused")
        if "CUDA graph" not in mig["reason"]:
            fail(f"captured: refused for another reason: {mig['reason']}")
        if any(f.startswith("joiner-") for f in os.listdir(WORK)):
            fail("captured: a joiner was spawned for a migration refused up front")
        job.finish()
    finally:
        job.kill()
    job.check_digests(set())


def scenario_numpy():
    """The NumPy example through the Python module: rank 1 early, rank 0 (which published the unique id), then
    ranks 1 and 2 in one migration; every digest equals the uninterrupted run's, which equals a run without the
    shim at all (the module is a no-op there)."""
    if not PYTHON or not NUMPY_EXAMPLE:
        print("SKIP: TM_PYTHON and TM_NUMPY_EXAMPLE not set")
        sys.exit(77)
    if subprocess.run([PYTHON, "-c", "import numpy"], capture_output=True).returncode != 0:
        print(f"SKIP: {PYTHON} has no numpy (Debian: apt-get install python3-numpy)")
        sys.exit(77)
    steps = 600
    log = os.path.join(WORK, "numpy-noshim.log")
    with open(log, "w") as f:
        rc = subprocess.run([TMRUN, "-n", "3", "--no-coordinator", "--no-shim", "--"] + numpy_cmd(3000, steps, 0, shim=False),
                            stdout=f, stderr=subprocess.STDOUT, timeout=TIMEOUT).returncode
    plain = digests(log)
    if rc != 0 or len(plain) != 3 or len(set(plain.values())) != 1:
        fail(f"numpy without the shim: rc {rc}, digests {plain}")
    if next(iter(plain.values())) != reference(3, 3000, steps):
        fail(f"numpy: without the shim {plain}, under the shim {reference(3, 3000, steps)}")
    print("numpy: the same digest without the shim and under it")
    run_plan("numpy", 3, [(10, [1]), (100, [0]), (200, [[1, 2]])], steps=steps)


SCENARIOS = {"3d": scenario_3d, "3d_middle": scenario_3d_middle, "torchrun": scenario_torchrun, "tp_dp": scenario_tp_dp, "numpy": scenario_numpy, "tape": scenario_tape, "seal_overlap": scenario_seal_overlap, "host": scenario_host, "split": scenario_split, "repropose": scenario_repropose, "fast": scenario_fast, "captured": scenario_captured, "several": scenario_several, "abort_joiner": scenario_abort_joiner, "abort_leaver": scenario_abort_leaver,
             "abort_coordinator": scenario_abort_coordinator, "abort_transfer": scenario_abort_transfer,
             "attack_descriptor": scenario_attack_descriptor,"basic": scenario_basic, "twice": scenario_twice, "pair": scenario_pair, "mismatch": scenario_mismatch}

if __name__ == "__main__":
    for path in (TMRUN, TMCTL, TMTRAIN, SHIM, HOSTNCCL, TRAINMOVERD):
        if not path or not os.path.exists(path):
            print(f"SKIP: {path or 'a tool'} not built")
            sys.exit(77)
    SCENARIOS[SCENARIO]()
    print("PASS")
