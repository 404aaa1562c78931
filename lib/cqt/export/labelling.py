"""Labelling (pure: arrays in, arrays out): the label of each candidate second, its drop reason,
the dynamic threshold r_t and the realized volatility of the range.

For each candidate t0 the label comes from the first `market_1s` bar with a real trade at or
after t0 + horizon, accepted only up to max_delay_s later. Every candidate that does not
become a row is counted under exactly one drop reason, checked in DROP_REASONS order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..config import BY_NAME
from .threshold import Threshold

LABELS = ("DOWN", "NONE", "UP")          # dictionary order in the Parquet file
DROP_REASONS = ("stale_source", "missing_features", "label_pending", "no_label", "label_ts_violation")
SECONDS_PER_YEAR = 365 * 86_400

# Required sources at t0: market_1s age column, env var for its limit, default limit (s) as the
# settings registry declares it.
STALE_SOURCES: tuple[tuple[str, str, str, float], ...] = tuple(
    (name, col, var, float(BY_NAME[var].default)) for name, col, var in (
        ("upbit_trade", "close_age_ms", "CQT_EXPORT_MAX_AGE_UPBIT_TRADE_S"),
        ("upbit_book", "book_age_ms", "CQT_EXPORT_MAX_AGE_UPBIT_BOOK_S"),
        ("binance_trade", "binance_age_ms", "CQT_EXPORT_MAX_AGE_BINANCE_S"),
        ("binance_mark", "mark_age_ms", "CQT_EXPORT_MAX_AGE_MARK_S"),
        ("usdt_krw", "usdt_krw_age_ms", "CQT_EXPORT_MAX_AGE_USDT_KRW_S"),
    ))


# The market_1s columns the labelling reads, in this order (the ages of STALE_SOURCES last).
MARKET_COLUMNS = ("ts_ms", "close", "has_trade") + tuple(s[1] for s in STALE_SOURCES)


def second_grid(market_ts, close, lo_ms: int, hi_ms: int):
    """market_1s close on a full 1 s grid [lo, hi] (NaN where a second has no row)."""
    import numpy as np

    lo_ms = lo_ms - lo_ms % 1000
    n = max(0, (hi_ms - lo_ms) // 1000 + 1)
    grid = np.full(n, np.nan)
    if len(market_ts):
        ts = market_ts.astype(np.int64)
        on_grid = (ts % 1000 == 0) & (ts >= lo_ms) & (ts <= hi_ms)
        grid[(ts[on_grid] - lo_ms) // 1000] = close[on_grid]
    return lo_ms, grid


def log_returns(grid):
    import numpy as np

    r = np.full(len(grid), np.nan)
    if len(grid) > 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            r[1:] = np.log(grid[1:] / grid[:-1])
    r[~np.isfinite(r)] = np.nan
    return r


def dynamic_threshold(market_ts, close, t0, horizon_sec: int, cost: float, k: float, vol_window: int):
    """r_t per t0 from data up to t0 only: sigma = std of the 1 s log returns in (t0 - vol_window, t0]
    (at least half of them present), r_t = cost + k * sigma * sqrt(horizon). NaN when unknown."""
    import numpy as np
    import pandas as pd

    if len(t0) == 0:
        return np.empty(0)
    t0 = np.asarray(t0, dtype=np.int64)
    lo = int(t0.min()) - (vol_window + 1) * 1000
    base, grid = second_grid(np.asarray(market_ts), np.asarray(close), lo, int(t0.max()))
    rets = pd.Series(log_returns(grid))
    sigma = rets.rolling(vol_window, min_periods=max(2, vol_window // 2)).std(ddof=1).to_numpy()
    idx = (t0 - base) // 1000
    out = np.full(len(t0), np.nan)
    ok = (t0 % 1000 == 0) & (idx >= 0) & (idx < len(sigma))
    out[ok] = cost + k * sigma[idx[ok]] * math.sqrt(horizon_sec)
    return out


def realized_volatility(market_ts, close, from_ms: int, to_ms: int, horizon_sec: int) -> dict[str, float | None]:
    """Std of the 1 s log returns of market_1s close over [from, to]: per second, per horizon, annualized."""
    import numpy as np

    lo, hi = from_ms - 1000, to_ms
    ts = np.asarray(market_ts)
    inside = ts[(ts >= lo) & (ts <= hi) & (ts % 1000 == 0)]
    if len(inside):     # the grid spans the data, not the range: a range of years is not years of memory
        lo, hi = max(lo, int(inside.min())), min(hi, int(inside.max()))
    else:
        hi = lo
    base, grid = second_grid(ts, np.asarray(close), lo, hi)
    r = log_returns(grid)[1:]
    r = r[np.isfinite(r)]
    if len(r) < 2:
        return {"sigma_1s": None, "per_horizon": None, "annualized": None, "returns": int(len(r))}
    s = float(np.std(r, ddof=1))
    return {"sigma_1s": s, "per_horizon": s * math.sqrt(horizon_sec), "annualized": s * math.sqrt(SECONDS_PER_YEAR),
            "returns": int(len(r))}


def first_at_or_after(sorted_ts, target):
    """Index of the first element >= target (len when none), per target."""
    import numpy as np

    return np.searchsorted(sorted_ts, target, side="left")


@dataclass
class Labelled:
    keep: Any                       # bool mask over candidates
    reason: Any                     # int8 per candidate: -1 kept, else index into DROP_REASONS
    price_t0: Any
    label_ts: Any                   # int64 ms (valid where keep)
    price_label: Any
    ret: Any
    r_t: Any
    label: Any                      # int8 index into LABELS (valid where keep)
    missing_by_column: dict[str, int]
    stale_by_source: dict[str, int]


def label_rows(t0, features, feature_names: Sequence[str], market, horizon_sec: int, max_delay_s: int,
               threshold: Threshold, newest_market_ms: int | None, stale_limits_s: dict[str, float],
               allow_missing: Iterable[str] = ()) -> Labelled:
    """Labels and drop reasons for candidate times t0 (int64 ms). `market` columns: MARKET_COLUMNS."""
    import numpy as np

    t0 = np.asarray(t0, dtype=np.int64)
    n = len(t0)
    mts = market[:, 0].astype(np.int64) if len(market) else np.empty(0, dtype=np.int64)
    close = market[:, 1] if len(market) else np.empty(0)
    has_trade = market[:, 2] if len(market) else np.empty(0)

    # the market_1s row at exactly t0
    if len(mts):
        pos = np.minimum(np.searchsorted(mts, t0), len(mts) - 1)
        at = mts[pos] == t0
    else:
        pos, at = np.zeros(n, dtype=np.int64), np.zeros(n, bool)
    price_t0 = np.full(n, np.nan)
    price_t0[at] = close[pos[at]]

    reason = np.full(n, -1, dtype=np.int8)

    def assign(mask, name):
        sel = mask & (reason < 0)
        reason[sel] = DROP_REASONS.index(name)
        return sel

    # 1. stale sources (only where the market row exists; a missing row is a missing price)
    stale_any = np.zeros(n, bool)
    stale_masks = {}
    for i, (name, _col, _var, _default) in enumerate(STALE_SOURCES):
        limit_ms = stale_limits_s.get(name)
        if limit_ms is None:
            continue
        ages = np.full(n, np.nan)
        ages[at] = market[pos[at], 3 + i]
        m = at & (np.isnan(ages) | (ages > limit_ms * 1000))
        stale_masks[name] = m
        stale_any |= m
    stale_sel = assign(stale_any, "stale_source")
    stale_by_source = {k: int((m & stale_sel).sum()) for k, m in stale_masks.items() if (m & stale_sel).any()}

    # 2. missing features / price / r_t
    allowed = set(feature_names) if "all" in allow_missing else set(allow_missing)
    missing_cols: dict[str, Any] = {}
    for j, name in enumerate(feature_names):
        if name not in allowed:
            missing_cols[name] = np.isnan(features[:, j])
    missing_cols["price_t0"] = ~np.isfinite(price_t0) | (price_t0 <= 0)
    if threshold.policy == "dynamic":
        r_t = dynamic_threshold(mts, close, t0, horizon_sec, threshold.cost, threshold.k, threshold.vol_window)
        missing_cols["r_t"] = np.isnan(r_t)
    else:
        r_t = np.full(n, threshold.value)
    missing_any = np.zeros(n, bool)
    for m in missing_cols.values():
        missing_any |= m
    miss_sel = assign(missing_any, "missing_features")
    missing_by_column = {k: int((m & miss_sel).sum()) for k, m in missing_cols.items() if (m & miss_sel).any()}

    # 3. labels: first traded bar at or after t0 + horizon, within the accepted delay
    traded = (has_trade == 1) & np.isfinite(close) if len(mts) else np.zeros(0, bool)
    tts, tclose = mts[traded], close[traded]
    target = t0 + horizon_sec * 1000
    limit = target + max_delay_s * 1000
    li = first_at_or_after(tts, target)
    found = li < len(tts)
    found[found] = tts[li[found]] <= limit[found]
    label_ts = np.zeros(n, dtype=np.int64)
    price_label = np.full(n, np.nan)
    label_ts[found] = tts[li[found]]
    price_label[found] = tclose[li[found]]
    newest = -1 if newest_market_ms is None else newest_market_ms
    pending = ~found & (limit > newest)
    assign(pending, "label_pending")
    assign(~found, "no_label")
    assign(found & (label_ts < target), "label_ts_violation")

    keep = reason < 0
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = price_label / price_t0 - 1.0
    label = np.full(n, LABELS.index("NONE"), dtype=np.int8)
    label[ret > r_t] = LABELS.index("UP")
    label[ret < -r_t] = LABELS.index("DOWN")
    return Labelled(keep, reason, price_t0, label_ts, price_label, ret, r_t, label,
                    missing_by_column, stale_by_source)
