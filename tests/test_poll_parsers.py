"""rest_parsers (the REST answer -> parser map shared by pollers, synth and replay),
store_sql (revised rows only), Coinglass outcome classification and poller settings."""
from __future__ import annotations

import json

import pytest

from cqt.config import ConfigError, load_settings
from cqt.db import open_db
from cqt.rest import RestResponse
from cqt.venues.binance.poll import BinanceRestConfig
from cqt.venues.coinglass import markets
from cqt.venues.coinglass.poll import CoinglassConfig, classify, plan_refusal
from cqt.venues.common import Parsed, Reject, store_sql
from cqt.venues.registry import rest_answer_outcome as parse_rest_answer

NOW = 1_763_942_400_000
H = 3_600_000


def settings(**env):
    base = {"CQT_ENV_FILE": "/dev/null"}
    base.update(env)
    return load_settings(base)


def cg_body(bars):
    return json.dumps({"code": "0", "msg": "success", "data": bars})


def test_binance_answers_map_to_their_parsers():
    oi = parse_rest_answer("binance_rest", "/fapi/v1/openInterest", {"symbol": "BTCUSDT"},
                           '{"openInterest":"81234.5","symbol":"BTCUSDT","time":%d}' % NOW, NOW + 30)
    assert isinstance(oi, Parsed) and oi.rows == [("BTCUSDT", NOW, 81234.5, NOW + 30)]
    body = json.dumps([{"symbol": "BTCUSDT", "longShortRatio": "1.5", "longAccount": "0.6",
                        "shortAccount": "0.4", "timestamp": NOW - 300_000}])
    r = parse_rest_answer("binance_rest", "/futures/data/globalLongShortAccountRatio",
                          {"symbol": "BTCUSDT", "period": "5m", "limit": 3}, body, NOW)
    assert r.table == "binance_ratios" and r.rows[0][1:5] == ("global_long_short", "5m", NOW - 300_000, 1.5)
    # context missing from an old capture: settings fill it in
    r2 = parse_rest_answer("binance_rest", "/futures/data/globalLongShortAccountRatio", {}, body, NOW,
                           settings=settings())
    assert r2.rows == r.rows
    assert parse_rest_answer("binance_rest", "/fapi/v1/time", {}, '{"serverTime":1}', NOW) is None


def test_bad_answers_are_returned_as_rejects_never_raised():
    r = parse_rest_answer("binance_rest", "/fapi/v1/openInterest", {}, "<html>oops", NOW)
    assert isinstance(r, Reject) and r.reason == "not_json"
    r = parse_rest_answer("binance_rest", "/fapi/v1/openInterest", {}, '{"code":-1121,"msg":"Invalid symbol."}',
                          NOW, status=400)
    assert isinstance(r, Reject) and r.reason == "api_error:-1121"
    r = parse_rest_answer("binance_rest", "/fapi/v1/openInterest", {}, "", NOW, status=503)
    assert isinstance(r, Reject) and r.reason == "http_503"
    ok_body = '{"openInterest":"1","symbol":"BTCUSDT","time":%d}' % NOW
    r = parse_rest_answer("binance_rest", "/fapi/v1/openInterest", {}, ok_body, NOW, status=500)
    assert isinstance(r, Reject) and r.reason == "http_500"


def test_coinglass_forming_bar_is_not_stored():
    bars = [{"time": NOW - 2 * H, "open": "1", "high": "2", "low": "0.5", "close": "1.5"},
            {"time": NOW - H, "open": "1.5", "high": "2", "low": "1", "close": "1.8"},
            {"time": NOW, "open": "1.8", "high": "1.9", "low": "1.7", "close": "1.85"}]
    p = parse_rest_answer("coinglass", "/api/futures/open-interest/aggregated-history",
                          {"symbol": "BTC", "interval": "1h", "limit": 3}, cg_body(bars), NOW + 5_000)
    assert [r[2] for r in p.rows] == [NOW - 2 * H, NOW - H]
    assert all(r[3] == r[2] + H for r in p.rows)          # avail = open + interval
    assert p.skipped_forming == 1


def _db(tmp_path):
    conn = open_db(tmp_path / "t.db")
    return conn


def test_store_sql_updates_a_bar_only_when_revised(tmp_path):
    conn = _db(tmp_path)
    sql = store_sql("coinglass_open_interest")
    row = ("BTC", "1h", NOW - H, NOW, 1.0, 2.0, 0.5, 1.5, NOW + 100)
    conn.execute(sql, row)
    conn.execute(sql, row[:-1] + (NOW + 60_000,))                    # same values, later poll
    assert conn.execute("SELECT close, recv_ts_ms FROM coinglass_open_interest").fetchall() == [(1.5, NOW + 100)]
    conn.execute(sql, row[:7] + (1.6, NOW + 120_000))                # Coinglass revised the close
    assert conn.execute("SELECT close, recv_ts_ms FROM coinglass_open_interest").fetchall() == [(1.6, NOW + 120_000)]
    assert store_sql("binance_open_interest").startswith("INSERT OR IGNORE")
    ratio = ("BTCUSDT", "taker_buy_sell", "5m", NOW, 1.1, 2.0, 3.0, NOW + 5)
    conn.execute(store_sql("binance_ratios"), ratio)
    conn.execute(store_sql("binance_ratios"), ratio[:-1] + (NOW + 65_000,))
    assert conn.execute("SELECT recv_ts_ms FROM binance_ratios").fetchall() == [(NOW + 5,)]


