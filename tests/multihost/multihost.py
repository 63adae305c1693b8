#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A job across hosts, on one machine (nethosts.py: network namespaces on a bridge, one "host" each).

usage: multihost.py TMRUN TMCTL TMTRAIN SHIM HOSTNCCL SCENARIO

Scenarios (each compares every rank's final digest with an uninterrupted single-host run's, bit for bit):
  launch    2 hosts x 2 ranks, `tmrun --nnodes 2 --node-rank K --master ADDR:PORT` on each
  migrate   the same job; rank 1 moves from host 1 to host 3 (`tmctl migrate --rank 1 --to host3`), whose joiner
            is started there by the operator with `tmrun --join --replace 1 --master ADDR:PORT`; the state crosses
            the network. A joiner started first on host 2 is told to exit and the migration waits for host 3's
  host      the same job; every rank of host 1 (0 and 1) moves to host 3 in one `tmctl migrate --host host1`
  cut       the same job; host 3 (the joiner's) is cut off (its link down) while the replacement communicators
            are being built: the migration is abandoned, training goes on undisturbed
  node      the same job with a node agent on host 3 (`tmrun --node --master ADDR:PORT`): `tmctl migrate --rank 1
            --to host3 --spawn` starts the joiner there through it; then `tmctl migrate --host host2 --to host3
            --spawn` moves both ranks of host 2; `tmctl status` lists the hosts and their agents; a migration
            --to a host without a node agent is refused
  recover   the same job with a standby on host 2 (`tmrun --standby 1` on node 1): rank 3 (host 2) is killed with
            SIGKILL, node 1's tmrun asks the coordinator and keeps its other rank, the standby takes rank 3; then
            rank 2 (host 2) is killed, no standby is left, and its replacement is spawned on host 2, its own host,
            by node 1's tmrun (the host's node agent) with host 2's host-local variables; the status JSON, tmctl
            status and the coordinator's log say where
