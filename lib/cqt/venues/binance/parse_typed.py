"""The Binance aggTrade hot path: typed decoding (msgspec) and the row checks every path shares.
Pure functions, no I/O.

Most frames a busy Binance capture or connection carries are combined-stream aggTrade
frames, ``{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade",…}}``. Decoding them into
msgspec Structs is about a microsecond a frame cheaper than a generic decode into dicts
(no dict, no key strings, the types checked in C).

Typed decoding only ever *accepts* or *declines*:

- :func:`typed_frame_row` (one frame) and :func:`typed_capture_row` (one capture line)
  return the ``binance_agg_trades`` row, or None;
- None means "not a plain, valid aggTrade frame": anything else (another event, a raw-stream
  payload, an extra or unknown key, a wrong JSON type, malformed JSON, a value that fails
  a check). The caller then takes the generic parser
  (:func:`cqt.venues.binance.parse.parse_binance_frame_untyped`), which names the reject.

So the output — rows, rejects and their reasons — is the generic parser's by construction,
provided that what the typed decoder accepts the generic one accepts with the same values.
That holds because the Structs forbid unknown fields (every value in an accepted frame was
decoded, as orjson decodes it: same JSON grammar, UTF-8 and surrogate rules, last of
duplicate keys wins), the JSON types are the exact ones the generic checks demand (a JSON
integer for ids and times, never a float or bool; a string for prices; a boolean for ``m``),
and the row comes from the same :func:`agg_row` checks. ``tests/test_parse_typed_diff.py``
compares the two on every sample payload and on generated malformed and mutated frames.

:func:`agg_row` is the one set of aggTrade value checks (symbol, price and quantity strings,
ids, side, times), written inline for speed with bounded memos of the symbols and
price/quantity strings already validated; the generic parser and both typed entry points use it.
"""
from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from ..common import (
    INT64_LIMIT,
    MAX_FUTURE_MS,
    MAX_PAST_MS,
    Reject,
    bad_type,
    range_reject,
    to_id,
    to_text,
    to_time,
)

__all__ = ["AggTradeEvent", "CombinedAggTrade", "CaptureRecord", "agg_row", "agg_stream",
           "typed_frame_row", "typed_capture_rows"]

WS = "binance_ws"
_INF = float("inf")


# The generic checks' ranges, checked by the decoder: an id in SQLite's INTEGER range
# (to_id), a symbol of 1..64 characters (to_text; msgspec counts code points, like len()).
Id = Annotated[int, msgspec.Meta(ge=0, le=INT64_LIMIT - 1)]
Symbol = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class AggTradeEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One aggTrade event as Binance sends it. ``nq`` (quantity without RPI orders) and
    ``st`` (symbol type) appear on newer frames; cqt does not store them, and declaring them
    keeps such frames on the typed path (a frame where they have another JSON type is declined)."""

    e: Literal["aggTrade"]
    E: int
    a: Id
    s: Symbol
    p: str
    q: str
    f: Id
    l: Id  # noqa: E741 - Binance's field name
    T: int
    m: bool
    nq: str = ""
    st: int = 0


class CombinedAggTrade(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The combined-stream wrapper around an aggTrade event (its ``stream`` is not used,
    like the generic parser, which reads only ``data``)."""

    data: AggTradeEvent
    stream: str = ""


