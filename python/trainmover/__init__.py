# SPDX-License-Identifier: Apache-2.0
"""trainmover: the state contract of include/trainmover/trainmover.h, for Python programs.

Pure Python over ctypes; nothing to build. The functions look up the shim's entry points (tmShim*) in the
running process, as the C header does with dlsym(RTLD_DEFAULT): they exist when libtrainmover.so is
preloaded (LD_PRELOAD) or is the libnccl.so.2 the process loaded (drop-in). Without the shim every call
is a no-op: safe_point returns its argument, register/unregister succeed after checking their arguments.

    import trainmover as tm
    tm.register("params", params)          # NumPy array, PyTorch tensor (CPU or CUDA), writable buffer
    step = 0
    while True:
        step = tm.safe_point(step)         # no collective in flight here; a joiner resumes at the leaver's step
        if step >= steps: break
        ...                                # one iteration, updating the registered memory in place
        step += 1

Call these from the thread that drives training; register/unregister before or between safe points, never
concurrently with safe_point. A registered object is kept alive by this module until it is unregistered:
the shim holds its address, so the memory must neither be freed nor moved (no reallocation, no resize).
"""
import ctypes
import os

__all__ = ["TrainMoverError", "safe_point", "register", "unregister", "rank", "role", "loaded", "address_of"]

# tmResult_t (include/trainmover/trainmover.h)
SUCCESS, INVALID_ARGUMENT, ALREADY_REGISTERED, NOT_REGISTERED, INTERNAL_ERROR = 0, 1, 2, 3, 4
_RESULT_NAMES = {INVALID_ARGUMENT: "tmInvalidArgument", ALREADY_REGISTERED: "tmAlreadyRegistered",
                 NOT_REGISTERED: "tmNotRegistered", INTERNAL_ERROR: "tmInternalError"}
NAME_MAX = 63  # bytes of a region name (UTF-8)


class TrainMoverError(RuntimeError):
    """A tmShim* call failed; `code` is the tmResult_t value."""

    def __init__(self, call, code, detail=""):
        self.code = code
        name = _RESULT_NAMES.get(code, f"code {code}")
        super().__init__(f"{call} failed: {name}{': ' + detail if detail else ''}")


def _lookup(name, restype, argtypes):
    try:
        fn = getattr(ctypes.CDLL(None), name)  # the process's global scope, as dlsym(RTLD_DEFAULT, name)
    except AttributeError:
        return None
    fn.restype, fn.argtypes = restype, argtypes
    return fn


_safe_point = _lookup("tmShimSafePoint", ctypes.c_int64, [ctypes.c_int64])
_register = _lookup("tmShimRegister", ctypes.c_int, [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t])
_unregister = _lookup("tmShimUnregister", ctypes.c_int, [ctypes.c_char_p])
_rank = _lookup("tmShimRank", ctypes.c_int, [ctypes.c_int])
_kept = {}  # name -> the registered object: keeps its memory alive and in place


def loaded():
    """True when libtrainmover is in the process."""
    return _safe_point is not None


def role():
    """This process's role as the shim sees it: TRAINMOVER_ROLE (lower case), default "worker"."""
    return (os.environ.get("TRAINMOVER_ROLE") or "worker").lower()


def rank(r):
    """The rank this process holds, given the rank the launcher assigned (RANK), as tmRank in trainmover.h: `r` in
    a worker, in a joiner and without the shim; in a standby that took the place of a failed rank R, R from the
    safe point that switched it in on. Call it after every safe_point and derive what depends on the rank from it:
    then a standby warmed up as any rank can replace a failed one (docs/recovery.md, "Standbys")."""
    return int(_rank(int(r))) if _rank is not None else int(r)


def safe_point(step):
    """Marks the end of an iteration; `step` is the number of the iteration about to start. Returns the step to
    continue from: `step` in a worker; in a joiner just switched in, the leaver's step, with every registered
    region already holding the leaver's state at that step. In a leaver it does not return: once the state has
    been handed off, the process exits with status 0 (os._exit semantics: no atexit handlers, no finally blocks,
    Python's own buffers not flushed; flush what you print)."""
    return int(_safe_point(int(step))) if _safe_point is not None else int(step)


def address_of(obj):
    """(address, bytes) of the memory behind obj: an object with data_ptr() (a PyTorch tensor, which must be
    contiguous), one with __array_interface__ or __cuda_array_interface__ (NumPy, CuPy, Numba), a writable
    buffer (bytearray, memoryview), or a tuple (address, bytes)."""
    if isinstance(obj, tuple) and len(obj) == 2:
        return int(obj[0]), int(obj[1])
    if hasattr(obj, "data_ptr") and hasattr(obj, "element_size"):  # torch.Tensor, without importing torch
        if not obj.is_contiguous():
            raise ValueError("a non-contiguous tensor: register a contiguous one (its memory is moved as one block)")
        return int(obj.data_ptr()), int(obj.numel()) * int(obj.element_size())
    for attr in ("__cuda_array_interface__", "__array_interface__"):
        ai = getattr(obj, attr, None)
        if ai is None:
            continue
        if ai.get("strides") is not None and not getattr(getattr(obj, "flags", None), "c_contiguous", False):
            raise ValueError("a non-contiguous array: register a C-contiguous one")
        addr, readonly = ai["data"]
        if readonly:
            raise ValueError("a read-only array: the joiner's copy of it is overwritten at the switch")
        n = int(ai["typestr"][2:])
        for d in ai["shape"]:
            n *= int(d)
        return int(addr), n
    mv = memoryview(obj)
    if mv.readonly or not mv.c_contiguous:
        raise ValueError("a read-only or non-contiguous buffer")
    if mv.nbytes == 0:
        return 0, 0
    return ctypes.addressof(ctypes.c_char.from_buffer(mv)), mv.nbytes


def register(name, obj):
    """Declares the memory behind `obj` (see address_of) as training state named `name` (at most 63 bytes). At a
    migration the joiner's region of the same name and size receives the leaver's bytes; a joiner whose regions
    (names and sizes) differ from the leaver's is refused. Raises TrainMoverError or ValueError."""
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if not raw or len(raw) > NAME_MAX or b"\0" in raw:
        raise TrainMoverError("tmRegister", INVALID_ARGUMENT, f"name {name!r}: 1..{NAME_MAX} bytes, no NUL")
    addr, nbytes = address_of(obj)
    if not addr or nbytes <= 0:
        raise TrainMoverError("tmRegister", INVALID_ARGUMENT, f"{name}: empty or null memory")
    if _register is not None:
        rc = _register(raw, addr, nbytes)
        if rc != SUCCESS:
            raise TrainMoverError("tmRegister", rc, name)
    _kept[raw] = obj


def unregister(name):
    """Forgets the region `name`; the module stops keeping its object alive."""
    raw = name.encode() if isinstance(name, str) else bytes(name)
    if _unregister is not None:
        rc = _unregister(raw)
        if rc != SUCCESS:
            raise TrainMoverError("tmUnregister", rc, name)
    _kept.pop(raw, None)
