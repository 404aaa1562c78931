"""cqt.venues.common: table layout vs the migration, SQL, intervals, result types."""
from __future__ import annotations

import sqlite3

import pytest

from cqt.venues.common import (
    INTERVALS,
    TABLE_COLUMNS,
    TABLE_PK,
    UPSERT_TABLES,
    Parsed,
    Reject,
    clip,
    insert_sql,
    interval_ms,
    token,
)
from cqt.venues.registry import parse_rest_body as parse_rest_answer, parse_ws_frame
from helpers import MIGRATION


@pytest.fixture(scope="module")
def db():
    conn = sqlite3.connect(":memory:")
    conn.executescript(MIGRATION.read_text())
    yield conn
    conn.close()


def test_table_columns_match_migration(db):
    for table, cols in TABLE_COLUMNS.items():
        info = db.execute(f"PRAGMA table_info({table})").fetchall()
        assert info, table
        assert tuple(r[1] for r in info) == cols, table
        pk = tuple(r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5]))
        assert pk == TABLE_PK[table], table


def test_every_raw_table_is_covered(db):
    raw = {"upbit_trades", "upbit_orderbook", "upbit_ticker", "binance_agg_trades",
           "binance_mark_price", "binance_book_ticker", "binance_liquidations",
           "binance_open_interest", "binance_ratios", "binance_premium_index",
           "binance_funding_rate", "coinglass_open_interest", "coinglass_funding",
           "coinglass_liquidations", "coinglass_long_short"}
    assert set(TABLE_COLUMNS) == raw


def test_insert_sql_shapes_and_cache(db):
    sql = insert_sql("binance_agg_trades")
    assert sql.startswith("INSERT OR IGNORE INTO binance_agg_trades (symbol, agg_id,")
    assert sql.count("?") == len(TABLE_COLUMNS["binance_agg_trades"])
    assert insert_sql("binance_agg_trades") is sql          # cached
    up = insert_sql("coinglass_funding", upsert=True)
    assert "ON CONFLICT(exchange, symbol, interval, open_ts_ms) DO UPDATE SET" in up
    assert "open=excluded.open" in up and "exchange=excluded" not in up
    for t in TABLE_COLUMNS:                                  # every statement compiles
        nulls = (None,) * len(TABLE_COLUMNS[t])
        db.execute("EXPLAIN " + insert_sql(t), nulls)
        db.execute("EXPLAIN " + insert_sql(t, upsert=True), nulls)
    with pytest.raises(ValueError):
        insert_sql("nope")


def test_upsert_revises_a_bar(db):
    sql = insert_sql("coinglass_open_interest", upsert=True)
    db.execute(sql, ("BTC", "1h", 1000, 3601000, 1.0, 2.0, 0.5, 1.5, 5))
    db.execute(sql, ("BTC", "1h", 1000, 3601000, 1.0, 2.5, 0.5, 2.0, 6))
    assert db.execute("SELECT high, close, recv_ts_ms FROM coinglass_open_interest").fetchall() \
        == [(2.5, 2.0, 6)]
    db.execute(sql, ("BTC", "1h", 1000, 3601000, 1.0, 2.5, 0.5, 2.0, 9))   # identical re-fetch
    assert db.execute("SELECT high, close, recv_ts_ms FROM coinglass_open_interest").fetchall() \
        == [(2.5, 2.0, 6)], "an unchanged re-fetch must not move recv_ts_ms"
    from cqt.venues.common import store_sql
    assert store_sql("coinglass_open_interest") == sql                 # one implementation
    assert store_sql("binance_open_interest") == insert_sql("binance_open_interest")
    assert UPSERT_TABLES == {"binance_ratios", "coinglass_open_interest", "coinglass_funding",
                             "coinglass_liquidations", "coinglass_long_short"}


def test_interval_ms():
    assert interval_ms("1m") == 60_000
    assert interval_ms("3m") == 180_000
    assert interval_ms("1h") == 3_600_000
    assert interval_ms("4h") == 4 * 3_600_000
    assert interval_ms("1d") == 86_400_000
    assert interval_ms("1w") == 7 * 86_400_000
    assert set(INTERVALS) >= {"1m", "3m", "5m", "15m", "30m", "1h", "4h", "6h", "8h", "12h",
                              "1d", "1w"}
    for bad in ("1M", "2d", "", None, "60"):
        with pytest.raises(ValueError):
            interval_ms(bad)


def test_result_types():
    r = Reject("missing_key:p", "binance_ws", "x")
    assert isinstance(r, Exception) and r.reason == "missing_key:p" and r.source == "binance_ws"
    assert "missing_key:p" in str(r)
    p = Parsed("binance_agg_trades", [], "X@aggTrade", None, None, "aggTrade", "binance_ws")
    assert p.sql == insert_sql("binance_agg_trades") and not p.is_control
    assert p.skipped_forming == 0 and p.detail is None
    c = Parsed("", [], "control", None, None, "control", "binance_ws")
    assert c.sql is None and c.is_control
    with pytest.raises(AttributeError):
        p.other = 1                                          # slots


def test_reason_tokens_are_bounded_and_secrets_masked():
    assert token("a b/c" * 20) == ("a_b_c" * 20)[:32]
    assert token("") == "_"
    key = "0123456789abcdef0123456789abcdef"
    assert key not in clip(f"bad key {key} given")


def test_dispatchers():
    raw = ('{"e":"aggTrade","E":1700000000000,"a":1,"s":"BTCUSDT","p":"1","q":"1",'
           '"f":1,"l":1,"T":1700000000000,"m":true}')
    assert parse_ws_frame("binance_ws", raw, 1700000000001).rows
    assert parse_ws_frame("upbit", '{"status":"UP"}', 1).kind == "pong"
    with pytest.raises(ValueError):
        parse_ws_frame("nope", raw, 1)
    oi = '{"openInterest":"10659.509","symbol":"BTCUSDT","time":1589437530011}'
    p = parse_rest_answer("binance_rest", "/fapi/v1/openInterest", {"symbol": "BTCUSDT"}, oi,
                          1589437530100)
    assert p.rows == [("BTCUSDT", 1589437530011, 10659.509, 1589437530100)]
    ratio = '[{"buySellRatio":"1.1603","buyVol":"298.28","sellVol":"257.066","timestamp":1616439300000}]'
    p = parse_rest_answer("binance_rest", "/futures/data/takerlongshortRatio",
                          {"symbol": ["BTCUSDT"], "period": "5m"}, ratio, 1616439300500)
    assert p.rows[0][:4] == ("BTCUSDT", "taker_buy_sell", "5m", 1616439300000)
    assert parse_rest_answer("binance_rest", "/fapi/v1/time", {}, '{"serverTime":1}', 1) is None
    cg = '{"code":"0","data":[{"time":0,"open":"1","high":"2","low":"0.5","close":"1.5"}]}'
    p = parse_rest_answer("coinglass", "/api/futures/open-interest/aggregated-history",
                          {"symbol": "BTC", "interval": "1h"}, cg, 3_600_000)
    assert p.rows == [("BTC", "1h", 0, 3_600_000, 1.0, 2.0, 0.5, 1.5, 3_600_000)]
    with pytest.raises(Reject) as ei:
        parse_rest_answer("upbit_rest", "/v1/trades/ticks", {}, "nope", 1)
    assert ei.value.reason == "not_json" and ei.value.source == "upbit_rest"


def test_reject_pickles():
    import pickle
    r = pickle.loads(pickle.dumps(Reject("bad_type:p", "binance_ws", "int 5")))
    assert (r.reason, r.source, r.detail) == ("bad_type:p", "binance_ws", "int 5")
