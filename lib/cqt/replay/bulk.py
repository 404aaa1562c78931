"""A replay into a database file that does not exist yet: built aside, then put in place.

A new file is built as `.NAME.tmp-<pid>` beside NAME with a rollback journal and
`synchronous=OFF` instead of WAL: a bulk load into WAL writes every page twice (into the WAL,
then into the database at each checkpoint) and the checkpoints cost about a tenth of the
replay. Without syncs a crash can leave that file damaged — which is harmless, because
nothing uses it before the end: then it is switched to WAL (the mode every cqt connection
uses), synced, linked to NAME (which fails, leaving NAME alone, if NAME appeared meanwhile),
and the directory synced. A replay that fails removes the file; one that was killed leaves
it, and the next replay to the same NAME removes it.

Into an existing database the replay writes in place, in WAL, like every other writer.
"""
from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from ..db import BUSY_TIMEOUT_MS, open_db
from ..outputs import fsync_dir, pid_alive, temp_path

SIDE_SUFFIXES = ("-journal", "-wal", "-shm")


class TargetAppeared(Exception):
    """The database file was created by someone else while the replay built it aside."""


def is_new(db: Path) -> bool:
    """No database file and no side file of one at `db`."""
    return not any(Path(str(db) + s).exists() for s in ("",) + SIDE_SUFFIXES)


def build_path(db: Path) -> Path:
    return temp_path(db)


def create(tmp: Path) -> None:
    """The schema in a new file at `tmp`, left in rollback-journal mode for the load."""
    remove(tmp)
    conn = open_db(tmp)
    try:
        conn.execute("PRAGMA journal_mode=DELETE").fetchall()
    finally:
        conn.close()


def connect(tmp: Path) -> sqlite3.Connection:
    """A writer connection to the file being built: rollback journal, no syncs (see above),
    the same busy timeout and foreign-key rule as every cqt connection."""
    conn = sqlite3.connect(str(tmp), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def finish(tmp: Path, db: Path) -> None:
    """WAL mode, synced, in place at `db` (never over a file that appeared meanwhile:
    TargetAppeared, and `tmp` is removed)."""
    conn = sqlite3.connect(str(tmp), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        conn.close()                 # the last connection: the WAL is checkpointed and removed
    fd = os.open(str(tmp), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, db)             # unlike rename, never replaces an existing file
    except FileExistsError:
        remove(tmp)
        raise TargetAppeared(f"{db} was created by another program during the replay; "
                             "the replay's copy was discarded") from None
    except OSError:                  # a file system without hard links: rename, checked just before
        if not is_new(db):
            remove(tmp)
            raise TargetAppeared(f"{db} was created by another program during the replay; "
                                 "the replay's copy was discarded") from None
        os.replace(tmp, db)
    remove(tmp)
    fsync_dir(db.parent)


def remove(tmp: Path) -> None:
    for suffix in ("",) + SIDE_SUFFIXES:
        try:
            os.unlink(str(tmp) + suffix)
        except FileNotFoundError:
            pass


def remove_stale(db: Path) -> None:
    """Files a killed replay to `db` left behind (their process is gone)."""
    prefix = f".{db.name}.tmp-"
    try:
        names = os.listdir(db.parent)
    except OSError:
        return
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):]
        for suffix in SIDE_SUFFIXES:
            pid_text = pid_text.removesuffix(suffix)
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or pid_alive(int(pid_text)):
            continue
        try:
            os.unlink(db.parent / name)
        except OSError:
            pass
