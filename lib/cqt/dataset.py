"""cqt-export: the labelled Parquet dataset (horizon labels, thresholds, honest drop accounting).

One candidate row per second that has a `predictions` row in the range. For each
candidate t0 the label comes from the first `market_1s` bar with a real trade at or
after t0 + horizon, accepted only up to CQT_LABEL_MAX_DELAY_S later. Every candidate
that does not become a row is counted under exactly one drop reason, checked in this
order:

    stale_source        a required source (market_1s age column) is older than its limit at t0
    missing_features    a required feature, price_t0 or (dynamic policy) r_t is NULL
    label_pending       the label window has not fully passed in the data yet (newest seconds)
    no_label            no traded bar in [t0 + horizon, t0 + horizon + max delay]
    label_ts_violation  label_ts < t0 + horizon (a bug; must be 0)

Reads go through `cqt.db.iter_keyset` (one short read transaction per chunk); the only
write is one `export_runs` row in one short transaction. `--output` passes the output
guard first (`cqt.outputs`: never the database, its side files, a device or an existing
file that is not a cqt Parquet file), then the file is written to a temporary name in the
output directory and renamed, so `--output` is either the old file or the complete new
one, never half a file.
"""
from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import click

from . import __version__, exitcodes
from .config import ROOT, ConfigError, Settings
from .db import DatabaseMissing, SchemaTooNew, connect, iter_keyset, open_readonly
from .clicktypes import TIME
from .outputs import PARQUET_METADATA_KEY, OutputRefused, guard_output, write_atomic
from .timeutil import MAX_TIME_MS, MIN_TIME_MS, fmt_ms, now_ms

METADATA_KEY = PARQUET_METADATA_KEY
FORMAT = "cqt-dataset/1"
NON_FEATURE_COLUMNS = ("ts_ms", "horizon_sec", "model", "score")
LABELS = ("DOWN", "NONE", "UP")          # dictionary order in the Parquet file
DROP_REASONS = ("stale_source", "missing_features", "label_pending", "no_label", "label_ts_violation")
ROW_GROUP_ROWS = 21_600                  # 6 h of 1 s rows: time-range pruning without tiny groups
SECONDS_PER_YEAR = 365 * 86_400
DEFAULT_HORIZON_S = 120
DEFAULT_THRESHOLD = "fixed:0.001"

# Required sources at t0: market_1s age column, env var for its limit, default limit (s).
STALE_SOURCES: tuple[tuple[str, str, str, float], ...] = (
    ("upbit_trade", "close_age_ms", "CQT_EXPORT_MAX_AGE_UPBIT_TRADE_S", 60),
    ("upbit_book", "book_age_ms", "CQT_EXPORT_MAX_AGE_UPBIT_BOOK_S", 10),
    ("binance_trade", "binance_age_ms", "CQT_EXPORT_MAX_AGE_BINANCE_S", 10),
    ("binance_mark", "mark_age_ms", "CQT_EXPORT_MAX_AGE_MARK_S", 10),
    ("usdt_krw", "usdt_krw_age_ms", "CQT_EXPORT_MAX_AGE_USDT_KRW_S", 600),
)

OVERLAP_NOTE = (
    "Labels of neighbouring rows overlap: with 1 s rows and a horizon of H seconds, about H consecutive "
    "rows share part of each label's future price path, so rows are not independent. Cross-validation "
    "and train/test splits must purge rows whose label window [t0, label_ts] overlaps the test period "
    "and add an embargo of at least H seconds (better H + label_max_delay_s) after each test block; "
    "a plain shuffled K-fold leaks the future.")

