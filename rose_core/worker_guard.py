"""Decoding workers that never outlive their parent.

``score`` decodes images in ``DataLoader`` worker processes. When the scorer is killed
(``kill -9``, the OOM killer), nothing tells its workers: a worker blocked on writing a batch into
its pipe stays blocked forever (it holds the pipe's reading end too, so the write never fails),
re-parented to PID 1 and holding its memory. Torch's own check of the parent runs only between
batches, so it does not help then.

:func:`worker_init_fn` closes that gap, twice:

* **Linux**: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` through ``ctypes``: the kernel kills the worker
  the moment the thread that forked it dies. (The ``DataLoader`` iterator must therefore be
  created by a thread that lives as long as the loader — the case in ``score_inputs``.)
* **Everywhere** (and in case ``prctl`` is unavailable): a daemon thread polls ``os.getppid()``
  every :data:`POLL_SECONDS` and ends the process with ``os._exit`` once the parent changed.

Both also check, right after being armed, that the parent is still the one that started the
worker (it could have died in between).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
import time

__all__ = ["worker_init_fn", "POLL_SECONDS"]

POLL_SECONDS = 0.5
"""How often the fallback watchdog checks the parent."""

_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> bool:
    """Ask the Linux kernel to SIGKILL this process when its parent dies; False when unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:
            os._exit(0)
        time.sleep(POLL_SECONDS)


def _init(parent_pid: int, worker_id: int) -> None:
    _set_parent_death_signal()
    if os.getppid() != parent_pid:   # the parent died before the guard was armed
        os._exit(0)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def worker_init_fn():
    """A ``DataLoader(worker_init_fn=...)`` for workers of *this* process (call it in the parent)."""
    return functools.partial(_init, os.getpid())
