#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Data-parallel training with NumPy over the NCCL API (ctypes), instrumented with the trainmover module.

A two-layer perceptron (tanh) fits a fixed random teacher; each rank draws its own batch from (seed, rank,
step), gradients are summed with ncclAllReduce and averaged, and Adam updates the parameters in place. The
result is deterministic and bit-identical on every rank, so a live migration can be checked bit for bit.

Host memory only: run it on hostnccl (the NCCL API on CPU), directly or under libtrainmover:

    tmrun -n 3 -- env LD_PRELOAD=build/lib/shim/libtrainmover.so \\
        TRAINMOVER_NCCL_LIBRARY=build/plugins/hostnccl/libnccl.so.2 PYTHONPATH=python \\
        /usr/bin/python3 python/examples/numpy_ddp.py --steps 300 --step-ms 8

Rank and world from RANK / WORLD_SIZE, the unique id through tmrun's key-value store (TMRUN_STORE), as
tm-train does. The NCCL functions are looked up in the process first (under LD_PRELOAD they are the
shim's), else in TRAINMOVER_NCCL_LIBRARY, else in libnccl.so.2. Prints `final-state sha256:<hex>` (the
parameters and both Adam moments, in that order) like tm-train.
"""
import argparse
import ctypes
import hashlib
import hmac
import os
import socket
import struct
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread per rank: no oversubscription
try:
    import numpy as np  # noqa: E402
except ImportError:
    sys.exit(f"numpy_ddp: {sys.executable} has no NumPy (Debian: apt-get install python3-numpy, then /usr/bin/python3)")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import trainmover as tm  # noqa: E402

NCCL_FLOAT64, NCCL_SUM = 8, 0


class UniqueId(ctypes.Structure):
    _fields_ = [("internal", ctypes.c_char * 128)]


def load_nccl():
    proc = ctypes.CDLL(None)
    if hasattr(proc, "ncclCommInitRank"):
        lib = proc
    else:
        lib = ctypes.CDLL(os.environ.get("TRAINMOVER_NCCL_LIBRARY") or "libnccl.so.2", mode=ctypes.RTLD_GLOBAL)
    lib.ncclGetUniqueId.argtypes = [ctypes.POINTER(UniqueId)]
    lib.ncclCommInitRank.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, UniqueId, ctypes.c_int]
    lib.ncclAllReduce.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_void_p, ctypes.c_void_p]
    lib.ncclBroadcast.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                  ctypes.c_void_p, ctypes.c_void_p]
    lib.ncclCommDestroy.argtypes = [ctypes.c_void_p]
    lib.ncclGetErrorString.restype = ctypes.c_char_p
    lib.ncclGetErrorString.argtypes = [ctypes.c_int]
    return lib


def check(lib, call, rc):
    if rc != 0:
        die(f"{call} failed: {lib.ncclGetErrorString(rc).decode()} ({rc})")


def die(msg):
    print(f"[rank {os.environ.get('RANK', '0')}] numpy_ddp: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


class Store:
    """Client of tmrun's key-value store (docs/tmrun.md): the token handshake, SET and GET, big-endian framing."""

    def __init__(self, addr, token):
        host, port = addr.rsplit(":", 1)
        self.s = socket.create_connection((host, int(port)), timeout=150)
        key = token.encode()
        hello = self._read(4 + 32)
        if hello[:4] != b"TMKV":
            die(f"store {addr}: not a tmrun store")
        server_nonce, client_nonce = hello[4:], os.urandom(32)
        proof = hmac.new(key, b"tmkv-client" + server_nonce + client_nonce, hashlib.sha256).digest()
        self.s.sendall(client_nonce + proof)
        want = hmac.new(key, b"tmkv-server" + client_nonce + server_nonce, hashlib.sha256).digest()
        if not hmac.compare_digest(self._read(32), want):
            die(f"store {addr}: the store did not prove the token")

    def _call(self, op, key, val):
        k = key.encode()
        self.s.sendall(struct.pack(">B3xII", op, len(k), len(val)) + k + val)
        status, n = struct.unpack(">B3xI", self._read(8))
        return status, self._read(n)

    def _read(self, n):
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                die("store: connection closed")
            buf += chunk
        return buf

    def set(self, key, val):
        status, _ = self._call(1, key, val)
        if status != 0:
            die(f"store SET {key}: status {status}")

    def get(self, key, timeout_ms=120000):
        status, val = self._call(2, key, struct.pack(">I", timeout_ms))
        if status != 0:
            die(f"store GET {key}: status {status}")
        return val


