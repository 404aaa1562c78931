"""A small HTTP helper on `requests` shared by the REST backfills and the pollers.

One `RestClient` per remote service (Binance REST, Upbit REST, Coinglass). It

* sends every request with a timeout, from one pooled `requests.Session`;
* never raises for HTTP or network errors: `get()` returns a `RestResponse` whose
  `status` is the HTTP status, or None when there was no answer (`error` says why);
* keeps the service's rate-limit state in a `RateLimitState`: 429 stops requests until
  `Retry-After`, 418 is a long ban (logged as an ERROR), 5xx / timeouts back off
  exponentially with full jitter, Binance `X-MBX-USED-WEIGHT-1m`, Upbit `Remaining-Req`
  and Coinglass `API-KEY-USE-LIMIT` slow down before the budget runs out — so a caller
  looping on `get()` can never spin;
* records each answer in a capture file when given one (`cqt.capture`); headers are
  never recorded, and configured secrets are masked in what is.

    rc = RestClient(settings.binance_rest_url, name="binance_rest", timeout_s=10)
    r = rc.get("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "fromId": 5, "limit": 1000})
    if r.ok:
        rows = parse_agg_trades_rest(r.text, "BTCUSDT", r.recv_ts_ms)

Timers use the monotonic clock (`clock`); `recv_ts_ms` comes from `wall_ms`
(default `cqt.timeutil.now_ms`, freezegun-aware).
"""
from __future__ import annotations

import logging
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import orjson
import requests

from .redact import redact
from .timeutil import now_ms

log = logging.getLogger("cqt.rest")

#: defaults (seconds)
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_RETRY_AFTER_S = 60.0       # 429 without a usable Retry-After nor a Remaining-Req header
SECOND_WINDOW_JITTER_CAP_S = 8.0   # 429 by Remaining-Req (Upbit): next second + jitter that grows per repeat
DEFAULT_LOCATION_BACKOFF_S = 3600.0  # 451 when the caller passes no setting (CQT_REST_LOCATION_BACKOFF_S)
DEFAULT_BAN_S = 300.0              # 418 without a usable Retry-After
MIN_BAN_S = 120.0                  # Binance's shortest 418 ban is 2 minutes
ERROR_BACKOFF_BASE_S = 1.0         # 5xx / timeouts: full jitter in [0, min(cap, base*2^n)]
ERROR_BACKOFF_CAP_S = 60.0
BINANCE_WEIGHT_LIMIT_1M = 2400     # USD-M futures REQUEST_WEIGHT per minute (exchangeInfo)
WEIGHT_SOFT_FRACTION = 0.9         # stop at 90 % of the minute's budget

_REMAINING_SEC_RE = re.compile(r"sec=(\d+)")


@dataclass
class RestResponse:
    """What a request produced. `status` None = no HTTP answer (timeout, refused …)."""
    status: int | None
    headers: Mapping[str, str]
    text: str
    elapsed_ms: int
    recv_ts_ms: int
    path: str
    params: dict
    error: str | None = None         # short reason when not a 2xx answer (never a secret)
    waited_s: float = 0.0            # time spent waiting for the rate limiter before sending

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def json(self) -> Any:
        """The body decoded (orjson). Raises ValueError for a body that is not JSON."""
        return orjson.loads(self.text)


