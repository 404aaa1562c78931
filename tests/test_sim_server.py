"""cqt-sim over real sockets: wire formats against the real samples, the Binance and
Upbit WebSocket protocols, REST backfill, Coinglass auth, clean shutdown."""
from __future__ import annotations

import json
import time

import pytest
import requests
import websocket

from cqt.sim.market import Market
from cqt.sim.model import MarketModel
from cqt.sim.venues.binance.frames import FORCE
from simproc import json_shape, recv_frames, sample, start_sim, ws_connect

START = 1_767_225_600_000
SPEED = 10


def _seed_with_early_liquidation() -> int:
    """A seed whose first forceOrder comes within 15 model seconds of START, so the
    forceOrder format can be checked through the server within a test's time."""
    for seed in range(1, 200):
        m = Market(MarketModel(seed, START, history_s=0))
        if any(True for _ in m.ws_frames("binance", START, START + 15_000, [FORCE])):
            return seed
    raise AssertionError("no seed with an early liquidation")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    seed = _seed_with_early_liquidation()
    h = start_sim(tmp_path_factory.mktemp("sim"), "--seed", str(seed), "--start", str(START), "--speed",
                  str(SPEED), "--history", "600")
    yield h
    h.stop()


def _get(sim, path, key="CQT_BINANCE_REST_URL", **params):
    return requests.get(sim.urls[key] + path, params=params, timeout=10)


@pytest.mark.timeout(30)
def test_ports_file_is_complete_and_atomic(sim):
    assert set(sim.urls) == {"CQT_UPBIT_WS_URL", "CQT_UPBIT_REST_URL", "CQT_BINANCE_WS_URL",
                             "CQT_BINANCE_REST_URL", "CQT_COINGLASS_URL", "control"}
    p = sim.port
    assert sim.urls["CQT_UPBIT_WS_URL"] == f"ws://127.0.0.1:{p}/websocket/v1"
    assert sim.urls["control"] == f"http://127.0.0.1:{p}/_sim"
    assert [f.name for f in sim.ports_file.parent.iterdir() if f.name.endswith(".tmp")] == []


# ------------------------------------------------------------------ Binance WebSocket
@pytest.mark.timeout(40)
def test_binance_ws_frames_match_the_samples(sim):
    base = sim.urls["CQT_BINANCE_WS_URL"]
    mk = ws_connect(base + "/market/stream?streams=btcusdt@aggTrade/btcusdt@markPrice@1s/btcusdt@forceOrder")
    pub = ws_connect(base + "/public/stream?streams=btcusdt@bookTicker")
    raw = ws_connect(base + "/market/ws/btcusdt@aggTrade")
    try:
        seen: dict[str, dict] = {}
        deadline = time.monotonic() + 25
        while len(seen) < 3 and time.monotonic() < deadline:
            for op, data in recv_frames(mk, 50, 1.0):
                assert op == websocket.ABNF.OPCODE_TEXT
                d = json.loads(data)
                seen.setdefault(d["stream"], d)
        book = json.loads(recv_frames(pub, 1)[0][1])
        bare = json.loads(recv_frames(raw, 1)[0][1])
    finally:
        for w in (mk, pub, raw):
            w.close()
    agg = json.loads(sample("binance_futures_ws_aggTrade.json")["messages"][0]["raw"])
    assert json_shape(seen["btcusdt@aggTrade"]) == json_shape(agg)
    assert json_shape(bare) == json_shape(agg["data"])                      # raw path: the bare event
    assert json_shape(book) == json_shape(json.loads(sample("binance_futures_ws_bookTicker.json")
                                                     ["messages"][0]["raw"]))
    mp = sample("binance_futures_ws_markPrice_forceOrder.json")["messages"]
    assert json_shape(seen["btcusdt@markPrice@1s"]) == json_shape(json.loads(mp[1]["raw"]))
    assert json_shape(seen["btcusdt@markPrice@1s"]["data"]) == json_shape(json.loads(mp[0]["raw"]))
    assert json_shape(seen["btcusdt@forceOrder"]["data"]) == json_shape(json.loads(mp[2]["raw"]))


