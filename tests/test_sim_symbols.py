"""cqt-sim serving several assets (`--symbols`): listings, per-symbol streams and REST,
unknown-symbol errors in each venue's shape, realistic and correlated prices, BTC unchanged
by the other assets, bounded memory, a fault on one symbol's stream and the flood spread."""
from __future__ import annotations

import json
import math
import urllib.error
import urllib.request

import pytest
import websocket

from cqt.sim.market import Market
from cqt.sim.model import MarketModel
from simproc import recv_frames, start_sim, ws_connect

ORIGIN = 1_767_225_600_000          # 2026-01-01T00:00:00Z
ASSETS = ("BTC", "ETH", "SOL")


def _market(assets=ASSETS, seed=5, history_s=0) -> Market:
    return Market(MarketModel(seed, ORIGIN, history_s=history_s, assets=assets))


def _json(m: Market, path: str, params: dict, now: int = ORIGIN + 120_000):
    status, body = m.rest(path, params, now)
    return status, json.loads(body)


def test_every_venue_lists_and_answers_each_symbol_and_refuses_an_unknown_one():
    m = _market(history_s=600)
    _, info = _json(m, "/fapi/v1/exchangeInfo", {})
    perps = {s["symbol"]: s for s in info["symbols"] if s["contractType"] == "PERPETUAL"}
    assert set(perps) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    assert all(s["status"] == "TRADING" and s["quoteAsset"] == "USDT" for s in perps.values())
    assert perps["ETHUSDT"]["baseAsset"] == "ETH" and perps["ETHUSDT"]["filters"][0]["tickSize"] == "0.01"
    assert any(s["contractType"] == "CURRENT_QUARTER" for s in info["symbols"])      # not every listing trades
    for sym in ("ETHUSDT", "SOLUSDT"):
        status, rows = _json(m, "/fapi/v1/aggTrades", {"symbol": sym, "limit": 5})
        assert status == 200 and len(rows) == 5 and all(r["a"] > 0 for r in rows)
        _, prem = _json(m, "/fapi/v1/premiumIndex", {"symbol": sym})
        assert prem["symbol"] == sym
        _, oi = _json(m, "/fapi/v1/openInterest", {"symbol": sym})
        assert oi["symbol"] == sym and float(oi["openInterest"]) > 0
        _, ratios = _json(m, "/futures/data/globalLongShortAccountRatio", {"symbol": sym, "period": "5m"})
        assert ratios and {r["symbol"] for r in ratios} == {sym}
    _, every = _json(m, "/fapi/v1/premiumIndex", {})
    assert [r["symbol"] for r in every] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    for path in ("/fapi/v1/aggTrades", "/fapi/v1/openInterest", "/fapi/v1/premiumIndex",
                 "/futures/data/openInterestHist"):
        assert _json(m, path, {"symbol": "XYZUSDT", "period": "5m"}) == (400, {"code": -1121, "msg": "Invalid symbol."})

    _, markets = _json(m, "/v1/market/all", {})
    assert [r["market"] for r in markets] == ["KRW-BTC", "KRW-ETH", "KRW-SOL", "KRW-USDT"]
    status, ticks = _json(m, "/v1/trades/ticks", {"market": "KRW-SOL", "count": 50})
    assert status == 200 and ticks and {t["market"] for t in ticks} == {"KRW-SOL"}
    assert _json(m, "/v1/trades/ticks", {"market": "KRW-XYZ"}) == (404, {"error": {"name": 404,
                                                                                   "message": "Code not found"}})
    assert _json(m, "/v1/ticker", {"markets": "KRW-ETH,KRW-XYZ"})[0] == 404

    for coin in ("ETH", "SOL"):
        _, agg = _json(m, "/api/futures/open-interest/aggregated-history", {"symbol": coin, "interval": "1m"})
        _, pair = _json(m, "/api/futures/funding-rate/history", {"exchange": "Binance", "symbol": f"{coin}USDT",
                                                                 "interval": "1m"})
        assert agg["data"] and pair["data"]
    _, none = _json(m, "/api/futures/open-interest/aggregated-history", {"symbol": "XYZ", "interval": "1m"})
    assert none["data"] == []