class CaptureRecord(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """A capture line of a text WebSocket frame (``raw_b64``, REST fields … decline)."""

    recv_ts_ms: int
    source: Literal["binance_ws"]
    raw: str


_frame_decoder = msgspec.json.Decoder(CombinedAggTrade)
_record_decoder = msgspec.json.Decoder(CaptureRecord)
_decode_frame = _frame_decoder.decode
_decode_record = _record_decoder.decode
# what declining looks like: malformed or mistyped JSON (ValidationError is a DecodeError), text
# that is not UTF-8 (a str with a lone surrogate: UnicodeEncodeError), a value a check refuses
_Declined = (msgspec.DecodeError, UnicodeError, Reject)

# Memo of validated aggTrade price/qty strings -> float (always finite and > 0): prices
# and sizes repeat a lot, and float(str) is the dearest step after JSON decoding.
# Bounded: cleared when full. Same for the symbol -> stream name.
_PQ: dict[str, float] = {}
_PQ_MAX = 16384
_STREAMS: dict[str, str] = {}
_STREAMS_MAX = 1024


def agg_row(s, a, p, q, f, l, T, E, m, recv_ts_ms: int, lo: int, hi: int) -> tuple:  # noqa: E741
    """aggTrade values -> the binance_agg_trades row, or raise Reject naming the first fault.
    ``lo``/``hi``: the accepted range of the event and trade times. Checks inlined; the
    helpers only name what is wrong."""
    try:  # memo hits are valid symbols; a miss is checked (type included) on the side
        if s not in _STREAMS:
            agg_stream(s)
    except TypeError:          # unhashable (array/object)
        raise bad_type("s", s, WS) from None
    try:  # memo hits are valid values; a miss is checked (type included) on the side
        price = _PQ.get(p)
        qty = _PQ.get(q)
    except TypeError:  # unhashable value (array/object): let the checks name it
        price = qty = None
    if price is None:
        price = _pq(p, "p")
    if qty is None:
        qty = _pq(q, "q")
    if not (type(a) is type(f) is type(l) is int
            and 0 <= a < INT64_LIMIT and 0 <= f <= l < INT64_LIMIT):
        _ids(a, f, l)
    if m is True:
        side = "sell"
    elif m is False:
        side = "buy"
    else:
        raise bad_type("m", m, WS)
    if not (type(T) is type(E) is int and lo <= T <= hi and lo <= E <= hi):
        to_time(T, "T", WS, lo, hi)
        to_time(E, "E", WS, lo, hi)
    return (s, a, T, price, qty, side, f, l, E, recv_ts_ms)


def agg_stream(s) -> str:
    """A symbol's aggTrade stream name ``<s>@aggTrade``; Reject unless a valid symbol."""
    stream = _STREAMS.get(s)
    if stream is None:
        to_text(s, "s", WS)
        if len(_STREAMS) >= _STREAMS_MAX:
            _STREAMS.clear()
        stream = _STREAMS[s] = s + "@aggTrade"
    return stream


def _pq(v, key: str) -> float:
    if type(v) is not str:
        raise bad_type(key, v, WS)
    try:
        x = float(v)
    except ValueError:
        x = None
    if x is None or "_" in v:
        raise Reject(f"bad_number:{key}", WS, repr(v)[:60])
    if not 0.0 < x < _INF:
        raise range_reject(key, x, WS)
    if len(_PQ) >= _PQ_MAX:
        _PQ.clear()
    _PQ[v] = x
    return x


def _ids(a, f, l):  # noqa: E741
    """Slow path of the aggTrade id checks: raise the precise reason."""
    to_id(a, "a", WS)
    to_id(f, "f", WS)
    to_id(l, "l", WS)
    if f > l:
        raise Reject("inconsistent:l", WS, f"f={f} > l={l}")
    raise AssertionError("unreachable")  # pragma: no cover


def typed_frame_row(raw, recv_ts_ms: int, lo: int, hi: int) -> tuple | None:
    """A combined-stream aggTrade frame (str or bytes) -> its binance_agg_trades row; None
    for anything the typed decoder declines (the generic parser then decides)."""
    try:
        d = _decode_frame(raw).data
        return agg_row(d.s, d.a, d.p, d.q, d.f, d.l, d.T, d.E, d.m, recv_ts_ms, lo, hi)
    except _Declined:
        return None


def typed_capture_rows(lines: list[bytes], ts_min: int, ts_max: int) -> tuple[list, int]:
    """Capture lines -> (one item per line: the binance_agg_trades row the generic path
    stores for a combined-stream aggTrade frame from ``binance_ws``, else None; the number
    of Nones). "Now" is each record's ``recv_ts_ms``, which must lie in [ts_min, ts_max)
    (the capture reader's own bound; outside it the line is declined)."""
    out: list = []
    append = out.append
    declined = 0
    memo_pq = _PQ
    past, future = MAX_PAST_MS, MAX_FUTURE_MS
    decode_record, decode_frame = _decode_record, _decode_frame
    for line in lines:
        try:
            rec = decode_record(line)
            d = decode_frame(rec.raw).data
        except (msgspec.DecodeError, UnicodeError):
            append(None)
            declined += 1
            continue
        ts = rec.recv_ts_ms
        T = d.T
        E = d.E
        f = d.f
        l = d.l  # noqa: E741
        price = memo_pq.get(d.p)
        qty = memo_pq.get(d.q)
        # The common case inline. The decoder has checked the symbol and the id ranges; with
        # price and quantity validated before (memo hits), f <= l and the times in bounds,
        # agg_row accepts the frame with this very row. Anything else goes through agg_row.
        if (price is not None and qty is not None and f <= l and ts_min <= ts < ts_max
                and -past <= T - ts <= future and -past <= E - ts <= future):
            append((d.s, d.a, T, price, qty, "sell" if d.m else "buy", f, l, E, ts))
            continue
        if ts_min <= ts < ts_max:
            try:
                append(agg_row(d.s, d.a, d.p, d.q, f, l, T, E, d.m, ts, ts - past, ts + future))
                continue
            except Reject:
                pass
        append(None)
        declined += 1
    return out, declined