@pytest.mark.timeout(30)
def test_binance_subscribe_protocol(sim):
    ws = ws_connect(sim.urls["CQT_BINANCE_WS_URL"] + "/market/ws")
    try:
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 1}))
        first = recv_frames(ws, 1)[0][1]
        assert json.loads(first) == {"result": None, "id": 1}
        assert json.loads(recv_frames(ws, 1)[0][1])["e"] == "aggTrade"
        ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 3}))
        reply = [json.loads(d) for _, d in recv_frames(ws, until=lambda d: '"id":3' in d)][-1]
        assert reply == {"result": ["btcusdt@aggTrade"], "id": 3}
        ws.send(json.dumps({"method": "SET_PROPERTY", "params": ["combined", True], "id": 4}))
        after = [json.loads(d) for _, d in recv_frames(ws, 20, 3.0)]
        assert {"result": None, "id": 4} in after
        assert after[-1]["stream"] == "btcusdt@aggTrade" and after[-1]["data"]["e"] == "aggTrade"
        ws.send(json.dumps({"method": "UNSUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": 312}))
        recv_frames(ws, until=lambda d: '"id":312' in d)
        assert recv_frames(ws, 5, 0.6) == []                     # nothing after unsubscribing
        errors = []
        for req in ({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade"], "id": "x"},
                    {"method": "SET_PROPERTY", "params": ["nope", True], "id": 6},
                    {"method": "SET_PROPERTY", "params": ["combined", "yes"], "id": 7},
                    {"method": "FROB", "id": 8}):
            ws.send(json.dumps(req))
            errors.append(json.loads(recv_frames(ws, 1)[0][1]))
        assert errors[0] == {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"}
        assert errors[1] == {"code": 0, "msg": "Unknown property", "id": 6}
        assert errors[2] == {"code": 1, "msg": "Invalid value type: expected Boolean", "id": 7}
        assert errors[3]["code"] == 2 and errors[3]["msg"].startswith("Invalid request: unknown variant")
    finally:
        ws.close()


@pytest.mark.timeout(30)
def test_legacy_unrouted_path_acks_but_never_delivers_market_streams(sim):
    base = sim.urls["CQT_BINANCE_WS_URL"]
    ws = ws_connect(base + "/ws")
    combined = ws_connect(base + "/stream?streams=btcusdt@aggTrade/btcusdt@markPrice@1s")
    wrong_route = ws_connect(base + "/public/ws/btcusdt@aggTrade")
    try:
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@aggTrade", "btcusdt@markPrice@1s"], "id": 1}))
        assert json.loads(recv_frames(ws, 1)[0][1]) == {"result": None, "id": 1}
        assert recv_frames(ws, 5, 1.5) == []
        assert recv_frames(combined, 5, 0.1) == [] and recv_frames(wrong_route, 5, 0.1) == []
        ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@bookTicker"], "id": 2}))
        got = [json.loads(d) for _, d in recv_frames(ws, 3, 3.0)]
        assert got[0] == {"result": None, "id": 2} and all(g.get("e") == "bookTicker" for g in got[1:])
        assert len(got) == 3                                       # /public streams flow there
    finally:
        for w in (ws, combined, wrong_route):
            w.close()


@pytest.mark.timeout(30)
def test_binance_rest_matches_the_samples(sim):
    ex = sample("binance_futures_rest_examples.json")["responses"]
    calls = {
        "GET /fapi/v1/time": ("/fapi/v1/time", {}),
        "GET /fapi/v1/aggTrades": ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "limit": 5}),
        "GET /fapi/v1/openInterest": ("/fapi/v1/openInterest", {"symbol": "BTCUSDT"}),
        "GET /futures/data/openInterestHist (doc)": ("/futures/data/openInterestHist",
                                                     {"symbol": "BTCUSDT", "period": "5m", "limit": 3}),
        "GET /futures/data/globalLongShortAccountRatio (doc)": ("/futures/data/globalLongShortAccountRatio",
                                                                {"symbol": "BTCUSDT", "period": "5m"}),
        "GET /futures/data/topLongShortPositionRatio (doc)": ("/futures/data/topLongShortPositionRatio",
                                                              {"symbol": "BTCUSDT", "period": "1h"}),
        "GET /futures/data/takerlongshortRatio (doc)": ("/futures/data/takerlongshortRatio",
                                                        {"symbol": "BTCUSDT", "period": "5m", "limit": 2}),
        "GET /fapi/v1/premiumIndex?symbol=BTCUSDT (doc)": ("/fapi/v1/premiumIndex", {"symbol": "BTCUSDT"}),
        "GET /fapi/v1/fundingRate (doc)": ("/fapi/v1/fundingRate", {"symbol": "BTCUSDT", "limit": 3}),
        "GET /fapi/v1/ticker/bookTicker?symbol=BTCUSDT (doc)": ("/fapi/v1/ticker/bookTicker", {"symbol": "BTCUSDT"}),
        "error payload (doc)": ("/fapi/v1/openInterest", {"symbol": "NOPE"}),
    }
    for key, (path, params) in calls.items():
        r = _get(sim, path, **params)
        assert r.status_code == (400 if key.startswith("error") else 200), (key, r.text)
        assert "X-MBX-USED-WEIGHT-1m" in r.headers
        got = r.json()
        assert got, key
        assert json_shape(got) == json_shape(ex[key]), key
    assert _get(sim, "/fapi/v1/openInterest", symbol="NOPE").json() == {"code": -1121, "msg": "Invalid symbol."}


