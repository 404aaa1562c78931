"""Checks: every default threshold of every check, and the per-column null-rate family.

Each threshold is read through Settings.get_float (a bad value is a one-line config error,
exit 78); checks/thresholds.py looks them up here. docs/checks.md lists the same table.
"""
from __future__ import annotations

import re

from ..var import Var


def _T(env: str, default: float, help: str, minimum: float = 0.0) -> Var:
    """A check threshold: a float, at least `minimum` (0 unless said), no maximum but the default ceiling."""
    text = re.sub(r"e(-?)0*(\d+)$", r"e\1\2", repr(default))   # 1e-09 -> 1e-9, as written here
    return Var(env, text, "float", help, minimum, component="checks")


THRESHOLDS: tuple[Var, ...] = (
    # ------------------------------------------------------------------ every check
    _T("CQT_CHECK_INTEGRITY_BUDGET_S", 60,
       "seconds PRAGMA quick_check may take before a check (0 = no limit); beyond it: a note, not verified in full"),
    # ------------------------------------------------------------------ windows
    _T("CQT_CHECK_FILL_LATENCY_S", 2, "newest seconds left out of every fill-rate window (rows still being committed)"),
    # ------------------------------------------------------------------ altdata_check: Binance WebSocket
    _T("CQT_CHECK_BINANCE_AGGTRADE_LAG_MAX_S", 10, "binance.<SYMBOL>.aggTrade.lag_s: as-of minus newest trade time"),
    _T("CQT_CHECK_BINANCE_AGGTRADE_FILL_MIN", 0.9,
       "binance.<SYMBOL>.aggTrade.fill: share of the window's seconds with a trade"),
    _T("CQT_CHECK_BINANCE_MARKPRICE_LAG_MAX_S", 10, "binance.<SYMBOL>.markPrice.lag_s"),
    _T("CQT_CHECK_BINANCE_MARKPRICE_FILL_MIN", 0.98,
       "binance.<SYMBOL>.markPrice.fill: updates received / seconds (1 s stream)"),
    _T("CQT_CHECK_BINANCE_BOOKTICKER_LAG_MAX_S", 10, "binance.<SYMBOL>.bookTicker.lag_s"),
    _T("CQT_CHECK_BINANCE_BOOKTICKER_FILL_MIN", 0.9,
       "binance.<SYMBOL>.bookTicker.fill: share of seconds with an update"),
    _T("CQT_CHECK_BINANCE_FORCEORDER_LAG_MAX_S", 3600,
       "binance.<SYMBOL>.forceOrder.lag_s (sparse: lag only; counted from the collector's start when none yet)"),
    # ------------------------------------------------------------------ altdata_check: Upbit WebSocket
    _T("CQT_CHECK_UPBIT_KRWBTC_TRADE_LAG_MAX_S", 30, "upbit.KRW-<ASSET>.trade.lag_s (every asset's KRW market)"),
    _T("CQT_CHECK_UPBIT_KRWBTC_TRADE_FILL_MIN", 0.5, "upbit.KRW-<ASSET>.trade.fill: share of seconds with a trade"),
    _T("CQT_CHECK_UPBIT_KRWBTC_ORDERBOOK_LAG_MAX_S", 10, "upbit.KRW-<ASSET>.orderbook.lag_s"),
    _T("CQT_CHECK_UPBIT_KRWBTC_ORDERBOOK_FILL_MIN", 0.9, "upbit.KRW-<ASSET>.orderbook.fill"),
    _T("CQT_CHECK_UPBIT_KRWUSDT_TRADE_LAG_MAX_S", 900,
       "upbit.KRW-USDT.trade.lag_s (sparse: lag only; counted from the collector's start when none yet)"),
    _T("CQT_CHECK_BOOK_FROZEN_S", 120,
       "<book>.frozen_s: seconds the best bid/ask stood unchanged while trades printed outside it "
       "(each Upbit KRW order book and Binance bookTicker)", 1),
    _T("CQT_CHECK_BOOK_MOVE_BPS", 10,
       "a trade this many basis points outside the unchanged best bid/ask counts as the market moving"),
    # ------------------------------------------------------------------ altdata_check: Binance REST
    _T("CQT_CHECK_REST_LAG_FACTOR", 2, "REST series lag limit = this x the series' interval (poll interval or period)"),
    _T("CQT_CHECK_REST_FILL_MIN", 0.9, "REST series fill: samples present / polling slots expected"),
    # ------------------------------------------------------------------ altdata_check: health
    _T("CQT_CHECK_SKEW_MAX_S", 2, "|median(recv_ts_ms - event time)| per WebSocket stream (clock problems)"),
    _T("CQT_CHECK_REJECT_RATIO_MAX", 0.02, "rejects / frames per source in the window"),
    _T("CQT_CHECK_OPEN_GAPS_MAX", 0, "open gaps (rows in `gaps` still open) per stream and symbol"),
    _T("CQT_CHECK_GAP_GRACE_S", 120, "a gap younger than this is a backfill in progress, not yet counted as open"),
    # ------------------------------------------------------------------ feature_check
    _T("CQT_CHECK_FEATURE_LATENCY_S", 5, "newest seconds left out of the coverage window (aggregate grace delay)"),
    _T("CQT_CHECK_FEATURE_LAG_MAX_S", 10,
       "market_1s.<ASSET>.lag_s / predictions.<ASSET>.lag_s: as-of minus newest row"),
    _T("CQT_CHECK_COVERAGE_MIN", 0.98, "rows / seconds in the window, per table and asset"),
    _T("CQT_CHECK_NULL_RATE_MAX", 0.01, "default null-rate limit per column (per-column overrides: see below)"),
    _T("CQT_CHECK_KIMCHI_ABS_MAX", 0.2, "|kimchi_premium| must be below this"),
    _T("CQT_CHECK_FUNDING_ABS_MAX", 0.03, "|funding_rate| must be at most this"),
    _T("CQT_CHECK_LABEL_MIN_SHARE", 0.05,
       "export.<ASSET>.labels.<UP|DOWN|NONE>.share: each class's share of the asset's newest export rows "
       "(all NONE always fails)"),
    # ------------------------------------------------------------------ feature_leak_check
    _T("CQT_CHECK_LEAK_SAMPLES", 50, "t0 sampled in the window for recomputation, per asset", 1),
    _T("CQT_CHECK_LEAK_BUDGET_S", 30,
       "seconds the recomputation may take for all assets together: every second of the window when it fits, "
       "else the samples only"),
    _T("CQT_CHECK_LEAK_TOLERANCE", 1e-9, "allowed |stored - recomputed| (relative to max(1, |value|))"),
    _T("CQT_CHECK_LEAK_WARMUP_SHORT", 1, "short warm-up = this x the features' longest look-back"),
    _T("CQT_CHECK_LEAK_WARMUP_LONG", 3, "long warm-up = this x the features' longest look-back"),
    # ------------------------------------------------------------------ coinglass_check
    _T("CQT_CHECK_COINGLASS_MIN_OK_CALLS", 1, "successful calls per enabled endpoint and coin in the window"),
    _T("CQT_CHECK_COINGLASS_OK_AGE_MAX_S", 600, "age of the newest successful call per endpoint and coin"),
    _T("CQT_CHECK_COINGLASS_ERROR_RATIO_MAX", 0.1, "failed calls / calls in the window"),
)

# The null-rate limit of one column (feature_check); CQT_CHECK_NULL_RATE_MAX is the default
# for every column, the three below are relaxed because those columns may legitimately be empty.
NULL_RATE: tuple[Var, ...] = (
    Var("CQT_CHECK_NULL_RATE_MAX_<TABLE>_<COLUMN>", None, "float", "one column's null-rate limit", 0.0,
        component="checks",
        default_doc="`CQT_CHECK_NULL_RATE_MAX`, or the column's own row below"),
    Var("CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_LIQ_NOTIONAL_60S", "1.0", "float",
        "liquidations are sparse; the forceOrder stream is judged by altdata_check", 0.0, component="checks"),
    Var("CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_CG_OI_CHG", "0.05", "float",
        "Coinglass bars are usable only after close + `CQT_COINGLASS_DELAY_S`; a fresh collection may lack them "
        "briefly", 0.0, component="checks"),
    Var("CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_CG_FUNDING", "0.05", "float", "same", 0.0, component="checks"),
)

TABLE: tuple[Var, ...] = THRESHOLDS + NULL_RATE
