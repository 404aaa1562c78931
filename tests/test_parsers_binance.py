"""Binance USDⓈ-M parsers: every shared sample, exact values, the malformed matrix."""
from __future__ import annotations

import json
import math
import sqlite3

import orjson
import pytest

from cqt.venues.binance.parse import (
    parse_agg_trades_rest,
    parse_binance_frame,
    parse_funding_rate,
    parse_open_interest,
    parse_premium_index,
    parse_ratio,
)
from cqt.venues.common import TABLE_COLUMNS, Reject
from helpers import MIGRATION, ms, needs_samples, reason, sample

# a valid combined aggTrade frame (real, 2021-07-22) and its receive time
AGG = json.loads('{"stream":"sushiusdt@aggTrade","data":{"e":"aggTrade","E":1626992744262,'
                 '"a":87353230,"s":"SUSHIUSDT","p":"7.6120","q":"297","f":126902924,'
                 '"l":126902927,"T":1626992744108,"m":false}}')
RECV = 1626992744311


def agg(**changes):
    """The frame above with data fields replaced (value ... = deleted), as JSON bytes."""
    d = dict(AGG["data"])
    for k, v in changes.items():
        if v is ...:
            del d[k]
        else:
            d[k] = v
    return orjson.dumps({"stream": AGG["stream"], "data": d})


# ---------------------------------------------------------------- samples
@needs_samples
def test_agg_trade_samples_exact():
    msgs = sample("binance_futures_ws_aggTrade.json")["messages"]
    parsed = [parse_binance_frame(m["raw"], ms(m["recv_ts"])) for m in msgs]
    p0, p1 = parsed[0], parsed[1]
    assert p0.table == "binance_agg_trades" and p0.kind == "aggTrade"
    assert p0.stream == "SUSHIUSDT@aggTrade" and p0.source == "binance_ws"
    assert p0.rows == [("SUSHIUSDT", 87353230, 1626992744108, 7.612, 297.0, "buy",
                        126902924, 126902927, 1626992744262, 1626992744311)]
    assert p0.ids == (87353230, 87353230) and p0.event_ts_ms == 1626992744262
    # m = true: the buyer was the maker, so the taker sold
    assert p1.rows == [("SUSHIUSDT", 87353231, 1626992745907, 7.612, 1.0, "sell",
                        126902928, 126902928, 1626992746062, 1626992746107)]
    ids = [p.ids[0] for p in parsed]
    assert ids == list(range(87353230, 87353238))          # consecutive: gap detection works
    sides = [p.rows[0][5] for p in parsed]
    assert sides == ["buy", "sell", "buy", "buy", "buy", "sell", "sell", "sell"]
    for p in parsed:
        assert len(p.rows[0]) == len(TABLE_COLUMNS[p.table])


@needs_samples
def test_book_ticker_samples_exact():
    msgs = sample("binance_futures_ws_bookTicker.json")["messages"]
    parsed = [parse_binance_frame(m["raw"], ms(m["recv_ts"])) for m in msgs]
    assert parsed[0].rows == [("SUSHIUSDT", 600859600576, 1626992741017, 7.611, 2.0, 7.612,
                               297.0, 1626992741062)]
    assert parsed[0].kind == "bookTicker" and parsed[0].stream == "SUSHIUSDT@bookTicker"
    assert parsed[0].event_ts_ms == 1626992741017
    assert [p.rows[0][1] for p in parsed] == sorted(p.rows[0][1] for p in parsed)