def test_each_asset_has_its_price_level_and_activity_and_moves_with_btc_but_not_exactly():
    m = _market(("BTC", "ETH", "SOL", "QQQ"))
    legs = {a: m.model.legs[a] for a in ("BTC", "ETH", "SOL", "QQQ")}
    end = ORIGIN + 3_600_000
    prices = {a: [leg.price_at(t) for t in range(ORIGIN + 10_000, end + 1, 10_000)] for a, leg in legs.items()}
    assert 50_000 < prices["BTC"][-1] < 110_000
    assert 2_000 < prices["ETH"][-1] < 5_000 and 100 < prices["SOL"][-1] < 400
    assert 0 < prices["QQQ"][-1] and legs["QQQ"].spec == _market(("QQQ",)).model.legs["QQQ"].spec   # from seed + name

    def returns(xs):
        return [math.log(b / a) for a, b in zip(xs, xs[1:])]

    def corr(a, b):
        ma, mb = sum(a) / len(a), sum(b) / len(b)
        cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
        return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))
    r_btc = returns(prices["BTC"])
    for a in ("ETH", "SOL", "QQQ"):
        c = corr(r_btc, returns(prices[a]))
        assert 0.3 < c < 0.97, (a, c)
    assert corr(returns(prices["ETH"]), returns(prices["SOL"])) > 0.2

    counts: dict[str, int] = {}
    last: dict[str, dict] = {}
    for t in range(ORIGIN, ORIGIN + 600_000, 60_000):
        for venue in ("binance", "upbit"):
            for _ts, stream, raw in m.ws_frames(venue, t, t + 60_000):
                counts[stream] = counts.get(stream, 0) + 1
                last[stream] = json.loads(raw)
    for a in ("eth", "sol", "qqq"):
        assert counts[f"{a}usdt@markPrice@1s"] == 600
        assert 0 < counts[f"{a}usdt@aggTrade"] < counts["btcusdt@aggTrade"]        # its own, lower activity
        assert counts[f"KRW-{a.upper()}@trade"] > 0 and counts[f"KRW-{a.upper()}@orderbook"] > 0
    # Upbit follows the futures: KRW-ETH ~ ETHUSDT x KRW-USDT x (1 + kimchi premium)
    krw = last["KRW-ETH@trade"]["trade_price"] / (float(last["ethusdt@aggTrade"]["p"])
                                                   * last["KRW-USDT@trade"]["trade_price"])
    assert 0.99 < krw < 1.05, krw
    assert last["solusdt@aggTrade"]["s"] == "SOLUSDT" and "." not in last["solusdt@aggTrade"]["q"]   # lot 1 SOL


def test_btc_is_the_same_with_other_assets_and_every_asset_is_deterministic():
    alone, many, again = _market(("BTC",)), _market(), _market()
    span = (ORIGIN, ORIGIN + 120_000)
    btc = [f for f in alone.ws_frames("binance", *span)]
    assert btc == [f for f in many.ws_frames("binance", *span) if f[1].startswith("btcusdt@")]
    up = [f for f in alone.ws_frames("upbit", *span)]
    assert up == [f for f in many.ws_frames("upbit", *span) if f[1].split("@")[0] in ("KRW-BTC", "KRW-USDT")]
    assert list(many.ws_frames("binance", *span)) == list(again.ws_frames("binance", *span))
    assert list(many.ws_frames("upbit", *span)) == list(again.ws_frames("upbit", *span))
    other = Market(MarketModel(6, ORIGIN, history_s=0, assets=ASSETS))
    eth = [f[2] for f in many.ws_frames("binance", *span) if f[1] == "ethusdt@aggTrade"]
    assert eth != [f[2] for f in other.ws_frames("binance", *span) if f[1] == "ethusdt@aggTrade"]


def test_memory_stays_bounded_with_many_symbols():
    assets = ("BTC", "ETH", "SOL", "BNB", "XRP", "DOGE", "ADA", "AVAX", "LINK", "DOT", "LTC", "TRX")
    m = _market(assets)
    for t in range(ORIGIN, ORIGIN + 180_000, 30_000):
        for venue in ("binance", "upbit"):
            for _ in m.ws_frames(venue, t, t + 30_000):
                pass
    assert m.model._cache_max == 60 and len(m.model._cache) <= 60
    # an evicted block, regenerated from its checkpoint, is the one first served
    fresh = _market(assets)
    k = m.model.k0 + 5
    assert k not in m.model._cache
    assert m.block_frames(m.model.block(k), "binance") == fresh.block_frames(fresh.model.block(k), "binance")


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.timeout(60)
def test_server_streams_each_symbol_and_a_gap_hits_one_symbol_only(tmp_path):
    with start_sim(tmp_path, "--seed", "9", "--history", "60", "--speed", "4", "--symbols", "btc,ETH,SOL") as sim:
        base = sim.urls["CQT_BINANCE_REST_URL"]
        status, info = _get(base + "/fapi/v1/exchangeInfo")
        assert {s["symbol"] for s in info["symbols"] if s["contractType"] == "PERPETUAL"} == {
            "BTCUSDT", "ETHUSDT", "SOLUSDT"}
        assert _get(base + "/fapi/v1/premiumIndex?symbol=DOGEUSDT") == (400, {"code": -1121, "msg": "Invalid symbol."})
        assert _get(base + "/v1/trades/ticks?market=KRW-DOGE")[0] == 404

        streams = [f"{s}usdt@{k}" for s in ("btc", "eth", "sol") for k in ("aggTrade", "markPrice@1s", "forceOrder")]
        ws = ws_connect(sim.urls["CQT_BINANCE_WS_URL"] + "/market/stream?streams=" + "/".join(streams))
        up = ws_connect(sim.urls["CQT_UPBIT_WS_URL"])
        up.send(json.dumps([{"ticket": "t"}, {"type": "trade", "codes": ["KRW-ETH", "KRW-SOL", "KRW-USDT"]},
                            {"format": "DEFAULT"}]))
        code = sim.fault("gap", ids=20, symbol="ETHUSDT", source="binance")
        assert code["fault"]["symbol"] == "ETHUSDT"
        got = recv_frames(ws, seconds=4)
        up_got = recv_frames(up, seconds=2)
        ws.close()
        up.close()
        seen = {json.loads(d)["stream"] for _, d in got}
        assert {f"{s}usdt@{k}" for s in ("btc", "eth", "sol") for k in ("aggTrade", "markPrice@1s")} <= seen
        assert {json.loads(d)["code"] for _, d in up_got} >= {"KRW-ETH", "KRW-SOL"}

        stats = sim.stats()["streams"]
        eth, btc = stats["binance:ethusdt@aggTrade"], stats["binance:btcusdt@aggTrade"]
        skipped = [i for a, b in eth["skipped"] for i in range(a, b + 1)]
        assert len(skipped) == 20 and not btc["skipped"] and not stats["binance:solusdt@aggTrade"]["skipped"]
        sent = {i for a, b in eth["ranges"] for i in range(a, b + 1)}
        assert not sent & set(skipped) and max(sent) > max(skipped)          # the stream went on after the gap
        only = sim.stats(stream="solusdt@aggTrade")["streams"]
        assert list(only) == ["binance:solusdt@aggTrade"] and only["binance:solusdt@aggTrade"]["ranges"]
        assert not any(sim.stats()["faults"]["pending"]["gaps"].values())
        # a symbol not served, or a fault that cannot name one, is refused naming the field
        control = sim.urls["control"]
        status, ans = _post(control + "/fault", {"kind": "gap", "symbol": "DOGE"})
        assert status == 400 and ans["field"] == "symbol" and "not served" in ans["error"]
        status, ans = _post(control + "/fault", {"kind": "refuse", "symbol": "ETH"})
        assert status == 400 and ans["field"] == "symbol"


