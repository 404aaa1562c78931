"""THE feature function: `market_1s` bars and `predictions` feature vectors from raw rows.

    res = compute_range(conn, t_from_ms, t_to_ms, params)     # bar times, both inclusive
    res.market, res.predictions                                # DataFrames, one row per second
    features_at(conn, t0, params)                              # one predictions row as a dict

The live service (one second at a time, with a SecondCache), `--rebuild` and `bin/cqt
synth` (chunks, with a SecondCache), the export and the leak check's recomputation
(no cache, `truncate_ms` and `warmup`) all call `compute_range`. There is no second
implementation anywhere.

How causality holds by construction
-----------------------------------
1. Every raw row is read by its availability time (cqt.timerule). A bar at t covers
   the rows with availability in (t-1 s, t]; all reads are bounded above by t_to.
2. Stream tables are first reduced to per-second summaries ("buckets": the second a
   row became available) — OHLC and volumes of Upbit trades, the last order book, the
   last Binance trade, mark price, KRW-USDT trade, liquidation notional.
3. Values carried forward (last price, book, marks, polled series, Coinglass bars) are
   as-of lookups: the newest observation available at t, used only while it is younger
   than a fixed carry limit. Look-backs are therefore bounded and fixed, so a value
   never depends on where the computation started (warm-up x1 and x3 give identical
   results: tested), and a look-back that reaches before the data is NULL.
4. Windows are trailing: (t-k s, t]. Sums are taken term by term in a fixed order, so a
   one-second live computation and a 24-hour rebuild give bit-identical floats.

Feature definitions are in docs/aggregate.md (and next to each computation below).
"""
from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from . import timerule
from .timerule import PERIOD_MS

SECOND_MS = 1000
WINDOW_S = 300                      # the longest trailing window of any feature
RET_WINDOWS = (1, 5, 30, 60, 300)
RV_WINDOWS = (60, 300)
FLOW_WINDOWS = (10, 60)
BN_RET_WINDOWS = (1, 5, 30, 60)
KIMCHI_CHG_S = 60
OI_CHG_S = 300
LIQ_WINDOW_S = 60
MODEL = "baseline-v1"

MARKET_COLUMNS: tuple[str, ...] = (
    "ts_ms", "open", "high", "low", "close", "volume", "trade_count", "vwap", "buy_volume",
    "sell_volume", "has_trade", "close_age_ms", "best_bid", "best_ask", "mid", "spread_bps",
    "book_imbalance", "book_age_ms", "binance_last", "binance_age_ms", "mark_price", "index_price",
    "funding_rate", "mark_age_ms", "usdt_krw", "usdt_krw_age_ms", "kimchi_premium")
MARKET_INT_COLUMNS = frozenset({"ts_ms", "trade_count", "has_trade", "close_age_ms", "book_age_ms",
                                "binance_age_ms", "mark_age_ms", "usdt_krw_age_ms"})

FEATURE_COLUMNS: tuple[str, ...] = (
    *(f"ret_{k}s" for k in RET_WINDOWS), *(f"rv_{k}s" for k in RV_WINDOWS),
    *(f"flow_imb_{k}s" for k in FLOW_WINDOWS), "book_imbalance", "spread_bps", "kimchi_premium",
    "kimchi_chg_60s", *(f"bn_ret_{k}s" for k in BN_RET_WINDOWS), "basis_bps", "funding_rate",
    "oi_chg_300s", "ls_ratio", "liq_notional_60s", "cg_oi_chg", "cg_funding")
PREDICTION_COLUMNS: tuple[str, ...] = ("ts_ms", "horizon_sec", "model", "score", *FEATURE_COLUMNS)

