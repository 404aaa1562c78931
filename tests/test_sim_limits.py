"""cqt-sim limits and connection rules: Binance weights (429 Retry-After, then 418),
Coinglass per-minute limit, key and plan, Upbit REST per-second limit, Binance server
pings / pong timeout / lifetime, Upbit idle timeout."""
from __future__ import annotations

import json
import time

import pytest
import requests
import websocket

from simproc import recv_frames, start_sim, ws_connect


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    h = start_sim(tmp_path_factory.mktemp("limits"), "--history", "300", "--binance-weight-limit", "100",
                  "--binance-ban-seconds", "2", "--coinglass-limit", "5", "--coinglass-plan", "hobbyist",
                  "--coinglass-key", "sekrit", "--binance-ping-interval", "0.4", "--binance-pong-timeout", "1.2",
                  "--binance-lifetime", "4", "--upbit-idle-timeout", "1.5")
    yield h
    h.stop()


@pytest.mark.timeout(60)
def test_binance_weight_limit_429_with_retry_after_then_418(sim):
    url = sim.urls["CQT_BINANCE_REST_URL"] + "/fapi/v1/aggTrades"
    p = {"symbol": "BTCUSDT", "limit": 1}
    # stay clear of a minute boundary: the window is the wall-clock minute
    if time.time() % 60 > 57:
        time.sleep(60.2 - time.time() % 60)
    codes, weights = [], []
    for _ in range(5):
        r = requests.get(url, params=p, timeout=10)
        codes.append(r.status_code)
        weights.append(int(r.headers["X-MBX-USED-WEIGHT-1m"]))
    assert codes == [200] * 5 and weights == [20, 40, 60, 80, 100]
    r = requests.get(url, params=p, timeout=10)
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert r.json()["code"] == -1003
    statuses = [requests.get(url, params=p, timeout=10).status_code for _ in range(3)]
    assert statuses[-1] == 418                                   # kept going after the 429
    r = requests.get(sim.urls["CQT_BINANCE_REST_URL"] + "/fapi/v1/time", timeout=10)
    assert r.status_code == 418 and 1 <= int(r.headers["Retry-After"]) <= 2
    assert "banned until" in r.json()["msg"]


@pytest.mark.timeout(60)
def test_coinglass_key_plan_and_per_minute_limit(sim):
    url = sim.urls["CQT_COINGLASS_URL"] + "/api/futures/open-interest/aggregated-history"
    if time.time() % 60 > 57:
        time.sleep(60.2 - time.time() % 60)
    r = requests.get(url, params={"symbol": "BTC", "interval": "4h"}, headers={"CG-API-KEY": "other"}, timeout=10)
    assert r.status_code == 401 and r.json()["code"] == "401"
    ok = {"CG-API-KEY": "sekrit"}
    r = requests.get(url, params={"symbol": "BTC", "interval": "1h"}, headers=ok, timeout=10)
    assert r.status_code == 401 and "Hobbyist" in r.json()["msg"]          # interval below the plan
    r = requests.get(url, params={"symbol": "BTC", "interval": "4h", "limit": 2}, headers=ok, timeout=10)
    assert r.status_code == 200 and r.json()["code"] == "0" and len(r.json()["data"]) == 2
    assert r.headers["API-KEY-MAX-LIMIT"] == "5"
    for _ in range(3):
        requests.get(url, params={"symbol": "BTC", "interval": "1d"}, headers=ok, timeout=10)
    r = requests.get(url, params={"symbol": "BTC", "interval": "1d"}, headers=ok, timeout=10)
    assert r.status_code == 429 and r.json()["code"] == "429" and int(r.headers["Retry-After"]) >= 1


@pytest.mark.timeout(30)
def test_upbit_rest_ten_per_second(sim):
    url = sim.urls["CQT_UPBIT_REST_URL"] + "/v1/trades/ticks"
    if time.time() % 1 > 0.5:
        time.sleep(1.02 - time.time() % 1)
    rs = [requests.get(url, params={"market": "KRW-BTC"}, timeout=10) for _ in range(12)]
    assert [r.status_code for r in rs].count(429) >= 1
    assert rs[0].headers["Remaining-Req"].startswith("group=trade; min=600; sec=")
    assert rs[-1].json()["error"]["name"] == 429


@pytest.mark.timeout(30)
def test_binance_pings_pong_timeout_and_lifetime(sim):
    base = sim.urls["CQT_BINANCE_WS_URL"] + "/market/ws/btcusdt@markPrice@1s"
    good = ws_connect(base)
    mute = ws_connect(base)
    t0 = time.monotonic()
    try:
        pings = 0
        good.settimeout(1)
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            try:
                op, data = good.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                continue
            if op == websocket.ABNF.OPCODE_PING:
                pings += 1
                good.pong(data)
        assert pings >= 3                                        # every 0.4 s
        # `mute` never read, so never answered a ping: it was cut after ~1.2 s
        mute.settimeout(2)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
            while True:
                op, _ = mute.recv_data(control_frame=True)
        # `good` answered every ping: it lives until its 4 s lifetime, then a close frame
        good.settimeout(4)
        while True:
            op, data = good.recv_data(control_frame=True)
            if op == websocket.ABNF.OPCODE_PING:
                good.pong(data)
            elif op == websocket.ABNF.OPCODE_CLOSE:
                break
        assert 3.5 <= time.monotonic() - t0 <= 6.5
    finally:
        good.close()
        mute.close()
    closed = sim.stats(ids=False)["closed"]
    assert closed.get("pong timeout", 0) >= 1 and closed.get("connection lifetime reached", 0) >= 1


@pytest.mark.timeout(30)
def test_upbit_idle_connection_is_closed(sim):
    ws = ws_connect(sim.urls["CQT_UPBIT_WS_URL"])
    t0 = time.monotonic()
    try:
        ws.settimeout(5)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
            ws.recv_data(control_frame=True)
        assert 1.2 <= time.monotonic() - t0 <= 4
    finally:
        ws.close()
    # a subscribed socket with data flowing is not idle
    ws = ws_connect(sim.urls["CQT_UPBIT_WS_URL"])
    try:
        ws.send(json.dumps([{"ticket": "t"}, {"type": "orderbook", "codes": ["KRW-BTC"]}]))
        frames = recv_frames(ws, 10_000, 2.0)
        assert len(frames) >= 2 and ws.connected
    finally:
        ws.close()
