"""Every cqt-sim fault, observed by a real client."""
from __future__ import annotations

import json
import math
import time

import pytest
import requests
import websocket

from simproc import recv_frames, start_sim, ws_connect

AGG_URL = "/market/ws/btcusdt@aggTrade"
UP_SUB = json.dumps([{"ticket": "t"}, {"type": "trade", "codes": ["KRW-BTC"], "is_only_realtime": True}])


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    h = start_sim(tmp_path_factory.mktemp("faults"), "--history", "600", "--speed", "5",
                  "--upbit-origin-interval", "0")
    yield h
    h.stop()


def _bn(sim, path=AGG_URL):
    return ws_connect(sim.urls["CQT_BINANCE_WS_URL"] + path)


def _up(sim):
    ws = ws_connect(sim.urls["CQT_UPBIT_WS_URL"])
    ws.send(UP_SUB)
    return ws


def _closed_within(ws, seconds: float) -> bool:
    ws.settimeout(seconds)
    try:
        while True:
            op, _ = ws.recv_data(control_frame=True)
            if op == websocket.ABNF.OPCODE_CLOSE:
                return True
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        return True
    except websocket.WebSocketTimeoutException:
        return False


def _valid_agg(text) -> str | None:
    """None for a good aggTrade, else the reason (what a collector's parser must catch)."""
    try:
        d = json.loads(text, parse_constant=lambda c: float("nan"))
    except ValueError:
        return "not_json"
    if not all(k in d for k in ("e", "E", "a", "p", "q", "f", "l", "T", "m")):
        return "missing_keys"
    if not (type(d["a"]) is int and isinstance(d["p"], str) and isinstance(d["m"], bool)):
        return "wrong_types"
    p = float(d["p"])
    if math.isnan(p) or math.isnan(float(d["q"])):
        return "nan"
    if p <= 0:
        return "bad_price"
    if not 1_500_000_000_000 < d["T"] < 4_000_000_000_000:
        return "absurd_ts"
    return None


@pytest.mark.timeout(30)
def test_invalid_fault_is_rejected(sim):
    r = requests.post(sim.control + "/fault", json={"kind": "nope"}, timeout=5)
    assert r.status_code == 400 and "unknown fault kind" in r.json()["error"]
    r = requests.post(sim.control + "/fault", json={"kind": "http_error"}, timeout=5)
    assert r.status_code == 400 and "path" in r.json()["error"]


@pytest.mark.timeout(30)
def test_drop_closes_every_connection(sim):
    b, u = _bn(sim), _up(sim)
    try:
        assert recv_frames(b, 1) and recv_frames(u, 1, 10)
        sim.fault("drop")
        assert _closed_within(b, 3) and _closed_within(u, 3)
    finally:
        b.close()
        u.close()
    b = _bn(sim)
    try:
        assert recv_frames(b, 1)
        sim.fault("drop", source="binance", close_code=1001)
        b.settimeout(3)
        while True:
            op, data = b.recv_data(control_frame=True)
            if op == websocket.ABNF.OPCODE_CLOSE:
                assert data[:2] == b"\x03\xe9"
                break
    finally:
        b.close()


@pytest.mark.timeout(30)
def test_stall_keeps_the_connection_open_and_silent(sim):
    b = _bn(sim)
    try:
        before = recv_frames(b, 5)
        sim.fault("stall", seconds=1.5, source="binance")
        t0 = time.monotonic()
        recv_frames(b, 10_000, 0.15)                       # frames already in flight
        assert recv_frames(b, 1, 1.0) == []                 # silence ...
        assert b.connected
        after = recv_frames(b, 1, 3.0)                      # ... then it flows again
        assert after and time.monotonic() - t0 >= 1.3
        a0, a1 = json.loads(before[-1][1])["a"], json.loads(after[0][1])["a"]
        assert a1 - a0 > 1                                  # what was produced meanwhile is lost
        rest = requests.get(sim.urls["CQT_BINANCE_REST_URL"] + "/fapi/v1/aggTrades",
                            params={"symbol": "BTCUSDT", "fromId": a0, "limit": 1000}, timeout=10).json()
        assert [r["a"] for r in rest[: a1 - a0 + 1]] == list(range(a0, a1 + 1))    # REST has it all
    finally:
        b.close()
    assert sim.stats(ids=False)["streams"]["binance:btcusdt@aggTrade"]["stalled"] > 0


