"""THE feature function: `market_1s` bars and `predictions` feature vectors from raw rows.

    params = params_for(settings, "BTC")                       # one asset (cqt.featureparams)
    res = compute_range(conn, t_from_ms, t_to_ms, params)     # bar times, both inclusive; that asset only
    res.market, res.predictions                                # DataFrames, one row per second
    features_at(conn, t0, params)                              # one predictions row as a dict

One call computes one asset (`params.asset`, the `symbol` of every row it returns)
from that asset's own raw rows — Upbit KRW-<asset>, Binance <asset>USDT, the Coinglass
coin — and KRW-USDT, which every asset shares. Rows of other assets are never read, so
an asset's rows are the same whatever else the database holds. Several assets = one
call per asset (the aggregate keeps one SecondCache per asset).

The live service (one second at a time, with a SecondCache), `--rebuild` and `bin/cqt
synth` (chunks, with a SecondCache), the export and the leak check's recomputation
(no cache, `truncate_ms` and `warmup`) all call `compute_range`. There is no second
implementation anywhere.

Around it: cqt.catalogue (what each feature is: its column, sources, look-back, range),
cqt.featureparams (FeatureParams, look-backs per source), cqt.rawread (reading raw rows
into per-second summaries, SecondCache). Callers of the function need only this module:
it also offers `params_for`, `params_from_settings`, `FeatureParams`, `SecondCache` and the column tuples.

How causality holds by construction
-----------------------------------
1. Every raw row is read by its availability time (cqt.timerule). A bar at t covers
   the rows with availability in (t-1 s, t]; all reads are bounded above by t_to.
2. Stream tables are first reduced to per-second summaries ("buckets": the second a
   row became available) — OHLC and volumes of Upbit trades, the last order book, the
   last Binance trade, mark price, KRW-USDT trade, liquidation notional (cqt.rawread).
3. Values carried forward (last price, book, marks, polled series, Coinglass bars) are
   as-of lookups: the newest observation available at t, used only while it is younger
   than a fixed carry limit. Look-backs are therefore bounded and fixed, so a value
   never depends on where the computation started (warm-up x1 and x3 give identical
   results: tested), and a look-back that reaches before the data is NULL.
4. Windows are trailing: (t-k s, t]. Sums are taken term by term in a fixed order, so a
   one-second live computation and a 24-hour rebuild give bit-identical floats.

Feature definitions are in docs/aggregate.md and docs/features.md (and next to each
computation below). Adding a feature: its cqt.catalogue entry, its lines in
`compute_range` (a test fails when the two differ), a migration adding the column.
"""
from __future__ import annotations

import math
import sqlite3
from typing import Any, Mapping

import numpy as np
import pandas as pd

from .catalogue import (
    BN_RET_WINDOWS,
    FEATURE_COLUMNS,
    FLOW_WINDOWS,
    KIMCHI_CHG_S,
    LIQ_WINDOW_S,
    MARKET_COLUMNS,
    MARKET_INT_COLUMNS,
    OI_CHG_S,
    PREDICTION_COLUMNS,
    RET_WINDOWS,
    RV_WINDOWS,
    WINDOW_S,
)
from .featureparams import (
    POLLED_SOURCES,
    SECOND_MS,
    SOURCE_WINDOW_S,
    STREAM_SOURCES,
    FeatureParams,
    as_params,
    lookback_ms,
    params_for,
    params_from_settings,
)
from .rawread import SecondCache, load_polled, load_seeded

#: what callers of the feature function use, besides the function itself
__all__ = ["compute_range", "features_at", "market_at", "baseline_score", "FeatureResult", "FeatureParams",
           "SecondCache", "params_for", "params_from_settings", "MARKET_COLUMNS", "PREDICTION_COLUMNS",
           "FEATURE_COLUMNS"]

# baseline-v1 coefficients (docs/aggregate.md "Baseline score")
SCORE_SIGMA_FLOOR = 5e-5
SCORE_W_MOMENTUM = 0.25
SCORE_W_LEADLAG = 0.5
SCORE_W_FLOW = 0.5
SCORE_W_BOOK = 0.25


