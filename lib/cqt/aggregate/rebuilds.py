"""The rebuild: recompute [from, to] (bar times, both inclusive) of one or more assets from
the raw tables in chunks, replacing that asset's rows there, each chunk in its own short
write transaction, and marking the asset's late rows of the range corrected. `rebuild()` is
also the path of `bin/cqt synth`. `rebuild_within_data()` (the `--rebuild` CLI) first cuts
[from, to] to each asset's own data range (`clamp_to_data`: no bar before the asset's first
stream row, after its last one or its last written bar, or after now) and refuses a span
longer than CQT_AGGREGATE_MAX_REBUILD_S; an asset without data in the range is skipped."""
from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .. import timerule
from ..db import open_db
from ..featureparams import STREAM_SOURCES, FeatureParams, params_for
from ..features import compute_range
from ..rawread import SecondCache, stream_table
from ..timeutil import fmt_ms, now_ms
from .bars import SECOND_MS, add_nulls, ceil_s, floor_s, write_result
from .config import AggregateConfig, chunk_s_from

log = logging.getLogger("cqt.aggregate")


@dataclass
class RebuildStats:
    """What a rebuild did: for one asset (`symbol`), or the sum over several (`symbol` None;
    `symbols` holds each asset's own; `seconds` = bars written over all assets)."""
    from_ms: int
    to_ms: int
    symbol: str | None = None
    seconds: int = 0
    market_rows: int = 0
    prediction_rows: int = 0
    elapsed_s: float = 0.0
    chunks: int = 0
    raw_rows_read: int = 0
    late_seconds_corrected: int = 0
    late_rows_corrected: int = 0
    nulls: dict[str, dict[str, int]] = field(default_factory=dict)
    symbols: dict[str, RebuildStats] = field(default_factory=dict)

    def add(self, st: RebuildStats) -> None:
        """Count one asset's rebuild into this total."""
        assert st.symbol is not None
        self.symbols[st.symbol] = st
        for name in ("seconds", "market_rows", "prediction_rows", "chunks", "raw_rows_read",
                     "late_seconds_corrected", "late_rows_corrected"):
            setattr(self, name, getattr(self, name) + getattr(st, name))
        for table, cols in st.nulls.items():
            t = self.nulls.setdefault(table, {})
            for c, n in cols.items():
                t[c] = t.get(c, 0) + n

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "from_ms": self.from_ms, "to_ms": self.to_ms, "from": fmt_ms(self.from_ms), "to": fmt_ms(self.to_ms),
            "seconds": self.seconds, "market_rows": self.market_rows, "prediction_rows": self.prediction_rows,
            "elapsed_s": round(self.elapsed_s, 3), "chunks": self.chunks, "raw_rows_read": self.raw_rows_read,
            "late_seconds_corrected": self.late_seconds_corrected, "late_rows_corrected": self.late_rows_corrected,
            "nulls": self.nulls}
        if self.symbol is not None:
            out["symbol"] = self.symbol
        else:
            out["symbols"] = {s: st.as_dict() for s, st in self.symbols.items()}
        return out


def assets_of(settings: Any, params: FeatureParams | Sequence[FeatureParams] | None) -> tuple[FeatureParams, ...]:
    """The assets to rebuild: `params` (one or several), else every asset of `settings`, else BTC."""
    if isinstance(params, FeatureParams):
        return (params,)
    if params is not None:
        return tuple(params)
    if settings is not None:
        return tuple(params_for(settings, a) for a in settings.assets)
    return (FeatureParams(),)


def rebuild(db_path: str | Path, from_ms: int, to_ms: int, settings: Any = None, *,
            params: FeatureParams | Sequence[FeatureParams] | None = None, chunk_s: int | None = None,
            progress: Callable[[RebuildStats], None] | None = None) -> RebuildStats:
    """Recompute market_1s and predictions for every bar in [from_ms, to_ms] (rounded
    inward to whole seconds) from the raw tables, replacing the rows there, for each asset
    of `params` (default: every asset of `settings`), one after the other.

    Chunked: each chunk is read in bounded statements and written in one short
    transaction (DELETE the asset's rows of the chunk's seconds, INSERT, mark its late rows
    corrected), so services keep writing meanwhile. `bin/cqt synth` and `--rebuild` call this.
    Returns the total; each asset's own stats are in `.symbols`."""
    assets = assets_of(settings, params)
    if chunk_s is None:
        chunk_s = chunk_s_from(settings) if settings is not None else AggregateConfig.chunk_s
    total = RebuildStats(ceil_s(from_ms), floor_s(to_ms))
    started = time.monotonic()
    for p in assets:
        total.add(rebuild_asset(db_path, from_ms, to_ms, p, chunk_s=chunk_s, progress=progress))
    total.elapsed_s = time.monotonic() - started
    return total


