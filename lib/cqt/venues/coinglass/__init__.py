"""Coinglass API v4: everything cqt knows about this data vendor.

    parse.py   pure parsers of the four endpoints (COINGLASS_ENDPOINTS; no I/O)
    poll.py    `bin/cqt-poll-coinglass`: plans and their limits, the jobs, how an answer
               is judged (`classify`: key rejected, rate limited, plan refusal …), every
               call recorded in coinglass_call_status, the program

This module is the venue record (`VENUE`) the shared machinery sees, and the request
context the poller and a replay share (the coin, the exchange list).
"""
from __future__ import annotations

from typing import Any, Mapping

from ...symbols import coinglass_coin_of_binance
from ..base import Venue
from ..common import Parsed, request_param
from .parse import COINGLASS_ENDPOINTS, SRC, parse_coinglass

#: REST paths whose answers carry rows
DATA_PATHS: tuple[str, ...] = tuple(ep.path for ep in COINGLASS_ENDPOINTS.values())


def coin_of(settings) -> str:
    """The coin for aggregated endpoints: CQT_COINGLASS_SYMBOL, else the Binance symbol
    without its quote asset (BTCUSDT -> BTC; cqt.symbols)."""
    coin = settings.get_str("CQT_COINGLASS_SYMBOL")
    if coin:
        return coin.strip().upper()
    return coinglass_coin_of_binance(settings.binance_symbol)


def exchange_list(settings) -> str:
    """`exchange_list` of the aggregated liquidations: CQT_COINGLASS_EXCHANGES, items trimmed."""
    return ",".join(x.strip() for x in settings.get_str("CQT_COINGLASS_EXCHANGES").split(",") if x.strip())


def exchange(settings) -> str:
    """The exchange of the per-exchange endpoints (funding, long/short)."""
    return settings.get_str("CQT_COINGLASS_EXCHANGE").strip()



def parse_rest(path: str, params: Mapping[str, Any] | None, body, recv_ts_ms: int,
               now_ms: int | None = None) -> Parsed | None:
    """A Coinglass answer -> parse_coinglass's result; None for other paths. Raises Reject;
    a ValueError when params lack the context (interval, symbol …) the endpoint needs."""
    for ep in COINGLASS_ENDPOINTS.values():
        if ep.path == path:
            return parse_coinglass(ep.key, body, request_param(params, "interval"), recv_ts_ms, now_ms,
                                   symbol=request_param(params, "symbol"), exchange=request_param(params, "exchange"),
                                   exchanges=request_param(params, "exchange_list"))
    return None


def rest_context(path: str, params: Mapping[str, Any] | None, settings) -> dict[str, Any]:
    """`params` completed from settings as the live poller would have sent them (only for
    hand-made or old captures; live requests always carry them)."""
    p = dict(params or {})
    p.setdefault("interval", settings.coinglass_interval)
    if path.endswith("/aggregated-history"):
        p.setdefault("symbol", coin_of(settings))
    else:
        p.setdefault("symbol", settings.binance_symbol)
        p.setdefault("exchange", exchange(settings))
    if "liquidation" in path:
        p.setdefault("exchange_list", exchange_list(settings))
    return p


VENUE = Venue(
    name="coinglass", ws_source=None, rest_source=SRC, parse_rest=parse_rest, data_paths=DATA_PATHS,
    rest_context=rest_context, programs={"cqt-poll-coinglass": "cqt.venues.coinglass.poll:main"})
