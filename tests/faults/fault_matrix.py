#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The fault matrix of a live migration (docs/reliability.md, "The fault matrix").

usage: fault_matrix.py TMRUN TMCTL TMTRAIN SHIM HOSTNCCL TRAINMOVERD (short|long) [--doc FILE] [--cells a,b,...]

A 4-rank tm-train job over hostnccl migrates rank 1 (the leaver) to a joiner the test starts itself; once the
migration is in the cell's phase, one process (leaver, joiner, stayer = rank 2, or the coordinator) gets the cell's
fault:
  kill   kill -9
  stop   SIGSTOP, SIGCONT after the deadlines ran out (FREEZE_S)
  cut    its control connection cut: every connection of that process to the coordinator goes through a relay of
         this test that stops forwarding (no reset, like a link that went down) and keeps new connections silent
         too; restored after FREEZE_S (for the coordinator: every process's relay)
  host   its host cut off: the job runs in a network namespace of its own ("host1", tools/harness/nethosts.py) and
         the struck process in a second one ("host2", its own address and veth on the same bridge); the cut takes
         host2's link down (every connection of the process: control, hostnccl's, UCX's) and brings it back after
         FREEZE_S. Needs root and iproute2: without them the cell is "not run".
Each process reaches the coordinator through a relay of its own (the job's command picks it by rank and role), so
only the victim's is cut. Phases are found in `tmctl status` (the migration's state; "first op" is the switching
state once a stayer swapped its communicators), and widened by test knobs: every communicator init takes 700 ms
(building), the coordinator sends COMMIT 3 s after the last ACCEPT (agreeing; TRAINMOVER_FAULT=slow-commit), the
joiner waits 3 s before its READY (sandbox; slow-ready), before it reads (switching before SWITCH, transfer) or after
it switched in (first op; TRAINMOVER_FAULT=slow-first-op). A cell whose phase passed before the test saw it is
reported as "phase missed", never as a pass.

Each cell checks: the job finishes (exit 0) with every rank's final digest equal to the uninterrupted run's (the
joiner's in place of the leaver's when the migration completed), the joiner exited when it did not, and no rank's
training stood still longer than the cell's bound (the longest gap between two of its step lines, from tm-train's
--log-every 1, is the "longest wait"). Cells whose victim is killed before the switch end in a recovery when the
victim is a rank (docs/recovery.md) and the checks are the same.

short: a representative set (the suite); long: every cell, and with --doc the FAULT-MATRIX block of that file is
rewritten with what was seen. Exit 0 pass, 1 fail.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "harness"))
import nethosts  # noqa: E402
from relay import Relay  # noqa: E402
from nethosts import digests  # noqa: E402

TMRUN, TMCTL, TMTRAIN, SHIM, HOSTNCCL, TRAINMOVERD = (os.path.abspath(a) for a in sys.argv[1:7])
MODE = sys.argv[7]
WORK = tempfile.mkdtemp(prefix="fault-matrix-")
TIMEOUT = 90
STEPS, STEP_MS = 900, 10
# The coordinator's heartbeat timeout is 4 s (a heartbeat and KEEPALIVE every second), so an agent gives up on a
# silent coordinator after 5 s (five intervals); the hold deadline is 6 s (SWITCH never later than 3 s after COMMIT).
# A fault lasts FREEZE_S, past all of them.
HEARTBEAT_TIMEOUT_MS = "4000"
FREEZE_S = 9
ENV = {"TRAINMOVER_COORDINATOR_TIMEOUT_MS": "1000", "TRAINMOVER_HOLD_TIMEOUT_MS": "6000",
       "TRAINMOVER_PHASE_TIMEOUT_MS": "20000", "HOSTNCCL_INIT_DELAY_MS": "700", "HOSTNCCL_TIMEOUT_MS": "30000",
       # The hand-off's deadline (floor + state / bandwidth) must fit half the hold deadline, or every migration is
       # refused at PREPARE (docs/transfer.md, "Timeout"): the state is 36 KB.
       "TRAINMOVER_TRANSFER_FLOOR_MS": "1000"}