@needs_samples
def test_mark_price_and_force_order_samples_exact():
    msgs = [m["raw"] for m in sample("binance_futures_ws_markPrice_forceOrder.json")["messages"]]
    mp = parse_binance_frame(msgs[0], 1562305380100)
    assert mp.kind == "markPrice" and mp.table == "binance_mark_price"
    assert mp.rows == [("BTCUSDT", 1562305380000, 11794.15, 11784.62659091, 0.00038167,
                        1562306400000, 1562305380100)]
    mp2 = parse_binance_frame(msgs[1], 1616555105050)        # combined markPrice@1s
    assert mp2.rows == [("EOSUSDT", 1616555105001, 4.11998561, 4.11519211, 0.00030438,
                         1616572800000, 1616555105050)]
    assert mp2.stream == "EOSUSDT@markPrice"
    fo = parse_binance_frame(msgs[2], 1568014461000)
    assert fo.kind == "forceOrder" and fo.table == "binance_liquidations"
    # o.S = SELL: a long position was liquidated -> side 'sell'
    assert fo.rows == [("BTCUSDT", 1568014460893, 1568014460893, "sell", 9910.0, 9910.0,
                        0.014, 0.014, "FILLED", 1568014461000)]
    fo2 = parse_binance_frame(msgs[3], 1634653599200)        # !forceOrder@arr, one object
    assert fo2.rows == [("IOTXUSDT", 1634653599186, 1634653599180, "sell", 0.06606, 0.06669,
                         3661.0, 3661.0, "FILLED", 1634653599200)]
    assert fo2.stream == "IOTXUSDT@forceOrder"


@needs_samples
def test_control_samples():
    msgs = sample("binance_futures_ws_control.json")["messages"]
    got = [parse_binance_frame(m["raw"], 1) for m in msgs if m["dir"].startswith("server")]
    assert [p.kind for p in got] == ["control", "control", "control", "error", "error"]
    assert all(p.rows == [] and p.table == "" and p.sql is None for p in got)
    assert "request ID must be an unsigned integer" in got[3].detail


@needs_samples
def test_unstored_event_samples_are_not_rejects():
    for name, kind in (("binance_futures_ws_kline_1m.json", "kline"),
                       ("binance_futures_ws_depth_diff_100ms.json", "depthUpdate")):
        for m in sample(name)["messages"]:
            p = parse_binance_frame(m["raw"], ms(m["recv_ts"]))
            assert p.kind == kind and p.rows == [] and p.event_ts_ms


