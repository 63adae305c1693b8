#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A job across hosts, on one machine: each "host" is a network namespace with its own address and its own
TRAINMOVER_HOST, all joined by a bridge (in a namespace of its own, so the machine's own network is never
touched).

usage: multihost.py TMRUN TMCTL TMTRAIN SHIM HOSTNCCL SCENARIO

Scenarios (each compares every rank's final digest with an uninterrupted single-host run's, bit for bit):
  launch    2 hosts x 2 ranks, `tmrun --nnodes 2 --node-rank K --master ADDR:PORT` on each
  migrate   the same job; rank 1 moves from host 1 to host 3, whose joiner is started there by the operator
            with `tmrun --join --replace 1 --master ADDR:PORT`; the state crosses the network
  host      the same job; every rank of host 1 (0 and 1) moves to host 3 in one `tmctl migrate --host host1`
  cut       the same job; host 3 (the joiner's) is cut off (its link down) while the migration builds: the
            migration is abandoned, training goes on undisturbed
Needs root and iproute2 (ip netns); exits 77 with the reason otherwise.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

TMRUN, TMCTL, TMTRAIN, SHIM, HOSTNCCL = (os.path.abspath(a) for a in sys.argv[1:6])
SCENARIO = sys.argv[6]
WORK = tempfile.mkdtemp(prefix="multihost-")
TIMEOUT = 90
TOKEN = f"multihost-test-token-{os.getpid()}-0123456789"
PORT = 29400
TAG = f"tm{os.getpid() % 100000}"
NET = f"10.{(os.getpid() // 250) % 200 + 20}.{os.getpid() % 250}"
HOSTS = [f"{TAG}h{i}" for i in (1, 2, 3)]
HUB = f"{TAG}hub"
OPERATOR = 1  # tmctl runs on host 2: it stays connected when host 3 is cut off


def skip(why):
    print(f"SKIP: {why}")
    sys.exit(77)


def fail(msg):
    print(f"FAIL: {msg}")
    for name in sorted(os.listdir(WORK)):
        if name.endswith(".log"):
            with open(os.path.join(WORK, name), errors="replace") as f:
                print(f"--- {name}\n{''.join(f.readlines()[-20:])}")
    sys.exit(1)


def ip(*args, check=True):
    r = subprocess.run(["ip"] + list(args), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")
    return r


def addr(i):
    return f"{NET}.{i + 1}"


def make_hosts():
    """HUB holds a bridge; host i gets a veth into it and the address NET.(i+1)/24."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        skip("needs root and iproute2 (network namespaces)")
    try:
        ip("netns", "add", HUB)
    except RuntimeError as e:
        skip(f"cannot create network namespaces: {e}")
    ip("-n", HUB, "link", "add", "br0", "type", "bridge")
    ip("-n", HUB, "link", "set", "br0", "up")
    for i, h in enumerate(HOSTS):
        ip("netns", "add", h)
        ip("link", "add", f"{TAG}v{i}", "type", "veth", "peer", "name", f"{TAG}p{i}")
        ip("link", "set", f"{TAG}v{i}", "netns", h)
        ip("link", "set", f"{TAG}p{i}", "netns", HUB)
        ip("-n", HUB, "link", "set", f"{TAG}p{i}", "master", "br0")
        ip("-n", HUB, "link", "set", f"{TAG}p{i}", "up")
        ip("-n", h, "addr", "add", f"{addr(i)}/24", "dev", f"{TAG}v{i}")
        ip("-n", h, "link", "set", f"{TAG}v{i}", "up")
        ip("-n", h, "link", "set", "lo", "up")


def remove_hosts():
    for h in HOSTS + [HUB]:
        ip("netns", "del", h, check=False)


def host_env(i):
    """What a node's environment needs on host i: its identity, the address hostnccl and UCX use."""
    return dict(os.environ, TRAINMOVER_HOST=f"host{i + 1}", TRAINMOVER_TOKEN=TOKEN, HOSTNCCL_SOCKET_IFADDR=addr(i),
                UCX_TLS="tcp,self", UCX_WARN_UNUSED_ENV_VARS="n", HOSTNCCL_TIMEOUT_MS="20000")


def train_cmd(steps, step_ms):
    return ["env", f"LD_PRELOAD={SHIM}", f"TRAINMOVER_NCCL_LIBRARY={HOSTNCCL}", TMTRAIN, "--steps", str(steps),
            "--params", "3000", "--seed", "7", "--log-every", "0", "--step-ms", str(step_ms)]


def digests(path):
    out = {}
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"^\[(\d+)\] final-state sha256:([0-9a-f]+)$", line.strip())
            if m:
                out[int(m.group(1))] = m.group(2)
    return out


def reference(ranks, steps):
    log = os.path.join(WORK, "reference.log")
    with open(log, "w") as f:
        rc = subprocess.run([TMRUN, "-n", str(ranks), "--no-coordinator", "--"] + train_cmd(steps, 0), stdout=f,
                            stderr=subprocess.STDOUT, timeout=TIMEOUT).returncode
    d = digests(log)
    if rc != 0 or len(d) != ranks or len(set(d.values())) != 1:
        fail(f"uninterrupted run: rc {rc}, digests {d}")
    return next(iter(d.values()))


STARTED = []  # every process group started in a host, killed at the end whatever happened


def in_host(i, argv, log, **kw):
    f = open(os.path.join(WORK, log), "w")
    STARTED.append(None)
    STARTED[-1] = subprocess.Popen(["ip", "netns", "exec", HOSTS[i]] + argv, stdout=f, stderr=subprocess.STDOUT,
                            env=host_env(i), cwd=WORK, start_new_session=True, **kw)
    return STARTED[-1]


def start_job(steps, step_ms):
    master = f"{addr(0)}:{PORT}"
    nodes = []
    for k in (0, 1):
        nodes.append(in_host(k, [TMRUN, "--nnodes", "2", "--node-rank", str(k), "--master", master, "-n", "2", "--"] +
                             train_cmd(steps, step_ms), f"node{k}.log"))
    deadline = time.monotonic() + 30
    coord = None
    while time.monotonic() < deadline and not coord:
        with open(os.path.join(WORK, "node0.log"), errors="replace") as f:
            m = re.search(r"tmrun: coordinator (\S+)", f.read())
        coord = m.group(1) if m else None
        if any(n.poll() is not None for n in nodes):
            break
        time.sleep(0.05)
    if not coord:
        fail("node 0 printed no coordinator address")
    return nodes, master, coord


def finish(nodes):
    for n in nodes:
        try:
            if n.wait(timeout=TIMEOUT) != 0:
                fail(f"a node's tmrun exited {n.returncode}")
        except subprocess.TimeoutExpired:
            fail("a node did not finish (hang?)")


def tmctl(coord, *args, timeout=TIMEOUT):
    r = subprocess.run(["ip", "netns", "exec", HOSTS[OPERATOR], TMCTL, "--coordinator", coord] + list(args),
                       capture_output=True, text=True, env=host_env(OPERATOR), timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def status(coord):
    import json
    rc, out = tmctl(coord, "status", "--json")
    if rc != 0:
        fail(f"tmctl status: {out}")
    return json.loads(out)


def wait_step(coord, k, ranks=4):
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        ws = [p for p in status(coord)["processes"] if p["state"] == "alive" and p["role"] == "worker"]
        if len(ws) == ranks and min(p["step"] for p in ws) >= k:
            return ws
        time.sleep(0.1)
    fail(f"step {k} not reached")


def check(got, want, ranks=4):
    if sorted(got) != list(range(ranks)) or set(got.values()) != {want}:
        fail(f"digests {got}, uninterrupted run {want}")
    print(f"{SCENARIO}: all {ranks} digests equal the uninterrupted run's ({want[:16]}...)")


def scenario_launch():
    want = reference(4, 120)
    nodes, _, coord = start_job(120, 2)
    ws = wait_step(coord, 1)
    hosts = {p["rank"]: p["host"] for p in ws}
    if hosts != {0: "host1", 1: "host1", 2: "host2", 3: "host2"}:
        fail(f"ranks on hosts {hosts}, expected ranks 0-1 on host1 and 2-3 on host2")
    finish(nodes)
    got = {}
    for k in (0, 1):
        got.update(digests(os.path.join(WORK, f"node{k}.log")))
    check(got, want)


def migrate(coord, master, target_args, ranks, steps, step_ms, cut=False):
    """Requests the migration from host 3, starts one joiner per rank there, and returns the record."""
    mig = subprocess.Popen(["ip", "netns", "exec", HOSTS[OPERATOR], TMCTL, "--coordinator", coord, "migrate"] +
                           target_args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=host_env(OPERATOR))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ms = status(coord)["migrations"]
        if ms and ms[-1]["rank"] == ranks[0]:
            break
        time.sleep(0.05)
    # To cut host 3 off while the replacement communicators are being built, the joiner's builds take 3 s
    # (hostnccl's emulated set-up cost, on the joiner only).
    slow = ["env", "HOSTNCCL_INIT_DELAY_MS=3000"] if cut else []
    joiners = [in_host(2, slow + [TMRUN, "--join", "--replace", str(r), "--master", master, "--"] +
                       train_cmd(steps, step_ms), f"joiner-{r}.log") for r in ranks]
    if cut:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            m = status(coord)["migrations"][-1]
            if m["state"] in ("building", "done", "failed", "cancelled", "refused"):
                break
            time.sleep(0.01)
        ip("-n", HOSTS[2], "link", "set", f"{TAG}v2", "down")
        print(f"cut: host3's link down with the migration {status(coord)['migrations'][-1]['state']}")
    try:
        out, _ = mig.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        mig.kill()
        fail("tmctl migrate did not return")
    with open(os.path.join(WORK, "tmctl.log"), "w") as f:
        f.write(out)
    return status(coord)["migrations"][-1], joiners, out


def scenario_migrate(ranks=(1,), target_args=("--rank", "1"), steps=400, step_ms=10):
    want = reference(4, steps)
    nodes, master, coord = start_job(steps, step_ms)
    wait_step(coord, 40)
    m, joiners, out = migrate(coord, master, list(target_args), list(ranks), steps, step_ms)
    if m["state"] != "done":
        fail(f"migration ended {m['state']}: {m['reason']}")
    procs = status(coord)["processes"]
    hosts = {p["rank"]: p["host"] for p in procs if p["state"] == "alive"}
    if any(hosts.get(r) != "host3" for r in ranks):
        fail(f"ranks {list(ranks)} should now run on host3: {hosts}")
    print(f"{SCENARIO}: ranks {list(ranks)} moved to host3 at step {m['switch_step']}; "
          f"tmctl: {out.strip().splitlines()[-1].strip()}")
    finish(nodes + joiners)
    got = {r: d for k in (0, 1) for r, d in digests(os.path.join(WORK, f"node{k}.log")).items() if r not in ranks}
    for r in ranks:
        got.update(digests(os.path.join(WORK, f"joiner-{r}.log")))
    check(got, want)


def scenario_host():
    scenario_migrate(ranks=(0, 1), target_args=("--host", "host1"))


def scenario_cut():
    steps, step_ms = 1200, 10
    want = reference(4, steps)
    nodes, master, coord = start_job(steps, step_ms)
    wait_step(coord, 40)
    t0 = time.monotonic()
    m, joiners, out = migrate(coord, master, ["--rank", "1"], [1], steps, step_ms, cut=True)
    if m["state"] not in ("failed", "cancelled"):
        fail(f"the migration to a cut-off host ended {m['state']}, expected it abandoned")
    print(f"cut: migration {m['state']} after {time.monotonic() - t0:.1f} s: {m['reason']}")
    finish(nodes)
    got = {}
    for k in (0, 1):
        got.update(digests(os.path.join(WORK, f"node{k}.log")))
    check(got, want)


def main():
    make_hosts()
    try:
        {"launch": scenario_launch, "migrate": scenario_migrate, "host": scenario_host, "cut": scenario_cut}[SCENARIO]()
    finally:
        for p in STARTED:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
        remove_hosts()
    return 0


if __name__ == "__main__":
    sys.exit(main())
