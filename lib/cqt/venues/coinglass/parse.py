"""Coinglass API v4 parsers (REST answers). Pure functions.

Errors are raised as :class:`cqt.venues.common.Reject` (source 'coinglass'; reasons: see
that module); success returns :class:`cqt.venues.common.Parsed`.

:func:`parse_coinglass` reads the four endpoints the poller uses:

    key             path                                              table
    open_interest   /api/futures/open-interest/aggregated-history      coinglass_open_interest
    funding         /api/futures/funding-rate/history                  coinglass_funding
    liquidations    /api/futures/liquidation/aggregated-history        coinglass_liquidations
    long_short      /api/futures/global-long-short-account-ratio/history coinglass_long_short

(``endpoint_key`` may be the key or the path.) Envelope: success is ``code == "0"`` (the
int 0 is accepted too); any other code is ``Reject('api_error:<code>')`` with the server's
``msg`` (cut, long tokens masked) in ``detail``.

Bars: ``time`` is the bar's open; ``avail_ts_ms = open_ts_ms + interval_ms(interval)``.
Only closed bars (``avail_ts_ms <= now_ms``) become rows; forming bars are counted in
``Parsed.skipped_forming`` (their values are not validated: they are not stored and are
fetched again once closed). Rows are written with an upsert (``Parsed.sql``) because
Coinglass may revise a recent bar. A bad value in any closed bar rejects the whole
answer. Numbers may be JSON numbers or numeric strings; ``time`` an integer (or digit
string). ``event_ts_ms`` is the newest stored bar's open time.

Value rules: open interest > 0; funding rates finite (may be negative); liquidation USD,
long/short percents and ratio >= 0.
"""
from __future__ import annotations

from ..common import (
    ANY,
    HISTORY_MAX_PAST_MS,
    MAX_FUTURE_MS,
    Parsed,
    Reject,
    bad_type,
    bounds,
    clip,
    decode,
    interval_ms,
    missing,
    nonneg,
    pos,
    to_float,
    to_time,
    token,
)

__all__ = ["parse_coinglass", "COINGLASS_ENDPOINTS", "interval_ms"]

SRC = "coinglass"


class _Endpoint:
    __slots__ = ("key", "path", "table", "fields", "check", "context")

    def __init__(self, key, path, table, fields, check, context):
        self.key, self.path, self.table = key, path, table
        self.fields, self.check, self.context = fields, check, context


_OHLC = ("open", "high", "low", "close")

COINGLASS_ENDPOINTS: dict[str, _Endpoint] = {e.key: e for e in (
    _Endpoint("open_interest", "/api/futures/open-interest/aggregated-history",
              "coinglass_open_interest", _OHLC, pos, ("symbol",)),
    _Endpoint("funding", "/api/futures/funding-rate/history",
              "coinglass_funding", _OHLC, to_float, ("exchange", "symbol")),
    _Endpoint("liquidations", "/api/futures/liquidation/aggregated-history",
              "coinglass_liquidations",
              ("aggregated_long_liquidation_usd", "aggregated_short_liquidation_usd"),
              nonneg, ("symbol", "exchanges")),
    _Endpoint("long_short", "/api/futures/global-long-short-account-ratio/history",
              "coinglass_long_short",
              ("global_account_long_percent", "global_account_short_percent",
               "global_account_long_short_ratio"),
              nonneg, ("exchange", "symbol")),
)}
_BY_PATH = {e.path: e for e in COINGLASS_ENDPOINTS.values()}


def _endpoint(key: str) -> _Endpoint:
    ep = COINGLASS_ENDPOINTS.get(key) or _BY_PATH.get(key) or _BY_PATH.get(
        str(key).split("?", 1)[0])
    if ep is None:
        raise ValueError(f"unknown Coinglass endpoint {key!r}; one of "
                         f"{', '.join(COINGLASS_ENDPOINTS)}")
    return ep


def parse_coinglass(endpoint_key: str, body, interval: str, recv_ts_ms: int,
                    now_ms: int | None = None, *, symbol: str | None = None,
                    exchange: str | None = None, exchanges=None,
                    max_past_ms: int = HISTORY_MAX_PAST_MS,
                    max_future_ms: int = MAX_FUTURE_MS) -> Parsed:
    """One Coinglass answer -> Parsed (closed bars only), or raise Reject.

    Context, as asked for in the request: ``open_interest`` needs ``symbol`` (coin, BTC);
    ``funding`` and ``long_short`` need ``exchange`` and ``symbol`` (pair, BTCUSDT);
    ``liquidations`` needs ``symbol`` (coin) and ``exchanges`` (the exchange_list string,
    or a list that is joined with ','). Missing context or an unknown interval/endpoint
    is a ValueError (a caller bug, not bad input)."""
    ep = _endpoint(endpoint_key)
    step = interval_ms(interval)
    if isinstance(exchanges, (list, tuple)):
        exchanges = ",".join(exchanges)
    ctx = {"symbol": symbol, "exchange": exchange, "exchanges": exchanges}
    for name in ep.context:
        if not ctx[name] or type(ctx[name]) is not str:
            raise ValueError(f"Coinglass {ep.key}: {name}= is required")

    obj = decode(body, SRC)
    if type(obj) is not dict:
        raise Reject("not_object", SRC, type(obj).__name__)
    if "code" not in obj:
        raise Reject("missing_key:code", SRC)
    code = obj["code"]
    if not (code == "0" or (type(code) is int and code == 0)):
        raise Reject(f"api_error:{token(code)}", SRC, clip(obj.get("msg", "")))
    if "data" not in obj:
        raise Reject("missing_key:data", SRC)
    data = obj["data"]
    if type(data) is not list:
        raise bad_type("data", data, SRC)

    now = recv_ts_ms if now_ms is None else now_ms
    lo, hi = bounds(recv_ts_ms, now_ms, max_past_ms, max_future_ms)
    fields, check, table = ep.fields, ep.check, ep.table
    key = ep.key
    rows = []
    forming = 0
    newest = None
    for bar in data:
        if type(bar) is not dict:
            raise bad_type("data.item", bar, SRC)
        try:
            t = to_time(bar["time"], "time", SRC, lo, hi, True)
        except KeyError as exc:
            raise missing(exc, SRC) from None
        avail = t + step
        if avail > now:
            forming += 1
            continue
        try:
            vals = tuple(check(bar[f], f, SRC, ANY) for f in fields)
        except KeyError as exc:
            raise missing(exc, SRC) from None
        if key == "open_interest":
            row = (symbol, interval, t, avail) + vals + (recv_ts_ms,)
        elif key == "liquidations":
            row = (symbol, exchanges, interval, t, avail) + vals + (recv_ts_ms,)
        else:
            row = (exchange, symbol, interval, t, avail) + vals + (recv_ts_ms,)
        rows.append(row)
        if newest is None or t > newest:
            newest = t
    if key == "open_interest":
        stream = f"{symbol}@{key}:{interval}"
    elif key == "liquidations":
        stream = f"{symbol}[{exchanges}]@{key}:{interval}"
    else:
        stream = f"{exchange}:{symbol}@{key}:{interval}"
    return Parsed(table, rows, stream, newest, None, key, SRC, None, forming)

