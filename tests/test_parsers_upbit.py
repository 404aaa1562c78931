"""Upbit parsers: DEFAULT and SIMPLE samples, REST ticks, the malformed matrix."""
from __future__ import annotations

import json
import sqlite3

import orjson
import pytest

from cqt.venues.upbit.parse import Reject, parse_upbit_frame, parse_upbit_ticker_rest, parse_upbit_ticks
from helpers import MIGRATION, ms, needs_samples, reason, sample

# real DEFAULT trade frame (2019) and a plausible receive time
TRADE = {"type": "trade", "code": "KRW-BTC", "timestamp": 1549443263262,
         "trade_date": "2019-02-06", "trade_time": "08:54:23", "trade_timestamp": 1549443263000,
         "trade_price": 3794000.0, "trade_volume": 0.00833522, "ask_bid": "BID",
         "prev_closing_price": 3835000.0, "change": "FALL", "change_price": 41000.0,
         "sequential_id": 1549443263000001, "stream_type": "REALTIME"}
RECV = 1549443263300

SIMPLE_BOOK = {"ty": "orderbook", "cd": "KRW-LAMB", "tms": 1618678262640, "tas": 100.5,
               "tbs": 200.25, "obu": [{"ap": 127.0, "bp": 126.0, "as": 1.5, "bs": 2.5},
                                      {"ap": 128.0, "bp": 125.0, "as": 3.0, "bs": 4.0}],
               "st": "REALTIME"}
BOOK_RECV = 1618678263000


def change(base, **kw):
    d = dict(base)
    for k, v in kw.items():
        if v is ...:
            del d[k]
        else:
            d[k] = v
    return orjson.dumps(d)


# ---------------------------------------------------------------- samples
@needs_samples
def test_simple_trade_samples_exact():
    msgs = sample("upbit_ws_trade_simple.json")["messages"]
    parsed = [parse_upbit_frame(m["raw"].encode(), ms(m["recv_ts"])) for m in msgs]
    p0, p1 = parsed[0], parsed[1]
    assert p0.table == "upbit_trades" and p0.kind == "trade" and p0.source == "upbit"
    assert p0.stream == "KRW-LAMB@trade"
    # trade_ts_ms = ttms (trade_timestamp), not tms (the message timestamp)
    assert p0.rows == [("KRW-LAMB", 1618678262000003, 1618678262000, 127.0, 46.48838371,
                        "buy", 1618678263010)]
    assert p0.event_ts_ms == 1618678262712
    # ab = ASK: the seller was the aggressor -> 'sell'
    assert p1.rows == [("KRW-LAMB", 1618678262000004, 1618678262000, 126.0, 47.97601199,
                        "sell", 1618678263291)]
    assert [p.rows[0][5] for p in parsed] == ["buy", "sell", "buy", "sell", "buy", "sell",
                                              "buy", "buy"]
    assert len({p.rows[0][1] for p in parsed}) == 8


@needs_samples
def test_simple_orderbook_samples_exact():
    msgs = sample("upbit_ws_orderbook_simple.json")["messages"]
    parsed = [parse_upbit_frame(m["raw"], ms(m["recv_ts"])) for m in msgs]
    assert parsed[0].table == "upbit_orderbook" and parsed[0].kind == "orderbook"
    assert parsed[0].rows == [("KRW-LAMB", 1618678262640, 126.0, 127.0, 688682.44561413,
                               280460.37885666, 14407925.20098682, 25752275.55420627, 15,
                               1618678263105)]
    assert [p.rows[0][1] for p in parsed] == [1618678262640, 1618678262952, 1618678263261]


