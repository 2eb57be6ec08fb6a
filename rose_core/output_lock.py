"""One writer per output: an exclusive lock file next to a scores output.

``OutputLock(out)`` creates ``<out>.lock`` beside ``out`` (a Parquet file or a directory of
parts) and holds a POSIX record lock (``fcntl.lockf``) on it while the output is written. The
file records the holder — ``{"pid", "host", "started", "command"}`` — so that a second writer can
say who holds it.

Decisions:

* **POSIX record locks, not ``flock``.** The kernel drops a record lock when its *process* dies,
  whatever happens to the processes it forked: ``score``'s decoding workers inherit the open file
  but not the lock, so a ``kill -9`` of the scorer frees the output at once. (An ``flock`` lock
  belongs to the open file and would stay held as long as a forked worker lived.) Record locks
  work across hosts on NFS too.
* **Stale lock files** (the holder was killed, so ``release`` never ran) are detected: the lock
  can be taken, yet the file names another process. The new writer takes the file over and logs
  who held it before.
* **Filesystems without locks** (``ENOLCK``/``EOPNOTSUPP``): the recorded holder decides. A
  holder on this host whose process is alive blocks; one that is dead is stale; a holder on
  another host blocks (its liveness cannot be checked: the message says to delete the lock file
  if that process is gone).
* **Re-entrant within a process**: ``score`` takes the lock before it loads the model (so a second
  writer fails in a second, not after the model loaded) and :func:`score_inputs` takes it again;
  the nested acquisition only counts. Opening and closing a second descriptor on the file in the
  holding process would drop a POSIX lock, which this avoids too.
* **Release** removes the file, then closes it (dropping the lock). A writer that opened the old
  file just before it was removed would lock a deleted file; after locking, the writer checks
  that the path still names the file it locked, and starts again if not.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from rose_core.errors import InvalidInput

__all__ = ["OutputLock", "OutputLocked", "lock_path"]

log = logging.getLogger(__name__)

_HELD: dict[str, "OutputLock"] = {}
"""Locks held by this process, by resolved lock path (for re-entrant acquisition)."""


class OutputLocked(InvalidInput):
    """Another process is writing this output; the message names it."""


HOLDER_WAIT_S = 2.0
"""How long a refused writer waits for the lock's holder to write its name (pid, host, command)
into the lock file, so the error can say who holds it; the holder writes it right after locking."""


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of an output: ``<out>.lock`` beside it."""
    out = Path(out)
    return out.with_name(out.name + ".lock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # it exists, owned by someone else
        return True
    return True


def _describe(holder: dict) -> str:
    if not holder:
        return "another process (it has not written its name into the lock file yet)"
    return (f"{holder.get('command', 'a process')} (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')})")


class OutputLock:
    """An exclusive, re-entrant (per process) lock on one output; use as a context manager."""

    def __init__(self, out: str | os.PathLike, command: str = "score") -> None:
        self.out = Path(out)
        self.path = lock_path(out)
        self.command = command
        self._fd: int | None = None
        self._depth = 0
        self._key = str(self.path.resolve())
        self.previous_holder: dict | None = None
        """The holder recorded in a stale lock file this lock took over, else None."""

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "OutputLock":
        """Take the lock or raise :class:`OutputLocked` naming the holder (:class:`InvalidInput` when the
        lock file cannot be created: the output's folder is not writable)."""
        held = _HELD.get(self._key)
        if held is not None and held._fd is not None:
            held._depth += 1
            self._fd, self._depth = None, 0
            self._shared = held
            return self
        self._shared = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidInput(f"Cannot create the folder of --out {self.out}: {exc.strerror or exc}. "
                               "Choose a writable location.") from None
        for _ in range(20):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            except OSError as exc:
                raise InvalidInput(f"Cannot write next to --out {self.out} (lock file {self.path}: "
                                   f"{exc.strerror or exc}). Choose a writable location.") from None
            try:
                locked = self._try_lock(fd)
                if locked and os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    raise FileNotFoundError   # released (and removed) between our open and lock: start again
            except FileNotFoundError:
                os.close(fd)
                continue
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                holder = _read(fd)
                deadline = time.monotonic() + HOLDER_WAIT_S
                while not holder and time.monotonic() < deadline:   # the holder writes its name right after
                    time.sleep(0.02)                                  # locking; wait for it, to name it
                    holder = _read(fd)
                os.close(fd)
                raise OutputLocked(f"--out {self.out} is being written by {_describe(holder)}; lock file "
                                   f"{self.path}. Wait for it to finish, or choose another --out.")
            previous = _read(fd)
            if previous and previous.get("pid") != os.getpid():
                self.previous_holder = previous
                log.warning("Taking over the stale lock on %s: %s is no longer running.", self.out,
                            _describe(previous))
            record = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                      "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "argv": sys.argv[1:][:20]}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
            self._fd, self._depth = fd, 1
            _HELD[self._key] = self
            return self
        raise InvalidInput(f"Cannot take the lock {self.path}: it keeps being replaced by other processes.")

    def _try_lock(self, fd: int) -> bool:
        """True when the lock was taken, False when another process holds it."""
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                return False
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        # No lock support on this filesystem: judge by the recorded holder.
        holder = _read(fd)
        if not holder or holder.get("pid") == os.getpid():
            return True
        if holder.get("host") == socket.gethostname():
            return not _pid_alive(int(holder.get("pid", 0)))
        return False

    def release(self) -> None:
        """Drop the lock (the outermost release removes the lock file). Safe to call twice."""
        if self._shared is not None:
            self._shared._depth -= 1
            self._shared = None
            return
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self._fd)   # drops the lock
        self._fd = None
        _HELD.pop(self._key, None)


def _read(fd: int) -> dict:
    """The holder recorded in an open lock file ({} when empty or unreadable)."""
    try:
        data = os.pread(fd, 4096, 0)
        return json.loads(data.decode()) if data.strip() else {}
    except (OSError, ValueError):
        return {}


def lock_collectively(out: str | os.PathLike, ctx, command: str = "score") -> "OutputLock | None":
    """Rank 0 takes the lock of ``out``; every rank raises the same error when it is held (a
    collective under ``torch.distributed``: all ranks call it). Returns the held lock on rank 0,
    ``None`` elsewhere."""
    from rose_core.errors import RoseError

    lock, err = None, None
    if ctx.is_main:
        try:
            lock = OutputLock(out, command=command).acquire()
        except RoseError as exc:
            err = exc
    ctx.agree(err)
    return lock