@pytest.mark.timeout(30)
def test_agg_trades_rest_returns_the_ids_the_websocket_sent(sim):
    ws = ws_connect(sim.urls["CQT_BINANCE_WS_URL"] + "/market/ws/btcusdt@aggTrade")
    try:
        got = [json.loads(d) for _, d in recv_frames(ws, 60, 10)]
    finally:
        ws.close()
    assert len(got) == 60
    rest = _get(sim, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=got[0]["a"], limit=60).json()
    assert [r["a"] for r in rest] == [g["a"] for g in got]
    assert [(r["p"], r["q"], r["f"], r["l"], r["T"], r["m"]) for r in rest] == \
        [(g["p"], g["q"], g["f"], g["l"], g["T"], g["m"]) for g in got]
    by_time = _get(sim, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=got[0]["T"], endTime=got[-1]["T"],
                   limit=1000).json()
    assert {g["a"] for g in got} <= {r["a"] for r in by_time}
    r = _get(sim, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=1, endTime=7_200_001)
    assert r.status_code == 400 and r.json()["code"] == -1127


# ------------------------------------------------------------------ Upbit
def _upbit_sub(ws, *types, fmt="DEFAULT", codes=("KRW-BTC",), **flags):
    req = [{"ticket": "test"}] + [dict({"type": t, "codes": list(codes)}, **flags) for t in types] + [{"format": fmt}]
    ws.send(json.dumps(req))


