"""One instance per program and database: an flock on `<db>.<program>.lock`."""
from __future__ import annotations

import fcntl
import os
import time


class AlreadyRunning(Exception):
    """Another process holds this program's lock on this database."""


def lock_path(program: str, db: str | os.PathLike) -> str:
    """`<db>.<program>.lock`, next to the database file its path resolves to (so two spellings
    of one path, or a symlink, find the same lock)."""
    real = os.path.realpath(os.fspath(db))
    return f"{real}.{program}.lock"


class InstanceLock:
    """An exclusive flock held for the life of the process; the file holds the owner's pid.
    The kernel drops the lock when the process ends in any way (kill -9 included), so a stale
    file never blocks a start. The file is left in place: removing it would let a third
    process lock a new file while the second still holds the old one."""

    def __init__(self, program: str, db: str | os.PathLike):
        self.program = program
        self.db = os.fspath(db)
        self.path = lock_path(program, db)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._holder_pid()
            os.close(self._fd)
            self._fd = None
            raise AlreadyRunning(
                f"{program} is already running on {self.db} (pid {holder or 'unknown'}; lock {self.path}): "
                "not starting a second instance") from None
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def _holder_pid(self) -> str:
        # The holder writes its pid just after it locks: give it a moment.
        for _ in range(20):
            try:
                text = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                return ""
            if text.isdigit():
                return text
            time.sleep(0.01)
        return ""

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing the only descriptor drops the flock
            self._fd = None
