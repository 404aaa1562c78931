"""The late ledger: raw rows that land after their second was written live.

A row that reaches the database after its second was written (a gap backfill, a slow
commit) is used by every row computed after it landed, and counted per source and second
in `aggregate_late` and in the heartbeat detail — for every stream source the features
read (per-second row counts, CountLedger) and for Coinglass bars received after the
second of their availability was written — and logged with the `--rebuild` command that
corrects the range. The rows written before stay what was known live; `--rebuild` over
the range recomputes them with the late rows and marks them corrected.

The ledger is per asset (one LateLedger per asset, `aggregate_late` keyed by (symbol,
source, ts_ms)): a late ETH trade is counted for ETH only. KRW-USDT trades feed every
asset's kimchi premium, so a late one is counted for every asset that used it.
"""
from __future__ import annotations

import logging
import sqlite3
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from .. import timerule
from ..featureparams import STREAM_SOURCES, FeatureParams, lookback_ms
from ..rawread import coinglass_open_range, count_by_second, count_rows, stream_table
from ..timeutil import fmt_ms
from .bars import SECOND_MS
from .config import SERVICE, AggregateConfig

log = logging.getLogger("cqt.aggregate")

#: stream rows counted late, added to what is already recorded for the second
LATE_ADD_SQL = (
    "INSERT INTO aggregate_late (symbol, source, ts_ms, late_rows, corrected_rows, first_detected_ts_ms, "
    "last_detected_ts_ms) VALUES (?, ?, ?, ?, 0, ?, ?) ON CONFLICT(symbol, source, ts_ms) DO UPDATE SET "
    "late_rows = aggregate_late.late_rows + excluded.late_rows, last_detected_ts_ms = excluded.last_detected_ts_ms")
#: Coinglass bars: the number of bars of the second received late (recomputed on every scan)
LATE_ROWS_SQL = (
    "INSERT INTO aggregate_late (symbol, source, ts_ms, late_rows, corrected_rows, first_detected_ts_ms, "
    "last_detected_ts_ms) VALUES (?, ?, ?, ?, 0, ?, ?) ON CONFLICT(symbol, source, ts_ms) DO UPDATE SET "
    "late_rows = excluded.late_rows, last_detected_ts_ms = excluded.last_detected_ts_ms "
    "WHERE aggregate_late.late_rows != excluded.late_rows")

#: aggregate_late.source of each stream source of cqt.features (the raw table; KRW-USDT
#: trades share upbit_trades with the asset's KRW market and are kept apart)
LATE_SOURCE = {"upbit": "upbit_trades", "usdt": "upbit_trades_usdt", "book": "upbit_orderbook",
               "binance": "binance_agg_trades", "mark": "binance_mark_price", "liq": "binance_liquidations"}



@dataclass
class WrittenSpan:
    """The stretch of bars this process wrote (or restored after a restart), shared by the
    live service (which advances it) and the late ledger (only rows of these seconds are late)."""
    first: int | None = None
    last: int | None = None

class CountLedger:
    """Rows per second of one stream source as the live service last counted them, over a
    contiguous covered range (lo, hi] of availability seconds (a second missing from `n`
    had none). A later count that differs is a row that landed after its second was read."""

    def __init__(self) -> None:
        self.n: dict[int, int] = {}
        self.lo: int | None = None
        self.hi: int | None = None

    def observe(self, lo: int, hi: int, buckets: Any, counts: Any) -> list[tuple[int, int]]:
        """Record the row count of every second in (lo, hi] (`buckets`/`counts`: the seconds
        that have rows). Returns (second, change) for the seconds already covered whose
        count changed; a range disjoint from the covered one starts the ledger afresh."""
        new = {int(k): int(v) for k, v in zip(buckets, counts)}
        if self.lo is None or self.hi is None or lo > self.hi or hi < self.lo:
            self.n, self.lo, self.hi = new, lo, hi
            return []
        changes: list[tuple[int, int]] = []
        a, b = max(lo, self.lo), min(hi, self.hi)
        if a < b:                    # the overlap with what is known: compare, then forget the old counts
            old = {k: v for k, v in self.n.items() if a < k <= b}
            for k in sorted(old.keys() | {k for k in new if a < k <= b}):
                d = new.get(k, 0) - old.get(k, 0)
                if d:
                    changes.append((k, d))
            for k in old:
                del self.n[k]
        self.n.update(new)
        self.lo, self.hi = min(lo, self.lo), max(hi, self.hi)
        return changes

    def total(self, lo: int, hi: int) -> int:
        return sum(v for k, v in self.n.items() if lo < k <= hi)

    def prune(self, before: int) -> None:
        """Forget the seconds <= before."""
        if self.lo is None or self.hi is None or before <= self.lo:
            return
        self.n = {k: v for k, v in self.n.items() if k > before}
        self.lo = min(before, self.hi)