@pytest.mark.timeout(60)
def test_stall_and_drop_of_one_symbol(tmp_path):
    with start_sim(tmp_path, "--seed", "9", "--history", "30", "--speed", "4", "--symbols", "BTC,ETH") as sim:
        url = sim.urls["CQT_BINANCE_WS_URL"]
        both = ws_connect(url + "/market/stream?streams=btcusdt@markPrice@1s/ethusdt@markPrice@1s")
        btc_only = ws_connect(url + "/market/ws/btcusdt@markPrice@1s")
        recv_frames(both, 2, seconds=3)
        sim.fault("stall", seconds=30, symbol="ETH", source="binance")
        recv_frames(both, seconds=0.6)                      # what was already queued
        got = recv_frames(both, seconds=3)
        assert got and {json.loads(d)["stream"] for _, d in got} == {"btcusdt@markPrice@1s"}
        assert sim.stats()["streams"]["binance:ethusdt@markPrice@1s"]["stalled"] > 0
        sim.fault("drop", symbol="ETHUSDT")                  # the connection carrying ETH, not the BTC-only one
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            recv_frames(both, seconds=3)
        assert recv_frames(btc_only, 2, seconds=3)
        conns = sim.stats()["connections"]
        assert [c["streams"] for c in conns if c["venue"] == "binance"] == [["btcusdt@markPrice@1s"]]
        btc_only.close()
        both.close()


@pytest.mark.timeout(60)
def test_flood_is_spread_over_the_symbols_with_contiguous_ids_each(tmp_path):
    with start_sim(tmp_path, "--flood", "6000", "--history", "30", "--symbols", "BTC,ETH,SOL") as sim:
        streams = "/".join(f"{a}usdt@aggTrade" for a in ("btc", "eth", "sol"))
        ws = ws_connect(sim.urls["CQT_BINANCE_WS_URL"] + "/market/stream?streams=" + streams)
        got = recv_frames(ws, 3000, seconds=20)
        ws.close()
        one = ws_connect(sim.urls["CQT_BINANCE_WS_URL"] + "/market/ws/ethusdt@aggTrade")
        lone = recv_frames(one, 2000, seconds=10)
        one.close()
        stats = sim.stats()["streams"]
    ids: dict[str, list[int]] = {}
    for _, d in got:
        f = json.loads(d)
        ids.setdefault(f["stream"], []).append(f["data"]["a"])
        assert f["data"]["s"] == f["stream"].split("@")[0].upper()
    assert len(got) == 3000 and set(ids) == {"btcusdt@aggTrade", "ethusdt@aggTrade", "solusdt@aggTrade"}
    assert max(map(len, ids.values())) - min(map(len, ids.values())) <= 1             # round robin
    for s, xs in ids.items():
        assert xs == list(range(xs[0], xs[0] + len(xs))), s
    assert len({xs[0] for xs in ids.values()}) == 3
    # a connection with one of the three streams gets that stream alone, with its own ids
    lone_ids = [json.loads(d)["a"] for _, d in lone]
    assert len(lone_ids) == 2000 and lone_ids == list(range(lone_ids[0], lone_ids[0] + 2000))
    assert stats["binance:flood:ethusdt@aggTrade"]["frames"] >= 3000
