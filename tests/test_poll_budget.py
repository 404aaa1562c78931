"""Request budgets for many symbols (cqt.poll.budget and both pollers' plans): the number of
symbols the defaults serve before intervals stretch (the figures the README states), the
steady state never above 80 % of any limit for any number of symbols, even stretching, the
one log line, and the jobs of different symbols spread in time. Pure schedule maths with
injected clocks; nothing sleeps."""
from __future__ import annotations

import bisect
import logging
import math
import threading
from collections import Counter

import pytest

from cqt.config import ConfigError, load_settings
from cqt.poll import PollError, PollJob, PollLoop
from cqt.poll.budget import Budget, JobKind, max_symbols, plan_intervals, spread_phase
from cqt.venues.binance.poll import RATIO_JOBS, BinanceRestConfig, BinanceRestPoller
from cqt.venues.coinglass import call_endpoint, markets, split_call_endpoint
from cqt.venues.coinglass.poll import CoinglassConfig, CoinglassPoller
from pollclock import VirtualTime, make_loop, run_for

KEY = "cgkey-REAL-1234567890abcdef"
WALL_MS = 1_763_942_412_345          # any wall-clock instant; the schedule only needs one


def settings(**env):
    return load_settings({"CQT_ENV_FILE": "/dev/null", **env})


def assets(n: int) -> str:
    return ",".join(f"C{i:03d}" for i in range(n))


def coinglass_settings(n: int, **env):
    return settings(CQT_SYMBOLS=assets(n), COINGLASS_ENABLED="true", COINGLASS_API_KEY=KEY, **env)


class StoppedService:
    """What PollLoop.run needs of a Service; asks to stop as soon as the loop is ready, so
    run() computes the first slots and start times and returns without starting a job."""

    def __init__(self):
        self.stopping = threading.Event()
        self.stop_reason = None

    def ready(self, status):
        self.stopping.set()

    def alive(self):
        pass

    def set_state(self, state, status=None):
        pass


# ---------------------------------------------------------------------------- the README figures
def test_binance_defaults_serve_36_symbols_before_intervals_stretch():
    cfg = BinanceRestConfig.from_settings(settings())
    kinds, budgets = cfg.kinds(), cfg.budgets()
    # per symbol: /futures/data 4 kinds x 300/60 = 20 per 5 min of 80 % x 900 = 720 -> 36;
    # weight 6 (open interest) + 1 (premium) + 0.1 (funding) = 7.1 per min of 1 920 -> 270;
    # fundingRate 0.5 per 5 min of 360 -> 720
    assert max_symbols(kinds, budgets) == 36
    assert [max_symbols(kinds, [b]) for b in budgets] == [270, 36, 720]
    assert plan_intervals(kinds, budgets, 36).stretched == {}
    stretched = plan_intervals(kinds, budgets, 37).stretched
    assert stretched == {kind: (60.0, 61.67) for kind in RATIO_JOBS}      # 60 x 37/36, rounded up


@pytest.mark.parametrize("plan, coins", [(None, 6), ("startup", 16), ("standard", 60), ("professional", 240)])
def test_coinglass_defaults_serve_so_many_coins_before_intervals_stretch(plan, coins):
    # 4 endpoints every 60 s = 4 requests per minute per coin, of 80 % of the plan's rate
    # (no plan: 30 per minute, Hobbyist's): 24 / 4 = 6, Startup 64 / 4 = 16, Standard 240 / 4,
    # Professional 960 / 4
    extra = {"CQT_COINGLASS_PLAN": plan, "CQT_COINGLASS_INTERVAL": "4h"} if plan else {}
    cfg = CoinglassConfig.from_settings(coinglass_settings(1, **extra))
    assert max_symbols(cfg.kinds(), cfg.budgets()) == coins
    assert plan_intervals(cfg.kinds(), cfg.budgets(), coins).stretched == {}
    stretched = plan_intervals(cfg.kinds(), cfg.budgets(), coins + 1).stretched
    assert set(stretched) == {"open_interest", "funding", "liquidations", "long_short"}


# ---------------------------------------------------------------------------- the maths
@pytest.mark.parametrize("env", [{}, {"CQT_POLL_OI_S": "1", "CQT_POLL_PREMIUM_S": "1"},
                                 {"CQT_POLL_RATIOS_S": "2", "CQT_POLL_FUNDING_S": "1"},
                                 {"CQT_BINANCE_DATA_LIMIT": "50", "CQT_BINANCE_FUNDING_LIMIT": "5"}])