PHASES = ["sandbox", "building", "agreeing", "switching", "transfer", "first op"]
VICTIMS = ["leaver", "joiner", "stayer", "coordinator"]
FAULTS = ["kill", "stop", "cut", "host"]
# The suite's cells: each victim, each fault and the sandbox, building, switching and transfer phases at least
# once, in six cells (a CI run's time is bounded; the long form runs all of them). The coordinator cut off past the
# agents' silence timeout: the agents say BYE "reconnect" and the coordinator waits for them instead of recovering
# live ranks (docs/reliability.md, "A closed connection is not a death"). The first-op cells are out until a rank
# lost right after a switch can be recovered (docs/reliability.md). The host cell: a stayer's host cut off while it
# switches (control, hostnccl's and UCX's connections at once), recovered (about 30 s); where namespaces cannot be
# made it is "not run", printed with the reason, and fails nothing (as transfer_netns skips).
SHORT = [("sandbox", "joiner", "kill"), ("building", "leaver", "kill"), ("switching", "coordinator", "cut"),
         ("switching", "stayer", "stop"), ("transfer", "joiner", "cut"), ("switching", "stayer", "host")]
# Where the test strikes: the migration's state, and for "first op" a stayer's "swap comms" phase.
STATE = {"sandbox": "sandbox", "building": "building", "agreeing": "agreeing", "switching": "switching",
         "transfer": "switching", "first op": "switching"}
# The joiner's knob per phase (TRAINMOVER_FAULT, the joiner only).
KNOB = {"sandbox": "slow-ready", "switching": "slow-transfer", "transfer": "slow-transfer", "first op": "slow-first-op"}
# The coordinator's knob per phase: COMMIT 3 s after the last ACCEPT, every rank held at the agreed step meanwhile.
COORDINATOR_KNOB = {"agreeing": "slow-commit"}


def fail(msg):
    print(f"FAIL: {msg}")
    sys.exit(1)


class CellError(Exception):
    """A cell that could not be set up (the job never started training): that cell fails, the others still run."""


REF = {}


def train_cmd():
    return ["env", f"LD_PRELOAD={SHIM}", f"TRAINMOVER_NCCL_LIBRARY={HOSTNCCL}", TMTRAIN, "--steps", str(STEPS),
            "--params", "3000", "--seed", "7", "--log-every", "1", "--step-ms", str(STEP_MS)]


def reference():
    if "d" not in REF:
        log = os.path.join(WORK, "reference.log")
        with open(log, "w") as f:
            rc = subprocess.run([TMRUN, "-n", "4", "--shim", SHIM, "--no-coordinator", "--"] + train_cmd()[:-2] +
                                ["--step-ms", "0"],
                                stdout=f, stderr=subprocess.STDOUT, timeout=TIMEOUT).returncode
        d = digests(log)
        if rc != 0 or len(d) != 4 or len(set(d.values())) != 1:
            fail(f"reference run: rc {rc}, digests {d}")
        REF["d"] = next(iter(d.values()))
    return REF["d"]


class StepClock:
    """Tails a log of step lines ('[r] [rank r] step N loss ...' from tmrun, or '[rank r] step N ...' from the
    joiner) and keeps, per rank, the longest gap between two step lines that falls in a window."""

    def __init__(self, paths):
        self.paths, self.last, self.gaps, self.stop = paths, {}, {}, False
        self.window = (float("inf"), float("inf"))
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        files = {}
        while not self.stop:
            for p in self.paths:
                if p not in files and os.path.exists(p):
                    files[p] = open(p, errors="replace")
                f = files.get(p)
                for line in (f.readlines() if f else []):
                    m = re.search(r"\[rank (\d+)\] step \d+ ", line)
                    if not m:
                        continue
                    r, now = int(m.group(1)), time.monotonic()
                    key = (p, r)
                    if key in self.last and now > self.window[0] and self.last[key] < self.window[1]:
                        self.gaps[key] = max(self.gaps.get(key, 0.0), now - self.last[key])
                    self.last[key] = now
            time.sleep(0.02)

    def longest(self, exclude_rank_of=None):
        gaps = [g for (p, r), g in self.gaps.items() if (p, r) != exclude_rank_of]
        return max(gaps) if gaps else 0.0


