"""Gap bookkeeping and REST backfill for the WebSocket collectors.

* `GapBook` writes `gaps` rows through the Service's writer, in queue order: a gap is
  committed no later than the rows and resume position that follow it, so after a
  `kill -9` every gap the stored resume position skipped over is in the table, still
  `open`, and is backfilled again at the next start.
* `Backfiller` is one worker thread per collector running jobs one after another:
  - `AggTradeFill` (Binance): `/fapi/v1/aggTrades?fromId=` pages of <= 1000 for exactly
    the missing ids; the first-start job (`to_id` unknown) starts at `startTime` and pages
    until it meets the live stream.
  - `UpbitTradeFill`: `/v1/trades/ticks` newest first with `cursor` (and `days_ago` across
    UTC dates) until past the last stored trade time; inserts are idempotent, so trades
    the live stream also delivered are not duplicated.
  Each page's rows are inserted with a count of the rows actually new (INSERT OR IGNORE),
  and the gap row is closed as `filled`, `partial` or `unfillable` with that count.
* `UpbitReconcile`: while connected, the newest Upbit pages are compared with the stored
  trades every few minutes, so trades the WebSocket skipped (no id sequence shows it) are
  inserted and recorded as a `gaps` row with counts.

REST errors never end a job at once: the `RestClient` waits out 429/418/5xx with its
rate-limit state; a job gives up after `MAX_FAILURES` consecutive failures or a 4xx
answer that will not change (bad symbol), and its gap row says so.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

from ..sources import Reject, insert_sql, parse_agg_trades_rest, parse_upbit_ticks
from ..stream import Gap, StreamState
from ..timeutil import now_ms

log = logging.getLogger("cqt.backfill")

MAX_FAILURES = 8
AGG_PAGE = 1000
UPBIT_PAGE = 500
UPBIT_MAX_DAYS_AGO = 7
HOUR_MS = 3_600_000
SOURCE_UPBIT = "upbit"

GAP_INSERT = ("INSERT INTO gaps (source, stream, detected_ts_ms, from_id, to_id, from_ts_ms, to_ts_ms, "
              "filled_ts_ms, filled_rows, status, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
GAP_UPDATE = ("UPDATE gaps SET from_id = ?, to_id = ?, from_ts_ms = ?, to_ts_ms = ?, filled_ts_ms = ?, "
              "filled_rows = ?, status = ? WHERE id = ?")


class GapBook:
    """`gaps` rows, written through the writer so they keep queue order with the data."""

    def __init__(self, writer: Any):
        self.writer = writer

    def open(self, gap: Gap, status: str = "open") -> None:
        filled_ts = gap.detected_ts_ms if status != "open" else None

        def insert(conn) -> None:
            cur = conn.execute(GAP_INSERT, (gap.source, gap.stream, gap.detected_ts_ms, gap.from_id, gap.to_id,
                                            gap.from_ts_ms, gap.to_ts_ms, filled_ts, 0 if status != "open" else None,
                                            status, gap.reason))
            gap.row_id = cur.lastrowid
        self.writer.call(insert)

    def close(self, gap: Gap, status: str) -> None:
        def update(conn) -> None:
            if gap.row_id is None:
                return
            conn.execute(GAP_UPDATE, (gap.from_id, gap.to_id, gap.from_ts_ms, gap.to_ts_ms, now_ms(),
                                      gap.filled_rows, status, gap.row_id))
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


class _Pager:
    """Shared REST page fetching with failure accounting for one job."""

    def __init__(self, owner: "_FillBase", gap: Gap):
        self.owner = owner
        self.gap = gap
        self.failures = 0

    def get(self, path: str, params: dict):
        """The response when usable; None to retry; raises _GiveUp when the job must stop."""
        o = self.owner
        if o.stopping():
            raise _Stopped()
        r = o.rest.get(path, params)
        o.svc.count(o.rest.name, frames=1)
        if r.ok:
            return r
        if r.error == "stopped":
            raise _Stopped()
        self.failures += 1
        o.last_error = r.error or f"http {r.status}"
        if r.status is not None and 400 <= r.status < 500 and r.status not in (408, 418, 429):
            raise _GiveUp(f"{path} answered {r.status}: {r.text[:120]}")
        if self.failures >= MAX_FAILURES:
            raise _GiveUp(f"{path}: {self.failures} failures in a row, last: {o.last_error}")
        return None


class _GiveUp(Exception):
    pass


class _Stopped(Exception):
    pass


class _FillBase:
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


class AggTradeFill(_FillBase):
    """Binance aggTrades by id (`fromId`), exactly the missing ids."""

    PATH = "/fapi/v1/aggTrades"

    def __init__(self, svc: Any, rest: Any, gaps: GapBook, symbol: str, state: StreamState):
        super().__init__(svc, rest, gaps)
        self.symbol = symbol
        self.state = state
        self.sql = insert_sql("binance_agg_trades")

    def __call__(self, gap: Gap) -> None:
        self.jobs += 1
        pager = _Pager(self, gap)
        t0 = time.monotonic()
        try:
            if gap.from_id is None:
                if not self._locate_start(gap, pager):
                    self.gaps.close(gap, "filled")
                    log.info("backfill stream=%s reason=%s: no trades since %s", gap.stream, gap.reason,
                             gap.from_ts_ms)
                    return
            got = self._fill_ids(gap, pager)
        except _Stopped:
            return                                  # the gap stays open; the next start resumes it
        except _GiveUp as exc:
            got = -1
            log.error("backfill gave up stream=%s ids=%s..%s: %s", gap.stream, gap.from_id, gap.to_id, exc)
        want = gap.n_ids
        if got >= 0 and want is not None and got >= want:
            status = "filled"
        else:
            status = "unfillable" if got <= 0 and not gap.filled_rows else "partial"
            if got >= 0:
                log.error("backfill incomplete stream=%s ids=%s..%s fetched=%d of %s", gap.stream,
                          gap.from_id, gap.to_id, got, want)
        self.gaps.close(gap, status)
        log.info("backfill %s stream=%s reason=%s from_id=%s to_id=%s fetched=%d seconds=%.2f", status,
                 gap.stream, gap.reason, gap.from_id, gap.to_id, max(got, 0), time.monotonic() - t0)

    def _locate_start(self, gap: Gap, pager: _Pager) -> bool:
        """First start: find the first id at/after from_ts_ms (windows of < 1 h, as Binance requires)."""
        t = gap.from_ts_ms if gap.from_ts_ms is not None else now_ms()
        while True:
            now = now_ms()
            end = min(t + HOUR_MS - 1, now)
            r = pager.get(self.PATH, {"symbol": self.symbol, "startTime": t, "endTime": end, "limit": 1})
            if r is None:
                continue
            p = self._parse(r)
            if p is not None and p.rows:
                gap.from_id = p.rows[0][1]
                return True
            if end >= now:
                return False
            t = end + 1

    def _fill_ids(self, gap: Gap, pager: _Pager) -> int:
        """Fetch [from_id, to_id]; to_id None = until the live stream. Returns ids fetched."""
        next_id = gap.from_id
        got = 0
        st = self.state
        while True:
            to = gap.to_id
            if to is None:
                to = self._live_bound(gap, next_id)
                if to is None:
                    return got             # caught up; the live stream continues from here
            if next_id > to:
                return got
            limit = min(AGG_PAGE, to - next_id + 1) if gap.to_id is not None else AGG_PAGE
            r = pager.get(self.PATH, {"symbol": self.symbol, "fromId": next_id, "limit": limit})
            if r is None:
                continue
            p = self._parse(r)
            if p is None:
                pager.failures += 1
                if pager.failures >= MAX_FAILURES:
                    raise _GiveUp("answers do not parse")
                continue
            pager.failures = 0
            rows = [row for row in p.rows if row[1] >= next_id and (gap.to_id is None or row[1] <= gap.to_id)]
            if rows:
                self.gaps.insert_counted(self.sql, rows, gap)
                self.rows_new += len(rows)
                self.svc.count("binance_rest", rows=len(rows))
                got += len(rows)
                next_id = rows[-1][1] + 1
            if not p.rows or (gap.to_id is None and len(p.rows) < limit):
                if gap.to_id is None:
                    # the present reached: hand over to the live stream or learn where it starts
                    with st.lock:
                        if st.first_live_id is None and st.last_id is None:
                            st.last_id = next_id - 1
                            gap.to_id = next_id - 1
                            return got
                    continue
                return got                 # ids the server does not have (yet)
            if not rows:
                nid = max(row[1] for row in p.rows) + 1
                if nid <= next_id:
                    pager.failures += 1
                    if pager.failures >= MAX_FAILURES:
                        raise _GiveUp(f"answers for fromId={next_id} hold only older ids")
                next_id = max(next_id, nid)

    def _live_bound(self, gap: Gap, next_id: int) -> int | None:
        """For an open-ended job: the last id before what the live stream (or a resumed
        position) already covers; None when neither exists yet (keep paging)."""
        st = self.state
        with st.lock:
            if st.first_live_id is not None:
                gap.to_id = max(st.first_live_id - 1, next_id - 1)
            elif st.last_id is not None:
                gap.to_id = max(st.last_id, next_id - 1)
            else:
                return AGG_PAGE + next_id - 1   # page on; the bound is re-read every page
        return gap.to_id

    def _parse(self, r):
        try:
            return parse_agg_trades_rest(r.text, self.symbol, r.recv_ts_ms)
        except Reject as rej:
            self.svc.rejects.record(rej.source, rej.reason, r.text, r.recv_ts_ms)
            self.last_error = rej.reason
            return None


class UpbitTradeFill(_FillBase):
    """Upbit trades by time: newest first until past `gap.from_ts_ms`, deduplicated by sequential_id."""

    PATH = "/v1/trades/ticks"

    def __init__(self, svc: Any, rest: Any, gaps: GapBook):
        super().__init__(svc, rest, gaps)
        self.sql = insert_sql("upbit_trades")

    def __call__(self, gap: Gap) -> None:
        self.jobs += 1
        code = gap.stream.split("@", 1)[0]
        since = gap.from_ts_ms if gap.from_ts_ms is not None else now_ms()
        pager = _Pager(self, gap)
        t0 = time.monotonic()
        try:
            status = self._pages(code, since, gap, pager)
        except _Stopped:
            return
        except _GiveUp as exc:
            status = "partial" if gap.filled_rows else "unfillable"
            log.error("backfill gave up stream=%s since=%s: %s", gap.stream, since, exc)
        self.gaps.close(gap, status)
        log.info("backfill %s stream=%s reason=%s since_ts_ms=%s seconds=%.2f", status, gap.stream,
                 gap.reason, since, time.monotonic() - t0)

    def _pages(self, code: str, since: int, gap: Gap, pager: _Pager) -> str:
        def store(page: list) -> None:
            # the whole page is stored (older rows too): idempotent, and exactly what a
            # replay of the captured answer stores
            self.gaps.insert_counted(self.sql, page, gap)
            self.rows_new += len(page)
            self.svc.count("upbit_rest", rows=len(page))
        if self.walk(code, since, pager, store) == "too_old":
            return "partial" if gap.filled_rows else "unfillable"
        return "filled"

    def walk(self, code: str, since: int, pager: _Pager, on_page: Callable[[list], None],
             max_pages: int | None = None) -> str:
        """Hand `on_page` each page of `code`'s trades, newest first, until one reaches back
        past `since`. Returns 'reached', 'too_old' (beyond Upbit's 7 days) or 'page_limit'."""
        cursor = None
        days_ago = 0
        days_needed = _utc_days_between(since, now_ms())
        pages = 0
        while True:
            if max_pages is not None and pages >= max_pages:
                return "page_limit"
            params: dict = {"market": code, "count": UPBIT_PAGE}
            if cursor is not None:
                params["cursor"] = cursor
            if days_ago:
                params["days_ago"] = days_ago
            r = pager.get(self.PATH, params)
            if r is None:
                continue
            try:
                p = parse_upbit_ticks(r.text, r.recv_ts_ms)
            except Reject as rej:
                self.svc.rejects.record(rej.source, rej.reason, r.text, r.recv_ts_ms)
                self.last_error = rej.reason
                pager.failures += 1
                if pager.failures >= MAX_FAILURES:
                    raise _GiveUp("answers do not parse") from None
                continue
            pager.failures = 0
            pages += 1
            page = [row for row in p.rows if row[0] == code]
            if page:
                on_page(page)
            if page and min(row[2] for row in page) < since:
                return "reached"           # past the given time
            if len(page) < UPBIT_PAGE:
                # this UTC date is exhausted: older trades are on earlier dates
                if days_ago < days_needed:
                    if days_ago >= UPBIT_MAX_DAYS_AGO:
                        return "too_old"
                    days_ago += 1
                    cursor = None
                    continue
                return "reached"
            cursor = page[-1][1]


def _utc_days_between(a_ms: int, b_ms: int) -> int:
    da = datetime.fromtimestamp(a_ms / 1000, tz=timezone.utc).date()
    db = datetime.fromtimestamp(b_ms / 1000, tz=timezone.utc).date()
    return max(0, (db - da).days)


# ------------------------------------------------------------------ Upbit reconciliation
RECONCILE_MAX_PAGES = 20        # 10 000 trades a code per run, a few requests of Upbit's 10/s
_IN_CHUNK = 400                 # sequential_ids per IN (...) lookup, under SQLite's variable limit


class UpbitReconcile:
    """Trades the WebSocket skipped while connected leave no trace in the stream (ids are
    not ordered), so every `interval_s` the newest `/v1/trades/ticks` pages of each code
    are compared with the stored trades and whatever is missing is inserted.

    A run covers the trades since the previous run's point (the first one: since the first
    live trade of this process; before it is the restart backfill's), paging back at most
    `max_pages`. Only trades at least `settle_ms` older than the newest one the stream
    delivered are compared (exchange time, so a skewed local clock does not matter), and
    the comparison waits `handover_s` after the run was due, so rows the stream is still
    handing to the writer are not taken for missing. Compare and insert are one writer
    call, after every row queued before it. A code with missing trades gets a `gaps` row,
    reason `reconcile: missing=N filled=M`; a span the pages did not reach back to gets an
    `unfillable` row saying so. Runs go through the backfill worker, one after another with
    the reconnect backfill jobs, and only while `connected()`.
    """

    def __init__(self, filler: UpbitTradeFill, backfiller: Backfiller, codes, *, interval_s: float,
                 settle_ms: int, connected: Callable[[], bool],
                 stream_times: Callable[[str], tuple[int | None, int | None]],
                 clock: Callable[[], float] = time.monotonic, max_pages: int = RECONCILE_MAX_PAGES,
                 handover_s: float = 0.5):
        self.filler = filler
        self.backfiller = backfiller
        self.interval_s = interval_s
        self.settle_ms = settle_ms
        self.connected = connected
        self.stream_times = stream_times      # code -> (first live event ts, newest event ts)
        self.clock = clock
        self.max_pages = max_pages
        self.handover_s = handover_s
        self.checked_to: dict[str, int | None] = {code: None for code in codes}
        self.queued: set[str] = set()
        self.next_at = clock() + interval_s
        self.runs = self.missing = self.filled = self.unchecked = 0

    def tick(self) -> None:
        """Called often (the collector's main loop); submits a run per code when one is due."""
        now = self.clock()
        if now < self.next_at:
            return
        self.next_at = now + self.interval_s
        if not self.connected():
            return                      # the reconnect backfill covers the disconnected window
        for code, since in self.checked_to.items():
            first, newest = self.stream_times(code)
            if since is None:
                since = first
            if code in self.queued or since is None or newest is None or newest - self.settle_ms <= since:
                continue
            self.queued.add(code)
            gap = Gap(SOURCE_UPBIT, f"{code}@trade", "reconcile", now_ms(), from_ts_ms=since,
                      to_ts_ms=newest - self.settle_ms)
            self.backfiller.submit(lambda g, due=now: self.run(g, due), gap)

    def run(self, gap: Gap, due: float | None = None) -> None:
        """One code: fetch the pages back to the previous point, then compare and insert."""
        code = gap.stream.split("@", 1)[0]
        since, horizon = gap.from_ts_ms, gap.to_ts_ms
        rows: dict[int, tuple] = {}
        try:
            reach = self.filler.walk(code, since, _Pager(self.filler, gap),
                                     lambda page: rows.update((r[1], r) for r in page), self.max_pages)
        except _Stopped:
            self.queued.discard(code)
            return
        except _GiveUp as exc:
            self.queued.discard(code)
            log.warning("reconcile skipped stream=%s: %s; the next run covers this span", gap.stream, exc)
            return
        self.runs += 1
        oldest = min((r[2] for r in rows.values()), default=None)
        unreached = None
        if reach != "reached" and (oldest is None or oldest > since):
            unreached = (since, oldest if oldest is not None else horizon, reach)
        # [since, horizon] of consecutive runs meet; older trades are an earlier run's (or
        # the restart backfill's), newer ones may still be on their way through the stream
        settled = [r for r in rows.values() if since <= r[2] <= horizon]
        if due is not None:
            left = due + self.handover_s - self.clock()
            if left > 0 and self.filler.svc.stopping.wait(left):
                self.queued.discard(code)
                return
        self.filler.svc.writer.call(lambda conn: self._apply(conn, gap, settled, unreached))
        self.checked_to[code] = horizon
        self.queued.discard(code)

    def _apply(self, conn, gap: Gap, rows: list, unreached) -> None:
        """In the writer thread: what of `rows` is not stored, inserted; gaps rows for it."""
        code = gap.stream.split("@", 1)[0]
        have: set = set()
        ids = [r[1] for r in rows]
        for i in range(0, len(ids), _IN_CHUNK):
            part = ids[i:i + _IN_CHUNK]
            have.update(x for (x,) in conn.execute(
                f"SELECT sequential_id FROM upbit_trades WHERE code = ? AND sequential_id IN "
                f"({','.join('?' * len(part))})", (code, *part)))
        missing = [r for r in rows if r[1] not in have]
        now = now_ms()
        if missing:
            before = conn.total_changes
            conn.executemany(self.filler.sql, missing)
            filled = conn.total_changes - before
            self.missing += len(missing)
            self.filled += filled
            status = "filled" if filled == len(missing) else "partial"
            conn.execute(GAP_INSERT, (gap.source, gap.stream, gap.detected_ts_ms, None, None,
                                      min(r[2] for r in missing), max(r[2] for r in missing), now, filled,
                                      status, f"reconcile: missing={len(missing)} filled={filled}"))
            log.warning("reconcile stream=%s: %d trades the stream did not deliver, %d inserted (checked %d "
                        "trades from_ts_ms=%s to_ts_ms=%s)", gap.stream, len(missing), filled, len(rows),
                        gap.from_ts_ms, gap.to_ts_ms)
        else:
            log.info("reconcile stream=%s: all %d trades stored from_ts_ms=%s to_ts_ms=%s", gap.stream,
                     len(rows), gap.from_ts_ms, gap.to_ts_ms)
        if unreached is not None:
            frm, to, why = unreached
            self.unchecked += 1
            detail = (f"more than {self.max_pages} pages of trades since the previous run" if why == "page_limit"
                      else "older than the 7 days Upbit keeps")
            conn.execute(GAP_INSERT, (gap.source, gap.stream, gap.detected_ts_ms, None, None, frm, to, now, 0,
                                      "unfillable", f"reconcile: not checked, {detail}"))
            log.error("reconcile stream=%s: trades from_ts_ms=%s to_ts_ms=%s not checked: %s", gap.stream,
                      frm, to, detail)

    def snapshot(self) -> dict:
        return {"runs": self.runs, "missing": self.missing, "filled": self.filled, "unchecked": self.unchecked}
