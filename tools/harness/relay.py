# SPDX-License-Identifier: Apache-2.0
"""A TCP relay to the coordinator that a test can cut, as a link that goes down without a reset (the fault matrix,
tests/faults/fault_matrix.py; recovery_out_of_step, tests/migration/recovery_test.py). A process reaches the
coordinator through it when its TRAINMOVER_COORDINATOR is the relay's address."""
import socket
import threading
import time


class Relay:
    """A TCP relay to the coordinator that can be cut: connections stay open and nothing is forwarded, new ones are
    accepted and never answered, as when a link goes down without a reset. cut_open(): only the connections open now
    stop forwarding (what one process had in flight is withheld; a process started later gets through)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.addr = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.target, self.cut_now, self.silent, self.lock = None, False, [], threading.Lock()
        self.opened, self.frozen_below = 0, 0  # connections made so far; those numbered below frozen_below are cut
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            while not self.target and not self.cut_now:  # the coordinator's address is not known yet: wait for it
                time.sleep(0.05)
            with self.lock:
                if self.cut_now or not self.target:
                    self.silent.append(c)  # accepted, never answered (the SYN got through, nothing else does)
                    continue
            try:
                host, port = self.target.rsplit(":", 1)
                up = socket.create_connection((host, int(port)), timeout=5)
                up.settimeout(None)
            except OSError:
                c.close()
                continue
            done = []  # directions finished; the second one closes both sockets
            with self.lock:
                n, self.opened = self.opened, self.opened + 1
            for a, b in ((c, up), (up, c)):
                threading.Thread(target=self.pump, args=(a, b, done, n), daemon=True).start()

    def pump(self, a, b, done, n):
        """Forwards a to b until a ends. Each direction ends on its own, as over a real link: an end (or a reset) on
        one side half-closes the other side's direction only, so what a peer sent before it closed (an agent's BYE)
        still reaches the other end even when the reverse direction failed first."""
        try:
            while True:
                data = a.recv(65536)
                if not data:
                    break
                while self.cut_now or n < self.frozen_below:  # cut: hold the bytes, forward nothing
                    time.sleep(0.05)
                    if a.fileno() < 0:
                        return
                b.sendall(data)
        except OSError:
            pass
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        with self.lock:
            done.append(a)
            last = len(done) == 2
        if last:
            for s in (a, b):
                s.close()

    def cut(self):
        self.cut_now = True

    def cut_open(self):
        with self.lock:
            self.frozen_below = self.opened

    def restore(self):
        """Forwards again (what was held goes through; a side that gave up meanwhile closes its connection, as
        after a link that came back); the connections made during the cut, never answered, are closed."""
        with self.lock:
            silent, self.silent = self.silent, []
            self.cut_now, self.frozen_below = False, 0
        for c in silent:
            c.close()
