"""Raw rows read by their availability (cqt.timerule), reduced to per-second summaries.

    load_seeded(conn, source, params, lo, hi, seed_lo, truncate_ms)   # a stream source's buckets
    load_polled(conn, source, params, lo, hi, truncate_ms)            # a polled series' observations
    SecondCache()                                                     # the same buckets, kept between calls
    count_rows / count_by_second(conn, source, params, lo, hi)        # what the live service checks

A bucket b holds the rows with availability in (b-1 s, b]. Every statement is bounded
above by the range's end, so nothing here can read a row from after it, and every
statement filters by the asset of `params` (cqt.featureparams.FeatureParams): Upbit rows
by `code` (KRW-<asset>, or KRW-USDT, shared by every asset), Binance rows by `symbol`
(<asset>USDT), Coinglass bars by the coin (open interest) or the pair (funding). A row of
another asset is never read. The feature
function (cqt.features) is the only consumer of the summaries; the aggregate uses the
counts to see rows that land late.
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import timerule
from .featureparams import SECOND_MS, FeatureParams
from .timerule import PERIOD_MS


def _avail(table: str, params: FeatureParams, alias: str = "") -> str:
    """The availability expression every read uses (one place, from cqt.timerule)."""
    return timerule.availability_sql(table, params.cg_delay_s, alias)


def _trunc(table: str, params: FeatureParams, truncate_ms: int | None) -> tuple[str, tuple]:
    if truncate_ms is None:
        return "", ()
    return f" AND {_avail(table, params)} <= ?", (int(truncate_ms),)


_EMPTY_I = np.zeros(0, dtype=np.int64)


def _fetch(conn: sqlite3.Connection, sql: str, args: tuple, ncols: int) -> np.ndarray:
    rows = conn.execute(sql, args).fetchall()
    if not rows:
        return np.zeros((0, ncols), dtype=np.float64)
    return np.array(rows, dtype=np.float64).reshape(len(rows), ncols)


def _bucket(ts: np.ndarray) -> np.ndarray:
    """Bar time of an availability time: the end of the second (b-1 s, b] holding it."""
    return ((ts + (SECOND_MS - 1)) // SECOND_MS) * SECOND_MS


def _group_last(ts_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For rows sorted by time: (bucket of each group, first index, last index)."""
    b = _bucket(ts_sorted)
    if len(b) == 0:
        return _EMPTY_I, _EMPTY_I, _EMPTY_I
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])
    ends = np.r_[starts[1:] - 1, len(b) - 1]
    return b[starts], starts, ends


def _load_trades(conn: sqlite3.Connection, params: FeatureParams, code: str, lo: int, hi: int,
                 trunc: int | None, full: bool) -> dict[str, np.ndarray]:
    """Upbit trades of `code` available in (lo, hi], as per-second summaries. Order in a
    second: (trade_ts_ms, sequential_id) — sequential_id alone is not ordered (Upbit docs)."""
    av = _avail("upbit_trades", params)
    tsql, targs = _trunc("upbit_trades", params, trunc)
    a = _fetch(conn, f"SELECT trade_ts_ms, price, volume, side = 'buy' FROM upbit_trades "
                     f"WHERE code = ? AND {av} > ? AND {av} <= ?{tsql} ORDER BY trade_ts_ms, sequential_id",
               (code, lo, hi, *targs), 4)
    ts = a[:, 0].astype(np.int64)
    b, s, e = _group_last(ts)
    out = {"b": b, "ts": ts[e], "close": a[e, 1], "n": (e - s + 1).astype(np.int64)}
    if full:
        price, vol, buy = a[:, 1], a[:, 2], a[:, 3]
        if len(s) == 0:
            out.update({k: np.zeros(0) for k in ("open", "high", "low", "volume", "pv", "buy", "sell", "count")})
            return out
        # reduceat sums each second's trades left to right, in (trade_ts_ms, sequential_id) order
        out.update(open=price[s], high=np.maximum.reduceat(price, s), low=np.minimum.reduceat(price, s),
                   volume=np.add.reduceat(vol, s), pv=np.add.reduceat(price * vol, s),
                   buy=np.add.reduceat(vol * buy, s), sell=np.add.reduceat(vol * (1.0 - buy), s),
                   count=(e - s + 1).astype(np.float64))
    return out


