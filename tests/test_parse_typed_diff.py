"""Typed aggTrade decoding against the generic parser: the same rows, rejects and reasons for
every sample payload and for generated malformed and mutated frames and capture lines."""
from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from cqt.replay.processor import RecordProcessor, ReplayStats
from cqt.replay.records import BadRecord, read_record
from cqt.timeutil import MAX_TIME_MS, MIN_TIME_MS
from cqt.venues.binance.parse import parse_binance_frame, parse_binance_frame_untyped
from cqt.venues.binance.parse_typed import typed_capture_rows, typed_frame_row
from cqt.venues.common import MAX_FUTURE_MS, MAX_PAST_MS, Reject
from cqt.venues.registry import parse_ws_frame
from helpers import SAMPLES, needs_samples

T0 = 1_790_000_000_000
EVENT = {"e": "aggTrade", "E": T0, "a": 5_000_000_000, "s": "BTCUSDT", "p": "90000.1", "q": "0.001",
         "f": 9_000_000_000, "l": 9_000_000_002, "T": T0 - 3, "m": True}
WS_SAMPLE_FILES = ("binance_futures_ws_aggTrade.json", "binance_futures_ws_bookTicker.json",
                   "binance_futures_ws_control.json", "binance_futures_ws_depth_diff_100ms.json",
                   "binance_futures_ws_kline_1m.json", "binance_futures_ws_markPrice_forceOrder.json",
                   "upbit_ws_trade_simple.json", "upbit_ws_default_examples.json", "upbit_ws_orderbook_simple.json")


def outcome(parse, raw, recv_ts_ms: int) -> tuple:
    """Everything a parser says about one frame, comparable."""
    try:
        p = parse(raw, recv_ts_ms)
    except Reject as r:
        return ("reject", r.reason, r.source, r.detail)
    return ("parsed", p.table, p.rows, p.stream, p.event_ts_ms, p.ids, p.kind, p.source, p.detail,
            p.skipped_forming)


def assert_same(raw, recv_ts_ms: int) -> tuple:
    """parse_binance_frame (typed first) says exactly what the generic parser says, for the text
    and for its bytes; a row typed_frame_row accepts is the generic parser's one row."""
    want = outcome(parse_binance_frame_untyped, raw, recv_ts_ms)
    assert outcome(parse_binance_frame, raw, recv_ts_ms) == want, raw
    as_bytes = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    assert outcome(parse_binance_frame, as_bytes, recv_ts_ms) == outcome(parse_binance_frame_untyped, as_bytes,
                                                                          recv_ts_ms), raw
    row = typed_frame_row(as_bytes, recv_ts_ms, recv_ts_ms - MAX_PAST_MS, recv_ts_ms + MAX_FUTURE_MS)
    if row is not None:
        assert want[0] == "parsed" and want[2] == [row], raw
    return want


def full_path(line: bytes):
    """What the replay's full path makes of one capture line: its rows, or why not."""
    try:
        rec = read_record(line)
    except BadRecord as err:
        return ("bad_line", err.reason)
    if rec["source"] not in ("binance_ws", "upbit"):
        return ("skipped",)
    try:
        return ("rows", parse_ws_frame(rec["source"], rec["raw"], rec["recv_ts_ms"]).rows)
    except Reject as r:
        return ("reject", r.reason)


def assert_same_lines(lines: list[bytes]) -> None:
    """typed_capture_rows accepts a line only with the full path's one row; and the replay's
    RecordProcessor (typed first) emits what the full path emits line by line."""
    rows, declined = typed_capture_rows(lines, MIN_TIME_MS, MAX_TIME_MS)
    assert len(rows) == len(lines) and declined == sum(r is None for r in rows)
    for line, row in zip(lines, rows):
        if row is not None:
            assert full_path(line) == ("rows", [row]), line

    def run(feed) -> tuple[list, dict]:
        out: list = []
        stats = ReplayStats()
        proc = RecordProcessor(lambda kind, payload: out.append((kind, payload)), stats)
        feed(proc)
        proc.flush()
        emitted = []
        for kind, payload in out:
            if kind == "rows":
                for sql, params, nrows in payload:
                    emitted.append(("rows", sql.split(" VALUES ")[0], nrows, _unpack(params, nrows)))
            else:
                emitted.append((kind, payload))
        return _merge_rows(emitted), stats.as_dict()

    def line_by_line(proc):
        for i, line in enumerate(lines, 1):
            proc.line(line, i)

    typed, typed_stats = run(lambda proc: proc.lines(lines))
    full, full_stats = run(line_by_line)
    typed_stats.pop("seconds"), full_stats.pop("seconds")
    assert typed == full and typed_stats == full_stats


