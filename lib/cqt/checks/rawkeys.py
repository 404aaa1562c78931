"""Which rows of a raw table belong to the series the features of one asset read, as an
index-friendly filter: every time index in the schema leads with this key (code, symbol or
kind), so `MIN(time_col)` or a time range under it is a seek, not a scan of the whole table."""
from __future__ import annotations

from typing import Any

# table -> ((key column, FeatureParams attribute, or "=literal"), ...)
RAW_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "upbit_trades": (("code", "upbit_code"),),
    "upbit_orderbook": (("code", "upbit_code"),),
    "upbit_ticker": (("code", "upbit_code"),),
    "binance_agg_trades": (("symbol", "binance_symbol"),),
    "binance_mark_price": (("symbol", "binance_symbol"),),
    "binance_book_ticker": (("symbol", "binance_symbol"),),
    "binance_liquidations": (("symbol", "binance_symbol"),),
    "binance_open_interest": (("symbol", "binance_symbol"),),
    "binance_premium_index": (("symbol", "binance_symbol"),),
    "binance_funding_rate": (("symbol", "binance_symbol"),),
    "binance_ratios": (("symbol", "binance_symbol"), ("kind", "=global_long_short")),
}


def key_filter(table: str, params: Any) -> tuple[str, tuple]:
    """(SQL condition, args) selecting the series of `table` the features of `params.asset` use;
    ("1", ()) for tables whose time index needs no key (Coinglass: indexed on avail_ts_ms)."""
    if table not in RAW_KEYS:
        return "1", ()
    keys = RAW_KEYS[table]
    cond = " AND ".join(f"{col} = ?" for col, _ in keys)
    return cond, tuple(attr[1:] if attr.startswith("=") else getattr(params, attr) for _, attr in keys)