@needs_samples
def test_rest_samples_exact():
    r = sample("binance_futures_rest_examples.json")["responses"]
    p = parse_agg_trades_rest(json.dumps(r["GET /fapi/v1/aggTrades"]), "BTCUSDT",
                              1498793709200)
    assert p.rows == [("BTCUSDT", 26129, 1498793709153, 0.01633102, 4.70443515, "sell",
                       27781, 27781, None, 1498793709200)]
    assert p.ids == (26129, 26129) and p.event_ts_ms == 1498793709153
    assert p.stream == "BTCUSDT@aggTrade" and p.source == "binance_rest"

    p = parse_open_interest(json.dumps(r["GET /fapi/v1/openInterest"]), 1589437530100)
    assert p.rows == [("BTCUSDT", 1589437530011, 10659.509, 1589437530100)]

    now = 1616439400000
    p = parse_ratio(json.dumps(r["GET /futures/data/openInterestHist (doc)"]),
                    "openInterestHist", "5m", "BTCUSDT", now)
    assert p.rows == [("BTCUSDT", "open_interest_hist", "5m", 1591261042378, 20403.12345678,
                       176196512.12345678, None, now)]
    p = parse_ratio(json.dumps(
        r["GET /futures/data/openInterestHist?symbol=BTCUSDT&period=5m&limit=1 "
          "(real, hexdocs.pm/binance_futures)"]), "open_interest_hist", "5m", "BTCUSDT", now)
    assert p.rows[0][3:7] == (1616438700000, 34085.0, 1927265695.27131325, None)
    p = parse_ratio(json.dumps(r["GET /futures/data/globalLongShortAccountRatio (doc)"]),
                    "globalLongShortAccountRatio", "5m", "BTCUSDT", now)
    assert p.rows == [("BTCUSDT", "global_long_short", "5m", 1591261042378, 0.196, 0.6622,
                       0.3378, now)]
    assert p.sql.startswith("INSERT INTO binance_ratios") and "ON CONFLICT" in p.sql
    p = parse_ratio(json.dumps(r["GET /futures/data/topLongShortPositionRatio (doc)"]),
                    "topLongShortPositionRatio", "5m", "BTCUSDT", now)
    assert p.rows[0][1] == "top_long_short_position" and p.rows[0][4:7] == (1.4342, 0.5344,
                                                                             0.4238)
    for key in ("GET /futures/data/takerlongshortRatio (doc)",
                "GET /futures/data/takerlongshortRatio?symbol=BTCUSDT&period=5m&limit=1 "
                "(real, hexdocs.pm/binance_futures)"):
        p = parse_ratio(json.dumps(r[key]), "takerlongshortRatio", "5m", "BTCUSDT", now)
        assert p.rows[0][1] == "taker_buy_sell"
    assert p.rows == [("BTCUSDT", "taker_buy_sell", "5m", 1616439300000, 1.1603, 298.28,
                       257.066, now)]

    p = parse_premium_index(json.dumps(r["GET /fapi/v1/premiumIndex?symbol=BTCUSDT (doc)"]),
                            1597370495100)
    assert p.rows == [("BTCUSDT", 1597370495002, 11793.63104562, 11781.8049597, 0.00038246,
                       0.0001, 1597392000000, 1597370495100)]
    p = parse_funding_rate(json.dumps(r["GET /fapi/v1/fundingRate (doc)"]), 1570608000500)
    assert p.rows == [("BTCUSDT", 1570608000000, -0.0375, 34287.54619963, 1570608000500)]

    assert reason(parse_open_interest, json.dumps(r["error payload (doc)"]), 1) \
        == "api_error:-1121"
    with pytest.raises(Reject) as ei:
        parse_agg_trades_rest(json.dumps(r["error payload (doc)"]), "BTCUSDT", 1)
    assert ei.value.reason == "api_error:-1121" and ei.value.detail == "Invalid symbol."
    assert ei.value.source == "binance_rest"


def test_ws_input_forms_and_raw_stream():
    raw_stream = orjson.dumps(AGG["data"])                   # /ws/<stream>: no wrapper
    a = parse_binance_frame(raw_stream, RECV)
    b = parse_binance_frame(orjson.dumps(AGG).decode(), RECV)
    c = parse_binance_frame(AGG, RECV)                       # already decoded
    d = parse_binance_frame(bytearray(orjson.dumps(AGG)), RECV)
    assert a.rows == b.rows == c.rows == d.rows
    # optional newer keys are ignored
    assert parse_binance_frame(agg(nq="297", st=1, ps="SUSHIUSDT"), RECV).rows == a.rows


def test_mark_price_optional_and_delivery_fields():
    base = {"e": "markPriceUpdate", "E": RECV, "s": "BTCUSDT_250926", "p": "1.5", "i": "1.4",
            "P": "1.45", "r": "", "T": 0}
    assert parse_binance_frame(base, RECV).rows == [("BTCUSDT_250926", RECV, 1.5, 1.4, None,
                                                     None, RECV)]
    slim = {"e": "markPriceUpdate", "E": RECV, "s": "X", "p": "2", "ap": "2", "st": 1}
    assert parse_binance_frame(slim, RECV).rows == [("X", RECV, 2.0, None, None, None, RECV)]
    assert reason(parse_binance_frame, dict(base, r="NaN"), RECV) == "non_finite:r"
    assert reason(parse_binance_frame, dict(base, p="-1"), RECV) == "non_positive:p"
    assert reason(parse_binance_frame, dict(base, T="1"), RECV) == "bad_type:T"
    neg = dict(base, r="-0.0001", T=RECV + 3600_000)
    assert parse_binance_frame(neg, RECV).rows[0][4:6] == (-0.0001, RECV + 3600_000)


