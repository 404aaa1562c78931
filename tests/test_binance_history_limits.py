"""Binance history limits: aggTrades older than the venue keeps (~48 h) and /futures/data
startTime older than ~30 days (-1130) end as unfillable with the reason and the work moves on;
a catch-up gives the same rows whichever end of an oversized window the venue returns."""
from __future__ import annotations

import json
import sqlite3
import threading
from types import SimpleNamespace

import pytest

from cqt.backfill import GapBook, GiveUp
from cqt.poll import NewestTimes, WindowLimit, failure_of
from cqt.rest import RestResponse
from cqt.sim.market import Market
from cqt.sim.model import MarketModel
from cqt.sim.venues.binance.history import HistoryLimits, window_times
from cqt.stream import Gap
from cqt.venues.binance import backfill as bf, poll as bp

ORIGIN = 1_767_225_600_000
DAY = 86_400_000


def _resp(path, params, status, text, now):
    return RestResponse(status, {}, text, 1, now, path, params,
                        error=None if 200 <= status < 300 else f"http {status}")


# ------------------------------------------------------------------ pure decisions
def test_history_limit_decisions():
    h = HistoryLimits(agg_history_s=600, futures_data_days=30)
    assert h.agg_too_old(ORIGIN - 601_000, ORIGIN) and not h.agg_too_old(ORIGIN - 599_000, ORIGIN)
    assert not HistoryLimits().agg_too_old(0, ORIGIN)
    assert h.futures_start_too_old(ORIGIN - 31 * DAY, ORIGIN) and not h.futures_start_too_old(ORIGIN - DAY, ORIGIN)
    assert window_times(0, 900, 100, 3, "oldest") == [0, 100, 200]
    assert window_times(0, 900, 100, 3, "newest") == [700, 800, 900]


def test_catch_up_decisions():
    now = ORIGIN
    assert bp.catch_up_end(0, now) == 499 * bp.PERIOD_MS
    assert bp.catch_up_end(now - 1000, now) == now
    on = bp.restart_after_refusal(now - 40 * DAY, now)
    assert on == -(-(now - 29 * DAY) // bp.PERIOD_MS) * bp.PERIOD_MS
    assert bp.restart_after_refusal(now - DAY, now) is None            # never the same request again
    assert bp.refused_too_old(failure_of(_resp("/futures/data/x", {}, 400,
                                               '{"code":-1130,"msg":"bad"}', now)))
    assert bf.refused_too_old(GiveUp("x", status=400, text='{"code": -1130, "msg": "x"}'))
    assert not bf.refused_too_old(GiveUp("x", status=400, text='{"code":-1121,"msg":"Invalid symbol."}'))


# ------------------------------------------------------------------ against the sim's answers
def _market(**limits) -> Market:
    m = Market(MarketModel(7, ORIGIN, history_s=0, retain_s=7200))
    m.binance_history = HistoryLimits(**limits)
    return m


def test_sim_refuses_old_agg_trades_and_futures_data():
    now = ORIGIN + 3_600_000
    m = _market(agg_history_s=600, futures_data_days=30)
    st, body = m.rest("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "startTime": now - 1_800_000,
                                             "endTime": now - 1_700_000}, now)
    assert st == 400 and json.loads(body)["code"] == -1130
    st, body = m.rest("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "startTime": now - 300_000, "limit": 5}, now)
    assert st == 200 and len(json.loads(body)) == 5
    st, body = m.rest("/futures/data/openInterestHist", {"symbol": "BTCUSDT", "period": "5m",
                                                         "startTime": now - 31 * DAY}, now)
    assert st == 400 and json.loads(body) == {"code": -1130,
                                              "msg": "Data sent for parameter 'startTime' is not valid."}


class _Writer:
    def __init__(self, conn):
        self.conn = conn

    def call(self, fn):
        fn(self.conn)


class _SimRest:
    name = "binance_rest"

    def __init__(self, market, now):
        self.market, self.now, self.calls = market, now, 0

    def get(self, path, params, **_kw):
        self.calls += 1
        st, text = self.market.rest(path, params, self.now)
        return _resp(path, params, st, text, self.now)


def test_backfill_of_too_old_gap_ends_unfillable_with_reason():
    now = ORIGIN + 3_600_000
    m = _market(agg_history_s=600)
    old = json.loads(_market().rest("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "startTime": now - 3_000_000,
                                                   "limit": 3}, now)[1])
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE gaps (id INTEGER PRIMARY KEY, source, stream, detected_ts_ms, from_id, to_id, "
                 "from_ts_ms, to_ts_ms, filled_ts_ms, filled_rows, status, reason, symbol)")
    book = GapBook(_Writer(conn))
    svc = SimpleNamespace(stopping=threading.Event(), count=lambda *a, **k: None,
                          rejects=SimpleNamespace(record=lambda *a, **k: None))
    rest = _SimRest(m, now)
    fill = bf.AggTradeFill(svc, rest, book, "BTCUSDT", None)   # type: ignore[arg-type]  # bounded gap: no live state
    gap = Gap("binance", "btcusdt@aggTrade", "reconnect", now, old[0]["a"], old[-1]["a"] + 50)
    book.open(gap)
    fill(gap)
    status, reason, rows = conn.execute("SELECT status, reason, filled_rows FROM gaps").fetchone()
    assert status == "unfillable" and rows == 0
    assert reason.startswith("reconnect; ") and "48 h of aggTrades history" in reason
    assert rest.calls == 1                                              # ended at once, no loop
    assert GapBook.load_open(conn, "binance") == []                     # not retried at the next start


