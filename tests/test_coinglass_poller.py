"""The Coinglass poller's job function in-process with a scripted server: forming bars are
not stored, a closed bar is stored once and updated only when Coinglass revises it, every
call is a coinglass_call_status row, and an echoed key never reaches the database."""
from __future__ import annotations

import json
import threading

import pytest

from cqt.config import load_settings
from cqt.db import connect
from cqt.poll import PollError
from cqt.rest import RateLimitState, RestResponse
from cqt.sinks import RejectLog
from cqt.venues.coinglass.poll import CoinglassConfig, CoinglassPoller
from cqt.writer import BatchWriter

H = 3_600_000
T0 = 1_763_942_400_000          # a bar open (hour boundary)
KEY = "cgkey-REAL-1234567890abcdef"


class Svc:
    def __init__(self, tmp_path):
        self.settings = load_settings({"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(tmp_path / "cqt.db"),
                                       "COINGLASS_ENABLED": "true", "COINGLASS_API_KEY": KEY,
                                       "CQT_BACKFILL_S": "0"})
        self.writer = BatchWriter(self.settings.db, service="test")
        self.rejects = RejectLog(self.writer, secrets=self.settings.secrets)
        self.stopping = threading.Event()
        self.counted = []

    def count(self, source, frames=0, rows=0, rejects=0):
        self.counted.append((source, frames, rows, rejects))


class ScriptedClient:
    """Answers from a list of (status, body); records the params asked for."""

    name = "coinglass"

    def __init__(self, clock):
        self.clock = clock
        self.script: list[tuple[int, str]] = []
        self.asked: list[dict] = []
        self.rate = RateLimitState("coinglass")

    def get(self, path, params=None, *, wait=True, timeout_s=None, headers=None):
        self.asked.append(dict(params))
        status, body = self.script.pop(0)
        return RestResponse(status, {}, body, 7, self.clock() + 7, path, dict(params), None)


def bar(t, o, c):
    return {"time": t, "open": str(o), "high": str(max(o, c) + 1), "low": str(min(o, c) - 1), "close": str(c)}


def answer(*bars):
    return 200, json.dumps({"code": "0", "msg": "success", "data": list(bars)})


@pytest.fixture
def poller(tmp_path):
    svc = Svc(tmp_path)
    now = [T0 + 30 * 60_000]
    client = ScriptedClient(lambda: now[0])
    p = CoinglassPoller(svc, CoinglassConfig.from_settings(svc.settings), client, clock=lambda: now[0])
    p.newest.clear()
    yield p, svc, client, now
    svc.writer.close()


