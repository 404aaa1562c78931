"""`bin/cqt-poll-coinglass`: Coinglass API v4 bars on an interval (cqt.poll), for every
asset of CQT_SYMBOLS: the coin (BTC) on the aggregated endpoints, the pair (the Binance
perpetual, BTCUSDT) on the per-exchange ones.

    job kind       path                                                   table
    open_interest  /api/futures/open-interest/aggregated-history          coinglass_open_interest (coin)
    funding        /api/futures/funding-rate/history                      coinglass_funding (exchange, pair)
    liquidations   /api/futures/liquidation/aggregated-history            coinglass_liquidations (coin, exchange_list)
    long_short     /api/futures/global-long-short-account-ratio/history   coinglass_long_short (exchange, pair)

One job per kind and coin, named `<COIN>@<kind>` (`ETH@funding`). Every job runs every
CQT_POLL_COINGLASS_S (60 s) with interval CQT_COINGLASS_INTERVAL (1h); the coins of one
kind are spread evenly over the interval. All jobs share CQT_COINGLASS_RATE_PER_MIN (the
plan's limit): when the coins would need more than 80 % of it, every interval is stretched
by the same factor, computed once at start, and one WARNING says so (cqt.poll.budget); an
interval that needs more than 80 % for a single coin is refused (exit 78).

A bar's `time` is its open; only closed bars are stored (avail_ts_ms = open + interval
<= receive time); each poll re-fetches the last bars and stores a bar again only when
Coinglass revised it. An empty table is backfilled CQT_BACKFILL_S deep (at least the
last closed bar); after a restart the poller catches up from the newest stored bar.

**Every HTTP call** is one `coinglass_call_status` row: ts_ms (call start), endpoint (the
path and the coin, `<path>?coin=BTC`: cqt.venues.coinglass.call_endpoint), http_status
(NULL = no answer), ok (HTTP 200 and code "0" and a valid body), latency_ms, rows (bars
stored), error (short reason: `401 key rejected`, `429 rate limited`, `timeout`,
`interval not allowed by plan: …`, `bad answer: …` — never the key; configured secrets
are masked and long tokens cut from server text).

Failure behaviour: 429/5xx/timeouts back off (the RestClient's state and Retry-After);
a rejected key (HTTP 401; HTTP 400 or a body code "400" saying "Invalid API key") is an
ERROR once and a slow retry (the key may be re-enabled); an interval the plan refuses
(HTTP 401 naming it, or HTTP 200 with code "401" "Upgrade plan") stops every job with one
ERROR naming CQT_COINGLASS_INTERVAL and what the plan allows — no retry loop — and the
program exits 78 (error_kind: the pure classification). Disabled, missing or
placeholder key: one line, exit 78, before anything starts.
"""
from __future__ import annotations

import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import click

from ... import exitcodes
from ...collector import config_or_exit, run_rest_poller
from ...config import ConfigError, Settings
from ...db import connect
from ...options import capture_option, db_option
from ...poll import NewestTimes, PollError, PollJob, PollLoop, RunResult, WindowLimit, error_code, failure_of
from ...poll.budget import BUDGET_FRACTION, Budget, JobKind, Plan, plan_intervals, spread_phase
from ...redact import redact
from ...rest import RestClient
from ...runtime import Service, load_settings_or_exit
from ...timeutil import now_ms
from ..common import INTERVALS, Reject, clip, interval_ms, store_sql
from ..registry import rest_answer_outcome
from . import call_endpoint, exchange, exchange_list, markets
from .parse import COINGLASS_ENDPOINTS, SRC

log = logging.getLogger("cqt.poll.coinglass")

SERVICE = "cqt-poll-coinglass"
SOURCE = SRC
MAX_LIMIT = 1000

#: plan -> (requests per minute, shortest interval allowed); coinglass-api-skills SKILL.md
PLANS = {
    "hobbyist": (30, "4h"),
    "startup": (80, "30m"),
    "standard": (300, "1m"),
    "professional": (1200, "1m"),
}
PLAN_LIMITS_TEXT = "Hobbyist 4h and longer (30 req/min), Startup 30m and longer (80 req/min), " \
                   "Standard and Professional every interval"

RATE = "coinglass_per_minute"

CALL_SQL = ("INSERT INTO coinglass_call_status (ts_ms, endpoint, http_status, ok, latency_ms, rows, error) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)")

_PLAN_RE = re.compile(r"plan|upgrade|subscri|permission|not (?:allowed|available|supported)|level", re.I)


def plan_refusal(text: str | None, interval: str) -> bool:
    """Does a Coinglass error message say the plan does not allow this request?"""
    if not text:
        return False
    return bool(_PLAN_RE.search(text)) or (interval in text and "interval" in text.lower())