def test_no_number_of_symbols_plans_above_80_percent_of_any_limit(env):
    cfg = BinanceRestConfig.from_settings(settings(**env))
    kinds, budgets = cfg.kinds(), cfg.budgets()
    for n in range(1, 201):
        plan = plan_intervals(kinds, budgets, n)
        for b in budgets:
            assert plan.usage[b.name] <= 0.8 * b.capacity * (1 + 1e-12), (n, b.name, plan.usage)
        for k in kinds:
            assert plan.intervals[k.name] >= k.interval_s
        # a budget over its share stretches every kind costing it by the same factor (a kind
        # costing several budgets: by the largest of their factors)
        factor = {b.name: max(1.0, plan.demand[b.name] / b.allowed) for b in budgets}
        for k in kinds:
            expected = k.interval_s * max(factor[b] for b in k.costs)
            assert plan.intervals[k.name] == pytest.approx(expected, abs=0.011), (n, k.name)


def test_a_kind_costing_two_budgets_takes_the_larger_stretch():
    kinds = [JobKind("a", 10, {"w": 1}), JobKind("b", 10, {"w": 1, "f": 1}), JobKind("c", 10, {"f": 1})]
    budgets = [Budget("w", 100, 60), Budget("f", 1000, 60)]
    plan = plan_intervals(kinds, budgets, 10)          # w: 10 x 12 / 80 = 1.5 x; f: 120 / 800, fits
    assert plan.intervals == {"a": 15.0, "b": 15.0, "c": 10.0}
    assert plan.usage["w"] == pytest.approx(80.0) and plan.usage["f"] < 800
    with pytest.raises(ValueError, match="unknown budget"):
        plan_intervals([JobKind("x", 1, {"nope": 1})], budgets, 1)


def test_spread_phase_places_symbols_evenly():
    assert [spread_phase(5.0, i, 4, 60.0) for i in range(4)] == [5.0, 20.0, 35.0, 50.0]
    assert spread_phase(50.0, 1, 2, 60.0) == 20.0           # wraps into the interval
    assert spread_phase(3.0, 0, 1, 60.0) == 3.0


# ---------------------------------------------------------------------------- config refusals
def test_an_interval_that_breaks_a_limit_for_one_symbol_is_refused():
    with pytest.raises(ConfigError, match=r"CQT_POLL_RATIOS_S: 1 s means 1200 /futures/data requests per 5 min; "
                                          r"keep it under 80 % of 900 \(>= 2 s\)"):
        BinanceRestConfig.from_settings(settings(CQT_POLL_RATIOS_S="1"))
    with pytest.raises(ConfigError, match="CQT_POLL_FUNDING_S"):
        BinanceRestConfig.from_settings(settings(CQT_POLL_FUNDING_S="1", CQT_BINANCE_FUNDING_LIMIT="5"))
    # the same interval for 50 symbols is not refused: it is stretched
    cfg = BinanceRestConfig.from_settings(settings(CQT_SYMBOLS=assets(50), CQT_POLL_RATIOS_S="2"))
    assert cfg.plan().intervals["oi_hist"] == pytest.approx(2 * 50 * 4 * 150 / 720, abs=0.011)


def test_coinglass_symbol_overrides_the_coin_of_one_asset_only():
    assert markets(settings(CQT_COINGLASS_SYMBOL="xbt")) == (("XBT", "BTCUSDT"),)
    assert markets(settings(CQT_SYMBOLS="BTC,ETH")) == (("BTC", "BTCUSDT"), ("ETH", "ETHUSDT"))
    with pytest.raises(ConfigError, match="CQT_COINGLASS_SYMBOL: 'XBT' applies only when CQT_SYMBOLS names one"):
        markets(settings(CQT_SYMBOLS="BTC,ETH", CQT_COINGLASS_SYMBOL="XBT"))
    with pytest.raises(ConfigError, match="CQT_COINGLASS_SYMBOL"):
        CoinglassConfig.from_settings(coinglass_settings(2, CQT_COINGLASS_SYMBOL="XBT"))


