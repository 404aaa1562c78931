"""Coinglass v4 parser: closed bars only, avail_ts_ms, envelopes, the doc samples."""
from __future__ import annotations

import json
import sqlite3

import pytest

from cqt.venues.coinglass.parse import COINGLASS_ENDPOINTS, Reject, interval_ms, parse_coinglass
from helpers import MIGRATION, SAMPLES, needs_samples, reason

H = 3_600_000
T0 = 1741604400000                       # 2025-03-10 11:00 UTC, an hour boundary


def envelope(*bars, code="0"):
    return json.dumps({"code": code, "msg": "success", "data": list(bars)})


def oi_bar(t, o="1", h="2", lo="0.5", c="1.5"):
    return {"time": t, "open": o, "high": h, "low": lo, "close": c}


# ---------------------------------------------------------------- samples
@needs_samples
def test_doc_samples():
    r = json.loads((SAMPLES / "coinglass_v4_examples.json").read_text())["responses"]
    fund = r["GET /api/futures/funding-rate/history?exchange=Binance&symbol=BTCUSDT&interval=1d"]
    now = 1658966400000 + 86_400_000                         # both 1d bars closed
    p = parse_coinglass("funding", json.dumps(fund), "1d", now, exchange="Binance",
                        symbol="BTCUSDT")
    assert p.table == "coinglass_funding" and p.kind == "funding" and p.skipped_forming == 0
    assert p.rows == [
        ("Binance", "BTCUSDT", "1d", 1658880000000, 1658966400000, 0.004603, 0.009388,
         -0.005063, 0.009229, now),
        ("Binance", "BTCUSDT", "1d", 1658966400000, 1659052800000, 0.009229, 0.01, 0.007794,
         0.01, now)]
    assert p.event_ts_ms == 1658966400000
    assert p.sql.startswith("INSERT INTO coinglass_funding") and "ON CONFLICT" in p.sql

    liq = r["GET /api/futures/liquidation/aggregated-history?exchange_list=Binance,OKX,Bybit"
            "&symbol=BTC&interval=1d"]
    now = 1659052800000 + 86_400_000
    p = parse_coinglass("/api/futures/liquidation/aggregated-history", liq, "1d", now,
                        symbol="BTC", exchanges="Binance,OKX,Bybit")
    assert p.rows[0] == ("BTC", "Binance,OKX,Bybit", "1d", 1658966400000, 1659052800000,
                         5916885.14234, 12969583.87632, now)
    assert len(p.rows) == 2

    ls = r["GET /api/futures/global-long-short-account-ratio/history?exchange=Binance"
           "&symbol=BTCUSDT&interval=1h"]
    now = 1741608000000 + 30 * 60_000                        # second bar still forming
    p = parse_coinglass("long_short", ls, "1h", now, exchange="Binance", symbol="BTCUSDT")
    assert p.rows == [("Binance", "BTCUSDT", "1h", 1741604400000, 1741608000000, 73.88, 26.12,
                       2.83, now)]
    assert p.skipped_forming == 1

    oi = r["GET /api/futures/open-interest/aggregated-history?symbol=BTC&interval=1d"]
    # the doc example's times are placeholders in 2053 (see the sample's warning)
    assert reason(parse_coinglass, "open_interest", oi, "1d", 1741608000000, symbol="BTC") \
        == "time_out_of_range:time"
    now = 2644845344000 + 86_400_000
    p = parse_coinglass("open_interest", oi, "1d", now, symbol="BTC")
    assert p.rows[0] == ("BTC", "1d", 2644845344000, 2644931744000, 2644845344.0,
                         2692643311.0, 2576975597.0, 2608846475.0, now)