@dataclass(frozen=True)
class CoinglassConfig:
    interval: str
    poll_s: float
    timeout_s: float
    exchange: str
    exchanges: str
    coins: tuple[str, ...]           # the coin of each asset (aggregated endpoints)
    pairs: tuple[str, ...]           # the pair of each asset, same order (per-exchange endpoints)
    plan: str | None
    per_minute: int
    backfill_s: int

    @classmethod
    def from_settings(cls, s: Settings, require_key: bool = True) -> "CoinglassConfig":
        """Raises ConfigError (exit 78): disabled, key missing/placeholder, bad values,
        an interval or a request rate the configured plan does not allow, a poll interval
        that needs more than 80 % of the rate for one coin (more coins stretch it instead).
        `require_key=False` (cqt synth) skips the enabled/key checks."""
        if require_key and not s.coinglass_enabled:
            raise ConfigError("COINGLASS_ENABLED", "Coinglass is disabled (set COINGLASS_ENABLED=true to poll it)")
        state = s.coinglass_key_state
        if require_key and state != "present":
            raise ConfigError("COINGLASS_API_KEY", "is missing" if state == "missing" else
                              "is a placeholder, not a real key (put your Coinglass API key in .env)")
        plan = s.get_str("CQT_COINGLASS_PLAN").strip().lower() or None
        if plan is not None and plan not in PLANS:
            raise ConfigError("CQT_COINGLASS_PLAN", f"{plan!r} is not one of {', '.join(PLANS)}")
        per_minute = s.get_int("CQT_COINGLASS_RATE_PER_MIN", PLANS[plan][0] if plan else PLANS["hobbyist"][0])
        coin_pairs = markets(s)
        cfg = cls(
            interval=s.coinglass_interval,
            poll_s=s.get_float("CQT_POLL_COINGLASS_S"),
            timeout_s=s.get_float("CQT_POLL_TIMEOUT_S"),
            exchange=exchange(s),
            exchanges=exchange_list(s),
            coins=tuple(c for c, _ in coin_pairs),
            pairs=tuple(p for _, p in coin_pairs),
            plan=plan,
            per_minute=per_minute,
            backfill_s=s.backfill_s,
        )
        if not cfg.exchanges:
            raise ConfigError("CQT_COINGLASS_EXCHANGES", "must list at least one exchange")
        if len(set(cfg.coins)) != len(cfg.coins):
            raise ConfigError("CQT_SYMBOLS", f"two assets map to one Coinglass coin: {', '.join(cfg.coins)}")
        if plan is not None:
            limit, shortest = PLANS[plan]
            if interval_ms(cfg.interval) < interval_ms(shortest):
                raise ConfigError("CQT_COINGLASS_INTERVAL", f"{cfg.interval} is not allowed by the {plan} plan "
                                  f"(shortest interval {shortest}; {PLAN_LIMITS_TEXT})")
            if per_minute > limit:
                raise ConfigError("CQT_COINGLASS_RATE_PER_MIN", f"{per_minute} exceeds the {plan} plan's "
                                  f"{limit} requests per minute")
        one = plan_intervals(cfg.kinds(), cfg.budgets(), 1)
        if one.over():
            n = len(COINGLASS_ENDPOINTS)
            raise ConfigError("CQT_POLL_COINGLASS_S", f"{cfg.poll_s:g} s with {n} endpoints is "
                              f"{one.demand[RATE]:.0f} requests per minute, over {BUDGET_FRACTION * 100:g} % of the "
                              f"plan limit of {cfg.per_minute} (CQT_COINGLASS_RATE_PER_MIN); poll every >= "
                              f"{math.ceil(n * 60.0 / one.allowed[RATE])} s")
        return cfg

    def kinds(self) -> list[JobKind]:
        return [JobKind(key, self.poll_s, {RATE: 1}) for key in COINGLASS_ENDPOINTS]

    def budgets(self) -> list[Budget]:
        return [Budget(RATE, self.per_minute, 60.0)]

    def rate_plan(self) -> Plan:
        """The intervals for all coins (computed from the rate, never from 429s)."""
        return plan_intervals(self.kinds(), self.budgets(), len(self.coins))

    def pair_of(self, coin: str) -> str:
        return self.pairs[self.coins.index(coin)]

    def params(self, key: str, coin: str) -> dict[str, Any]:
        """Request parameters of an endpoint for one coin (what the live poller sends)."""
        if key == "open_interest":
            return {"symbol": coin, "interval": self.interval}
        if key == "liquidations":
            return {"exchange_list": self.exchanges, "symbol": coin, "interval": self.interval}
        return {"exchange": self.exchange, "symbol": self.pair_of(coin), "interval": self.interval}


