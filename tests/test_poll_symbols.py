"""Both pollers with several symbols, in-process against a scripted server: every symbol's
rows are stored under its own symbol, resume points are kept per job and symbol (a symbol
with history refetches, a new one backfills), and each Coinglass call's status row names
its coin. Injected clocks; no network."""
from __future__ import annotations

import json
import threading

import pytest

from cqt.config import load_settings
from cqt.db import connect
from cqt.poll import PollError
from cqt.rest import RateLimitState, RestResponse
from cqt.sinks import RejectLog
from cqt.venues.binance.poll import BinanceRestConfig, BinanceRestPoller
from cqt.venues.coinglass.poll import CoinglassConfig, CoinglassPoller
from cqt.writer import BatchWriter

H = 3_600_000
P = 300_000
T0 = 1_763_942_400_000          # an hour boundary
KEY = "cgkey-REAL-1234567890abcdef"


class Svc:
    def __init__(self, tmp_path, **env):
        self.settings = load_settings({"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(tmp_path / "cqt.db"), **env})
        self.writer = BatchWriter(self.settings.db, service="test")
        self.rejects = RejectLog(self.writer, secrets=self.settings.secrets)
        self.stopping = threading.Event()
        self.counted = []

    def count(self, source, frames=0, rows=0, rejects=0, **kw):
        self.counted.append((source, frames, rows, rejects))


class Server:
    """Answers `respond(path, params)`; records every (path, params) asked for."""

    def __init__(self, clock, respond, name):
        self.clock = clock
        self.respond = respond
        self.name = name
        self.asked: list[tuple[str, dict]] = []
        self.rate = RateLimitState(name)

    def get(self, path, params=None, *, wait=True, timeout_s=None, headers=None):
        self.asked.append((path, dict(params)))
        status, body = self.respond(path, dict(params))
        return RestResponse(status, {}, body, 5, self.clock() + 5, path, dict(params), None)


def rows(svc, sql, args=()):
    svc.writer.flush()
    conn = connect(svc.settings.db, readonly=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# ---------------------------------------------------------------------------- Binance
def binance_answer(now):
    def respond(path, p):
        sym = p["symbol"]
        if path == "/fapi/v1/openInterest":
            return 200, json.dumps({"openInterest": "1000.5", "symbol": sym, "time": now[0] - 100})
        if path == "/fapi/v1/premiumIndex":
            return 200, json.dumps({"symbol": sym, "markPrice": "100.0", "indexPrice": "99.9",
                                    "estimatedSettlePrice": "99.95", "lastFundingRate": "0.0001",
                                    "interestRate": "0.0001", "nextFundingTime": T0 + 8 * H, "time": now[0] - 50})
        if path == "/fapi/v1/fundingRate":
            return 200, json.dumps([{"symbol": sym, "fundingRate": "0.0001", "fundingTime": T0 - 8 * H,
                                     "markPrice": "100.0"}])
        lo = p.get("startTime", now[0] - p["limit"] * P)
        times = [t for t in range(lo - lo % P, now[0] - P + 1, P)][-p["limit"]:]
        if path.endswith("openInterestHist"):
            fields = {"sumOpenInterest": "1000.0", "sumOpenInterestValue": "100000.0"}
        elif path.endswith("takerlongshortRatio"):
            fields = {"buySellRatio": "1.1", "buyVol": "11.0", "sellVol": "10.0"}
        else:
            fields = {"longShortRatio": "1.2", "longAccount": "0.55", "shortAccount": "0.45"}
        return 200, json.dumps([{"symbol": sym, **fields, "timestamp": t} for t in times])
    return respond


def test_binance_stores_and_resumes_each_symbol_on_its_own(tmp_path):
    svc = Svc(tmp_path, CQT_SYMBOLS="BTC,ETH", CQT_BACKFILL_S="3600")
    now = [T0 + 7_000]
    client = Server(lambda: now[0], binance_answer(now), "binance_rest")
    cfg = BinanceRestConfig.from_settings(svc.settings)
    assert cfg.symbols == ("BTCUSDT", "ETHUSDT")
    # BTCUSDT has ratio history up to T0 - 5 min; ETHUSDT has none
    svc.writer.put_many("INSERT INTO binance_ratios (symbol, kind, period, ts_ms, value, value2, value3, recv_ts_ms) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [("BTCUSDT", "global_long_short", "5m", T0 - k * P, 1.0, 0.5, 0.5, T0 - k * P)
                         for k in range(1, 4)])
    svc.writer.flush()
    p = BinanceRestPoller(svc, cfg, client, clock=lambda: now[0])
    assert {j.spec.name for j in p.loop.jobs} == {f"{s}@{k}" for s in cfg.symbols for k in (
        "open_interest", "oi_hist", "global_ls", "top_ls", "taker", "premium", "funding")}
    p.load_resume_points()
    assert p.newest["BTCUSDT@global_ls"] == T0 - P and p.newest["ETHUSDT@global_ls"] is None
    assert p.newest["BTCUSDT@funding"] is None and p.newest["ETHUSDT@funding"] is None

    for job in p.loop.jobs:              # every job once, as the loop would
        job.spec.fn()
    asked = {(path.rsplit("/", 1)[1], q["symbol"]): q for path, q in client.asked}
    assert asked[("globalLongShortAccountRatio", "BTCUSDT")] == {"symbol": "BTCUSDT", "period": "5m", "limit": 3}
    assert asked[("globalLongShortAccountRatio", "ETHUSDT")]["startTime"] == now[0] - 3_600_000   # backfill
    assert asked[("takerlongshortRatio", "BTCUSDT")]["startTime"] == now[0] - 3_600_000       # no taker rows yet
    for table in ("binance_open_interest", "binance_premium_index", "binance_funding_rate"):
        assert [r[0] for r in rows(svc, f"SELECT DISTINCT symbol FROM {table} ORDER BY symbol")] == \
               ["BTCUSDT", "ETHUSDT"], table
    per_symbol = dict(rows(svc, "SELECT symbol, COUNT(*) FROM binance_ratios WHERE kind = 'global_long_short' "
                                "GROUP BY symbol"))
    assert per_symbol == {"BTCUSDT": 3, "ETHUSDT": 12}
    assert p.newest["ETHUSDT@global_ls"] == T0 - P and p.newest["ETHUSDT@funding"] == T0 - 8 * H

    # a bad answer is a reject row carrying its symbol
    good = client.respond
    client.respond = lambda path, q: (200, "{}") if q["symbol"] == "ETHUSDT" else good(path, q)
    with pytest.raises(PollError):
        p.poll_open_interest("ETHUSDT")
    client.respond = good
    assert rows(svc, "SELECT source, symbol FROM rejects") == [("binance_rest", "ETHUSDT")]

    # a restart an hour later: each symbol catches up from its own newest period
    now[0] = T0 + H + 7_000
    client.asked.clear()
    p2 = BinanceRestPoller(svc, cfg, client, clock=lambda: now[0])
    p2.load_resume_points()
    p2.poll_ratio("ETHUSDT", "global_ls")
    p2.poll_funding("BTCUSDT")
    assert client.asked[0][1]["startTime"] == T0 - P and client.asked[0][1]["symbol"] == "ETHUSDT"
    assert client.asked[1][1] == {"symbol": "BTCUSDT", "startTime": T0 - 8 * H, "limit": 1000}
    svc.writer.close()


# ---------------------------------------------------------------------------- Coinglass
def coinglass_answer(now):
    def respond(path, p):
        lo = p.get("start_time", now[0] - (p["limit"] - 1) * H)
        bars = []
        for t in range(lo - lo % H, now[0] + 1, H):
            if "liquidation" in path:
                bars.append({"time": t, "aggregated_long_liquidation_usd": 10.0,
                             "aggregated_short_liquidation_usd": 5.0})
            elif "long-short" in path:
                bars.append({"time": t, "global_account_long_percent": 55.0, "global_account_short_percent": 45.0,
                             "global_account_long_short_ratio": 1.22})
            else:
                bars.append({"time": t, "open": "1", "high": "2", "low": "0.5", "close": "1.5"})
        return 200, json.dumps({"code": "0", "msg": "success", "data": bars})
    return respond


def test_coinglass_polls_every_coin_and_names_it_in_each_call_row(tmp_path):
    svc = Svc(tmp_path, CQT_SYMBOLS="BTC,ETH,SOL", COINGLASS_ENABLED="true", COINGLASS_API_KEY=KEY,
              CQT_BACKFILL_S="0")
    now = [T0 + 30 * 60_000]
    client = Server(lambda: now[0], coinglass_answer(now), "coinglass")
    cfg = CoinglassConfig.from_settings(svc.settings)
    assert (cfg.coins, cfg.pairs) == (("BTC", "ETH", "SOL"), ("BTCUSDT", "ETHUSDT", "SOLUSDT"))
    p = CoinglassPoller(svc, cfg, client, clock=lambda: now[0])
    p.load_resume_points()
    for job in p.loop.jobs:
        job.spec.fn()
    asked = {(path, q["symbol"]) for path, q in client.asked}
    assert ("/api/futures/funding-rate/history", "ETHUSDT") in asked
    assert ("/api/futures/open-interest/aggregated-history", "SOL") in asked
    assert len(client.asked) == 12
    calls = rows(svc, "SELECT endpoint, ok FROM coinglass_call_status")
    assert len(calls) == 12 and all(ok == 1 for _, ok in calls)
    assert {e.rsplit("?coin=", 1)[1] for e, _ in calls} == {"BTC", "ETH", "SOL"}
    assert ("/api/futures/long-short-account-ratio/history?coin=ETH", 1) not in calls
    assert ("/api/futures/global-long-short-account-ratio/history?coin=ETH", 1) in calls
    assert [r[0] for r in rows(svc, "SELECT DISTINCT symbol FROM coinglass_funding ORDER BY 1")] == \
           ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    assert [r[0] for r in rows(svc, "SELECT DISTINCT symbol FROM coinglass_open_interest ORDER BY 1")] == \
           ["BTC", "ETH", "SOL"]

    # a bad body is a reject row carrying the coin
    good = client.respond
    bad = json.dumps({"code": "0", "data": [{"time": 1}]})
    client.respond = lambda path, q: (200, bad) if q["symbol"] == "SOL" else good(path, q)
    with pytest.raises(PollError):
        p.poll("SOL", "open_interest")
    client.respond = good
    assert rows(svc, "SELECT source, symbol FROM rejects") == [("coinglass", "SOL")]

    # restart three hours on: every coin resumes from its own newest bar (SOL's funding lost)
    svc.writer.put("DELETE FROM coinglass_funding WHERE symbol = ?", ("SOLUSDT",))
    now[0] = T0 + 3 * H + 30 * 60_000
    client.asked.clear()
    p2 = CoinglassPoller(svc, cfg, client, clock=lambda: now[0])
    svc.writer.flush()
    p2.load_resume_points()
    assert p2.newest["ETH@funding"] == T0 - H and p2.newest["SOL@funding"] is None
    p2.poll("ETH", "funding")
    p2.poll("SOL", "funding")
    eth, sol = (q for _, q in client.asked)
    assert eth["start_time"] == T0 - H and eth["symbol"] == "ETHUSDT"
    assert "start_time" not in sol and sol["limit"] == 3       # CQT_BACKFILL_S=0: the last closed bar
    svc.writer.close()
