"""Coinglass API v4: everything cqt knows about this data vendor.

    parse.py   pure parsers of the four endpoints (COINGLASS_ENDPOINTS; no I/O)
    poll.py    `bin/cqt-poll-coinglass`: plans and their limits, the jobs, how an answer
               is judged (`classify`: key rejected, rate limited, plan refusal …), every
               call recorded in coinglass_call_status, the program

This module is the venue record (`VENUE`) the shared machinery sees, and the request
context the poller and a replay share (the coins and pairs, the exchange list, how a
coinglass_call_status row names its coin).
"""
from __future__ import annotations

from typing import Any, Mapping

from ...config import ConfigError
from ...symbols import coinglass_coin, coinglass_coin_of_binance
from ..base import Venue
from ..common import Parsed, request_param
from .parse import COINGLASS_ENDPOINTS, SRC, parse_coinglass

#: REST paths whose answers carry rows
DATA_PATHS: tuple[str, ...] = tuple(ep.path for ep in COINGLASS_ENDPOINTS.values())
#: how coinglass_call_status.endpoint names the coin of a call: `<path>?coin=<COIN>`
COIN_MARK = "?coin="


def markets(settings) -> tuple[tuple[str, str], ...]:
    """(coin, pair) per asset of CQT_SYMBOLS, in order: the coin of the aggregated
    endpoints (the asset: BTC) and the pair of the per-exchange ones (the Binance perpetual
    collected for it: BTCUSDT).

    CQT_COINGLASS_SYMBOL (the single-symbol form) replaces the coin only while CQT_SYMBOLS
    names one asset; with several it is a ConfigError (one coin cannot stand for several
    assets)."""
    override = settings.get_str("CQT_COINGLASS_SYMBOL").strip().upper()
    assets = settings.assets
    if override and len(assets) != 1:
        raise ConfigError("CQT_COINGLASS_SYMBOL", f"{override!r} applies only when CQT_SYMBOLS names one asset; "
                          f"it names {', '.join(assets)}: unset it (each asset is then polled as its own coin)")
    return tuple((override or coinglass_coin(a), settings.binance_symbol_of(a)) for a in assets)


def first_market(settings) -> tuple[str, str]:
    """The (coin, pair) a request without its symbol was made for (a capture of the
    single-symbol cqt): the first asset's. Never raises (replay completes old captures)."""
    asset = settings.assets[0]
    override = settings.get_str("CQT_COINGLASS_SYMBOL").strip().upper()
    return (override if override and len(settings.assets) == 1 else coinglass_coin(asset),
            settings.binance_symbol_of(asset))


def call_endpoint(path: str, coin: str | None) -> str:
    """coinglass_call_status.endpoint of one call: the path and the coin it was for,
    `/api/futures/funding-rate/history?coin=BTC` (the bare path when the coin is unknown)."""
    return f"{path}{COIN_MARK}{coin}" if coin else path


def coin_of_params(params) -> str | None:
    """The coin a request was for, from its query parameters: `symbol` is the coin on the
    aggregated endpoints (BTC) and the pair on the per-exchange ones (BTCUSDT -> BTC).
    None when the request names no symbol."""
    sym = str((params or {}).get("symbol") or "").strip()
    return coinglass_coin_of_binance(sym) if sym else None


def split_call_endpoint(endpoint: str) -> tuple[str, str | None]:
    """`<path>?coin=<COIN>` -> (path, coin); a bare path (rows of the single-symbol cqt) -> (path, None)."""
    path, mark, coin = endpoint.partition(COIN_MARK)
    return path, (coin or None) if mark else None


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
    coin, pair = first_market(settings)
    p.setdefault("interval", settings.coinglass_interval)
    if path.endswith("/aggregated-history"):
        p.setdefault("symbol", coin)
    else:
        p.setdefault("symbol", pair)
        p.setdefault("exchange", exchange(settings))
    if "liquidation" in path:
        p.setdefault("exchange_list", exchange_list(settings))
    return p


VENUE = Venue(
    name="coinglass", ws_source=None, rest_source=SRC, parse_rest=parse_rest, data_paths=DATA_PATHS,
    rest_context=rest_context, programs={"cqt-poll-coinglass": "cqt.venues.coinglass.poll:main"})
