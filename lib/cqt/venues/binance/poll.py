"""`bin/cqt-poll-binance`: Binance USDⓈ-M futures REST series on intervals (cqt.poll), for
every symbol of `settings.binance_symbols` (CQT_SYMBOLS: BTC,ETH -> BTCUSDT, ETHUSDT).

    job kind      every (default)            endpoint                                   table
    open_interest CQT_POLL_OI_S (10 s)       /fapi/v1/openInterest                      binance_open_interest
    oi_hist       CQT_POLL_RATIOS_S (60 s)   /futures/data/openInterestHist             binance_ratios
    global_ls     CQT_POLL_RATIOS_S          /futures/data/globalLongShortAccountRatio  binance_ratios
    top_ls        CQT_POLL_RATIOS_S          /futures/data/topLongShortPositionRatio    binance_ratios
    taker         CQT_POLL_RATIOS_S          /futures/data/takerlongshortRatio          binance_ratios
    premium       CQT_POLL_PREMIUM_S (60 s)  /fapi/v1/premiumIndex                      binance_premium_index
    funding       CQT_POLL_FUNDING_S (600 s) /fapi/v1/fundingRate                       binance_funding_rate

One job per kind and symbol, named `<SYMBOL>@<kind>` (`BTCUSDT@open_interest`); the jobs of
one kind are spread evenly over its interval. binance_ratios rows carry their job's kind:
open_interest_hist, global_long_short, top_long_short_position, taker_buy_sell.

Ratios use 5-minute periods; each poll re-fetches the last CQT_POLL_RATIO_REFETCH periods
and stores revised values (upsert that only touches a row whose value changed). With an
empty table the first poll backfills CQT_BACKFILL_S seconds; after a restart it catches up
from the newest stored period of that symbol (the API keeps 30 days).

Limits (cqt.poll.budget, planned once at start): the steady state of all symbols stays at or
under 80 % of the request weight (2 400 per minute; openInterest, premiumIndex and
fundingRate cost 1 each), of CQT_BINANCE_DATA_LIMIT (900) `/futures/data/*` requests per
5 min and of CQT_BINANCE_FUNDING_LIMIT (450) fundingRate requests per 5 min. When the
symbols need more, the intervals of the jobs behind that limit are stretched evenly and
one WARNING says which, from what to what; an interval that breaks a limit for a single
symbol is refused (exit 78). At run time the sliding windows and the RestClient (weight
header, 429 until Retry-After, the whole of a 418 ban) still hold requests back.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import click

from ...collector import config_or_exit, run_rest_poller
from ...config import ConfigError, Settings
from ...db import connect
from ...options import capture_option, db_option
from ...poll import NewestTimes, PollError, PollJob, PollLoop, RunResult, WindowLimit, failure_of
from ...poll.budget import BUDGET_FRACTION, Budget, JobKind, Plan, plan_intervals, spread_phase
from ...rest import BINANCE_WEIGHT_LIMIT_1M, RestClient
from ...runtime import Service, load_settings_or_exit
from ...timeutil import now_ms
from ..common import Reject, store_sql
from ..registry import rest_answer_outcome
from . import RATIO_PERIOD
from .parse import REST

log = logging.getLogger("cqt.poll.binance")

SERVICE = "cqt-poll-binance"
SOURCE = REST
PERIOD = RATIO_PERIOD
PERIOD_MS = 300_000
HIST_MAX_LIMIT = 500               # /futures/data/* limit per request
HIST_KEEP_MS = 30 * 86_400_000     # /futures/data/* only serve the last 30 days
HIST_SAFE_MS = 29 * 86_400_000    # where a catch-up refused for its age restarts (inside the 30 days)
FUNDING_EVERY_MS = 8 * 3_600_000
#: what a catch-up window refused for its age is recorded with
TOO_OLD_REASON = "unfillable: Binance serves /futures/data only for the last ~30 days (-1130 for an older startTime)"


def catch_up_end(start: int, now: int) -> int:
    """The endTime of a catch-up page: at most HIST_MAX_LIMIT periods from start, so the
    answer is the same whether the venue returns the oldest or the newest rows of a larger
    window (that choice is undocumented)."""
    return min(now, start + (HIST_MAX_LIMIT - 1) * PERIOD_MS)


def refused_too_old(err: PollError) -> bool:
    """-1130 on /futures/data: the startTime is older than the venue keeps."""
    return err.reason.endswith("code -1130")


def restart_after_refusal(start: int, now: int) -> int | None:
    """Where a catch-up refused for its age goes on (now - 29 days, period aligned); None
    when that is no later than the refused start (do not repeat the same request)."""
    t = -(-(now - HIST_SAFE_MS) // PERIOD_MS) * PERIOD_MS
    return t if t > start else None

#: job kind -> (endpoint name, binance_ratios.kind)
RATIO_JOBS = {
    "oi_hist": ("openInterestHist", "open_interest_hist"),
    "global_ls": ("globalLongShortAccountRatio", "global_long_short"),
    "top_ls": ("topLongShortPositionRatio", "top_long_short_position"),
    "taker": ("takerlongshortRatio", "taker_buy_sell"),
}
#: the budgets (cqt.poll.budget) and what one run of each kind costs them. Request weight
#: per call from the exchange's docs: openInterest 1, premiumIndex 1 with a symbol,
#: /futures/data/* 0 (they have their own limit); fundingRate has its own limit (shared with
#: fundingInfo) and is counted at weight 1 as well, to be safe.
WEIGHT, DATA, FUNDING = "request_weight", "futures_data", "fundingRate"
KIND_COSTS: dict[str, dict[str, float]] = {
    "open_interest": {WEIGHT: 1},
    **{name: {DATA: 1} for name in RATIO_JOBS},
    "premium": {WEIGHT: 1},
    "funding": {WEIGHT: 1, FUNDING: 1},
}
BUDGET_LABELS = {WEIGHT: "request weight", DATA: "/futures/data requests", FUNDING: "fundingRate requests"}
#: the variable that sets each kind's interval (what a refusal names)
KIND_VARS = {"open_interest": "CQT_POLL_OI_S", **{name: "CQT_POLL_RATIOS_S" for name in RATIO_JOBS},
             "premium": "CQT_POLL_PREMIUM_S", "funding": "CQT_POLL_FUNDING_S"}
#: seconds after each interval's wall-clock multiple of a kind's first symbol: the ratio
#: endpoints a little after the minute (a new 5-minute period appears at the boundary), 2 s apart
KIND_PHASE_S = {"open_interest": 0.0, **{name: 5.0 + 2 * i for i, name in enumerate(RATIO_JOBS)},
                "premium": 1.0, "funding": 15.0}


def job_name(symbol: str, kind: str) -> str:
    """`BTCUSDT@open_interest`: the job of one kind for one symbol (logs, heartbeat, resume)."""
    return f"{symbol}@{kind}"


@dataclass(frozen=True)
class BinanceRestConfig:
    symbols: tuple[str, ...]
    oi_s: float
    ratios_s: float
    premium_s: float
    funding_s: float
    timeout_s: float
    backfill_s: int
    refetch: int
    data_limit_5m: int
    funding_limit_5m: int
    weight_limit_1m: int = BINANCE_WEIGHT_LIMIT_1M

    @classmethod
    def from_settings(cls, s: Settings) -> "BinanceRestConfig":
        """Raises ConfigError (exit 78) for a bad value or an interval that would break a
        limit for a single symbol (more symbols stretch the intervals instead: `plan`)."""
        cfg = cls(
            symbols=tuple(s.binance_symbols),
            oi_s=s.get_float("CQT_POLL_OI_S"),
            ratios_s=s.get_float("CQT_POLL_RATIOS_S"),
            premium_s=s.get_float("CQT_POLL_PREMIUM_S"),
            funding_s=s.get_float("CQT_POLL_FUNDING_S"),
            timeout_s=s.get_float("CQT_POLL_TIMEOUT_S"),
            backfill_s=s.backfill_s,
            refetch=s.get_int("CQT_POLL_RATIO_REFETCH"),
            data_limit_5m=s.get_int("CQT_BINANCE_DATA_LIMIT"),
            funding_limit_5m=s.get_int("CQT_BINANCE_FUNDING_LIMIT"),
        )
        one = plan_intervals(cfg.kinds(), cfg.budgets(), 1)
        over = one.over()
        if over:
            raise cfg.refusal(over[0], one)
        if cfg.refetch > HIST_MAX_LIMIT:
            raise ConfigError("CQT_POLL_RATIO_REFETCH", f"at most {HIST_MAX_LIMIT}")
        return cfg

    def interval_of(self, kind: str) -> float:
        if kind in RATIO_JOBS:
            return self.ratios_s
        return {"open_interest": self.oi_s, "premium": self.premium_s, "funding": self.funding_s}[kind]

    def kinds(self) -> list[JobKind]:
        return [JobKind(k, self.interval_of(k), costs) for k, costs in KIND_COSTS.items()]

    def budgets(self) -> list[Budget]:
        return [Budget(WEIGHT, self.weight_limit_1m, 60.0), Budget(DATA, self.data_limit_5m, 300.0),
                Budget(FUNDING, self.funding_limit_5m, 300.0)]

    def plan(self) -> Plan:
        """The intervals for all symbols (computed from the weights, never from 429s)."""
        return plan_intervals(self.kinds(), self.budgets(), len(self.symbols))

    def refusal(self, budget: str, one: Plan) -> ConfigError:
        """The ConfigError for intervals that break `budget` for one symbol: it names the
        variable of the costliest kind and the shortest interval that would fit."""
        kinds = self.kinds()
        costly = max((k for k in kinds if k.costs.get(budget)), key=lambda k: k.costs[budget] / k.interval_s)
        var = KIND_VARS[costly.name]
        window = next(b.window_s for b in self.budgets() if b.name == budget)
        mine = [k for k in kinds if KIND_VARS[k.name] == var and k.costs.get(budget)]
        share = sum(k.costs[budget] for k in mine) * window          # units per window at a 1 s interval
        room = one.allowed[budget] - (one.demand[budget] - sum(k.costs[budget] * window / k.interval_s for k in mine))
        hint = f" (>= {math.ceil(share / room)} s)" if room > 0 else ""
        return ConfigError(var, f"{costly.interval_s:g} s means {one.demand[budget]:.0f} {BUDGET_LABELS[budget]} "
                                f"per {window / 60:g} min; keep it under {BUDGET_FRACTION * 100:g} % of "
                                f"{one.capacity[budget]:g}{hint}")


class BinanceRestPoller:
    """The jobs of cqt-poll-binance for every symbol; `run()` polls until stopped."""

    def __init__(self, svc: Service, cfg: BinanceRestConfig, client: RestClient, *,
                 clock: Callable[[], int] = now_ms, mono: Callable[[], float] = time.monotonic):
        self.svc = svc
        self.cfg = cfg
        self.client = client
        self.clock = clock
        self.data_limit = WindowLimit(DATA, cfg.data_limit_5m, 300.0, clock=mono)
        self.funding_limit = WindowLimit(FUNDING, cfg.funding_limit_5m, 300.0, clock=mono)
        self._lock = threading.Lock()
        self.newest = NewestTimes()    # job name -> newest stored time (resume point)
        self.backfilled: dict[str, int] = {}
        self.unfillable: dict[str, dict] = {}   # job name -> the catch-up window the venue refused
        self.plan = cfg.plan()
        jobs = self.jobs()
        # First runs spread over a few seconds (not a burst of every symbol at once).
        self.loop = PollLoop(jobs, workers=min(8, max(2, len(cfg.symbols))),
                             start_stagger_s=max(0.5, min(30.0, 0.1 * len(jobs))))

    # ------------------------------------------------------------------ set-up
    def jobs(self) -> list[PollJob]:
        """Every kind for every symbol; the symbols of one kind spread evenly over its interval."""
        c = self.cfg
        t = c.timeout_s * 3 + 5
        n = len(c.symbols)
        iv = self.plan.intervals
        # kind -> (job fn taking the symbol, timeout, window limits)
        spec: dict[str, tuple[Callable[..., RunResult], float, tuple[WindowLimit, ...]]] = {
            "open_interest": (self.poll_open_interest, t, ()),
            **{kind: (self._ratio_fn(kind), t * 4, (self.data_limit,)) for kind in RATIO_JOBS},
            "premium": (self.poll_premium, t, ()),
            "funding": (self.poll_funding, t, (self.funding_limit,)),
        }
        out = []
        for i, sym in enumerate(c.symbols):
            for kind, (fn, timeout_s, limits) in spec.items():
                phase = spread_phase(min(KIND_PHASE_S[kind], iv[kind] / 2), i, n, iv[kind])
                out.append(PollJob(job_name(sym, kind), iv[kind], self._call(fn, sym), phase_s=phase,
                                   timeout_s=timeout_s, client=self.client, limits=limits,
                                   run_at_start=self.plan.start_runs[kind]))
        return out

    def _ratio_fn(self, kind: str) -> Callable[[str], RunResult]:
        return lambda symbol: self.poll_ratio(symbol, kind)

    @staticmethod
    def _call(fn: Callable[..., RunResult], *args: str) -> Callable[[], RunResult]:
        return lambda: fn(*args)

    def load_resume_points(self) -> None:
        """Newest stored time per job (kind and symbol): none -> first-start backfill; old -> catch up."""
        conn = connect(self.svc.settings.db, readonly=True)
        try:
            for sym in self.cfg.symbols:
                for name, (_, kind) in RATIO_JOBS.items():
                    self.newest[job_name(sym, name)] = conn.execute(
                        "SELECT MAX(ts_ms) FROM binance_ratios WHERE symbol=? AND kind=? AND period=?",
                        (sym, kind, PERIOD)).fetchone()[0]
                self.newest[job_name(sym, "funding")] = conn.execute(
                    "SELECT MAX(funding_ts_ms) FROM binance_funding_rate WHERE symbol=?", (sym,)).fetchone()[0]
        finally:
            conn.close()

    def run(self) -> int:
        line = self.plan.line()
        if line:
            log.warning("%s", line)
        self.load_resume_points()
        return self.loop.run(self.svc)

    # ------------------------------------------------------------------ one call
    def _get(self, symbol: str, path: str, params: dict,
             limits: tuple[WindowLimit, ...] = ()) -> tuple[Any, int]:
        """GET + parse + store. Returns (Parsed, rows). Raises PollError for an unusable answer."""
        for lim in limits:
            if lim.wait_s() > 0:
                raise PollError("rate limited", f"limit {lim.name}", retry_after_s=lim.wait_s(), calls=0,
                                deferred=True)
            lim.note()
        r = self.client.get(path, params, wait=False, timeout_s=self.cfg.timeout_s)
        fail = failure_of(r)
        if fail is not None:
            self._count(symbol, frames=1 if r.status is not None else 0)
            raise fail
        res = rest_answer_outcome(SOURCE, path, params, r.text, r.recv_ts_ms, None, self.svc.settings, r.status)
        if isinstance(res, Reject) or res is None:
            reason = res.reason if isinstance(res, Reject) else "unparsable answer"
            self.svc.rejects.record(SOURCE, reason, r.text, symbol=symbol)
            self._count(symbol, frames=1, rejects=1)
            raise PollError(f"bad answer: {reason}", res.detail if isinstance(res, Reject) else path)
        if res.rows:
            self.svc.writer.put_many(store_sql(res.table), res.rows)
        self._count(symbol, frames=1, rows=len(res.rows))
        return res, len(res.rows)

    def _count(self, symbol: str, frames: int = 0, rows: int = 0, rejects: int = 0) -> None:
        self.svc.count(SOURCE, frames=frames, rows=rows, rejects=rejects)

    # ------------------------------------------------------------------ jobs
    def poll_open_interest(self, symbol: str) -> RunResult:
        _, n = self._get(symbol, "/fapi/v1/openInterest", {"symbol": symbol})
        return RunResult(rows=n)

    def poll_premium(self, symbol: str) -> RunResult:
        _, n = self._get(symbol, "/fapi/v1/premiumIndex", {"symbol": symbol})
        return RunResult(rows=n)

    def poll_ratio(self, symbol: str, kind: str) -> RunResult:
        """Re-fetch the last `refetch` periods; with a gap behind us (first start, restart)
        page forward from the resume point first."""
        endpoint = RATIO_JOBS[kind][0]
        name = job_name(symbol, kind)
        path = f"/futures/data/{endpoint}"
        now = self.clock()
        newest = self.newest.get(name)
        if newest is None and self.cfg.backfill_s > 0 and name not in self.backfilled:
            since = now - self.cfg.backfill_s * 1000
        else:
            since = newest
        rows = calls = 0
        base = {"symbol": symbol, "period": PERIOD}
        if since is not None and now - since > self.cfg.refetch * PERIOD_MS:
            since = max(since, now - HIST_KEEP_MS + PERIOD_MS)
            start = since
            pages = 0
            while start < now and pages < 50:
                end = catch_up_end(start, now)
                params = {**base, "startTime": start, "endTime": end, "limit": HIST_MAX_LIMIT}
                try:
                    res, n = self._get(symbol, path, params, (self.data_limit,))
                except PollError as e:
                    e.calls += calls
                    e.rows += rows
                    on = restart_after_refusal(start, now) if refused_too_old(e) else None
                    if on is None:
                        raise
                    calls += 1
                    pages += 1
                    self._record_unfillable(name, start, on, e)
                    start = on
                    continue
                calls += 1
                pages += 1
                rows += n
                self.newest.advance(name, res.event_ts_ms)
                if end >= now:
                    break
                start = max(end, res.event_ts_ms or end) + 1
            self.backfilled[name] = rows
            log.info("job=%s caught up from %d rows=%d pages=%d", name, since, rows, pages)
            return RunResult(rows=rows, calls=calls, note=f"caught up {rows} periods")
        res, n = self._get(symbol, path, {**base, "limit": self.cfg.refetch}, (self.data_limit,))
        self.newest.advance(name, res.event_ts_ms)
        return RunResult(rows=n)

    def _record_unfillable(self, name: str, start: int, to: int, err: PollError) -> None:
        """The poller keeps no gaps table: the refused window is a WARNING line and part of
        the status detail (`unfillable`), and the catch-up goes on from `to`."""
        self.unfillable[name] = {"from_ts_ms": start, "to_ts_ms": to, "reason": TOO_OLD_REASON}
        log.warning("job=%s catch-up from %d to %d %s (%s)", name, start, to, TOO_OLD_REASON, err.detail or err.reason)

    def poll_funding(self, symbol: str) -> RunResult:
        """Funding every 8 h: fetch what is newer than the newest stored (re-fetching it);
        with nothing stored, the most recent events covering CQT_BACKFILL_S (at least 3)."""
        name = job_name(symbol, "funding")
        newest = self.newest.get(name)
        if newest is None:
            limit = max(3, min(1000, self.cfg.backfill_s * 1000 // FUNDING_EVERY_MS + 1))
            params = {"symbol": symbol, "limit": limit}
        else:
            params = {"symbol": symbol, "startTime": newest, "limit": 1000}
        res, n = self._get(symbol, "/fapi/v1/fundingRate", params, (self.funding_limit,))
        self.newest.advance(name, res.event_ts_ms)
        return RunResult(rows=n)

    def detail(self) -> dict:
        d = self.loop.detail()
        d["rest"] = self.client.rate.snapshot()
        d["unfillable"] = dict(self.unfillable)
        d["limits"] = {"futures_data_5m": self.data_limit.used(), "fundingRate_5m": self.funding_limit.used()}
        d["plan"] = {"symbols": len(self.cfg.symbols), "intervals_s": dict(self.plan.intervals),
                     "use_per_window": {b: round(u, 1) for b, u in self.plan.usage.items()}}
        return d


# ---------------------------------------------------------------------- program
@click.command(name=SERVICE, context_settings={"help_option_names": ["-h", "--help"]})
@db_option(help="SQLite database (default: CQT_DB).")
@capture_option(help="Also record every REST answer to this capture file (JSON Lines; .gz compresses; rotated daily).")
def main(db: str | None, capture_path: str | None) -> None:
    """Poll Binance USD-M futures REST: open interest, long/short and taker ratios,
    open-interest history, premium index and funding history, into the database.

    Intervals and limits come from the environment (docs/pollers.md). Runs until
    SIGTERM; exit 78 on a bad setting."""
    settings = load_settings_or_exit(db=db)
    cfg = config_or_exit(lambda: BinanceRestConfig.from_settings(settings), SERVICE)
    run_rest_poller(SERVICE, SOURCE, settings, cfg, settings.binance_rest_url, BinanceRestPoller, capture_path)
