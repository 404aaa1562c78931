"""Upbit parsers (WebSocket frames and REST answers). Pure functions.

Errors are raised as :class:`cqt.venues.common.Reject` (reasons: see that module);
success returns :class:`cqt.venues.common.Parsed`.

WebSocket — :func:`parse_upbit_frame` reads one frame (text or the binary frames Upbit
actually sends, or a decoded dict). Both the DEFAULT format (``type``, ``code``,
``trade_price`` …) and the SIMPLE format (``ty``, ``cd``, ``tp`` …) are read through one
key map per format, chosen by whether the frame has ``type`` or ``ty``; reject reasons
name the key as the frame spells it (``missing_key:trade_price`` / ``missing_key:tp``).

    trade      -> upbit_trades    ask_bid ASK -> 'sell', BID -> 'buy' (taker side);
                                  trade_ts_ms = trade_timestamp (not timestamp);
                                  event_ts_ms = message timestamp
    orderbook  -> upbit_orderbook ts = message timestamp; best levels = orderbook_units[0];
                                  totals = total_bid_size / total_ask_size; levels = units
    ticker     -> upbit_ticker    ts = message timestamp (frames without ``type`` carrying
                                  ``market`` — the REST ticker shape — are read as ticker)
    {"status":"UP"}       -> kind 'pong' (reply to a text PING), no rows
    {"error":{"name":…}}  -> kind 'error', detail 'NAME: message', no rows

Time bounds: the message ``timestamp`` must be within [now - max_past, now + max_future];
a ``trade_timestamp`` may be older (a snapshot of a quiet market reports its last trade),
down to ``HISTORY_MAX_PAST_MS``, but never in the future.

Numbers in WebSocket frames must be JSON numbers; ids and times JSON integers. Optional
and newer keys (best_*, level, stream_type, …) are neither required nor stored. Codes are
taken as they come (any market).

REST — :func:`parse_upbit_ticks` (``/v1/trades/ticks``; REST ``timestamp`` is the trade
time) and :func:`parse_upbit_ticker_rest` (``/v1/ticker``) accept numbers or numeric
strings (ccxt recordings stringify everything). ``{"error":{"name":N,…}}`` ->
``Reject('api_error:N')``.
"""
from __future__ import annotations

from ..common import (
    ANY,
    HISTORY_MAX_PAST_MS,
    MAX_FUTURE_MS,
    MAX_PAST_MS,
    NUM,
    Parsed,
    Reject,
    bad_type,
    bounds,
    clip,
    decode,
    missing,
    nonneg,
    opt_float,
    pos,
    to_id,
    to_text,
    to_time,
    token,
)

__all__ = ["parse_upbit_frame", "parse_upbit_ticks", "parse_upbit_ticker_rest"]

WS = "upbit"
REST = "upbit_rest"

_SIDE = {"ASK": "sell", "BID": "buy"}


class _Keys:
    __slots__ = ("type", "code", "tms", "ttms", "tp", "tv", "ab", "sid", "tas", "tbs", "obu",
                 "ap", "bp", "as_", "bs", "pcp", "atv24h", "atp24h", "obu_prefix")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)


DEFAULT = _Keys(type="type", code="code", tms="timestamp", ttms="trade_timestamp",
                tp="trade_price", tv="trade_volume", ab="ask_bid", sid="sequential_id",
                tas="total_ask_size", tbs="total_bid_size", obu="orderbook_units",
                ap="ask_price", bp="bid_price", as_="ask_size", bs="bid_size",
                pcp="prev_closing_price", atv24h="acc_trade_volume_24h",
                atp24h="acc_trade_price_24h", obu_prefix="orderbook_units.")
SIMPLE = _Keys(type="ty", code="cd", tms="tms", ttms="ttms", tp="tp", tv="tv", ab="ab",
               sid="sid", tas="tas", tbs="tbs", obu="obu", ap="ap", bp="bp", as_="as",
               bs="bs", pcp="pcp", atv24h="atv24h", atp24h="atp24h", obu_prefix="obu.")