# ------------------------------------------------------------------------------ as-of lookups
def _asof_stream(ev: dict[str, np.ndarray], grid: np.ndarray, carry_ms: int,
                 valid_from: int | None = None) -> np.ndarray:
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

    NULL when any input is NULL. In (-1, 1): > 0 expects the Upbit price to rise over the horizon.
    It exists to exercise the pipeline and the backtest, not to make money."""
    sigma = np.maximum(f["rv_60s"], SCORE_SIGMA_FLOOR)  # NaN stays NaN
    z_mom = f["ret_60s"] / (sigma * math.sqrt(60))
    z_lead = (f["bn_ret_5s"] - f["ret_5s"]) / (sigma * math.sqrt(5))
    return np.tanh(SCORE_W_MOMENTUM * z_mom + SCORE_W_LEADLAG * z_lead
                   + SCORE_W_FLOW * f["flow_imb_60s"] + SCORE_W_BOOK * f["book_imbalance"])


# ------------------------------------------------------------------------------ the function
class FeatureResult:
    """The rows of one compute_range call: columns as numpy arrays (float64 with NaN for
    NULL; ts_ms int64; symbol: the asset), DataFrames on demand, tuples ready for SQLite."""

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
            self._pred = pd.DataFrame({"symbol": self.columns_market["symbol"],
                                       "ts_ms": self.columns_market["ts_ms"],
                                       "horizon_sec": np.full(n, self.params.horizon_sec, dtype=np.int64),
                                       "model": [self.params.model] * n,
                                       **{c: self.columns_predictions[c] for c in ("score", *FEATURE_COLUMNS)}})
        return self._pred

    def market_rows(self) -> list[tuple]:
        return _rows([(c, self.columns_market[c]) for c in MARKET_COLUMNS], MARKET_INT_COLUMNS)

    def prediction_rows(self) -> list[tuple]:
        n = len(self)
        cols = [("symbol", self.columns_market["symbol"]), ("ts_ms", self.columns_market["ts_ms"]),
                ("horizon_sec", [self.params.horizon_sec] * n),
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
    """market_1s and predictions rows of one asset (`params.asset`) for every second t in
    [t_from_ms, t_to_ms].

    `t_from_ms`/`t_to_ms`: bar times (multiples of 1000 ms), both inclusive.
    `params`: FeatureParams (`params_for(settings, asset)`), or cqt Settings (its first
    asset), or None (the defaults: BTC).
    `cache`: a SecondCache reused across calls of the same asset (live service, chunked rebuild).
    `warmup`: multiply every look-back by this factor (>= 1); results must not change —
    the leak check recomputes with 1 and 3.
    `truncate_ms`: read only rows with availability <= this (a view of the database as it
    could be known then); the leak check passes t0. Not combinable with `cache`.
    Reads only rows with availability <= t_to_ms, in bounded statements.
    """
    p = as_params(params)
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
            ev[s] = load_seeded(conn, s, p, lo, t_to, seed_lo, truncate_ms)
            rows_read += len(ev[s]["b"])
    for s in POLLED_SOURCES:
        ev[s] = load_polled(conn, s, p, t_from - whole(lookback_ms(s, p)), t_to, truncate_ms)
        rows_read += len(ev[s]["obs"])

    w = whole(WINDOW_S * SECOND_MS) // SECOND_MS
    grid = np.arange(t_from - w * SECOND_MS, t_to + SECOND_MS, SECOND_MS, dtype=np.int64)
    idx = np.arange(w, len(grid))                  # output seconds in the grid
    t = grid[idx]
    m: dict[str, np.ndarray] = {}
    f: dict[str, np.ndarray] = {}
    with np.errstate(all="ignore"):
        # --- Upbit KRW-<asset>: bars, carried close --------------------------------------
        up = ev["upbit"]
        jc = _asof_stream(up, grid, p.carry_ms("upbit"), valid_from["upbit"])
        close = _take(up["close"], jc)
        close_ts = _take(up["ts"].astype(np.float64), jc)
        je = _exact(up, grid)
        buy = np.where(je >= 0, _take(up["buy"], je), 0.0)
        sell = np.where(je >= 0, _take(up["sell"], je), 0.0)
        jt = je[idx]
        m["symbol"] = np.full(len(t), p.asset, dtype=object)
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
