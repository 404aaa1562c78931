"""Determinism over the wire (same seed + --start: the same first 1 000 messages byte
for byte), replay of a capture byte for byte, and flood mode. Replay pacing and the
flood rate are tested on a made-up clock in test_sim_rules.py; flood throughput is
measured by tests/bench/sim_throughput.py."""
from __future__ import annotations

import json
import time

import pytest
import requests

from cqt.capture import CaptureWriter
from cqt.sim.market import Market
from cqt.sim.model import MarketModel
from cqt.sim.venues.binance.frames import AGG, BOOK, FORCE, MARK1
from simproc import recv_frames, start_sim, ws_connect

START = 1_767_225_600_000
UP_ALL = json.dumps([{"ticket": "det"}, {"type": "trade", "codes": ["KRW-BTC", "KRW-USDT"]},
                     {"type": "orderbook", "codes": ["KRW-BTC", "KRW-USDT"]},
                     {"type": "ticker", "codes": ["KRW-BTC", "KRW-USDT"]}, {"format": "DEFAULT"}])


def _first_messages(sim, n: int) -> tuple[list, list]:
    mk = ws_connect(sim.urls["CQT_BINANCE_WS_URL"] + "/market/ws/btcusdt@aggTrade/btcusdt@markPrice@1s/"
                                                     "btcusdt@forceOrder")
    up = ws_connect(sim.urls["CQT_UPBIT_WS_URL"])
    up.send(UP_ALL)
    snaps = recv_frames(up, 6, 5)                   # the clock is paused: only the 6 snapshots
    assert len(snaps) == 6
    return mk, up, [d for _, d in snaps]


@pytest.mark.timeout(60)
def test_same_seed_and_start_give_the_same_first_1000_messages(tmp_path):
    args = ("--seed", "21", "--start", "2026-01-01T00:00:00Z", "--history", "60", "--speed", "40", "--paused")
    a = start_sim(tmp_path, *args)
    b = start_sim(tmp_path, *args)
    try:
        ca = _first_messages(a, 1000)
        cb = _first_messages(b, 1000)
        a.clock("resume")
        b.clock("resume")
        got = []
        for mk, up, snaps in (ca, cb):
            bn = [d for _, d in recv_frames(mk, 1000, 20)]
            ub = snaps + [d for _, d in recv_frames(up, 1000 - len(snaps), 20)]
            mk.close()
            up.close()
            got.append((bn, ub))
    finally:
        a.stop()
        b.stop()
    (bn_a, up_a), (bn_b, up_b) = got
    assert len(bn_a) == 1000 and len(up_a) == 1000
    assert bn_a == bn_b and up_a == up_b                                # byte for byte
    m = Market(MarketModel(21, START, history_s=60))
    exp_bn = [raw for _, _, raw in m.ws_frames("binance", START, START + 600_000, [AGG, MARK1, FORCE])][:1000]
    assert bn_a == exp_bn                                               # = the model without sockets
    exp_up = [raw.encode() for _, _, raw in m.ws_frames("upbit", START, START + 600_000)][:994]
    assert up_a[6:] == exp_up


def _write_capture(path, m: Market, t0: int, seconds: int) -> list[tuple[str, str]]:
    """A capture as a collector writes it: combined /market frames, bare /public frames,
    Upbit frames, and a few REST answers. Returns the (source, raw) frames in order."""
    w = CaptureWriter(path, rotate=False)
    out = []
    bn = list(m.ws_frames("binance", t0, t0 + seconds * 1000, [AGG, MARK1, BOOK]))
    up = list(m.ws_frames("upbit", t0, t0 + seconds * 1000, ["KRW-BTC@trade", "KRW-BTC@orderbook"]))
    for ts, kind, stream, raw in sorted([(ts, "b", s, r) for ts, s, r in bn] + [(ts, "u", s, r) for ts, s, r in up]):
        if kind == "u":
            w.ws("upbit", raw.encode(), ts + 40)
            out.append(("upbit", raw))
        else:
            text = raw if stream == BOOK else '{"stream":"' + stream + '","data":' + raw + "}"
            w.ws("binance_ws", text, ts + 40)
            out.append(("binance_ws", text))
    w.rest("binance_rest", "/fapi/v1/openInterest", {"symbol": "BTCUSDT"}, 200,
           '{"openInterest":"1.000","symbol":"BTCUSDT","time":1}', t0)
    w.rest("binance_rest", "/fapi/v1/openInterest", {"symbol": "BTCUSDT"}, 200,
           '{"openInterest":"2.000","symbol":"BTCUSDT","time":2}', t0 + 1000)
    w.rest("binance_rest", "/fapi/v1/openInterest", {"symbol": "ETHUSDT"}, 400,
           '{"code":-1121,"msg":"Invalid symbol."}', t0 + 2000)
    w.close()
    return out