def parse_upbit_frame(raw, recv_ts_ms: int, now_ms: int | None = None, *,
                      max_past_ms: int = MAX_PAST_MS,
                      max_future_ms: int = MAX_FUTURE_MS) -> Parsed:
    """One Upbit WebSocket frame -> Parsed, or raise Reject (source 'upbit')."""
    obj = decode(raw, WS)
    if type(obj) is not dict:
        raise Reject("not_object", WS, type(obj).__name__)
    K = DEFAULT
    t = obj.get("type")
    if t is None:
        t = obj.get("ty")
        if t is not None:
            K = SIMPLE
    lo, hi = bounds(recv_ts_ms, now_ms, max_past_ms, max_future_ms)
    if t == "trade" or t == "ticker":
        # the *message* timestamp gets the live bounds; the time of the trade it reports
        # may be old (snapshot of a quiet market), so its past bound is the history one
        tlo = hi - max_future_ms - HISTORY_MAX_PAST_MS
        if t == "trade":
            return _trade(obj, K, recv_ts_ms, lo, hi, tlo)
        return _ticker(obj, K, K.code, recv_ts_ms, lo, hi, tlo, WS, NUM, False)
    if t == "orderbook":
        return _orderbook(obj, K, recv_ts_ms, lo, hi)
    if t is None:
        if "status" in obj:
            return Parsed("", [], "status", None, None, "pong", WS, clip(obj["status"]))
        if "error" in obj:
            return Parsed("", [], "error", None, None, "error", WS, _error_text(obj["error"]))
        if "market" in obj and "trade_price" in obj:
            return _ticker(obj, DEFAULT, "market", recv_ts_ms, lo, hi,
                           hi - max_future_ms - HISTORY_MAX_PAST_MS, WS, NUM, False)
        raise Reject("missing_key:type", WS)
    if type(t) is not str:
        raise bad_type(K.type, t, WS)
    raise Reject(f"unknown_event:{token(t)}", WS)


def _error_text(err) -> str:
    if type(err) is dict:
        return clip(f"{err.get('name')}: {err.get('message')}")
    return clip(err)


def _trade(d: dict, K: _Keys, recv: int, lo: int, hi: int, tlo: int) -> Parsed:
    try:
        code = to_text(d[K.code], K.code, WS)
        sid = to_id(d[K.sid], K.sid, WS)
        tms = to_time(d[K.tms], K.tms, WS, lo, hi)
        ttms = to_time(d[K.ttms], K.ttms, WS, tlo, hi)
        price = pos(d[K.tp], K.tp, WS, NUM)
        vol = pos(d[K.tv], K.tv, WS, NUM)
        ab = d[K.ab]
    except KeyError as exc:
        raise missing(exc, WS) from None
    side = _SIDE.get(ab) if type(ab) is str else None
    if side is None:
        if type(ab) is not str:
            raise bad_type(K.ab, ab, WS)
        raise Reject(f"bad_value:{K.ab}", WS, repr(ab)[:40])
    return Parsed("upbit_trades", [(code, sid, ttms, price, vol, side, recv)],
                  code + "@trade", tms, None, "trade", WS)


def _orderbook(d: dict, K: _Keys, recv: int, lo: int, hi: int) -> Parsed:
    try:
        code = to_text(d[K.code], K.code, WS)
        tms = to_time(d[K.tms], K.tms, WS, lo, hi)
        tas = nonneg(d[K.tas], K.tas, WS, NUM)
        tbs = nonneg(d[K.tbs], K.tbs, WS, NUM)
        units = d[K.obu]
    except KeyError as exc:
        raise missing(exc, WS) from None
    if type(units) is not list:
        raise bad_type(K.obu, units, WS)
    if not units:
        raise Reject(f"bad_value:{K.obu}", WS, "no levels")
    u0 = units[0]
    px = K.obu_prefix
    if type(u0) is not dict:
        raise bad_type(K.obu, u0, WS)
    try:
        ask = pos(u0[K.ap], px + K.ap, WS, NUM)
        bid = pos(u0[K.bp], px + K.bp, WS, NUM)
        ask_size = pos(u0[K.as_], px + K.as_, WS, NUM)
        bid_size = pos(u0[K.bs], px + K.bs, WS, NUM)
    except KeyError as exc:
        raise missing(exc, WS, px) from None
    return Parsed("upbit_orderbook",
                  [(code, tms, bid, ask, bid_size, ask_size, tbs, tas, len(units), recv)],
                  code + "@orderbook", tms, None, "orderbook", WS)