@needs_samples
def test_default_samples_exact():
    msgs = [m["raw"] for m in sample("upbit_ws_default_examples.json")["messages"]]
    ticker = parse_upbit_frame(msgs[0], 1524046049800)       # REST-shaped ticker (no type)
    assert ticker.table == "upbit_ticker" and ticker.kind == "ticker"
    assert ticker.rows == [("KRW-BTC", 1524046049766, 1524046049000, 8629000.0, 8450000.0,
                            6448.96200341, 55330325803.7821, 1524046049800)]
    t = parse_upbit_frame(msgs[1], RECV)
    assert t.rows == [("KRW-BTC", 1549443263000001, 1549443263000, 3794000.0, 0.00833522,
                       "buy", RECV)]
    t2 = parse_upbit_frame(msgs[2], 1614729600000)
    assert t2.rows == [("KRW-DOGE", 1614729599000000, 1614729599000, 58.4, 836.12040133,
                        "sell", 1614729600000)]
    # the best_* fragment is not a frame, but its fields merged into a trade are optional
    frag = json.loads(msgs[3])
    assert reason(parse_upbit_frame, msgs[3], RECV) == "missing_key:type"
    assert parse_upbit_frame(dict(TRADE, **frag), RECV).rows == t.rows
    pong = parse_upbit_frame(msgs[4], 1)
    assert pong.kind == "pong" and pong.rows == [] and pong.sql is None
    err = parse_upbit_frame(msgs[5], 1)
    assert err.kind == "error" and err.rows == [] and err.detail.startswith("INVALID_AUTH")


@needs_samples
def test_rest_samples_ccxt_strings():
    r = sample("upbit_rest_examples.json")["responses"]
    ticks = parse_upbit_ticks(json.dumps(r["GET /v1/trades/ticks?market=USDT-BTC&count=1"]),
                              1710327572000)
    # REST 'timestamp' is the trade time; strings (ccxt) are accepted
    assert ticks.rows == [("USDT-BTC", 17103275719220001, 1710327571922, 73249.665,
                           0.00840925, "sell", 1710327572000)]
    assert ticks.source == "upbit_rest" and ticks.stream == "USDT-BTC@trade"
    assert ticks.event_ts_ms == 1710327571922 and ticks.ids is None
    tick = parse_upbit_ticker_rest(json.dumps(r["GET /v1/ticker?markets=USDT-BTC"]),
                                   1710328238000)
    assert tick.rows == [("USDT-BTC", 1710328237828, 1710328237798, 73578.655, 71126.14598036,
                          7.03935349, 506342.98398488, 1710328238000)]


def test_ticks_live_numbers_and_paging():
    now = 1700000000000
    body = [{"market": "KRW-BTC", "trade_date_utc": "2023-11-14", "trade_time_utc": "22:13:19",
             "timestamp": now - i * 1000, "trade_price": 50_000_000.0 + i,
             "trade_volume": 0.001, "prev_closing_price": 1.0, "change_price": 0.0,
             "ask_bid": "BID" if i % 2 else "ASK", "sequential_id": 17000000000000000 + 7 - i}
            for i in range(3)]
    p = parse_upbit_ticks(orjson.dumps(body), now)
    assert [r[5] for r in p.rows] == ["sell", "buy", "sell"]
    assert p.event_ts_ms == now and min(r[2] for r in p.rows) == now - 2000
    assert p.rows[-1][1] == 17000000000000005                 # the next cursor
    assert parse_upbit_ticks("[]", now).rows == []
    # up to 7 days back is normal for a backfill
    assert parse_upbit_ticks([dict(body[0], timestamp=now - 7 * 86400_000)], now).rows
    assert reason(parse_upbit_ticks, [dict(body[0], trade_price="x")], now) \
        == "bad_number:trade_price"
    assert reason(parse_upbit_ticks, [dict(body[0], sequential_id="12a")], now) \
        == "bad_type:sequential_id"
    assert reason(parse_upbit_ticks, [dict(body[0], ask_bid="SELL")], now) == "bad_value:ask_bid"
    assert reason(parse_upbit_ticks, [dict(body[0], timestamp=now + 3600_000)], now) \
        == "time_out_of_range:timestamp"
    err = '{"error":{"name":"too_many_requests","message":"Too many API requests."}}'
    with pytest.raises(Reject) as ei:
        parse_upbit_ticks(err, now)
    assert ei.value.reason == "api_error:too_many_requests" and ei.value.source == "upbit_rest"
    assert reason(parse_upbit_ticks, '{"a":1}', now) == "not_array"