Needs root and iproute2 (ip netns); exits 77 with the reason otherwise.
"""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "harness"))
import nethosts  # noqa: E402

TMRUN, TMCTL, TMTRAIN, SHIM, HOSTNCCL = (os.path.abspath(a) for a in sys.argv[1:6])
SCENARIO = sys.argv[6]
WORK = tempfile.mkdtemp(prefix="multihost-")
C = nethosts.Cluster(dict(tmrun=TMRUN, tmctl=TMCTL, tm_train=TMTRAIN, shim=SHIM, hostnccl=HOSTNCCL), WORK)


def fail(msg):
    print(f"FAIL: {msg}")
    for name in sorted(os.listdir(WORK)):
        if name.endswith(".log"):
            with open(os.path.join(WORK, name), errors="replace") as f:
                print(f"--- {name}\n{''.join(f.readlines()[-20:])}")
    sys.exit(1)


def reference(ranks, steps):
    log = os.path.join(WORK, "reference.log")
    with open(log, "w") as f:
        rc = subprocess.run([TMRUN, "-n", str(ranks), "--no-coordinator", "--"] + C.train_cmd(steps, 0), stdout=f,
                            stderr=subprocess.STDOUT, timeout=nethosts.TIMEOUT).returncode
    d = nethosts.digests(log)
    if rc != 0 or len(d) != ranks or len(set(d.values())) != 1:
        fail(f"uninterrupted run: rc {rc}, digests {d}")
    return next(iter(d.values()))


def finish(procs):
    for p in procs:
        try:
            if p.wait(timeout=nethosts.TIMEOUT) != 0:
                fail(f"{' '.join(p.args[3:6])} exited {p.returncode}")
        except subprocess.TimeoutExpired:
            fail("a node did not finish (hang?)")


def check(got, want, ranks=4):
    if sorted(got) != list(range(ranks)) or set(got.values()) != {want}:
        fail(f"digests {got}, uninterrupted run {want}")
    print(f"{SCENARIO}: all {ranks} digests equal the uninterrupted run's ({want[:16]}...)")


def node_digests(skip=()):
    return {r: d for k in (0, 1) for r, d in nethosts.digests(os.path.join(WORK, f"node{k}.log")).items()
            if r not in skip}


def scenario_launch():
    want = reference(4, 120)
    nodes = C.start_job(120, 2)
    hosts = {p["rank"]: p["host"] for p in C.wait_step(1)}
    if hosts != {0: "host1", 1: "host1", 2: "host2", 3: "host2"}:
        fail(f"ranks on hosts {hosts}, expected ranks 0-1 on host1 and 2-3 on host2")
    finish(nodes)
    check(node_digests(), want)


def decoy_joiner(rank, steps, step_ms):
    """A joiner for `rank` started on host 2 while the migration is --to host3: told to exit, the migration waits on."""
    def run(cluster):
        p = cluster.spawn(1, cluster.join_cmd(rank, cluster.train_cmd(steps, step_ms)), f"decoy-{rank}.log")
        try:
            rc = p.wait(timeout=nethosts.TIMEOUT)
        except subprocess.TimeoutExpired:
            fail("the joiner on host2 of a migration --to host3 was not told to exit")
        with open(os.path.join(WORK, f"decoy-{rank}.log"), errors="replace") as f:
            why = "registered on host host2, but the migration is to host host3"
            if rc == 0 or why not in f.read():
                fail(f"the joiner on host2 of a migration --to host3 exited {rc} without saying '{why}'")
        if cluster.status()["migrations"][-1]["state"] != "sandbox":
            fail(f"the migration did not wait on after the wrong joiner: {cluster.status()['migrations'][-1]}")
        print(f"{SCENARIO}: a joiner on host2 was told to exit (exit {rc}); the migration waited for host3's")
    return run


def scenario_migrate(ranks=(1,), target_args=("--rank", "1", "--to", "host3"), steps=800, step_ms=10):
    want = reference(4, steps)
    os.environ.update(TRAINMOVER_DEBUG="INFO", TRAINMOVER_DEBUG_SUBSYS="MIGRATION")  # the joiner says how it read
    nodes = C.start_job(steps, step_ms)
    C.wait_step(40)
    first = decoy_joiner(ranks[0], steps, step_ms) if "--to" in target_args else None
    m, joiners, out = C.migrate(target_args, ranks, C.train_cmd(steps, step_ms), first=first)
    if m["state"] != "done":
        fail(f"migration ended {m['state']}: {m['reason']}")
    hosts = {p["rank"]: p["host"] for p in C.status()["processes"] if p["state"] == "alive"}
    if any(hosts.get(r) != "host3" for r in ranks):
        fail(f"ranks {list(ranks)} should now run on host3: {hosts}")
    print(f"{SCENARIO}: ranks {list(ranks)} moved to host3 at step {m['switch_step']}; "
          f"tmctl: {out.strip().splitlines()[-1].strip()}")
    finish(nodes + joiners)
    got = node_digests(skip=ranks)
    for r in ranks:
        log = os.path.join(WORK, f"joiner-{r}.log")
        got.update(nethosts.digests(log))
        with open(log, errors="replace") as f:
            read = re.search(r"state read: .* over (\w+)", f.read())
        if not read or read.group(1) != "ucx":
            fail(f"rank {r}'s state crossed hosts {'over ' + read.group(1) if read else 'unreported'}, not over UCX")
        with open(log, errors="replace") as f:
            served = re.search(r"READY sent; (\d+) ops served from the tape", f.read())
        if first and (not served or served.group(1) == "0"):  # the tape went to host 3's joiner, not the decoy
            fail(f"rank {r}'s joiner on host3 served no operation from the leaver's tape ({served and served.group(0)})")
    print(f"{SCENARIO}: the state crossed hosts over UCX")
    check(got, want)


def scenario_host():
    scenario_migrate(ranks=(0, 1), target_args=("--host", "host1"))


def scenario_cut():
    steps, step_ms = 1200, 10
    want = reference(4, steps)
    nodes = C.start_job(steps, step_ms)
    C.wait_step(40)

    def cut_while_building(c):
        deadline = time.monotonic() + nethosts.TIMEOUT
        while time.monotonic() < deadline:
            if c.status()["migrations"][-1]["state"] in ("building", "done", "failed", "cancelled", "refused"):
                break
            time.sleep(0.01)
        c.cut(2)
        print(f"cut: host3's link down with the migration {c.status()['migrations'][-1]['state']}")

    t0 = time.monotonic()
    # The joiner's builds take 3 s (hostnccl's emulated set-up cost, on the joiner only), so that host 3 is cut
    # off while they run.
    m, _, _ = C.migrate(["--rank", "1"], [1], C.train_cmd(steps, step_ms), joiner_env={"HOSTNCCL_INIT_DELAY_MS": "3000"},
                        on_requested=cut_while_building)
    if m["state"] not in ("failed", "cancelled"):
        fail(f"the migration to a cut-off host ended {m['state']}, expected it abandoned")
    print(f"cut: migration {m['state']} after {time.monotonic() - t0:.1f} s: {m['reason']}")
    finish(nodes)
    check(node_digests(), want)


def scenario_node():
    steps, step_ms = 900, 10
    want = reference(4, steps)
    nodes = C.start_job(steps, step_ms)
    agent = C.spawn(2, [TMRUN, "--node", "--master", C.master], "node-agent.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(p["role"] == "node" and p["state"] == "alive"
                                                  for p in C.status()["processes"]):
        time.sleep(0.1)
    C.wait_step(1)  # every rank registered with its rank
    rc, out = C.tmctl("status")
    hosts = out[out.index("\nHOST ") + 1:].split("\n\n")[0] if "\nHOST " in out else ""
    if not re.search(r"^host3\s+pid \d+\s+-$", hosts, re.M) or not re.search(r"^host1\s+-\s+0 1$", hosts, re.M):
        fail(f"tmctl status does not list the hosts, host3's node agent and host1's ranks:\n{out}")
    print("node: tmctl status:\n" + hosts)
    C.wait_step(40)
    rc, out = C.tmctl("migrate", "--rank", "2", "--to", "host9", "--spawn")
    m = C.status()["migrations"][-1]
    if m["state"] != "failed" or "no node agent on host host9" not in m["reason"]:
        fail(f"a migration to a host without a node agent ended {m['state']} ({m['reason']})")
    print(f"node: --to host9 (no node agent) {m['state']}: {m['reason']}")
    for target, ranks in ((["--rank", "1"], [1]), (["--host", "host2"], [2, 3])):
        rc, out = C.tmctl("migrate", *target, "--to", "host3", "--spawn")
        m = C.status()["migrations"][-1]
        if m["state"] != "done":
            fail(f"migrate {target} --to host3 --spawn ended {m['state']}: {m['reason']}\n{out}")
        hosts = {p["rank"]: p["host"] for p in C.status()["processes"] if p["state"] == "alive" and p["rank"] >= 0}
        if any(hosts.get(r) != "host3" for r in ranks):
            fail(f"ranks {ranks} should now run on host3: {hosts}")
        print(f"node: {' '.join(target)} --to host3 --spawn: done at step {m['switch_step']}, "
              f"downtime {m['downtime_ms']:.1f} ms; ranks on {hosts}")
    finish(nodes)
    deadline = time.monotonic() + nethosts.TIMEOUT
    got = node_digests(skip=(1, 2, 3))
    while time.monotonic() < deadline and len(got) < 4:  # the joiners' logs, written by the node agent's children
        for r in (1, 2, 3):
            f = os.path.join(WORK, f"joiner-{r}.log")
            if os.path.exists(f):
                got.update({r: d for _, d in nethosts.digests(f).items()})
        time.sleep(0.2)
    agent.terminate()
    check(got, want)


def wait_recoveries(n):
    """Waits until n failure recoveries are done; returns the last one's record."""
    deadline = time.monotonic() + nethosts.TIMEOUT
    while time.monotonic() < deadline:
        recs = [m for m in C.status()["migrations"] if m["kind"] == "recover"]
        if len(recs) >= n and recs[n - 1]["state"] not in ("requested", "spawning", "sandbox", "building", "agreeing",
                                                           "switching"):
            if recs[n - 1]["state"] != "done":
                fail(f"recovery {n} ended {recs[n - 1]['state']}: {recs[n - 1]['reason']}")
            return recs[n - 1]
        time.sleep(0.1)
    fail(f"recovery {n} did not complete")