def _unpack(params: list, nrows: int) -> list:
    flat = [v for p in params for v in p]
    width = len(flat) // nrows if nrows else 0
    return [tuple(flat[i:i + width]) for i in range(0, len(flat), width)] if width else []


def _merge_rows(emitted: list) -> list:
    """Consecutive row inserts of one table as one list (packing differs, content must not)."""
    out: list = []
    for item in emitted:
        if item[0] == "rows" and out and out[-1][0] == "rows" and out[-1][1] == item[1]:
            out[-1] = ("rows", item[1], out[-1][2] + item[3])
        elif item[0] == "rows":
            out.append(("rows", item[1], list(item[3])))
        else:
            out.append(item)
    return out


def capture_line(raw, recv_ts_ms=T0 + 40, source="binance_ws", **extra) -> bytes:
    return json.dumps({"recv_ts_ms": recv_ts_ms, "source": source, "raw": raw, **extra}).encode()


def combined(event: dict, **wrapper) -> str:
    return json.dumps({"stream": "btcusdt@aggTrade", "data": event, **wrapper})


# ---------------------------------------------------------------- samples
def _sample_frames() -> list[tuple[str, int]]:
    frames = []
    for name in WS_SAMPLE_FILES:
        for m in json.loads((SAMPLES / name).read_text())["messages"]:
            raw = m["raw"] if isinstance(m["raw"], str) else json.dumps(m["raw"])
            ts = int(m["recv_ts"] * 1000) if "recv_ts" in m else None
            if ts is None:                      # no receive time recorded: the event's own time
                try:
                    d = json.loads(raw)
                    d = d.get("data", d) if isinstance(d, dict) else {}
                    ts = int(d.get("E") or d.get("timestamp") or T0) + 30
                except (ValueError, TypeError, AttributeError):
                    ts = T0
            frames.append((raw, ts))
    return frames


@needs_samples
def test_every_sample_frame_parses_alike_typed_and_untyped():
    frames = _sample_frames()
    kinds = {assert_same(raw, ts)[0] for raw, ts in frames}
    assert kinds == {"parsed", "reject"}        # the Upbit frames are Binance rejects
    agg = [raw for raw, _ in frames if '"aggTrade"' in raw]
    assert agg and all(typed_frame_row(raw, ts, ts - MAX_PAST_MS, ts + MAX_FUTURE_MS) is not None
                       for raw, ts in frames if raw in agg)      # the real aggTrade frames stay typed


@needs_samples
def test_every_sample_frame_replays_alike_typed_and_line_by_line():
    lines = [capture_line(raw, ts) for raw, ts in _sample_frames()]
    lines += [capture_line(raw, ts, source="upbit") for raw, ts in _sample_frames()[:8]]
    assert_same_lines(lines)
    rows, declined = typed_capture_rows(lines, MIN_TIME_MS, MAX_TIME_MS)
    assert len(lines) - declined == 8           # the eight real aggTrade frames


