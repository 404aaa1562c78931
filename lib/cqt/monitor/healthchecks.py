"""The healthchecks.io ping protocol for a job that runs and ends (the check runner, the nightly).

    <url>/start?rid=R            when the job starts (sent in the background: it never delays the job)
    <url>/<exit code>?rid=R      when it ends (0 = success), the last <= 100 000 bytes of its
                                 output as the POST body (what healthchecks.io keeps)

`R` is one uuid per run, so the server pairs start and end even when two runs overlap. Every
ping is bounded by CQT_HC_TIMEOUT_S (in a thread: a server that accepts and never answers, or a
name that never resolves, costs at most that). A failed ping (refused, timeout, HTTP error, a
URL that is not http(s)) is one warning for the whole run and never changes the job's exit code;
after a ping that timed out no more are sent that run, so a dead server costs one timeout. The
URL holds the check's secret uuid (or ping key): logs show it masked.
"""
from __future__ import annotations

import logging
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .. import exitcodes
from ..config import ConfigError, Settings
from ..redact import redact
from .capture import CapturedOutput

log = logging.getLogger("cqt.monitor")

BODY_MAX_BYTES = 100_000     # healthchecks.io keeps this much of a ping's body


def ping_url(base: str, what: str, rid: str) -> str:
    """`base` + `/what`, with `rid` added to whatever query the base URL has."""
    parts = urlsplit(base)
    query = [*parse_qsl(parts.query, keep_blank_values=True), ("rid", rid)]
    return urlunsplit((parts.scheme, parts.netloc, f"{parts.path.rstrip('/')}/{what}", urlencode(query), ""))


def url_secrets(url: str) -> tuple[str, ...]:
    """What of a ping URL is secret: the path (uuid, or ping key and slug) and any user:password."""
    parts = urlsplit(url)
    out = [parts.path.strip("/")]
    if "@" in parts.netloc:
        out.append(parts.netloc.rsplit("@", 1)[0])
    return tuple(s for s in out if s)


