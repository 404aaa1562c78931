"""Upbit's market list, read for the start-up check of `bin/cqt-collect-upbit`.

`GET /v1/market/all` lists every market Upbit trades (`[{"market": "KRW-BTC",
"korean_name": …, "english_name": …}, …]`); a delisted market is no longer in it. A code
that is not listed delivers no frames (and `/v1/trades/ticks` answers 404 for it), so it
is one line at start rather than a collector that watches silence. Pure: the HTTP call is
the caller's.
"""
from __future__ import annotations

from typing import Any, Iterable

PATH = "/v1/market/all"


def code_problems(markets: Any, codes: Iterable[str]) -> list[str]:
    """For each of `codes` Upbit does not list: 'KRW-XYZ is not listed'; [] when all are.

    Raises ValueError for an answer that is not a list of market objects."""
    if not isinstance(markets, list) or not markets or not all(isinstance(m, dict) for m in markets):
        raise ValueError("the answer is not a list of markets")
    listed = {m.get("market") for m in markets}
    return [f"{code} is not listed" for code in codes if code not in listed]