def rows(svc, sql):
    svc.writer.flush()
    conn = connect(svc.settings.db, readonly=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_forming_bar_skipped_closed_bar_upserted_only_when_revised(poller):
    p, svc, client, now = poller
    q = "SELECT open_ts_ms, avail_ts_ms, close, recv_ts_ms FROM coinglass_open_interest ORDER BY open_ts_ms"
    # 1) T0-1h closed, T0 forming
    client.script.append(answer(bar(T0 - H, 100, 110), bar(T0, 110, 115)))
    p.poll("BTC", "open_interest")
    r1 = rows(svc, q)
    assert r1 == [(T0 - H, T0, 110.0, now[0] + 7)]
    assert client.asked[-1] == {"symbol": "BTC", "interval": "1h", "limit": 3}
    # 2) an hour on: T0 has closed (values final for now), T0+1h forming
    now[0] = T0 + H + 20_000
    client.script.append(answer(bar(T0 - H, 100, 110), bar(T0, 110, 120), bar(T0 + H, 120, 121)))
    p.poll("BTC", "open_interest")
    r2 = rows(svc, q)
    assert r2[0] == r1[0]                                # unchanged: first receive time kept
    assert r2[1] == (T0, T0 + H, 120.0, T0 + H + 20_007)
    assert len(r2) == 2
    # 3) Coinglass revises the last closed bar: stored again, with the revision's receive time
    now[0] = T0 + H + 80_000
    client.script.append(answer(bar(T0 - H, 100, 110), bar(T0, 110, 121.5), bar(T0 + H, 121.5, 122)))
    p.poll("BTC", "open_interest")
    r3 = rows(svc, q)
    assert r3[0] == r1[0] and r3[1] == (T0, T0 + H, 121.5, T0 + H + 80_007)
    # every call recorded, with the closed bars it carried
    calls = rows(svc,
                 "SELECT endpoint, http_status, ok, latency_ms, rows, error FROM coinglass_call_status ORDER BY id")
    assert calls == [("/api/futures/open-interest/aggregated-history?coin=BTC", 200, 1, 7, n, None)
                     for n in (1, 2, 2)]


def test_restart_catches_up_from_the_newest_stored_bar(poller):
    p, svc, client, now = poller
    p.newest.clear()
    p.newest["BTC@funding"] = T0 - 5 * H
    now[0] = T0 + 10 * 60_000
    client.script.append(answer(*[bar(T0 - k * H, 1, 1) for k in range(5, -1, -1)]))
    p.poll("BTC", "funding")
    asked = client.asked[-1]
    assert asked["start_time"] == T0 - 5 * H and asked["limit"] == 8 and asked["end_time"] == now[0]
    assert asked["exchange"] == "Binance" and asked["symbol"] == "BTCUSDT"
    assert len(rows(svc, "SELECT * FROM coinglass_funding")) == 5        # T0 still forming


def test_errors_are_recorded_short_and_without_the_key(poller):
    p, svc, client, now = poller
    client.script.append((401, json.dumps({"code": "401", "msg": f"Invalid API key {KEY}"})))
    with pytest.raises(PollError) as e:
        p.poll("BTC", "liquidations")
    assert e.value.reason == "401 key rejected"
    client.script.append((200, json.dumps({"code": "0", "msg": "success", "data": [{"time": T0 - H}]})))
    with pytest.raises(PollError) as e:
        p.poll("BTC", "liquidations")
    assert e.value.reason.startswith("bad answer: missing_key:")
    client.script.append((200, "<html>" + KEY))
    with pytest.raises(PollError):
        p.poll("BTC", "long_short")
    calls = rows(svc, "SELECT http_status, ok, rows, error FROM coinglass_call_status ORDER BY id")
    assert calls[0] == (401, 0, 0, "401 key rejected")
    assert calls[1][:3] == (200, 0, 0) and calls[1][3].startswith("bad answer: missing_key:")
    assert calls[2][:3] == (200, 0, 0) and calls[2][3].startswith("bad answer: not_json")
    conn = connect(svc.settings.db, readonly=True)
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert KEY not in dump
    assert rows(svc, "SELECT COUNT(*) FROM rejects")[0][0] == 2     # the bad bodies, key masked


# ---------------------------------------------------------------------------- Binance REST poller
def ratio_rows(times):
    return 200, json.dumps([{"symbol": "BTCUSDT", "longShortRatio": "1.2", "longAccount": "0.55",
                             "shortAccount": "0.45", "timestamp": t} for t in times])


def test_binance_ratio_backfill_catch_up_and_refetch(tmp_path):
    from cqt.venues.binance.poll import BinanceRestConfig, BinanceRestPoller
    svc = Svc(tmp_path)
    svc.settings = load_settings({"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(svc.settings.db),
                                  "CQT_BACKFILL_S": "3600"})
    now = [T0 + 7_000]
    client = ScriptedClient(lambda: now[0])
    p = BinanceRestPoller(svc, BinanceRestConfig.from_settings(svc.settings), client, clock=lambda: now[0])
    p.load_resume_points()
    assert p.newest["BTCUSDT@global_ls"] is None
    P = 300_000
    # first start, empty table: backfill CQT_BACKFILL_S (3600 s = 12 periods) from startTime
    client.script.append(ratio_rows([T0 - 12 * P + k * P for k in range(13)]))
    res = p.poll_ratio("BTCUSDT", "global_ls")
    asked = client.asked[-1]
    assert asked["startTime"] == now[0] - 3_600_000 and asked["limit"] == 500 and asked["period"] == "5m"
    assert res.rows == 13 and p.newest["BTCUSDT@global_ls"] == T0
    # next minute: just the last 3 periods
    now[0] += 60_000
    client.script.append(ratio_rows([T0 - 2 * P, T0 - P, T0]))
    p.poll_ratio("BTCUSDT", "global_ls")
    assert client.asked[-1] == {"symbol": "BTCUSDT", "period": "5m", "limit": 3}
    # an hour-long hole (restart): page forward from the newest stored period
    now[0] = T0 + 3_600_000 + 7_000
    client.script.append(ratio_rows([T0 + k * P for k in range(13)]))
    p.poll_ratio("BTCUSDT", "global_ls")
    assert client.asked[-1]["startTime"] == T0
    assert rows(svc, "SELECT COUNT(*) FROM binance_ratios")[0][0] == 25
    # funding: nothing stored -> the most recent events; then from the newest stored
    client.script.append((200, json.dumps([{"symbol": "BTCUSDT", "fundingRate": "0.0001", "fundingTime": T0 - 8 * H,
                                            "markPrice": "80000.0"}])))
    p.poll_funding("BTCUSDT")
    assert client.asked[-1] == {"symbol": "BTCUSDT", "limit": 3}
    client.script.append((200, "[]"))
    p.poll_funding("BTCUSDT")
    assert client.asked[-1] == {"symbol": "BTCUSDT", "startTime": T0 - 8 * H, "limit": 1000}
    svc.writer.close()
