"""Binance USDⓈ-M Futures parsers (WebSocket frames and REST answers). Pure functions.

Errors are raised as :class:`cqt.venues.common.Reject` (reasons: see that module);
success returns :class:`cqt.venues.common.Parsed`.

WebSocket — :func:`parse_binance_frame` takes a raw-stream payload (``{"e":…}``) or the
combined wrapper (``{"stream":…,"data":{…}}``), as text, bytes or an already decoded dict:

    aggTrade         -> binance_agg_trades   (m=true -> side 'sell'; ids=(a, a))
    markPriceUpdate  -> binance_mark_price   (p mark, i index, r funding, T next funding;
                                              r "" / T 0 of delivery contracts -> NULL)
    bookTicker       -> binance_book_ticker  (u update id, E event time)
    forceOrder       -> binance_liquidations (side = o.S lowercased: 'sell' = long liquidated)
    serverShutdown   -> kind 'shutdown', no rows (reconnect now)
    {"result":…,"id":n}  -> kind 'control' (SUBSCRIBE / LIST_SUBSCRIPTIONS replies)
    {"code":n,"msg":…}   -> kind 'error' (request error; message in Parsed.detail)
    kline, depthUpdate, trade, 24hrTicker … -> no rows, kind = the event name (known
                                              but not stored; not a reject)
    any other ``e``      -> Reject('unknown_event:<e>')

Prices and quantities must be JSON strings (as Binance sends them), finite and > 0;
ids and times JSON integers, ids within SQLite's INTEGER range, first id <= last id.
forceOrder: ``ap`` "0" (nothing filled yet) -> avg_price NULL; ``z`` >= 0.
Speed: a combined-stream aggTrade frame is first decoded typed (msgspec Structs,
:mod:`.parse_typed`), and any frame that path declines goes through the generic parser
(:func:`parse_binance_frame_untyped`), so the results are the generic parser's. Both share
the inlined aggTrade checks with a bounded memo of validated price/qty strings -> float
(only values that passed the checks enter it).
Unknown keys (``nq``, ``st``, ``ps``, ``ap`` …) are ignored.
``Parsed.stream`` is canonical: ``<SYMBOL>@aggTrade|markPrice|bookTicker|forceOrder``.

REST — :func:`parse_agg_trades_rest`, :func:`parse_open_interest`, :func:`parse_ratio`,
:func:`parse_premium_index`, :func:`parse_funding_rate`. An error body
``{"code":-1121,"msg":…}`` is ``Reject('api_error:-1121')`` with the msg in ``detail``.
History answers use the wide default past bound ``HISTORY_MAX_PAST_MS``.
"""
from __future__ import annotations

from ..common import (
    HISTORY_MAX_PAST_MS,
    INT64_LIMIT,
    MAX_FUTURE_MS,
    MAX_PAST_MS,
    STR,
    JSONDecodeError,
    Parsed,
    Reject,
    bad_type,
    bounds,
    clip,
    decode,
    interval_ms,
    loads,
    missing,
    nonneg,
    opt_float,
    pos,
    to_float,
    to_id,
    to_int,
    to_text,
    to_time,
    token,
)
from .parse_typed import agg_row, agg_stream, typed_frame_row

__all__ = [
    "parse_binance_frame", "parse_binance_frame_untyped", "parse_agg_trades_rest", "parse_open_interest", "parse_ratio",
    "parse_premium_index", "parse_funding_rate", "RATIO_KINDS", "agg_trade_capture_row",
]

WS = "binance_ws"
REST = "binance_rest"

_AGG = "binance_agg_trades"


# ====================================================================== WebSocket
def parse_binance_frame(raw, recv_ts_ms: int, now_ms: int | None = None, *,
                        max_past_ms: int = MAX_PAST_MS,
                        max_future_ms: int = MAX_FUTURE_MS) -> Parsed:
    """One Binance WebSocket frame -> Parsed, or raise Reject (source 'binance_ws').

    A combined-stream aggTrade frame (text or bytes) is decoded typed first
    (:mod:`.parse_typed`); whatever that declines, :func:`parse_binance_frame_untyped`
    parses — so the result is always the untyped parser's."""
    t = type(raw)
    if t is bytes or t is str:
        now = recv_ts_ms if now_ms is None else now_ms
        row = typed_frame_row(raw, recv_ts_ms, now - max_past_ms, now + max_future_ms)
        if row is not None:
            return _agg_parsed(row)
    return parse_binance_frame_untyped(raw, recv_ts_ms, now_ms, max_past_ms=max_past_ms,
                                       max_future_ms=max_future_ms)


