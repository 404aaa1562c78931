"""cqt.sim.model and cqt.sim.market without sockets: determinism, magnitudes, ids, REST backfill."""
from __future__ import annotations

import json
import math
import statistics

import pytest

from cqt.sim.market import Market
from cqt.sim.model import MarketModel
from cqt.sim.venues.binance.frames import AGG, FORCE, MARK1
from cqt.sim.venues.upbit.frames import STREAMS as UPBIT_STREAMS, jdbl

ORIGIN = 1_767_225_600_000          # 2026-01-01T00:00:00Z


def frames(m: Market, venue: str, a: int, b: int, chunk_ms: int):
    out = []
    t = a
    while t < b:
        out.extend(m.ws_frames(venue, t, min(b, t + chunk_ms)))
        t += chunk_ms
    return out


@pytest.mark.timeout(60)
def test_same_seed_and_origin_same_frames_whatever_the_chunking():
    a = Market(MarketModel(42, ORIGIN, history_s=0))
    b = Market(MarketModel(42, ORIGIN, history_s=0, cache_blocks=8))
    for venue in ("binance", "upbit"):
        x = frames(a, venue, ORIGIN, ORIGIN + 120_000, 120_000)
        y = frames(b, venue, ORIGIN, ORIGIN + 120_000, 777)
        assert x == y and len(x) > 500
    # random access into the past (cache evicted: regenerated from a checkpoint)
    again = list(b.ws_frames("binance", ORIGIN + 5_000, ORIGIN + 9_000))
    assert again == [f for f in frames(a, "binance", ORIGIN + 5_000, ORIGIN + 9_000, 4000)]
    other = Market(MarketModel(43, ORIGIN, history_s=0))
    assert frames(other, "binance", ORIGIN, ORIGIN + 10_000, 10_000) != frames(a, "binance", ORIGIN, ORIGIN + 10_000,
                                                                               10_000)