def _load_last(conn: sqlite3.Connection, params: FeatureParams, table: str, key_col: str, key: str,
               cols: tuple[str, ...], lo: int, hi: int, trunc: int | None,
               order_col: str | None = None) -> dict[str, np.ndarray]:
    """The last row per second of a stream table (GROUP BY the bucket; MAX() of a unique
    column picks the row, SQLite's documented bare-column rule: exactly one min/max
    aggregate — COUNT(*) beside it does not change that), and the rows in the second."""
    av = _avail(table, params)
    tsql, targs = _trunc(table, params, trunc)
    pick = order_col or av
    a = _fetch(conn, f"SELECT (({av} + 999) / 1000) * 1000 AS b, MAX({pick}), {av}, COUNT(*), {', '.join(cols)} "
                     f"FROM {table} WHERE {key_col} = ? AND {av} > ? AND {av} <= ?{tsql} GROUP BY b ORDER BY b",
               (key, lo, hi, *targs), 4 + len(cols))
    out = {"b": a[:, 0].astype(np.int64), "ts": a[:, 2].astype(np.int64), "n": a[:, 3].astype(np.int64)}
    for i, c in enumerate(cols):
        out[c] = a[:, 4 + i]
    return out


def _load_liq(conn: sqlite3.Connection, params: FeatureParams, lo: int, hi: int,
              trunc: int | None) -> dict[str, np.ndarray]:
    """Binance forced-order notional (USDT) per second: average fill price x filled
    quantity, falling back to order price x order quantity."""
    av = _avail("binance_liquidations", params)
    tsql, targs = _trunc("binance_liquidations", params, trunc)
    a = _fetch(conn, f"SELECT (({av} + 999) / 1000) * 1000 AS b, MAX({av}), COUNT(*), "
                     f"SUM(COALESCE(NULLIF(avg_price, 0), price) * COALESCE(NULLIF(filled_qty, 0), qty)) "
                     f"FROM binance_liquidations WHERE symbol = ? AND {av} > ? AND {av} <= ?{tsql} "
                     f"GROUP BY b ORDER BY b", (params.binance_symbol, lo, hi, *targs), 4)
    return {"b": a[:, 0].astype(np.int64), "ts": a[:, 1].astype(np.int64), "n": a[:, 2].astype(np.int64),
            "notional": a[:, 3]}


def _load_stream(conn: sqlite3.Connection, source: str, params: FeatureParams, lo: int, hi: int,
                 trunc: int | None) -> dict[str, np.ndarray]:
    if source == "upbit":
        return _load_trades(conn, params, params.upbit_code, lo, hi, trunc, full=True)
    if source == "usdt":
        return _load_trades(conn, params, params.usdt_code, lo, hi, trunc, full=False)
    if source == "book":
        return _load_last(conn, params, "upbit_orderbook", "code", params.upbit_code,
                          ("best_bid", "best_ask", "total_bid_size", "total_ask_size"), lo, hi, trunc)
    if source == "binance":
        # the highest aggregate-trade id in the second = its last trade (ids increase in time)
        return _load_last(conn, params, "binance_agg_trades", "symbol", params.binance_symbol,
                          ("price",), lo, hi, trunc, order_col="agg_id")
    if source == "mark":
        return _load_last(conn, params, "binance_mark_price", "symbol", params.binance_symbol,
                          ("mark_price", "index_price", "funding_rate"), lo, hi, trunc)
    if source == "liq":
        return _load_liq(conn, params, lo, hi, trunc)
    raise ValueError(source)


def load_polled(conn: sqlite3.Connection, source: str, params: FeatureParams, lo: int, hi: int,
                 trunc: int | None) -> dict[str, np.ndarray]:
    """Polled rows observed in (lo, hi] and available by hi: obs (observation time: the
    row's own time), avail (cqt.timerule), values. Small tables: read fresh every call, so
    a row that arrives late is used from the moment it is there."""
    if source == "oi":
        table, obs, vals, where, args = ("binance_open_interest", "ts_ms", ("open_interest",),
                                         "symbol = ?", (params.binance_symbol,))
    elif source == "ls":
        table, obs, vals, where, args = ("binance_ratios", "ts_ms", ("value",),
                                         "kind = 'global_long_short' AND symbol = ? AND period = ?",
                                         (params.binance_symbol, params.ls_period))
    elif source == "cg_oi":
        table, obs, vals, where, args = ("coinglass_open_interest", "avail_ts_ms", ("open", "close"),
                                         "symbol = ? AND interval = ?", (params.cg_symbol, params.cg_interval))
    elif source == "cg_funding":
        table, obs, vals, where, args = ("coinglass_funding", "avail_ts_ms", ("close",),
                                         "exchange = ? AND symbol = ? AND interval = ?",
                                         (params.cg_exchange, params.cg_symbol_pair, params.cg_interval))
    else:
        raise ValueError(source)
    av = _avail(table, params)
    tsql, targs = _trunc(table, params, trunc)
    if source in ("cg_oi", "cg_funding"):
        osql, oargs = coinglass_open_range(params, lo, hi)
        tsql, targs = osql + tsql, (*oargs, *targs)
    # time_col <= hi: the index-friendly pre-filter of "available by hi" (availability >= time_col)
    a = _fetch(conn, f"SELECT {obs}, {av}, {', '.join(vals)} FROM {table} WHERE {where} "
                     f"AND {obs} > ? AND {timerule.rule(table).time_col} <= ? AND {av} <= ?{tsql}",
               (*args, lo, hi, hi, *targs), 2 + len(vals))
    out = {"obs": a[:, 0].astype(np.int64), "avail": a[:, 1].astype(np.int64)}
    for i, c in enumerate(vals):
        out[c] = a[:, 2 + i]
    return out