# ---------------------------------------------------------------- closed bars only
def test_forming_bar_skipped_closed_bar_kept():
    now = T0 + 2 * H + 10                                    # bars T0, T0+H closed; T0+2H forming
    body = envelope(oi_bar(T0), oi_bar(T0 + H, c="1.7"), oi_bar(T0 + 2 * H, c="garbage"))
    p = parse_coinglass("open_interest", body, "1h", now, symbol="BTC")
    assert [r[2] for r in p.rows] == [T0, T0 + H]
    assert [r[3] for r in p.rows] == [T0 + H, T0 + 2 * H]    # avail = open + interval
    assert p.skipped_forming == 1                            # counted, not rejected
    assert p.event_ts_ms == T0 + H
    # the very moment a bar closes it is final
    p = parse_coinglass("open_interest", body, "1h", T0 + 2 * H, symbol="BTC")
    assert len(p.rows) == 2 and p.skipped_forming == 1
    p = parse_coinglass("open_interest", body, "1h", T0 + 2 * H - 1, symbol="BTC")
    assert len(p.rows) == 1 and p.skipped_forming == 2
    # a closed bar with a bad value rejects the answer
    assert reason(parse_coinglass, "open_interest", body, "1h", T0 + 3 * H, symbol="BTC") \
        == "bad_number:close"
    # now_ms defaults to recv_ts_ms; a replay passes the recorded time
    one = envelope(oi_bar(T0))
    assert parse_coinglass("open_interest", one, "1h", T0 + 10 * H, T0 + H,
                           symbol="BTC").rows[0][-1] == T0 + 10 * H
    assert parse_coinglass("open_interest", one, "1h", T0 + 10 * H, T0 + H - 1,
                           symbol="BTC").skipped_forming == 1
    # a bar opening beyond now + max_future is impossible, not forming
    assert reason(parse_coinglass, "open_interest", body, "1h", T0 + H, symbol="BTC") \
        == "time_out_of_range:time"


@pytest.mark.parametrize("interval", ["1m", "5m", "4h", "1d", "1w"])
def test_avail_ts_per_interval(interval):
    step = interval_ms(interval)
    body = envelope({"time": T0, "aggregated_long_liquidation_usd": 0,
                     "aggregated_short_liquidation_usd": "12.5"})
    p = parse_coinglass("liquidations", body, interval, T0 + step, symbol="BTC",
                        exchanges=["Binance", "OKX"])
    assert p.rows == [("BTC", "Binance,OKX", interval, T0, T0 + step, 0.0, 12.5, T0 + step)]


def test_numbers_or_strings_and_int_code():
    body = json.dumps({"code": 0, "data": [
        {"time": str(T0), "global_account_long_percent": "60.5",
         "global_account_short_percent": 39.5, "global_account_long_short_ratio": 1.53}]})
    p = parse_coinglass("long_short", body, "1h", T0 + H, exchange="Binance", symbol="BTCUSDT")
    assert p.rows == [("Binance", "BTCUSDT", "1h", T0, T0 + H, 60.5, 39.5, 1.53, T0 + H)]
    empty = parse_coinglass("long_short", envelope(), "1h", T0, exchange="Binance",
                            symbol="BTCUSDT")
    assert empty.rows == [] and empty.event_ts_ms is None and empty.skipped_forming == 0


# ---------------------------------------------------------------- envelopes and bad input
def test_api_error_envelope():
    key = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
    body = json.dumps({"code": "401", "msg": f"API key {key} invalid or plan too low"})
    with pytest.raises(Reject) as ei:
        parse_coinglass("open_interest", body, "1h", T0, symbol="BTC")
    r = ei.value
    assert r.reason == "api_error:401" and r.source == "coinglass"
    assert "plan too low" in r.detail and key not in r.detail and key not in str(r)
    assert reason(parse_coinglass, "funding", '{"code":"429","msg":"Too Many Requests"}',
                  "1h", T0, exchange="Binance", symbol="BTCUSDT") == "api_error:429"
    assert reason(parse_coinglass, "funding", '{"code":500}', "1h", T0, exchange="Binance",
                  symbol="BTCUSDT") == "api_error:500"