def test_default_orderbook_and_ticker_frames():
    book = {"type": "orderbook", "code": "KRW-BTC", "timestamp": RECV, "total_ask_size": 10.0,
            "total_bid_size": 20.0, "orderbook_units": [
                {"ask_price": 101.0, "bid_price": 100.0, "ask_size": 1.0, "bid_size": 2.0}],
            "stream_type": "SNAPSHOT", "level": 0}
    p = parse_upbit_frame(book, RECV)
    assert p.rows == [("KRW-BTC", RECV, 100.0, 101.0, 2.0, 1.0, 20.0, 10.0, 1, RECV)]
    no_level = {k: v for k, v in book.items() if k not in ("level", "stream_type")}
    assert parse_upbit_frame(no_level, RECV).rows == p.rows
    tick = {"type": "ticker", "code": "KRW-USDT", "timestamp": RECV, "trade_price": 1400.0,
            "trade_timestamp": RECV - 5, "acc_trade_volume_24h": 10.0}
    assert parse_upbit_frame(tick, RECV).rows == [("KRW-USDT", RECV, RECV - 5, 1400.0, None,
                                                   10.0, None, RECV)]
    simple_tick = {"ty": "ticker", "cd": "KRW-USDT", "tms": RECV, "tp": 1400.0, "pcp": 1390.0,
                   "atv24h": 5.0, "atp24h": 7000.0}
    assert parse_upbit_frame(simple_tick, RECV).rows == [("KRW-USDT", RECV, None, 1400.0,
                                                          1390.0, 5.0, 7000.0, RECV)]
    simple = parse_upbit_frame(SIMPLE_BOOK, BOOK_RECV)
    assert simple.rows == [("KRW-LAMB", 1618678262640, 126.0, 127.0, 2.5, 1.5, 200.25, 100.5,
                            2, BOOK_RECV)]


def test_snapshot_of_an_old_trade_is_kept():
    # a quiet market's snapshot trade may be days old; the message itself is current
    old = dict(TRADE, trade_timestamp=RECV - 3 * 86400_000, stream_type="SNAPSHOT")
    assert parse_upbit_frame(old, RECV).rows[0][2] == RECV - 3 * 86400_000


# ---------------------------------------------------------------- malformed matrix
DEFAULT_REQUIRED = ("code", "sequential_id", "trade_timestamp", "timestamp", "trade_price",
                    "trade_volume", "ask_bid")
SIMPLE_TRADE = {"ty": "trade", "cd": "KRW-LAMB", "tms": 1618678262712, "ttms": 1618678262000,
                "tp": 127.0, "tv": 46.48838371, "ab": "BID", "sid": 1618678262000003}
SIMPLE_RECV = 1618678263010


@pytest.mark.parametrize("key", DEFAULT_REQUIRED)
def test_default_trade_missing_key(key):
    assert reason(parse_upbit_frame, change(TRADE, **{key: ...}), RECV) == f"missing_key:{key}"


@pytest.mark.parametrize("key", ("cd", "sid", "ttms", "tms", "tp", "tv", "ab"))
def test_simple_trade_missing_key(key):
    assert reason(parse_upbit_frame, change(SIMPLE_TRADE, **{key: ...}), SIMPLE_RECV) \
        == f"missing_key:{key}"


@pytest.mark.parametrize("changes, expected", [
    ({"trade_price": "3794000"}, "bad_type:trade_price"),     # WS numbers are JSON numbers
    ({"trade_price": None}, "bad_type:trade_price"),
    ({"trade_price": True}, "bad_type:trade_price"),
    ({"trade_price": 0}, "non_positive:trade_price"),
    ({"trade_price": -1.0}, "non_positive:trade_price"),
    ({"trade_price": float("nan")}, "non_finite:trade_price"),
    ({"trade_volume": float("inf")}, "non_finite:trade_volume"),
    ({"trade_volume": 0.0}, "non_positive:trade_volume"),
    ({"ask_bid": "XYZ"}, "bad_value:ask_bid"),
    ({"ask_bid": "ask"}, "bad_value:ask_bid"),
    ({"ask_bid": 1}, "bad_type:ask_bid"),
    ({"sequential_id": 1.5}, "bad_type:sequential_id"),
    ({"sequential_id": "1549443263000001"}, "bad_type:sequential_id"),
    ({"sequential_id": -5}, "out_of_range:sequential_id"),
    ({"sequential_id": 2 ** 64 - 1}, "out_of_range:sequential_id"),
    ({"code": ""}, "bad_value:code"),
    ({"code": 7}, "bad_type:code"),
    ({"timestamp": 0}, "time_out_of_range:timestamp"),
    ({"timestamp": RECV + 3600_000}, "time_out_of_range:timestamp"),
    ({"timestamp": RECV - 2 * 86400_000}, "time_out_of_range:timestamp"),
    ({"trade_timestamp": 0}, "time_out_of_range:trade_timestamp"),
    ({"trade_timestamp": RECV * 1000}, "time_out_of_range:trade_timestamp"),
    ({"trade_timestamp": str(RECV)}, "bad_type:trade_timestamp"),
    ({"type": "candle.1s"}, "unknown_event:candle.1s"),
    ({"type": 3}, "bad_type:type"),
])
def test_trade_malformed(changes, expected):
    with pytest.raises(Reject) as ei:
        parse_upbit_frame(dict(TRADE, **changes), RECV)
    assert ei.value.reason == expected and ei.value.source == "upbit"


