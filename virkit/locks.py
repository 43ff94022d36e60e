"""The writer lock: one process at a time writes a run directory or an eval.json.

:class:`WriterLock` is an exclusive ``flock`` on a lock file, held for the holder's whole life and
re-entrant within one process (the trainer's final evaluation runs under the trainer's lock). A
second writer is refused with one line naming what is locked and the holder's PID, host, command and
start time, which the holder writes into the lock file (:class:`RunLockedError`, exit code 2). The
kernel drops a ``flock`` when its process dies, however it dies, so a lock left by a killed process
is simply taken over (with a note naming the dead PID). :meth:`virkit.runs.RunDir.lock` and
:func:`virkit.runs.eval_lock` say which file locks what. See docs/RELIABILITY.md for shared network
storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from virkit.errors import VirkitError

__all__ = ["WriterLock", "RunLockedError", "describe_holder"]


class RunLockedError(VirkitError):
    """Another live process writes this run (or this eval.json)."""


_HELD: dict[str, WriterLock] = {}  # re-entrancy within one process, keyed by the lock file's path
_HELD_GUARD = threading.Lock()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _read_holder(path: Path) -> dict:
    try:
        d = json.loads(path.read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def describe_holder(h: dict) -> str:
    """The holder of a lock as the refusal names it: PID, host (when another), command and start."""
    if not h:
        return "another process"
    where = f" on {h['host']}" if h.get("host") and h.get("host") != socket.gethostname() else ""
    what = f" ({h['command']}, since {h['started']})" if h.get("command") else ""
    return f"PID {h.get('pid', '?')}{where}{what}"


class WriterLock:
    """An exclusive, process-lifetime lock on ``lock_path`` (``flock``), re-entrant in one process.

    ``acquire(wait=False)`` raises :class:`RunLockedError` naming ``what`` and the holder's PID when
    another process holds it; ``wait=True`` blocks until it is free (notebooks sharing a run).
    """

    def __init__(self, lock_path: str | os.PathLike, what: str, command: str = "virkit"):
        self.path = Path(lock_path)
        self.what = what
        self.command = command
        self._fd: int | None = None
        self._depth = 0
        self.took_over: dict | None = None

    def _key(self) -> str:
        return str(self.path.resolve())

    def acquire(self, wait: bool = False, note: Callable[[str], None] | None = None) -> WriterLock:
        with _HELD_GUARD:
            held = _HELD.get(self._key())
            if held is not None:
                held._depth += 1
                return held
        import fcntl

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise VirkitError(f"cannot create {self.path.parent}: {e.strerror}; choose a writable --out") from None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                holder = _read_holder(self.path)
                raise RunLockedError(
                    f"{self.what} is being written by {describe_holder(holder)}; wait for it to "
                    "finish, stop it, or choose another --out"
                ) from None
            except OSError as e:  # e.g. ENOLCK on storage without locks
                os.close(fd)
                raise VirkitError(
                    f"cannot lock {self.path}: {e.strerror}; this file system does not support "
                    "flock (see docs/RELIABILITY.md), use a local --out"
                ) from None
            # the file may have been unlinked by the previous holder between open and flock: retry
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(self.path)
        if (
            previous.get("pid")
            and previous.get("pid") != os.getpid()
            and (previous.get("host") in (None, socket.gethostname()))
        ):
            self.took_over = previous
            if note is not None:
                state = "no longer running" if not _pid_alive(int(previous["pid"])) else "its lock was released"
                note(f"took over the lock of {self.what} left by PID {previous['pid']} ({state})")
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": self.command,
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        self._fd, self._depth = fd, 1
        with _HELD_GUARD:
            _HELD[self._key()] = self
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        with _HELD_GUARD:
            _HELD.pop(self._key(), None)
        import fcntl

        with contextlib.suppress(OSError):
            self.path.unlink()  # before unlocking: a waiter re-checks the inode (see acquire)
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> WriterLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def held_by_other(lock_path: str | os.PathLike) -> dict | None:
        """The holder's record when a live process other than this one holds the lock, else None."""
        p = Path(lock_path)
        if not p.is_file():
            return None
        with _HELD_GUARD:
            if str(p.resolve()) in _HELD:
                return None
        import fcntl

        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(p) or {"pid": "?"}
        except OSError:
            return None
        finally:
            os.close(fd)
        return None