@pytest.mark.timeout(30)
def test_gap_skips_ids_on_the_websocket_only(sim):
    b = _bn(sim)
    try:
        before = recv_frames(b, 3)
        sim.fault("gap", ids=20, source="binance")
        ids = [json.loads(d)["a"] for _, d in before + recv_frames(b, 60, 15)]
    finally:
        b.close()
    jumps = [(x, y) for x, y in zip(ids, ids[1:]) if y != x + 1]
    assert len(jumps) == 1 and jumps[0][1] - jumps[0][0] == 21
    lo = jumps[0][0] + 1
    rest = requests.get(sim.urls["CQT_BINANCE_REST_URL"] + "/fapi/v1/aggTrades",
                        params={"symbol": "BTCUSDT", "fromId": lo, "limit": 20}, timeout=10).json()
    assert [r["a"] for r in rest] == list(range(lo, lo + 20))
    st = sim.stats(stream="btcusdt@aggTrade")["streams"]["binance:btcusdt@aggTrade"]
    assert [lo, lo + 19] in st["skipped"]
    # Upbit: the skipped trades are in REST
    u = _up(sim)
    try:
        sim.fault("gap", ids=2, source="upbit")
        got = {json.loads(d)["sequential_id"] for _, d in recv_frames(u, 4, 20)}
    finally:
        u.close()
    skipped = sim.stats(stream="KRW-BTC@trade")["streams"]["upbit:KRW-BTC@trade"]["skipped"]
    sids = {a for a, b in skipped for a in range(a, b + 1)} if all(b - a < 1000 for a, b in skipped) else set()
    assert len(sids) == 2 and not sids & got
    ticks = requests.get(sim.urls["CQT_UPBIT_REST_URL"] + "/v1/trades/ticks",
                         params={"market": "KRW-BTC", "count": 500}, timeout=10).json()
    assert sids <= {t["sequential_id"] for t in ticks}


@pytest.mark.timeout(40)
def test_malformed_frames_are_interleaved_and_counted(sim):
    b = _bn(sim)
    try:
        recv_frames(b, 2)
        sim.fault("malformed", count=14, source="binance", per_frame=2)
        frames = []
        deadline = time.monotonic() + 10
        while sum(1 for f in frames if _valid_agg(f)) < 14 and time.monotonic() < deadline:
            frames += [d for _, d in recv_frames(b, 10, 1.0)]
        frames += [d for _, d in recv_frames(b, 10_000, 0.3)]
    finally:
        b.close()
    reasons = [_valid_agg(f) for f in frames]
    bad = [r for r in reasons if r]
    assert len(bad) == 14
    assert set(bad) == {"not_json", "missing_keys", "wrong_types", "nan", "bad_price", "absurd_ts"}
    first_bad = reasons.index(bad[0])
    last_bad = max(i for i, r in enumerate(reasons) if r)
    assert any(r is None for r in reasons[first_bad:last_bad])     # interleaved with normal traffic
    counts = sim.stats(ids=False)["malformed"]["binance"]
    assert sum(counts.values()) == 14 and counts["nan"] == 2
    u = _up(sim)
    try:
        sim.fault("malformed", count=3, source="upbit", kinds=["nan", "zero_price", "not_json"])
        msgs = []
        deadline = time.monotonic() + 10
        while sum(1 for m in msgs if b"NaN" in m or b"0.0," in m or not m.endswith(b"}")) < 3 \
                and time.monotonic() < deadline:
            msgs += [d for _, d in recv_frames(u, 10, 1.0)]
    finally:
        u.close()
    assert any(b'"trade_price":NaN' in m for m in msgs)
    assert sim.stats(ids=False)["malformed"]["upbit"] == {"nan": 1, "zero_price": 1, "not_json": 1}


@pytest.mark.timeout(30)
def test_refuse_new_connections(sim):
    sim.fault("refuse", seconds=1.5, source="upbit")
    with pytest.raises((websocket.WebSocketException, ConnectionError, OSError)):
        ws_connect(sim.urls["CQT_UPBIT_WS_URL"], timeout=3)
    _bn(sim).close()                                     # only Upbit refuses
    time.sleep(1.6)
    ws_connect(sim.urls["CQT_UPBIT_WS_URL"]).close()