@pytest.mark.parametrize("body, expected", [
    ("<html>502</html>", "not_json"),
    ('{"code":"0","data":[', "not_json"),
    ("[]", "not_object"),
    ('{"msg":"success","data":[]}', "missing_key:code"),
    ('{"code":"0"}', "missing_key:data"),
    ('{"code":"0","data":null}', "bad_type:data"),
    ('{"code":"0","data":{"time":1}}', "bad_type:data"),
    ('{"code":"0","data":[1]}', "bad_type:data.item"),
    ('{"code":"0","data":[{"open":"1"}]}', "missing_key:time"),
    ('{"code":"0","data":[{"time":1.5e12}]}', "bad_type:time"),
    ('{"code":"0","data":[{"time":"abc"}]}', "bad_type:time"),
    ('{"code":"0","data":[{"time":99999999999999}]}', "time_out_of_range:time"),
    (envelope({"time": T0, "open": "1", "high": "2", "low": "1"}), "missing_key:close"),
    (envelope(oi_bar(T0, o="0")), "non_positive:open"),
    (envelope(oi_bar(T0, h="NaN")), "non_finite:high"),
    (envelope(oi_bar(T0, lo=None)), "bad_type:low"),
    (envelope(oi_bar(T0, lo=True)), "bad_type:low"),
])
def test_malformed(body, expected):
    assert reason(parse_coinglass, "open_interest", body, "1h", T0 + 5 * H, symbol="BTC") \
        == expected


def test_value_rules_per_endpoint():
    now = T0 + H
    neg_fund = envelope({"time": T0, "open": "-0.01", "high": "0.02", "low": "-0.03",
                         "close": "0"})
    assert parse_coinglass("funding", neg_fund, "1h", now, exchange="Binance",
                           symbol="BTCUSDT").rows[0][5:9] == (-0.01, 0.02, -0.03, 0.0)
    neg_liq = envelope({"time": T0, "aggregated_long_liquidation_usd": -1,
                        "aggregated_short_liquidation_usd": 1})
    assert reason(parse_coinglass, "liquidations", neg_liq, "1h", now, symbol="BTC",
                  exchanges="Binance") == "negative:aggregated_long_liquidation_usd"


def test_caller_errors_are_value_errors():
    with pytest.raises(ValueError):
        parse_coinglass("nope", envelope(), "1h", T0, symbol="BTC")
    with pytest.raises(ValueError):
        parse_coinglass("open_interest", envelope(), "2d", T0, symbol="BTC")
    with pytest.raises(ValueError):
        parse_coinglass("funding", envelope(), "1h", T0, symbol="BTCUSDT")   # no exchange
    with pytest.raises(ValueError):
        parse_coinglass("liquidations", envelope(), "1h", T0, symbol="BTC")  # no exchanges
    assert set(COINGLASS_ENDPOINTS) == {"open_interest", "funding", "liquidations",
                                        "long_short"}


def test_rows_fit_the_schema_and_upsert_revises():
    conn = sqlite3.connect(":memory:")
    conn.executescript(MIGRATION.read_text())
    now = T0 + H
    first = parse_coinglass("open_interest", envelope(oi_bar(T0)), "1h", now, symbol="BTC")
    revised = parse_coinglass("open_interest", envelope(oi_bar(T0, c="1.9")), "1h", now + 5,
                              symbol="BTC")
    for p in (first, revised):
        conn.executemany(p.sql, p.rows)
    assert conn.execute("SELECT close, recv_ts_ms FROM coinglass_open_interest").fetchall() \
        == [(1.9, now + 5)]
    for key, ctx, bar in (
            ("funding", {"exchange": "Binance", "symbol": "BTCUSDT"}, oi_bar(T0)),
            ("liquidations", {"symbol": "BTC", "exchanges": "Binance,OKX"},
             {"time": T0, "aggregated_long_liquidation_usd": 1,
              "aggregated_short_liquidation_usd": 2}),
            ("long_short", {"exchange": "Binance", "symbol": "BTCUSDT"},
             {"time": T0, "global_account_long_percent": 60, "global_account_short_percent": 40,
              "global_account_long_short_ratio": 1.5})):
        p = parse_coinglass(key, envelope(bar), "1h", now, **ctx)
        conn.executemany(p.sql, p.rows)
        assert conn.execute(f"SELECT count(*) FROM {p.table}").fetchone() == (1,)