class _RatioPoller(bp.BinanceRestPoller):
    """The catch-up of BinanceRestPoller over the sim's answers, without a service."""

    def __init__(self, market, now, newest):
        self.market, self.now, self.stored, self.sent = market, now, {}, []
        self.cfg = SimpleNamespace(backfill_s=0, refetch=3)
        self.clock = lambda: now
        self.newest = NewestTimes()
        self.newest["BTCUSDT@global_ls"] = newest
        self.backfilled, self.unfillable = {}, {}
        self.data_limit = WindowLimit("d", 10_000, 300.0)

    def _get(self, symbol, path, params, limits=()):
        self.sent.append(dict(params))
        st, text = self.market.rest(path, params, self.now)
        if st != 200:
            raise failure_of(_resp(path, params, st, text, self.now))
        rows = json.loads(text)
        for r in rows:
            self.stored[r["timestamp"]] = r["longShortRatio"]
        return SimpleNamespace(event_ts_ms=max((r["timestamp"] for r in rows), default=None)), len(rows)


@pytest.mark.parametrize("window", ["oldest", "newest"])
def test_ratio_catch_up_past_refusal_same_rows_either_window(window):
    now = ORIGIN + 45 * DAY
    # the venue keeps 29 days here, so the client's 30-day clamp is refused once
    m = _market(futures_data_days=29, futures_data_window=window)
    p = _RatioPoller(m, now, newest=now - 40 * DAY)
    res = p.poll_ratio("BTCUSDT", "global_ls")
    assert "BTCUSDT@global_ls" in p.unfillable and "30 days" in p.unfillable["BTCUSDT@global_ls"]["reason"]
    assert len(p.sent) < 30                                             # finished, not looping
    want = list(range(-(-(now - 29 * DAY) // bp.PERIOD_MS) * bp.PERIOD_MS, now - now % bp.PERIOD_MS + 1,
                      bp.PERIOD_MS))
    assert set(want) <= set(p.stored) and res.rows >= len(want)
    assert min(p.stored) >= now - 29 * DAY
    _RESULTS[window] = dict(p.stored)
    if len(_RESULTS) == 2:
        assert _RESULTS["oldest"] == _RESULTS["newest"]


_RESULTS: dict = {}