def parse_binance_frame_untyped(raw, recv_ts_ms: int, now_ms: int | None = None, *,
                                max_past_ms: int = MAX_PAST_MS,
                                max_future_ms: int = MAX_FUTURE_MS) -> Parsed:
    """The generic parser (orjson into dicts, then the checks): every frame type, every
    reject reason. The reference the typed aggTrade path is compared against."""
    if type(raw) is dict:
        obj = raw
    else:
        try:
            obj = loads(raw)
        except JSONDecodeError as exc:
            raise Reject("not_json", WS, clip(exc, 120)) from None
        except TypeError:
            raise Reject("not_json", WS, f"payload type {type(raw).__name__}") from None
    try:
        d = obj.get("data", obj)
        e = d["e"]
    except AttributeError:
        raise Reject("not_object", WS, type(obj).__name__) from None
    except TypeError:
        raise bad_type("data", d, WS) from None
    except KeyError:
        return _control(obj)
    if now_ms is None:
        now_ms = recv_ts_ms
    lo = now_ms - max_past_ms
    hi = now_ms + max_future_ms
    if e != "aggTrade":
        handler = _HANDLERS.get(e) if type(e) is str else None
        if handler is not None:
            return handler(d, recv_ts_ms, lo, hi)
        if type(e) is not str:
            raise bad_type("e", e, WS)
        raise Reject(f"unknown_event:{token(e)}", WS)
    return _agg_parsed(_agg_row(d, recv_ts_ms, lo, hi))


def _agg_parsed(row: tuple) -> Parsed:
    """The Parsed of one aggTrade row (built without __init__: this is the hot path)."""
    r = _new(Parsed)
    r.rows = [row]
    r.stream = agg_stream(row[0])
    r.table = _AGG
    r.event_ts_ms = row[8]
    r.ids = (row[1], row[1])
    r.kind = "aggTrade"
    r.source = WS
    r.detail = None
    r.skipped_forming = 0
    return r


def _agg_row(d: dict, recv_ts_ms: int, lo: int, hi: int) -> tuple:
    """aggTrade event dict -> binance_agg_trades row, or raise Reject: the keys, then the
    shared value checks (:func:`.parse_typed.agg_row`)."""
    try:
        return agg_row(d["s"], d["a"], d["p"], d["q"], d["f"], d["l"], d["T"], d["E"], d["m"],
                       recv_ts_ms, lo, hi)
    except KeyError as exc:
        raise missing(exc, WS) from None


# A capture line of a Binance aggTrade frame holds this (the frame is a JSON string in it).
_AGG_MARK = b'\\"e\\":\\"aggTrade\\"'


def agg_trade_capture_row(line: bytes) -> tuple | None:
    """Replay fast path (untyped): one capture line (bytes) that records a Binance aggTrade
    frame (source ``binance_ws``) -> the binance_agg_trades row :func:`parse_binance_frame`
    returns for it, with "now" = the record's ``recv_ts_ms``.

    None for anything else — another source or event, a malformed line or frame, a frame
    that is a reject: the caller then takes the full path (``cqt.capture.parse_line`` +
    :func:`parse_binance_frame`), which names the reject. Same decoder (orjson) and the
    same row checks (:func:`_agg_row`) as that path, so a row returned here is exactly
    the row the full path stores; it only skips the ``Parsed`` object and the dispatch.
    (The replay tries the typed :func:`.parse_typed.typed_capture_rows` before this.)"""
    if _AGG_MARK not in line:
        return None
    try:
        rec = loads(line)
        ts = rec["recv_ts_ms"]
        raw = rec["raw"]
        if rec["source"] != WS or type(ts) is not int or type(raw) is not str or "raw_b64" in rec:
            return None
        obj = loads(raw)
        d = obj.get("data", obj)
        if d["e"] != "aggTrade":
            return None
        return _agg_row(d, ts, ts - MAX_PAST_MS, ts + MAX_FUTURE_MS)
    except (JSONDecodeError, Reject, KeyError, TypeError, AttributeError):
        return None


_new = object.__new__