def ctl(addr, token_file, *args, timeout=TIMEOUT, via=()):
    """tmctl; via: the command that puts it on the operator's host (ip netns exec HOST), if any."""
    r = subprocess.run(list(via) + [TMCTL, "--coordinator", addr, "--token-file", token_file] + list(args),
                       capture_output=True, text=True, timeout=timeout)
    return r.returncode, r.stdout + r.stderr


def status(addr, token_file, via=()):
    """The coordinator's status, or None when it does not answer (stopped, or cut off)."""
    try:
        rc, out = ctl(addr, token_file, "status", "--json", timeout=15, via=via)
    except subprocess.TimeoutExpired:
        return None
    return json.loads(out) if rc == 0 else None


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return os.waitpid(pid, os.WNOHANG)[0] != pid
    except ChildProcessError:
        return True


def cell(phase, victim, fault):
    """Runs one cell; returns its row: outcome, longest wait, the bound, and whether it passed."""
    name = f"{phase.replace(' ', '-')}-{victim}-{fault}"
    log = os.path.join(WORK, f"{name}.log")
    jlog = os.path.join(WORK, f"{name}-joiner.log")
    for g in os.listdir(WORK):  # replacements of an earlier cell's recoveries
        if g.startswith("joiner-"):
            os.unlink(os.path.join(WORK, g))
    relays = {k: Relay() for k in ("leaver", "joiner", "stayer", "other")} if fault != "host" else {}
    hosts = None
    if fault == "host":  # the job on host1 (index 0), the struck process alone on host2 (index 1)
        hosts = nethosts.Cluster({}, WORK, nhosts=2)
        try:
            hosts.make()
        except nethosts.Unavailable as e:
            return dict(cell=(phase, victim, fault), outcome="not run", detail=str(e), wait=None, ok=None,
                        unavailable=True)
    on = (lambda i: ["ip", "netns", "exec", hosts.hosts[i]]) if hosts else (lambda i: [])
    via = on(0)  # tmctl runs on the job's host
    env = dict(hosts.env(0) if hosts else os.environ, **ENV)
    if phase in COORDINATOR_KNOB:  # the coordinator's (tmrun's or trainmoverd's); the ranks ignore it
        env["TRAINMOVER_FAULT"] = COORDINATOR_KNOB[phase]
    daemon = None
    token = f"fault-matrix-{os.getpid()}-0123456789abcdef"
    env["TRAINMOVER_TOKEN"] = token
    token_file = os.path.join(WORK, "token")
    with open(token_file, "w") as f:
        f.write(token)
    if victim == "coordinator":  # a trainmoverd of its own, which can be frozen or killed without the job
        listen = f"{hosts.addr(1)}:0" if hosts else "127.0.0.1:0"
        daemon = subprocess.Popen(on(1) + [TRAINMOVERD, "--listen", listen, "--heartbeat-timeout-ms",
                                           HEARTBEAT_TIMEOUT_MS], env=env, stdout=subprocess.PIPE,
                                  stderr=open(os.path.join(WORK, f"{name}-trainmoverd.log"), "w"), text=True)
        coord = daemon.stdout.readline().strip()
        env["TRAINMOVER_COORDINATOR"] = coord
    for k, r in relays.items():
        env[f"TM_FAULT_RELAY_{k.upper()}"] = r.addr
    pick = ('case "$RANK" in 1) C=$TM_FAULT_RELAY_LEAVER;; 2) C=$TM_FAULT_RELAY_STAYER;; *) C=$TM_FAULT_RELAY_OTHER;; '
            'esac; export TRAINMOVER_COORDINATOR=$C; exec "$@"')
    master = []
    if hosts:  # the struck rank starts on host2, every other rank on host1 (the store's and coordinator's)
        env.update(TM_FAULT_HOST_RANK={"leaver": "1", "stayer": "2"}.get(victim, "-1"), TM_FAULT_HOST=hosts.hosts[1],
                   TM_FAULT_HOST_ADDR=hosts.addr(1))
        pick = ('[ "$RANK" = "$TM_FAULT_HOST_RANK" ] && exec ip netns exec "$TM_FAULT_HOST" env TRAINMOVER_HOST=host2 '
                'HOSTNCCL_SOCKET_IFADDR="$TM_FAULT_HOST_ADDR" "$@"; exec "$@"')
        master = ["--master", f"{hosts.addr(0)}:29400"]
    f = open(log, "w")
    job = subprocess.Popen(on(0) + [TMRUN, "-n", "4", "--shim", SHIM, "--heartbeat-timeout-ms", HEARTBEAT_TIMEOUT_MS] +
                           master + ["--", "sh", "-c", pick, "sh"] + train_cmd(), stdout=f,
                           stderr=subprocess.STDOUT, cwd=WORK, env=env, start_new_session=True)
    clock = StepClock([log, jlog])
    joiner = None
    try:
        deadline = time.monotonic() + 20
        while daemon is None:
            with open(log, errors="replace") as g:
                m = re.search(r"tmrun: coordinator (\S+) \(tmctl --coordinator \S+ --token-file (\S+)", g.read())
            if m:
                coord, token_file = m.group(1), m.group(2)
                break
            if time.monotonic() > deadline:
                raise CellError("tmrun printed no coordinator address")
            time.sleep(0.05)
        for r in relays.values():
            r.target = coord
        last = {}  # the newest `tmctl status` seen (the embedded coordinator ends with the job)

        def poll():
            while job.poll() is None and not clock.stop:
                st = status(coord, token_file, via)
                if st:
                    last["s"] = st
                time.sleep(0.5)
        threading.Thread(target=poll, daemon=True).start()
        # Every rank registered past step 10 (through its relay).
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            s = status(coord, token_file, via)
            ws = [p for p in (s or {}).get("processes", []) if p["state"] == "alive" and p["role"] == "worker"]
            if len(ws) == 4 and min(p["step"] for p in ws) >= 10:
                break
            time.sleep(0.1)
        else:
            raise CellError("the job did not reach step 10")
        pids = {p["rank"]: p["pid"] for p in ws}
        # The joiner: the leaver's environment (its store, rank, world), as tmctl migrate --spawn would start it,
        # reaching the coordinator through its own relay.
        with open(f"/proc/{pids[1]}/environ", "rb") as g:
            leaver_env = dict(kv.split("=", 1) for kv in g.read().decode(errors="replace").split("\0") if "=" in kv)
        leaver_env.update(TRAINMOVER_COORDINATOR=relays["joiner"].addr if relays else coord, TRAINMOVER_ROLE="joiner",
                          TRAINMOVER_REPLACE="1", TRAINMOVER_TOKEN=token if daemon else env["TRAINMOVER_TOKEN"])
        jhost = 1 if victim == "joiner" else 0
        if hosts:
            leaver_env.update(TRAINMOVER_HOST=f"host{jhost + 1}", HOSTNCCL_SOCKET_IFADDR=hosts.addr(jhost))
        if phase in KNOB:
            leaver_env["TRAINMOVER_FAULT"] = KNOB[phase]
        mig = subprocess.Popen(via + [TMCTL, "--coordinator", coord, "--token-file", token_file, "migrate", "--rank",
                                      "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        joiner = subprocess.Popen(on(jhost) + train_cmd(), stdout=open(jlog, "w"), stderr=subprocess.STDOUT, cwd=WORK,
                                  env=leaver_env, start_new_session=True)
        # Wait for the phase.
        seen, m = None, None
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            s = status(coord, token_file, via)
            if s and s["migrations"]:
                m = s["migrations"][-1]
                swapped = any(p["phase"] == "swap comms" for p in m.get("phases", []))
                # The sandbox: struck once the joiner registered (its READY is what slow-ready holds back).
                joined = phase != "sandbox" or any(p["role"] == "joiner" and p["state"] == "alive"
                                                   for p in s.get("processes", []))
                if m["state"] == STATE[phase] and (phase != "first op" or swapped) and joined and \
                        (phase not in ("switching", "transfer") or not swapped):
                    seen = m["state"]
                    break
                if m["state"] in ("done", "failed", "cancelled", "refused"):
                    break
            time.sleep(0.02)
        if not seen:
            mig.kill()
            return dict(cell=(phase, victim, fault), outcome="phase missed",
                        detail=f"the migration went on to {m['state'] if m else '?'}", wait=None, ok=None)
        target = {"leaver": pids[1], "stayer": pids[2], "joiner": joiner.pid,
                  "coordinator": daemon.pid if daemon else None}[victim]
        t0 = time.monotonic()
        clock.window = (t0, float("inf"))
        try:
            if fault == "kill":
                os.kill(target, signal.SIGKILL)
            elif fault == "stop":
                os.kill(target, signal.SIGSTOP)
        except ProcessLookupError:  # a leaver that switched out has ended: nothing left to strike
            mig.kill()
            return dict(cell=(phase, victim, fault), outcome="phase missed",
                        detail=f"the {victim} had already exited", wait=None, ok=None)
        if fault == "host":
            hosts.cut(1)
        elif fault == "cut":
            for k in ([victim] if victim != "coordinator" else relays):
                relays[k].cut()
        if fault != "kill":
            time.sleep(FREEZE_S)
            if fault == "stop":
                try:
                    os.kill(target, signal.SIGCONT)
                except ProcessLookupError:
                    pass  # evicted meanwhile (a failed rank is killed by the recovery)
            elif fault == "host":
                hosts.restore(1)
            else:
                for r in relays.values():
                    if r.cut_now:
                        r.restore()
        try:
            mig.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            mig.kill()
        try:
            rc = job.wait(timeout=TIMEOUT + STEPS * STEP_MS / 1000)
        except subprocess.TimeoutExpired:
            keep_stacks(job.pid, os.path.join(WORK, f"{name}-hang.txt"), ctl(coord, token_file, "status", via=via)[1])
            return dict(cell=(phase, victim, fault), outcome="hang", detail="the job did not finish",
                        wait=time.monotonic() - t0, ok=False)
        clock.window = (t0, time.monotonic())
        time.sleep(0.3)
        clock.stop = True
        s = status(coord, token_file, via) if (daemon is not None and daemon.poll() is None) else last.get("s")
        migs = (s or {}).get("migrations", [])
        mrec = [x for x in migs if x["kind"] == "migrate"][-1] if s and any(x.get("kind") == "migrate" for x in migs) \
            else (migs[0] if migs else None)
        outcome = mrec["state"] if mrec else ("coordinator gone" if victim == "coordinator" else "?")
        reason = mrec["reason"] if mrec else ""
        recovered = [x for x in migs if x.get("kind") == "recover"]
        if recovered:
            outcome += f", recovery {recovered[-1]['state']}"
        # Digests: the ranks', the joiner's for rank 1 when it switched in.
        want = reference()
        got = {r: d for r, d in digests(log).items() if r is not None}
        if joiner.poll() is None:
            try:
                joiner.wait(timeout=20)
            except subprocess.TimeoutExpired:
                joiner.kill()
                return dict(cell=(phase, victim, fault), outcome=outcome, detail="the joiner never exited",
                            wait=None, ok=False)
        jd = digests(jlog)
        if None in jd:
            got[1] = jd[None]
        for r in range(4):  # a rank replaced by a recovery: its replacement's own log (docs/recovery.md)
            for g in sorted(x for x in os.listdir(WORK) if re.match(rf"joiner-{r}(-m\d+)?\.log$", x)):
                d = digests(os.path.join(WORK, g)).get(None)
                if d and r not in got:
                    got[r] = d
        bit_identical = rc == 0 and got == {r: want for r in range(4)}
        frozen = {"leaver": (log, 1), "stayer": (log, 2), "joiner": (jlog, 1)}.get(victim)
        wait = clock.longest(exclude_rank_of=frozen if fault in ("stop", "kill") else None)
        # The bound: a frozen rank of the job holds its peers until SIGCONT or until the recovery evicts it
        # (the coordinator's 10 s heartbeat timeout); everything else by the deadlines above.
        bound = FREEZE_S + 12.0
        ok = bit_identical and wait <= bound
        detail = reason if bit_identical else f"tmrun exit {rc}, digests {got}, uninterrupted {want[:12]}"
        return dict(cell=(phase, victim, fault), outcome=outcome, detail=detail, wait=wait, bound=bound, ok=ok)
    finally:
        clock.stop = True
        for p in (job, joiner, daemon):
            if p and p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL) if p is not daemon else p.kill()
                except (ProcessLookupError, PermissionError):
                    pass
        for r in relays.values():
            r.sock.close()
        if hosts:
            hosts.close()
        f.close()
        for g in os.listdir(WORK):  # the replacements' logs, kept under the cell's name
            if g.startswith("joiner-"):
                os.rename(os.path.join(WORK, g), os.path.join(WORK, f"{name}-{g}"))