@pytest.mark.timeout(30)
def test_rest_http_errors_bodies_and_slowness(sim):
    base = sim.urls["CQT_BINANCE_REST_URL"]
    path = "/fapi/v1/openInterest"

    def get():
        return requests.get(base + path, params={"symbol": "BTCUSDT"}, timeout=10)
    sim.fault("http_error", path=path, status=503, count=2)
    assert [get().status_code for _ in range(3)] == [503, 503, 200]
    sim.fault("http_error", path=path, status=429, retry_after=7)
    r = get()
    assert r.status_code == 429 and r.headers["Retry-After"] == "7" and r.json()["code"] == -1003
    sim.fault("http_error", path="/fapi/*", status=418)
    assert get().status_code == 418
    sim.fault("http_error", path=path, status=500)
    assert get().status_code == 500
    sim.fault("truncated", path=path)
    r = get()
    assert r.status_code == 200
    with pytest.raises(ValueError):
        json.loads(r.text)
    sim.fault("non_json", path=path)
    assert get().text.startswith("<html>")
    sim.fault("slow", path=path, seconds=1.0)
    t0 = time.monotonic()
    assert get().status_code == 200 and time.monotonic() - t0 >= 0.95
    up = requests.get(sim.urls["CQT_UPBIT_REST_URL"] + "/v1/ticker", params={"markets": "KRW-BTC"}, timeout=10)
    assert up.status_code == 200
    sim.fault("http_error", path="/v1/ticker", status=500)
    up = requests.get(sim.urls["CQT_UPBIT_REST_URL"] + "/v1/ticker", params={"markets": "KRW-BTC"}, timeout=10)
    assert up.status_code == 500 and up.json()["error"]["name"] == 500


@pytest.mark.timeout(30)
def test_coinglass_key_rejected_for_n_requests(sim):
    url = sim.urls["CQT_COINGLASS_URL"] + "/api/futures/funding-rate/history"
    p = {"exchange": "Binance", "symbol": "BTCUSDT", "interval": "1h", "limit": 2}
    sim.fault("coinglass_auth", count=2)
    codes = [requests.get(url, params=p, headers={"CG-API-KEY": "k"}, timeout=10).status_code for _ in range(3)]
    assert codes == [401, 401, 200]


@pytest.mark.timeout(30)
def test_server_shutdown_event_then_close(sim):
    raw = _bn(sim, "/market/ws/btcusdt@markPrice@1s")
    comb = _bn(sim, "/market/stream?streams=btcusdt@markPrice@1s")
    try:
        recv_frames(raw, 1)
        recv_frames(comb, 1)
        sim.fault("server_shutdown", delay=0.5)
        ev = [json.loads(d) for _, d in recv_frames(raw, 10, 3, until=lambda d: "serverShutdown" in d)][-1]
        assert ev["e"] == "serverShutdown" and isinstance(ev["E"], int)
        ev = [json.loads(d) for _, d in recv_frames(comb, 10, 3, until=lambda d: "serverShutdown" in d)][-1]
        assert ev["stream"] == "!serverShutdown" and ev["data"]["e"] == "serverShutdown"
        assert _closed_within(raw, 3) and _closed_within(comb, 3)
    finally:
        raw.close()
        comb.close()


@pytest.mark.timeout(30)
def test_scheduled_fault_and_no_loss_in_stats(sim):
    b = _bn(sim)
    try:
        ans = sim.fault("drop", source="binance", at=1.5)
        assert ans["scheduled_in_s"] == 1.5
        ids = []
        b.settimeout(4)
        t0 = time.monotonic()
        try:
            while True:
                ids.append(json.loads(b.recv())["a"])
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            pass
        assert 1.2 <= time.monotonic() - t0 <= 3.5
    finally:
        b.close()
    assert ids == list(range(ids[0], ids[0] + len(ids)))
    st = sim.stats(stream="btcusdt@aggTrade")["streams"]["binance:btcusdt@aggTrade"]
    covering = [r for r in st["ranges"] if r[0] <= ids[0] <= r[1]]
    # everything the sim says it sent arrived, except what was in flight when the
    # connection was dropped (lost, as on a real network: REST backfill covers it)
    assert covering and covering[0][1] >= ids[-1]
    assert 0 <= st["last_id"] - ids[-1] <= 50
