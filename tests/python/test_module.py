#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The trainmover Python module (python/trainmover) without the shim and under it.

usage: test_module.py SHIM HOSTNCCL
Without the shim every call is a no-op that checks its arguments, like include/trainmover/trainmover.h; with
libtrainmover.so preloaded (the script runs itself again under LD_PRELOAD) the calls reach tmShim* and their
result codes come back as TrainMoverError.code. Standard library only (bytearray, ctypes buffers).
"""
import ctypes
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))
import trainmover as tm  # noqa: E402

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print(f"FAIL: {what}")


def expect_error(fn, code, what):
    try:
        fn()
    except tm.TrainMoverError as e:
        check(e.code == code, f"{what}: code {e.code}, expected {code}")
        return
    except ValueError:
        check(code is None, f"{what}: ValueError, expected code {code}")
        return
    check(False, f"{what}: no error")


def common(under_shim):
    check(tm.loaded() == under_shim, f"loaded() is {tm.loaded()}")
    check(tm.safe_point(7) == 7, "safe_point(7) in a worker")
    check(tm.rank(3) == 3, "rank(3)")
    check(tm.role() == "worker", f"role() is {tm.role()}")
    a, b = bytearray(64), (ctypes.c_float * 16)()
    tm.register("a", a)
    tm.register("b", b)
    check(tm.address_of(b) == (ctypes.addressof(b), 64), "address_of(ctypes array)")
    check(tm.address_of((1234, 8)) == (1234, 8), "address_of((address, bytes))")
    # Objects shaped like a PyTorch tensor and like a NumPy array (neither library is needed here).
    buf = (ctypes.c_double * 8)()

    class FakeTensor:
        def __init__(self, contiguous=True):
            self.contiguous = contiguous
        def data_ptr(self): return ctypes.addressof(buf)
        def element_size(self): return 8
        def numel(self): return 8
        def is_contiguous(self): return self.contiguous

    class FakeArray:
        __array_interface__ = {"data": (ctypes.addressof(buf), False), "shape": (2, 4), "typestr": "<f8",
                               "strides": None, "version": 3}

    check(tm.address_of(FakeTensor()) == (ctypes.addressof(buf), 64), "address_of(tensor-like)")
    check(tm.address_of(FakeArray()) == (ctypes.addressof(buf), 64), "address_of(array-like)")
    expect_error(lambda: tm.address_of(FakeTensor(False)), None, "non-contiguous tensor")
    tm.register("t", FakeTensor())
    tm.unregister("t")
    expect_error(lambda: tm.register("", a), tm.INVALID_ARGUMENT, "empty name")
    expect_error(lambda: tm.register("x" * 64, a), tm.INVALID_ARGUMENT, "64-byte name")
    expect_error(lambda: tm.register("z", bytearray()), tm.INVALID_ARGUMENT, "empty buffer")
    expect_error(lambda: tm.register("ro", b"immutable"), None, "read-only buffer")
    tm.unregister("a")
    tm.unregister("b")
    if under_shim:  # the shim keeps the table: duplicates and unknown names are errors
        tm.register("c", a)
        expect_error(lambda: tm.register("c", a), tm.ALREADY_REGISTERED, "register twice")
        tm.unregister("c")
        expect_error(lambda: tm.unregister("c"), tm.NOT_REGISTERED, "unregister unknown")
    else:  # like the C header: nothing is kept, nothing can fail
        tm.unregister("never-registered")


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--child":
        common(True)
    else:
        shim, hostnccl = (os.path.abspath(p) for p in sys.argv[1:3])
        os.environ.pop("TRAINMOVER_ROLE", None)
        common(False)
        env = dict(os.environ, LD_PRELOAD=shim, TRAINMOVER_NCCL_LIBRARY=hostnccl)
        env.pop("TRAINMOVER_COORDINATOR", None)
        r = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"], env=env)
        check(r.returncode == 0, f"under the shim: exit {r.returncode}")
    print("FAIL" if failures else "PASS")
    sys.exit(1 if failures else 0)