def test_server_shutdown_is_control():
    p = parse_binance_frame('{"e":"serverShutdown","E":1700000000000}', 1700000000001)
    assert p.kind == "shutdown" and p.rows == [] and p.event_ts_ms == 1700000000000
    p = parse_binance_frame('{"stream":"x","data":{"e":"serverShutdown"}}', 1)
    assert p.kind == "shutdown"


# ---------------------------------------------------------------- malformed matrix
@pytest.mark.parametrize("changes, expected", [
    *[({k: ...}, f"missing_key:{k}") for k in "saqpqflTEm"],
    ({"a": "87353230"}, "bad_type:a"),
    ({"a": 1.5}, "bad_type:a"),
    ({"a": True}, "bad_type:a"),
    ({"a": -1}, "out_of_range:a"),
    ({"a": 2 ** 63}, "out_of_range:a"),
    ({"f": None}, "bad_type:f"),
    ({"f": 126902928}, "inconsistent:l"),
    ({"p": 7.612}, "bad_type:p"),                  # Binance sends numbers as strings
    ({"p": None}, "bad_type:p"),
    ({"p": ["7.6"]}, "bad_type:p"),
    ({"p": "abc"}, "bad_number:p"),
    ({"p": ""}, "bad_number:p"),
    ({"p": "7_612"}, "bad_number:p"),
    ({"p": "NaN"}, "non_finite:p"),
    ({"p": "Infinity"}, "non_finite:p"),
    ({"p": "-inf"}, "non_finite:p"),
    ({"p": "0"}, "non_positive:p"),
    ({"p": "0.0000"}, "non_positive:p"),
    ({"p": "-7.6120"}, "non_positive:p"),
    ({"q": "0"}, "non_positive:q"),
    ({"q": "nan"}, "non_finite:q"),
    ({"q": 297}, "bad_type:q"),
    ({"m": "true"}, "bad_type:m"),
    ({"m": None}, "bad_type:m"),
    ({"m": 1}, "bad_type:m"),
    ({"s": ""}, "bad_value:s"),
    ({"s": None}, "bad_type:s"),
    ({"s": {"x": 1}}, "bad_type:s"),
    ({"T": "1626992744108"}, "bad_type:T"),
    ({"T": 1626992744108.0}, "bad_type:T"),
    ({"T": 0}, "time_out_of_range:T"),
    ({"T": 1626992744108 * 1000}, "time_out_of_range:T"),
    ({"T": RECV + 3600_000}, "time_out_of_range:T"),        # an hour in the future
    ({"E": RECV - 2 * 86400_000}, "time_out_of_range:E"),   # two days old
    ({"E": -1}, "time_out_of_range:E"),
    ({"e": "foo"}, "unknown_event:foo"),
    ({"e": 5}, "bad_type:e"),
])
def test_agg_trade_malformed(changes, expected):
    assert reason(parse_binance_frame, agg(**changes), RECV) == expected


@pytest.mark.parametrize("raw, expected", [
    ("not json", "not_json"),
    (b"\xff\xfe", "not_json"),
    ("", "not_json"),
    ('{"e":"aggTrade","p":NaN}', "not_json"),               # orjson refuses NaN literals
    ('{"e":"aggTrade","p":Infinity}', "not_json"),
    ('{"e":"aggTrade","a":1e400}', "not_json"),
    (orjson.dumps(AGG)[:-7], "not_json"),                    # truncated
    (orjson.dumps(AGG) + b"x", "not_json"),
    ("[1,2]", "not_object"),
    ('"aggTrade"', "not_object"),
    ("null", "not_object"),
    ('{"stream":"x","data":[]}', "bad_type:data"),
    ('{"stream":"x","data":null}', "bad_type:data"),
    ('{"stream":"x"}', "missing_key:data"),
    ('{"method":"SUBSCRIBE","params":[],"id":1}', "missing_key:e"),
    (12345, "not_json"),
    (None, "not_json"),
])
def test_frame_malformed(raw, expected):
    with pytest.raises(Reject) as ei:
        parse_binance_frame(raw, RECV)
    assert ei.value.reason == expected and ei.value.source == "binance_ws"