#: raw tables each feature reads (for the leak check's structural part and the docs)
FEATURE_SOURCES: dict[str, tuple[str, ...]] = {
    **{f"ret_{k}s": ("upbit_trades",) for k in RET_WINDOWS},
    **{f"rv_{k}s": ("upbit_trades",) for k in RV_WINDOWS},
    **{f"flow_imb_{k}s": ("upbit_trades",) for k in FLOW_WINDOWS},
    "book_imbalance": ("upbit_orderbook",), "spread_bps": ("upbit_orderbook",),
    "kimchi_premium": ("upbit_trades", "binance_agg_trades"),
    "kimchi_chg_60s": ("upbit_trades", "binance_agg_trades"),
    **{f"bn_ret_{k}s": ("binance_agg_trades",) for k in BN_RET_WINDOWS},
    "basis_bps": ("binance_mark_price",), "funding_rate": ("binance_mark_price",),
    "oi_chg_300s": ("binance_open_interest",), "ls_ratio": ("binance_ratios",),
    "liq_notional_60s": ("binance_liquidations", "binance_agg_trades"),
    "cg_oi_chg": ("coinglass_open_interest",), "cg_funding": ("coinglass_funding",),
}
#: trailing window of each feature in seconds (0 = a value at t, carried at most its carry limit)
FEATURE_WINDOW_S: dict[str, int] = {
    **{f"ret_{k}s": k for k in RET_WINDOWS}, **{f"rv_{k}s": k for k in RV_WINDOWS},
    **{f"flow_imb_{k}s": k for k in FLOW_WINDOWS}, "book_imbalance": 0, "spread_bps": 0,
    "kimchi_premium": 0, "kimchi_chg_60s": KIMCHI_CHG_S, **{f"bn_ret_{k}s": k for k in BN_RET_WINDOWS},
    "basis_bps": 0, "funding_rate": 0, "oi_chg_300s": OI_CHG_S, "ls_ratio": 0,
    "liq_notional_60s": LIQ_WINDOW_S, "cg_oi_chg": 0, "cg_funding": 0,
}

# baseline-v1 coefficients (docs/aggregate.md "Baseline score")
SCORE_SIGMA_FLOOR = 5e-5
SCORE_W_MOMENTUM = 0.25
SCORE_W_LEADLAG = 0.5
SCORE_W_FLOW = 0.5
SCORE_W_BOOK = 0.25