class RateLimitState:
    """When the next request may go out, from what the server said so far.

    All times are monotonic seconds from `clock`. Thread-safe.
    """

    def __init__(self, name: str = "rest", *, clock: Callable[[], float] = time.monotonic,
                 wall_ms: Callable[[], int] = now_ms, weight_limit_1m: int | None = BINANCE_WEIGHT_LIMIT_1M,
                 soft_fraction: float = WEIGHT_SOFT_FRACTION, error_base_s: float = ERROR_BACKOFF_BASE_S,
                 error_cap_s: float = ERROR_BACKOFF_CAP_S, rng: random.Random | None = None,
                 location_backoff_s: float = DEFAULT_LOCATION_BACKOFF_S):
        self.name = name
        self.clock = clock
        self.wall_ms = wall_ms
        self.weight_limit_1m = weight_limit_1m
        self.soft_fraction = soft_fraction
        self.error_base_s = error_base_s
        self.error_cap_s = error_cap_s
        self.rng = rng or random.Random()
        self.location_backoff_s = location_backoff_s
        self.consecutive_429 = 0          # repeated 429s answered by Remaining-Req: growing jitter
        self._lock = threading.Lock()
        self.blocked_until = 0.0          # monotonic; no request before this
        self.block_reason = ""
        self.banned_until = 0.0           # 418
        self.used_weight_1m: int | None = None
        self.consecutive_errors = 0
        self.counts = {"requests": 0, "ok": 0, "http_429": 0, "http_418": 0, "http_451": 0, "http_5xx": 0,
                       "http_other": 0, "no_answer": 0}

    # -- queries ------------------------------------------------------------------------
    def wait_s(self) -> float:
        """Seconds to wait before the next request (0 = go)."""
        with self._lock:
            return max(0.0, self.blocked_until - self.clock())

    @property
    def banned(self) -> bool:
        return self.banned_until > self.clock()

    def snapshot(self) -> dict:
        """For heartbeats: counters, current wait, used weight."""
        with self._lock:
            return {**self.counts, "wait_s": round(max(0.0, self.blocked_until - self.clock()), 1),
                    "block_reason": self.block_reason or None, "used_weight_1m": self.used_weight_1m,
                    "banned": self.banned_until > self.clock()}

    # -- updates --------------------------------------------------------------------------
    def _block(self, seconds: float, reason: str) -> None:
        until = self.clock() + max(0.0, seconds)
        if until > self.blocked_until:
            self.blocked_until = until
            self.block_reason = reason

    def _error_backoff(self) -> float:
        self.consecutive_errors += 1
        ceiling = min(self.error_cap_s, self.error_base_s * 2 ** min(self.consecutive_errors - 1, 30))
        return self.rng.uniform(0.0, ceiling)

    def note_no_answer(self, error: str) -> float:
        """A timeout / refused connection: back off like a 5xx. Returns the delay."""
        with self._lock:
            self.counts["requests"] += 1
            self.counts["no_answer"] += 1
            d = self._error_backoff()
            self._block(d, f"no answer: {error}")
            return d

    def note_response(self, status: int, headers: Mapping[str, str]) -> float:
        """Update from an HTTP answer; returns the wait it imposes (0 = none)."""
        with self._lock:
            self.counts["requests"] += 1
            wait = 0.0
            if status == 429:
                self.counts["http_429"] += 1
                self.consecutive_429 += 1
                wait = self._wait_after_429(headers)
                self._block(wait, "429 too many requests")
            elif status == 451:
                # The venue refuses this host's location: retrying soon cannot succeed.
                self.counts["http_451"] += 1
                wait = self.location_backoff_s
                self._block(wait, "451 restricted location")
            elif status == 418:
                self.counts["http_418"] += 1
                wait = max(MIN_BAN_S, _retry_after(headers, DEFAULT_BAN_S))
                self.banned_until = max(self.banned_until, self.clock() + wait)
                self._block(wait, "418 banned")
            elif status >= 500:
                self.counts["http_5xx"] += 1
                wait = self._error_backoff()
                self._block(wait, f"http {status}")
            else:
                self.consecutive_errors = 0
                self.consecutive_429 = 0
                self.counts["ok" if 200 <= status < 300 else "http_other"] += 1
            wait = max(wait, self._budget(headers))
            return wait

    def _wait_after_429(self, headers: Mapping[str, str]) -> float:
        """Retry-After when given; else, for a service that sends Remaining-Req (Upbit: a
        per-second budget, no Retry-After), the start of the next second window plus a jitter
        that grows with repeated 429s; else the flat default."""
        if _retry_after(headers, -1.0) >= 0:
            return _retry_after(headers, DEFAULT_RETRY_AFTER_S)
        if headers.get("Remaining-Req"):
            to_next_second = 1.0 - (self.wall_ms() % 1000) / 1000.0
            ceiling = min(SECOND_WINDOW_JITTER_CAP_S, 0.25 * 2 ** min(self.consecutive_429 - 1, 30))
            return to_next_second + self.rng.uniform(0.0, ceiling)
        return DEFAULT_RETRY_AFTER_S

    def _budget(self, headers: Mapping[str, str]) -> float:
        """Slow down before the server's budget is spent (weight / remaining headers)."""
        wait = 0.0
        used = _int_header(headers, "X-MBX-USED-WEIGHT-1m") or _int_header(headers, "X-MBX-USED-WEIGHT-1M")
        if used is not None:
            self.used_weight_1m = used
            if self.weight_limit_1m and used >= self.weight_limit_1m * self.soft_fraction:
                wait = self._to_next_minute()
                self._block(wait, f"used weight {used}/{self.weight_limit_1m} this minute")
        remaining = headers.get("Remaining-Req")
        if remaining:
            m = _REMAINING_SEC_RE.search(remaining)
            if m and int(m.group(1)) <= 0:
                w = 1.0 - (self.wall_ms() % 1000) / 1000.0
                self._block(w, "Remaining-Req sec=0")
                wait = max(wait, w)
        cg_max = _int_header(headers, "API-KEY-MAX-LIMIT")
        cg_use = _int_header(headers, "API-KEY-USE-LIMIT")
        if cg_max and cg_use is not None and cg_use >= cg_max:
            w = self._to_next_minute()
            self._block(w, f"api key limit {cg_use}/{cg_max} this minute")
            wait = max(wait, w)
        return wait

    def _to_next_minute(self) -> float:
        return 60.0 - (self.wall_ms() % 60_000) / 1000.0 + 0.5