@pytest.mark.timeout(40)
def test_upbit_ws_binary_snapshot_then_realtime_and_samples(sim):
    ws = ws_connect(sim.urls["CQT_UPBIT_WS_URL"])
    try:
        _upbit_sub(ws, "trade", "ticker", "orderbook")
        frames = recv_frames(ws, 60, 15)
    finally:
        ws.close()
    assert frames and all(op == websocket.ABNF.OPCODE_BINARY for op, _ in frames)
    msgs = [json.loads(d) for _, d in frames]
    by_type = {}
    for m in msgs:
        by_type.setdefault(m["type"], []).append(m)
    assert set(by_type) == {"trade", "ticker", "orderbook"}
    for t, ms in by_type.items():
        assert ms[0]["stream_type"] == "SNAPSHOT" and all(m["stream_type"] == "REALTIME" for m in ms[1:]), t
    ex = sample("upbit_ws_default_examples.json")["messages"]
    trade_keys = dict(json.loads(ex[1]["raw"]), **json.loads(ex[3]["raw"]))
    assert json_shape(by_type["trade"][0]) == json_shape(trade_keys)
    ticker = json.loads(ex[0]["raw"])          # a 2018 frame: `market` then, `type`/`code` now
    for k in ("market", "trade_status", "market_state_for_ios"):
        ticker.pop(k)
    ticker.update(type="", code="", stream_type="")
    assert json_shape(by_type["ticker"][0]) == json_shape(ticker)
    ob = by_type["orderbook"][-1]
    assert len(ob["orderbook_units"]) == 30
    assert set(ob) == {"type", "code", "timestamp", "total_ask_size", "total_bid_size", "orderbook_units",
                       "stream_type", "level"}


@pytest.mark.timeout(40)
def test_upbit_simple_format_and_both_flag_spellings(sim):
    ws = ws_connect(sim.urls["CQT_UPBIT_WS_URL"])
    try:
        _upbit_sub(ws, "trade", "orderbook", fmt="SIMPLE", isOnlyRealtime=True)
        msgs = [json.loads(d) for _, d in recv_frames(ws, 30, 10)]
        assert msgs and all(m["st"] == "REALTIME" for m in msgs)
        tr = next(m for m in msgs if m["ty"] == "trade")
        ob = next(m for m in msgs if m["ty"] == "orderbook")
        st = json.loads(sample("upbit_ws_trade_simple.json")["messages"][0]["raw"])
        st.update(bap=0.0, bas=0.0, bbp=0.0, bbs=0.0)             # best bid/ask: added 2024-11-27
        assert json_shape(tr) == json_shape(st)
        so = json.loads(sample("upbit_ws_orderbook_simple.json")["messages"][0]["raw"])
        so["lv"] = 0                                                 # `level`: present today
        assert json_shape(ob) == json_shape(so)
        _upbit_sub(ws, "ticker", is_only_snapshot=True)             # replaces the subscription
        snap = [json.loads(d) for _, d in recv_frames(ws, 30, 2.5)]
        tickers = [m for m in snap if m.get("type") == "ticker"]
        assert len(tickers) == 1 and tickers[0]["stream_type"] == "SNAPSHOT"
        assert not [m for m in snap[snap.index(tickers[0]):] if m.get("type") != "ticker"]
    finally:
        ws.close()


@pytest.mark.timeout(30)
def test_upbit_ping_up_errors_and_unknown_codes(sim):
    url = sim.urls["CQT_UPBIT_WS_URL"]
    ws = ws_connect(url)
    try:
        ws.send("PING")
        op, data = recv_frames(ws, 1)[0]
        assert op == websocket.ABNF.OPCODE_BINARY and json.loads(data) == {"status": "UP"}
        _upbit_sub(ws, "trade", codes=("KRW-NOPE", "krw-btc"))      # nothing, silently, socket open
        assert recv_frames(ws, 5, 1.0) == []
        ws.ping()
    finally:
        ws.close()
    cases = [("hello", "WRONG_FORMAT"), (json.dumps([{"type": "trade", "codes": ["KRW-BTC"]}]), "NO_TICKET"),
             (json.dumps([{"ticket": "t"}, {"codes": ["KRW-BTC"]}]), "NO_TYPE"),
             (json.dumps([{"ticket": "t"}, {"type": "trade"}]), "NO_CODES"),
             (json.dumps([{"ticket": "t"}, {"type": "nope", "codes": ["KRW-BTC"]}]), "INVALID_PARAM")]
    for text, name in cases:
        ws = ws_connect(url)
        try:
            ws.send(text)
            op, data = recv_frames(ws, 1)[0]
            err = json.loads(data)
            assert set(err) == {"error"} and err["error"]["name"] == name and err["error"]["message"]
            ws.settimeout(3)
            op, data = ws.recv_data(control_frame=True)
            assert op == websocket.ABNF.OPCODE_CLOSE and data[:2] == b"\x03\xe8"      # closed with 1000
        finally:
            ws.close()


