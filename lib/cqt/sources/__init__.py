"""Pure per-source parsers: raw payload -> rows for one table, or a reject with a reason.

Contract (details in :mod:`cqt.sources.common`):

* every parser returns :class:`Parsed` (``table``, ``rows`` in the table's column order,
  ``stream``, ``event_ts_ms``, ``ids``, ``kind``, ``source``, ``detail``,
  ``skipped_forming``; ``.sql`` gives the matching INSERT/upsert) or **raises**
  :class:`Reject` (``reason``, ``source``, ``detail``);
* control frames (subscription replies, Upbit ``{"status":"UP"}``, Binance
  ``serverShutdown``, error frames) are not rejects: ``Parsed`` with no rows and
  ``kind`` in ``control | pong | shutdown | error``;
* sanity rules use ``now_ms`` (default: ``recv_ts_ms``), never the clock, and never the
  database: a replay passes each frame's recorded ``recv_ts_ms``.

Parsers: :func:`parse_upbit_frame`, :func:`parse_upbit_ticks`,
:func:`parse_upbit_ticker_rest`, :func:`parse_binance_frame`,
:func:`parse_agg_trades_rest`, :func:`parse_open_interest`, :func:`parse_ratio`,
:func:`parse_premium_index`, :func:`parse_funding_rate`, :func:`parse_coinglass`; and
two dispatchers for captures/replay: :func:`parse_ws_frame`, :func:`parse_rest_answer`.
"""
from __future__ import annotations

from .binance import (
    RATIO_KINDS, parse_agg_trades_rest, parse_binance_frame, parse_funding_rate,
    parse_open_interest, parse_premium_index, parse_ratio,
)
from .coinglass import COINGLASS_ENDPOINTS, parse_coinglass
from .common import (
    HISTORY_MAX_PAST_MS, INTERVALS, MAX_FUTURE_MS, MAX_PAST_MS, SOURCES, TABLE_COLUMNS,
    TABLE_PK, UPSERT_TABLES, Parsed, Reject, insert_sql, interval_ms,
)
from .upbit import parse_upbit_frame, parse_upbit_ticker_rest, parse_upbit_ticks

__all__ = [
    "Parsed", "Reject", "TABLE_COLUMNS", "TABLE_PK", "UPSERT_TABLES", "insert_sql",
    "interval_ms", "INTERVALS", "MAX_PAST_MS", "MAX_FUTURE_MS", "HISTORY_MAX_PAST_MS",
    "SOURCES", "RATIO_KINDS", "COINGLASS_ENDPOINTS",
    "parse_upbit_frame", "parse_upbit_ticks", "parse_upbit_ticker_rest",
    "parse_binance_frame", "parse_agg_trades_rest", "parse_open_interest", "parse_ratio",
    "parse_premium_index", "parse_funding_rate", "parse_coinglass",
    "parse_ws_frame", "parse_rest_answer",
]

_WS = {"upbit": parse_upbit_frame, "binance_ws": parse_binance_frame}


def parse_ws_frame(source: str, raw, recv_ts_ms: int, now_ms: int | None = None) -> Parsed:
    """Capture source 'upbit' | 'binance_ws' -> the matching frame parser."""
    try:
        fn = _WS[source]
    except KeyError:
        raise ValueError(f"not a WebSocket source: {source!r}") from None
    return fn(raw, recv_ts_ms, now_ms)


def _param(params, name):
    v = (params or {}).get(name)
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    return None if v is None else str(v)


def parse_rest_answer(source: str, path: str, params: dict | None, body, recv_ts_ms: int,
                      now_ms: int | None = None) -> Parsed | None:
    """A recorded REST answer (capture ``source``, ``path``, ``params``, ``raw`` body) ->
    the matching parser's result. Paths that carry no rows (``/fapi/v1/time`` …) -> None.
    Raises Reject like the parsers."""
    path = path.split("?", 1)[0]
    if source == "binance_rest":
        if path == "/fapi/v1/aggTrades":
            return parse_agg_trades_rest(body, _param(params, "symbol"), recv_ts_ms, now_ms)
        if path == "/fapi/v1/openInterest":
            return parse_open_interest(body, recv_ts_ms, now_ms)
        if path == "/fapi/v1/premiumIndex":
            return parse_premium_index(body, recv_ts_ms, now_ms)
        if path == "/fapi/v1/fundingRate":
            return parse_funding_rate(body, recv_ts_ms, now_ms)
        if path.startswith("/futures/data/"):
            name = path.rsplit("/", 1)[1]
            if name in RATIO_KINDS:
                return parse_ratio(body, name, _param(params, "period"),
                                   _param(params, "symbol"), recv_ts_ms, now_ms)
        return None
    if source == "upbit_rest":
        if path == "/v1/trades/ticks":
            return parse_upbit_ticks(body, recv_ts_ms, now_ms)
        if path == "/v1/ticker":
            return parse_upbit_ticker_rest(body, recv_ts_ms, now_ms)
        return None
    if source == "coinglass":
        for ep in COINGLASS_ENDPOINTS.values():
            if ep.path == path:
                return parse_coinglass(ep.key, body, _param(params, "interval"), recv_ts_ms,
                                       now_ms, symbol=_param(params, "symbol"),
                                       exchange=_param(params, "exchange"),
                                       exchanges=_param(params, "exchange_list"))
        return None
    raise ValueError(f"not a REST source: {source!r}")