@pytest.mark.timeout(60)
def test_replay_reproduces_the_capture_byte_for_byte(tmp_path):
    m = Market(MarketModel(5, START, history_s=0))
    cap = tmp_path / "capture.jsonl.gz"
    frames = _write_capture(cap, m, START, 4)
    h = start_sim(tmp_path, "--replay", str(cap), "--speed", "4", "--paused")
    try:
        mk = ws_connect(h.urls["CQT_BINANCE_WS_URL"] + "/market/stream?streams=btcusdt@aggTrade/btcusdt@markPrice@1s")
        pub = ws_connect(h.urls["CQT_BINANCE_WS_URL"] + "/public/ws/btcusdt@bookTicker")
        up = ws_connect(h.urls["CQT_UPBIT_WS_URL"])
        up.send(json.dumps([{"ticket": "r"}, {"type": "trade", "codes": ["KRW-BTC"]},
                            {"type": "orderbook", "codes": ["KRW-BTC"]}]))
        time.sleep(0.3)
        exp_mk = [r for s, r in frames if s == "binance_ws" and r.startswith('{"stream"')]
        exp_pub = [r for s, r in frames if s == "binance_ws" and not r.startswith('{"stream"')]
        exp_up = [r.encode() for s, r in frames if s == "upbit"]
        h.clock("resume")
        got_mk = [d for _, d in recv_frames(mk, len(exp_mk), 15)]
        got_pub = [d for _, d in recv_frames(pub, len(exp_pub), 15)]
        got_up = [d for _, d in recv_frames(up, len(exp_up), 15)]
        for w in (mk, pub, up):
            w.close()
        assert got_mk == exp_mk and got_pub == exp_pub and got_up == exp_up
        rest = requests.get(h.urls["CQT_BINANCE_REST_URL"] + "/fapi/v1/openInterest",
                            params={"symbol": "BTCUSDT"}, timeout=10)
        assert rest.status_code == 200 and rest.text == '{"openInterest":"2.000","symbol":"BTCUSDT","time":2}'
        bad = requests.get(h.urls["CQT_BINANCE_REST_URL"] + "/fapi/v1/openInterest",
                           params={"symbol": "ETHUSDT"}, timeout=10)
        assert bad.status_code == 400 and bad.json()["code"] == -1121
        st = h.stats(ids=False)
        assert st["mode"] == "replay" and st["replay"]["done"]
    finally:
        h.stop()


@pytest.mark.timeout(30)
def test_replay_speed_zero_sends_everything_at_once(tmp_path):
    m = Market(MarketModel(6, START, history_s=0))
    cap = tmp_path / "capture.jsonl"
    frames = _write_capture(cap, m, START, 30)              # 30 s of capture
    exp = [r for s, r in frames if s == "binance_ws" and not r.startswith('{"stream"')]
    h = start_sim(tmp_path, "--replay", str(cap), "--speed", "0", "--paused")
    try:
        pub = ws_connect(h.urls["CQT_BINANCE_WS_URL"] + "/public/ws/btcusdt@bookTicker")
        time.sleep(0.2)
        h.clock("resume")
        got = [d for _, d in recv_frames(pub, len(exp), 10)]      # 30 s of capture, sent at once
        assert got == exp
        pub.close()
    finally:
        h.stop()


@pytest.mark.timeout(30)
def test_flood_sends_valid_increasing_ids(tmp_path):
    h = start_sim(tmp_path, "--flood", "30000", "--history", "30")
    try:
        ws = ws_connect(h.urls["CQT_BINANCE_WS_URL"] + "/market/ws/btcusdt@aggTrade")
        recv_frames(ws, 10)
        got = recv_frames(ws, 5000, 20)
        ws.close()
    finally:
        h.stop()
    ids = [json.loads(d)["a"] for _, d in got]
    assert len(ids) == 5000 and ids == list(range(ids[0], ids[0] + 5000))