# ------------------------------------------------------------------------------ parameters
@dataclass(frozen=True)
class FeatureParams:
    """Everything the feature values depend on besides the data. Build it from the
    settings with `params_from_settings`, so every caller computes the same thing."""
    upbit_code: str = "KRW-BTC"
    usdt_code: str = "KRW-USDT"
    binance_symbol: str = "BTCUSDT"
    horizon_sec: int = 120
    model: str = MODEL
    carry_s: int = 600           # KRW-BTC close, Upbit book, Binance last, mark price
    usdt_carry_s: int = 3600     # KRW-USDT last trade (a sparse market)
    oi_carry_s: int = 300        # Binance open interest (polled every ~10 s)
    ls_period: str = "5m"        # binance_ratios period used for ls_ratio
    cg_symbol: str = "BTC"       # coinglass_open_interest.symbol (coin)
    cg_exchange: str = "Binance"  # coinglass_funding.exchange
    cg_interval: str = "1h"      # CQT_COINGLASS_INTERVAL
    cg_delay_s: int = 60         # CQT_COINGLASS_DELAY_S

    def __post_init__(self) -> None:
        for name in ("ls_period", "cg_interval"):
            if getattr(self, name) not in PERIOD_MS:
                raise ValueError(f"{name}: unknown period {getattr(self, name)!r}")
        for name in ("carry_s", "usdt_carry_s", "oi_carry_s", "horizon_sec"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0")

    @property
    def cg_symbol_pair(self) -> str:
        return self.binance_symbol

    def carry_ms(self, source: str) -> int:
        """How long a value of `source` may be carried forward, measured from its
        observation time (a value observed at o is used at t only while t - o < carry)."""
        if source == "ls":      # available at period end: up to ~2 periods old before the next
            return 3 * PERIOD_MS[self.ls_period]
        if source in ("cg_oi", "cg_funding"):   # bar close + delay, then one interval to the next
            return 2 * PERIOD_MS[self.cg_interval] + self.cg_delay_s * SECOND_MS
        secs = {"upbit": self.carry_s, "book": self.carry_s, "binance": self.carry_s, "mark": self.carry_s,
                "usdt": self.usdt_carry_s, "oi": self.oi_carry_s, "liq": 0}[source]
        return secs * SECOND_MS


def params_from_settings(settings: Any) -> FeatureParams:
    """FeatureParams from cqt Settings (documented variables in docs/aggregate.md).
    Raises cqt.config.ConfigError on a bad value."""
    from .config import ConfigError

    codes = settings.upbit_codes
    upbit = next((c for c in codes if c.startswith("KRW-BTC")), "KRW-BTC")
    usdt = next((c for c in codes if c.startswith("KRW-USDT")), "KRW-USDT")
    sym = settings.binance_symbol
    ls_period = settings.get_str("CQT_AGGREGATE_LS_PERIOD", "5m")
    if ls_period not in PERIOD_MS:
        raise ConfigError("CQT_AGGREGATE_LS_PERIOD", f"{ls_period!r} is not one of {', '.join(PERIOD_MS)}")
    return FeatureParams(
        upbit_code=upbit, usdt_code=usdt, binance_symbol=sym,
        # at most a day each: a carry or horizon sets how far back every computation reads
        horizon_sec=settings.get_int("CQT_AGGREGATE_HORIZON_S", 120, minimum=1, maximum=86_400),
        carry_s=settings.get_int("CQT_AGGREGATE_CARRY_S", 600, minimum=1, maximum=86_400),
        usdt_carry_s=settings.get_int("CQT_AGGREGATE_USDT_CARRY_S", 3600, minimum=1, maximum=86_400),
        oi_carry_s=settings.get_int("CQT_AGGREGATE_OI_CARRY_S", 300, minimum=1, maximum=86_400),
        ls_period=ls_period,
        cg_symbol=settings.get_str("CQT_AGGREGATE_CG_SYMBOL", sym.removesuffix("USDT") or sym),
        cg_exchange=settings.get_str("CQT_AGGREGATE_CG_EXCHANGE", "Binance"),
        cg_interval=settings.coinglass_interval,
        cg_delay_s=settings.coinglass_delay_s,
    )


def _as_params(p: Any) -> FeatureParams:
    if p is None:
        return FeatureParams()
    if isinstance(p, FeatureParams):
        return p
    return params_from_settings(p)


STREAM_SOURCES = ("upbit", "usdt", "book", "binance", "mark", "liq")
POLLED_SOURCES = ("oi", "ls", "cg_oi", "cg_funding")
#: seconds before t_from a source's per-second values are needed (its longest window)
SOURCE_WINDOW_S = {"upbit": WINDOW_S, "usdt": KIMCHI_CHG_S, "binance": max(max(BN_RET_WINDOWS), LIQ_WINDOW_S,
                   KIMCHI_CHG_S), "book": 0, "mark": 0, "liq": LIQ_WINDOW_S, "oi": OI_CHG_S, "ls": 0,
                   "cg_oi": 0, "cg_funding": 0}


def lookback_ms(source: str, params: FeatureParams) -> int:
    """How far before t_from raw rows of `source` can matter (before the warm-up factor):
    its window, plus how long a value may be carried, plus one second for stream
    buckets (a bucket holds (b-1 s, b]). Rows older than that never change a result."""
    extra = SECOND_MS if source in STREAM_SOURCES else 0
    return SOURCE_WINDOW_S[source] * SECOND_MS + params.carry_ms(source) + extra


def max_lookback_ms(params: FeatureParams | None = None) -> int:
    """The longest raw-data look-back of any feature for these parameters."""
    p = _as_params(params)
    return max(lookback_ms(s, p) for s in STREAM_SOURCES + POLLED_SOURCES)


#: the longest look-back with the default parameters (1 h Coinglass bars: 2 h + 60 s)
MAX_LOOKBACK_MS = max_lookback_ms(FeatureParams())


# ------------------------------------------------------------------------------ raw reads
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
               cols: tuple[str, ...], lo: int, hi: int, trunc: int | None, order_col: str | None = None) -> dict[str, np.ndarray]:
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