def coinglass_open_range(params: FeatureParams, lo: int, hi: int) -> tuple[str, tuple[int, int]]:
    """A primary-key range for Coinglass bars whose close (avail_ts_ms) is in (lo, hi]:
    the bar opened at most two intervals before its close. Without it SQLite walks every
    bar of the (symbol, interval) key: the PK prefix wins over the avail_ts_ms index."""
    return " AND open_ts_ms > ? AND open_ts_ms <= ?", (int(lo) - 2 * PERIOD_MS[params.cg_interval], int(hi))


def stream_table(source: str, params: FeatureParams) -> tuple[str, str, str]:
    """(raw table, key column, key value) of a stream source. A stream row's availability
    is its table's indexed time column (cqt.timerule), so every range below is an index range."""
    return {
        "upbit": ("upbit_trades", "code", params.upbit_code), "usdt": ("upbit_trades", "code", params.usdt_code),
        "book": ("upbit_orderbook", "code", params.upbit_code),
        "binance": ("binance_agg_trades", "symbol", params.binance_symbol),
        "mark": ("binance_mark_price", "symbol", params.binance_symbol),
        "liq": ("binance_liquidations", "symbol", params.binance_symbol)}[source]


def count_rows(conn: sqlite3.Connection, source: str, params: FeatureParams, lo: int, hi: int) -> int:
    """Rows of a stream source available in (lo, hi]: one indexed COUNT(*)."""
    table, key_col, key = stream_table(source, params)
    col = timerule.rule(table).time_col
    return int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {key_col} = ? AND {col} > ? AND {col} <= ?",
                            (key, lo, hi)).fetchone()[0])


def count_by_second(conn: sqlite3.Connection, source: str, params: FeatureParams, lo: int,
                    hi: int) -> tuple[np.ndarray, np.ndarray]:
    """(bucket, rows) of a stream source for every second in (lo, hi] that has rows."""
    table, key_col, key = stream_table(source, params)
    col = timerule.rule(table).time_col
    rows = conn.execute(f"SELECT (({col} + 999) / 1000) * 1000 AS b, COUNT(*) FROM {table} "
                        f"WHERE {key_col} = ? AND {col} > ? AND {col} <= ? GROUP BY b ORDER BY b",
                        (key, lo, hi)).fetchall()
    if not rows:
        return _EMPTY_I, _EMPTY_I
    a = np.array(rows, dtype=np.int64)
    return a[:, 0], a[:, 1]


def _newest_bucket(conn: sqlite3.Connection, source: str, params: FeatureParams, lo: int, hi: int,
                   trunc: int | None) -> int | None:
    """The bucket of the newest row of a stream source available in (lo, hi] (indexed)."""
    table, key_col, key = stream_table(source, params)
    col = timerule.rule(table).time_col      # = the availability of a stream row
    tsql, targs = _trunc(table, params, trunc)
    row = conn.execute(f"SELECT {col} FROM {table} WHERE {key_col} = ? AND {col} > ? AND {col} <= ?{tsql} "
                       f"ORDER BY {col} DESC LIMIT 1", (key, lo, hi, *targs)).fetchone()
    return None if row is None else int(_bucket(np.array([row[0]], dtype=np.int64))[0])


def _load_seeded_span(conn: sqlite3.Connection, source: str, params: FeatureParams, lo: int, hi: int,
                      seed_lo: int, trunc: int | None) -> tuple[dict[str, np.ndarray], int]:
    """Every bucket in (lo, hi], plus the newest bucket in (seed_lo, lo] (the "seed": the
    value carried into the window). Equivalent, for as-of lookups at times >= lo, to
    loading (seed_lo, hi] — without reading the whole carry span.

    Also returns `vlo`: the summaries hold every row of the source available in (vlo, hi]
    (the seed's second, and the empty stretch between it and lo), so one COUNT(*) over
    (vlo, hi] later tells whether the database still matches them."""
    data = _load_stream(conn, source, params, lo, hi, trunc)
    if source == "liq" or seed_lo >= lo:
        return data, lo
    b = _newest_bucket(conn, source, params, seed_lo, lo, trunc)
    if b is None:
        return data, seed_lo
    seed = _load_stream(conn, source, params, b - SECOND_MS, b, trunc)
    return {k: np.concatenate((seed[k], data[k])) for k in data}, b - SECOND_MS


