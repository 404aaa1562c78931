"""`bin/cqt-poll-binance`: Binance USDⓈ-M futures REST series on intervals (cqt.poll).

    job           every (default)            endpoint                                   table
    open_interest CQT_POLL_OI_S (10 s)       /fapi/v1/openInterest                      binance_open_interest
    oi_hist       CQT_POLL_RATIOS_S (60 s)   /futures/data/openInterestHist             binance_ratios
    global_ls     CQT_POLL_RATIOS_S          /futures/data/globalLongShortAccountRatio  binance_ratios
    top_ls        CQT_POLL_RATIOS_S          /futures/data/topLongShortPositionRatio    binance_ratios
    taker         CQT_POLL_RATIOS_S          /futures/data/takerlongshortRatio          binance_ratios
    premium       CQT_POLL_PREMIUM_S (60 s)  /fapi/v1/premiumIndex                      binance_premium_index
    funding       CQT_POLL_FUNDING_S (600 s) /fapi/v1/fundingRate                       binance_funding_rate

binance_ratios rows carry their job's kind: open_interest_hist, global_long_short,
top_long_short_position, taker_buy_sell.

Ratios use 5-minute periods; each poll re-fetches the last CQT_POLL_RATIO_REFETCH periods
and stores revised values (upsert that only touches a row whose value changed). With an
empty table the first poll backfills CQT_BACKFILL_S seconds; after a restart it catches up
from the newest stored period (the API keeps 30 days). Limits: `/futures/data/*` at most
CQT_BINANCE_DATA_LIMIT (900) requests per 5 min, `fundingRate` at most 450 per 5 min,
request weight from `X-MBX-USED-WEIGHT-1m` (the RestClient holds requests back near the
budget, after a 429 until Retry-After, and for the whole of a 418 ban).
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
from ...rest import RestClient
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
FUNDING_EVERY_MS = 8 * 3_600_000

#: job name -> (endpoint name, binance_ratios.kind)
RATIO_JOBS = {
    "oi_hist": ("openInterestHist", "open_interest_hist"),
    "global_ls": ("globalLongShortAccountRatio", "global_long_short"),
    "top_ls": ("topLongShortPositionRatio", "top_long_short_position"),
    "taker": ("takerlongshortRatio", "taker_buy_sell"),
}


@dataclass(frozen=True)
class BinanceRestConfig:
    symbol: str
    oi_s: float
    ratios_s: float
    premium_s: float
    funding_s: float
    timeout_s: float
    backfill_s: int
    refetch: int
    data_limit_5m: int
    funding_limit_5m: int

    @classmethod
    def from_settings(cls, s: Settings) -> "BinanceRestConfig":
        """Raises ConfigError (exit 78) for a bad value or a setting that would break a limit."""
        cfg = cls(
            symbol=s.binance_symbol,
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
        # Steady state must fit the server's limits with room for backfill pages.
        per_5m = 4 * 300 / cfg.ratios_s
        if per_5m > 0.8 * cfg.data_limit_5m:
            raise ConfigError("CQT_POLL_RATIOS_S", f"{cfg.ratios_s:g} s means {per_5m:.0f} /futures/data requests "
                              f"per 5 min; keep it under 80 % of {cfg.data_limit_5m} (>= "
                              f"{math.ceil(4 * 300 / (0.8 * cfg.data_limit_5m))} s)")
        if 300 / cfg.funding_s > 0.8 * cfg.funding_limit_5m:
            raise ConfigError("CQT_POLL_FUNDING_S", f"{cfg.funding_s:g} s would exceed the fundingRate limit "
                              f"of {cfg.funding_limit_5m} requests per 5 min")
        if cfg.refetch > HIST_MAX_LIMIT:
            raise ConfigError("CQT_POLL_RATIO_REFETCH", f"at most {HIST_MAX_LIMIT}")
        return cfg


class BinanceRestPoller:
    """The jobs of cqt-poll-binance; `run(svc)` polls until stopped."""

    def __init__(self, svc: Service, cfg: BinanceRestConfig, client: RestClient, *,
                 clock: Callable[[], int] = now_ms, mono: Callable[[], float] = time.monotonic):
        self.svc = svc
        self.cfg = cfg
        self.client = client
        self.clock = clock
        self.data_limit = WindowLimit("futures_data", cfg.data_limit_5m, 300.0, clock=mono)
        self.funding_limit = WindowLimit("fundingRate", cfg.funding_limit_5m, 300.0, clock=mono)
        self._lock = threading.Lock()
        self.newest = NewestTimes()    # job -> newest stored time (resume point)
        self.backfilled: dict[str, int] = {}
        self.loop = PollLoop(self.jobs(), workers=2)

    # ------------------------------------------------------------------ set-up
    def jobs(self) -> list[PollJob]:
        c = self.cfg
        t = c.timeout_s * 3 + 5
        jobs = [PollJob("open_interest", c.oi_s, self.poll_open_interest, timeout_s=t, client=self.client)]
        for i, (name, (endpoint, kind)) in enumerate(RATIO_JOBS.items()):
            # A little after each minute (new 5-minute periods appear at the boundary),
            # the four endpoints 2 s apart.
            jobs.append(PollJob(name, c.ratios_s, self._ratio_job(name, endpoint, kind),
                                phase_s=min(5.0 + 2 * i, c.ratios_s / 2), timeout_s=t * 4,
                                client=self.client, limits=(self.data_limit,)))
        jobs.append(PollJob("premium", c.premium_s, self.poll_premium, phase_s=min(1.0, c.premium_s / 2),
                            timeout_s=t, client=self.client))
        jobs.append(PollJob("funding", c.funding_s, self.poll_funding, phase_s=min(15.0, c.funding_s / 2),
                            timeout_s=t, client=self.client, limits=(self.funding_limit,)))
        return jobs

    def load_resume_points(self) -> None:
        """Newest stored time per series: empty -> first-start backfill; old -> catch up."""
        conn = connect(self.svc.settings.db, readonly=True)
        try:
            sym = self.cfg.symbol
            for name, (_, kind) in RATIO_JOBS.items():
                self.newest[name] = conn.execute(
                    "SELECT MAX(ts_ms) FROM binance_ratios WHERE symbol=? AND kind=? AND period=?",
                    (sym, kind, PERIOD)).fetchone()[0]
            self.newest["funding"] = conn.execute(
                "SELECT MAX(funding_ts_ms) FROM binance_funding_rate WHERE symbol=?", (sym,)).fetchone()[0]
        finally:
            conn.close()

    def run(self) -> int:
        self.load_resume_points()
        return self.loop.run(self.svc)

    # ------------------------------------------------------------------ one call
    def _get(self, path: str, params: dict, limits: tuple[WindowLimit, ...] = ()) -> tuple[Any, int]:
        """GET + parse + store. Returns (Parsed, rows). Raises PollError for an unusable answer."""
        for lim in limits:
            if lim.wait_s() > 0:
                raise PollError("rate limited", f"limit {lim.name}", retry_after_s=lim.wait_s(), calls=0,
                                deferred=True)
            lim.note()
        r = self.client.get(path, params, wait=False, timeout_s=self.cfg.timeout_s)
        fail = failure_of(r)
        if fail is not None:
            self.svc.count(SOURCE, frames=1 if r.status is not None else 0)
            raise fail
        res = rest_answer_outcome(SOURCE, path, params, r.text, r.recv_ts_ms, None, self.svc.settings, r.status)
        if isinstance(res, Reject) or res is None:
            reason = res.reason if isinstance(res, Reject) else "unparsable answer"
            self.svc.rejects.record(SOURCE, reason, r.text)
            self.svc.count(SOURCE, frames=1, rejects=1)
            raise PollError(f"bad answer: {reason}", res.detail if isinstance(res, Reject) else path)
        if res.rows:
            self.svc.writer.put_many(store_sql(res.table), res.rows)
        self.svc.count(SOURCE, frames=1, rows=len(res.rows))
        return res, len(res.rows)

    # ------------------------------------------------------------------ jobs
    def poll_open_interest(self) -> RunResult:
        _, n = self._get("/fapi/v1/openInterest", {"symbol": self.cfg.symbol})
        return RunResult(rows=n)

    def poll_premium(self) -> RunResult:
        _, n = self._get("/fapi/v1/premiumIndex", {"symbol": self.cfg.symbol})
        return RunResult(rows=n)

    def _ratio_job(self, name: str, endpoint: str, kind: str) -> Callable[[], RunResult]:
        return lambda: self.poll_ratio(name, endpoint, kind)

    def poll_ratio(self, name: str, endpoint: str, kind: str) -> RunResult:
        """Re-fetch the last `refetch` periods; with a gap behind us (first start, restart)
        page forward from the resume point first."""
        path = f"/futures/data/{endpoint}"
        now = self.clock()
        newest = self.newest.get(name)
        if newest is None and self.cfg.backfill_s > 0 and name not in self.backfilled:
            since = now - self.cfg.backfill_s * 1000
        else:
            since = newest
        rows = calls = 0
        base = {"symbol": self.cfg.symbol, "period": PERIOD}
        if since is not None and now - since > self.cfg.refetch * PERIOD_MS:
            since = max(since, now - HIST_KEEP_MS + PERIOD_MS)
            start = since
            pages = 0
            while start < now and pages < 50:
                params = {**base, "startTime": start, "endTime": now, "limit": HIST_MAX_LIMIT}
                try:
                    res, n = self._get(path, params, (self.data_limit,))
                except PollError as e:
                    e.calls += calls
                    e.rows += rows
                    raise
                calls += 1
                pages += 1
                rows += n
                self.newest.advance(name, res.event_ts_ms)
                if n < HIST_MAX_LIMIT or res.event_ts_ms is None:
                    break
                start = res.event_ts_ms + 1
            self.backfilled[name] = rows
            log.info("job=%s caught up from %d rows=%d pages=%d", name, since, rows, pages)
            return RunResult(rows=rows, calls=calls, note=f"caught up {rows} periods")
        res, n = self._get(path, {**base, "limit": self.cfg.refetch}, (self.data_limit,))
        self.newest.advance(name, res.event_ts_ms)
        return RunResult(rows=n)

    def poll_funding(self) -> RunResult:
        """Funding every 8 h: fetch what is newer than the newest stored (re-fetching it);
        with nothing stored, the most recent events covering CQT_BACKFILL_S (at least 3)."""
        newest = self.newest.get("funding")
        if newest is None:
            limit = max(3, min(1000, self.cfg.backfill_s * 1000 // FUNDING_EVERY_MS + 1))
            params = {"symbol": self.cfg.symbol, "limit": limit}
        else:
            params = {"symbol": self.cfg.symbol, "startTime": newest, "limit": 1000}
        res, n = self._get("/fapi/v1/fundingRate", params, (self.funding_limit,))
        self.newest.advance("funding", res.event_ts_ms)
        return RunResult(rows=n)

    def detail(self) -> dict:
        d = self.loop.detail()
        d["rest"] = self.client.rate.snapshot()
        d["limits"] = {"futures_data_5m": self.data_limit.used(), "fundingRate_5m": self.funding_limit.used()}
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
