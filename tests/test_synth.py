"""`bin/cqt synth`: 10 minutes of synthetic history through the collectors' parsers and the
pollers' job functions: rows in every table, live-like thinning, latency and polling slots,
heartbeats per service, and a re-run that stores nothing twice; several assets each through
every path."""
from __future__ import annotations

import json

import pytest

from helpers import cqt_env, query, run_bin

END = "2026-11-20T00:00:00Z"
END_MS = 1_795_132_800_000
SPAN_MS = 600_000

RAW = ("upbit_trades", "upbit_orderbook", "upbit_ticker", "binance_agg_trades", "binance_mark_price",
       "binance_book_ticker", "binance_liquidations", "binance_open_interest", "binance_ratios",
       "binance_premium_index", "binance_funding_rate", "coinglass_open_interest", "coinglass_funding",
       "coinglass_liquidations", "coinglass_long_short", "coinglass_call_status", "heartbeats",
       "service_runs", "ingest_stats")


def synth(tmp_path, db, *extra):
    r = run_bin("cqt", "synth", "--hours", str(SPAN_MS / 3_600_000), "--db", str(db), "--end", END,
                "--seed", "3", "--json", *extra, env=cqt_env(tmp_path, CQT_COINGLASS_INTERVAL="5m"), timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def fingerprint(db):
    out = {}
    for t in RAW + ("market_1s", "predictions"):
        out[t] = query(db, f"SELECT COUNT(*) FROM {t}")[0][0]
    out["hb"] = query(db, "SELECT SUM(length(detail)), SUM(ts_ms) FROM heartbeats")[0]
    out["agg"] = query(db, "SELECT SUM(agg_id), SUM(price * qty), SUM(recv_ts_ms) FROM binance_agg_trades")[0]
    out["cg"] = query(db, "SELECT SUM(close), SUM(recv_ts_ms) FROM coinglass_open_interest")[0]
    out["calls"] = query(db, "SELECT SUM(id), SUM(rows) FROM coinglass_call_status")[0]
    return out


@pytest.mark.timeout(120)
def test_synth_ten_minutes_fills_every_table_and_reruns_idempotently(tmp_path):
    db = tmp_path / "synth.db"
    s = synth(tmp_path, db)
    assert s["from"] == "2026-11-19T23:50:00.000Z" and s["to"] == "2026-11-20T00:00:00.000Z"
    for t in RAW:
        assert s["rows"][t] > 0, (t, s["rows"])
    assert s["rows"]["rejects"] == 0 and s["poll_errors"] == {}
    if s["derived"].startswith("rebuilt"):
        assert s["rows"]["market_1s"] == 600 and s["rows"]["predictions"] == 600

    lo, hi = END_MS - SPAN_MS, END_MS
    # WebSocket rows: inside the span, received a little after their event time
    for table, ev in (("binance_agg_trades", "event_ts_ms"), ("binance_mark_price", "event_ts_ms"),
                      ("upbit_orderbook", "ts_ms"), ("binance_book_ticker", "event_ts_ms")):
        mn, mx, lat_min, lat_max = query(db, f"SELECT MIN({ev}), MAX({ev}), MIN(recv_ts_ms - {ev}), "
                                             f"MAX(recv_ts_ms - {ev}) FROM {table}")[0]
        assert lo <= mn and mx < hi and 0 < lat_min and lat_max <= 500, table
    # bookTicker thinned like live: at most one row per 100 ms slot
    assert query(db, "SELECT MAX(n) FROM (SELECT COUNT(*) n FROM binance_book_ticker "
                     "GROUP BY symbol, event_ts_ms / 100)")[0][0] == 1
    assert query(db, "SELECT COUNT(*) FROM binance_mark_price")[0][0] == 600
    # REST series at their polling slots: open interest every 10 s, Coinglass every 60 s x 4 endpoints
    assert 59 <= query(db, "SELECT COUNT(*) FROM binance_open_interest")[0][0] <= 62
    calls = query(db, "SELECT COUNT(*), SUM(ok), COUNT(DISTINCT endpoint) FROM coinglass_call_status")[0]
    assert calls[0] in (40, 44) and calls[1] == calls[0] and calls[2] == 4
    assert query(db, "SELECT COUNT(*) FROM coinglass_open_interest WHERE avail_ts_ms > recv_ts_ms")[0][0] == 0
    kinds = {k for (k,) in query(db, "SELECT DISTINCT kind FROM binance_ratios")}
    assert kinds == {"open_interest_hist", "global_long_short", "top_long_short_position", "taker_buy_sell"}
    # heartbeats of the four collectors every CQT_HEARTBEAT_S (10 s), ingest stats per source
    hb = dict(query(db, "SELECT service, COUNT(*) FROM heartbeats GROUP BY service"))
    assert hb == {s: 60 for s in ("cqt-collect-upbit", "cqt-collect-binance", "cqt-poll-binance",
                                  "cqt-poll-coinglass")}
    src = {r[0] for r in query(db, "SELECT DISTINCT source FROM ingest_stats")}
    assert src == {"upbit", "binance_ws", "binance_rest", "coinglass"}
    frames = query(db, "SELECT SUM(frames) FROM ingest_stats WHERE source IN ('upbit', 'binance_ws')")[0][0]
    assert frames == s["frames"]
    assert query(db, "SELECT COUNT(*), MIN(start_ts_ms), MAX(stop_ts_ms) FROM service_runs")[0] == (4, lo, hi)

    before = fingerprint(db)
    s2 = synth(tmp_path, db)
    assert s2["rows"] == s["rows"]
    assert fingerprint(db) == before


@pytest.mark.timeout(60)
def test_synth_rejects_bad_arguments(tmp_path):
    env = cqt_env(tmp_path)
    r = run_bin("cqt", "synth", "--hours", "0", "--db", str(tmp_path / "x.db"), env=env)
    assert r.returncode == 2 and "--hours" in r.stderr
    r = run_bin("cqt", "synth", "--hours", "1", "--end", "yesterday-ish", "--db", str(tmp_path / "x.db"), env=env)
    assert r.returncode == 2 and "--end" in r.stderr
    assert not (tmp_path / "x.db").exists()


@pytest.mark.timeout(120)
def test_synth_many_assets_writes_every_asset_through_every_path(tmp_path):
    db = tmp_path / "multi.db"
    r = run_bin("cqt", "synth", "--hours", "0.05", "--db", str(db), "--end", END, "--seed", "4", "--json",
                "--symbols", "btc,ETH,SOL", env=cqt_env(tmp_path, CQT_COINGLASS_INTERVAL="5m", CQT_SYMBOLS="BTC"),
                timeout=120)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["symbols"] == ["BTC", "ETH", "SOL"] and s["poll_errors"] == {} and s["rows"]["rejects"] == 0
    binance = {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    for table in ("binance_agg_trades", "binance_mark_price", "binance_book_ticker", "binance_open_interest",
                  "binance_premium_index", "binance_ratios"):
        assert {x for (x,) in query(db, f"SELECT DISTINCT symbol FROM {table}")} == binance, table
    assert {x for (x,) in query(db, "SELECT DISTINCT code FROM upbit_trades")} == {
        "KRW-BTC", "KRW-ETH", "KRW-SOL", "KRW-USDT"}
    assert {x for (x,) in query(db, "SELECT DISTINCT symbol FROM coinglass_open_interest")} == {"BTC", "ETH", "SOL"}
    # every asset's price level of its own
    levels = dict(query(db, "SELECT symbol, AVG(price) FROM binance_agg_trades GROUP BY symbol"))
    assert 50_000 < levels["BTCUSDT"] < 110_000 and 2_000 < levels["ETHUSDT"] < 5_000, levels
    assert 100 < levels["SOLUSDT"] < 400, levels
    # one call status row per call: 4 endpoints x 3 coins, none replacing another coin's
    calls = query(db, "SELECT COUNT(*), COUNT(DISTINCT endpoint), COUNT(DISTINCT id) FROM coinglass_call_status")[0]
    assert calls[1] == 12 and calls[0] == calls[2] and calls[0] >= 24
    ws_symbols = {x for (x,) in query(db, "SELECT DISTINCT symbol FROM ingest_stats WHERE source = 'binance_ws'")}
    assert ws_symbols == binance
    frames = query(db, "SELECT SUM(frames) FROM ingest_stats WHERE source IN ('upbit', 'binance_ws')")[0][0]
    assert frames == s["frames"]
    hb = json.loads(query(db, "SELECT detail FROM heartbeats WHERE service = 'cqt-collect-upbit' LIMIT 1")[0][0])
    assert hb["symbols"] == ["KRW-BTC", "KRW-ETH", "KRW-SOL", "KRW-USDT"]
    if s["derived"].startswith("rebuilt"):
        assert dict(query(db, "SELECT symbol, COUNT(*) FROM market_1s GROUP BY symbol")) == {
            "BTC": 180, "ETH": 180, "SOL": 180}