Write = Callable[[Callable[[sqlite3.Connection], Any]], None]


class LateLedger:
    """Finds, counts, records and logs late rows of one asset (`params`) for the live service.

    Every count the service reads (SecondCache loads and reloads via `on_load`, the
    periodic `scan` of the late window) goes through a CountLedger per stream source; a
    second whose count grew after it was written has late rows. `conn` is the service's
    read-only connection, `write(fn)` queues fn(conn) for the batched writer, `sync(s)`
    waits until what was queued is committed."""

    def __init__(self, conn: sqlite3.Connection, params: FeatureParams, cfg: AggregateConfig, write: Write,
                 written: WrittenSpan, *, clock: Callable[[], int], started_ms: int,
                 sync: Callable[[float], Any] | None = None):
        self.conn = conn
        self.params = params
        self.symbol = params.asset
        self.cfg = cfg
        self.write = write
        self.written = written
        self.clock = clock
        self.started_ms = started_ms
        self.sync = sync
        self.ledgers = {s: CountLedger() for s in STREAM_SOURCES}
        self.late: dict[str, int] = {}             # aggregate_late totals of the asset (all processes), by source
        self.late_seen: dict[str, int] = {}        # late rows this process detected, by source
        self._new: dict[tuple[str, int], int] = {}        # detected, not yet written
        self._unlogged: dict[tuple[str, int], int] = {}   # written, not yet logged
        self._logged_ms: int | None = None
        self._queued = False                       # late rows queued for writing since the last totals
        self._last_scan_ms: int | None = None
        self._written_at: deque[tuple[int, int, int]] = deque()   # (first bar, last bar, wall ms) per step
        self._reported: dict[tuple[str, int], int] = {}           # Coinglass late bars already logged

    # -- after a restart ---------------------------------------------------------------------
    def restore(self) -> None:
        """After a restart: the Upbit KRW-<asset> row counts of the seconds already written come
        from market_1s.trade_count (plus the late rows already counted for them), so a
        trade that landed while the service was stopped is still found late."""
        last = self.written.last
        assert last is not None
        lo = last - self.cfg.late_window_ms
        counts = self.conn.execute("SELECT ts_ms, trade_count FROM market_1s WHERE symbol = ? AND ts_ms > ? "
                                   "ORDER BY ts_ms DESC", (self.symbol, lo)).fetchall()
        first = last + SECOND_MS
        for ts, _ in counts:                 # the contiguous stretch ending at the last written second
            if ts != first - SECOND_MS:
                break
            first = ts
        counted = dict(self.conn.execute(
            "SELECT ts_ms, late_rows - corrected_rows FROM aggregate_late WHERE symbol = ? AND source = ? "
            "AND ts_ms >= ? AND ts_ms <= ? AND late_rows > corrected_rows",
            (self.symbol, LATE_SOURCE["upbit"], first, last)))
        n = {ts: k + counted.get(ts, 0) for ts, k in counts if ts >= first}
        self.ledgers["upbit"].observe(first - SECOND_MS, last, [k for k in n if n[k]],
                                      [v for v in n.values() if v])
        self.written.first = first

    def while_stopped(self) -> None:
        """Rows of the other stream sources that reached the database after the previous
        run of the service stopped, for seconds it had written: late (recv_ts_ms after its
        stop, or its last heartbeat if it was killed). Once, at start; bounded by the late window."""
        last = self.written.last
        assert last is not None
        prev = self.conn.execute(
            "SELECT start_ts_ms, stop_ts_ms FROM service_runs WHERE service = ? AND start_ts_ms < ? "
            "ORDER BY start_ts_ms DESC LIMIT 1", (SERVICE, self.started_ms)).fetchone()
        if prev is None:
            return
        stopped = prev[1]
        if stopped is None:
            stopped = self.conn.execute("SELECT MAX(ts_ms) FROM heartbeats WHERE service = ? AND ts_ms >= ? "
                                        "AND ts_ms < ?", (SERVICE, prev[0], self.started_ms)).fetchone()[0]
        if stopped is None:
            return
        p = self.params
        lo = last - self.cfg.late_window_ms
        for source in STREAM_SOURCES:
            if source == "upbit":            # counted exactly against market_1s.trade_count
                continue
            table, key_col, key = stream_table(source, p)
            col = timerule.rule(table).time_col
            for sec, k in self.conn.execute(
                    f"SELECT (({col} + 999) / 1000) * 1000 AS b, COUNT(*) FROM {table} WHERE {key_col} = ? "
                    f"AND {col} > ? AND {col} <= ? AND recv_ts_ms > ? GROUP BY b", (key, lo, last, stopped)):
                self.add(source, int(sec), int(k))

    # -- as the service writes -----------------------------------------------------------------
    def wrote(self, a: int, b: int, read_wall: int) -> None:
        """The service queued bars a..b, computed from what the database held at wall time `read_wall`."""
        self._written_at.append((a, b, read_wall))
        while self._written_at and self._written_at[0][1] < b - self.cfg.late_window_ms:
            self._written_at.popleft()

    def on_load(self, source: str, lo: int, hi: int, data: dict[str, Any]) -> None:
        """SecondCache read rows of `source` in (lo, hi]: compare with the ledger."""
        for sec, d in self.ledgers[source].observe(lo, hi, data["b"], data["n"]):
            if d > 0:
                self.add(source, sec, d)

    def add(self, source: str, sec: int, rows: int) -> None:
        """`rows` rows of `source` landed in second `sec` after it was written (only seconds
        this process wrote, or restored, count: earlier ones were not written live)."""
        first, last = self.written.first, self.written.last
        if first is None or last is None or not first <= sec <= last:
            return
        key = (LATE_SOURCE[source], sec)
        self._new[key] = self._new.get(key, 0) + rows

    def flush(self, now: int | None = None) -> None:
        """Write the late rows detected since the last call; log them (at most every
        10 s, with the --rebuild command for the affected range)."""
        now = self.clock() if now is None else now
        if self._new:
            rows = [(self.symbol, src, sec, n, now, now) for (src, sec), n in sorted(self._new.items())]
            self.write(lambda conn: conn.executemany(LATE_ADD_SQL, rows))
            for (src, sec), n in self._new.items():
                self.late_seen[src] = self.late_seen.get(src, 0) + n
                self._unlogged[(src, sec)] = self._unlogged.get((src, sec), 0) + n
                self.late[f"{src}_total"] = self.late.get(f"{src}_total", 0) + n
                self.late[f"{src}_pending"] = self.late.get(f"{src}_pending", 0) + n
            self._new = {}
            self._queued = True
        if self._unlogged and (self._logged_ms is None or now - self._logged_ms >= self.cfg.late_log_ms):
            self._logged_ms = now
            items = self._unlogged
            self._unlogged = {}
            lb = {LATE_SOURCE[s]: lookback_ms(s, self.params) for s in STREAM_SOURCES}
            first = min(sec for _, sec in items)
            last = max(sec + lb.get(src, 0) for src, sec in items)
            to = min(last, self.written.last) if self.written.last is not None else last
            log.warning("late data of %s: %d rows landed after their second was written, in %d seconds (%s), "
                        "first %s; rows computed since include them, the rows written before stay what was known "
                        "live; bin/cqt-aggregate --rebuild --from %d --to %d --symbol %s corrects them",
                        self.symbol, sum(items.values()), len({sec for _, sec in items}),
                        ",".join(sorted({s for s, _ in items})),
                        fmt_ms(first), first, to, self.symbol)

    def close(self) -> None:
        """Log what is still unlogged (the service is stopping)."""
        if self._unlogged:
            self._logged_ms = None
            self.flush()

    # -- the periodic scan ---------------------------------------------------------------------
    def scan_due(self, now: int | None = None) -> bool:
        now = self.clock() if now is None else now
        return self._last_scan_ms is None or now - self._last_scan_ms >= self.cfg.late_scan_ms

    def scan(self, now: int | None = None) -> dict[str, int]:
        """Every CQT_AGGREGATE_LATE_SCAN_S: count the rows of every stream source over the
        written seconds of the late window against the ledger (one indexed COUNT(*) per
        source; per-second counts only where it differs), and Coinglass bars received after
        this process wrote the second they became available. Returns the totals."""
        now = self.clock() if now is None else now
        self._last_scan_ms = now
        if self.written.last is None:
            return self.late
        p = self.params
        hi = self.written.last
        lo = hi - self.cfg.late_window_ms
        self._reported = {k: v for k, v in self._reported.items() if k[1] > lo}
        polled: list[tuple] = []
        self.conn.execute("BEGIN")
        try:
            for source, led in self.ledgers.items():
                led.prune(lo)
                self.scan_source(source, lo, hi)
            grace = self.cfg.grace_ms
            for table, where, args in (
                    ("coinglass_open_interest", "symbol = ? AND interval = ?", (p.cg_symbol, p.cg_interval)),
                    ("coinglass_funding", "exchange = ? AND symbol = ? AND interval = ?",
                     (p.cg_exchange, p.cg_symbol_pair, p.cg_interval))):
                av = timerule.availability_sql(table, p.cg_delay_s)
                a_lo = lo - p.cg_delay_s * SECOND_MS
                osql, oargs = coinglass_open_range(p, a_lo, hi)
                counts_cg: dict[int, int] = {}
                for sec, recv in self.conn.execute(
                        f"SELECT (({av} + 999) / 1000) * 1000, recv_ts_ms FROM {table} WHERE {where}{osql} "
                        f"AND avail_ts_ms > ? AND {av} <= ? AND recv_ts_ms > {av} + ?",
                        (*args, *oargs, a_lo, hi, grace)).fetchall():
                    wall = self._wall_written(sec)
                    if wall is not None and recv > wall:    # received after this process wrote its second
                        counts_cg[sec] = counts_cg.get(sec, 0) + 1
                polled += [(table, sec, n) for sec, n in sorted(counts_cg.items())]
        finally:
            self.conn.execute("COMMIT")
        if polled:
            self.write(lambda conn: conn.executemany(LATE_ROWS_SQL, [(self.symbol, t, sec, n, now, now)
                                                                     for t, sec, n in polled]))
            new = [(src, sec, n) for src, sec, n in polled if self._reported.get((src, sec), 0) < n]
            for src, sec, n in new:
                self._reported[(src, sec)] = n
            if new:
                log.warning("late data of %s: %d Coinglass bars received after the second of their availability "
                            "was written (%s), first %s; raise CQT_COINGLASS_DELAY_S if this is routine; "
                            "bin/cqt-aggregate --rebuild --from %d --to %d --symbol %s corrects them",
                            self.symbol, sum(n for _, _, n in new), ",".join(sorted({x[0] for x in new})),
                            fmt_ms(min(x[1] for x in new)), min(x[1] for x in new), hi, self.symbol)
        self.flush(now)
        if self._queued and self.sync is not None:
            self.sync(2.0)               # the totals below include what was just queued
        self._queued = False
        totals = self.conn.execute(
            "SELECT source, SUM(late_rows), SUM(late_rows - corrected_rows) FROM aggregate_late WHERE symbol = ? "
            "GROUP BY source", (self.symbol,)).fetchall()
        self.late = {}
        for src, tot, pend in totals:
            self.late[f"{src}_total"] = int(tot)
            self.late[f"{src}_pending"] = int(pend)
        return self.late

    def scan_source(self, source: str, lo: int, hi: int) -> None:
        """Compare the rows of `source` in (lo, hi] ∩ the ledger's range with the ledger:
        one indexed COUNT(*); per-second counts only when it differs."""
        led = self.ledgers[source]
        if led.lo is None or led.hi is None:
            return
        a, b = max(led.lo, lo), min(led.hi, hi)
        p = self.params
        if b > a and count_rows(self.conn, source, p, a, b) != led.total(a, b):
            secs, counts = count_by_second(self.conn, source, p, a, b)
            for sec, d in led.observe(a, b, secs, counts):
                if d > 0:
                    self.add(source, sec, d)

    def _wall_written(self, bar: int) -> int | None:
        """When this process wrote `bar` (wall ms), if it did within the late window."""
        for a, b, wall in self._written_at:
            if a <= bar <= b:
                return wall
        return None