FEATURE_DESCRIPTIONS = {
    "ret_1s": "Upbit KRW-BTC log return of close over 1 s ending at t0",
    "ret_5s": "Upbit KRW-BTC log return of close over 5 s ending at t0",
    "ret_30s": "Upbit KRW-BTC log return of close over 30 s ending at t0",
    "ret_60s": "Upbit KRW-BTC log return of close over 60 s ending at t0",
    "ret_300s": "Upbit KRW-BTC log return of close over 300 s ending at t0",
    "rv_60s": "realized volatility: std of 1 s log returns over 60 s ending at t0 (not annualized)",
    "rv_300s": "realized volatility: std of 1 s log returns over 300 s ending at t0 (not annualized)",
    "flow_imb_10s": "taker flow imbalance (buy - sell) / (buy + sell) of Upbit volume over 10 s",
    "flow_imb_60s": "taker flow imbalance (buy - sell) / (buy + sell) of Upbit volume over 60 s",
    "book_imbalance": "Upbit order book (bid size - ask size) / (bid size + ask size) at t0",
    "spread_bps": "Upbit best ask - best bid in basis points of mid at t0",
    "kimchi_premium": "Upbit close / (Binance last x KRW per USDT) - 1 at t0",
    "kimchi_chg_60s": "change of the kimchi premium over 60 s ending at t0",
    "bn_ret_1s": "Binance BTCUSDT log return of last price over 1 s",
    "bn_ret_5s": "Binance BTCUSDT log return of last price over 5 s",
    "bn_ret_30s": "Binance BTCUSDT log return of last price over 30 s",
    "bn_ret_60s": "Binance BTCUSDT log return of last price over 60 s",
    "basis_bps": "(mark - index) / index x 1e4 at t0",
    "funding_rate": "Binance funding rate (latest known at t0)",
    "oi_chg_300s": "relative change of Binance open interest over 5 min (as available at t0)",
    "ls_ratio": "Binance global long/short account ratio (latest available at t0)",
    "liq_notional_60s": "Binance forced-order notional (USDT) over 60 s ending at t0",
    "cg_oi_chg": "Coinglass aggregated open interest close/open - 1 of the latest bar available at t0",
    "cg_funding": "Coinglass funding close of the latest bar available at t0",
}
FIXED_DESCRIPTIONS = {
    "t0": "the row's time: the second the features describe (UTC); every feature was known at t0",
    "score": "baseline model score from predictions (computed from the features at t0; not a feature)",
    "price_t0": "Upbit KRW-BTC market_1s close at t0 (KRW)",
    "label_ts": "time of the first market_1s bar with a real trade at or after t0 + horizon_sec (UTC)",
    "price_label": "market_1s close of the label bar (KRW)",
    "ret": "price_label / price_t0 - 1",
    "r_t": "threshold for this row (fixed value, or cost + k x sigma_1s x sqrt(horizon) from data up to t0)",
    "label": "UP if ret > r_t, DOWN if ret < -r_t, else NONE",
}


