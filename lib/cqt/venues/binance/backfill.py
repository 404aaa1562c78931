"""Binance backfill: aggTrades by id over REST (`/fapi/v1/aggTrades?fromId=`).

`AggTradeFill` fetches exactly the missing ids, in pages of <= 1000; the first-start job
(`to_id` unknown) finds the first id at `startTime` and pages until it meets the live
stream (`cqt.stream.StreamState` of the aggTrade stream tells it where that starts).
Runs on the generic worker (`cqt.backfill.Backfiller`).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from ...backfill import MAX_FAILURES, FillBase, GapBook, GiveUp, Pager, Stopped
from ...poll.outcomes import error_code
from ...stream import Gap, StreamState
from ...timeutil import now_ms
from ..common import Reject, insert_sql
from .parse import REST, parse_agg_trades_rest

log = logging.getLogger("cqt.backfill")

AGG_PAGE = 1000
HOUR_MS = 3_600_000
#: what a gap older than the venue's aggTrades history is closed with
TOO_OLD_REASON = "unfillable: Binance keeps only ~48 h of aggTrades history (-1130 for older data)"


def refused_too_old(exc: GiveUp) -> bool:
    """A 400 with code -1130 on aggTrades: the ids or times asked for are older than the
    venue serves (the SDK says 48 h; the exact refusal is not documented)."""
    body = error_code(exc.text)
    return exc.status == 400 and body is not None and body[0] == "-1130"


class AggTradeFill(FillBase):
    """Binance aggTrades by id (`fromId`), exactly the missing ids."""

    PATH = "/fapi/v1/aggTrades"

    def __init__(self, svc: Any, rest: Any, gaps: GapBook, symbol: str, state: StreamState):
        super().__init__(svc, rest, gaps)
        self.symbol = symbol
        self.state = state
        self.sql = insert_sql("binance_agg_trades")

    def __call__(self, gap: Gap) -> None:
        self.jobs += 1
        pager = Pager(self, gap)
        t0 = time.monotonic()
        try:
            if gap.from_id is None:
                if not self._locate_start(gap, pager):
                    self.gaps.close(gap, "filled")
                    log.info("backfill stream=%s reason=%s: no trades since %s", gap.stream, gap.reason,
                             gap.from_ts_ms)
                    return
            got = self._fill_ids(gap, pager)
        except Stopped:
            return                                  # the gap stays open; the next start resumes it
        except GiveUp as exc:
            if refused_too_old(exc):
                # ends at once: retrying cannot make old data servable again; the row says why
                self.gaps.close(gap, "unfillable" if not gap.filled_rows else "partial", TOO_OLD_REASON)
                log.error("backfill %s stream=%s ids=%s..%s: %s", "unfillable", gap.stream, gap.from_id,
                          gap.to_id, TOO_OLD_REASON)
                return
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

    def _locate_start(self, gap: Gap, pager: Pager) -> bool:
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

    def _fill_ids(self, gap: Gap, pager: Pager) -> int:
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
                    raise GiveUp("answers do not parse")
                continue
            pager.failures = 0
            rows = [row for row in p.rows if row[1] >= next_id and (gap.to_id is None or row[1] <= gap.to_id)]
            if rows:
                self.gaps.insert_counted(self.sql, rows, gap)
                self.rows_new += len(rows)
                self.svc.count(REST, rows=len(rows), symbol=self.symbol)
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
                        raise GiveUp(f"answers for fromId={next_id} hold only older ids")
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
            self.svc.rejects.record(rej.source, rej.reason, r.text, r.recv_ts_ms, symbol=self.symbol)
            self.last_error = rej.reason
            return None
