"""Every default threshold of every check, in one place.

Each entry is overridable by the environment variable it is named after (read
through `Settings.get_float`, so `.env` works too and a bad value is a one-line
config error, exit 78). docs/checks.md lists the same table; a test keeps the two
in step.

Per-column null-rate limits of feature_check: `CQT_CHECK_NULL_RATE_MAX` is the
default for every column; NULL_RATE_DEFAULTS (from each column's record in
cqt.catalogue) relaxes it for columns that may legitimately be empty, and any column
can be set on its own with
`CQT_CHECK_NULL_RATE_MAX_<TABLE>_<COLUMN>` (e.g. CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_RV_300S).
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import catalogue
from ..config import Settings


@dataclass(frozen=True)
class Threshold:
    env: str
    default: float
    help: str
    minimum: float = 0.0


_T = Threshold

THRESHOLDS: tuple[Threshold, ...] = (
    # ------------------------------------------------------------------ every check
    _T("CQT_CHECK_INTEGRITY_BUDGET_S", 60,
       "seconds PRAGMA quick_check may take before a check (0 = no limit); beyond it: a note, not verified in full"),
    # ------------------------------------------------------------------ windows
    _T("CQT_CHECK_FILL_LATENCY_S", 2, "newest seconds left out of every fill-rate window (rows still being committed)"),
    # ------------------------------------------------------------------ altdata_check: Binance WebSocket
    _T("CQT_CHECK_BINANCE_AGGTRADE_LAG_MAX_S", 10, "binance.aggTrade.lag_s: as-of minus newest trade time"),
    _T("CQT_CHECK_BINANCE_AGGTRADE_FILL_MIN", 0.9, "binance.aggTrade.fill: share of the window's seconds with a trade"),
    _T("CQT_CHECK_BINANCE_MARKPRICE_LAG_MAX_S", 10, "binance.markPrice.lag_s"),
    _T("CQT_CHECK_BINANCE_MARKPRICE_FILL_MIN", 0.98, "binance.markPrice.fill: updates received / seconds (1 s stream)"),
    _T("CQT_CHECK_BINANCE_BOOKTICKER_LAG_MAX_S", 10, "binance.bookTicker.lag_s"),
    _T("CQT_CHECK_BINANCE_BOOKTICKER_FILL_MIN", 0.9, "binance.bookTicker.fill: share of seconds with an update"),
    _T("CQT_CHECK_BINANCE_FORCEORDER_LAG_MAX_S", 3600,
       "binance.forceOrder.lag_s (sparse: lag only; counted from the collector's start when none yet)"),
    # ------------------------------------------------------------------ altdata_check: Upbit WebSocket
    _T("CQT_CHECK_UPBIT_KRWBTC_TRADE_LAG_MAX_S", 30, "upbit.KRW-BTC.trade.lag_s"),
    _T("CQT_CHECK_UPBIT_KRWBTC_TRADE_FILL_MIN", 0.5, "upbit.KRW-BTC.trade.fill: share of seconds with a trade"),
    _T("CQT_CHECK_UPBIT_KRWBTC_ORDERBOOK_LAG_MAX_S", 10, "upbit.KRW-BTC.orderbook.lag_s"),
    _T("CQT_CHECK_UPBIT_KRWBTC_ORDERBOOK_FILL_MIN", 0.9, "upbit.KRW-BTC.orderbook.fill"),
    _T("CQT_CHECK_UPBIT_KRWUSDT_TRADE_LAG_MAX_S", 900,
       "upbit.KRW-USDT.trade.lag_s (sparse: lag only; counted from the collector's start when none yet)"),
    _T("CQT_CHECK_BOOK_FROZEN_S", 120,
       "<book>.frozen_s: seconds the best bid/ask stood unchanged while trades printed outside it "
       "(the Upbit KRW-BTC orderbook)", 1),
    _T("CQT_CHECK_BOOK_MOVE_BPS", 10,
       "a trade this many basis points outside the unchanged best bid/ask counts as the market moving"),
    # ------------------------------------------------------------------ altdata_check: Binance REST
    _T("CQT_CHECK_REST_LAG_FACTOR", 2, "REST series lag limit = this x the series' interval (poll interval or period)"),
    _T("CQT_CHECK_REST_FILL_MIN", 0.9, "REST series fill: samples present / polling slots expected"),
    # ------------------------------------------------------------------ altdata_check: health
    _T("CQT_CHECK_SKEW_MAX_S", 2, "|median(recv_ts_ms - event time)| per WebSocket stream (clock problems)"),
    _T("CQT_CHECK_REJECT_RATIO_MAX", 0.02, "rejects / frames per source in the window"),
    _T("CQT_CHECK_OPEN_GAPS_MAX", 0, "open gaps (rows in `gaps` still open) per stream"),
    _T("CQT_CHECK_GAP_GRACE_S", 120, "a gap younger than this is a backfill in progress, not yet counted as open"),
    # ------------------------------------------------------------------ feature_check
    _T("CQT_CHECK_FEATURE_LATENCY_S", 5, "newest seconds left out of the coverage window (aggregate grace delay)"),
    _T("CQT_CHECK_FEATURE_LAG_MAX_S", 10, "market_1s.lag_s / predictions.lag_s: as-of minus newest row"),
    _T("CQT_CHECK_COVERAGE_MIN", 0.98, "rows / seconds in the window, per table"),
    _T("CQT_CHECK_NULL_RATE_MAX", 0.01, "default null-rate limit per column (per-column overrides: see below)"),
    _T(catalogue.KIMCHI_VALID.env, catalogue.KIMCHI_VALID.bound, "|kimchi_premium| must be below this"),
    _T(catalogue.FUNDING_VALID.env, catalogue.FUNDING_VALID.bound, "|funding_rate| must be at most this"),
    _T("CQT_CHECK_LABEL_MIN_SHARE", 0.05,
       "export.labels.<UP|DOWN|NONE>.share: each class's share of the newest export's rows (all NONE always fails)"),
    # ------------------------------------------------------------------ feature_leak_check
    _T("CQT_CHECK_LEAK_SAMPLES", 50, "t0 sampled in the window for recomputation", 1),
    _T("CQT_CHECK_LEAK_BUDGET_S", 30,
       "seconds the recomputation may take: every second of the window when it fits, else the samples only"),
    _T("CQT_CHECK_LEAK_TOLERANCE", 1e-9, "allowed |stored - recomputed| (relative to max(1, |value|))"),
    _T("CQT_CHECK_LEAK_WARMUP_SHORT", 1, "short warm-up = this x the features' longest look-back"),
    _T("CQT_CHECK_LEAK_WARMUP_LONG", 3, "long warm-up = this x the features' longest look-back"),
    # ------------------------------------------------------------------ coinglass_check
    _T("CQT_CHECK_COINGLASS_MIN_OK_CALLS", 1, "successful calls per enabled endpoint in the window"),
    _T("CQT_CHECK_COINGLASS_OK_AGE_MAX_S", 600, "age of the newest successful call per endpoint"),
    _T("CQT_CHECK_COINGLASS_ERROR_RATIO_MAX", 0.1, "failed calls / calls in the window"),
)
BY_ENV = {t.env: t for t in THRESHOLDS}

# Null-rate limits that differ from CQT_CHECK_NULL_RATE_MAX, keyed "table.column": the
# catalogue's records say which and why (docs/checks.md "Null-rate overrides").
NULL_RATE_DEFAULTS: dict[str, float] = catalogue.null_rate_limits()

# Columns NULL by design (the catalogue says so), judged by a consistency rule instead.
NULL_BY_DESIGN: dict[str, str] = catalogue.null_by_design()


def null_rate_env(table: str, column: str) -> str:
    return f"CQT_CHECK_NULL_RATE_MAX_{table.upper()}_{column.upper()}"


class Thresholds:
    """Threshold values for one run, read from the settings' merged environment."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._cache: dict[str, float] = {}

    def __call__(self, env: str) -> float:
        if env not in self._cache:
            t = BY_ENV[env]  # KeyError = a programming error: every threshold is declared above
            self._cache[env] = self.settings.get_float(env, float(t.default), t.minimum)
        return self._cache[env]

    def null_rate_max(self, table: str, column: str) -> float:
        env = null_rate_env(table, column)
        default = NULL_RATE_DEFAULTS.get(f"{table}.{column}")
        if default is None:
            default = self("CQT_CHECK_NULL_RATE_MAX")
        return self.settings.get_float(env, default, 0.0)

    def poll_interval_s(self, env: str, default: float) -> float:
        """A REST poller's interval (CQT_POLL_*): the same variable the poller reads."""
        return self.settings.get_float(env, default, 0.001)

    def overridden(self) -> dict[str, str]:
        """CQT_CHECK_* variables set in this run's environment (for the JSON output)."""
        return {k: v for k, v in self.settings.raw.items() if k.startswith("CQT_CHECK_") and v != ""}