class Pinger:
    """One run's pings to one healthchecks URL: `start()`, then `finish(code, body)`."""

    def __init__(self, url: str, timeout_s: float, secrets: tuple[str, ...] = (), job: str = "job"):
        self.url = url.strip()
        self.timeout_s = timeout_s
        self.job = job
        self.rid = str(uuid.uuid4())
        self.secrets = (*url_secrets(self.url), *secrets)
        self.warned = False
        self.gave_up = False          # a ping timed out: send no more this run
        self._start: tuple[threading.Thread, dict, float] | None = None
        scheme = urlsplit(self.url).scheme.lower()
        if scheme not in ("http", "https"):
            self._warn("/start", f"not an http(s) URL ({scheme or 'no scheme'}); no pings are sent")
            self.gave_up = True

    def masked(self, text: str) -> str:
        parts = urlsplit(self.url)
        host = parts.netloc.rsplit("@", 1)[-1]
        shown = f"{parts.scheme}://{host}/{'***' if parts.path.strip('/') else ''}"
        return redact(text.replace(self.url, shown), self.secrets)

    def _warn(self, what: str, reason: str) -> None:
        """The one warning of a run; later failures only at debug level."""
        text = self.masked(f"{self.job}: healthchecks ping {what} to {self.url} failed: {reason} "
                           "(the job's exit code is unchanged)")
        if self.warned:
            log.debug("%s", text)
            return
        self.warned = True
        log.warning("%s", text)

    def _send(self, what: str, body: bytes, outcome: dict) -> None:
        req = urllib.request.Request(ping_url(self.url, what, self.rid), data=body, method="POST",
                                     headers={"Content-Type": "text/plain; charset=utf-8", "User-Agent": "cqt"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                resp.read(1024)
                outcome["status"] = resp.status
        except urllib.error.HTTPError as exc:
            outcome["error"] = f"HTTP {exc.code} {exc.reason}"
        except (OSError, ValueError) as exc:   # refused, timeout, name not found, bad URL
            reason = getattr(exc, "reason", exc)
            if isinstance(exc, TimeoutError) or isinstance(reason, TimeoutError):
                outcome["timeout"] = True
            outcome["error"] = f"{type(exc).__name__}: {exc}"

    def _spawn(self, what: str, body: bytes) -> tuple[threading.Thread, dict]:
        outcome: dict = {}
        t = threading.Thread(target=self._send, args=(what, body, outcome), name=f"hc-{what}", daemon=True)
        t.start()
        return t, outcome

    def _wait(self, what: str, t: threading.Thread, outcome: dict, deadline: float) -> None:
        t.join(max(0.0, deadline - time.monotonic()))
        if t.is_alive() or outcome.get("timeout"):
            self.gave_up = True
            self._warn(what, f"no answer within CQT_HC_TIMEOUT_S={self.timeout_s:g} s; no more pings this run")
        elif "error" in outcome:
            self._warn(what, outcome["error"])
        else:
            log.debug("healthchecks ping %s sent (HTTP %s)", what, outcome.get("status"))

    def start(self) -> None:
        """Send /start in the background; finish() waits for it (so the server sees it first)."""
        if self.gave_up:
            return
        t, outcome = self._spawn("start", b"")
        self._start = (t, outcome, time.monotonic() + self.timeout_s)

    def finish(self, code: int, body: bytes = b"") -> None:
        """Send /<code> with `body` (cut to its last BODY_MAX_BYTES); bounded, never raises."""
        if self._start is not None:
            t, outcome, deadline = self._start
            self._start = None
            self._wait("/start", t, outcome, deadline)
        if self.gave_up:
            return
        code = code if 0 <= code <= 255 else exitcodes.FAIL
        t, outcome = self._spawn(str(code), body[-BODY_MAX_BYTES:])
        self._wait(f"/{code}", t, outcome, time.monotonic() + self.timeout_s)


def exit_code_of(exc: BaseException | None) -> int:
    """The exit code a job ending with `exc` gives the shell (None: it returned normally)."""
    if exc is None:
        return exitcodes.OK
    if isinstance(exc, SystemExit):
        if exc.code is None:
            return exitcodes.OK
        return exc.code if isinstance(exc.code, int) else exitcodes.FAIL
    code = getattr(exc, "exit_code", None)      # a click usage error: 2
    return code if isinstance(code, int) else exitcodes.FAIL


def pinger_for(settings: Settings, url_var: str, job: str) -> Pinger | None:
    """The run's Pinger when `url_var` is set, else None; a bad CQT_HC_TIMEOUT_S is one warning."""
    url = settings.get_str(url_var).strip()
    if not url:
        return None
    try:
        timeout_s = settings.get_float("CQT_HC_TIMEOUT_S")
    except ConfigError as exc:
        log.warning("%s: healthchecks pings off: %s (the job's exit code is unchanged)", job, exc)
        return None
    return Pinger(url, timeout_s, settings.secrets, job)


@contextmanager
def pinged_job(settings: Settings, url_var: str, job: str) -> Iterator[Pinger | None]:
    """Wrap a job: /start now, /<exit code> with the output's tail when the block ends (by
    sys.exit, return or an exception, which is re-raised). Nothing at all when `url_var` is unset."""
    pinger = pinger_for(settings, url_var, job)
    if pinger is None:
        yield None
        return
    capture = CapturedOutput(BODY_MAX_BYTES)
    pinger.start()
    ended: BaseException | None = None
    try:
        with capture:
            yield pinger
    except BaseException as exc:
        ended = exc
        raise
    finally:
        body = capture.tail.tail_bytes(redact(capture.tail.text(), pinger.secrets))
        try:
            pinger.finish(exit_code_of(ended), body)
        except Exception as exc:  # noqa: BLE001 - monitoring never changes the job's outcome
            print(f"{job}: healthchecks ping failed: {type(exc).__name__}", file=sys.stderr)