# ---------------------------------------------------------------- the edges JSON decoders differ on
EDGE_FRAMES = [
    combined(EVENT),
    json.dumps(EVENT),                                                     # raw stream: untyped path
    combined(EVENT).replace('"a": 5000000000', '"a": 5000000000, "a": 7'),  # duplicate key: the last wins
    combined(EVENT).replace('"a": 5000000000', '"a": 7, "a": 5000000000'),
    combined(EVENT)[:-1] + ', "data": ' + json.dumps(dict(EVENT, a=9)) + "}",
    combined(EVENT).replace('"a":', '"\\u0061":'),                         # escaped key
    combined(EVENT).replace('"e":', '"\\u0065":'),
    combined(EVENT).replace('"BTCUSDT"', '"\\ud800"'),                     # lone surrogates
    combined(EVENT).replace('"btcusdt@aggTrade"', '"\\udc00"'),
    combined(EVENT).replace('"BTCUSDT"', '"\\ud83d\\ude00"'),              # a pair
    combined(EVENT).replace('"BTCUSDT"', '"BTC\\u0000USDT"'),
    combined(EVENT).replace('"BTCUSDT"', '"' + "x" * 64 + '"'),
    combined(EVENT).replace('"BTCUSDT"', '"' + "x" * 65 + '"'),
    combined(EVENT).replace('"BTCUSDT"', '"' + "\u00e9" * 64 + '"'),
    combined(EVENT).replace('"BTCUSDT"', '""'),
    combined(EVENT).replace('"a": 5000000000', '"a": 5000000000.0'),      # integral floats
    combined(EVENT).replace('"a": 5000000000', '"a": 5e9'),
    combined(EVENT).replace('"a": 5000000000', '"a": -0'),
    combined(EVENT).replace('"a": 5000000000', '"a": 9223372036854775807'),
    combined(EVENT).replace('"a": 5000000000', '"a": 9223372036854775808'),
    combined(EVENT).replace('"a": 5000000000', '"a": 18446744073709551616'),
    combined(EVENT).replace('"a": 5000000000', '"a": -9223372036854775809'),
    combined(EVENT).replace('"f": 9000000000', '"f": 9000000003'),        # f > l
    combined(EVENT).replace('"m": true', '"m": 1'),
    combined(EVENT).replace('"m": true', '"m": null'),
    combined(EVENT).replace('"p": "90000.1"', '"p": 90000.1'),
    combined(EVENT).replace('"p": "90000.1"', '"p": " 90000.1 "'),
    combined(EVENT).replace('"p": "90000.1"', '"p": "9_0000.1"'),
    combined(EVENT).replace('"p": "90000.1"', '"p": "NaN"'),
    combined(EVENT).replace('"p": "90000.1"', '"p": "1e400"'),
    combined(EVENT).replace('"p": "90000.1"', '"p": "-1"'),
    combined(EVENT).replace('"p": "90000.1"', '"p": "\\u0661\\u0662"'),  # Arabic-Indic digits: float() reads them
    combined(EVENT).replace('"q": "0.001"', '"q": "0"'),
    combined(EVENT).replace('"T": 1789999999997', f'"T": {T0 - MAX_PAST_MS - 41}'),
    combined(EVENT).replace('"T": 1789999999997', f'"T": {T0 + MAX_FUTURE_MS + 40}'),
    combined(EVENT).replace('"E": 1790000000000', f'"E": {T0 + MAX_FUTURE_MS + 41}'),
    combined(EVENT).replace('"BTCUSDT"', '"BTC\\tUSDT"'),
    combined(EVENT).replace('"BTCUSDT"', '"BTC\tUSDT"'),                   # a raw control character
    combined(EVENT) + " \n",
    combined(EVENT) + "x",
    "\ufeff" + combined(EVENT),
    combined(dict(EVENT, nq="0.001", st=1)),                               # newer optional fields
    combined(dict(EVENT, nq=None)),
    combined(dict(EVENT, nq=1e400)).replace("Infinity", "1e400"),
    combined(dict(EVENT, X="MARKET")),                                     # an unknown key
    combined(EVENT, extra=1),
    json.dumps({"data": EVENT}),                                           # no stream
    json.dumps({"stream": None, "data": EVENT}),
    json.dumps({"stream": "x", "data": None}),
    json.dumps({"stream": "x", "data": [EVENT]}),
    combined(dict(EVENT, e="trade")),
    combined({k: v for k, v in EVENT.items() if k != "e"}),
    combined({k: v for k, v in EVENT.items() if k != "q"}),
    combined(EVENT).replace('"m": true', '"m": true, "nq": ' + "[" * 2000 + "]" * 2000),
    combined(EVENT).replace('"m": true', '"m": true, "nq": NaN'),
    "",
    "null",
    "[]",
]


@pytest.mark.parametrize("raw", EDGE_FRAMES)
def test_frames_where_json_decoders_differ_parse_alike(raw):
    assert_same(raw, T0 + 40)


def test_capture_lines_where_json_decoders_differ_replay_alike():
    lines = [capture_line(raw) for raw in EDGE_FRAMES]
    good = capture_line(combined(EVENT))
    lines += [
        good.replace(b'"recv_ts_ms": ', b'"recv_ts_ms": 1', 1),                        # beyond 2100
        capture_line(combined(EVENT), recv_ts_ms=MIN_TIME_MS - 1),
        capture_line(combined(EVENT), recv_ts_ms=MAX_TIME_MS),
        capture_line(combined(EVENT), recv_ts_ms=float(T0)),
        capture_line(combined(EVENT), recv_ts_ms=True),
        capture_line(combined(EVENT), source="upbit"),
        capture_line(combined(EVENT), raw_b64=""),
        capture_line(combined(EVENT), raw_b64="eyJ9"),
        capture_line(combined(EVENT), path="/x"),
        good.replace(b'"source"', b'"source": "upbit", "source"', 1),                 # duplicate keys
        good.replace(b'"source"', b'"\\u0073ource"', 1),
        good[:-1] + b', "raw": "{}"}',
        good[:-1],                                                                      # cut
        good + b"x",
        b"\xef\xbb\xbf" + good,
        good.replace(b"BTCUSDT", b"BTC\xffUSDT"),                                      # not UTF-8
        good.replace(b"BTCUSDT", b"BTC\xed\xa0\x80USDT"),
        b"",
        b"   ",
        b"[]",
    ]
    assert_same_lines(lines)