def _load_liq(conn: sqlite3.Connection, params: FeatureParams, lo: int, hi: int, trunc: int | None) -> dict[str, np.ndarray]:
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


def _load_polled(conn: sqlite3.Connection, source: str, params: FeatureParams, lo: int, hi: int,
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


def _load_seeded(conn: sqlite3.Connection, source: str, params: FeatureParams, lo: int, hi: int,
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
    live service's per-second row ledger, which counts late data)."""

    def __init__(self, on_load: LoadHook | None = None) -> None:
        self._data: dict[str, _Span] = {}
        self.rows_read = 0
        self.reloads = 0               # sources dropped by validate() because the database changed
        self.on_load = on_load

    def _loaded(self, source: str, lo: int, hi: int, data: dict[str, np.ndarray]) -> None:
        self.rows_read += len(data["b"])
        if self.on_load is not None:
            self.on_load(source, lo, hi, data)

    def get(self, conn: sqlite3.Connection, source: str, params: FeatureParams, lo: int, hi: int,
            seed_lo: int) -> dict[str, np.ndarray]:
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

    def validate(self, conn: sqlite3.Connection, params: FeatureParams) -> list[str]:
        """Drop every cached source whose rows in the database (available in its span) no
        longer number what its summaries were made from; the next `get` reloads it.
        One indexed COUNT(*) per source. Returns the sources dropped."""
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


# ------------------------------------------------------------------------------ as-of lookups
def _asof_stream(ev: dict[str, np.ndarray], grid: np.ndarray, carry_ms: int, valid_from: int | None = None) -> np.ndarray:
    """Index of the newest bucket at or before each grid time whose last row is younger
    than carry_ms (age = t - row time < carry), else -1. Grid times before `valid_from`
    (outside what was loaded for this source) get -1, so a misuse shows up as NULL."""
    if len(ev["b"]) == 0:
        return np.full(len(grid), -1, dtype=np.int64)
    j = np.searchsorted(ev["b"], grid, side="right") - 1
    jj = np.maximum(j, 0)
    ok = (j >= 0) & (ev["ts"][jj] > grid - carry_ms)
    if valid_from is not None:
        ok &= grid >= valid_from
    return np.where(ok, jj, -1)


def _asof_polled(rows: dict[str, np.ndarray], grid: np.ndarray, carry_ms: int) -> np.ndarray:
    """Index of the most recent observation (largest obs time) among the rows available at
    each grid time, if observed less than carry_ms ago, else -1."""
    n = len(rows["obs"])
    if n == 0:
        return np.full(len(grid), -1, dtype=np.int64)
    order = np.lexsort((rows["obs"], rows["avail"]))
    obs, avail = rows["obs"][order], rows["avail"][order]
    running = np.maximum.accumulate(obs)
    best = np.maximum.accumulate(np.where(obs == running, np.arange(n), 0))
    j = np.searchsorted(avail, grid, side="right") - 1
    k = best[np.maximum(j, 0)]
    ok = (j >= 0) & (obs[k] > grid - carry_ms)
    return np.where(ok, order[k], -1)


def _take(values: np.ndarray, j: np.ndarray) -> np.ndarray:
    out = np.full(len(j), np.nan)
    m = j >= 0
    out[m] = values[j[m]]
    return out


def _exact(ev: dict[str, np.ndarray], grid: np.ndarray) -> np.ndarray:
    """Index of the bucket exactly at each grid time, else -1."""
    if len(ev["b"]) == 0:
        return np.full(len(grid), -1, dtype=np.int64)
    j = np.searchsorted(ev["b"], grid)
    jj = np.minimum(j, len(ev["b"]) - 1)
    return np.where(ev["b"][jj] == grid, jj, -1)


# ------------------------------------------------------------------------------ windows
def _trail_sum(x: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """x[i] + x[i-1] + ... + x[i-k+1] for each i in idx: the trailing window (t-k s, t],
    summed in a fixed order so the result does not depend on the array's extent."""
    s = x[idx].copy()
    for j in range(1, k):
        s += x[idx - j]
    return s


def _trail_std(x: np.ndarray, idx: np.ndarray, k: int) -> np.ndarray:
    """Sample standard deviation (ddof=1) of the trailing window of k values; NaN if any is NaN."""
    mean = _trail_sum(x, idx, k) / k
    ss = (x[idx] - mean) ** 2
    for j in range(1, k):
        ss += (x[idx - j] - mean) ** 2
    return np.sqrt(ss / (k - 1))


def baseline_score(f: Mapping[str, np.ndarray]) -> np.ndarray:
    """baseline-v1: tanh of a fixed-weight sum of four dimensionless signals.

        sigma  = max(rv_60s, 5e-5)                    (1-second log-return scale)
        z_mom  = ret_60s / (sigma * sqrt(60))          60 s momentum in sigmas
        z_lead = (bn_ret_5s - ret_5s) / (sigma * sqrt(5))   Binance leads Upbit
        score  = tanh(0.25 z_mom + 0.5 z_lead + 0.5 flow_imb_60s + 0.25 book_imbalance)

    NULL when any input is NULL. In (-1, 1): > 0 expects KRW-BTC to rise over the horizon.
    It exists to exercise the pipeline and the backtest, not to make money."""
    sigma = np.maximum(f["rv_60s"], SCORE_SIGMA_FLOOR)  # NaN stays NaN
    z_mom = f["ret_60s"] / (sigma * math.sqrt(60))
    z_lead = (f["bn_ret_5s"] - f["ret_5s"]) / (sigma * math.sqrt(5))
    return np.tanh(SCORE_W_MOMENTUM * z_mom + SCORE_W_LEADLAG * z_lead
                   + SCORE_W_FLOW * f["flow_imb_60s"] + SCORE_W_BOOK * f["book_imbalance"])


# ------------------------------------------------------------------------------ the function
class FeatureResult:
    """The rows of one compute_range call: columns as numpy arrays (float64 with NaN for
    NULL; ts_ms int64), DataFrames on demand, tuples ready for SQLite."""

    def __init__(self, columns_m: dict[str, np.ndarray], columns_p: dict[str, np.ndarray], params: FeatureParams,
                 rows_read: int):
        self.columns_market = columns_m
        self.columns_predictions = columns_p
        self.params = params
        self.rows_read = rows_read           # raw rows / per-second summaries read by this call
        self._market: pd.DataFrame | None = None
        self._pred: pd.DataFrame | None = None
        #: NULL counts per column: {"market_1s": {col: n}, "predictions": {col: n}}
        self.nulls = {
            "market_1s": {c: int(np.isnan(v).sum()) for c, v in columns_m.items() if v.dtype.kind == "f"},
            "predictions": {c: int(np.isnan(v).sum()) for c, v in columns_p.items()},
        }

    def __len__(self) -> int:
        return len(self.columns_market["ts_ms"])

    def __iter__(self):          # `market, predictions = compute_range(...)`
        return iter((self.market, self.predictions))

    @property
    def market(self) -> pd.DataFrame:
        """MARKET_COLUMNS; integer columns without NULLs as int64, ages as float (NaN = NULL)."""
        if self._market is None:
            df = pd.DataFrame({c: self.columns_market[c] for c in MARKET_COLUMNS})
            for c in ("trade_count", "has_trade"):
                df[c] = df[c].astype(np.int64)
            self._market = df
        return self._market

    @property
    def predictions(self) -> pd.DataFrame:
        if self._pred is None:
            n = len(self)
            self._pred = pd.DataFrame({"ts_ms": self.columns_market["ts_ms"],
                                       "horizon_sec": np.full(n, self.params.horizon_sec, dtype=np.int64),
                                       "model": [self.params.model] * n,
                                       **{c: self.columns_predictions[c] for c in ("score", *FEATURE_COLUMNS)}})
        return self._pred

    def market_rows(self) -> list[tuple]:
        return _rows([(c, self.columns_market[c]) for c in MARKET_COLUMNS], MARKET_INT_COLUMNS)

    def prediction_rows(self) -> list[tuple]:
        n = len(self)
        cols = [("ts_ms", self.columns_market["ts_ms"]), ("horizon_sec", [self.params.horizon_sec] * n),
                ("model", [self.params.model] * n)]
        cols += [(c, self.columns_predictions[c]) for c in ("score", *FEATURE_COLUMNS)]
        return _rows(cols, frozenset({"ts_ms"}))


def _rows(cols: list[tuple[str, Any]], int_columns: frozenset[str]) -> list[tuple]:
    """Columns -> tuples for SQLite: NaN -> NULL, integer columns as int."""
    out = []
    for c, v in cols:
        if isinstance(v, np.ndarray) and v.dtype.kind == "f":
            nan = ~np.isfinite(v)      # NaN (and inf: not a value) -> NULL; never cast to int
            o = (np.where(nan, 0, v).astype(np.int64) if c in int_columns else v).astype(object)
            o[nan] = None
            out.append(o.tolist())
        elif isinstance(v, np.ndarray):
            out.append(v.tolist())
        else:
            out.append(v)
    return list(zip(*out))


def compute_range(conn: sqlite3.Connection, t_from_ms: int, t_to_ms: int, params: Any = None, *,
                  cache: SecondCache | None = None, warmup: float = 1.0,
                  truncate_ms: int | None = None) -> FeatureResult:
    """market_1s and predictions rows for every second t in [t_from_ms, t_to_ms].

    `t_from_ms`/`t_to_ms`: bar times (multiples of 1000 ms), both inclusive.
    `params`: FeatureParams or cqt Settings (None = defaults).
    `cache`: a SecondCache reused across calls (live service, chunked rebuild).
    `warmup`: multiply every look-back by this factor (>= 1); results must not change —
    the leak check recomputes with 1 and 3.
    `truncate_ms`: read only rows with availability <= this (a view of the database as it
    could be known then); the leak check passes t0. Not combinable with `cache`.
    Reads only rows with availability <= t_to_ms, in bounded statements.
    """
    p = _as_params(params)
    t_from, t_to = int(t_from_ms), int(t_to_ms)
    if t_from % SECOND_MS or t_to % SECOND_MS:
        raise ValueError("t_from_ms and t_to_ms must be whole seconds (bar times)")
    if t_to < t_from:
        raise ValueError("t_to_ms < t_from_ms")
    if warmup < 1:
        raise ValueError("warmup must be >= 1")
    if cache is not None and truncate_ms is not None:
        raise ValueError("truncate_ms cannot be combined with a cache")

    def whole(ms: float) -> int:
        return int(math.ceil(ms * warmup / SECOND_MS)) * SECOND_MS

    ev: dict[str, dict[str, np.ndarray]] = {}
    valid_from: dict[str, int] = {}
    rows_read = 0
    for s in STREAM_SOURCES:
        valid_from[s] = t_from - whole(SOURCE_WINDOW_S[s] * SECOND_MS)
        lo = valid_from[s] - SECOND_MS                       # buckets >= valid_from, complete
        seed_lo = lo - whole(p.carry_ms(s))
        if cache is not None:
            before = cache.rows_read
            ev[s] = cache.get(conn, s, p, lo, t_to, seed_lo)
            rows_read += cache.rows_read - before
        else:
            ev[s] = _load_seeded(conn, s, p, lo, t_to, seed_lo, truncate_ms)
            rows_read += len(ev[s]["b"])
    for s in POLLED_SOURCES:
        ev[s] = _load_polled(conn, s, p, t_from - whole(lookback_ms(s, p)), t_to, truncate_ms)
        rows_read += len(ev[s]["obs"])

    w = whole(WINDOW_S * SECOND_MS) // SECOND_MS
    grid = np.arange(t_from - w * SECOND_MS, t_to + SECOND_MS, SECOND_MS, dtype=np.int64)
    idx = np.arange(w, len(grid))                  # output seconds in the grid
    t = grid[idx]
    m: dict[str, np.ndarray] = {}
    f: dict[str, np.ndarray] = {}
    with np.errstate(all="ignore"):
        # --- Upbit KRW-BTC: bars, carried close -----------------------------------------
        up = ev["upbit"]
        jc = _asof_stream(up, grid, p.carry_ms("upbit"), valid_from["upbit"])
        close = _take(up["close"], jc)
        close_ts = _take(up["ts"].astype(np.float64), jc)
        je = _exact(up, grid)
        buy = np.where(je >= 0, _take(up["buy"], je), 0.0)
        sell = np.where(je >= 0, _take(up["sell"], je), 0.0)
        jt = je[idx]
        m["ts_ms"] = t
        for c in ("open", "high", "low"):
            m[c] = _take(up[c], jt)
        m["close"] = close[idx]
        m["volume"] = np.where(jt >= 0, _take(up["volume"], jt), 0.0)
        m["trade_count"] = np.where(jt >= 0, _take(up["count"], jt), 0.0)
        m["vwap"] = np.where(m["volume"] > 0, _take(up["pv"], jt) / m["volume"], np.nan)
        m["buy_volume"] = buy[idx]
        m["sell_volume"] = sell[idx]
        m["has_trade"] = (jt >= 0).astype(np.float64)
        m["close_age_ms"] = t - close_ts[idx]
        # --- Upbit order book (latest at or before t) -------------------------------------
        bk = ev["book"]
        jb = _asof_stream(bk, t, p.carry_ms("book"), valid_from["book"])
        bid, ask = _take(bk["best_bid"], jb), _take(bk["best_ask"], jb)
        tb, ta = _take(bk["total_bid_size"], jb), _take(bk["total_ask_size"], jb)
        m["best_bid"], m["best_ask"] = bid, ask
        m["mid"] = (bid + ask) / 2
        m["spread_bps"] = (ask - bid) / m["mid"] * 1e4
        m["book_imbalance"] = np.where(tb + ta > 0, (tb - ta) / (tb + ta), np.nan)
        m["book_age_ms"] = t - _take(bk["ts"].astype(np.float64), jb)
        # --- Binance last trade, mark price ----------------------------------------------
        bn_ev = ev["binance"]
        jn = _asof_stream(bn_ev, grid, p.carry_ms("binance"), valid_from["binance"])
        bn = _take(bn_ev["price"], jn)
        m["binance_last"] = bn[idx]
        m["binance_age_ms"] = t - _take(bn_ev["ts"].astype(np.float64), jn)[idx]
        mk = ev["mark"]
        jm = _asof_stream(mk, t, p.carry_ms("mark"), valid_from["mark"])
        m["mark_price"] = _take(mk["mark_price"], jm)
        m["index_price"] = _take(mk["index_price"], jm)
        m["funding_rate"] = _take(mk["funding_rate"], jm)
        m["mark_age_ms"] = t - _take(mk["ts"].astype(np.float64), jm)
        # --- KRW-USDT, kimchi premium -----------------------------------------------------
        us = ev["usdt"]
        ju = _asof_stream(us, grid, p.carry_ms("usdt"), valid_from["usdt"])
        usdt = _take(us["close"], ju)
        m["usdt_krw"] = usdt[idx]
        m["usdt_krw_age_ms"] = t - _take(us["ts"].astype(np.float64), ju)[idx]
        kimchi = close / (bn * usdt) - 1.0
        m["kimchi_premium"] = kimchi[idx]

        # --- features -----------------------------------------------------------------------
        for k in RET_WINDOWS:       # log return of the carried close over k seconds
            f[f"ret_{k}s"] = np.log(close[idx] / close[idx - k])
        r1 = np.full(len(grid), np.nan)
        r1[1:] = np.log(close[1:] / close[:-1])
        for k in RV_WINDOWS:        # std of the k one-second log returns in (t-k, t]
            f[f"rv_{k}s"] = _trail_std(r1, idx, k)
        for k in FLOW_WINDOWS:      # (buy - sell) / (buy + sell) of Upbit volume in (t-k, t]
            b_sum, s_sum = _trail_sum(buy, idx, k), _trail_sum(sell, idx, k)
            covered = ~np.isnan(close[idx - k])   # the market was observed at the window's start
            f[f"flow_imb_{k}s"] = np.where(covered & (b_sum + s_sum > 0), (b_sum - s_sum) / (b_sum + s_sum), np.nan)
        f["book_imbalance"] = m["book_imbalance"]
        f["spread_bps"] = m["spread_bps"]
        f["kimchi_premium"] = kimchi[idx]
        f["kimchi_chg_60s"] = kimchi[idx] - kimchi[idx - KIMCHI_CHG_S]
        for k in BN_RET_WINDOWS:
            f[f"bn_ret_{k}s"] = np.log(bn[idx] / bn[idx - k])
        f["basis_bps"] = (m["mark_price"] - m["index_price"]) / m["index_price"] * 1e4
        f["funding_rate"] = m["funding_rate"]
        oi = ev["oi"]
        oi_now = _take(oi["open_interest"], _asof_polled(oi, t, p.carry_ms("oi")))
        oi_then = _take(oi["open_interest"], _asof_polled(oi, t - OI_CHG_S * SECOND_MS, p.carry_ms("oi")))
        f["oi_chg_300s"] = oi_now / oi_then - 1.0
        f["ls_ratio"] = _take(ev["ls"]["value"], _asof_polled(ev["ls"], t, p.carry_ms("ls")))
        liq = np.zeros(len(grid))
        jl = _exact(ev["liq"], grid)
        liq[jl >= 0] = ev["liq"]["notional"][jl[jl >= 0]]
        liq[grid < valid_from["liq"]] = np.nan
        liq_sum = _trail_sum(liq, idx, LIQ_WINDOW_S)
        # the Binance stream was observed at the window's start (no data != no liquidations)
        f["liq_notional_60s"] = np.where(np.isnan(bn[idx - LIQ_WINDOW_S]), np.nan, liq_sum)
        cg = ev["cg_oi"]
        jg = _asof_polled(cg, t, p.carry_ms("cg_oi"))
        f["cg_oi_chg"] = _take(cg["close"], jg) / _take(cg["open"], jg) - 1.0
        f["cg_funding"] = _take(ev["cg_funding"]["close"], _asof_polled(ev["cg_funding"], t, p.carry_ms("cg_funding")))
        for d in (m, f):            # inf (a zero price) is not a value: NULL
            for c, v in d.items():
                if v.dtype.kind == "f":
                    d[c] = np.where(np.isfinite(v), v, np.nan)
        f["score"] = baseline_score(f)
    return FeatureResult(m, f, p, rows_read)


def features_at(conn: sqlite3.Connection, t0_ms: int, params: Any = None, *, warmup: float = 1.0,
                truncate_ms: int | None = None) -> dict[str, Any]:
    """The predictions row for one bar time t0 as a dict (NULL -> None); same code path."""
    res = compute_range(conn, t0_ms, t0_ms, params, warmup=warmup, truncate_ms=truncate_ms)
    row = res.prediction_rows()[0]
    return dict(zip(PREDICTION_COLUMNS, row))


def market_at(conn: sqlite3.Connection, t0_ms: int, params: Any = None, **kw: Any) -> dict[str, Any]:
    """The market_1s row for one bar time as a dict (NULL -> None)."""
    res = compute_range(conn, t0_ms, t0_ms, params, **kw)
    return dict(zip(MARKET_COLUMNS, res.market_rows()[0]))
