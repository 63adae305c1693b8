# SPDX-License-Identifier: Apache-2.0
"""A tm-train job under trainmoverd with a straggler in it, for tests/straggler and perf/straggler_bench.py.

Job(build, work, ...) starts trainmoverd (with the given --straggler-* flags and a Prometheus endpoint) and tmrun
with N ranks of tm-train on hostnccl under the shim; status() reads the coordinator's status document, watch()
polls it and keeps what the detector said about every process over time; digests() collects every rank's final
digest (a migrated rank's from its joiner's log). Nothing here asserts: the callers do.
"""
import json
import os
import re
import signal
import subprocess
import time
import urllib.request

from nethosts import digests as log_digests


class Job:
    def __init__(self, build, work, name, ranks=4, steps=2000, params=3000, step_ms=5, train_args=(),
                 coordinator_args=(), heartbeat_timeout_ms=2000):
        self.build, self.work, self.name, self.ranks, self.steps = build, work, name, ranks, steps
        self.params, self.step_ms = params, step_ms
        self.token = f"straggler-{os.getpid()}-0123456789abcdef"
        self.dlog = os.path.join(work, f"{name}-trainmoverd.log")
        env = dict(os.environ, TRAINMOVER_TOKEN=self.token, HOSTNCCL_TIMEOUT_MS="20000", UCX_WARN_UNUSED_ENV_VARS="n")
        self.daemon = subprocess.Popen(
            [self.bin("tools/trainmoverd/trainmoverd"), "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
             "--heartbeat-timeout-ms", str(heartbeat_timeout_ms)] + list(coordinator_args),
            env=env, stdout=subprocess.PIPE, stderr=open(self.dlog, "w"), text=True)
        self.addr = self.daemon.stdout.readline().strip()
        self.metrics = self.daemon.stdout.readline().strip()
        if not self.addr or not self.metrics:
            self.daemon.kill()
            raise RuntimeError(f"trainmoverd did not start: {open(self.dlog).read()}")
        self.log = os.path.join(work, f"{name}.log")
        self.timeline = os.path.join(work, f"{name}-timeline-%r.jsonl")
        env.update(TRAINMOVER_COORDINATOR=self.addr)
        self.p = subprocess.Popen(
            [self.bin("tools/tmrun/tmrun"), "-n", str(ranks), "--"] + train_cmd(build, steps, params, step_ms, True) +
            ["--timeline", self.timeline] + list(train_args),
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT, cwd=work, env=env, start_new_session=True)
        self.seen = {}  # process id -> list of (monotonic s, step, straggler, score) as watched

    def bin(self, rel):
        return os.path.join(self.build, rel)

    def ctl(self, *args):
        r = subprocess.run([self.bin("tools/tmctl/tmctl"), "--coordinator", self.addr] +
                           list(args), capture_output=True, text=True, timeout=30,
                           env=dict(os.environ, TRAINMOVER_TOKEN=self.token))
        return r.returncode, r.stdout + r.stderr

    def status(self):
        rc, out = self.ctl("status", "--json")
        return json.loads(out) if rc == 0 else None

    def metrics_text(self):
        with urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5) as r:
            return r.read().decode()

    def workers(self, s):
        return [p for p in s["processes"] if p["state"] == "alive" and p["role"] == "worker"]

    def watch(self, until, timeout=60, every=0.1):
        """Polls the status every `every` s, recording each worker's straggler fields, until until(status) is true
        (returns that status) or the job ends or the timeout passes (returns None)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.status()
            if s:
                for p in self.workers(s):
                    self.seen.setdefault(p["id"], []).append(
                        (time.monotonic(), p["rank"], p["step"], p["straggler"], p["straggler_score"]))
                if until(s):
                    return s
            if self.p.poll() is not None:
                return None
            time.sleep(every)
        return None

    def ever_flagged(self):
        """{process id: rank} of every process seen flagged."""
        return {pid: o[1] for pid, obs in self.seen.items() for o in obs if o[3]}

    def pid_of_rank(self, rank):
        s = self.status()
        return next(p["pid"] for p in self.workers(s) if p["rank"] == rank)

    def finish(self, timeout=120):
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            rc = None
        return rc

    def stop(self):
        """Ends everything: tmrun stops its ranks (each in its own process group) on SIGTERM, SIGKILL after 10 s;
        a joiner trainmoverd spawned ends when its peers do."""
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.p.pid, signal.SIGKILL)
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.daemon.kill()

    def coordinator_log(self):
        with open(self.dlog, errors="replace") as f:
            return f.read()

    def digests(self, migrated=()):
        """{rank: digest}: the tmrun log's, and for each migrated rank its latest joiner's (waits up to 10 s)."""
        got = {r: d for r, d in log_digests(self.log).items() if r is not None and r not in migrated}
        for r in migrated:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and r not in got:
                logs = sorted((f for f in os.listdir(self.work) if re.match(rf"joiner-{r}(-m\d+)?\.log$", f)),
                              key=lambda f: os.path.getmtime(os.path.join(self.work, f)))
                d = log_digests(os.path.join(self.work, logs[-1])) if logs else {}
                if None in d:
                    got[r] = d[None]
                time.sleep(0.05)
        return got

    def step_times(self, rank=0):
        """[(step, t_s)] of `rank`'s safe points from the tm-train timeline (a joiner of that rank appends too)."""
        path = self.timeline.replace("%r", str(rank))
        out = {}
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                out.setdefault(r["step"], r["t_ns"] / 1e9)
        return sorted(out.items())


def train_cmd(build, steps, params, step_ms, shim):
    """tm-train on hostnccl, under the shim or not."""
    b = lambda rel: os.path.join(build, rel)  # noqa: E731
    return (["env"] + ([f"LD_PRELOAD={b('lib/shim/libtrainmover.so')}"] if shim else []) +
            [f"TRAINMOVER_NCCL_LIBRARY={b('plugins/hostnccl/libnccl.so.2')}", b("tools/tm_train/tm-train"),
             "--steps", str(steps), "--params", str(params), "--seed", "7", "--log-every", "0", "--step-ms", str(step_ms)])


def reference(build, work, ranks, steps, params=3000):
    """The final digest of the same job without the shim (tmrun --no-coordinator)."""
    log = os.path.join(work, f"ref-{ranks}-{steps}.log")
    with open(log, "w") as f:
        rc = subprocess.run([os.path.join(build, "tools/tmrun/tmrun"), "-n", str(ranks), "--no-coordinator", "--"] +
                            train_cmd(build, steps, params, 0, False), stdout=f, stderr=subprocess.STDOUT,
                            timeout=120).returncode
    d = log_digests(log)
    if rc != 0 or len(d) != ranks or len(set(d.values())) != 1:
        raise RuntimeError(f"reference run: rc {rc}, digests {d}")
    return next(iter(d.values()))


def rate(times, first, last):
    """Steps per second between steps `first` and `last` of a step_times() list (None when not covered)."""
    t = dict(times)
    if first not in t or last not in t or last <= first:
        return None
    return (last - first) / (t[last] - t[first])