def keep_stacks(sid, path, status_text):
    """Writes what a job that did not finish was doing: the coordinator's status, ps of the session `sid` and each
    process's threads' stacks (gdb, where there is one)."""
    ps = subprocess.run(["ps", "-s", str(sid), "-o", "pid,stat,wchan:24,args"], capture_output=True, text=True).stdout
    with open(path, "w") as out:
        out.write(status_text + "\n" + ps)
        for pid in [line.split()[0] for line in ps.splitlines()[1:]]:
            try:
                bt = subprocess.run(["gdb", "-p", pid, "-batch", "-ex", "thread apply all bt"], capture_output=True,
                                    text=True, timeout=60).stdout
            except (OSError, subprocess.TimeoutExpired):
                bt = "(no gdb, or it did not finish)"
            out.write(f"\n--- pid {pid}\n{bt}")


def write_doc(path, rows):
    """Rewrites the FAULT-MATRIX block: the rows of this run, and those of earlier runs for the cells it did not run
    (a partial run updates its cells), in the matrix's order."""
    with open(path) as f:
        text = f.read()
    begin, end = "<!-- FAULT-MATRIX begin -->", "<!-- FAULT-MATRIX end -->"
    i, j = text.index(begin) + len(begin), text.index(end)
    lines = {}
    for line in text[i:j].splitlines():
        cols = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cols) == 7 and cols[0] in PHASES:
            lines[(cols[0], cols[1], cols[2])] = line
    for row in rows:
        phase, victim, fault = row["cell"]
        wait = f"{row['wait']:.1f} s" if row.get("wait") is not None else "-"
        bound = f"{row['bound']:.0f} s" if row.get("bound") else "-"
        result = {True: "pass", False: "FAIL", None: "not run"}[row["ok"]]
        detail = row["detail"].replace("|", "/")[:90]
        lines[row["cell"]] = f"| {phase} | {victim} | {fault} | {row['outcome']}: {detail} | {wait} | {bound} | {result} |"
    order = [(p, v, f) for p in PHASES for v in VICTIMS for f in FAULTS]
    table = ["| phase | process | fault | outcome | longest wait | bound | result |", "|---|---|---|---|---|---|---|"]
    table += [lines[c] for c in order if c in lines]
    with open(path, "w") as f:
        f.write(text[:i] + "\n" + "\n".join(table) + "\n" + text[j:])