def load_seeded(conn: sqlite3.Connection, source: str, params: FeatureParams, lo: int, hi: int,
                 seed_lo: int, trunc: int | None) -> dict[str, np.ndarray]:
    return _load_seeded_span(conn, source, params, lo, hi, seed_lo, trunc)[0]


# ------------------------------------------------------------------------------ cache
#: on_load(source, lo, hi, summaries): the summaries describe every row available in (lo, hi]
LoadHook = Callable[[str, int, int, dict[str, np.ndarray]], None]


@dataclass
class _Span:
    lo: int                        # summaries complete for every second in (lo, hi] ...
    hi: int
    vlo: int                       # ... and hold every row available in (vlo, hi] (vlo <= lo: the seed)
    data: dict[str, np.ndarray]


class SecondCache:
    """Per-second summaries of the stream tables, kept between calls so the live service
    reads only the new seconds and a chunked rebuild reads every row once.

    Holds, per source, every bucket in (lo, hi] plus the newest bucket at or before lo,
    and the number of rows each bucket was made from ("n"). Rows that land later inside
    that span (a gap backfill, a slow commit) are not seen by `get` — the live service
    therefore calls `validate` before each step: one indexed COUNT(*) per source over its
    span; a source whose count changed is dropped and reloaded (bounded: one span). So a
    live row is always computed from what the database holds at that moment.

    `on_load(source, lo, hi, summaries)` is called for every read from the database (the
    live service's per-second row ledger, which counts late data).

    One cache holds one asset's summaries: the first `get` binds it to the venue symbols
    of its params, and a call with another asset's params is a ValueError (it would mix
    two markets' rows silently)."""

    def __init__(self, on_load: LoadHook | None = None) -> None:
        self._data: dict[str, _Span] = {}
        self._series: tuple[str, ...] | None = None     # the venue symbols this cache holds
        self.rows_read = 0
        self.reloads = 0               # sources dropped by validate() because the database changed
        self.on_load = on_load

    def _loaded(self, source: str, lo: int, hi: int, data: dict[str, np.ndarray]) -> None:
        self.rows_read += len(data["b"])
        if self.on_load is not None:
            self.on_load(source, lo, hi, data)

    def get(self, conn: sqlite3.Connection, source: str, params: FeatureParams, lo: int, hi: int,
            seed_lo: int) -> dict[str, np.ndarray]:
        self._bind(params)
        span = self._data.get(source)
        if span is None or span.lo > lo or span.hi < lo:
            data, vlo = _load_seeded_span(conn, source, params, lo, hi, seed_lo, None)
            self._loaded(source, vlo, hi, data)
            span = _Span(lo, hi, vlo, data)
        else:
            if span.hi < hi:
                new = _load_stream(conn, source, params, span.hi, hi, None)
                self._loaded(source, span.hi, hi, new)
                span.data = {k: np.concatenate((span.data[k], new[k])) for k in span.data}
                span.hi = hi
            if span.lo < lo:   # forget what no later call needs; keep the newest bucket <= lo as the seed
                b = span.data["b"]
                last_le = int(np.searchsorted(b, lo, side="right"))      # buckets <= lo
                if source == "liq":
                    first, span.vlo = last_le, lo
                else:
                    first = max(last_le - 1, 0)
                    if last_le > 0:          # the seed's second; nothing between it and lo
                        span.vlo = int(b[first]) - SECOND_MS
                span.data = {k: v[first:] for k, v in span.data.items()}
                span.lo = lo
        self._data[source] = span
        if span.hi > hi:
            keep = span.data["b"] <= hi
            return {k: v[keep] for k, v in span.data.items()}
        return span.data

    def _bind(self, params: FeatureParams) -> None:
        series = (params.upbit_code, params.usdt_code, params.binance_symbol)
        if self._series is None:
            self._series = series
        elif series != self._series:
            raise ValueError(f"SecondCache holds {'/'.join(self._series)}, asked for {'/'.join(series)}: "
                             "use one cache per asset")

    def validate(self, conn: sqlite3.Connection, params: FeatureParams) -> list[str]:
        """Drop every cached source whose rows in the database (available in its span) no
        longer number what its summaries were made from; the next `get` reloads it.
        One indexed COUNT(*) per source. Returns the sources dropped."""
        self._bind(params)
        stale = []
        for source, span in list(self._data.items()):
            if count_rows(conn, source, params, span.vlo, span.hi) != int(span.data["n"].sum()):
                del self._data[source]
                stale.append(source)
        self.reloads += len(stale)
        return stale

    def span(self, source: str) -> tuple[int, int] | None:
        """(vlo, hi): the range of availability times the cached summaries of `source` cover."""
        s = self._data.get(source)
        return None if s is None else (s.vlo, s.hi)

    def clear(self) -> None:
        self._data.clear()
        self._series = None