def _mark_price(d: dict, recv: int, lo: int, hi: int) -> Parsed:
    try:
        s = to_text(d["s"], "s", WS)
        E = to_time(d["E"], "E", WS, lo, hi)
        mark = pos(d["p"], "p", WS, STR)
    except KeyError as exc:
        raise missing(exc, WS) from None
    index = opt_float(d, "i", WS, STR, pos)
    rate = opt_float(d, "r", WS, STR)          # "" on delivery contracts
    nxt = d.get("T")
    if nxt is not None:
        nxt = to_int(nxt, "T", WS)
        if nxt == 0:                           # delivery contracts: no funding
            nxt = None
        elif not 0 < nxt < INT64_LIMIT:
            raise Reject("out_of_range:T", WS, repr(nxt))
    return Parsed("binance_mark_price", [(s, E, mark, index, rate, nxt, recv)],
                  s + "@markPrice", E, None, "markPrice", WS)


def _book_ticker(d: dict, recv: int, lo: int, hi: int) -> Parsed:
    try:
        s = to_text(d["s"], "s", WS)
        u = to_id(d["u"], "u", WS)
        E = to_time(d["E"], "E", WS, lo, hi)
        b = pos(d["b"], "b", WS, STR)
        B = pos(d["B"], "B", WS, STR)
        a = pos(d["a"], "a", WS, STR)
        A = pos(d["A"], "A", WS, STR)
    except KeyError as exc:
        raise missing(exc, WS) from None
    return Parsed("binance_book_ticker", [(s, u, E, b, B, a, A, recv)],
                  s + "@bookTicker", E, None, "bookTicker", WS)


_SIDES = {"SELL": "sell", "BUY": "buy"}


def _force_order(d: dict, recv: int, lo: int, hi: int) -> Parsed:
    try:
        E = to_time(d["E"], "E", WS, lo, hi)
        o = d["o"]
    except KeyError as exc:
        raise missing(exc, WS) from None
    if type(o) is not dict:
        raise bad_type("o", o, WS)
    try:
        s = to_text(o["s"], "o.s", WS)
        S = to_text(o["S"], "o.S", WS)
        price = pos(o["p"], "o.p", WS, STR)
        qty = pos(o["q"], "o.q", WS, STR)
        T = to_time(o["T"], "o.T", WS, lo, hi)
    except KeyError as exc:
        raise missing(exc, WS, "o.") from None
    side = _SIDES.get(S)
    if side is None:
        raise Reject("bad_value:o.S", WS, repr(S)[:40])
    avg = opt_float(o, "ap", WS, STR, nonneg, "o.ap")
    if avg == 0.0:
        avg = None                             # not filled yet: no average price
    filled = opt_float(o, "z", WS, STR, nonneg, "o.z")
    status = o.get("X")
    if status is not None:
        status = to_text(status, "o.X", WS)
    return Parsed("binance_liquidations",
                  [(s, E, T, side, price, avg, qty, filled, status, recv)],
                  s + "@forceOrder", E, None, "forceOrder", WS)


def _shutdown(d: dict, recv: int, lo: int, hi: int) -> Parsed:
    E = d.get("E")
    return Parsed("", [], "serverShutdown", E if type(E) is int else None, None,
                  "shutdown", WS, "serverShutdown")


def _unstored(d: dict, recv: int, lo: int, hi: int) -> Parsed:
    """Known market events the collectors do not store (kline, depth …): no rows, kind =
    the event name, so a capture holding them replays without rejects."""
    e, E, s = d["e"], d.get("E"), d.get("s")
    return Parsed("", [], f"{s}@{e}" if type(s) is str else e,
                  E if type(E) is int else None, None, e, WS)


_HANDLERS = {
    "kline": _unstored,
    "continuous_kline": _unstored,
    "depthUpdate": _unstored,
    "trade": _unstored,
    "24hrTicker": _unstored,
    "24hrMiniTicker": _unstored,
    "markPriceUpdate": _mark_price,
    "bookTicker": _book_ticker,
    "forceOrder": _force_order,
    "serverShutdown": _shutdown,
}


def _control(obj: dict) -> Parsed:
    """Frames without an event type: subscription replies and request errors."""
    if "result" in obj and "id" in obj:
        return Parsed("", [], "control", None, None, "control", WS,
                      clip(f"id={obj.get('id')!r} result={obj.get('result')!r}"))
    if "code" in obj and "msg" in obj:
        return Parsed("", [], "control", None, None, "error", WS,
                      clip(f"code={obj.get('code')!r} {obj.get('msg')}"))
    if "stream" in obj and "data" not in obj:
        raise Reject("missing_key:data", WS)
    raise Reject("missing_key:e", WS)


# ====================================================================== REST
def _body(body, expect: type) -> object:
    """Decode a REST body; Binance error envelope -> api_error:<code>."""
    obj = decode(body, REST)
    if type(obj) is dict and "code" in obj and "msg" in obj:
        raise Reject(f"api_error:{token(obj.get('code'))}", REST, clip(obj.get("msg")))
    if type(obj) is not expect:
        raise Reject("not_array" if expect is list else "not_object", REST, type(obj).__name__)
    return obj


