"""cqt-aggregate: writes `market_1s` and `predictions`, one row per second, from raw tables.

    bin/cqt-aggregate                                   # the service (systemd: cqt-aggregate.service)
    bin/cqt-aggregate --rebuild --from T --to T [--db PATH] [--json]

Service: every second it writes the seconds that are complete once the grace delay
(CQT_AGGREGATE_GRACE_S, default 2 s) has passed, i.e. every bar t <= now - grace. After
a restart it continues from the last written second; a gap longer than
CQT_AGGREGATE_MAX_CATCHUP_S (default 6 h) is skipped with a warning that names the
`--rebuild` command for the skipped range. On a first start (empty market_1s) it waits,
at most CQT_AGGREGATE_START_WAIT_S, for the collectors' start-up backfill. Each second
costs one bounded read of the new raw rows: per-second summaries are cached
(cqt.features.SecondCache) and checked against the database before every step (one
indexed COUNT(*) per stream source), so a live row is always what the database held.

Late data: a raw row that lands after its second was written (a gap backfill) is used by
every row computed after it landed, and counted per source and second in
`aggregate_late` and in the heartbeat detail, for every stream source the features read
(per-second row counts kept by the service, see LiveAggregator) and for Coinglass bars
received after the second of their availability was written; logged with the
`--rebuild` command that corrects the range. The rows written before stay what was known
live; `--rebuild` over the range recomputes them with the late rows and marks them corrected.

Rebuild: recomputes [from, to] (bar times, both inclusive) from the raw tables in
chunks, replacing the rows there, each chunk in its own short write transaction.
`rebuild()` is the same path for `bin/cqt synth`. The CLI first cuts [from, to] to the
data's own range (`clamp_to_data`: no bar before the first stream row, after the last
one or the last written bar, or after now) and refuses a span longer than
CQT_AGGREGATE_MAX_REBUILD_S (exit 2)."""
from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from . import exitcodes, timerule
from .config import ConfigError, Settings
from .db import DatabaseMissing, connect, is_fatal_io, open_db
from .features import (MARKET_COLUMNS, PREDICTION_COLUMNS, STREAM_SOURCES, FeatureParams, FeatureResult,
                       SecondCache, coinglass_open_range, compute_range, count_by_second, count_rows, lookback_ms,
                       params_from_settings, stream_table)
from .clicktypes import TIME
from .timeutil import fmt_ms, now_ms

log = logging.getLogger("cqt.aggregate")

SERVICE = "cqt-aggregate"
SECOND_MS = 1000
DEFAULT_MAX_REBUILD_S = 400 * 86_400

MARKET_SQL = (f"INSERT OR REPLACE INTO market_1s ({', '.join(MARKET_COLUMNS)}) "
              f"VALUES ({', '.join('?' * len(MARKET_COLUMNS))})")
PREDICTIONS_SQL = (f"INSERT OR REPLACE INTO predictions ({', '.join(PREDICTION_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(PREDICTION_COLUMNS))})")
#: stream rows counted late, added to what is already recorded for the second
LATE_ADD_SQL = (
    "INSERT INTO aggregate_late (source, ts_ms, late_rows, corrected_rows, first_detected_ts_ms, last_detected_ts_ms) "
    "VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT(source, ts_ms) DO UPDATE SET "
    "late_rows = aggregate_late.late_rows + excluded.late_rows, last_detected_ts_ms = excluded.last_detected_ts_ms")
#: Coinglass bars: the number of bars of the second received late (recomputed on every scan)
LATE_ROWS_SQL = (
    "INSERT INTO aggregate_late (source, ts_ms, late_rows, corrected_rows, first_detected_ts_ms, last_detected_ts_ms) "
    "VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT(source, ts_ms) DO UPDATE SET "
    "late_rows = excluded.late_rows, last_detected_ts_ms = excluded.last_detected_ts_ms "
    "WHERE aggregate_late.late_rows != excluded.late_rows")

#: aggregate_late.source of each stream source of cqt.features (the raw table; KRW-USDT
#: trades share upbit_trades with KRW-BTC and are kept apart)
LATE_SOURCE = {"upbit": "upbit_trades", "usdt": "upbit_trades_usdt", "book": "upbit_orderbook",
               "binance": "binance_agg_trades", "mark": "binance_mark_price", "liq": "binance_liquidations"}


# ------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class AggregateConfig:
    params: FeatureParams
    grace_ms: int = 2000
    max_catchup_ms: int = 6 * 3600 * SECOND_MS
    chunk_s: int = 3600            # rebuild chunk; live catch-up writes at most catchup_step_s per step
    catchup_step_s: int = 600
    late_window_ms: int = 3600 * SECOND_MS
    late_scan_ms: int = 30 * SECOND_MS
    start_wait_ms: int = 120 * SECOND_MS
    late_log_ms: int = 10 * SECOND_MS
    max_rebuild_s: int = DEFAULT_MAX_REBUILD_S   # --rebuild refuses a longer span (after clamping to the data)


