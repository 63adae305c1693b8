# SPDX-License-Identifier: Apache-2.0
"""Several "hosts" on one machine, and a TrainMover job across them (tests/multihost, perf/multihost_bench.py, tools/demo_hosts.py).

Each host is a network namespace with its own address on one /24 and its own TRAINMOVER_HOST; a bridge in a
namespace of its own joins them, so the machine's own network is never touched. A host can be shaped with
tc (netem: rate and delay, to look like a real NIC) and cut off (its link down) and restored. Needs root and iproute2.
"""
import json
import os
import re
import shutil
import subprocess
import time

TIMEOUT = 90


class Unavailable(Exception):
    """Namespaces cannot be made here (not root, no iproute2, no permission): the caller skips."""


class Cluster:
    def __init__(self, bins, work, nhosts=3, token=None, operator=1):
        """bins: dict with tmrun, tmctl, tm_train, shim, hostnccl. operator: the host tmctl runs on."""
        self.bins, self.work, self.operator = bins, work, operator
        pid = os.getpid()
        self.tag = f"tm{pid % 100000}"
        self.net = f"10.{(pid // 250) % 200 + 20}.{pid % 250}"
        self.hosts = [f"{self.tag}h{i + 1}" for i in range(nhosts)]
        self.hub = f"{self.tag}hub"
        self.token = token or f"nethosts-token-{pid}-0123456789abcdef"
        self.started = []  # process groups started in a host; killed by close()
        self.made = False

    # --- the hosts -----------------------------------------------------------------------------------
    @staticmethod
    def ip(*args, check=True):
        r = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
        return r

    def addr(self, i):
        return f"{self.net}.{i + 1}"

    def dev(self, i):
        return f"{self.tag}v{i}"

    def make(self):
        if os.geteuid() != 0 or not shutil.which("ip"):
            raise Unavailable("needs root and iproute2 (network namespaces)")
        try:
            self.ip("netns", "add", self.hub)
        except RuntimeError as e:
            raise Unavailable(f"cannot create network namespaces: {e}")
        self.made = True
        self.ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        self.ip("-n", self.hub, "link", "set", "br0", "up")
        for i, h in enumerate(self.hosts):
            self.ip("netns", "add", h)
            self.ip("link", "add", self.dev(i), "type", "veth", "peer", "name", f"{self.tag}p{i}")
            self.ip("link", "set", self.dev(i), "netns", h)
            self.ip("link", "set", f"{self.tag}p{i}", "netns", self.hub)
            self.ip("-n", self.hub, "link", "set", f"{self.tag}p{i}", "master", "br0")
            self.ip("-n", self.hub, "link", "set", f"{self.tag}p{i}", "up")
            self.ip("-n", h, "addr", "add", f"{self.addr(i)}/24", "dev", self.dev(i))
            self.ip("-n", h, "link", "set", self.dev(i), "up")
            self.ip("-n", h, "link", "set", "lo", "up")
        return self

    def shape(self, rate, delay):
        """Every host's NIC sends at `rate` (tc syntax, e.g. 10gbit) with `delay` (e.g. 50us) one way: netem
        where the kernel has it, else tbf for the rate alone. Returns what was applied, for the report."""
        if not shutil.which("tc"):
            raise Unavailable("tc (iproute2) not found")
        applied = None
        for i, h in enumerate(self.hosts):
            tc = ["ip", "netns", "exec", h, "tc", "qdisc", "replace", "dev", self.dev(i), "root"]
            r = subprocess.run(tc + ["netem", "delay", delay, "rate", rate, "limit", "100000"], capture_output=True,
                               text=True)
            if r.returncode == 0:
                applied = f"{rate} {delay} (netem)"
                continue
            r = subprocess.run(tc + ["tbf", "rate", rate, "burst", "4mb", "latency", "10ms"], capture_output=True,
                               text=True)
            if r.returncode != 0:
                raise Unavailable(f"tc: neither netem nor tbf: {r.stderr.strip()}")
            applied = f"{rate}, no delay (tbf; this kernel has no netem)"
        return applied

    def cut(self, i):
        self.ip("-n", self.hosts[i], "link", "set", self.dev(i), "down")

    def restore(self, i):
        """Brings a cut host's link back up (the kernel puts its address's route back)."""
        self.ip("-n", self.hosts[i], "link", "set", self.dev(i), "up")

    def close(self):
        for p in self.started:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
        if self.made:
            for h in self.hosts + [self.hub]:
                self.ip("netns", "del", h, check=False)

    # --- processes in a host -------------------------------------------------------------------------
    def env(self, i, extra=None):
        """What a process on host i needs: its identity, the address hostnccl and UCX use, the job's token."""
        e = dict(os.environ, TRAINMOVER_HOST=f"host{i + 1}", TRAINMOVER_TOKEN=self.token,
                 HOSTNCCL_SOCKET_IFADDR=self.addr(i), UCX_TLS="tcp,self",
                 UCX_WARN_UNUSED_ENV_VARS="n", HOSTNCCL_TIMEOUT_MS="20000")
        e.update(extra or {})
        return e

    def spawn(self, i, argv, log, extra_env=None):
        f = open(os.path.join(self.work, log), "w")
        p = subprocess.Popen(["ip", "netns", "exec", self.hosts[i]] + argv, stdout=f, stderr=subprocess.STDOUT,
                             env=self.env(i, extra_env), cwd=self.work, start_new_session=True)
        self.started.append(p)
        return p

    def run(self, i, argv, timeout=TIMEOUT, extra_env=None):
        r = subprocess.run(["ip", "netns", "exec", self.hosts[i]] + argv, capture_output=True, text=True,
                           env=self.env(i, extra_env), timeout=timeout)
        return r.returncode, r.stdout + r.stderr

    # --- a TrainMover job ----------------------------------------------------------------------------
    def train_cmd(self, steps, step_ms, extra=()):
        b = self.bins
        return ["env", f"LD_PRELOAD={b['shim']}", f"TRAINMOVER_NCCL_LIBRARY={b['hostnccl']}", b["tm_train"], "--steps",
                str(steps), "--params", "3000", "--seed", "7", "--log-every", "0", "--step-ms", str(step_ms)] + list(extra)

    def start_job(self, steps, step_ms, nodes=2, per_node=2, port=29400, extra=(), node_args=None):
        """tmrun --nnodes on hosts 0..nodes-1 (node_args: {k: more tmrun options of node k}); returns the node
        processes."""
        self.master = f"{self.addr(0)}:{port}"
        procs = [self.spawn(k, [self.bins["tmrun"], "--nnodes", str(nodes), "--node-rank", str(k), "--master",
                                self.master, "-n", str(per_node)] + list((node_args or {}).get(k, ())) + ["--"] +
                            self.train_cmd(steps, step_ms, extra),
                            f"node{k}.log") for k in range(nodes)]
        deadline = time.monotonic() + 30
        self.coord = None
        while time.monotonic() < deadline and not self.coord:
            with open(os.path.join(self.work, "node0.log"), errors="replace") as f:
                m = re.search(r"tmrun: coordinator (\S+)", f.read())
            self.coord = m.group(1) if m else None
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        if not self.coord:
            raise RuntimeError("node 0 printed no coordinator address")
        self.ranks = nodes * per_node
        return procs

    def tmctl(self, *args, timeout=TIMEOUT):
        return self.run(self.operator, [self.bins["tmctl"], "--coordinator", self.coord] + list(args), timeout=timeout)

    def status(self):
        rc, out = self.tmctl("status", "--json")
        if rc != 0:
            raise RuntimeError(f"tmctl status: {out}")
        return json.loads(out)

    def wait_step(self, k):
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            ws = [p for p in self.status()["processes"] if p["state"] == "alive" and p["role"] == "worker"]
            if len(ws) == self.ranks and min(p["step"] for p in ws) >= k:
                return ws
            time.sleep(0.1)
        raise RuntimeError(f"step {k} not reached")

    def join_cmd(self, rank, cmd):
        """`tmrun --join` of a joiner for `rank` running `cmd`, through this job's store."""
        return [self.bins["tmrun"], "--join", "--replace", str(rank), "--master", self.master, "--"] + list(cmd)

    def migrate(self, target_args, ranks, joiner_cmd, to_host=2, joiner_env=None, on_requested=None, first=None):
        """`tmctl migrate` from the operator's host, one `tmrun --join` per rank on host `to_host`; returns the
        migration's record, the joiners and tmctl's output. first(cluster) runs once the migration is requested,
        before the joiners start; on_requested(cluster) once the joiners are up."""
        mig = subprocess.Popen(["ip", "netns", "exec", self.hosts[self.operator], self.bins["tmctl"], "--coordinator",
                                self.coord, "migrate"] + list(target_args), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=self.env(self.operator))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            ms = self.status()["migrations"]
            if ms and ms[-1]["rank"] == ranks[0]:
                break
            time.sleep(0.05)
        if first:
            first(self)
        joiners = [self.spawn(to_host, self.join_cmd(r, joiner_cmd), f"joiner-{r}.log", joiner_env) for r in ranks]
        if on_requested:
            on_requested(self)
        try:
            out, _ = mig.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            mig.kill()
            raise RuntimeError("tmctl migrate did not return")
        with open(os.path.join(self.work, "tmctl.log"), "a") as f:
            f.write(out)
        return self.status()["migrations"][-1], joiners, out


def digests(path):
    """{rank: sha256} from a log of tmrun ('[r] final-state sha256:...'), or {None: sha256} from a single
    process's own log (no rank prefix: a joiner a node agent started)."""
    out = {}
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"^(?:\[(\d+)\] )?final-state sha256:([0-9a-f]+)$", line.strip())
            if m:
                out[int(m.group(1)) if m.group(1) else None] = m.group(2)
    return out