def _item(it) -> dict:
    if type(it) is not dict:
        raise bad_type("item", it, REST)
    return it


def parse_agg_trades_rest(body, symbol: str, recv_ts_ms: int, now_ms: int | None = None, *,
                          max_past_ms: int = HISTORY_MAX_PAST_MS,
                          max_future_ms: int = MAX_FUTURE_MS) -> Parsed:
    """``GET /fapi/v1/aggTrades`` answer (array of a,p,q,f,l,T,m) -> binance_agg_trades
    rows with event_ts_ms NULL. ``ids`` = (min a, max a); ``event_ts_ms`` = newest T.
    An empty array is a valid answer (no rows, ids None)."""
    arr = _body(body, list)
    symbol = to_text(symbol, "symbol", REST)
    lo, hi = bounds(recv_ts_ms, now_ms, max_past_ms, max_future_ms)
    rows = []
    append = rows.append
    for it in arr:
        it = _item(it)
        try:
            a = to_id(it["a"], "a", REST)
            price = pos(it["p"], "p", REST, STR)
            qty = pos(it["q"], "q", REST, STR)
            f = to_id(it["f"], "f", REST)
            l = to_id(it["l"], "l", REST)  # noqa: E741
            T = to_time(it["T"], "T", REST, lo, hi)
            m = it["m"]
        except KeyError as exc:
            raise missing(exc, REST) from None
        if f > l:
            raise Reject("inconsistent:l", REST, f"f={f} > l={l}")
        if m is True:
            side = "sell"
        elif m is False:
            side = "buy"
        else:
            raise bad_type("m", m, REST)
        append((symbol, a, T, price, qty, side, f, l, None, recv_ts_ms))
    if not rows:
        return Parsed(_AGG, rows, symbol + "@aggTrade", None, None, "aggTrade", REST)
    ids = [r[1] for r in rows]
    return Parsed(_AGG, rows, symbol + "@aggTrade", max(r[2] for r in rows),
                  (min(ids), max(ids)), "aggTrade", REST)


def parse_open_interest(body, recv_ts_ms: int, now_ms: int | None = None, *,
                        max_past_ms: int = MAX_PAST_MS,
                        max_future_ms: int = MAX_FUTURE_MS) -> Parsed:
    """``GET /fapi/v1/openInterest`` -> one binance_open_interest row (ts = 'time')."""
    obj = _body(body, dict)
    lo, hi = bounds(recv_ts_ms, now_ms, max_past_ms, max_future_ms)
    try:
        s = to_text(obj["symbol"], "symbol", REST)
        oi = nonneg(obj["openInterest"], "openInterest", REST, STR)
        t = to_time(obj["time"], "time", REST, lo, hi)
    except KeyError as exc:
        raise missing(exc, REST) from None
    return Parsed("binance_open_interest", [(s, t, oi, recv_ts_ms)], s + "@openInterest",
                  t, None, "openInterest", REST)


#: endpoint name -> binance_ratios.kind (the kind names themselves are accepted too)
RATIO_KINDS = {
    "openInterestHist": "open_interest_hist",
    "globalLongShortAccountRatio": "global_long_short",
    "topLongShortPositionRatio": "top_long_short_position",
    "takerlongshortRatio": "taker_buy_sell",
}
for _k in list(RATIO_KINDS.values()):
    RATIO_KINDS[_k] = _k

# kind -> (value key, value2 key, value3 key or None)
_RATIO_FIELDS = {
    "open_interest_hist": ("sumOpenInterest", "sumOpenInterestValue", None),
    "global_long_short": ("longShortRatio", "longAccount", "shortAccount"),
    "top_long_short_position": ("longShortRatio", "longAccount", "shortAccount"),
    "taker_buy_sell": ("buySellRatio", "buyVol", "sellVol"),
}


