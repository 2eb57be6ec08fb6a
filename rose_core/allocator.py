"""Keep freed memory in the process, so large per-batch tensors do not page-fault on every batch.

glibc's ``malloc`` serves every allocation above 32 MiB (its largest mmap threshold) with a fresh
``mmap`` and gives it back with ``munmap`` on free. A model's large activations are exactly that
(the Fashion-MNIST VAE's decoder logits at batch 128 are 134 MB, and its 256-way softmax and their
gradients as many again), so each batch page-faults and zero-fills them anew in the kernel: a large
share of a batch's forward and backward on a CPU (``benchmarks/bench_floor.py`` measures it, with and
without, in ``results/benchmarks/floor.json``).

:func:`reuse_freed_memory` turns that off for the process: ``mallopt(M_MMAP_MAX, 0)`` (large blocks
come from the heap) and ``mallopt(M_TRIM_THRESHOLD, 2^31 - 1)`` (freed heap memory is kept for the
next batch). The cost: the resident memory stays at the process's high-water mark instead of
shrinking between batches, and heap fragmentation can raise that mark a little (the same benchmark
records the peak of both).

It changes no result, only where memory comes from. It is called once by the command-line
interface, the app and the benchmarks; the library never calls it on import. It is a no-op on
anything but glibc (macOS, Windows, musl) and when ``ROSE_DEFAULT_MALLOC=1`` is set (the opt-out).
"""

from __future__ import annotations

import ctypes
import os

__all__ = ["reuse_freed_memory", "OPT_OUT_ENV"]

OPT_OUT_ENV = "ROSE_DEFAULT_MALLOC"
"""Set to ``1`` to keep glibc's default behaviour (return large freed blocks to the system)."""

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_applied: bool | None = None


def _glibc() -> bool:
    """Whether this process runs on glibc (``confstr`` is unset on musl, macOS and Windows)."""
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (AttributeError, ValueError, OSError):
        return False


def reuse_freed_memory() -> bool:
    """Configure glibc's ``malloc`` to keep freed memory for reuse; returns whether it is now in effect.

    Idempotent; safe to call from any thread before or after torch is imported.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(OPT_OUT_ENV, "") == "1" or not _glibc():
        return False
    try:   # the process's own symbols: no library search (ctypes.util.find_library runs ldconfig or gcc)
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    return _applied