@pytest.mark.timeout(30)
def test_upbit_origin_header_is_limited_to_one_connection_per_10s(sim):
    url = sim.urls["CQT_UPBIT_WS_URL"]
    time.sleep(1.05)                        # the 5 connections/s rule: leave the tests before alone
    first = websocket.create_connection(url, timeout=5)        # websocket-client sends Origin by default
    try:
        with pytest.raises(websocket.WebSocketBadStatusException) as e:
            websocket.create_connection(url, timeout=5)
        assert e.value.status_code == 429
        ws_connect(url).close()                                  # without Origin: fine
    finally:
        first.close()


@pytest.mark.timeout(40)
def test_upbit_rest_samples_and_ticks_are_the_ws_trades(sim):
    ws = ws_connect(sim.urls["CQT_UPBIT_WS_URL"])
    try:
        _upbit_sub(ws, "trade", is_only_realtime=True)
        trades = [json.loads(d) for _, d in recv_frames(ws, 8, 15)]
    finally:
        ws.close()
    assert len(trades) == 8
    time.sleep(0.3)
    ticks = _get(sim, "/v1/trades/ticks", "CQT_UPBIT_REST_URL", market="KRW-BTC", count=200).json()
    by_sid = {t["sequential_id"]: t for t in ticks}
    for t in trades:
        r = by_sid[t["sequential_id"]]
        assert (r["trade_price"], r["trade_volume"], r["ask_bid"], r["timestamp"]) == \
            (t["trade_price"], t["trade_volume"], t["ask_bid"], t["trade_timestamp"])
    assert [t["timestamp"] for t in ticks] == sorted((t["timestamp"] for t in ticks), reverse=True)
    ex = sample("upbit_rest_examples.json")["responses"]
    # ccxt stored every scalar as a string; the live API sends numbers: compare keys, then types
    sample_ticks = ex["GET /v1/trades/ticks?market=USDT-BTC&count=1"][0]
    assert list(ticks[0]) == list(sample_ticks)
    strings = {"market", "trade_date_utc", "trade_time_utc", "ask_bid"}
    assert all((type(v) is str) == (k in strings) for k, v in ticks[0].items())
    tick = _get(sim, "/v1/ticker", "CQT_UPBIT_REST_URL", markets="KRW-BTC,KRW-USDT")
    assert tick.status_code == 200 and [t["market"] for t in tick.json()] == ["KRW-BTC", "KRW-USDT"]
    assert set(tick.json()[0]) == set(ex["GET /v1/ticker?markets=USDT-BTC"][0])
    assert "Remaining-Req" in tick.headers
    bad = _get(sim, "/v1/trades/ticks", "CQT_UPBIT_REST_URL", market="KRW-NOPE")
    assert bad.status_code == 404 and bad.json() == {"error": {"name": 404, "message": "Code not found"}}