def test_memo_never_admits_a_bad_value():
    good = parse_binance_frame(agg(p="7.7777", q="1.25"), RECV)
    assert good.rows[0][3:5] == (7.7777, 1.25)
    for _ in range(2):                                       # repeated: still rejected
        assert reason(parse_binance_frame, agg(p="7.7777", q="NaN"), RECV) == "non_finite:q"
        assert reason(parse_binance_frame, agg(p="-7.7777"), RECV) == "non_positive:p"
    assert parse_binance_frame(agg(p="7.7777", q="1.25"), RECV).rows == good.rows


@pytest.mark.parametrize("data, expected", [
    ({"e": "bookTicker", "u": 1, "s": "X", "b": "0", "B": "1", "a": "1", "A": "1",
      "E": RECV}, "non_positive:b"),
    ({"e": "bookTicker", "u": 1.0, "s": "X", "b": "1", "B": "1", "a": "1", "A": "1",
      "E": RECV}, "bad_type:u"),
    ({"e": "bookTicker", "u": 1, "s": "X", "b": "1", "B": "1", "a": "1", "E": RECV},
     "missing_key:A"),
    ({"e": "bookTicker", "u": 1, "s": "X", "b": "1", "B": "1", "a": "1", "A": "1",
      "E": 10 ** 15}, "time_out_of_range:E"),
    ({"e": "markPriceUpdate", "E": RECV, "s": "X"}, "missing_key:p"),
    ({"e": "markPriceUpdate", "E": RECV, "s": "X", "p": "1", "i": "0"}, "non_positive:i"),
    ({"e": "forceOrder", "E": RECV}, "missing_key:o"),
    ({"e": "forceOrder", "E": RECV, "o": []}, "bad_type:o"),
    ({"e": "forceOrder", "E": RECV, "o": {"s": "X", "S": "SELL", "q": "1", "T": RECV}},
     "missing_key:o.p"),
    ({"e": "forceOrder", "E": RECV, "o": {"s": "X", "S": "HOLD", "p": "1", "q": "1",
                                          "T": RECV}}, "bad_value:o.S"),
    ({"e": "forceOrder", "E": RECV, "o": {"s": "X", "S": "BUY", "p": "1", "q": "0",
                                          "T": RECV}}, "non_positive:o.q"),
    ({"e": "forceOrder", "E": RECV, "o": {"s": "X", "S": "BUY", "p": "1", "q": "1",
                                          "T": 5}}, "time_out_of_range:o.T"),
    ({"e": "forceOrder", "E": RECV, "o": {"s": "X", "S": "BUY", "p": "1", "q": "1",
                                          "T": RECV, "z": "-1"}}, "negative:o.z"),
])
def test_other_events_malformed(data, expected):
    assert reason(parse_binance_frame, {"stream": "x", "data": data}, RECV) == expected


def test_force_order_buy_side():
    o = {"s": "BTCUSDT", "S": "BUY", "o": "LIMIT", "q": "2", "p": "100", "ap": "0",
         "X": "NEW", "z": "0", "T": RECV}
    p = parse_binance_frame({"e": "forceOrder", "E": RECV, "o": o}, RECV)
    assert p.rows == [("BTCUSDT", RECV, RECV, "buy", 100.0, None, 2.0, 0.0, "NEW", RECV)]


# ---------------------------------------------------------------- rules
def test_replay_uses_recorded_time_not_the_clock():
    raw = orjson.dumps(AGG)
    assert parse_binance_frame(raw, RECV).rows              # now = recv time (2021)
    assert parse_binance_frame(raw, RECV, now_ms=RECV + 1000).rows
    now_2026 = 1767225600000                                 # 2026-01-01
    assert reason(parse_binance_frame, raw, RECV, now_2026) == "time_out_of_range:T"
    assert reason(parse_binance_frame, raw, now_2026) == "time_out_of_range:T"
    # the bounds are parameters
    assert parse_binance_frame(raw, now_2026, max_past_ms=10 * 365 * 86400_000).rows
    assert reason(parse_binance_frame, agg(T=RECV + 60_000, E=RECV + 60_000), RECV,
                  max_future_ms=1000) == "time_out_of_range:T"