def job_name(coin: str, key: str) -> str:
    """`BTC@open_interest`: the job of one endpoint for one coin (logs, heartbeat, resume)."""
    return f"{coin}@{key}"


def error_kind(status: int | None, code: str | None, msg: str, interval: str) -> str | None:
    """What a Coinglass error answer means, from its HTTP status, the body's `code` (None when
    the body has none) and `msg`: "interval" (the plan refuses the interval), "endpoint" (the
    plan refuses this endpoint), "key" (the key is refused) or None (anything else).

    Both shapes of each are recognised: the ones cqt-sim has always served (HTTP 401 naming
    the interval) and the ones public client code reports from the real API (HTTP 200 with
    ``{"code":"401","msg":"Upgrade plan"}`` naming no interval, which on these endpoints is
    the interval; HTTP 400 or body code "400" "Invalid API key provided")."""
    if status is not None and (status == 429 or status >= 500):
        return None
    if plan_refusal(msg, interval):
        return "interval" if interval in msg or code == "401" else "endpoint"
    if status == 401 or code in ("401", "40001") or "api key" in msg.lower():
        return "key"
    return None


def classify(resp, parsed, interval: str, plan: str | None = None) -> tuple[bool, str | None, PollError | None]:
    """One answer -> (ok, short error for coinglass_call_status, PollError or None).

    `parsed` is the rest_answer_outcome result for a 2xx answer (None otherwise); `plan` the
    configured CQT_COINGLASS_PLAN (None: unknown), named in a plan refusal's advice."""
    fail = failure_of(resp)
    status = resp.status
    if fail is not None:
        if status is None:
            return False, fail.reason, fail
        msg = _server_msg(resp.text)
        body = error_code(resp.text)
        kind = error_kind(status, body[0] if body else None, msg, interval)
        if kind is not None:
            return _refusal(kind, status, msg, interval, plan)
        if status == 429:
            return False, "429 rate limited", fail
        if status >= 500:
            return False, f"{status} server error", fail
        return False, f"{status} {msg}".strip() if msg else f"{status} error", fail
    if isinstance(parsed, Reject):
        msg = parsed.detail or ""
        if parsed.reason.startswith("api_error"):
            code = parsed.reason.partition(":")[2]
            kind = error_kind(status, code, msg, interval)
            if kind is not None:
                return _refusal(kind, int(code) if code in ("400", "401") else 401, msg, interval, plan)
        if parsed.reason == "api_error:429":
            return False, "429 rate limited", PollError("429 rate limited", retry_after_s=60.0)
        err = f"bad answer: {parsed.reason}" + (f" {msg}" if msg else "")
        return False, err, PollError(f"bad answer: {parsed.reason}", msg or None)
    if parsed is None:
        return False, "bad answer: unparsable", PollError("bad answer: unparsable")
    return True, None, None


def _refusal(kind: str, status: int, msg: str, interval: str, plan: str | None):
    """The (ok, error, PollError) of a refused key or plan; `status` names a key refusal
    (`400 key rejected`, `401 key rejected`): the HTTP status or the body's code."""
    if kind == "key":
        err = f"{400 if status == 400 else 401} key rejected"
        return False, err, PollError(err, "Coinglass refused the API key: check COINGLASS_API_KEY",
                                     level=logging.ERROR)
    return False, _plan_error(msg), _plan_poll_error(msg, interval, plan, whole_plan=kind == "interval")


def _server_msg(text: str) -> str:
    code = error_code(text)
    if code:
        return code[1] or f"code {code[0]}"
    return clip(text, 120) if text and len(text) < 400 and not text.lstrip().startswith("<") else ""


def _plan_error(msg: str) -> str:
    return f"interval not allowed by plan: {msg}"[:200]


def plan_advice(plan: str | None, interval: str) -> str:
    """What the configured plan allows (from PLANS), or every plan's limits when it is unknown
    or when Coinglass refused an interval the configured plan should allow (the key's plan is
    then not the configured one)."""
    if plan not in PLANS:
        return f"plan limits: {PLAN_LIMITS_TEXT}"
    shortest = PLANS[plan][1]
    allows = "every interval" if shortest == "1m" else f"{shortest} and longer"
    text = f"the {plan} plan (CQT_COINGLASS_PLAN) allows {allows}"
    if interval in INTERVALS and INTERVALS[interval] >= interval_ms(shortest):
        text += f", so the key's plan is not {plan}; plan limits: {PLAN_LIMITS_TEXT}"
    return text