# ------------------------------------------------------------------ Coinglass
CG_CALLS = {
    "GET /api/futures/open-interest/aggregated-history?symbol=BTC&interval=1d":
        ("/api/futures/open-interest/aggregated-history", {"symbol": "BTC", "interval": "1d"}),
    "GET /api/futures/funding-rate/history?exchange=Binance&symbol=BTCUSDT&interval=1d":
        ("/api/futures/funding-rate/history", {"exchange": "Binance", "symbol": "BTCUSDT", "interval": "1d"}),
    "GET /api/futures/liquidation/aggregated-history?exchange_list=Binance,OKX,Bybit&symbol=BTC&interval=1d":
        ("/api/futures/liquidation/aggregated-history",
         {"exchange_list": "Binance,OKX,Bybit", "symbol": "BTC", "interval": "1d"}),
    "GET /api/futures/liquidation/history?exchange=Binance&symbol=BTCUSDT&interval=1d":
        ("/api/futures/liquidation/history", {"exchange": "Binance", "symbol": "BTCUSDT", "interval": "1d"}),
    "GET /api/futures/global-long-short-account-ratio/history?exchange=Binance&symbol=BTCUSDT&interval=1h":
        ("/api/futures/global-long-short-account-ratio/history",
         {"exchange": "Binance", "symbol": "BTCUSDT", "interval": "1h"}),
    "GET /api/futures/top-long-short-position-ratio/history?exchange=Binance&symbol=BTCUSDT&interval=1h":
        ("/api/futures/top-long-short-position-ratio/history",
         {"exchange": "Binance", "symbol": "BTCUSDT", "interval": "1h"}),
    "GET /api/futures/aggregated-taker-buy-sell-volume/history?exchange_list=Binance,OKX,Bybit&symbol=BTC&interval=1h":
        ("/api/futures/aggregated-taker-buy-sell-volume/history",
         {"exchange_list": "Binance,OKX,Bybit", "symbol": "BTC", "interval": "1h"}),
    "GET /api/futures/v2/taker-buy-sell-volume/history?exchange=Binance&symbol=BTCUSDT&interval=1h":
        ("/api/futures/v2/taker-buy-sell-volume/history",
         {"exchange": "Binance", "symbol": "BTCUSDT", "interval": "1h"}),
}


@pytest.mark.timeout(30)
def test_coinglass_auth_and_samples(sim):
    base = sim.urls["CQT_COINGLASS_URL"]
    path, params = CG_CALLS["GET /api/futures/funding-rate/history?exchange=Binance&symbol=BTCUSDT&interval=1d"]
    r = requests.get(base + path, params=params, timeout=10)
    assert r.status_code == 401 and r.json()["code"] == "401" and r.json()["msg"]
    r = requests.get(base + path, params=params, headers={"CG-API-KEY": "your_key_here"}, timeout=10)
    assert r.status_code == 401
    ex = sample("coinglass_v4_examples.json")["responses"]
    for key, (path, params) in CG_CALLS.items():
        r = requests.get(base + path, params=dict(params, limit=3), headers={"CG-API-KEY": "demo-key"}, timeout=10)
        assert r.status_code == 200, (key, r.text)
        got = r.json()
        assert got["code"] == "0" and len(got["data"]) == 3
        assert json_shape(got) == json_shape(ex[key]), key
        assert "API-KEY-MAX-LIMIT" in r.headers


# ------------------------------------------------------------------ shutdown
@pytest.mark.timeout(30)
def test_cli_fault_then_sigterm_closes_websockets_and_exits_zero(tmp_path):
    h = start_sim(tmp_path, "--history", "60", "--fault",
                  '{"kind":"http_error","path":"/fapi/v1/time","status":503,"count":1}')
    t = h.urls["CQT_BINANCE_REST_URL"] + "/fapi/v1/time"
    assert [requests.get(t, timeout=5).status_code for _ in range(2)] == [503, 200]
    ws = ws_connect(h.urls["CQT_BINANCE_WS_URL"] + "/market/ws/btcusdt@markPrice@1s")
    try:
        assert recv_frames(ws, 1, 5)
        t0 = time.monotonic()
        assert h.stop(timeout=5) == 0
        assert time.monotonic() - t0 < 4
        ws.settimeout(2)
        frames = []
        try:
            while True:
                op, data = ws.recv_data(control_frame=True)
                frames.append((op, data))
                if op == websocket.ABNF.OPCODE_CLOSE:
                    break
        except (websocket.WebSocketConnectionClosedException, OSError):
            pass
        assert frames and frames[-1][0] == websocket.ABNF.OPCODE_CLOSE and frames[-1][1][:2] == b"\x03\xe9"
    finally:
        ws.close()
    assert h.ports_file.exists()                                   # nothing of the user's is removed
    assert "stopped" in h.log()