# ---------------------------------------------------------------- generated
json_scalar = (st.none() | st.booleans() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
               | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6))
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6)
odd_strings = st.sampled_from(["", " 1.5", "1_000", "NaN", "inf", "-inf", "-1", "0", "0.0", "1e5", "1e-400",
                               "0x10", "\u0661", "BTCUSDT", "ETHUSDT", "x" * 65, "\u00e9" * 64, "aggTrade",
                               "90000.1", "0.001", "1e308", "1e309"])
edge_ints = st.sampled_from([0, -1, 1, 2 ** 63 - 1, 2 ** 63, 2 ** 64, -(2 ** 63), T0, T0 - MAX_PAST_MS - 40,
                             T0 + MAX_FUTURE_MS + 40, T0 - MAX_PAST_MS + 40, T0 + MAX_FUTURE_MS + 39])
field_value = st.one_of(json_value, odd_strings, edge_ints)


@st.composite
def mutated_frames(draw) -> str:
    event = dict(EVENT)
    for key in draw(st.lists(st.sampled_from(sorted(EVENT) + ["nq", "st", "X", ""]), max_size=3, unique=True)):
        choice = draw(st.sampled_from(["replace", "replace", "delete"]))
        if choice == "delete":
            event.pop(key, None)
        else:
            event[key] = draw(field_value)
    if draw(st.booleans()):
        ids = draw(st.integers(min_value=0, max_value=2 ** 63 - 2))
        event["f"], event["l"] = ids, ids + draw(st.integers(min_value=-1, max_value=1))
    wrapper = draw(st.sampled_from(["combined", "combined", "raw", "no_stream", "stream_value"]))
    if wrapper == "raw":
        obj: object = event
    elif wrapper == "no_stream":
        obj = {"data": event}
    elif wrapper == "stream_value":
        obj = {"stream": draw(field_value), "data": event}
    else:
        obj = {"stream": "btcusdt@aggTrade", "data": event}
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        text = _mutate_text(draw, text)
    return text


def _mutate_text(draw, text: str) -> str:
    """One textual change a decoder could read differently: a byte, a duplicate key, an escape."""
    kind = draw(st.sampled_from(["duplicate", "escape", "insert", "delete", "replace"]))
    if kind == "duplicate":
        key = draw(st.sampled_from(sorted(EVENT)))
        value = json.dumps(draw(field_value))
        at = text.find(f'"{key}"')
        if at >= 0:
            where = draw(st.sampled_from(["before", "after"]))
            if where == "before":
                return text[:at] + f'"{key}":{value},' + text[at:]
            end = text.find(",", at)
            end = len(text) - 1 if end < 0 else end
            return text[:end] + f',"{key}":{value}' + text[end:]
        return text
    if kind == "escape":
        key = draw(st.sampled_from(sorted(EVENT)))
        return text.replace(f'"{key}"', '"' + "".join(f"\\u{ord(c):04x}" for c in key) + '"', 1)
    i = draw(st.integers(min_value=0, max_value=max(0, len(text) - 1)))
    ch = draw(st.sampled_from(list('{}[]":,\\ 0-.etn') + ["\x00", "\t", "\n", "\ud800", "\u00e9"]))
    if kind == "insert":
        return text[:i] + ch + text[i:]
    if kind == "delete":
        return text[:i] + text[i + 1:]
    return text[:i] + ch + text[i + 1:]


recv_offsets = st.sampled_from([40, 0, -MAX_FUTURE_MS, MAX_PAST_MS - 3, MAX_PAST_MS + 1, -MAX_FUTURE_MS - 1])


@hsettings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=mutated_frames(), offset=recv_offsets)
def test_mutated_frames_parse_alike_typed_and_untyped(raw, offset):
    assert_same(raw, T0 + offset)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raws=st.lists(mutated_frames(), min_size=1, max_size=6), offset=recv_offsets,
       source=st.sampled_from(["binance_ws", "binance_ws", "upbit", "binance_rest"]),
       line_edit=st.sampled_from([None, None, "raw_b64", "extra", "ts_float", "cut"]))
def test_mutated_capture_lines_replay_alike_typed_and_line_by_line(raws, offset, source, line_edit):
    lines = []
    for raw in raws:
        extra = {}
        ts: object = T0 + offset
        if line_edit == "raw_b64":
            extra["raw_b64"] = ""
        elif line_edit == "extra":
            extra["status"] = 200
        elif line_edit == "ts_float":
            ts = float(T0 + offset)
        try:
            line = capture_line(raw, ts, source, **extra)
        except UnicodeEncodeError:              # a lone surrogate cannot be written: write it escaped
            line = orjson.dumps({"recv_ts_ms": ts, "source": source, "raw": "x"})
        if line_edit == "cut":
            line = line[:-3]
        lines.append(line)
    lines.append(capture_line(combined(EVENT)))   # a good line after the mutated ones
    assert_same_lines(lines)