def unique_id(lib, rank, world):
    uid = UniqueId()
    store = os.environ.get("TMRUN_STORE")
    if not store:
        if world > 1:
            die(f"WORLD_SIZE={world} needs TMRUN_STORE=host:port (start the ranks with tmrun)")
        check(lib, "ncclGetUniqueId", lib.ncclGetUniqueId(ctypes.byref(uid)))
        return uid
    token = os.environ.get("TMRUN_STORE_TOKEN") or os.environ.get("TRAINMOVER_TOKEN") or ""
    kv, key = Store(store, token), "numpy-ddp/nccl-unique-id"
    if rank == 0:  # a joiner replacing rank 0 makes its own (sandboxed) id; the job has read the real one long ago
        check(lib, "ncclGetUniqueId", lib.ncclGetUniqueId(ctypes.byref(uid)))
        kv.set(key, ctypes.string_at(ctypes.addressof(uid), 128))  # all 128 bytes, NULs included
    else:
        v = kv.get(key)
        if len(v) != 128:
            die(f"store: unique id of {len(v)} bytes")
        ctypes.memmove(ctypes.addressof(uid), v, 128)
    return uid


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--params", type=int, default=3000, help="about this many parameters")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--step-ms", type=int, default=0, help="sleep per step (emulated compute)")
    ap.add_argument("--log-every", type=int, default=0)
    a = ap.parse_args()
    rank_env, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    rank = tm.rank(rank_env)
    lib = load_nccl()

    d_in, d_out = 16, 4
    hidden = max(1, a.params // (d_in + d_out + 1))
    rng = np.random.default_rng(a.seed)
    teacher = rng.standard_normal((d_in, d_out))
    # The state: one flat float64 vector holding W1, b1, W2 (views into it), and Adam's two moments.
    n = d_in * hidden + hidden + hidden * d_out
    params = rng.standard_normal(n) * 0.1
    adam_m, adam_v, grad = np.zeros(n), np.zeros(n), np.zeros(n)
    w1 = params[: d_in * hidden].reshape(d_in, hidden)
    b1 = params[d_in * hidden: d_in * hidden + hidden]
    w2 = params[d_in * hidden + hidden:].reshape(hidden, d_out)
    g_w1 = grad[: d_in * hidden].reshape(d_in, hidden)
    g_b1 = grad[d_in * hidden: d_in * hidden + hidden]
    g_w2 = grad[d_in * hidden + hidden:].reshape(hidden, d_out)
    for name, arr in (("params", params), ("adam_m", adam_m), ("adam_v", adam_v)):
        tm.register(name, arr)

    comm = ctypes.c_void_p()
    check(lib, "ncclCommInitRank", lib.ncclCommInitRank(ctypes.byref(comm), world, unique_id(lib, rank, world), rank))
    check(lib, "ncclBroadcast", lib.ncclBroadcast(params.ctypes.data, params.ctypes.data, n, NCCL_FLOAT64, 0, comm, None))
    print(f"[rank {rank}] init world={world} role={tm.role()} params={n} shim={'yes' if tm.loaded() else 'no'}",
          flush=True)

    lr, beta1, beta2, eps = 1e-2, 0.9, 0.999, 1e-8
    loss = np.zeros(1)
    step = 0
    while True:
        step = tm.safe_point(step)  # no collective in flight; a joiner continues from the leaver's step here
        rank = tm.rank(rank)  # a standby that took a failed rank's place holds that rank from here on
        if step >= a.steps:
            break
        x = np.random.default_rng([a.seed, rank, step]).standard_normal((a.batch, d_in))
        y = np.tanh(x @ teacher)
        h = np.tanh(x @ w1 + b1)
        err = h @ w2 - y
        loss[0] = float(np.mean(err * err))
        d_out_ = 2.0 * err / err.size
        g_w2[...] = h.T @ d_out_
        d_h = (d_out_ @ w2.T) * (1.0 - h * h)
        g_w1[...] = x.T @ d_h
        g_b1[...] = d_h.sum(axis=0)
        check(lib, "ncclAllReduce", lib.ncclAllReduce(grad.ctypes.data, grad.ctypes.data, n, NCCL_FLOAT64, NCCL_SUM,
                                                      comm, None))
        check(lib, "ncclAllReduce", lib.ncclAllReduce(loss.ctypes.data, loss.ctypes.data, 1, NCCL_FLOAT64, NCCL_SUM,
                                                      comm, None))
        grad /= world
        # Adam, in place: the registered arrays must keep their memory.
        t = step + 1
        adam_m *= beta1
        adam_m += (1.0 - beta1) * grad
        adam_v *= beta2
        adam_v += (1.0 - beta2) * grad * grad
        params -= lr * (adam_m / (1.0 - beta1 ** t)) / (np.sqrt(adam_v / (1.0 - beta2 ** t)) + eps)
        if a.step_ms > 0:
            time.sleep(a.step_ms / 1000.0)
        step += 1
        if a.log_every > 0 and (step % a.log_every == 0 or step == a.steps):
            print(f"[rank {rank}] step {step} loss {loss[0] / world:.9g}", flush=True)

    check(lib, "ncclCommDestroy", lib.ncclCommDestroy(comm))
    digest = hashlib.sha256(params.tobytes() + adam_m.tobytes() + adam_v.tobytes()).hexdigest()
    print(f"final-state sha256:{digest}", flush=True)


if __name__ == "__main__":
    main()