def test_bad_frame_with_a_stored_id_is_still_a_reject():
    conn = sqlite3.connect(":memory:")
    conn.executescript(MIGRATION.read_text())
    p = parse_binance_frame(orjson.dumps(AGG), RECV)
    conn.executemany(p.sql, p.rows)
    for bad in (agg(p="0"), agg(q="NaN"), agg(m="x"), agg(T=0), agg(p=...)):
        with pytest.raises(Reject):
            parse_binance_frame(bad, RECV)                   # same agg id 87353230
    assert conn.execute("SELECT agg_id, price, qty, side FROM binance_agg_trades").fetchall() \
        == [(87353230, 7.612, 297.0, "buy")]
    conn.executemany(p.sql, p.rows)                          # idempotent
    assert conn.execute("SELECT count(*) FROM binance_agg_trades").fetchone() == (1,)


# ---------------------------------------------------------------- REST
REST_RECV = 1700000000000


def test_agg_trades_rest_pages():
    body = [{"a": 10 + i, "p": "100.5", "q": "0.1", "nq": "0.1", "f": 20 + i, "l": 20 + i,
             "T": REST_RECV - 1000 + i, "m": i % 2 == 0} for i in range(5)]
    p = parse_agg_trades_rest(orjson.dumps(body), "BTCUSDT", REST_RECV)
    assert p.ids == (10, 14) and len(p.rows) == 5 and p.event_ts_ms == REST_RECV - 996
    assert [r[5] for r in p.rows] == ["sell", "buy", "sell", "buy", "sell"]
    assert all(r[8] is None for r in p.rows)                 # no event time in REST rows
    empty = parse_agg_trades_rest("[]", "BTCUSDT", REST_RECV)
    assert empty.rows == [] and empty.ids is None and empty.event_ts_ms is None
    # a backfill may reach back days: the history bound applies
    old = [dict(body[0], T=REST_RECV - 30 * 86400_000)]
    assert parse_agg_trades_rest(old, "BTCUSDT", REST_RECV).rows
    assert reason(parse_agg_trades_rest, [dict(body[0], p="NaN")], "BTCUSDT", REST_RECV) \
        == "non_finite:p"
    assert reason(parse_agg_trades_rest, [dict(body[0], T=0)], "BTCUSDT", REST_RECV) \
        == "time_out_of_range:T"
    assert reason(parse_agg_trades_rest, [{k: v for k, v in body[0].items() if k != "l"}],
                  "BTCUSDT", REST_RECV) == "missing_key:l"
    assert reason(parse_agg_trades_rest, [5], "BTCUSDT", REST_RECV) == "bad_type:item"
    assert reason(parse_agg_trades_rest, '{"x":1}', "BTCUSDT", REST_RECV) == "not_array"
    assert reason(parse_agg_trades_rest, "<html>", "BTCUSDT", REST_RECV) == "not_json"


