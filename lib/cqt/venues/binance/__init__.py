"""Binance USDⓈ-M futures: everything cqt knows about this exchange.

    parse.py     pure parsers: WebSocket frames, REST answers (no I/O)
    collect.py   `bin/cqt-collect-binance`: endpoints (market / public), stream rules,
                 gap routing, the program
    backfill.py  AggTradeFill: missing aggTrade ids over REST
    poll.py      `bin/cqt-poll-binance`: the REST jobs (open interest, ratios, premium,
                 funding) and their limits, the program

This module is the venue record (`VENUE`) the shared machinery sees: which capture
sources are this venue's and which parser reads each recorded REST answer.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..base import Venue
from ..common import Parsed, request_param
from .parse import (
    RATIO_KINDS,
    REST,
    WS,
    parse_agg_trades_rest,
    parse_binance_frame,
    parse_funding_rate,
    parse_open_interest,
    parse_premium_index,
    parse_ratio,
)

RATIO_PERIOD = "5m"

#: REST paths whose answers carry rows
DATA_PATHS: tuple[str, ...] = (
    "/fapi/v1/aggTrades", "/fapi/v1/openInterest", "/fapi/v1/premiumIndex", "/fapi/v1/fundingRate",
    "/futures/data/openInterestHist", "/futures/data/globalLongShortAccountRatio",
    "/futures/data/topLongShortPositionRatio", "/futures/data/takerlongshortRatio")



def parse_rest(path: str, params: Mapping[str, Any] | None, body, recv_ts_ms: int,
               now_ms: int | None = None) -> Parsed | None:
    """A REST answer -> its parser's result; None for paths without rows (`/fapi/v1/time` …).
    Raises Reject like the parsers."""
    if path == "/fapi/v1/aggTrades":
        return parse_agg_trades_rest(body, request_param(params, "symbol"), recv_ts_ms, now_ms)
    if path == "/fapi/v1/openInterest":
        return parse_open_interest(body, recv_ts_ms, now_ms)
    if path == "/fapi/v1/premiumIndex":
        return parse_premium_index(body, recv_ts_ms, now_ms)
    if path == "/fapi/v1/fundingRate":
        return parse_funding_rate(body, recv_ts_ms, now_ms)
    if path.startswith("/futures/data/"):
        name = path.rsplit("/", 1)[1]
        if name in RATIO_KINDS:
            return parse_ratio(body, name, request_param(params, "period"), request_param(params, "symbol"),
                               recv_ts_ms, now_ms)
    return None


def rest_context(path: str, params: Mapping[str, Any] | None, settings) -> dict[str, Any]:
    """`params` completed from settings where a hand-made or old capture lacks them (a
    capture without a symbol was made by the single-symbol cqt: the first configured one)."""
    p = dict(params or {})
    if path == "/fapi/v1/aggTrades" or path.startswith("/futures/data/"):
        p.setdefault("symbol", settings.binance_symbols[0])
    if path.startswith("/futures/data/"):
        p.setdefault("period", RATIO_PERIOD)
    return p


VENUE = Venue(
    name="binance", ws_source=WS, rest_source=REST, parse_frame=parse_binance_frame, parse_rest=parse_rest,
    data_paths=DATA_PATHS, rest_context=rest_context,
    programs={"cqt-collect-binance": "cqt.venues.binance.collect:main",
              "cqt-poll-binance": "cqt.venues.binance.poll:main"})
