"""The batched writer: rows from any thread, committed by one thread in short transactions."""
from __future__ import annotations

import functools
import logging
import os
import queue
import random
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from .db import checkpoint, connect, is_busy, is_fatal_io, open_db
from .redact import redact

log = logging.getLogger("cqt.db")    # the database layer's log name, as operators filter on it

#: rows queued and not committed yet before a producer waits: at a busy collector's rate
#: a few tenths of a second of rows, some tens of MB of tuples.
MAX_QUEUED_ROWS = 10_000


class BatchWriter:
    """Queue rows from any thread; one thread commits them in short transactions.

    Items commit in queue order, `max_rows` rows or `max_delay_s` seconds per
    transaction, whichever first. SQLITE_BUSY is retried forever with bounded,
    jittered backoff (a warning every 30 s), so "database is locked" never escapes.
    Disk full / I/O errors are logged once; `fatal` is set, writes stop, `on_fatal(exc)` is called.

    Any other error while storing an item (a bad statement, a constraint, a parameter SQLite
    cannot bind such as an int beyond 64 bits) drops only that item: the rest of its batch is
    committed, the dropped item is logged (secrets masked) and counted in `dropped_rows`,
    `failure` is set and `on_fatal(exc)` called, so the service stops and is restarted
    instead of running on without storing. Writes continue meanwhile, so the rows queued
    behind it and the service's final records still commit. If the writer thread itself
    fails, `fatal` is set too: `alive()` then says so and the watchdog stops.
    """

    MAX_DROP_REPORTS = 10

    def __init__(self, path: str | os.PathLike, *, service: str = "cqt", max_rows: int = 1000,
                 max_delay_s: float = 0.2, queue_max: int = 200_000,
                 on_fatal: Callable[[BaseException], None] | None = None,
                 migrate_schema: bool = True, checkpoint_every_s: float = 30.0,
                 secrets: Iterable[str] = (), clock: Callable[[], float] = time.monotonic,
                 wal_autocheckpoint: int | None = None,
                 opener: Callable[[Path], sqlite3.Connection] | None = None,
                 max_queued_rows: int | None = MAX_QUEUED_ROWS):
        self.path = Path(path)
        self.secrets = tuple(secrets)
        self.clock = clock
        self.service = service
        self.max_rows = max_rows
        # a transaction never waits for more rows than a blocked producer can add
        self._batch_rows = max_rows if max_queued_rows is None else max(1, min(max_rows, max_queued_rows // 2))
        self.max_delay_s = max_delay_s
        self.on_fatal = on_fatal
        self.checkpoint_every_s = checkpoint_every_s
        self._q: queue.Queue = queue.Queue(maxsize=queue_max)
        if opener is not None:       # a connection the caller configures (the replay's bulk load)
            self._conn = opener(self.path)
        else:
            self._conn = open_db(self.path) if migrate_schema else connect(self.path)
        if wal_autocheckpoint is not None:
            # WAL pages between this connection's automatic checkpoints (SQLite: 1000). A bulk
            # load sets more: each checkpoint syncs the WAL and the database file, and at a
            # few thousand rows per commit the syncs, not the inserts, set the pace.
            self._conn.execute(f"PRAGMA wal_autocheckpoint={int(wal_autocheckpoint)}")
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)     # notified as committed rows leave the queue
        self.max_queued_rows = max_queued_rows
        self._queued_rows = 0
        self._committed_rows = 0
        self._commits = 0
        self._flush_waiters: list[tuple[int, threading.Event]] = []
        self._seq_put = 0       # items accepted
        self._seq_done = 0      # items committed
        self._latencies: deque[float] = deque(maxlen=20_000)
        self._oldest_enqueued: float | None = None
        self.fatal: BaseException | None = None     # storage failed: writes stopped
        self.failure: BaseException | None = None   # an item could not be stored: service must stop
        self.dropped_rows = 0
        self._drop_reports = 0
        self._progress_at = clock()                 # last commit, or last moment with nothing to do
        self._full_warned = 0.0
        self._thread = threading.Thread(target=self._run, name=f"writer:{service}", daemon=True)
        self._thread.start()

    # -- producers -----------------------------------------------------------------
    def _enqueue(self, item: tuple, nrows: int, block: bool = True) -> None:
        if self.fatal is not None:
            raise RuntimeError(f"writer stopped: {self.fatal}")
        limit = self.max_queued_rows
        if block and limit is not None and self._queued_rows + nrows > limit:
            self._wait_for_room(limit, nrows)
            if self.fatal is not None:
                raise RuntimeError(f"writer stopped: {self.fatal}")
        try:
            self._q.put(item, block=False)
        except queue.Full:
            self._warn_full(f"queue_max={self._q.maxsize}")
            self._q.put(item, block=block)
        with self._lock:
            if self._seq_done >= self._seq_put:
                self._progress_at = self.clock()   # idle until now: a stall counts from here
            self._seq_put += 1
            self._queued_rows += nrows

    def _wait_for_room(self, limit: int, nrows: int) -> None:
        """Block the producer until the queue holds at most `limit` rows with these (or is
        empty): a receiver faster than the database waits here, so memory stays bounded
        and the socket, not the heap, holds what is not stored yet."""
        while True:
            with self._room:
                if not (self._queued_rows and self._queued_rows + nrows > limit and self.fatal is None):
                    return
                if self._room.wait(timeout=1.0):
                    continue
            self._warn_full(f"max_queued_rows={limit}")     # outside the lock: logging may queue a row

    def _warn_full(self, bound: str) -> None:
        t = time.monotonic()
        if t - self._full_warned > 10:
            self._full_warned = t
            log.error("WRITE QUEUE FULL: database writes are falling behind; receiving will block "
                      "%s service=%s", bound, self.service)

    def put(self, sql: str, params: Sequence[Any], block: bool = True) -> bool:
        """Queue one row. With block=False a full queue drops it (returns False): for
        log events, which the writer thread itself may emit and must never wait on."""
        try:
            self._enqueue(("rows", sql, [tuple(params)], time.monotonic(), 1), 1, block=block)
            return True
        except queue.Full:
            return False

    def put_many(self, sql: str, rows: list[tuple], nrows: int | None = None) -> None:
        """Queue one statement over many parameter tuples. `nrows` is the number of table
        rows they stand for when each tuple packs several rows (multi-row VALUES)."""
        if rows:
            self._enqueue(("rows", sql, rows, time.monotonic(), len(rows) if nrows is None else nrows),
                          len(rows) if nrows is None else nrows)

    def call(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        self._enqueue(("call", fn, None, time.monotonic(), 1), 1)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything queued before this call is committed."""
        if not self._thread.is_alive():
            return self._seq_done >= self._seq_put
        with self._lock:
            target = self._seq_put
            if self._seq_done >= target:
                return True
            ev = threading.Event()
            self._flush_waiters.append((target, ev))
        try:
            self._q.put_nowait(("flush", None, None, time.monotonic(), 0))
        except queue.Full:
            pass
        return ev.wait(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        ok = self.flush(timeout)
        try:
            self._q.put(("stop", None, None, 0.0, 0), timeout=1)
        except queue.Full:
            pass
        self._thread.join(timeout=max(0.1, timeout))
        try:
            self._conn.close()
        except sqlite3.Error:
            pass
        return ok

    def stats(self) -> dict[str, Any]:
        lat = sorted(self._latencies)
        oldest = self._oldest_enqueued

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else None

        return {
            "queue_depth": self._q.qsize(),
            "oldest_age_ms": int((time.monotonic() - oldest) * 1000) if oldest is not None else 0,
            "queued_rows": self._queued_rows,
            "committed_rows": self._committed_rows,
            "commits": self._commits,
            "commit_latency_ms_p50": pct(0.50),
            "commit_latency_ms_p99": pct(0.99),
            "fatal": str(self.fatal) if self.fatal else None,
            "dropped_rows": self.dropped_rows,
            "failure": f"{type(self.failure).__name__}: {self.failure}" if self.failure else None,
        }

    def pending(self) -> bool:
        """Items accepted but not yet committed (or dropped)."""
        return self._seq_done < self._seq_put

    def progress_age_s(self) -> float:
        """Seconds since the writer last committed or had nothing to do."""
        return 0.0 if not self.pending() else max(0.0, self.clock() - self._progress_at)

    def healthy(self, stall_s: float) -> tuple[bool, str]:
        """(True, "") while the thread runs, storage works and the queue moves; else why not."""
        if self.fatal is not None:
            return False, f"database writes stopped: {type(self.fatal).__name__}: {self.fatal}"
        if not self._thread.is_alive():
            return False, "writer thread is not running"
        age = self.progress_age_s()
        if age > stall_s:
            return False, f"writer made no progress for {age:.0f} s queue_depth={self._q.qsize()}"
        return True, ""

    # -- writer thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # noqa: BLE001 - a dead writer must never be silent
            self.fatal = self.fatal or exc
            log.error("database writer failed, stopping writes: %s: %s (db=%s)", type(exc).__name__,
                      redact(str(exc), self.secrets, limit=500), self.path)
            self._release_all()
            self._notify(exc)

    def _loop(self) -> None:
        last_ckpt = time.monotonic()
        stop = False
        while not stop:
            try:
                first = self._q.get(timeout=0.5)
            except queue.Empty:
                first = None
                self._progress_at = self.clock()
            batch: list[tuple] = []
            nrows = 0
            if first is not None:
                if first[0] == "stop":
                    stop = True
                else:
                    batch.append(first)
                    nrows += first[4] if first[0] == "rows" else 0
                    self._oldest_enqueued = first[3]
                    deadline = time.monotonic() + self.max_delay_s
                    while nrows < self._batch_rows:
                        remaining = deadline - time.monotonic()
                        try:
                            item = self._q.get(timeout=remaining) if remaining > 0 else self._q.get_nowait()
                        except queue.Empty:
                            break
                        if item[0] == "stop":
                            stop = True
                            break
                        batch.append(item)
                        if item[0] == "rows":
                            nrows += item[4]
                        if item[0] == "flush":
                            break
            if batch and self.fatal is None:
                self._commit(batch, nrows)
            elif batch:
                self._done(batch, nrows, committed=False)  # fatal: release flush waiters
            self._oldest_enqueued = None
            if self.fatal is None and time.monotonic() - last_ckpt > self.checkpoint_every_s:
                last_ckpt = time.monotonic()
                try:
                    checkpoint(self._conn, self.path)
                except sqlite3.Error as exc:
                    if not is_busy(exc):
                        log.warning("wal checkpoint failed: %s", exc)

    def _notify(self, exc: BaseException) -> None:
        if self.on_fatal:
            try:
                self.on_fatal(exc)
            except Exception:  # noqa: BLE001 - the callback must not kill the writer thread
                log.exception("on_fatal callback failed")

    def _storage_failed(self, exc: BaseException, batch: list[tuple], nrows: int) -> None:
        self.fatal = exc
        log.error("database write failed, stopping writes: %s (db=%s)", exc, self.path)
        self._done(batch, nrows, committed=False)
        self._notify(exc)

    def _transaction(self, body: Callable[[], Any]) -> Any:
        """BEGIN IMMEDIATE; body(); COMMIT — rolled back on any error. SQLITE_BUSY is retried
        forever (with a warning every 30 s once it lasts); other errors propagate."""
        attempt = 0
        first_busy = None
        last_warn = 0.0
        while True:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    out = body()
                    self._conn.execute("COMMIT")
                    return out
                except BaseException:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    raise
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise
                attempt += 1
                t = time.monotonic()
                first_busy = first_busy or t
                if t - last_warn > 30 and t - first_busy > 5:
                    last_warn = t
                    log.warning("database busy, still retrying waited_s=%.0f attempts=%d", t - first_busy, attempt)
                time.sleep(random.uniform(0, min(1.0, 0.01 * 2 ** min(attempt, 7))))

    def _execute(self, item: tuple) -> None:
        kind, a, b = item[0], item[1], item[2]
        if kind == "rows":
            if len(b) == 1:
                self._conn.execute(a, b[0])
            else:
                self._conn.executemany(a, b)
        elif kind == "call":
            a(self._conn)

    def _commit(self, batch: list[tuple], nrows: int) -> None:
        def all_items() -> None:
            for item in batch:
                self._execute(item)

        try:
            self._transaction(all_items)
        except Exception as exc:  # noqa: BLE001 - sorted below: storage, or one bad item
            if is_fatal_io(exc):
                self._storage_failed(exc, batch, nrows)
                return
            # Something in the batch cannot be stored: commit the rest, item by item.
            try:
                dropped = self._transaction(lambda: self._commit_isolating(batch))
            except Exception as exc2:  # noqa: BLE001
                if is_fatal_io(exc2):
                    self._storage_failed(exc2, batch, nrows)
                    return
                dropped = [(batch_item, None, exc2) for batch_item in batch]
            self._report_dropped(dropped)
            lost = sum(_rows_of(item, rows) for item, rows, _ in dropped)
            self._finish_batch(batch, nrows - lost)
            with self._lock:
                self._queued_rows -= lost
                self._room.notify_all()
            return
        self._finish_batch(batch, nrows)

    def _finish_batch(self, batch: list[tuple], nrows: int) -> None:
        now = time.monotonic()
        for item in batch:
            self._latencies.append(now - item[3])
        self._progress_at = self.clock()
        self._done(batch, nrows)

    def _commit_isolating(self, batch: list[tuple]) -> list[tuple[tuple, list | None, BaseException]]:
        """Inside one transaction: each item under a savepoint, a failing multi-row item row by
        row. Returns what was dropped: (item, the failing parameter rows or None = all, error)."""
        dropped: list[tuple[tuple, list | None, BaseException]] = []

        def attempt(fn: Callable[[], None]) -> BaseException | None:
            self._conn.execute("SAVEPOINT item")
            try:
                fn()
            except Exception as exc:  # noqa: BLE001
                if is_fatal_io(exc):
                    raise
                self._conn.execute("ROLLBACK TO item")
                self._conn.execute("RELEASE item")
                return exc
            self._conn.execute("RELEASE item")
            return None

        for item in batch:
            err = attempt(functools.partial(self._execute, item))
            if err is None:
                continue
            if item[0] == "rows" and len(item[2]) > 1:
                bad = []
                for params in item[2]:
                    row_err = attempt(functools.partial(self._conn.execute, item[1], params))
                    if row_err is not None:
                        bad.append(params)
                        err = row_err
                dropped.append((item, bad, err))
            else:
                dropped.append((item, None, err))
        return dropped

    def _report_dropped(self, dropped: list[tuple[tuple, list | None, BaseException]]) -> None:
        for item, rows, exc in dropped:
            n = _rows_of(item, rows)
            self.dropped_rows += n
            self._drop_reports += 1
            if self._drop_reports > self.MAX_DROP_REPORTS:
                continue   # the first ones say why; `dropped_rows` keeps the count
            what = item[1] if item[0] == "rows" else getattr(item[1], "__qualname__", "call")
            params = ("" if item[0] != "rows"
                      else " params=" + redact(repr((rows or item[2])[0]), self.secrets, limit=300))
            log.error("cannot store %d row(s), dropped: %s: %s sql=%s%s", n, type(exc).__name__,
                      redact(str(exc), self.secrets, limit=300), " ".join(str(what).split())[:120], params)
        if dropped and self.failure is None:
            self.failure = dropped[0][2]
            self._notify(self.failure)

    def _release_all(self) -> None:
        with self._lock:
            self._room.notify_all()
            waiters, self._flush_waiters = self._flush_waiters, []
        for _target, ev in waiters:
            ev.set()

    def _done(self, batch: list[tuple], nrows: int, committed: bool = True) -> None:
        with self._lock:
            self._seq_done += sum(1 for item in batch if item[0] != "flush")
            if committed:
                self._committed_rows += nrows
                self._commits += 1
            self._queued_rows -= nrows
            self._room.notify_all()
            waiters, self._flush_waiters = self._flush_waiters, []
            for target, ev in waiters:
                if self._seq_done >= target or self.fatal is not None:
                    ev.set()
                else:
                    self._flush_waiters.append((target, ev))


def _rows_of(item: tuple, rows: list | None) -> int:
    """Table rows a dropped item (or the given parameter rows of it) stood for."""
    if item[0] != "rows":
        return 1 if rows is None else 0
    if rows is None:
        return item[4]
    per_tuple = item[4] / max(1, len(item[2]))
    return round(per_tuple * len(rows))
