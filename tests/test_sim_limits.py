"""cqt-sim limits and connection rules over real sockets: Binance weights (429
Retry-After, then 418), Coinglass per-minute limit, key and plan, Upbit REST per-second
limit, Binance server pings / pong timeout / lifetime, Upbit idle timeout. Their timing
(the windows, the ping cadence, when a connection is cut) is tested on a made-up clock
in test_sim_rules.py; here the waits are bounded and the wire shapes are checked."""
from __future__ import annotations

import json

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


def _until(get, want, most: int):
    """Call get() until its status is `want` (at most `most` times): (answers before, the answer)."""
    before = []
    for _ in range(most):
        r = get()
        if r.status_code == want:
            return before, r
        before.append(r)
    raise AssertionError(f"no {want} in {most} requests: {[r.status_code for r in before][-10:]}")


@pytest.mark.timeout(60)
def test_binance_weight_limit_429_with_retry_after_then_418(sim):
    url = sim.urls["CQT_BINANCE_REST_URL"] + "/fapi/v1/aggTrades"
    p = {"symbol": "BTCUSDT", "limit": 1}

    def get():
        return requests.get(url, params=p, timeout=10)
    # a minute boundary may restart the count once: hence the margins on the counts
    ok, r = _until(get, 429, 12)
    assert ok and all(x.status_code == 200 for x in ok)
    assert [int(x.headers["X-MBX-USED-WEIGHT-1m"]) % 20 for x in ok] == [0] * len(ok)
    assert int(ok[-1].headers["X-MBX-USED-WEIGHT-1m"]) == 100                 # the limit, then 429
    assert int(r.headers["Retry-After"]) >= 1 and r.json()["code"] == -1003
    _until(get, 418, 12)                                                     # kept going after the 429
    r = requests.get(sim.urls["CQT_BINANCE_REST_URL"] + "/fapi/v1/time", timeout=10)
    assert r.status_code == 418 and 1 <= int(r.headers["Retry-After"]) <= 2
    assert "banned until" in r.json()["msg"]


@pytest.mark.timeout(60)
def test_coinglass_key_plan_and_per_minute_limit(sim):
    url = sim.urls["CQT_COINGLASS_URL"] + "/api/futures/open-interest/aggregated-history"
    r = requests.get(url, params={"symbol": "BTC", "interval": "4h"}, headers={"CG-API-KEY": "other"}, timeout=10)
    assert r.status_code == 401 and r.json()["code"] == "401"
    ok = {"CG-API-KEY": "sekrit"}
    r = requests.get(url, params={"symbol": "BTC", "interval": "1h"}, headers=ok, timeout=10)
    assert r.status_code == 401 and "Hobbyist" in r.json()["msg"]          # interval below the plan

    def get():
        return requests.get(url, params={"symbol": "BTC", "interval": "4h", "limit": 2}, headers=ok, timeout=10)
    r = get()                          # a minute boundary can only restart the count, never add to it
    assert r.status_code == 200 and r.json()["code"] == "0" and len(r.json()["data"]) == 2
    assert r.headers["API-KEY-MAX-LIMIT"] == "5"
    _, r = _until(get, 429, 12)
    assert r.json()["code"] == "429" and int(r.headers["Retry-After"]) >= 1


@pytest.mark.timeout(30)
def test_upbit_rest_ten_per_second(sim):
    url = sim.urls["CQT_UPBIT_REST_URL"] + "/v1/trades/ticks"

    def get():
        return requests.get(url, params={"market": "KRW-BTC"}, timeout=10)
    _, r = _until(get, 429, 200)
    assert r.headers["Remaining-Req"].startswith("group=trade; min=600; sec=")
    assert r.json()["error"]["name"] == 429


@pytest.mark.timeout(40)
def test_binance_pings_pong_timeout_and_lifetime(sim):
    base = sim.urls["CQT_BINANCE_WS_URL"] + "/market/ws/btcusdt@markPrice@1s"
    good = ws_connect(base)
    mute = ws_connect(base)
    try:
        pings = 0
        good.settimeout(10)

        def mute_cut():
            return sim.stats(ids=False)["closed"].get("pong timeout", 0) >= 1
        while pings < 3 or not mute_cut():                       # answered, so `good` stays
            op, data = good.recv_data(control_frame=True)
            if op == websocket.ABNF.OPCODE_PING:
                pings += 1
                good.pong(data)
        # `mute` never read, so never answered a ping: it was cut
        mute.settimeout(10)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
            while True:
                op, _ = mute.recv_data(control_frame=True)
        # `good` answered every ping: it lives until its lifetime, then a close frame
        good.settimeout(10)
        while True:
            op, data = good.recv_data(control_frame=True)
            if op == websocket.ABNF.OPCODE_PING:
                good.pong(data)
            elif op == websocket.ABNF.OPCODE_CLOSE:
                break
    finally:
        good.close()
        mute.close()
    closed = sim.stats(ids=False)["closed"]
    assert closed.get("pong timeout", 0) >= 1 and closed.get("connection lifetime reached", 0) >= 1


@pytest.mark.timeout(30)
def test_upbit_idle_connection_is_closed(sim):
    ws = ws_connect(sim.urls["CQT_UPBIT_WS_URL"])
    try:
        ws.settimeout(10)
        with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionError, OSError)):
            ws.recv_data(control_frame=True)
    finally:
        ws.close()
    assert sim.stats(ids=False)["closed"].get("idle timeout", 0) >= 1
    # a subscribed socket with data flowing is not idle
    ws = ws_connect(sim.urls["CQT_UPBIT_WS_URL"])
    try:
        ws.send(json.dumps([{"ticket": "t"}, {"type": "orderbook", "codes": ["KRW-BTC"]}]))
        frames = recv_frames(ws, 10_000, 2.0)
        assert len(frames) >= 2 and ws.connected
    finally:
        ws.close()