@pytest.mark.parametrize("changes, expected", [
    ({"obu": []}, "bad_value:obu"),
    ({"obu": None}, "bad_type:obu"),
    ({"obu": [5]}, "bad_type:obu"),
    ({"obu": [{"bp": 1.0, "as": 1.0, "bs": 1.0}]}, "missing_key:obu.ap"),
    ({"obu": [{"ap": 0.0, "bp": 1.0, "as": 1.0, "bs": 1.0}]}, "non_positive:obu.ap"),
    ({"obu": [{"ap": 1.0, "bp": 1.0, "as": 1.0, "bs": "1"}]}, "bad_type:obu.bs"),
    ({"tas": -1.0}, "negative:tas"),
    ({"tbs": ...}, "missing_key:tbs"),
    ({"tms": 1.5}, "bad_type:tms"),
])
def test_orderbook_malformed(changes, expected):
    assert reason(parse_upbit_frame, change(SIMPLE_BOOK, **changes), BOOK_RECV) == expected


@pytest.mark.parametrize("raw, expected", [
    ("PONG", "not_json"),
    (b"\x00\x01", "not_json"),
    ('{"type":"trade","trade_price":NaN}', "not_json"),
    ('{"type":"trade","trade_price":1e999}', "not_json"),
    ("[]", "not_object"),
    ("42", "not_object"),
    ('{"foo":1}', "missing_key:type"),
    ('{"type":"orderbook","code":"KRW-BTC"}', "missing_key:timestamp"),
])
def test_frame_malformed(raw, expected):
    assert reason(parse_upbit_frame, raw, RECV) == expected


# ---------------------------------------------------------------- rules
def test_replay_rule_2021_frame():
    raw = orjson.dumps(SIMPLE_TRADE)
    assert parse_upbit_frame(raw, SIMPLE_RECV).rows
    assert reason(parse_upbit_frame, raw, SIMPLE_RECV, 1767225600000) \
        == "time_out_of_range:tms"
    assert parse_upbit_frame(raw, 1767225600000, SIMPLE_RECV).rows   # now_ms wins


def test_bad_frame_with_a_stored_id_is_still_a_reject():
    conn = sqlite3.connect(":memory:")
    conn.executescript(MIGRATION.read_text())
    p = parse_upbit_frame(TRADE, RECV)
    conn.executemany(p.sql, p.rows)
    for bad in (dict(TRADE, trade_price=-1.0), dict(TRADE, ask_bid="?"),
                {k: v for k, v in TRADE.items() if k != "trade_volume"}):
        with pytest.raises(Reject):
            parse_upbit_frame(bad, RECV)
    assert conn.execute("SELECT sequential_id, price, side FROM upbit_trades").fetchall() \
        == [(1549443263000001, 3794000.0, "buy")]


def test_rows_fit_the_schema():
    conn = sqlite3.connect(":memory:")
    conn.executescript(MIGRATION.read_text())
    for p in (parse_upbit_frame(TRADE, RECV), parse_upbit_frame(SIMPLE_BOOK, BOOK_RECV),
              parse_upbit_frame({"ty": "ticker", "cd": "X", "tms": RECV, "tp": 1.0}, RECV)):
        conn.executemany(p.sql, p.rows)
        assert conn.execute(f"SELECT count(*) FROM {p.table}").fetchone() == (1,)
