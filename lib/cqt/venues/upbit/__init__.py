"""Upbit (KRW spot): everything cqt knows about this exchange.

    parse.py     pure parsers: WebSocket frames (DEFAULT and SIMPLE formats), REST
                 trades and ticker (no I/O)
    collect.py   `bin/cqt-collect-upbit`: the endpoint, its subscription message, stream
                 rules, gap routing, the program
    backfill.py  UpbitTradeFill (trades by time over REST) and UpbitReconcile

This module is the venue record (`VENUE`) the shared machinery sees.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..base import Venue
from ..common import Parsed
from .parse import REST, WS, parse_upbit_frame, parse_upbit_ticker_rest, parse_upbit_ticks

#: REST paths whose answers carry rows
DATA_PATHS: tuple[str, ...] = ("/v1/trades/ticks", "/v1/ticker")


def parse_rest(path: str, params: Mapping[str, Any] | None, body, recv_ts_ms: int,
               now_ms: int | None = None) -> Parsed | None:
    """A REST answer -> its parser's result; None for paths without rows. Raises Reject."""
    if path == "/v1/trades/ticks":
        return parse_upbit_ticks(body, recv_ts_ms, now_ms)
    if path == "/v1/ticker":
        return parse_upbit_ticker_rest(body, recv_ts_ms, now_ms)
    return None


VENUE = Venue(
    name="upbit", ws_source=WS, rest_source=REST, parse_frame=parse_upbit_frame, parse_rest=parse_rest,
    data_paths=DATA_PATHS, programs={"cqt-collect-upbit": "cqt.venues.upbit.collect:main"})