def rebuild_asset(db_path: str | Path, from_ms: int, to_ms: int, params: FeatureParams, *, chunk_s: int,
                  progress: Callable[[RebuildStats], None] | None = None) -> RebuildStats:
    """`rebuild` of one asset (`params.asset`): only its rows are deleted and written."""
    symbol = params.asset
    lo, hi = ceil_s(from_ms), floor_s(to_ms)
    stats = RebuildStats(lo, hi, symbol)
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
                conn.execute("DELETE FROM market_1s WHERE symbol = ? AND ts_ms BETWEEN ? AND ?", (symbol, a, b))
                conn.execute("DELETE FROM predictions WHERE symbol = ? AND ts_ms BETWEEN ? AND ?", (symbol, a, b))
                n = write_result(conn, res)
                cur = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(late_rows - corrected_rows), 0) FROM aggregate_late "
                    "WHERE symbol = ? AND ts_ms BETWEEN ? AND ? AND late_rows > corrected_rows",
                    (symbol, a, b)).fetchone()
                conn.execute("UPDATE aggregate_late SET corrected_rows = late_rows, rebuilt_ts_ms = ? "
                             "WHERE symbol = ? AND ts_ms BETWEEN ? AND ? AND late_rows > corrected_rows",
                             (now, symbol, a, b))
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
            add_nulls(stats.nulls, res)
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
    """(first, last) bar time holding a row of the asset's own stream sources (its Upbit trades and book,
    Binance aggTrades, mark price, liquidations), or None without such rows.

    KRW-USDT trades are shared by every asset and only carry the FX rate into its bars: alone they make
    no bar of an asset (else an asset without any data of its own would get bars wherever KRW-USDT has).

    Polled series and Coinglass bars only carry values into those bars, so alone they make no bar.
    Two index lookups per source."""
    first: int | None = None
    last: int | None = None
    for source in STREAM_SOURCES:
        if source == "usdt":
            continue
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
    """[from, to] cut to the bars of the asset that can hold data: from its first raw row's bar to the
    later of its last raw row's bar and its last bar already written, never past the last complete
    second. None when nothing of [from, to] is left (no bar is written for a span without data)."""
    span = data_range(conn, params)
    if span is None:
        return None
    written = conn.execute("SELECT MAX(ts_ms) FROM market_1s WHERE symbol = ?", (params.asset,)).fetchone()[0]
    last = max(span[1], int(written)) if written is not None else span[1]
    lo = max(ceil_s(from_ms), span[0])
    hi = min(floor_s(to_ms), last, floor_s(now))
    return (lo, hi) if lo <= hi else None


class RebuildTooLong(Exception):
    """The span to rebuild, already cut to the data, is longer than CQT_AGGREGATE_MAX_REBUILD_S."""


def rebuild_within_data(settings: Any, cfg: AggregateConfig, from_ms: int, to_ms: int,
                         progress: Callable[[RebuildStats], None]) -> RebuildStats:
    """`rebuild` of every asset of `cfg` over [from, to] cut to that asset's own data (logged when
    cut; an asset without data there is skipped), refused — before anything is written — when an
    asset's span is beyond the bound. The total's from/to are the union of the assets' spans."""
    conn = open_db(settings.db)
    try:
        now = now_ms()
        spans = {p.asset: (p, clamp_to_data(conn, from_ms, to_ms, p, now)) for p in cfg.assets}
    finally:
        conn.close()
    todo = [(p, span) for p, span in spans.values() if span is not None]
    for p, span in spans.values():
        if span is None:
            log.info("nothing to rebuild for %s: no raw data of it in %s .. %s; nothing written", p.asset,
                     fmt_ms(from_ms), fmt_ms(to_ms))
    if not todo:
        log.info("nothing to rebuild: no raw data in %s .. %s; nothing written", fmt_ms(from_ms), fmt_ms(to_ms))
        return RebuildStats(ceil_s(from_ms), floor_s(to_ms))
    for p, (lo, hi) in todo:
        if (lo, hi) != (ceil_s(from_ms), floor_s(to_ms)):
            log.info("rebuild range cut to the data: %s %s .. %s (asked %s .. %s)", p.asset, fmt_ms(lo), fmt_ms(hi),
                     fmt_ms(from_ms), fmt_ms(to_ms))
        seconds = (hi - lo) // SECOND_MS + 1
        if seconds > cfg.max_rebuild_s:
            raise RebuildTooLong(f"the range {fmt_ms(lo)} .. {fmt_ms(hi)} holds {seconds} seconds of {p.asset} data, "
                                 f"more than CQT_AGGREGATE_MAX_REBUILD_S={cfg.max_rebuild_s}: rebuild it in parts")
    total = RebuildStats(min(lo for _, (lo, _) in todo), max(hi for _, (_, hi) in todo))
    started = time.monotonic()
    for p, (lo, hi) in todo:
        total.add(rebuild_asset(settings.db, lo, hi, p, chunk_s=cfg.chunk_s, progress=progress))
    total.elapsed_s = time.monotonic() - started
    return total