def config_from_settings(settings: Settings) -> AggregateConfig:
    """All cqt-aggregate variables (docs/aggregate.md); raises ConfigError on a bad value."""
    day = 86_400
    grace_s = settings.get_float("CQT_AGGREGATE_GRACE_S", 2.0, minimum=0.0, maximum=3600)
    return AggregateConfig(
        params=params_from_settings(settings),
        grace_ms=int(round(grace_s * 1000)),
        max_catchup_ms=settings.get_int("CQT_AGGREGATE_MAX_CATCHUP_S", 6 * 3600, minimum=1, maximum=30 * day) * SECOND_MS,
        chunk_s=settings.get_int("CQT_AGGREGATE_CHUNK_S", 3600, minimum=1, maximum=day),
        catchup_step_s=settings.get_int("CQT_AGGREGATE_CATCHUP_STEP_S", 600, minimum=1, maximum=day),
        late_window_ms=settings.get_int("CQT_AGGREGATE_LATE_WINDOW_S", 3600, minimum=1, maximum=7 * day) * SECOND_MS,
        late_scan_ms=int(settings.get_float("CQT_AGGREGATE_LATE_SCAN_S", 30.0, minimum=0.1, maximum=3600) * SECOND_MS),
        start_wait_ms=int(settings.get_float("CQT_AGGREGATE_START_WAIT_S", 120.0, minimum=0.0, maximum=day) * SECOND_MS),
        max_rebuild_s=settings.get_int("CQT_AGGREGATE_MAX_REBUILD_S", DEFAULT_MAX_REBUILD_S, minimum=1,
                                       maximum=3650 * day),
    )


def floor_s(ms: int) -> int:
    return (int(ms) // SECOND_MS) * SECOND_MS


def ceil_s(ms: int) -> int:
    return -((-int(ms)) // SECOND_MS) * SECOND_MS


def _write_result(conn: sqlite3.Connection, res: FeatureResult) -> int:
    m, p = res.market_rows(), res.prediction_rows()
    conn.executemany(MARKET_SQL, m)
    conn.executemany(PREDICTIONS_SQL, p)
    return len(m)


def _add_nulls(total: dict[str, dict[str, int]], res: FeatureResult) -> None:
    for table, cols in res.nulls.items():
        t = total.setdefault(table, {})
        for c, n in cols.items():
            if n:
                t[c] = t.get(c, 0) + n


# ------------------------------------------------------------------------------ rebuild
@dataclass
class RebuildStats:
    from_ms: int
    to_ms: int
    seconds: int = 0
    market_rows: int = 0
    prediction_rows: int = 0
    elapsed_s: float = 0.0
    chunks: int = 0
    raw_rows_read: int = 0
    late_seconds_corrected: int = 0
    late_rows_corrected: int = 0
    nulls: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"from_ms": self.from_ms, "to_ms": self.to_ms, "from": fmt_ms(self.from_ms), "to": fmt_ms(self.to_ms),
                "seconds": self.seconds, "market_rows": self.market_rows, "prediction_rows": self.prediction_rows,
                "elapsed_s": round(self.elapsed_s, 3), "chunks": self.chunks, "raw_rows_read": self.raw_rows_read,
                "late_seconds_corrected": self.late_seconds_corrected, "late_rows_corrected": self.late_rows_corrected,
                "nulls": self.nulls}


def rebuild(db_path: str | Path, from_ms: int, to_ms: int, settings: Settings | None = None, *,
            params: FeatureParams | None = None, chunk_s: int | None = None,
            progress: Callable[[RebuildStats], None] | None = None) -> RebuildStats:
    """Recompute market_1s and predictions for every bar in [from_ms, to_ms] (rounded
    inward to whole seconds) from the raw tables, replacing the rows there.

    Chunked: each chunk is read in bounded statements and written in one short
    transaction (DELETE the chunk's seconds, INSERT, mark late rows corrected), so
    services keep writing meanwhile. `bin/cqt synth` and `--rebuild` call this."""
    if params is None:
        params = params_from_settings(settings) if settings is not None else FeatureParams()
    if chunk_s is None:
        chunk_s = settings.get_int("CQT_AGGREGATE_CHUNK_S", 3600, minimum=1, maximum=86_400) if settings is not None else 3600
    lo, hi = ceil_s(from_ms), floor_s(to_ms)
    stats = RebuildStats(lo, hi)
    if hi < lo:
        return stats
    started = time.monotonic()
    conn = open_db(db_path)
    cache = SecondCache()
    try:
        a = lo
        while a <= hi:
            b = min(hi, a + (chunk_s - 1) * SECOND_MS)
            res = compute_range(conn, a, b, params, cache=cache)
            now = now_ms()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM market_1s WHERE ts_ms BETWEEN ? AND ?", (a, b))
                conn.execute("DELETE FROM predictions WHERE ts_ms BETWEEN ? AND ?", (a, b))
                n = _write_result(conn, res)
                cur = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(late_rows - corrected_rows), 0) FROM aggregate_late "
                    "WHERE ts_ms BETWEEN ? AND ? AND late_rows > corrected_rows", (a, b)).fetchone()
                conn.execute("UPDATE aggregate_late SET corrected_rows = late_rows, rebuilt_ts_ms = ? "
                             "WHERE ts_ms BETWEEN ? AND ? AND late_rows > corrected_rows", (now, a, b))
                conn.execute("COMMIT")
            except BaseException:
                _rollback_quietly(conn)
                raise
            stats.seconds += n
            stats.market_rows += n
            stats.prediction_rows += n
            stats.chunks += 1
            stats.raw_rows_read += res.rows_read
            stats.late_seconds_corrected += cur[0]
            stats.late_rows_corrected += cur[1]
            _add_nulls(stats.nulls, res)
            stats.elapsed_s = time.monotonic() - started
            if progress:
                progress(stats)
            a = b + SECOND_MS
    finally:
        conn.close()
    stats.elapsed_s = time.monotonic() - started
    return stats