def _resp(status, body="", headers=None, error=None):
    return RestResponse(status, headers or {}, body, 12, NOW, "/api/x", {}, error)


def test_coinglass_classification():
    ok = Parsed("coinglass_funding", [], "s", None, None, "funding", "coinglass")
    assert classify(_resp(200, cg_body([])), ok, "1h") == (True, None, None)
    okf, err, fail = classify(_resp(401, '{"code":"401","msg":"API key missing or invalid"}'), None, "1h")
    assert (okf, err, fail.reason) == (False, "401 key rejected", "401 key rejected")
    _, err, fail = classify(_resp(429, '{"code":"429","msg":"Too Many Requests"}', {"Retry-After": "30"}), None, "1h")
    assert err == "429 rate limited" and fail.retry_after_s == 30
    _, err, fail = classify(_resp(None, error="timeout"), None, "1h")
    assert err == "timeout" and fail.reason == "timeout"
    _, err, _ = classify(_resp(503, "x"), None, "1h")
    assert err == "503 server error"
    body = '{"code":"401","msg":"Upgrade plan: interval 1h is not available for your plan (Hobbyist >= 4h)"}'
    _, err, fail = classify(_resp(401, body), None, "1h")
    assert err.startswith("interval not allowed by plan: ") and fail.disable and fail.exit_code == 78
    rej = Reject("api_error:400", "coinglass", "interval 1m is not supported for your plan")
    _, err, fail = classify(_resp(200, "{}"), rej, "1m")
    assert err.startswith("interval not allowed by plan") and fail.disable
    rej = Reject("missing_key:time", "coinglass")
    _, err, fail = classify(_resp(200, "{}"), rej, "1h")
    assert err == "bad answer: missing_key:time" and not fail.disable


def test_plan_refusal_words():
    assert plan_refusal("Upgrade your plan to use this interval", "1h")
    assert plan_refusal("interval 1h is not allowed", "1h")
    assert not plan_refusal("symbol is required", "1h")
    assert not plan_refusal("", "1h")


def test_coinglass_config_exit_78_cases():
    with pytest.raises(ConfigError, match="COINGLASS_ENABLED"):
        CoinglassConfig.from_settings(settings(COINGLASS_API_KEY="k" * 32))
    with pytest.raises(ConfigError, match="COINGLASS_API_KEY: is missing"):
        CoinglassConfig.from_settings(settings(COINGLASS_ENABLED="true"))
    with pytest.raises(ConfigError, match="placeholder"):
        CoinglassConfig.from_settings(settings(COINGLASS_ENABLED="true", COINGLASS_API_KEY="your_api_key_here"))
    good = dict(COINGLASS_ENABLED="true", COINGLASS_API_KEY="k" * 32)
    with pytest.raises(ConfigError, match="not allowed by the hobbyist plan"):
        CoinglassConfig.from_settings(settings(CQT_COINGLASS_PLAN="hobbyist", **good))
    with pytest.raises(ConfigError, match="over 80 % of the plan limit of 30"):
        CoinglassConfig.from_settings(settings(CQT_POLL_COINGLASS_S="5", **good))
    cfg = CoinglassConfig.from_settings(settings(CQT_COINGLASS_PLAN="hobbyist", CQT_COINGLASS_INTERVAL="4h", **good))
    assert cfg.per_minute == 30 and cfg.coins == ("BTC",) and cfg.exchanges == "Binance,OKX,Bybit"
    assert cfg.params("liquidations", "BTC") == {"exchange_list": "Binance,OKX,Bybit", "symbol": "BTC",
                                                 "interval": "4h"}
    assert cfg.params("funding", "BTC") == {"exchange": "Binance", "symbol": "BTCUSDT", "interval": "4h"}
    assert markets(settings(CQT_BINANCE_SYMBOL="ETHUSDC")) == (("ETH", "ETHUSDC"),)


def test_binance_config_guards_the_server_limits():
    cfg = BinanceRestConfig.from_settings(settings())
    assert (cfg.oi_s, cfg.ratios_s, cfg.premium_s, cfg.funding_s) == (10, 60, 60, 600)
    with pytest.raises(ConfigError, match="CQT_POLL_RATIOS_S"):
        BinanceRestConfig.from_settings(settings(CQT_POLL_RATIOS_S="1"))
    with pytest.raises(ConfigError, match="CQT_POLL_OI_S"):
        BinanceRestConfig.from_settings(settings(CQT_POLL_OI_S="abc"))