def _plan_poll_error(msg: str, interval: str, plan: str | None = None, whole_plan: bool = False) -> PollError:
    """An interval the plan refuses is refused on every endpoint: stop them all, once."""
    if whole_plan or interval in msg:
        return PollError("interval not allowed by plan",
                         f"Coinglass refused interval {interval} ({msg}); {plan_advice(plan, interval)}; "
                         "set CQT_COINGLASS_INTERVAL to an interval your plan allows",
                         disable_all=True, exit_code=exitcodes.CONFIG, level=logging.ERROR)
    return PollError("not allowed by plan", f"{msg}; this endpoint is not polled any more",
                     disable=True, exit_code=exitcodes.CONFIG, level=logging.ERROR)


class CoinglassPoller:
    """The four Coinglass jobs for every coin; `run()` polls until stopped (or nothing can work: 78)."""

    def __init__(self, svc: Service, cfg: CoinglassConfig, client: RestClient, *,
                 clock: Callable[[], int] = now_ms, mono: Callable[[], float] = time.monotonic):
        self.svc = svc
        self.cfg = cfg
        self.client = client
        self.clock = clock
        self.step_ms = interval_ms(cfg.interval)
        self.limit = WindowLimit(RATE, cfg.per_minute, 60.0, clock=mono)
        self.newest = NewestTimes()    # job name -> newest stored time (resume point)
        self.backfilled: set[str] = set()
        self.calls = {"total": 0, "ok": 0, "failed": 0}
        self._lock = threading.Lock()
        self.plan = cfg.rate_plan()
        jobs = self.jobs()
        self.loop = PollLoop(jobs, workers=min(8, max(2, len(cfg.coins))),
                             start_stagger_s=max(0.5, min(30.0, 0.1 * len(jobs))))

    def jobs(self) -> list[PollJob]:
        out = []
        n = len(COINGLASS_ENDPOINTS)
        for j, coin in enumerate(self.cfg.coins):
            for i, key in enumerate(COINGLASS_ENDPOINTS):
                iv = self.plan.intervals[key]
                # The endpoints a few seconds apart after the minute (a closed bar needs a moment
                # to be published), the coins of one endpoint spread over the interval.
                base = min(3.0 + i * min(5.0, iv / (n + 1)), iv * 0.9)
                out.append(PollJob(job_name(coin, key), iv, self._job(coin, key),
                                   phase_s=spread_phase(base, j, len(self.cfg.coins), iv),
                                   timeout_s=self.cfg.timeout_s * 3 + 5, client=self.client,
                                   limits=(self.limit,), max_backoff_s=600.0,
                                   run_at_start=self.plan.start_runs[key]))
        return out

    def _job(self, coin: str, key: str) -> Callable[[], RunResult]:
        return lambda: self.poll(coin, key)

    def load_resume_points(self) -> None:
        """Newest stored bar per job (endpoint and coin): none -> first-start backfill; old -> catch up."""
        conn = connect(self.svc.settings.db, readonly=True)
        c = self.cfg
        try:
            for coin in c.coins:
                pair = c.pair_of(coin)
                q = {
                    "open_interest": ("SELECT MAX(open_ts_ms) FROM coinglass_open_interest WHERE symbol=? "
                                      "AND interval=?", (coin, c.interval)),
                    "funding": ("SELECT MAX(open_ts_ms) FROM coinglass_funding WHERE exchange=? AND symbol=? "
                                "AND interval=?", (c.exchange, pair, c.interval)),
                    "liquidations": ("SELECT MAX(open_ts_ms) FROM coinglass_liquidations WHERE symbol=? AND "
                                     "exchanges=? AND interval=?", (coin, c.exchanges, c.interval)),
                    "long_short": ("SELECT MAX(open_ts_ms) FROM coinglass_long_short WHERE exchange=? "
                                   "AND symbol=? AND interval=?", (c.exchange, pair, c.interval)),
                }
                for key, (sql, args) in q.items():
                    self.newest[job_name(coin, key)] = conn.execute(sql, args).fetchone()[0]
        finally:
            conn.close()

    def run(self) -> int:
        line = self.plan.line("coins")
        if line:
            log.warning("%s", line)
        self.load_resume_points()
        return self.loop.run(self.svc)

    # ------------------------------------------------------------------ one poll
    def request_params(self, coin: str, key: str, now: int) -> dict[str, Any]:
        """Re-fetch the last two bars and the forming one; after a gap (first start,
        restart) ask from the resume point instead."""
        params = self.cfg.params(key, coin)
        name = job_name(coin, key)
        newest = self.newest.get(name)
        since = newest
        if newest is None and name not in self.backfilled:
            since = now - max(self.cfg.backfill_s * 1000, self.step_ms)
        bars_back = (now - since) // self.step_ms + 2 if since is not None else 3
        if bars_back > 3:
            params["start_time"] = since - since % self.step_ms
            params["end_time"] = now
            params["limit"] = int(min(MAX_LIMIT, bars_back + 1))
        else:
            params["limit"] = 3
        return params

    def poll(self, coin: str, key: str) -> RunResult:
        ep = COINGLASS_ENDPOINTS[key]
        name = job_name(coin, key)
        now = self.clock()
        params = self.request_params(coin, key, now)
        if self.limit.wait_s() > 0:
            raise PollError("rate limited", f"limit {self.limit.name}", retry_after_s=self.limit.wait_s(), calls=0,
                            deferred=True)
        self.limit.note()
        r = self.client.get(ep.path, params, wait=False, timeout_s=self.cfg.timeout_s)
        if r.status is None and (r.error or "").startswith(("blocked", "stopped")):
            raise failure_of(r)          # not sent: no call to record
        parsed = None
        if r.ok:
            parsed = rest_answer_outcome(SOURCE, ep.path, params, r.text, r.recv_ts_ms, None,
                                         self.svc.settings, r.status)
        ok, error, fail = classify(r, parsed, self.cfg.interval, self.cfg.plan)
        rows = 0
        if ok:
            if parsed.rows:
                self.svc.writer.put_many(store_sql(parsed.table), parsed.rows)
            rows = len(parsed.rows)
            self.newest.advance(name, parsed.event_ts_ms)
            self.backfilled.add(name)
        elif isinstance(parsed, Reject) and not parsed.reason.startswith("api_error"):
            self.svc.rejects.record(SOURCE, parsed.reason, r.text, symbol=coin)
        self.record_call(r, call_endpoint(ep.path, coin), ok, rows, error)
        self._count(coin, frames=1 if r.status is not None else 0, rows=rows,
                    rejects=1 if isinstance(parsed, Reject) else 0)
        if fail is not None:
            raise fail
        skipped = parsed.skipped_forming
        return RunResult(rows=rows, note=f"{skipped} forming bar(s) not stored" if skipped else None)

    def _count(self, coin: str, frames: int = 0, rows: int = 0, rejects: int = 0) -> None:
        self.svc.count(SOURCE, frames=frames, rows=rows, rejects=rejects)

    def record_call(self, r, endpoint: str, ok: bool, rows: int, error: str | None) -> None:
        """One coinglass_call_status row; `endpoint` is call_endpoint(path, coin)."""
        if error:
            error = redact(error, self.svc.settings.secrets, limit=200)
        ts = r.recv_ts_ms - r.elapsed_ms
        self.svc.writer.put(CALL_SQL, (ts, endpoint, r.status, 1 if ok else 0, r.elapsed_ms, rows, error))
        with self._lock:
            self.calls["total"] += 1
            self.calls["ok" if ok else "failed"] += 1

    def detail(self) -> dict:
        d = self.loop.detail()
        d["rest"] = self.client.rate.snapshot()
        d["calls"] = dict(self.calls)
        d["interval"] = self.cfg.interval
        d["requests_last_min"] = self.limit.used()
        d["plan"] = {"coins": len(self.cfg.coins), "intervals_s": dict(self.plan.intervals),
                     "requests_per_min": round(self.plan.usage[RATE], 1)}
        return d


def check_config(settings: Settings) -> CoinglassConfig:
    """Config or exit 78 with one line (used before anything starts)."""
    return config_or_exit(lambda: CoinglassConfig.from_settings(settings), SERVICE)


@click.command(name=SERVICE, context_settings={"help_option_names": ["-h", "--help"]})
@db_option(help="SQLite database (default: CQT_DB).")
@capture_option(help="Also record every REST answer to this capture file (JSON Lines; .gz compresses; "
                     "rotated daily; never the key).")
def main(db: str | None, capture_path: str | None) -> None:
    """Poll Coinglass v4: aggregated open interest, funding, aggregated liquidations and
    the global long/short account ratio, closed bars only; every call is recorded in
    coinglass_call_status.

    Needs COINGLASS_ENABLED=true and a real COINGLASS_API_KEY (exit 78 otherwise).
    Settings: docs/pollers.md."""
    settings = load_settings_or_exit(db=db)
    cfg = check_config(settings)
    run_rest_poller(SERVICE, SOURCE, settings, cfg, settings.coinglass_url, CoinglassPoller, capture_path,
                    headers={"CG-API-KEY": settings.coinglass_api_key})