def parse_ratio(body, kind: str, period: str, symbol: str, recv_ts_ms: int,
                now_ms: int | None = None, *, max_past_ms: int = HISTORY_MAX_PAST_MS,
                max_future_ms: int = MAX_FUTURE_MS) -> Parsed:
    """``/futures/data/{openInterestHist,globalLongShortAccountRatio,
    topLongShortPositionRatio,takerlongshortRatio}`` -> binance_ratios rows (upsert).

    ``kind``: the endpoint name or the table kind. Columns: ts_ms = 'timestamp';
    value = the ratio (sumOpenInterest for open_interest_hist); value2/value3 = the parts:
    longAccount/shortAccount, buyVol/sellVol, and for open_interest_hist
    value2 = sumOpenInterestValue, value3 = NULL. All values finite and >= 0.
    ``symbol`` is the one asked for; an answer naming another symbol is
    ``bad_value:symbol``. ``event_ts_ms`` = newest timestamp."""
    try:
        tkind = RATIO_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown ratio kind {kind!r}") from None
    interval_ms(period)  # ValueError for an unknown period
    arr = _body(body, list)
    symbol = to_text(symbol, "symbol", REST)
    k1, k2, k3 = _RATIO_FIELDS[tkind]
    lo, hi = bounds(recv_ts_ms, now_ms, max_past_ms, max_future_ms)
    rows = []
    for it in arr:
        it = _item(it)
        s = it.get("symbol")
        if s is not None and s != symbol:
            raise Reject("bad_value:symbol", REST, repr(s)[:40])
        try:
            t = to_time(it["timestamp"], "timestamp", REST, lo, hi)
            v1 = nonneg(it[k1], k1, REST, STR)
            v2 = nonneg(it[k2], k2, REST, STR)
            v3 = nonneg(it[k3], k3, REST, STR) if k3 else None
        except KeyError as exc:
            raise missing(exc, REST) from None
        rows.append((symbol, tkind, period, t, v1, v2, v3, recv_ts_ms))
    return Parsed("binance_ratios", rows, f"{symbol}@{tkind}_{period}",
                  max((r[3] for r in rows), default=None), None, tkind, REST)


def parse_premium_index(body, recv_ts_ms: int, now_ms: int | None = None, *,
                        max_past_ms: int = MAX_PAST_MS,
                        max_future_ms: int = MAX_FUTURE_MS) -> Parsed:
    """``GET /fapi/v1/premiumIndex`` (object, or array when no symbol was given) ->
    binance_premium_index rows (ts = 'time'; "" rates / 0 nextFundingTime -> NULL)."""
    obj = decode(body, REST)
    items = _body(obj, list) if type(obj) is list else [_body(obj, dict)]
    lo, hi = bounds(recv_ts_ms, now_ms, max_past_ms, max_future_ms)
    rows = []
    for it in items:
        it = _item(it)
        try:
            s = to_text(it["symbol"], "symbol", REST)
            mark = pos(it["markPrice"], "markPrice", REST, STR)
            t = to_time(it["time"], "time", REST, lo, hi)
        except KeyError as exc:
            raise missing(exc, REST) from None
        index = opt_float(it, "indexPrice", REST, STR, pos)
        lfr = opt_float(it, "lastFundingRate", REST, STR)
        ir = opt_float(it, "interestRate", REST, STR)
        nft = it.get("nextFundingTime")
        if nft is not None:
            nft = to_int(nft, "nextFundingTime", REST) or None
        rows.append((s, t, mark, index, lfr, ir, nft, recv_ts_ms))
    stream = rows[0][0] + "@premiumIndex" if len(rows) == 1 else "ALL@premiumIndex"
    return Parsed("binance_premium_index", rows, stream,
                  max((r[1] for r in rows), default=None), None, "premiumIndex", REST)


def parse_funding_rate(body, recv_ts_ms: int, now_ms: int | None = None, *,
                       max_past_ms: int = HISTORY_MAX_PAST_MS,
                       max_future_ms: int = MAX_FUTURE_MS) -> Parsed:
    """``GET /fapi/v1/fundingRate`` -> binance_funding_rate rows (markPrice "" -> NULL).
    ``event_ts_ms`` = newest fundingTime."""
    arr = _body(body, list)
    lo, hi = bounds(recv_ts_ms, now_ms, max_past_ms, max_future_ms)
    rows = []
    for it in arr:
        it = _item(it)
        try:
            s = to_text(it["symbol"], "symbol", REST)
            rate = to_float(it["fundingRate"], "fundingRate", REST, STR)
            t = to_time(it["fundingTime"], "fundingTime", REST, lo, hi)
        except KeyError as exc:
            raise missing(exc, REST) from None
        mark = opt_float(it, "markPrice", REST, STR, pos)
        rows.append((s, t, rate, mark, recv_ts_ms))
    syms = {r[0] for r in rows}
    stream = (next(iter(syms)) if len(syms) == 1 else "ALL") + "@fundingRate"
    return Parsed("binance_funding_rate", rows, stream,
                  max((r[1] for r in rows), default=None), None, "fundingRate", REST)
