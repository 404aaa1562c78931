"""Every venue, and the dispatch by capture source.

A capture record, a replayed line and a synthesised answer name their source
(`upbit`, `binance_ws`, `upbit_rest`, `binance_rest`, `coinglass`); this module hands
them to the venue whose source it is (`VENUES`, each a `cqt.venues.base.Venue`).

Two ways to read a REST answer:

* `parse_rest_body(source, path, params, body, recv_ts_ms)` — the parser's contract:
  `Parsed`, None for a path without rows, **raises** Reject (replay of a 200 answer);
* `rest_answer_outcome(source, path, params, body, recv_ts_ms, now_ms, settings, status)`
  — **never raises**: `Parsed`, a `Reject` (bad body, error envelope, non-2xx status) or
  None (no rows on that path, or the request lacked context). The pollers and synth
  store answers through it, so a replayed or synthesised answer yields exactly the rows
  the live path would have written:

      res = rest_answer_outcome("binance_rest", "/fapi/v1/openInterest", {"symbol": "BTCUSDT"},
                                body, recv_ts_ms)
      if isinstance(res, Reject): ...           # bad answer: svc.rejects.record(...)
      elif res is not None and res.rows: writer.put_many(store_sql(res.table), res.rows)

`now_ms` defaults to `recv_ts_ms` (a replay judges every answer by its own receive time,
so an old capture parses cleanly). `settings` fills request context the recorded `params`
may lack (`Venue.rest_context`) — live pollers always send it.
"""
from __future__ import annotations

from typing import Any, Mapping

from . import binance, coinglass, upbit
from .base import Venue
from .common import Parsed, Reject, store_sql

__all__ = ["VENUES", "WS_SOURCES", "REST_SOURCES", "DATA_PATHS", "venue_of", "parse_ws_frame",
           "parse_rest_body", "rest_answer_outcome", "rest_context", "store_sql", "Parsed", "Reject"]

VENUES: tuple[Venue, ...] = (upbit.VENUE, binance.VENUE, coinglass.VENUE)

_BY_WS: dict[str, Venue] = {v.ws_source: v for v in VENUES if v.ws_source}
_BY_REST: dict[str, Venue] = {v.rest_source: v for v in VENUES if v.rest_source}
WS_SOURCES: tuple[str, ...] = tuple(_BY_WS)
REST_SOURCES: tuple[str, ...] = tuple(_BY_REST)

#: paths whose answers carry rows, per capture source
DATA_PATHS: dict[str, tuple[str, ...]] = {s: v.data_paths for s, v in _BY_REST.items()}


def venue_of(source: str) -> Venue | None:
    """The venue a capture source belongs to (None: not a venue's source)."""
    return _BY_WS.get(source) or _BY_REST.get(source)


def parse_ws_frame(source: str, raw, recv_ts_ms: int, now_ms: int | None = None) -> Parsed:
    """Capture source 'upbit' | 'binance_ws' -> that venue's frame parser. Raises Reject."""
    venue = _BY_WS.get(source)
    if venue is None:
        raise ValueError(f"not a WebSocket source: {source!r}")
    return venue.parse_frame(raw, recv_ts_ms, now_ms)


def parse_rest_body(source: str, path: str, params: Mapping[str, Any] | None, body, recv_ts_ms: int,
                    now_ms: int | None = None) -> Parsed | None:
    """A recorded REST answer (capture `source`, `path`, `params`, `raw` body) -> the
    matching parser's result. Paths that carry no rows (`/fapi/v1/time` …) -> None.
    Raises Reject like the parsers; ValueError for an unknown source or missing context."""
    venue = _BY_REST.get(source)
    if venue is None:
        raise ValueError(f"not a REST source: {source!r}")
    return venue.parse_rest(path.split("?", 1)[0], params, body, recv_ts_ms, now_ms)


def rest_context(source: str, path: str, params: Mapping[str, Any] | None, settings=None) -> dict[str, Any]:
    """`params` completed from settings where the parser needs context the request did not
    name (only for hand-made or old captures; live requests always carry it)."""
    venue = _BY_REST.get(source)
    if settings is None or venue is None or venue.rest_context is None:
        return dict(params or {})
    return venue.rest_context(path, params, settings)


def rest_answer_outcome(source: str, path: str, params: Mapping[str, Any] | None, body: Any,
                        recv_ts_ms: int, now_ms: int | None = None, settings=None,
                        status: int | None = 200) -> Parsed | Reject | None:
    """Judge one REST answer. Never raises for any body.

    Returns the parser's `Parsed` (rows may be empty), a `Reject` (bad body, an error
    envelope, a non-2xx answer — reason `http_<status>` when the body carries nothing
    better), or None when the path carries no rows (`/fapi/v1/time`, unknown paths) or
    the request lacked context the parser needs (a caller/capture problem, not bad data).
    """
    path = path.split("?", 1)[0]
    ctx = rest_context(source, path, params, settings)
    try:
        res = parse_rest_body(source, path, ctx, body, recv_ts_ms, now_ms)
    except Reject as rej:
        if status is not None and not 200 <= status < 300 and not rej.reason.startswith("api_error"):
            return Reject(f"http_{status}", source, rej.detail)
        return rej
    except ValueError:
        # unknown source, missing context (symbol/interval) or an unknown interval
        return None
    if res is not None and status is not None and not 200 <= status < 300:
        # A body that parses as data under an error status is not trusted.
        return Reject(f"http_{status}", source, None)
    return res