def _int_header(headers: Mapping[str, str], name: str) -> int | None:
    v = headers.get(name)
    if v is None:
        return None
    try:
        return int(str(v).strip())
    except ValueError:
        return None


def _retry_after(headers: Mapping[str, str], default: float) -> float:
    v = headers.get("Retry-After")
    if v is None:
        return default
    try:
        s = float(str(v).strip())
    except ValueError:
        return default  # an HTTP date: rare here; the default is safe
    return s if 0 <= s < 10 * 86400 else default


@dataclass
class RestClient:
    """GET requests against one base URL with timeouts, rate-limit state and capture.

    `sleep(seconds) -> bool` waits before a request the limiter holds back; it returns True
    when the program is stopping (then `get` returns at once with error "stopped"). Pass
    `svc.sleep` from a Service so waits keep the watchdog fed and honour SIGTERM.
    """
    base_url: str
    name: str = "rest"
    timeout_s: float = DEFAULT_TIMEOUT_S
    capture: Any = None                       # cqt.capture.CaptureWriter or None
    clock: Callable[[], float] = time.monotonic
    wall_ms: Callable[[], int] = now_ms
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)   # e.g. CG-API-KEY: never logged
    secrets: tuple[str, ...] = field(default=(), repr=False)
    sleep: Callable[[float], bool] | None = None
    max_wait_s: float = 600.0                 # longer holds return "blocked" instead of waiting
    rate: RateLimitState | None = None
    ca_bundle: str | None = None              # CA file for https:// (Settings.ca_bundle); None: the system's
    location_backoff_s: float = DEFAULT_LOCATION_BACKOFF_S   # hold after a 451 (restricted location)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")
        self.session = requests.Session()
        # Passed with every request: requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE override a
        # Session's own `verify`, so the configured bundle would silently lose to the environment.
        self.verify: str | bool = self.ca_bundle or True
        self.session.headers.update({"User-Agent": "cqt/1", "Accept": "application/json"})
        self.session.headers.update(dict(self.headers))
        if self.rate is None:
            self.rate = RateLimitState(self.name, clock=self.clock, wall_ms=self.wall_ms,
                                       location_backoff_s=self.location_backoff_s)
        secrets = tuple(s for s in self.secrets if s)
        secrets += tuple(v for v in self.headers.values() if v and len(str(v)) >= 4)
        self.secrets = tuple(dict.fromkeys(secrets))
        self._stop = threading.Event()
        if self.sleep is None:
            self.sleep = self._stop.wait
        self._failures = 0                    # consecutive failed calls (429, 5xx, no answer)
        self._failing_since = 0.0
        self._last_failure = ""

    def close(self) -> None:
        self._stop.set()
        self.session.close()

    def __enter__(self) -> "RestClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _redact(self, text: str, limit: int | None = None) -> str:
        """`text` with this client's secrets (and pieces of them) masked, then cut to `limit`."""
        return redact(text, self.secrets, limit=limit)

    def get(self, path: str, params: Mapping[str, Any] | None = None, *, wait: bool = True,
            timeout_s: float | None = None, headers: Mapping[str, str] | None = None) -> RestResponse:
        """GET base_url + path. Never raises for HTTP/network errors (see RestResponse)."""
        params = {k: v for k, v in (params or {}).items() if v is not None}
        waited = 0.0
        hold = self.rate.wait_s()
        if hold > 0:
            if not wait or hold > self.max_wait_s:
                return self._synthetic(path, params, f"blocked {hold:.0f} s: {self.rate.block_reason}", waited)
            while hold > 0:
                t0 = self.clock()
                if self.sleep(hold):
                    return self._synthetic(path, params, "stopped", waited + self.clock() - t0)
                waited += self.clock() - t0
                hold = self.rate.wait_s()
        url = self.base_url + path
        t0 = self.clock()
        try:
            resp = self.session.get(url, params=params, timeout=timeout_s or self.timeout_s, headers=headers,
                                    verify=self.verify)
        except requests.Timeout:
            return self._no_answer(path, params, "timeout", t0, waited)
        except requests.ConnectionError as exc:
            return self._no_answer(path, params, _conn_reason(exc), t0, waited)
        except requests.RequestException as exc:
            return self._no_answer(path, params, type(exc).__name__, t0, waited)
        elapsed_ms = int((self.clock() - t0) * 1000)
        recv = self.wall_ms()
        try:
            text = resp.text
        except Exception:  # noqa: BLE001 - broken encoding / truncated body
            text = resp.content.decode("utf-8", "replace")
        status = resp.status_code
        hdrs = resp.headers
        imposed = self.rate.note_response(status, hdrs)
        error = None
        if status == 429:
            error = f"429 rate limited, retry after {imposed:.0f} s"
            self._failed(path, f"rate limited (429) retry_after_s={imposed:.0f}")
        elif status == 418:
            error = f"418 banned for {imposed:.0f} s"
            log.error("IP BANNED (418) by %s: no requests for %.0f s; path=%s — requests went on after 429s",
                      self.name, imposed, path)
            self._failed(path, f"banned (418) for {imposed:.0f} s", logged=True)
        elif status == 451:
            error = f"http 451 restricted location, retry after {imposed:.0f} s"
            if self._failures == 0:
                log.error("%s", location_refused_message(self.name))
            self._failed(path, f"restricted location (451) backoff_s={imposed:.0f}", logged=self._failures == 0)
        elif status >= 500:
            error = f"http {status}"
            self._failed(path, f"server error status={status} backoff_s={imposed:.1f}")
        else:
            if status >= 300:
                error = f"http {status}"
            self._answered()
        if self.capture is not None:
            self.capture.rest(self.name, path, params, status, text, recv)
        return RestResponse(status, hdrs, text, elapsed_ms, recv, path, params, error, waited)

    def _no_answer(self, path: str, params: dict, reason: str, t0: float, waited: float) -> RestResponse:
        delay = self.rate.note_no_answer(reason)
        self._failed(path, f"no answer error={reason} backoff_s={delay:.1f}")
        return RestResponse(None, {}, "", int((self.clock() - t0) * 1000), self.wall_ms(), path, params,
                            reason, waited)

    # Failure logging: every failed call at DEBUG; a WARNING only when the state changes —
    # the first failure after a success, and the recovery (with how many calls failed).
    # The 418 ban is an ERROR every time. The pollers' loops log their own job states.
    def _failed(self, path: str, what: str, logged: bool = False) -> None:
        self._last_failure = what
        if self._failures == 0:
            self._failing_since = self.clock()
            if not logged:
                log.warning("requests failing name=%s path=%s %s (further failures at DEBUG until one succeeds)",
                            self.name, path, what)
        elif not logged:
            log.debug("request failed name=%s path=%s %s failures=%d", self.name, path, what, self._failures + 1)
        self._failures += 1

    def _answered(self) -> None:
        if self._failures:
            log.warning("requests recovered name=%s failed_calls=%d failing_s=%.0f last=%s", self.name,
                        self._failures, self.clock() - self._failing_since, self._last_failure)
            self._failures = 0

    @property
    def consecutive_failures(self) -> int:
        """Failed calls (429, 418, 5xx, no answer) since the last answer that was not one."""
        return self._failures

    def _synthetic(self, path: str, params: dict, reason: str, waited: float) -> RestResponse:
        return RestResponse(None, {}, "", 0, self.wall_ms(), path, params, reason, waited)


def location_refused_message(service: str) -> str:
    """The one ERROR line for an HTTP 451 (REST or WebSocket handshake)."""
    return (f"http 451: {service} refuses requests from this host's location (restricted location); "
            "run cqt from a permitted region")


def _conn_reason(exc: BaseException) -> str:
    text = str(exc).lower()
    if "certificate verify failed" in text or "certificate_verify_failed" in text:
        return "tls certificate not trusted (set CQT_CA_BUNDLE to the issuing CA)"
    if isinstance(exc, requests.exceptions.SSLError):
        return "tls handshake failed"
    if "refused" in text:
        return "connection refused"
    if "reset" in text:
        return "connection reset"
    if "name or service" in text or "resolve" in text:
        return "dns failure"
    if "remote end closed" in text or "remotedisconnected" in text:
        return "connection closed"
    return "connection error"