@pytest.mark.timeout(60)
def test_magnitudes_rates_and_ids():
    m = Market(MarketModel(5, ORIGIN, history_s=0))
    H = 2400
    agg_ids, mark_secs, force_secs = [], [], []
    bn_last = usdt = None
    closes, prem, sids, sid_order = {}, [], set(), []
    n = {s: 0 for s in UPBIT_STREAMS}
    last_a = None
    for ts, s, raw in frames(m, "binance", ORIGIN, ORIGIN + H * 1000, 60_000):
        d = json.loads(raw)
        if s == AGG:
            agg_ids.append(d["a"])
            assert last_a is None or d["f"] > last_a[1]          # trade ids increase too
            last_a = (d["a"], d["l"])
            bn_last = float(d["p"])
            assert d["T"] <= d["E"]
        elif s == MARK1:
            mark_secs.append(ts // 1000)
            assert abs(float(d["r"])) < 0.001
        elif s == FORCE:
            force_secs.append(ts // 1000)
    for _ts, s, raw in frames(m, "upbit", ORIGIN, ORIGIN + H * 1000, 60_000):
        n[s] += 1
        if s.endswith("@trade"):
            d = json.loads(raw)
            if d["code"] == "KRW-USDT":
                usdt = d["trade_price"]
            else:
                closes[d["trade_timestamp"] // 1000] = d["trade_price"]
                assert d["sequential_id"] not in sids
                sids.add(d["sequential_id"])
                sid_order.append(d["sequential_id"])
                if usdt and bn_last:
                    prem.append(d["trade_price"] / (bn_last * usdt) - 1)
    assert agg_ids == list(range(agg_ids[0], agg_ids[0] + len(agg_ids)))   # +1 per event, no holes
    assert 10 <= len(agg_ids) / H <= 60                                        # tens per second
    assert mark_secs == list(range(ORIGIN // 1000, ORIGIN // 1000 + H))      # exactly every second
    assert len(force_secs) == len(set(force_secs)) and 0 < len(force_secs) < H / 10
    assert 60_000 < bn_last < 100_000 and 1380 <= usdt <= 1450
    assert 0.002 <= statistics.median(prem) <= 0.03
    assert 1.0 <= n["KRW-BTC@trade"] / H <= 6 and 0.2 <= n["KRW-USDT@trade"] / H <= 1.0
    assert n["KRW-BTC@orderbook"] / H >= 2 and n["KRW-BTC@ticker"] == n["KRW-BTC@trade"]
    assert sid_order != sorted(sid_order)                 # unique but not in trade order
    secs = sorted(closes)
    c, last = [], None
    for s in range(secs[0], secs[-1] + 1):
        last = closes.get(s, last)
        c.append(last)
    r = [math.log(c[i] / c[i - 1]) for i in range(1, len(c))]
    assert 1e-4 <= statistics.pstdev(r) <= 3.5e-4
    labels = [math.log(c[i + 120] / c[i]) for i in range(len(c) - 120)]
    moved = sum(abs(x) > 0.001 for x in labels) / len(labels)
    assert 0.2 < moved < 0.95                              # a 120 s / 0.001 label is not all NONE


@pytest.mark.timeout(60)
def test_generation_is_memory_bounded():
    # Speed is measured where timing belongs: `bin/cqt synth --hours 24` in the README's benchmarks.
    m = Market(MarketModel(9, ORIGIN, history_s=0, cache_blocks=300))
    count = 0
    for c in range(0, 1800, 60):
        a = ORIGIN + c * 1000
        for venue in ("binance", "upbit"):
            count += sum(1 for _ in m.ws_frames(venue, a, a + 60_000))
    assert count > 30_000
    assert len(m.model._cache) <= 300


def test_java_double_formatting():
    assert jdbl(3794000.0) == "3794000.0"
    assert jdbl(116539000.0) == "1.16539E8"
    assert jdbl(0.0005) == "5.0E-4"
    assert jdbl(0.00833522) == "0.00833522"
    assert jdbl(1343.0) == "1343.0"
    assert float(jdbl(127891000.0)) == 127891000.0


@pytest.mark.timeout(60)
def test_rest_backfill_returns_the_ws_trades():
    m = Market(MarketModel(3, ORIGIN, history_s=600))
    now = ORIGIN
    ws = [json.loads(r) for _, s, r in m.ws_frames("binance", ORIGIN - 120_000, ORIGIN - 60_000, [AGG])][:1000]
    first = ws[0]["a"]
    st, body = m.rest("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "fromId": first, "limit": 1000}, now)
    got = json.loads(body)
    assert st == 200 and [g["a"] for g in got[: len(ws)]] == [w["a"] for w in ws]
    for g, w in zip(got, ws):
        assert (g["p"], g["q"], g["f"], g["l"], g["T"], g["m"]) == (w["p"], w["q"], w["f"], w["l"], w["T"], w["m"])
    st, body = m.rest("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "startTime": ws[0]["T"],
                                             "endTime": ws[-1]["T"], "limit": 1000}, now)
    assert [g["a"] for g in json.loads(body)] == [w["a"] for w in ws]
    # only what already happened
    st, body = m.rest("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "limit": 5}, now)
    assert all(r["T"] < now for r in json.loads(body))
    # errors in the real shape
    assert m.rest("/fapi/v1/aggTrades", {"symbol": "ETHBTC"}, now) == (400, '{"code":-1121,"msg":"Invalid symbol."}')
    st, body = m.rest("/fapi/v1/aggTrades", {}, now)
    assert st == 400 and json.loads(body)["code"] == -1102
    st, body = m.rest("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "startTime": now - 7_200_000, "endTime": now}, now)
    assert json.loads(body)["code"] == -1127
    st, body = m.rest("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "fromId": "abc"}, now)
    assert json.loads(body)["code"] == -1100
    # Upbit: page back with the cursor; exactly the trades the WebSocket sent, newest first
    ws_up = [json.loads(r) for _, s, r in m.ws_frames("upbit", ORIGIN - 300_000, ORIGIN, ["KRW-BTC@trade"])]
    seen, cursor = [], None
    while True:
        p = {"market": "KRW-BTC", "count": 200}
        if cursor:
            p["cursor"] = cursor
        st, body = m.rest("/v1/trades/ticks", p, now)
        page = json.loads(body)
        assert st == 200
        if not page:
            break
        assert [x["timestamp"] for x in page] == sorted((x["timestamp"] for x in page), reverse=True)
        seen.extend(page)
        cursor = page[-1]["sequential_id"]
        if page[-1]["timestamp"] < ORIGIN - 300_000:
            break
    got_sids = {x["sequential_id"] for x in seen if x["timestamp"] >= ORIGIN - 300_000}
    assert got_sids == {w["sequential_id"] for w in ws_up if w["trade_timestamp"] >= ORIGIN - 300_000}
    st, body = m.rest("/v1/trades/ticks", {"market": "KRW-NOPE"}, now)
    assert st == 404 and json.loads(body) == {"error": {"name": 404, "message": "Code not found"}}


def test_coinglass_newest_bar_forms_and_closes():
    m = Market(MarketModel(3, ORIGIN, history_s=3600))
    p = {"symbol": "BTC", "interval": "1m", "limit": "3"}
    path = "/api/futures/open-interest/aggregated-history"
    a = json.loads(m.rest(path, p, ORIGIN + 10_000)[1])["data"]
    b = json.loads(m.rest(path, p, ORIGIN + 50_000)[1])["data"]
    c = json.loads(m.rest(path, p, ORIGIN + 70_000)[1])["data"]
    assert [r["time"] for r in a] == [ORIGIN - 120_000, ORIGIN - 60_000, ORIGIN]   # open times
    assert a[:2] == b[:2]                        # closed bars are final
    assert a[2] != b[2]                          # the newest is still forming
    assert c[1]["time"] == ORIGIN and c[1]["open"] == b[2]["open"]
    later = json.loads(m.rest(path, dict(p, limit="10"), ORIGIN + 200_000)[1])["data"]
    assert [r for r in later if r["time"] == ORIGIN] == [c[1]]     # once closed, it never changes