def test_rest_current_values_malformed():
    assert reason(parse_open_interest, '{"openInterest":"-1","symbol":"X","time":%d}'
                  % REST_RECV, REST_RECV) == "negative:openInterest"
    assert reason(parse_open_interest, '{"openInterest":"1","symbol":"X"}', REST_RECV) \
        == "missing_key:time"
    assert reason(parse_open_interest, '[]', REST_RECV) == "not_object"
    pi = {"symbol": "X", "markPrice": "1", "indexPrice": "1", "estimatedSettlePrice": "1",
          "lastFundingRate": "", "interestRate": "", "nextFundingTime": 0, "time": REST_RECV}
    assert parse_premium_index(pi, REST_RECV).rows == [("X", REST_RECV, 1.0, 1.0, None, None,
                                                        None, REST_RECV)]
    two = parse_premium_index([pi, dict(pi, symbol="Y")], REST_RECV)
    assert [r[0] for r in two.rows] == ["X", "Y"]
    assert reason(parse_premium_index, dict(pi, markPrice="0"), REST_RECV) \
        == "non_positive:markPrice"
    fr = [{"symbol": "X", "fundingRate": "0.0001", "fundingTime": REST_RECV - 86400_000 * 400,
           "markPrice": ""}]
    assert parse_funding_rate(fr, REST_RECV).rows[0][3] is None
    assert reason(parse_funding_rate, [dict(fr[0], fundingRate="inf")], REST_RECV) \
        == "non_finite:fundingRate"


def test_ratio_rules():
    body = [{"symbol": "BTCUSDT", "longShortRatio": "2", "longAccount": "0.66",
             "shortAccount": "0.34", "timestamp": REST_RECV - 300_000}]
    p = parse_ratio(body, "global_long_short", "5m", "BTCUSDT", REST_RECV)
    assert p.rows[0][:4] == ("BTCUSDT", "global_long_short", "5m", REST_RECV - 300_000)
    assert reason(parse_ratio, body, "global_long_short", "5m", "ETHUSDT", REST_RECV) \
        == "bad_value:symbol"
    assert reason(parse_ratio, [dict(body[0], longAccount=None)], "global_long_short", "5m",
                  "BTCUSDT", REST_RECV) == "bad_type:longAccount"
    assert reason(parse_ratio, '{"code":-1130,"msg":"Data sent for parameter invalid."}',
                  "global_long_short", "5m", "BTCUSDT", REST_RECV) == "api_error:-1130"
    with pytest.raises(ValueError):
        parse_ratio(body, "nope", "5m", "BTCUSDT", REST_RECV)
    with pytest.raises(ValueError):
        parse_ratio(body, "global_long_short", "7m", "BTCUSDT", REST_RECV)


def test_rows_fit_the_schema():
    conn = sqlite3.connect(":memory:")
    conn.executescript(MIGRATION.read_text())
    ps = [
        parse_binance_frame(orjson.dumps(AGG), RECV),
        parse_binance_frame({"e": "markPriceUpdate", "E": RECV, "s": "X", "p": "1"}, RECV),
        parse_binance_frame({"e": "bookTicker", "u": 1, "s": "X", "b": "1", "B": "1",
                             "a": "2", "A": "1", "E": RECV}, RECV),
        parse_binance_frame({"e": "forceOrder", "E": RECV, "o": {"s": "X", "S": "SELL",
                             "p": "1", "q": "1", "T": RECV}}, RECV),
        parse_open_interest({"openInterest": "1", "symbol": "X", "time": RECV}, RECV),
    ]
    for p in ps:
        conn.executemany(p.sql, p.rows)
        assert conn.execute(f"SELECT count(*) FROM {p.table}").fetchone() == (1,)
    row = conn.execute("SELECT typeof(agg_id), typeof(price), typeof(side) "
                       "FROM binance_agg_trades").fetchone()
    assert row == ("integer", "real", "text")
    assert not math.isnan(conn.execute("SELECT price FROM binance_agg_trades").fetchone()[0])


def test_memo_matches_plain_float_over_many_values():
    import random
    rnd = random.Random(7)
    for i in range(20_000):                                  # more than the memo holds
        p = f"{rnd.uniform(0.0001, 100000):.{rnd.randint(0, 8)}f}"
        q = f"{rnd.randint(1, 10 ** 6) / 1000:.3f}"
        if float(p) <= 0:
            continue
        row = parse_binance_frame(agg(p=p, q=q, a=i, f=i, l=i), RECV).rows[0]
        assert row[3] == float(p) and row[4] == float(q) and row[1] == i