def main():
    args = sys.argv[8:]
    doc = args[args.index("--doc") + 1] if "--doc" in args else None
    cells = SHORT if MODE == "short" else [(p, v, f) for p in PHASES for v in VICTIMS for f in FAULTS]
    if "--cells" in args:
        want = args[args.index("--cells") + 1].split(",")
        cells = [c for c in cells if "/".join(c) in want or c[0] in want]
    rows, failed = [], []
    for c in cells:
        try:
            row = cell(*c)
        except CellError as e:
            row = dict(cell=c, outcome="not started", detail=str(e), wait=None, ok=False)
        rows.append(row)
        wait = f"{row['wait']:.1f}s" if row.get("wait") is not None else "-"
        print(f"FAULT-CELL phase={c[0]} victim={c[1]} fault={c[2]} outcome={row['outcome']} longest-wait={wait} "
              f"result={ {True: 'pass', False: 'FAIL', None: 'not-run'}[row['ok']]} {row['detail']}", flush=True)
        if row["ok"] is False or (MODE == "short" and row["ok"] is None and not row.get("unavailable")):
            failed.append(c)
    if doc:
        write_doc(doc, rows)
    if failed:
        fail(f"cells {failed}; logs in {WORK}")
    print(f"fault matrix ({MODE}): {len(rows)} cells, {sum(1 for r in rows if r['ok'])} passed; logs in {WORK}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
