"""cqt-sim's timing rules without sockets, on made-up clocks: replay pacing, flood rate,
Binance weights (429 Retry-After, then 418), Coinglass key, plan and per-minute limit,
Upbit REST per-second limit, Binance server pings / pong timeout / lifetime, Upbit idle
timeout. The same rules over real sockets (their wire shapes) are in test_sim_limits.py
and test_sim_replay.py; throughput is measured by tests/bench/sim_throughput.py."""
from __future__ import annotations

from types import SimpleNamespace

from cqt.sim.pump import REPLAY_BATCH, ReplayCursor
from cqt.sim.server import SimClock, SimConfig
from cqt.sim.venues.binance.flood import BATCH, FloodPacer
from cqt.sim.venues.binance.protocol import Keepalive, Protocol as Binance
from cqt.sim.venues.coinglass.protocol import Protocol as Coinglass
from cqt.sim.venues.upbit.protocol import Protocol as Upbit, idle_left

START = 1_767_225_600_000
MID_MINUTE = 1_767_225_630.0          # wall-clock seconds, 30 s into a minute


class FakeMono:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _sim(**cfg):
    return SimpleNamespace(cfg=SimConfig(**cfg))


# ------------------------------------------------------------------ replay and flood pacing
def _capture(seconds: int, per_s: int = 10) -> list:
    return [(START + i * 1000 // per_s, "binance", f"f{i}") for i in range(seconds * per_s)]


def test_replay_is_paced_by_the_capture_times_at_the_replay_speed():
    frames = _capture(4)                                # 4 s of capture
    mono = FakeMono()
    clock = SimClock(START, 4.0, paused=True, mono=mono)
    cur = ReplayCursor(frames)
    assert cur.take(clock.now_ms(), fast=False) == frames[:1]      # paused at the first frame
    clock.resume()
    mono.t += 0.5                                       # half a wall second at --speed 4: 2 s of capture
    got = cur.take(clock.now_ms(), fast=False)
    assert got == frames[1:21] and not cur.done         # paced, not dumped
    mono.t += 0.5
    assert cur.take(clock.now_ms(), fast=False) == frames[21:] and cur.done


def test_replay_speed_zero_sends_everything_at_once():
    frames = _capture(30, per_s=100)                    # 3 000 frames over 30 s
    cur = ReplayCursor(frames)
    got = []
    while not cur.done:
        batch = cur.take(START, fast=True)              # the clock does not move
        assert 0 < len(batch) <= REPLAY_BATCH
        got += batch
    assert got == frames


def test_flood_sends_up_to_n_per_second_in_batches():
    rate = 30_000
    pacer = FloodPacer(rate, start=0.0)
    assert pacer.due(0.0, 0) == 0
    assert pacer.due(0.01, 0) == 300
    assert pacer.due(0.5, 0) == BATCH                   # never more than a batch at once
    sent, t = 0, 0.0
    while t < 1.0:                                      # a sender that keeps up
        t += 0.001
        sent += pacer.due(t, sent)
    assert sent == rate                                 # N in a second, no more
    # a sender that fell behind by minutes does not try to catch up
    assert pacer.due(300.0, sent) == BATCH
    assert pacer.due(300.0, sent + BATCH) == 0          # it goes on from now at the rate
    assert pacer.due(300.01, sent + BATCH) == 0         # 300 more due, the batch is ahead of them
    assert pacer.due(300.2, sent + BATCH) == BATCH


# ------------------------------------------------------------------ REST limits
def test_binance_weight_limit_429_with_retry_after_then_418():
    bn = Binance(_sim(binance_weight_limit=100, binance_ban_seconds=2))
    p = {"symbol": "BTCUSDT", "limit": "1"}
    now = MID_MINUTE
    weights = []
    for _ in range(5):
        status, _body, h = bn.gate({}, "/fapi/v1/aggTrades", p, now, now)
        assert status is None
        weights.append(int(h["X-MBX-USED-WEIGHT-1m"]))
        now += 0.05
    assert weights == [20, 40, 60, 80, 100]
    status, body, h = bn.gate({}, "/fapi/v1/aggTrades", p, now, now)
    assert status == 429 and int(h["Retry-After"]) >= 1 and '"code":-1003' in body
    statuses = []
    for _ in range(3):
        now += 0.05
        statuses.append(bn.gate({}, "/fapi/v1/aggTrades", p, now, now)[0])
    assert statuses[-1] == 418                          # kept going after the 429
    status, body, h = bn.gate({}, "/fapi/v1/time", {}, now + 0.1, now + 0.1)
    assert status == 418 and 1 <= int(h["Retry-After"]) <= 2 and "banned until" in body
    # the ban ends
    later = now + 60.0
    assert bn.gate({}, "/fapi/v1/time", {}, later, later)[0] is None


def test_binance_weight_window_is_the_minute():
    bn = Binance(_sim(binance_weight_limit=100))
    p = {"symbol": "BTCUSDT"}
    t = MID_MINUTE + 29.5                               # half a second before the minute turns
    for _ in range(5):
        assert bn.gate({}, "/fapi/v1/aggTrades", p, t, t)[0] is None
    status, _b, h = bn.gate({}, "/fapi/v1/aggTrades", p, t, t)
    assert status == 429 and h["Retry-After"] == "1"    # at least 1, up to the minute's end
    t += 1.0                                            # a new minute: the weight starts over
    status, _b, h = bn.gate({}, "/fapi/v1/aggTrades", p, t, t)
    assert status is None and h["X-MBX-USED-WEIGHT-1m"] == "20"


def test_coinglass_key_plan_and_per_minute_limit():
    cg = Coinglass(_sim(coinglass_limit=5, coinglass_plan="hobbyist", coinglass_key="sekrit"))
    path = "/api/futures/open-interest/aggregated-history"
    now = MID_MINUTE
    status, body, _h = cg.gate({"CG-API-KEY": "other"}, path, {"symbol": "BTC", "interval": "4h"}, now, now)
    assert status == 401 and '"code":"401"' in body
    ok = {"CG-API-KEY": "sekrit"}
    status, body, _h = cg.gate(ok, path, {"symbol": "BTC", "interval": "1h"}, now, now)
    assert status == 401 and "Hobbyist" in body                          # interval below the plan
    status, _body, h = cg.gate(ok, path, {"symbol": "BTC", "interval": "4h", "limit": "2"}, now, now)
    assert status is None and h["API-KEY-MAX-LIMIT"] == "5"
    for _ in range(3):
        assert cg.gate(ok, path, {"symbol": "BTC", "interval": "1d"}, now, now)[0] is None
    status, body, h = cg.gate(ok, path, {"symbol": "BTC", "interval": "1d"}, now, now)
    assert status == 429 and '"code":"429"' in body and int(h["Retry-After"]) >= 1
    status, _body, _h = cg.gate(ok, path, {"symbol": "BTC", "interval": "1d"}, now + 60, now + 60)
    assert status is None                                                # the next minute


def test_upbit_rest_ten_per_second():
    up = Upbit(_sim())
    now = MID_MINUTE + 0.1
    rs = [up.gate({}, "/v1/trades/ticks", {"market": "KRW-BTC"}, now + i * 0.01, 0.0) for i in range(12)]
    assert [r[0] for r in rs] == [None] * 10 + [429, 429]
    assert rs[0][2]["Remaining-Req"].startswith("group=trade; min=600; sec=")
    assert '"name":429' in rs[-1][1]
    assert up.gate({}, "/v1/trades/ticks", {}, now + 1.0, 0.0)[0] is None     # the next second


def test_upbit_origin_requests_one_per_interval():
    up = Upbit(_sim(upbit_origin_interval=10.0))
    hdr = {"Origin": "https://example.org"}
    assert up.gate(hdr, "/v1/ticker", {}, MID_MINUTE, 100.0)[0] is None
    assert up.gate(hdr, "/v1/ticker", {}, MID_MINUTE, 105.0)[0] == 429
    assert up.gate(hdr, "/v1/ticker", {}, MID_MINUTE, 110.5)[0] is None


# ------------------------------------------------------------------ connection rules
def _run_keepalive(answer_pongs: bool, until: float = 10.0):
    ka = Keepalive(start=0.0, opened=0.0, ping_interval=0.4, pong_timeout=1.2, lifetime=4.0)
    pings, waiting, t = [], None, 0.0
    while t < until:
        action = ka.due(t, waiting)
        if action in ("lifetime", "pong timeout"):
            return pings, action, t
        if action == "ping":
            pings.append(t)
            if waiting is None:
                waiting = t
            ka.pinged(t)
            if answer_pongs:
                waiting = None                          # the pong comes back at once
        t = round(t + 0.01, 2)
    return pings, None, t


def test_binance_pings_pong_timeout_and_lifetime():
    pings, end, t = _run_keepalive(answer_pongs=True)
    assert len([p for p in pings if p <= 2.5]) >= 3                      # every 0.4 s
    assert all(0.39 <= b - a <= 0.41 for a, b in zip(pings, pings[1:]))
    assert end == "lifetime" and 3.5 <= t <= 4.01                          # answered every ping: lives 4 s
    pings, end, t = _run_keepalive(answer_pongs=False)
    assert end == "pong timeout" and abs(t - (0.4 + 1.2)) < 0.02        # never answered: cut after 1.2 s


def test_upbit_idle_connection_is_closed():
    assert idle_left(now=101.0, last_rx=100.0, last_tx=100.0, idle_s=1.5) > 0
    assert idle_left(now=101.5, last_rx=100.0, last_tx=100.0, idle_s=1.5) <= 0     # idle: closed
    # a subscribed socket with data flowing is not idle
    assert idle_left(now=101.5, last_rx=100.0, last_tx=101.4, idle_s=1.5) > 0