def _ticker(d: dict, K: _Keys, code_key: str, recv: int, lo: int, hi: int, tlo: int,
            src: str, accept: int, int_strings: bool) -> Parsed:
    try:
        code = to_text(d[code_key], code_key, src)
        tms = to_time(d[K.tms], K.tms, src, lo, hi, int_strings)
        price = pos(d[K.tp], K.tp, src, accept)
    except KeyError as exc:
        raise missing(exc, src) from None
    ttms = d.get(K.ttms)
    if ttms is not None:
        ttms = to_time(ttms, K.ttms, src, tlo, hi, int_strings)
    pcp = opt_float(d, K.pcp, src, accept, pos)
    atv = opt_float(d, K.atv24h, src, accept, nonneg)
    atp = opt_float(d, K.atp24h, src, accept, nonneg)
    return Parsed("upbit_ticker", [(code, tms, ttms, price, pcp, atv, atp, recv)],
                  code + "@ticker", tms, None, "ticker", src)


# ---------------------------------------------------------------------- REST
def _rest_array(body) -> list:
    obj = decode(body, REST)
    if type(obj) is dict and "error" in obj:
        err = obj["error"]
        name = err.get("name") if type(err) is dict else err
        raise Reject(f"api_error:{token(name)}", REST, _error_text(err))
    if type(obj) is not list:
        raise Reject("not_array", REST, type(obj).__name__)
    return obj


def parse_upbit_ticks(body, recv_ts_ms: int, now_ms: int | None = None, *,
                      max_past_ms: int = HISTORY_MAX_PAST_MS,
                      max_future_ms: int = MAX_FUTURE_MS) -> Parsed:
    """``GET /v1/trades/ticks`` answer -> upbit_trades rows (REST ``timestamp`` is the
    trade time). Values may be numbers (live) or numeric strings (ccxt recordings).
    ``event_ts_ms`` = newest trade time; ``ids`` None (sequential_id is not ordered;
    the paging cursor is the last row's sequential_id, ``rows[-1][1]``)."""
    arr = _rest_array(body)
    lo, hi = bounds(recv_ts_ms, now_ms, max_past_ms, max_future_ms)
    rows = []
    for it in arr:
        if type(it) is not dict:
            raise bad_type("item", it, REST)
        try:
            code = to_text(it["market"], "market", REST)
            ts = to_time(it["timestamp"], "timestamp", REST, lo, hi, True)
            price = pos(it["trade_price"], "trade_price", REST, ANY)
            vol = pos(it["trade_volume"], "trade_volume", REST, ANY)
            ab = it["ask_bid"]
            sid = to_id(it["sequential_id"], "sequential_id", REST, True)
        except KeyError as exc:
            raise missing(exc, REST) from None
        side = _SIDE.get(ab) if type(ab) is str else None
        if side is None:
            if type(ab) is not str:
                raise bad_type("ask_bid", ab, REST)
            raise Reject("bad_value:ask_bid", REST, repr(ab)[:40])
        rows.append((code, sid, ts, price, vol, side, recv_ts_ms))
    codes = {r[0] for r in rows}
    stream = (next(iter(codes)) if len(codes) == 1 else "ALL") + "@trade"
    return Parsed("upbit_trades", rows, stream, max((r[2] for r in rows), default=None),
                  None, "trade", REST)


def parse_upbit_ticker_rest(body, recv_ts_ms: int, now_ms: int | None = None, *,
                            max_past_ms: int = MAX_PAST_MS,
                            max_future_ms: int = MAX_FUTURE_MS) -> Parsed:
    """``GET /v1/ticker?markets=…`` answer -> upbit_ticker rows (code = ``market``)."""
    arr = _rest_array(body)
    lo, hi = bounds(recv_ts_ms, now_ms, max_past_ms, max_future_ms)
    rows = []
    for it in arr:
        if type(it) is not dict:
            raise bad_type("item", it, REST)
        rows.extend(_ticker(it, DEFAULT, "market", recv_ts_ms, lo, hi,
                            hi - max_future_ms - HISTORY_MAX_PAST_MS, REST, ANY, True).rows)
    codes = {r[0] for r in rows}
    stream = (next(iter(codes)) if len(codes) == 1 else "ALL") + "@ticker"
    return Parsed("upbit_ticker", rows, stream, max((r[1] for r in rows), default=None),
                  None, "ticker", REST)