def test_call_status_endpoint_names_the_coin():
    path = "/api/futures/funding-rate/history"
    assert call_endpoint(path, "ETH") == path + "?coin=ETH"
    assert split_call_endpoint(path + "?coin=ETH") == (path, "ETH")
    assert split_call_endpoint(path) == (path, None)


# ---------------------------------------------------------------------------- the one log line
def _binance_poller(n, **env):
    cfg = BinanceRestConfig.from_settings(settings(CQT_SYMBOLS=assets(n), **env))
    poller = BinanceRestPoller(StoppedService(), cfg, client=None, clock=lambda: WALL_MS, mono=lambda: 1000.0)
    poller.load_resume_points = lambda: None            # no database: only the start is looked at
    return poller


def _warnings(caplog, name):
    return [r for r in caplog.records if r.name == name and r.levelno >= logging.WARNING]


def test_binance_logs_one_line_when_intervals_stretch(caplog):
    with caplog.at_level(logging.INFO):
        assert _binance_poller(36).run() == 0
    assert _warnings(caplog, "cqt.poll.binance") == []
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert _binance_poller(40).run() == 0
    lines = [r.getMessage() for r in _warnings(caplog, "cqt.poll.binance")]
    assert lines == ["40 symbols need more than 80 % of the request limits (futures_data 800 > 720 of 900 per "
                     "window): intervals stretched: oi_hist/global_ls/top_ls/taker 60 s -> 66.67 s"]


def test_coinglass_logs_one_line_when_intervals_stretch(caplog):
    cfg = CoinglassConfig.from_settings(coinglass_settings(3, CQT_POLL_COINGLASS_S="2",
                                                           CQT_COINGLASS_RATE_PER_MIN="300"))
    poller = CoinglassPoller(StoppedService(), cfg, client=None, clock=lambda: WALL_MS, mono=lambda: 1000.0)
    poller.load_resume_points = lambda: None
    with caplog.at_level(logging.INFO):
        assert poller.run() == 0
    lines = [r.getMessage() for r in _warnings(caplog, "cqt.poll.coinglass")]
    assert lines == ["3 coins need more than 80 % of the request limits (coinglass_per_minute 360 > 240 of 300 "
                     "per window): intervals stretched: open_interest/funding/liquidations/long_short 2 s -> 3 s"]
    assert {j.spec.interval_s for j in poller.loop.jobs} == {3.0}


# ---------------------------------------------------------------------------- spread in time
def _slots(loop: PollLoop, horizon_s: float) -> list[tuple[float, str]]:
    """Every slot of every job in [0, horizon) from the loop's own schedule maths."""
    out = []
    for job in loop.jobs:
        job.slot = loop.first_slot(job, 0.0, WALL_MS)
        t = job.slot
        while t < horizon_s:
            out.append((t, job.spec.name))
            job.slot, _ = loop.next_slot_after(job, t)
            t = job.slot
    return out


def test_jobs_of_different_symbols_never_share_an_instant():
    n = 40
    poller = _binance_poller(n)
    slots = _slots(poller.loop, 1200.0)
    # one kind: its n symbols one interval / n apart, never two in the same instant
    by_kind: dict[str, list[float]] = {}
    for t, name in slots:
        by_kind.setdefault(name.split("@")[1], []).append(t)
    for kind, times in by_kind.items():
        iv = poller.plan.intervals[kind]
        times.sort()
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert min(gaps) == pytest.approx(iv / n, abs=1e-6), kind
    # all kinds together: at most one request per kind in any 50 ms (unspread: 40 at once)
    per_bucket = Counter(math.floor(t / 0.05) for t, _ in slots)
    assert max(per_bucket.values()) <= len(by_kind)
    # ... and the same number of calls per kind and symbol over the horizon (+-1 slot)
    per_job = Counter(name for _, name in slots)
    for kind in by_kind:
        counts = [c for name, c in per_job.items() if name.endswith("@" + kind)]
        assert len(counts) == n and max(counts) - min(counts) <= 1


def test_first_runs_are_staggered_not_a_burst():
    poller = _binance_poller(40)
    poller.loop.clock = lambda: 1000.0
    poller.loop.wall_ms = lambda: WALL_MS
    poller.run()
    starts = sorted(j.next_start for j in poller.loop.jobs)
    assert len(starts) == 280
    assert starts[-1] - starts[0] == pytest.approx(28.0 * 279 / 280)   # 0.1 s per job, at most 30 s
    assert min(b - a for a, b in zip(starts, starts[1:])) == pytest.approx(0.1)