class ExportError(Exception):
    """An export that did not produce a file; `code` is the exit code."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)


# ------------------------------------------------------------------------------ threshold policy
@dataclass(frozen=True)
class Threshold:
    policy: str = "fixed"          # fixed | dynamic
    value: float = 0.001           # fixed: the return threshold
    cost: float = 0.001            # dynamic: r_t = cost + k * sigma_1s * sqrt(horizon)
    k: float = 1.0
    vol_window: int = 300          # dynamic: seconds of 1 s returns ending at t0

    @property
    def spec(self) -> str:
        if self.policy == "fixed":
            return f"fixed:{self.value:g}"
        return f"dynamic:cost={self.cost:g},k={self.k:g},vol_window={self.vol_window}"

    def as_dict(self) -> dict[str, Any]:
        if self.policy == "fixed":
            return {"policy": "fixed", "value": self.value}
        return {"policy": "dynamic", "cost": self.cost, "k": self.k, "vol_window_s": self.vol_window,
                "formula": "r_t = cost + k * std(1 s log returns of market_1s close over (t0 - vol_window, t0]) "
                           "* sqrt(horizon_sec)"}

    @classmethod
    def parse(cls, text: str) -> "Threshold":
        s = text.strip()
        policy, _, rest = s.partition(":")
        policy = policy.strip().lower()
        if policy == "fixed":
            if not rest.strip():
                return cls()
            v = _finite(rest.strip(), "fixed threshold")
            if v < 0:
                raise ValueError("fixed threshold must be >= 0")
            return cls(policy="fixed", value=v)
        if policy == "dynamic":
            params: dict[str, float] = {}
            for part in filter(None, (p.strip() for p in rest.split(","))):
                key, eq, val = part.partition("=")
                key = key.strip()
                if not eq or key not in ("cost", "k", "vol_window"):
                    raise ValueError(f"unknown dynamic parameter {part!r} (use cost=, k=, vol_window=)")
                params[key] = _finite(val.strip(), key)
            vw = params.get("vol_window", 300)
            if vw != int(vw) or vw < 2:
                raise ValueError("vol_window must be an integer number of seconds >= 2")
            if params.get("cost", 0.001) < 0 or params.get("k", 1.0) < 0:
                raise ValueError("cost and k must be >= 0")
            return cls(policy="dynamic", cost=params.get("cost", 0.001), k=params.get("k", 1.0),
                       vol_window=int(vw))
        raise ValueError(f"{text!r}: use fixed:VALUE or dynamic:cost=C,k=K,vol_window=SECONDS")


def _finite(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise ValueError(f"{what}: must be finite")
    return v


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$", re.IGNORECASE)


# No range is longer than the span of accepted times (2009-01-01 .. 2100-01-01).
MAX_DURATION_MS = MAX_TIME_MS - MIN_TIME_MS


def parse_duration_ms(text: str) -> int:
    """'1h', '24h', '30m', '90s', '7d' -> milliseconds (at least 1 s, at most MAX_DURATION_MS)."""
    m = _DURATION_RE.match(text) if len(text) <= 40 else None
    if not m:
        shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"
        raise ValueError(f"{shown} is not a duration like 1h or 24h")
    mult = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2).lower()]
    value = float(m.group(1)) * mult
    if not value <= MAX_DURATION_MS:        # also inf, from a number too long for a float
        raise ValueError(f"{text.strip()!r} is longer than the span of accepted times "
                         f"(2009-01-01 .. 2100-01-01: at most {MAX_DURATION_MS // 86_400_000}d)")
    ms = int(value)
    if ms < 1000:
        raise ValueError("duration must be at least 1 s")
    return ms


# ------------------------------------------------------------------------------ request / result
@dataclass
class ExportRequest:
    output: Path
    horizon_sec: int = DEFAULT_HORIZON_S
    from_ms: int | None = None
    to_ms: int | None = None
    last_ms: int | None = None
    threshold: Threshold = field(default_factory=Threshold)
    max_delay_s: int = 5
    allow_missing: tuple[str, ...] = ()      # feature columns that may be NULL; ("all",) for every one
    stale_limits_s: dict[str, float] = field(default_factory=lambda: {s[0]: s[3] for s in STALE_SOURCES})
    record: bool = True


@dataclass
class ExportResult:
    output: Path
    size_bytes: int
    rows: int
    candidates: int
    drops: dict[str, int]
    drop_details: dict[str, dict[str, int]]
    labels: dict[str, int]
    volatility: dict[str, float | None]
    from_ms: int
    to_ms: int
    horizon_sec: int
    threshold: Threshold
    elapsed_s: float
    code_version: str
    recorded: bool = False

    def summary(self) -> dict[str, Any]:
        total = max(self.rows, 1)
        return {
            "output": str(self.output),
            "size_bytes": self.size_bytes,
            "rows": self.rows,
            "candidates": self.candidates,
            "drops": dict(self.drops),
            "drops_total": sum(self.drops.values()),
            "label_ts_violation": self.drops["label_ts_violation"],
            "drop_details": self.drop_details,
            "labels": dict(self.labels),
            "label_pct": {k: round(100.0 * v / total, 2) for k, v in self.labels.items()},
            "volatility": dict(self.volatility),
            "from_ts_ms": self.from_ms,
            "to_ts_ms": self.to_ms,
            "from": fmt_ms(self.from_ms),
            "to": fmt_ms(self.to_ms),
            "horizon_sec": self.horizon_sec,
            "threshold": self.threshold.spec,
            "elapsed_s": round(self.elapsed_s, 3),
            "code_version": self.code_version,
            "recorded": self.recorded,
        }


def settings_request(settings: Settings, output: Path, **kw: Any) -> ExportRequest:
    """An ExportRequest with the limits from the settings (CQT_LABEL_MAX_DELAY_S, CQT_EXPORT_MAX_AGE_*)."""
    limits = {name: settings.get_float(var, default, minimum=0) for name, _col, var, default in STALE_SOURCES}
    # Defaults an operator (or the nightly unit) can set once in .env instead of on every command line.
    if kw.get("allow_missing") is None:
        kw["allow_missing"] = split_columns(settings.get_str("CQT_EXPORT_ALLOW_MISSING", ""))
    if kw.get("horizon_sec") is None:
        kw["horizon_sec"] = settings.get_int("CQT_EXPORT_HORIZON_S", DEFAULT_HORIZON_S, minimum=1)
    return ExportRequest(output=output, max_delay_s=settings.label_max_delay_s, stale_limits_s=limits, **kw)


def split_columns(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


# ------------------------------------------------------------------------------ reading
def feature_columns(conn: sqlite3.Connection) -> list[str]:
    cols = [r[1] for r in conn.execute("PRAGMA table_info(predictions)")]
    if not cols:
        raise ExportError(exitcodes.NOEVAL, "table predictions does not exist: is the schema migrated?")
    return [c for c in cols if c not in NON_FEATURE_COLUMNS]


def resolve_range(conn: sqlite3.Connection, from_ms: int | None, to_ms: int | None,
                  last_ms: int | None) -> tuple[int, int]:
    """Both bounds inclusive (bar times). Default: the 24 h ending at the newest predictions row."""
    span = last_ms if last_ms is not None else 86_400_000
    if to_ms is None:
        if from_ms is not None and last_ms is not None:
            to_ms = from_ms + span - 1000
        else:
            newest = conn.execute("SELECT MAX(ts_ms) FROM predictions").fetchone()[0]
            if newest is None:
                raise ExportError(exitcodes.FAIL, "no predictions in the database: is cqt-aggregate running?")
            to_ms = int(newest)
    if from_ms is None:
        from_ms = to_ms - span + 1000
    if from_ms > to_ms:
        raise ExportError(exitcodes.USAGE, f"--from {fmt_ms(from_ms)} is after --to {fmt_ms(to_ms)}")
    return from_ms, to_ms


def _read_array(conn: sqlite3.Connection, table: str, columns: Sequence[str], lo: int, hi: int):
    import numpy as np

    chunks = []
    for rows in iter_keyset(conn, table, "ts_ms", ", ".join(columns), lo, hi):
        chunks.append(np.array(rows, dtype=np.float64))
    if not chunks:
        return np.empty((0, len(columns)), dtype=np.float64)
    return np.concatenate(chunks)


MARKET_COLUMNS = ("ts_ms", "close", "has_trade") + tuple(s[1] for s in STALE_SOURCES)


@dataclass
class Inputs:
    """What the export reads: predictions in [from, to], market_1s around it."""
    features: list[str]
    pred: Any                # float64 array: ts_ms, features..., score
    market: Any              # float64 array: MARKET_COLUMNS
    newest_market_ms: int | None
    models: list[str]


def read_inputs(conn: sqlite3.Connection, from_ms: int, to_ms: int, horizon_sec: int, max_delay_s: int,
                vol_window_s: int) -> Inputs:
    feats = feature_columns(conn)
    pred = _read_array(conn, "predictions", ["ts_ms", *feats, "score"], from_ms, to_ms)
    lo = from_ms - (max(vol_window_s, 1) + 1) * 1000
    hi = to_ms + (horizon_sec + max_delay_s) * 1000
    market = _read_array(conn, "market_1s", MARKET_COLUMNS, lo, hi)
    newest = conn.execute("SELECT MAX(ts_ms) FROM market_1s").fetchone()[0]
    models = [r[0] for r in conn.execute(
        "SELECT DISTINCT model FROM predictions WHERE ts_ms >= ? AND ts_ms <= ? LIMIT 10", (from_ms, to_ms))]
    return Inputs(feats, pred, market, None if newest is None else int(newest), models)


# ------------------------------------------------------------------------------ pure computation
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


# ------------------------------------------------------------------------------ writing
def code_version() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--tags", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=3)
        if out.returncode == 0 and out.stdout.strip():
            return f"{__version__}+git.{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def build_table(t0, pred, feature_names: Sequence[str], lab: Labelled):
    import numpy as np
    import pyarrow as pa

    keep = lab.keep
    ts_type = pa.timestamp("ms", tz="UTC")

    def f64(values):
        v = np.ascontiguousarray(values[keep], dtype=np.float64)
        nan = np.isnan(v)
        return pa.array(v, type=pa.float64(), mask=nan if nan.any() else None)

    cols: list[tuple[str, Any, str]] = [("t0", pa.array(t0[keep].astype(np.int64), type=ts_type), FIXED_DESCRIPTIONS["t0"])]
    for j, name in enumerate(feature_names):
        cols.append((name, f64(pred[:, 1 + j]), FEATURE_DESCRIPTIONS.get(name, "feature from the predictions table")))
    cols.append(("score", f64(pred[:, 1 + len(feature_names)]), FIXED_DESCRIPTIONS["score"]))
    cols.append(("price_t0", f64(lab.price_t0), FIXED_DESCRIPTIONS["price_t0"]))
    cols.append(("label_ts", pa.array(lab.label_ts[keep], type=ts_type), FIXED_DESCRIPTIONS["label_ts"]))
    cols.append(("price_label", f64(lab.price_label), FIXED_DESCRIPTIONS["price_label"]))
    cols.append(("ret", f64(lab.ret), FIXED_DESCRIPTIONS["ret"]))
    cols.append(("r_t", f64(lab.r_t), FIXED_DESCRIPTIONS["r_t"]))
    labels = pa.DictionaryArray.from_arrays(pa.array(lab.label[keep], type=pa.int8()), pa.array(LABELS))
    cols.append(("label", labels, FIXED_DESCRIPTIONS["label"]))
    fields = [pa.field(name, arr.type, nullable=True, metadata={"description": desc}) for name, arr, desc in cols]
    return pa.Table.from_arrays([c[1] for c in cols], schema=pa.schema(fields)), {c[0]: c[2] for c in cols}


def write_parquet_atomic(table, output: Path, metadata: dict[str, Any], stall_s: float = 0.0) -> int:
    """Write `table` with zstd and the `cqt` metadata to a temp file beside `output`, fsync, rename.
    Returns the file size. On any failure the temp file is removed and `output` is untouched."""
    import pyarrow.parquet as pq

    schema = table.schema.with_metadata({METADATA_KEY: json.dumps(metadata, sort_keys=True).encode()})
    table = table.replace_schema_metadata(schema.metadata)

    def write(tmp: Path) -> None:
        with pq.ParquetWriter(str(tmp), schema, compression="zstd", compression_level=3,
                              write_statistics=True) as writer:
            for i, offset in enumerate(range(0, max(table.num_rows, 1), ROW_GROUP_ROWS)):
                writer.write_table(table.slice(offset, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
                if i == 0 and stall_s > 0:      # test knob: a window in which to kill the writer
                    time.sleep(stall_s)

    return write_atomic(output, write=write, keep_mode=False)


def export_target(output: str | os.PathLike, db: Path) -> Path:
    """The real path `--output` names, after the output guard (never the database, a device,
    or an existing file that is not a cqt Parquet file); ExportError(2) otherwise."""
    try:
        return guard_output(output, "parquet", db_path=db)
    except OutputRefused as exc:
        raise ExportError(exc.code, str(exc)) from None


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The `cqt` metadata object of a dataset file."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(str(path)).metadata or {}
    raw = meta.get(METADATA_KEY)
    if raw is None:
        raise ValueError(f"{path}: no '{METADATA_KEY.decode()}' metadata (not a cqt dataset?)")
    return json.loads(raw)


EXPORT_RUNS_SQL = ("INSERT INTO export_runs (ts_ms, output, size_bytes, rows, horizon_sec, threshold, from_ts_ms, "
                   "to_ts_ms, drops_json, labels_json, volatility, summary_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)")


def record_export(db: Path, res: ExportResult, ts_ms: int | None = None) -> None:
    """One short write transaction: the export_runs row the report and retention read."""
    s = res.summary()
    conn = connect(db)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(EXPORT_RUNS_SQL, (
                now_ms() if ts_ms is None else ts_ms, str(res.output), res.size_bytes, res.rows, res.horizon_sec,
                res.threshold.spec, res.from_ms, res.to_ms, json.dumps(res.drops, sort_keys=True),
                json.dumps(res.labels, sort_keys=True), res.volatility.get("annualized"),
                json.dumps(s, sort_keys=True)))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()


# ------------------------------------------------------------------------------ the export
def run_export(db: Path, req: ExportRequest, stall_s: float = 0.0) -> ExportResult:
    """Read, label, write, record. Raises ExportError (with an exit code) when no file is written."""
    import numpy as np

    started = time.monotonic()
    if req.horizon_sec <= 0:
        raise ExportError(exitcodes.USAGE, "--horizon must be a positive number of seconds")
    try:
        conn = open_readonly(db)
    except DatabaseMissing as exc:
        raise ExportError(exitcodes.NOEVAL, str(exc)) from None
    except SchemaTooNew as exc:
        raise ExportError(exitcodes.NOEVAL, str(exc)) from None
    except sqlite3.Error as exc:
        raise ExportError(exitcodes.NOEVAL, f"cannot open database {db}: {exc}") from None
    try:
        from_ms, to_ms = resolve_range(conn, req.from_ms, req.to_ms, req.last_ms)
        vol_window = req.threshold.vol_window if req.threshold.policy == "dynamic" else 1
        inp = read_inputs(conn, from_ms, to_ms, req.horizon_sec, req.max_delay_s, vol_window)
    except sqlite3.Error as exc:
        raise ExportError(exitcodes.NOEVAL, f"cannot read database {db}: {exc}") from None
    finally:
        conn.close()

    unknown = [c for c in req.allow_missing if c != "all" and c not in inp.features]
    if unknown:
        raise ExportError(exitcodes.USAGE, f"--allow-missing: not a feature column: {', '.join(unknown)}")
    candidates = len(inp.pred)
    if candidates == 0:
        raise ExportError(exitcodes.FAIL, f"no predictions in range {fmt_ms(from_ms)} .. {fmt_ms(to_ms)}: "
                                          "is cqt-aggregate running?")
    t0 = inp.pred[:, 0].astype(np.int64)
    features = inp.pred[:, 1:1 + len(inp.features)]
    lab = label_rows(t0, features, inp.features, inp.market, req.horizon_sec, req.max_delay_s, req.threshold,
                     inp.newest_market_ms, req.stale_limits_s, req.allow_missing)
    drops = {name: int((lab.reason == i).sum()) for i, name in enumerate(DROP_REASONS)}
    rows = int(lab.keep.sum())
    assert rows + sum(drops.values()) == candidates
    labels = {name: int(((lab.label == i) & lab.keep).sum()) for i, name in enumerate(LABELS)}
    labels = {k: labels[k] for k in ("UP", "DOWN", "NONE")}
    vol = realized_volatility(inp.market[:, 0] if len(inp.market) else np.empty(0),
                              inp.market[:, 1] if len(inp.market) else np.empty(0), from_ms, to_ms, req.horizon_sec)
    details = {"missing_by_column": lab.missing_by_column, "stale_by_source": lab.stale_by_source}
    if rows == 0:
        worst = max(drops, key=lambda k: drops[k])
        hint = ""
        if worst == "missing_features" and lab.missing_by_column:
            col = max(lab.missing_by_column, key=lambda k: lab.missing_by_column[k])
            hint = f" (most often NULL: {col}; see --allow-missing)"
        elif worst == "stale_source" and lab.stale_by_source:
            hint = f" (most often stale: {max(lab.stale_by_source, key=lambda k: lab.stale_by_source[k])})"
        elif worst == "label_pending":
            hint = f" (the label window of every row ends after the newest market_1s bar; wait {req.horizon_sec} s)"
        raise ExportError(exitcodes.FAIL, f"0 rows: all {candidates} candidates dropped, mostly {worst}{hint}; "
                                          f"drops {json.dumps(drops)}; nothing written")

    table, descriptions = build_table(t0, inp.pred, inp.features, lab)
    version = code_version()
    res = ExportResult(output=req.output, size_bytes=0, rows=rows, candidates=candidates, drops=drops,
                       drop_details=details, labels=labels, volatility=vol, from_ms=from_ms, to_ms=to_ms,
                       horizon_sec=req.horizon_sec, threshold=req.threshold, elapsed_s=0.0, code_version=version)
    meta = {
        "format": FORMAT,
        "created": fmt_ms(now_ms()),
        "horizon_sec": req.horizon_sec,
        "threshold": req.threshold.as_dict(),
        "threshold_spec": req.threshold.spec,
        "label_rule": "label_ts = first market_1s bar with has_trade = 1 and ts_ms >= t0 + horizon_sec, "
                      "accepted up to t0 + horizon_sec + label_max_delay_s; ret = price_label / price_t0 - 1; "
                      "UP if ret > r_t, DOWN if ret < -r_t, else NONE",
        "label_max_delay_s": req.max_delay_s,
        "stale_limits_s": req.stale_limits_s,
        "allow_missing": list(req.allow_missing),
        "time_range": {"from": fmt_ms(from_ms), "to": fmt_ms(to_ms), "from_ts_ms": from_ms, "to_ts_ms": to_ms,
                       "bounds": "inclusive, bar times (a bar covering (t-1 s, t] has time t)"},
        "source_db": str(db),
        "models": inp.models,
        "code_version": version,
        "candidates": candidates,
        "rows": rows,
        "drops": drops,
        "drop_details": details,
        "drop_order": list(DROP_REASONS),
        "labels": labels,
        "volatility": vol,
        "columns": descriptions,
        "note": OVERLAP_NOTE.replace("H seconds", f"H = {req.horizon_sec} seconds", 1),
    }
    try:
        res.size_bytes = write_parquet_atomic(table, req.output, meta, stall_s=stall_s)
    except OSError as exc:
        raise ExportError(exitcodes.IOERR, f"cannot write {req.output}: {exc.strerror or exc}") from None
    res.elapsed_s = time.monotonic() - started
    if req.record:
        try:
            record_export(db, res)
            res.recorded = True
        except sqlite3.Error as exc:
            raise ExportError(exitcodes.IOERR, f"wrote {req.output} but could not record it in export_runs: {exc}")
    return res


# ------------------------------------------------------------------------------ output
def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def format_summary(s: dict[str, Any]) -> str:
    rows = s["rows"]
    labels = "  ".join(f"{k}={v:,} ({s['label_pct'][k]:.1f}%)" for k, v in s["labels"].items())
    other = {k: v for k, v in s["drops"].items() if k != "label_ts_violation"}
    vol = s["volatility"]
    if vol.get("sigma_1s") is not None:
        vol_line = (f"volatility: annualized={vol['annualized'] * 100:.1f}%  per_horizon({s['horizon_sec']}s)="
                    f"{vol['per_horizon'] * 100:.3f}%  sigma_1s={vol['sigma_1s']:.3g}")
    else:
        vol_line = "volatility: unknown (fewer than 2 one-second returns)"
    return "\n".join([
        f"export: wrote {s['output']}  size={human_size(s['size_bytes'])} ({s['size_bytes']:,} bytes)  rows={rows:,}",
        f"range: {s['from']} .. {s['to']}  horizon={s['horizon_sec']}s  threshold={s['threshold']}",
        f"drops: label_ts_violation={s['label_ts_violation']}  "
        + "  ".join(f"{k}={v:,}" for k, v in other.items())
        + f"  (candidates={s['candidates']:,}, dropped={s['drops_total']:,})",
        f"labels: {labels}",
        vol_line,
    ])


# ------------------------------------------------------------------------------ CLI
def _threshold_opt(ctx, param, value):
    try:
        return Threshold.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _last_opt(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_duration_ms(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Parquet file to write (e.g. data/datasets/btc_24h.parquet).")
@click.option("--horizon", default=None, type=click.IntRange(min=1),
              help=f"Label horizon in seconds [default: CQT_EXPORT_HORIZON_S or {DEFAULT_HORIZON_S}].")
@click.option("--from", "from_ms", type=TIME, help="First t0 (ISO-8601 or epoch ms, inclusive).")
@click.option("--to", "to_ms", type=TIME,
              help="Last t0 (inclusive). Default: the newest predictions row (not the wall clock).")
@click.option("--last", "last_ms", callback=_last_opt,
              help="Range length ending at --to (default 24h); e.g. 1h, 24h.")
@click.option("--threshold", default=DEFAULT_THRESHOLD, show_default=True, callback=_threshold_opt,
              help="fixed:RETURN or dynamic:cost=C,k=K,vol_window=SECONDS (r_t = cost + k*sigma*sqrt(horizon)).")
@click.option("--allow-missing", default=None, metavar="COLS",
              help="Feature columns that may be NULL (comma-separated, or 'all'); "
                   "default: CQT_EXPORT_ALLOW_MISSING, else every feature required.")
@click.option("--db", type=click.Path(dir_okay=False), help="Database file (default CQT_DB).")
@click.option("--no-record", is_flag=True, help="Do not add an export_runs row (ad-hoc exports).")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def main(output, horizon, from_ms, to_ms, last_ms, threshold, allow_missing, db, no_record, as_json):
    """Write the labelled Parquet dataset and print what it contains and what was dropped.

    Exit codes: 0 written, 1 nothing to write (0 rows; the reason is printed), 2 usage (also an
    --output that is the database, a device or a file that is not a cqt Parquet file), 3 database
    missing or unreadable, 74 write error, 78 bad setting.
    """
    from .runtime import load_settings_or_exit

    settings = load_settings_or_exit(db=db)
    try:
        target = export_target(output, settings.db)
    except ExportError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "exit_code": exc.code, "error": str(exc)}))
        click.echo(f"cqt-export: {exc}", err=True)
        sys.exit(exc.code)
    try:
        allow = None if allow_missing is None else split_columns(allow_missing)
        req = settings_request(settings, target, horizon_sec=horizon,
                               from_ms=from_ms, to_ms=to_ms, last_ms=last_ms, threshold=threshold,
                               allow_missing=allow, record=not no_record)
        stall = settings.get_float("CQT_EXPORT_TEST_STALL_S", 0.0, minimum=0)
    except ConfigError as exc:
        click.echo(f"cqt-export: {exc}", err=True)
        sys.exit(exitcodes.CONFIG)
    try:
        res = run_export(settings.db, req, stall_s=stall)
    except ExportError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "exit_code": exc.code, "error": str(exc)}))
        click.echo(f"cqt-export: {exc}", err=True)
        sys.exit(exc.code)
    s = res.summary()
    click.echo(json.dumps({"ok": True, **s}, sort_keys=True) if as_json else format_summary(s))
    sys.exit(exitcodes.OK)