def kill_rank(rank):
    pid = next(p["pid"] for p in C.status()["processes"]
               if p["state"] == "alive" and p["role"] == "worker" and p["rank"] == rank)
    os.kill(pid, signal.SIGKILL)
    return pid


def scenario_recover():
    steps, step_ms = 1500, 10
    want = reference(4, steps)
    nodes = C.start_job(steps, step_ms, node_args={1: ["--standby", "1"]})
    deadline = time.monotonic() + nethosts.TIMEOUT
    while time.monotonic() < deadline and not any(
            p["role"] == "standby" and p["state"] == "alive" and p["standby"]["ready"] and p["host"] == "host2"
            for p in C.status()["processes"]):
        time.sleep(0.1)
    C.wait_step(20)  # and every rank's snapshot on its buddy (at every safe point, TRAINMOVER_SNAPSHOT_EVERY=1)
    for n, rank, how in ((1, 3, "standby"), (2, 2, "spawned")):
        pid = kill_rank(rank)
        rec = wait_recoveries(n)
        if how not in rec["recovery"]["replacement"]:
            fail(f"rank {rank}'s recovery: replacement {rec['recovery']['replacement']!r}, expected a {how} one")
        hosts = {p["rank"]: p["host"] for p in C.status()["processes"] if p["state"] == "alive" and p["rank"] >= 0
                 and p["role"] == "worker"}
        print(f"recover: rank {rank} (pid {pid}, host2) killed; recovered by {rec['recovery']['replacement']} at step "
              f"{rec['recovery']['rollback_step']} ({rec['recovery']['lost_steps']} lost), downtime "
              f"{rec['downtime_ms']:.1f} ms; ranks on {hosts}")
        # The replacement runs on the failed process's host, which is fine: the standby there, or a process that
        # host's node agent (node 1's tmrun) spawned, registered with host 2's TRAINMOVER_HOST.
        if hosts.get(rank) != "host2" or rec["host"] != "host2":
            fail(f"rank {rank} should run on host2 now: {hosts}; the record says host {rec['host']!r}")
        if how == "spawned":
            if "on host2 (the failed process's host)" not in rec["recovery"]["replacement"]:
                fail(f"the record does not say where the replacement runs: {rec['recovery']['replacement']!r}")
            rc, out = C.tmctl("status")
            if not re.search(rf"^{rec['id']}\s+2\s.*spawned pid \d+ on host2 ", out, re.M):
                fail(f"tmctl status does not say that rank 2's replacement runs on host2:\n{out}")
    finish(nodes)
    with open(os.path.join(WORK, "node1.log"), errors="replace") as f:
        log1 = f.read()
    if "the coordinator recovers it" not in log1:
        fail("node 1's tmrun did not say that the coordinator recovers its rank")
    if not re.search(r"^tmrun: node: started \S+ \(id \d+\), pid \d+$", log1, re.M):
        fail("node 1's tmrun (host 2's node agent) did not start the replacement")
    got = node_digests(skip=(2, 3))
    m = re.search(r"^\[s0\] final-state sha256:([0-9a-f]+)$", log1, re.M)
    if m:
        got[3] = m.group(1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and 2 not in got:  # the spawned replacement's log (node 1's child)
        d = nethosts.digests(os.path.join(WORK, "joiner-2.log")) if os.path.exists(os.path.join(WORK, "joiner-2.log")) else {}
        if None in d:
            got[2] = d[None]
        time.sleep(0.2)
    check(got, want)


def main():
    try:
        C.make()
    except nethosts.Unavailable as e:
        print(f"SKIP: {e}")
        return 77
    try:
        {"launch": scenario_launch, "migrate": scenario_migrate, "host": scenario_host, "cut": scenario_cut,
         "node": scenario_node, "recover": scenario_recover}[SCENARIO]()
    except RuntimeError as e:
        fail(str(e))
    finally:
        C.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
