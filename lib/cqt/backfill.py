"""Gap bookkeeping and the REST backfill worker: venue-agnostic.

* `GapBook` writes `gaps` rows through the Service's writer, in queue order: a gap is
  committed no later than the rows and resume position that follow it, so after a
  `kill -9` every gap the stored resume position skipped over is in the table, still
  `open`, and is backfilled again at the next start.
* `Backfiller` is one worker thread per collector running jobs one after another; a job
  is a venue's filler (`fn(gap)`: `cqt.venues.binance.backfill.AggTradeFill`,
  `cqt.venues.upbit.backfill.UpbitTradeFill` / `UpbitReconcile`).
* `FillBase` and `Pager` are what fillers share: REST page fetching with failure
  accounting. Each page's rows are inserted with a count of the rows actually new
  (`GapBook.insert_counted`, INSERT OR IGNORE), and the gap row is closed as `filled`,
  `partial` or `unfillable` with that count.

REST errors never end a job at once: the `RestClient` waits out 429/418/5xx with its
rate-limit state; a job gives up (`GiveUp`) after `MAX_FAILURES` consecutive failures or
a 4xx answer that will not change (bad symbol), and its gap row says so; `Stopped` ends a
job at shutdown and leaves its gap open for the next start.
"""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

from .stream import Gap
from .timeutil import now_ms

log = logging.getLogger("cqt.backfill")

MAX_FAILURES = 8

#: symbol = the venue symbol of the stream (`Gap.symbol`: the part before '@'), last
GAP_INSERT = ("INSERT INTO gaps (source, stream, detected_ts_ms, from_id, to_id, from_ts_ms, to_ts_ms, "
              "filled_ts_ms, filled_rows, status, reason, symbol) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
GAP_UPDATE = ("UPDATE gaps SET from_id = ?, to_id = ?, from_ts_ms = ?, to_ts_ms = ?, filled_ts_ms = ?, "
              "filled_rows = ?, status = ?, reason = ? WHERE id = ?")


class GapBook:
    """`gaps` rows, written through the writer so they keep queue order with the data."""

    def __init__(self, writer: Any):
        self.writer = writer

    def open(self, gap: Gap, status: str = "open") -> None:
        filled_ts = gap.detected_ts_ms if status != "open" else None

        def insert(conn) -> None:
            cur = conn.execute(GAP_INSERT, (gap.source, gap.stream, gap.detected_ts_ms, gap.from_id, gap.to_id,
                                            gap.from_ts_ms, gap.to_ts_ms, filled_ts, 0 if status != "open" else None,
                                            status, gap.reason, gap.symbol))
            gap.row_id = cur.lastrowid
        self.writer.call(insert)

    def close(self, gap: Gap, status: str, reason: str | None = None) -> None:
        """Close the row; `reason` (why it could not be filled) is added to its reason."""
        def update(conn) -> None:
            if gap.row_id is None:
                return
            conn.execute(GAP_UPDATE, (gap.from_id, gap.to_id, gap.from_ts_ms, gap.to_ts_ms, now_ms(),
                                      gap.filled_rows, status, f"{gap.reason}; {reason}" if reason else gap.reason,
                                      gap.row_id))
        self.writer.call(update)

    def insert_counted(self, sql: str, rows: list, gap: Gap) -> None:
        """Insert rows; add the number actually new to gap.filled_rows (in the writer thread)."""
        def run(conn) -> None:
            before = conn.total_changes
            conn.executemany(sql, rows)
            gap.filled_rows += conn.total_changes - before
        self.writer.call(run)

    @staticmethod
    def load_open(conn, source: str) -> list[Gap]:
        rows = conn.execute(
            "SELECT id, stream, reason, detected_ts_ms, from_id, to_id, from_ts_ms, to_ts_ms, filled_rows "
            "FROM gaps WHERE source = ? AND status = 'open' ORDER BY id", (source,)).fetchall()
        out = []
        for rid, stream, reason, det, fi, ti, fts, tts, filled in rows:
            g = Gap(source, stream, reason or "restart", det, fi, ti, fts, tts, row_id=rid)
            g.filled_rows = filled or 0
            out.append(g)
        return out


class Backfiller:
    """One worker thread running backfill jobs in order. `submit(fn, gap)`; fn(gap) runs it."""

    def __init__(self, svc: Any, name: str = "backfill"):
        self.svc = svc
        self.name = name
        self.q: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.stop_event = threading.Event()
        self.pending = 0
        self.done = 0
        self.failed = 0
        self.current: str | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self.stop_event.set()
        self.thread.join(timeout)

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set() or self.svc.stopping.is_set()

    def submit(self, fn: Callable[[Gap], None], gap: Gap) -> None:
        with self._lock:
            self.pending += 1
        self.q.put((fn, gap))

    def _run(self) -> None:
        while not self.stopping:
            try:
                fn, gap = self.q.get(timeout=0.25)
            except queue.Empty:
                continue
            self.current = gap.stream
            try:
                fn(gap)
                self.done += 1
            except Exception as exc:  # noqa: BLE001 - a job bug must not end the worker; the gap stays open
                self.failed += 1
                log.error("backfill job failed stream=%s: %s", gap.stream, exc, exc_info=True)
            finally:
                self.current = None
                with self._lock:
                    self.pending -= 1

    def snapshot(self) -> dict:
        return {"pending": self.pending, "done": self.done, "failed": self.failed, "current": self.current}


class Pager:
    """Shared REST page fetching with failure accounting for one job."""

    def __init__(self, owner: "FillBase", gap: Gap):
        self.owner = owner
        self.gap = gap
        self.failures = 0

    def get(self, path: str, params: dict):
        """The response when usable; None to retry; raises GiveUp when the job must stop."""
        o = self.owner
        if o.stopping():
            raise Stopped()
        r = o.rest.get(path, params)
        o.svc.count(o.rest.name, frames=1, symbol=self.gap.symbol or "")
        if r.ok:
            return r
        if r.error == "stopped":
            raise Stopped()
        self.failures += 1
        o.last_error = r.error or f"http {r.status}"
        if r.status is not None and 400 <= r.status < 500 and r.status not in (408, 418, 429):
            raise GiveUp(f"{path} answered {r.status}: {r.text[:120]}", status=r.status, text=r.text or "")
        if self.failures >= MAX_FAILURES:
            raise GiveUp(f"{path}: {self.failures} failures in a row, last: {o.last_error}")
        return None


class GiveUp(Exception):
    """The job cannot go on (a 4xx that will not change, too many failures in a row);
    `status`/`text`: the refusing answer, when there was one (a venue reads its code)."""

    def __init__(self, message: str, status: int | None = None, text: str = ""):
        super().__init__(message)
        self.status = status
        self.text = text


class Stopped(Exception):
    """The collector is stopping: the gap stays open; the next start resumes it."""


class FillBase:
    """What a venue's filler shares: service, REST client, gap book, counters."""

    def __init__(self, svc: Any, rest: Any, gaps: GapBook):
        self.svc = svc
        self.rest = rest
        self.gaps = gaps
        self.rows_new = 0          # rows handed to the writer (new or not)
        self.jobs = 0
        self.last_error: str | None = None
        self.stop_event: threading.Event | None = None

    def stopping(self) -> bool:
        return self.svc.stopping.is_set() or (self.stop_event is not None and self.stop_event.is_set())

    def snapshot(self) -> dict:
        return {"jobs": self.jobs, "rows_fetched": self.rows_new, "last_error": self.last_error}
