"""Binance's market list, read for the start-up check of `bin/cqt-collect-binance`.

`GET /fapi/v1/exchangeInfo` (weight 1) lists every USDⓈ-M contract with its `status`
(`TRADING`, `PENDING_TRADING`, `SETTLING`, `CLOSE`, …) and `contractType` (`PERPETUAL`,
`CURRENT_QUARTER`, …). The collector streams perpetuals only, and a symbol Binance does
not trade delivers no frames, so its stall watchdog would reconnect forever: better one
line at start. Pure: the HTTP call is the caller's.
"""
from __future__ import annotations

from typing import Any, Iterable

PATH = "/fapi/v1/exchangeInfo"


def symbol_problems(info: Any, symbols: Iterable[str]) -> list[str]:
    """For each of `symbols` Binance does not trade as a perpetual: why, in a few words
    ('XYZUSDT is not listed', 'ABCUSDT is not trading (status SETTLING)', 'BTCUSDT_250627 is
    not a perpetual (contractType CURRENT_QUARTER)'); [] when every one is fine.

    Raises ValueError for an answer that is not an exchangeInfo object (no `symbols` list)."""
    listed = info.get("symbols") if isinstance(info, dict) else None
    if not isinstance(listed, list):
        raise ValueError("the answer has no symbols list")
    by_name = {s.get("symbol"): s for s in listed if isinstance(s, dict)}
    problems = []
    for sym in symbols:
        entry = by_name.get(sym)
        if entry is None:
            problems.append(f"{sym} is not listed")
        elif entry.get("status") != "TRADING":
            problems.append(f"{sym} is not trading (status {entry.get('status')})")
        elif entry.get("contractType") != "PERPETUAL":
            problems.append(f"{sym} is not a perpetual (contractType {entry.get('contractType')})")
    return problems
