#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Attacks on the control plane, with real processes and sockets (docs/reliability.md, "Attacks tested").

A trainmoverd with agent_probe processes (stand-ins for training ranks) and, for each attack, the checks that it
was refused, that the job went on (every process alive, steps advancing, the same process ids) and that the
coordinator still answered `tmctl status` within a few seconds:
  1. a recording relay between two agents and the coordinator sees neither the token, nor a marker value from
     the agents' environment, nor any other plaintext of their messages;
  2. the relay replays one frame of an agent, and reflects one of the coordinator's frames back to it with the
     sequence number it expects: both refused (out of order / authentication failed), the agent reconnects;
  3. an agent with the wrong token is refused and never listed;
  4. a token under 16 characters: trainmoverd and tmctl refuse to start, naming TRAINMOVER_TOKEN, not echoing it;
  5. a flood of slow unauthenticated connections and of oversized pre-auth frames: the oversized ones are refused
     from their header, the coordinator's memory stays bounded, the agents stay alive, tmctl is served;
  6. fd exhaustion: a coordinator whose hard RLIMIT_NOFILE is 64, flooded: it does not spin, and tmctl is still
     served (the oldest unauthenticated connection gives way); a low soft limit is raised to the hard one.
Usage: attack_test.py TRAINMOVERD TMCTL AGENT_PROBE
"""
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

D, CTL, PROBE = sys.argv[1:4]
TOKEN = f"attack-test-token-{os.getpid()}-5f3a9c"
MARKER = f"MARKER-{os.getpid()}-c0ffee-4b1d-not-a-secret"
HEADER = 20
TMP = tempfile.mkdtemp(prefix="tm-attack-")
procs = []


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    for p in procs:
        p.kill()
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def start(argv, env=None, **kw):
    p = subprocess.Popen(argv, env={**os.environ, "TRAINMOVER_TOKEN": TOKEN, **(env or {})}, **kw)
    procs.append(p)
    return p


def daemon(name, limit=None):
    """trainmoverd on an ephemeral port; returns (process, address, metrics address, log path)."""
    out, log = os.path.join(TMP, name + ".out"), os.path.join(TMP, name + ".log")

    def limits():
        if limit:
            resource.setrlimit(resource.RLIMIT_NOFILE, limit)
    p = start([D, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--heartbeat-timeout-ms", "8000"],
              stdout=open(out, "w"), stderr=open(log, "w"), preexec_fn=limits)
    for _ in range(200):
        lines = open(out).read().split()
        if len(lines) >= 2:
            return p, lines[0], lines[1], log
        time.sleep(0.05)
    fail(f"{name} did not start: {open(log).read()}")


def probe(addr, rank, token=TOKEN):
    return start([PROBE, addr, str(rank), "2", "0x5a", "--step-ms", "20"],
                 env={"TRAINMOVER_TOKEN": token, "TM_ATTACK_MARKER": MARKER},
                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(TMP, f"probe{rank}-{token[:5]}.log"), "a"))


def status(addr, timeout=20):
    """tmctl status --json: (seconds it took, the document or None)."""
    t0 = time.monotonic()
    try:
        r = subprocess.run([CTL, "--coordinator", addr, "status", "--json"], capture_output=True, text=True,
                           timeout=timeout, env=dict(os.environ, TRAINMOVER_TOKEN=TOKEN))
    except subprocess.TimeoutExpired:
        return timeout, None
    return time.monotonic() - t0, (json.loads(r.stdout) if r.returncode == 0 else None)


def job_ok(addr, ids=None, deadline=30):
    """Waits until both ranks are alive and stepping (past where they were); returns {rank: process id}."""
    first = None
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        took, s = status(addr)
        if s:
            alive = {p["rank"]: p for p in s["processes"] if p["state"] == "alive" and p["role"] == "worker"}
            if sorted(alive) == [0, 1]:
                steps = {r: p["step"] for r, p in alive.items()}
                if first is None:
                    first = steps
                elif all(steps[r] > first[r] for r in steps):
                    got = {r: p["id"] for r, p in alive.items()}
                    if ids is not None:
                        check(got == ids, f"the processes changed identity: {got} != {ids}")
                    return got
        time.sleep(0.3)
    fail(f"the job is not alive and stepping on {addr}: {s}")


def metric(maddr, name):
    host, port = maddr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    fail(f"no metric {name}")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def shut(*socks):
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class Relay:
    """A man in the middle that forwards whole frames, records every byte, and replays or reflects one frame.

    The first frame each way is a handshake frame (HMAC trailer, 32 bytes), every later one sealed (tag, 16)."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.recorded = bytearray()
        self.attack = None  # "replay" or "reflect": done once, on the next connection that reaches the point
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.conns = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = "127.0.0.1:%d" % self.sock.getsockname()[1]
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            c, _ = self.sock.accept()
            host, port = self.upstream.rsplit(":", 1)
            u = socket.create_connection((host, int(port)))
            conn = {"client": c, "up": u, "lock": threading.Lock(), "c2s_sealed": 0, "held": [], "attack": None}
            with self.lock:
                if self.attack and not self.done.is_set():
                    conn["attack"], self.attack = self.attack, None
                self.conns.append(conn)
            threading.Thread(target=self.pump, args=(conn, c, u, True), daemon=True).start()
            threading.Thread(target=self.pump, args=(conn, u, c, False), daemon=True).start()

    def cut(self):
        """Closes every connection it relays (the agents reconnect through it)."""
        with self.lock:
            conns, self.conns = self.conns, []
        for c in conns:
            shut(c["client"], c["up"])

    def pump(self, conn, src, dst, c2s):
        buf, n = b"", 0
        try:
            while data := src.recv(65536):
                with self.lock:
                    self.recorded += data
                buf += data
                while len(buf) >= HEADER:
                    length, seq = struct.unpack_from("<I", buf, 16)[0], struct.unpack_from("<Q", buf, 8)[0]
                    total = HEADER + length + (32 if n == 0 else 16)
                    if len(buf) < total:
                        break
                    frame, buf = buf[:total], buf[total:]
                    self.forward(conn, frame, n, seq, c2s)
                    n += 1
        except OSError:
            pass
        shut(src, dst)

    def forward(self, conn, frame, n, seq, c2s):
        with conn["lock"]:
            attack = conn["attack"] if not self.done.is_set() else None
            if c2s:
                if attack == "reflect" and conn["c2s_sealed"] >= 1:
                    conn["held"].append(frame)  # hold the agent's frames until the coordinator's next number
                    return
                conn["up"].sendall(frame)
                conn["c2s_sealed"] += n > 0
                if attack == "replay" and n == 3:  # HELLO, then sealed frames 1, 2, 3: frame 3 again
                    conn["up"].sendall(frame)
                    self.done.set()
                return
            conn["client"].sendall(frame)
            if attack == "reflect" and n > 0 and seq == conn["c2s_sealed"] + 1:
                # The coordinator's frame number k sent back to it, when k is the number it expects next.
                conn["up"].sendall(frame)
                self.done.set()
                for f in conn["held"]:
                    conn["up"].sendall(f)


