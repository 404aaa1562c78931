"""Upbit backfill: trades by time over REST (`/v1/trades/ticks`), and reconciliation.

* `UpbitTradeFill`: newest first with `cursor` (and `days_ago` across UTC dates) until
  past the last stored trade time; inserts are idempotent, so trades the live stream
  also delivered are not duplicated.
* `UpbitReconcile`: while connected, the newest pages are compared with the stored
  trades every few minutes, so trades the WebSocket skipped (no id sequence shows it)
  are inserted and recorded as a `gaps` row with counts.

Both run on the generic worker (`cqt.backfill.Backfiller`).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Any, Callable

from ...backfill import GAP_INSERT, MAX_FAILURES, Backfiller, FillBase, GapBook, GiveUp, Pager, Stopped
from ...stream import Gap
from ...timeutil import now_ms
from ..common import Reject, insert_sql
from .parse import REST, WS, parse_upbit_ticks

log = logging.getLogger("cqt.backfill")

UPBIT_PAGE = 500
UPBIT_MAX_DAYS_AGO = 7
SOURCE_UPBIT = WS


class UpbitTradeFill(FillBase):
    """Upbit trades by time: newest first until past `gap.from_ts_ms`, deduplicated by sequential_id."""

    PATH = "/v1/trades/ticks"

    def __init__(self, svc: Any, rest: Any, gaps: GapBook):
        super().__init__(svc, rest, gaps)
        self.sql = insert_sql("upbit_trades")

    def __call__(self, gap: Gap) -> None:
        self.jobs += 1
        code = gap.stream.split("@", 1)[0]
        since = gap.from_ts_ms if gap.from_ts_ms is not None else now_ms()
        pager = Pager(self, gap)
        t0 = time.monotonic()
        try:
            status = self._pages(code, since, gap, pager)
        except Stopped:
            return
        except GiveUp as exc:
            status = "partial" if gap.filled_rows else "unfillable"
            log.error("backfill gave up stream=%s since=%s: %s", gap.stream, since, exc)
        self.gaps.close(gap, status)
        log.info("backfill %s stream=%s reason=%s since_ts_ms=%s seconds=%.2f", status, gap.stream,
                 gap.reason, since, time.monotonic() - t0)

    def _pages(self, code: str, since: int, gap: Gap, pager: Pager) -> str:
        def store(page: list) -> None:
            # the whole page is stored (older rows too): idempotent, and exactly what a
            # replay of the captured answer stores
            self.gaps.insert_counted(self.sql, page, gap)
            self.rows_new += len(page)
            self.svc.count(REST, rows=len(page), symbol=code)
        if self.walk(code, since, pager, store) == "too_old":
            return "partial" if gap.filled_rows else "unfillable"
        return "filled"

    def walk(self, code: str, since: int, pager: Pager, on_page: Callable[[list], None],
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
                self.svc.rejects.record(rej.source, rej.reason, r.text, r.recv_ts_ms, symbol=code)
                self.last_error = rej.reason
                pager.failures += 1
                if pager.failures >= MAX_FAILURES:
                    raise GiveUp("answers do not parse") from None
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
            reach = self.filler.walk(code, since, Pager(self.filler, gap),
                                     lambda page: rows.update((r[1], r) for r in page), self.max_pages)
        except Stopped:
            self.queued.discard(code)
            return
        except GiveUp as exc:
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
                                      status, f"reconcile: missing={len(missing)} filled={filled}", code))
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
                                      "unfillable", f"reconcile: not checked, {detail}", code))
            log.error("reconcile stream=%s: trades from_ts_ms=%s to_ts_ms=%s not checked: %s", gap.stream,
                      frm, to, detail)

    def snapshot(self) -> dict:
        return {"runs": self.runs, "missing": self.missing, "filled": self.filled, "unchecked": self.unchecked}