@pytest.mark.parametrize("n", [45, 120])
def test_the_loop_keeps_the_futures_data_calls_within_the_plan(n):
    """The real loop on a virtual clock, the ratio jobs of n symbols for 25 minutes: no 5-minute
    window ever reaches the limit (nothing is held back), and once the start is five minutes
    behind, none holds more than 80 % of it — up to the few calls each run's random start
    delay (<= 1 s) can move into a window. 45 symbols: the first runs right at start fit in
    the room the steady state leaves; 120: they would not, so the jobs begin at their slots."""
    vt = VirtualTime()
    cfg = BinanceRestConfig.from_settings(settings(CQT_SYMBOLS=assets(n)))
    poller = BinanceRestPoller(None, cfg, client=None, clock=vt.wall_ms, mono=vt.monotonic)
    assert all(poller.plan.start_runs[k] == (n == 45) for k in RATIO_JOBS)
    calls, held = [], []

    def call(spec):
        def fn():                      # what BinanceRestPoller._get does with the window limit
            for lim in spec.limits:
                if lim.wait_s() > 0:
                    held.append(vt.monotonic())
                    raise PollError("rate limited", retry_after_s=lim.wait_s(), calls=0, deferred=True)
                lim.note()
            calls.append(vt.monotonic())
            return 1
        return fn

    specs = [j.spec for j in poller.loop.jobs if j.spec.name.split("@")[1] in RATIO_JOBS]
    loop = make_loop(vt, [PollJob(s.name, s.interval_s, call(s), phase_s=s.phase_s, limits=s.limits,
                                  run_at_start=s.run_at_start) for s in specs],
                     workers=poller.loop.workers, start_stagger_s=poller.loop.start_stagger_s)
    start = vt.monotonic()
    run_for(loop, 1500.0)
    assert held == []
    calls.sort()

    def in_window(t):
        return bisect.bisect_left(calls, t + 300.0) - bisect.bisect_left(calls, t)

    iv = poller.plan.intervals["taker"]
    assert len(calls) >= len(specs) * int(1200 / iv)
    assert max(in_window(t) for t in calls) < cfg.data_limit_5m
    jitter_calls = math.ceil(min(1.0, 0.05 * iv) / (iv / len(specs))) + 1
    steady = max(in_window(t) for t in calls if start + 300 <= t <= start + 1200)
    assert steady <= 0.8 * cfg.data_limit_5m + jitter_calls, (steady, jitter_calls)


def test_coinglass_first_runs_at_start_only_where_they_fit():
    one = CoinglassConfig.from_settings(coinglass_settings(1)).rate_plan()
    six = CoinglassConfig.from_settings(coinglass_settings(6)).rate_plan()
    assert all(one.start_runs.values()) and not any(six.start_runs.values())     # 24 more on 24 of 30: no


def test_one_symbol_keeps_the_schedule_it_always_had():
    poller = _binance_poller(1)
    assert {j.spec.name: (j.spec.interval_s, j.spec.phase_s) for j in poller.loop.jobs} == {
        "C000USDT@open_interest": (10.0, 0.0), "C000USDT@oi_hist": (60.0, 5.0), "C000USDT@global_ls": (60.0, 7.0),
        "C000USDT@top_ls": (60.0, 9.0), "C000USDT@taker": (60.0, 11.0), "C000USDT@premium": (60.0, 1.0),
        "C000USDT@funding": (600.0, 15.0)}
    assert poller.loop.workers == 2 and all(j.spec.run_at_start for j in poller.loop.jobs)


def test_heartbeat_detail_stays_small_for_many_jobs():
    loop = PollLoop([PollJob(f"S{i}@k", 10, lambda: 1) for i in range(200)], detail_max_jobs=64)
    loop.jobs[3].status.state = "failing"
    d = loop.detail()
    assert list(d["jobs"]) == ["S3@k"] and d["jobs_by_state"] == {"scheduled": 199, "failing": 1}
    small = PollLoop([PollJob("a", 10, lambda: 1)]).detail()
    assert list(small["jobs"]) == ["a"] and small["jobs_by_state"] == {"scheduled": 1}