def main():
    # 4. A token under 16 characters (first: it needs nothing running).
    r = subprocess.run([D, "--listen", "127.0.0.1:0"], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, TRAINMOVER_TOKEN="tiny-tok"))
    check(r.returncode != 0 and "TRAINMOVER_TOKEN" in r.stderr and "16" in r.stderr, f"short token: {r.stderr}")
    check("tiny-tok" not in r.stderr + r.stdout, "trainmoverd echoed the short token")
    r = subprocess.run([CTL, "--coordinator", "127.0.0.1:1", "status"], capture_output=True, text=True, timeout=30,
                       env=dict(os.environ, TRAINMOVER_TOKEN="tiny-tok"))
    check(r.returncode == 2 and "at least 16" in r.stderr and "tiny-tok" not in r.stderr, f"tmctl short: {r.stderr}")
    print("short token: trainmoverd and tmctl refuse it, naming TRAINMOVER_TOKEN", flush=True)

    dp, addr, maddr, log = daemon("d")
    relay = Relay(addr)
    for rank in (0, 1):
        probe(relay.addr, rank)
    ids = job_ok(addr)

    # 1. What a recording relay sees.
    time.sleep(1.0)
    with relay.lock:
        seen = bytes(relay.recorded)
    check(len(seen) > 4000, f"the relay recorded only {len(seen)} bytes")
    # A value under 6 bytes (a host name such as "vm") is looked for as the wire writes a string (u32 length, then
    # the bytes): bare, a 2-letter name turns up in a few kB of ciphertext by chance (1 in 16 in 4 kB). Longer
    # values are looked for bare, wherever they might sit (an environment entry, part of a command line).
    for what, secret in (("the token", TOKEN), ("the marker environment value", MARKER),
                         ("the probe's command line", os.path.basename(PROBE)), ("the role", "worker"),
                         ("the host name", socket.gethostname())):
        encoded = secret.encode() if len(secret) >= 6 else struct.pack("<I", len(secret)) + secret.encode()
        check(encoded not in seen, f"the relay saw {what} in clear")
    print(f"relay: {len(seen)} bytes recorded, no token, no marker, no plaintext", flush=True)

    # 2. A replayed frame and a reflected frame: refused, the agent reconnects as the same process.
    for attack, reason in (("replay", "out-of-order or replayed"), ("reflect", "authentication failed")):
        before = metric(maddr, "trainmover_rejected_total")
        logged = open(log).read().count(reason)
        relay.done.clear()
        relay.attack = attack
        relay.cut()  # the agents reconnect: the first new connection carries the attack
        check(relay.done.wait(30), f"{attack}: the relay never reached its point")
        end = time.monotonic() + 20
        while time.monotonic() < end and open(log).read().count(reason) == logged:
            time.sleep(0.2)
        check(open(log).read().count(reason) > logged, f"{attack}: not refused ('{reason}' not logged)")
        check(metric(maddr, "trainmover_rejected_total") > before, f"{attack}: not counted as rejected")
        took, s = status(addr)
        check(s is not None and took < 5, f"{attack}: tmctl status took {took:.1f} s")
        job_ok(addr, ids)
        line = [l for l in open(log) if reason in l][-1].strip()
        print(f"{attack}: refused ({line[line.find('coordinator:'):][:110]}); job unaffected (same processes), "
              f"status in {took:.2f} s", flush=True)

    # 3. A wrong-token agent.
    logged = open(log).read().count("authentication failed")
    bad = probe(addr, 7, token="not-the-job-token-0123456789")
    time.sleep(2.0)
    took, s = status(addr)
    check(s is not None and all(p["rank"] != 7 for p in s["processes"]), "the wrong-token agent was listed")
    check(open(log).read().count("authentication failed") > logged, "wrong token: no refusal logged")
    bad.kill()
    job_ok(addr, ids)
    print(f"wrong token: refused, never listed; status in {took:.2f} s", flush=True)

    # 5. A flood of slow unauthenticated connections and of oversized pre-auth frames.
    host, port = addr.rsplit(":", 1)
    rss0 = rss_kib(dp.pid)
    slow, big, refused = [], [], 0
    for i in range(300):
        s = socket.create_connection((host, int(port)))
        s.sendall(b"TC")  # a frame's first bytes, then nothing
        slow.append(s)
    oversized = struct.pack("<IHHQI", 0x504D4354, 2, 1, 0, 1 << 20)
    for i in range(100):  # one after the other, each answered before the next (all younger than the slow ones)
        s = socket.create_connection((host, int(port)))
        s.sendall(oversized + b"\0" * 4096)
        s.settimeout(10)
        try:
            refused += b"frame too large before authentication" in s.recv(4096)
        except OSError:
            pass
        big.append(s)
    took, s = status(addr)
    rss1 = rss_kib(dp.pid)
    check(refused == len(big), f"oversized pre-auth frames: {refused} of {len(big)} refused from the header")
    check(s is not None and took < 5, f"flood: tmctl status took {took:.1f} s")
    check(rss1 - rss0 < 32 * 1024, f"flood: the coordinator grew by {(rss1 - rss0) // 1024} MiB")
    job_ok(addr, ids)
    for c in slow + big:
        c.close()
    print(f"flood: {len(slow)} slow + {len(big)} oversized, all oversized refused from the header; "
          f"memory +{(rss1 - rss0) // 1024} MiB; status in {took:.2f} s; job unaffected", flush=True)

    # 6. File descriptors: a low soft limit is raised; with a low hard limit, exhaustion neither spins nor locks out.
    lp, laddr, _, llog = daemon("low-soft", limit=(64, 4096))
    limits = open(f"/proc/{lp.pid}/limits").read()
    soft = [l for l in limits.splitlines() if l.startswith("Max open files")][0].split()[3]
    check(soft == "4096", f"the soft RLIMIT_NOFILE was not raised to the hard one: {soft}")
    lp.kill()
    xp, xaddr, _, xlog = daemon("exhausted", limit=(64, 64))
    for rank in (0, 1):
        probe(xaddr, rank)
    xids = job_ok(xaddr)
    host, port = xaddr.rsplit(":", 1)
    hogs = []
    for i in range(120):  # more than it has descriptors for
        try:
            s = socket.create_connection((host, int(port)), timeout=5)
            s.sendall(b"T")
            hogs.append(s)
        except OSError:
            break
    time.sleep(1.0)
    c0 = cpu_s(xp.pid)
    time.sleep(3.0)
    spin = (cpu_s(xp.pid) - c0) / 3.0
    took, s = status(xaddr)
    check(s is not None and took < 8, f"fd exhaustion: tmctl status took {took:.1f} s")
    check(spin < 0.5, f"fd exhaustion: the coordinator used {spin:.0%} of a core (spinning on accept)")
    check("closing the oldest unauthenticated" in open(xlog).read(), "fd exhaustion was not reached (no EMFILE)")
    job_ok(xaddr, xids)
    for c in hogs:
        c.close()
    print(f"fd exhaustion: {len(hogs)} connections against 64 descriptors; coordinator CPU {spin:.0%}; "
          f"status in {took:.2f} s; job unaffected", flush=True)
    for p in procs:
        p.kill()
    print("PASS")


if __name__ == "__main__":
    main()
