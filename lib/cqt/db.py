"""SQLite layer: connections (WAL, busy_timeout), migrations by PRAGMA user_version, bounded reads.

One database file in WAL mode is the only meeting point of all cqt processes.
Writers keep transactions short (BEGIN IMMEDIATE, commit every ~200 ms or 1 000
rows: `cqt.writer`); readers use read-only connections and never hold a read transaction
for long, because an open reader stops WAL checkpoints from truncating the log.
"""
from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
BUSY_TIMEOUT_MS = 10_000
WAL_LIMIT_BYTES = 64 * 1024 * 1024


class SchemaTooNew(Exception):
    """The database was written by a newer cqt: refuse to touch it."""


class DatabaseMissing(Exception):
    pass


# ------------------------------------------------------------------------------ connect
def connect(path: str | os.PathLike, readonly: bool = False,
            timeout_s: float = BUSY_TIMEOUT_MS / 1000) -> sqlite3.Connection:
    """Open the database. Writers get WAL + synchronous=NORMAL; readers `mode=ro`.

    Connections are in autocommit mode (isolation_level=None): transactions are
    explicit, so nobody holds one by accident.
    """
    path = Path(path)
    if readonly:
        if not path.exists():
            raise DatabaseMissing(f"database not found: {path}")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout_s,
                               isolation_level=None, check_same_thread=False)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
        # Switching a new file to WAL needs an exclusive lock, and SQLite answers "locked" at once
        # (no busy wait: it would deadlock) while another process is creating the schema, which is
        # how every service starts on a fresh database: retry for a bounded time.
        retry_busy(lambda: conn.execute("PRAGMA journal_mode=WAL"), timeout_s)
        conn.execute("PRAGMA synchronous=NORMAL")
        # After a checkpoint the WAL file is truncated back to this size.
        conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    conn.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


# ------------------------------------------------------------------------------ migrations
def _migration_files() -> list[tuple[int, Path]]:
    out = []
    for p in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        out.append((int(p.name[:4]), p))
    return out


def latest_version() -> int:
    files = _migration_files()
    return files[-1][0] if files else 0


def _statements(sql: str) -> Iterator[str]:
    buf = ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            stmt = buf.strip()
            buf = ""
            if stmt and not all(ln.strip().startswith("--") or not ln.strip() for ln in stmt.splitlines()):
                yield stmt
    if buf.strip() and not all(ln.strip().startswith("--") or not ln.strip() for ln in buf.splitlines()):
        raise ValueError(f"incomplete SQL statement in migration: {buf[:80]!r}")


def schema_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def check_version(conn: sqlite3.Connection) -> int:
    v = schema_version(conn)
    if v > latest_version():
        raise SchemaTooNew(
            f"database schema version {v} is newer than this cqt knows ({latest_version()}): "
            "upgrade cqt; the database was not touched")
    return v


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations in one transaction; return the resulting version."""
    check_version(conn)
    if schema_version(conn) == latest_version():
        return latest_version()
    if schema_version(conn) == 0 and conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0:
        # Only possible before the first table exists: lets nightly retention give space back.
        conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = check_version(conn)  # re-read under the write lock: another writer may have migrated
        for version, path in _migration_files():
            if version <= current:
                continue
            for stmt in _statements(path.read_text(encoding="utf-8")):
                conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={version}")
            current = version
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return current


def retry_busy(fn: Callable[[], Any], timeout_s: float) -> Any:
    """Run fn, retrying "database is locked" with jittered backoff for up to timeout_s."""
    deadline = time.monotonic() + timeout_s
    attempt = 0
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
            attempt += 1
            time.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** min(attempt, 6))))


def open_db(path: str | os.PathLike) -> sqlite3.Connection:
    """Writer connection with the schema brought up to date."""
    conn = connect(path)
    retry_busy(lambda: migrate(conn), BUSY_TIMEOUT_MS / 1000)
    return conn


def open_readonly(path: str | os.PathLike, require_version: bool = True) -> sqlite3.Connection:
    """Read-only connection for checks/reports. Raises DatabaseMissing or SchemaTooNew."""
    conn = connect(path, readonly=True)
    v = check_version(conn)
    if require_version and v < latest_version():
        conn.close()
        raise SchemaTooNew(f"database schema version {v} is older than {latest_version()}: "
                           "run `bin/cqt db migrate` (or start any cqt service) to migrate it")
    return conn


def read_chunks(conn: sqlite3.Connection, sql: str, params: Sequence[Any] = (),
                chunk: int = 50_000) -> Iterator[list[tuple]]:
    """Fetch a long query in chunks. Each chunk is its own statement (keyset by rowid-less
    LIMIT/OFFSET would be O(n^2)), so callers pass a query ordered by an indexed key and
    continue from the last key: use `iter_keyset` for that. This helper is for bounded reads."""
    cur = conn.execute(sql, params)
    try:
        while True:
            rows = cur.fetchmany(chunk)
            if not rows:
                return
            yield rows
    finally:
        cur.close()


def iter_keyset(conn: sqlite3.Connection, table: str, key: str, columns: str, start: int, end: int,
                where: str = "", params: Sequence[Any] = (), chunk: int = 20_000) -> Iterator[list[tuple]]:
    """Read rows with start <= key <= end in chunks, one short read transaction per chunk,
    so a long export or rebuild never pins the WAL. `columns` must start with `key`."""
    lo = start
    extra = f" AND ({where})" if where else ""
    while lo <= end:
        rows = conn.execute(
            f"SELECT {columns} FROM {table} WHERE {key} >= ? AND {key} <= ?{extra} ORDER BY {key} LIMIT ?",
            (lo, end, *params, chunk)).fetchall()
        if not rows:
            return
        yield rows
        if len(rows) < chunk:
            return
        lo = rows[-1][0] + 1


def wal_size(path: str | os.PathLike) -> int:
    try:
        return os.path.getsize(str(path) + "-wal")
    except OSError:
        return 0


def checkpoint(conn: sqlite3.Connection, path: str | os.PathLike, limit: int = WAL_LIMIT_BYTES) -> None:
    """PASSIVE checkpoint; TRUNCATE when the WAL has grown past `limit`."""
    mode = "TRUNCATE" if wal_size(path) > limit else "PASSIVE"
    conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchall()


# ------------------------------------------------------------------------------ errors
def is_busy(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in msg or "busy" in msg)


def is_fatal_io(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) and (
        "disk is full" in msg or "disk i/o error" in msg or "readonly" in msg or "read-only" in msg
        or "malformed" in msg or "no space" in msg)
