"""Export: cqt-export's staleness limits and command-line defaults."""
from __future__ import annotations

from functools import partial

from ..var import Var

_V = partial(Var, component="export")

TABLE: tuple[Var, ...] = (
    # A feature row whose source is older than its limit is refused as stale.
    _V("CQT_EXPORT_MAX_AGE_UPBIT_TRADE_S", "60", "float", "Upbit KRW-BTC last trade (`close_age_ms`)", 0.0),
    _V("CQT_EXPORT_MAX_AGE_UPBIT_BOOK_S", "10", "float", "Upbit order book (`book_age_ms`)", 0.0),
    _V("CQT_EXPORT_MAX_AGE_BINANCE_S", "10", "float", "Binance last trade (`binance_age_ms`)", 0.0),
    _V("CQT_EXPORT_MAX_AGE_MARK_S", "10", "float", "Binance mark price (`mark_age_ms`)", 0.0),
    _V("CQT_EXPORT_MAX_AGE_USDT_KRW_S", "600", "float", "Upbit KRW-USDT last trade (`usdt_krw_age_ms`)", 0.0),
    _V("CQT_EXPORT_HORIZON_S", "120", "int", "default `--horizon` of cqt-export and cqt-nightly", 1),
    _V("CQT_EXPORT_ALLOW_MISSING", "", "str",
       "default `--allow-missing`: feature columns that may be NULL (comma list or `all`)", default_doc="(none)"),
    _V("CQT_EXPORT_TEST_STALL_S", "0", "float", "test only: sleep after the first row group (to test a kill mid-write)",
       0.0),
)