def _rollback_quietly(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is still open. SQLite already rolled back after e.g. a full disk, and a
    second error ("cannot rollback") must not hide the first."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def data_range(conn: sqlite3.Connection, params: FeatureParams) -> tuple[int, int] | None:
    """(first, last) bar time holding a row of any stream source the features read (Upbit trades and book,
    KRW-USDT trades, Binance aggTrades, mark price, liquidations), or None without such rows.

    Polled series and Coinglass bars only carry values into those bars, so alone they make no bar.
    Two index lookups per source."""
    first: int | None = None
    last: int | None = None
    for source in STREAM_SOURCES:
        table, key_col, key = stream_table(source, params)
        col = timerule.rule(table).time_col     # = availability for a stream row
        row = conn.execute(f"SELECT (SELECT {col} FROM {table} WHERE {key_col} = ? ORDER BY {col} LIMIT 1), "
                           f"(SELECT {col} FROM {table} WHERE {key_col} = ? ORDER BY {col} DESC LIMIT 1)",
                           (key, key)).fetchone()
        if row[0] is None:
            continue
        first = int(row[0]) if first is None else min(first, int(row[0]))
        last = int(row[1]) if last is None else max(last, int(row[1]))
    return None if first is None or last is None else (ceil_s(first), ceil_s(last))


def clamp_to_data(conn: sqlite3.Connection, from_ms: int, to_ms: int, params: FeatureParams,
                  now: int) -> tuple[int, int] | None:
    """[from, to] cut to the bars that can hold data: from the first raw row's bar to the later of the
    last raw row's bar and the last bar already written, never past the last complete second.
    None when nothing of [from, to] is left (no bar is written for a span without data)."""
    span = data_range(conn, params)
    if span is None:
        return None
    written = conn.execute("SELECT MAX(ts_ms) FROM market_1s").fetchone()[0]
    last = max(span[1], int(written)) if written is not None else span[1]
    lo = max(ceil_s(from_ms), span[0])
    hi = min(floor_s(to_ms), last, floor_s(now))
    return (lo, hi) if lo <= hi else None


# ------------------------------------------------------------------------------ live
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


class LiveAggregator:
    """The service's logic, apart from the process plumbing (testable under freezegun).

    `write(fn)` runs fn(conn) inside a write transaction (the service passes
    svc.writer.call, so rows commit in queue order through the batched writer).

    Each step reads one consistent snapshot of the database (a short read transaction):
    the per-second cache (cqt.features.SecondCache) is first checked against it — one
    indexed COUNT(*) per stream source over the cached span; a source that changed is
    reloaded — so a live row is always what the data in the database at that moment
    gives (what a rebuild would give if nothing more arrived). Every count read (cache
    loads, reloads, the periodic scan of the late window) goes through a CountLedger
    per source; a second whose count grew after it was written has late rows: counted
    in `aggregate_late` and logged with the `--rebuild` command that corrects them."""

    def __init__(self, db_path: str | Path, cfg: AggregateConfig, write: Callable[[Callable[[sqlite3.Connection], Any]], None],
                 *, clock: Callable[[], int] = now_ms, started_ms: int | None = None,
                 sync: Callable[[float], Any] | None = None):
        self.db_path = Path(db_path)
        self.cfg = cfg
        self.write = write
        self.sync = sync                           # wait until what write() queued is committed (svc.writer.flush)
        self.clock = clock
        self.started_ms = clock() if started_ms is None else started_ms
        self.conn = connect(self.db_path, readonly=True)
        self.cache = SecondCache(on_load=self._on_load)
        self.ledgers = {s: CountLedger() for s in STREAM_SOURCES}
        self.last_written: int | None = None
        self.written_from: int | None = None      # first second of the stretch this process wrote (or restored)
        self.rows_written = 0
        self.skipped_s = 0
        self.catching_up = False
        self.nulls: dict[str, dict[str, int]] = {}
        self.late: dict[str, int] = {}             # aggregate_late totals (all processes), by source
        self.late_seen: dict[str, int] = {}        # late rows this process detected, by source
        self._late_new: dict[tuple[str, int], int] = {}       # detected, not yet written
        self._late_unlogged: dict[tuple[str, int], int] = {}  # written, not yet logged
        self._late_logged_ms: int | None = None
        self._late_queued = False                  # late rows queued for writing since the last totals
        self._step_ms: deque[float] = deque(maxlen=600)
        self._last_scan_ms: int | None = None
        self._written_at: deque[tuple[int, int, int]] = deque()   # (first bar, last bar, wall ms) per step
        self._reported: dict[tuple[str, int], int] = {}           # Coinglass late bars already logged

    def close(self) -> None:
        if self._late_unlogged:
            self._late_logged_ms = None
            self._flush_late()
        self.conn.close()

    def target(self, now: int | None = None) -> int:
        """The newest bar that is complete after the grace delay."""
        now = self.clock() if now is None else now
        return floor_s(now - self.cfg.grace_ms)

    # -- start ---------------------------------------------------------------------------------
    def start_blockers(self) -> list[str]:
        """On a first start (empty market_1s): what the collectors have not delivered yet —
        an initial backfill still running (`gaps` rows with reason 'initial', still open),
        no Upbit trade, no Binance aggTrade. Empty = go (and always once market_1s has rows)."""
        if self.conn.execute("SELECT 1 FROM market_1s LIMIT 1").fetchone():
            return []
        p = self.cfg.params
        out = []
        try:
            streams = sorted({r[0] for r in self.conn.execute(
                "SELECT stream FROM gaps WHERE status = 'open' AND reason = 'initial'")})
        except sqlite3.OperationalError:        # a schema without gaps.reason (no collectors' migration)
            streams = []
        if streams:
            out.append("the initial backfill of " + ", ".join(streams))
        if not self.conn.execute("SELECT 1 FROM upbit_trades WHERE code = ? LIMIT 1", (p.upbit_code,)).fetchone():
            out.append(f"Upbit {p.upbit_code} trades")
        if not self.conn.execute("SELECT 1 FROM binance_agg_trades WHERE symbol = ? LIMIT 1",
                                 (p.binance_symbol,)).fetchone():
            out.append(f"Binance {p.binance_symbol} aggTrades")
        return out

    def start(self) -> None:
        """Resume after the last written second, or on a first start from the first
        Upbit trade within the catch-up bound (else from now)."""
        row = self.conn.execute("SELECT MAX(ts_ms) FROM market_1s").fetchone()
        target = self.target()
        if row and row[0] is not None:
            self.last_written = int(row[0])
            behind = (target - self.last_written) // SECOND_MS
            log.info("resuming after %s behind_s=%d", fmt_ms(self.last_written), max(0, behind))
            self._restore_ledger()
            self._late_while_stopped()
            return
        lo = target - self.cfg.max_catchup_ms
        av = timerule.availability_sql("upbit_trades")
        first = self.conn.execute(f"SELECT MIN({av}) FROM upbit_trades WHERE code = ? AND {av} > ? AND {av} <= ?",
                                  (self.cfg.params.upbit_code, lo, target)).fetchone()[0]
        start = ceil_s(first) if first is not None else target
        self.last_written = start - SECOND_MS
        log.info("first start: writing from %s (%s)", fmt_ms(start),
                 "first Upbit trade" if first is not None else "no Upbit trades yet")

    def _restore_ledger(self) -> None:
        """After a restart: the Upbit KRW-BTC row counts of the seconds already written come
        from market_1s.trade_count (plus the late rows already counted for them), so a
        trade that landed while the service was stopped is still found late."""
        assert self.last_written is not None
        lo = self.last_written - self.cfg.late_window_ms
        counts = self.conn.execute("SELECT ts_ms, trade_count FROM market_1s WHERE ts_ms > ? ORDER BY ts_ms DESC",
                                   (lo,)).fetchall()
        first = self.last_written + SECOND_MS
        for ts, _ in counts:                 # the contiguous stretch ending at the last written second
            if ts != first - SECOND_MS:
                break
            first = ts
        counted = dict(self.conn.execute(
            "SELECT ts_ms, late_rows - corrected_rows FROM aggregate_late WHERE source = ? AND ts_ms >= ? "
            "AND ts_ms <= ? AND late_rows > corrected_rows", (LATE_SOURCE["upbit"], first, self.last_written)))
        n = {ts: k + counted.get(ts, 0) for ts, k in counts if ts >= first}
        self.ledgers["upbit"].observe(first - SECOND_MS, self.last_written, [k for k in n if n[k]],
                                      [v for v in n.values() if v])
        self.written_from = first

    def _late_while_stopped(self) -> None:
        """Rows of the other stream sources that reached the database after the previous
        run of the service stopped, for seconds it had written: late (recv_ts_ms after its
        stop, or its last heartbeat if it was killed). Once, at start; bounded by the late window."""
        assert self.last_written is not None
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
        p = self.cfg.params
        lo = self.last_written - self.cfg.late_window_ms
        for source in STREAM_SOURCES:
            if source == "upbit":            # counted exactly against market_1s.trade_count
                continue
            table, key_col, key = stream_table(source, p)
            col = timerule.rule(table).time_col
            for sec, k in self.conn.execute(
                    f"SELECT (({col} + 999) / 1000) * 1000 AS b, COUNT(*) FROM {table} WHERE {key_col} = ? "
                    f"AND {col} > ? AND {col} <= ? AND recv_ts_ms > ? GROUP BY b", (key, lo, self.last_written, stopped)):
                self._add_late(source, int(sec), int(k))

    # -- steps ---------------------------------------------------------------------------------
    def pending(self, now: int | None = None) -> tuple[int, int] | None:
        """The next range of bars to write now (bounded by the catch-up step), or None."""
        if self.last_written is None:
            self.start()
        target = self.target(now)
        assert self.last_written is not None
        if target <= self.last_written:
            self.catching_up = False
            return None
        if target - self.last_written > self.cfg.max_catchup_ms:
            skip_from = self.last_written + SECOND_MS
            new_last = target - self.cfg.max_catchup_ms
            skipped = (new_last - self.last_written) // SECOND_MS
            self.skipped_s += skipped
            log.warning("catch-up bounded to CQT_AGGREGATE_MAX_CATCHUP_S=%d: skipping %d s; to fill them run "
                        "bin/cqt-aggregate --rebuild --from %d --to %d", self.cfg.max_catchup_ms // SECOND_MS,
                        skipped, skip_from, new_last)
            self.last_written = new_last
            self.written_from = None
        start = self.last_written + SECOND_MS
        end = min(target, start + (self.cfg.catchup_step_s - 1) * SECOND_MS)
        self.catching_up = end < target
        return start, end

    def step(self, now: int | None = None) -> int:
        """Compute and queue the rows that are due now; returns the number of seconds."""
        rng = self.pending(now)
        if rng is None:
            return 0
        a, b = rng
        t = time.monotonic()
        read_wall = self.clock()       # rows committed after this are not in these seconds
        self.conn.execute("BEGIN")     # one snapshot: the cache check and the new rows agree
        try:
            for source in self.cache.validate(self.conn, self.cfg.params):
                # rows landed in the cached span (a backfill?): count the whole late window now,
                # so one log line names the whole range; the next get() reloads the span
                self._scan_ledger(source, self.last_written - self.cfg.late_window_ms, self.last_written)
            res = compute_range(self.conn, a, b, self.cfg.params, cache=self.cache)
        finally:
            self.conn.execute("COMMIT")
        market, preds = res.market_rows(), res.prediction_rows()

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(MARKET_SQL, market)
            conn.executemany(PREDICTIONS_SQL, preds)

        self.write(write)
        self._step_ms.append((time.monotonic() - t) * 1000)
        self._written_at.append((a, b, read_wall))
        while self._written_at and self._written_at[0][1] < b - self.cfg.late_window_ms:
            self._written_at.popleft()
        if self.written_from is None:
            self.written_from = a
        self.last_written = b
        self.rows_written += len(market)
        _add_nulls(self.nulls, res)
        if b - a >= 60 * SECOND_MS:
            log.info("caught up %s..%s seconds=%d", fmt_ms(a), fmt_ms(b), len(market))
        self._flush_late()
        return len(market)

    # -- late data -----------------------------------------------------------------------------
    def _on_load(self, source: str, lo: int, hi: int, data: dict[str, Any]) -> None:
        """SecondCache read rows of `source` in (lo, hi]: compare with the ledger."""
        for sec, d in self.ledgers[source].observe(lo, hi, data["b"], data["n"]):
            if d > 0:
                self._add_late(source, sec, d)

    def _add_late(self, source: str, sec: int, rows: int) -> None:
        """`rows` rows of `source` landed in second `sec` after it was written (only seconds
        this process wrote, or restored, count: earlier ones were not written live)."""
        if self.written_from is None or self.last_written is None or not self.written_from <= sec <= self.last_written:
            return
        key = (LATE_SOURCE[source], sec)
        self._late_new[key] = self._late_new.get(key, 0) + rows

    def _flush_late(self, now: int | None = None) -> None:
        """Write the late rows detected since the last call; log them (at most every
        10 s, with the --rebuild command for the affected range)."""
        now = self.clock() if now is None else now
        if self._late_new:
            rows = [(src, sec, n, now, now) for (src, sec), n in sorted(self._late_new.items())]
            self.write(lambda conn: conn.executemany(LATE_ADD_SQL, rows))
            for (src, sec), n in self._late_new.items():
                self.late_seen[src] = self.late_seen.get(src, 0) + n
                self._late_unlogged[(src, sec)] = self._late_unlogged.get((src, sec), 0) + n
                self.late[f"{src}_total"] = self.late.get(f"{src}_total", 0) + n
                self.late[f"{src}_pending"] = self.late.get(f"{src}_pending", 0) + n
            self._late_new = {}
            self._late_queued = True
        if self._late_unlogged and (self._late_logged_ms is None or now - self._late_logged_ms >= self.cfg.late_log_ms):
            self._late_logged_ms = now
            items = self._late_unlogged
            self._late_unlogged = {}
            lb = {LATE_SOURCE[s]: lookback_ms(s, self.cfg.params) for s in STREAM_SOURCES}
            first = min(sec for _, sec in items)
            last = max(sec + lb.get(src, 0) for src, sec in items)
            to = min(last, self.last_written) if self.last_written is not None else last
            log.warning("late data: %d rows landed after their second was written, in %d seconds (%s), first %s; "
                        "rows computed since include them, the rows written before stay what was known live; "
                        "bin/cqt-aggregate --rebuild --from %d --to %d corrects them",
                        sum(items.values()), len({sec for _, sec in items}), ",".join(sorted({s for s, _ in items})),
                        fmt_ms(first), first, to)

    def scan_due(self, now: int | None = None) -> bool:
        now = self.clock() if now is None else now
        return self._last_scan_ms is None or now - self._last_scan_ms >= self.cfg.late_scan_ms

    def scan_late(self, now: int | None = None) -> dict[str, int]:
        """Every CQT_AGGREGATE_LATE_SCAN_S: count the rows of every stream source over the
        written seconds of the late window against the ledger (one indexed COUNT(*) per
        source; per-second counts only where it differs), and Coinglass bars received after
        this process wrote the second they became available. Returns the totals."""
        now = self.clock() if now is None else now
        self._last_scan_ms = now
        if self.last_written is None:
            return self.late
        p = self.cfg.params
        hi = self.last_written
        lo = hi - self.cfg.late_window_ms
        self._reported = {k: v for k, v in self._reported.items() if k[1] > lo}
        polled: list[tuple] = []
        self.conn.execute("BEGIN")
        try:
            for source, led in self.ledgers.items():
                led.prune(lo)
                self._scan_ledger(source, lo, hi)
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
            self.write(lambda conn: conn.executemany(LATE_ROWS_SQL, [(t, sec, n, now, now) for t, sec, n in polled]))
            new = [(src, sec, n) for src, sec, n in polled if self._reported.get((src, sec), 0) < n]
            for src, sec, n in new:
                self._reported[(src, sec)] = n
            if new:
                log.warning("late data: %d Coinglass bars received after the second of their availability was "
                            "written (%s), first %s; raise CQT_COINGLASS_DELAY_S if this is routine; "
                            "bin/cqt-aggregate --rebuild --from %d --to %d corrects them",
                            sum(n for _, _, n in new), ",".join(sorted({x[0] for x in new})),
                            fmt_ms(min(x[1] for x in new)), min(x[1] for x in new), hi)
        self._flush_late(now)
        if self._late_queued and self.sync is not None:
            self.sync(2.0)               # the totals below include what was just queued
        self._late_queued = False
        totals = self.conn.execute(
            "SELECT source, SUM(late_rows), SUM(late_rows - corrected_rows) FROM aggregate_late GROUP BY source").fetchall()
        self.late = {}
        for src, tot, pend in totals:
            self.late[f"{src}_total"] = int(tot)
            self.late[f"{src}_pending"] = int(pend)
        return self.late

    def _scan_ledger(self, source: str, lo: int, hi: int) -> None:
        """Compare the rows of `source` in (lo, hi] ∩ the ledger's range with the ledger:
        one indexed COUNT(*); per-second counts only when it differs."""
        led = self.ledgers[source]
        if led.lo is None or led.hi is None:
            return
        a, b = max(led.lo, lo), min(led.hi, hi)
        p = self.cfg.params
        if b > a and count_rows(self.conn, source, p, a, b) != led.total(a, b):
            secs, counts = count_by_second(self.conn, source, p, a, b)
            for sec, d in led.observe(a, b, secs, counts):
                if d > 0:
                    self._add_late(source, sec, d)

    def _wall_written(self, bar: int) -> int | None:
        """When this process wrote `bar` (wall ms), if it did within the late window."""
        for a, b, wall in self._written_at:
            if a <= bar <= b:
                return wall
        return None

    def detail(self) -> dict[str, Any]:
        now = self.clock()
        steps = sorted(self._step_ms)
        nulls = self.nulls.get("predictions", {})
        return {
            "last_bar_ts_ms": self.last_written,
            "last_bar": fmt_ms(self.last_written),
            "lag_ms": None if self.last_written is None else now - self.last_written,
            "rows_written": self.rows_written,
            "catching_up": self.catching_up,
            "skipped_s": self.skipped_s,
            "late": dict(self.late),
            "late_seen": dict(self.late_seen),
            "cache_reloads": self.cache.reloads,
            "null_features": dict(sorted(nulls.items(), key=lambda kv: -kv[1])[:8]),
            "step_ms_p50": round(steps[len(steps) // 2], 2) if steps else None,
            "step_ms_max": round(steps[-1], 2) if steps else None,
        }

    def sleep_s(self, now: int | None = None) -> float:
        """Seconds until the next bar is due (next whole second + grace), at most 1 s."""
        if self.catching_up:
            return 0.0
        now = self.clock() if now is None else now
        nxt = (self.last_written or floor_s(now)) + SECOND_MS + self.cfg.grace_ms + 20
        return min(1.0, max(0.02, (nxt - now) / 1000.0))


def _wait_for_collectors(svc: Any, agg: LiveAggregator, cfg: AggregateConfig) -> None:
    """First start only: wait (at most CQT_AGGREGATE_START_WAIT_S) until the collectors'
    data is there, so the catch-up and the first live rows include their start-up backfill
    instead of counting it late. Never blocks a restart, never waits without bound."""
    if cfg.start_wait_ms <= 0:
        return
    reasons = agg.start_blockers()
    if not reasons:
        return
    t0 = time.monotonic()
    limit = cfg.start_wait_ms / 1000
    log.info("first start: waiting up to %.0f s for %s", limit, "; ".join(reasons))
    while reasons and not svc.stopping.is_set() and time.monotonic() - t0 < limit:
        svc.alive()
        svc.set_state("waiting", "waiting for " + "; ".join(reasons))
        svc.sleep(0.5)
        reasons = agg.start_blockers()
    if reasons and not svc.stopping.is_set():
        log.warning("first start: still no %s after %.0f s (CQT_AGGREGATE_START_WAIT_S); starting: rows that "
                    "arrive for seconds already written are counted late", "; ".join(reasons), limit)
    elif not reasons:
        log.info("first start: the collectors' data is there after %.1f s", time.monotonic() - t0)


def _serve(svc: Any, cfg: AggregateConfig, holder: dict[str, Any]) -> int:
    agg = LiveAggregator(svc.settings.db, cfg, svc.writer.call, started_ms=svc.started_ms, sync=svc.writer.flush)
    holder["agg"] = agg
    try:
        svc.ready(f"aggregating grace={cfg.grace_ms}ms")
        _wait_for_collectors(svc, agg, cfg)
        if svc.stopping.is_set():
            return exitcodes.OK
        agg.start()
        errors = 0
        while not svc.stopping.is_set():
            svc.alive()
            try:
                n = agg.step()
                if n:
                    svc.count("market_1s", rows=n)
                    svc.count("predictions", rows=n)
                if agg.scan_due():
                    agg.scan_late()
                errors = 0
            except sqlite3.OperationalError as exc:
                if is_fatal_io(exc):
                    raise
                errors += 1
                log.warning("database read failed (attempt %d), retrying in 1 s: %s", errors, exc)
                svc.set_state("error", f"read failed: {exc}")
                svc.sleep(1.0)
                continue
            lag = agg.target() - (agg.last_written or 0)
            svc.set_state("running", f"catching up {lag // 1000} s" if agg.catching_up
                          else f"writing {fmt_ms(agg.last_written)}")
            if agg.catching_up:
                continue
            svc.sleep(agg.sleep_s())
    finally:
        agg.close()
    return exitcodes.OK


# ------------------------------------------------------------------------------ CLI
class RebuildTooLong(Exception):
    """The span to rebuild, already cut to the data, is longer than CQT_AGGREGATE_MAX_REBUILD_S."""


def _is_storage_error(exc: BaseException) -> bool:
    """Full disk, read-only file system, I/O error, a database file that cannot be opened: exit 74."""
    if isinstance(exc, OSError):
        return True
    return is_fatal_io(exc) or "unable to open database" in str(exc).lower()


def _rebuild_within_data(settings: Settings, cfg: AggregateConfig, from_ms: int, to_ms: int,
                         progress: Callable[[RebuildStats], None]) -> RebuildStats:
    """`rebuild` over [from, to] cut to the data's own range (logged when cut), refused beyond the bound."""
    conn = open_db(settings.db)
    try:
        span = clamp_to_data(conn, from_ms, to_ms, cfg.params, now_ms())
    finally:
        conn.close()
    if span is None:
        log.info("nothing to rebuild: no raw data in %s .. %s; nothing written", fmt_ms(from_ms), fmt_ms(to_ms))
        return RebuildStats(ceil_s(from_ms), floor_s(to_ms))
    lo, hi = span
    if (lo, hi) != (ceil_s(from_ms), floor_s(to_ms)):
        log.info("rebuild range cut to the data: %s .. %s (asked %s .. %s)", fmt_ms(lo), fmt_ms(hi),
                 fmt_ms(from_ms), fmt_ms(to_ms))
    seconds = (hi - lo) // SECOND_MS + 1
    if seconds > cfg.max_rebuild_s:
        raise RebuildTooLong(f"the range {fmt_ms(lo)} .. {fmt_ms(hi)} holds {seconds} seconds of data, more than "
                             f"CQT_AGGREGATE_MAX_REBUILD_S={cfg.max_rebuild_s}: rebuild it in parts")
    return rebuild(settings.db, lo, hi, settings, params=cfg.params, chunk_s=cfg.chunk_s, progress=progress)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rebuild", "do_rebuild", is_flag=True, help="Recompute [--from, --to] from the raw tables, replacing rows, and exit.")
@click.option("--from", "from_ms", metavar="T", type=TIME,
              help="First bar time (the second's end), ISO-8601 (UTC if no zone) or epoch ms; inclusive.")
@click.option("--to", "to_ms", metavar="T", type=TIME, help="Last bar time, inclusive.")
@click.option("--db", type=click.Path(dir_okay=False), help="Database file (default: CQT_DB).")
@click.option("--json", "as_json", is_flag=True, help="With --rebuild: print the summary as JSON.")
def main(do_rebuild: bool, from_ms: int | None, to_ms: int | None, db: str | None, as_json: bool) -> None:
    """Per-second market bars (market_1s) and causal feature vectors (predictions).

    Without --rebuild: the service. Every second it writes the bars that are complete
    after the grace delay (CQT_AGGREGATE_GRACE_S), catching up after a restart
    (at most CQT_AGGREGATE_MAX_CATCHUP_S). See docs/aggregate.md.
    """
    from .runtime import load_settings_or_exit, run_service, setup_logging

    if not do_rebuild and (from_ms is not None or to_ms is not None):
        raise click.UsageError("--from/--to only go with --rebuild")
    if do_rebuild and (from_ms is None or to_ms is None):
        raise click.UsageError("--rebuild needs --from and --to")
    if do_rebuild and from_ms > to_ms:  # type: ignore[operator]
        raise click.UsageError("--from is after --to")
    settings = load_settings_or_exit(db=db)
    try:
        cfg = config_from_settings(settings)
    except (ConfigError, ValueError) as exc:
        print(f"cqt-aggregate: {exc}", file=sys.stderr)
        sys.exit(exitcodes.CONFIG)
    if not do_rebuild:
        holder: dict[str, Any] = {}
        sys.exit(run_service(SERVICE, lambda svc: _serve(svc, cfg, holder), settings,
                             detail=lambda: holder["agg"].detail() if "agg" in holder else {}))

    if not Path(settings.db).exists():
        print(f"cqt-aggregate: database not found: {settings.db}", file=sys.stderr)
        sys.exit(exitcodes.NOEVAL)
    setup_logging(SERVICE, settings.log_level, settings.secrets)

    def progress(st: RebuildStats) -> None:
        log.info("rebuilt through %s seconds=%d elapsed_s=%.1f", fmt_ms(min(st.to_ms, st.from_ms + st.seconds * 1000 - 1000)),
                 st.seconds, st.elapsed_s)

    try:
        st = _rebuild_within_data(settings, cfg, from_ms, to_ms, progress)  # type: ignore[arg-type]
    except DatabaseMissing as exc:
        print(f"cqt-aggregate: {exc}", file=sys.stderr)
        sys.exit(exitcodes.NOEVAL)
    except RebuildTooLong as exc:
        print(f"cqt-aggregate: {exc}", file=sys.stderr)
        sys.exit(exitcodes.USAGE)
    except (sqlite3.Error, OSError) as exc:
        print(f"cqt-aggregate: rebuild failed: {exc}", file=sys.stderr)
        sys.exit(exitcodes.IOERR if _is_storage_error(exc) else exitcodes.FAIL)
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback
        log.debug("rebuild failed", exc_info=True)
        print(f"cqt-aggregate: rebuild failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(exitcodes.FAIL)
    if as_json:
        print(json.dumps(st.as_dict(), sort_keys=True))
    else:
        nulls = st.nulls.get("predictions", {})
        worst = ", ".join(f"{c}={n}" for c, n in sorted(nulls.items(), key=lambda kv: -kv[1])[:6]) or "none"
        print(f"rebuilt {st.seconds} seconds {fmt_ms(st.from_ms)} .. {fmt_ms(st.to_ms)} in {st.elapsed_s:.1f} s: "
              f"market_1s {st.market_rows} rows, predictions {st.prediction_rows} rows; "
              f"NULL features (look-back before data or stale source): {worst}; "
              f"late seconds corrected: {st.late_seconds_corrected} ({st.late_rows_corrected} rows)")
    sys.exit(exitcodes.OK)
