"""HTTP outcomes: a RestResponse that is not a usable answer -> the PollError that names it,
and the Binance / Coinglass error envelope."""
from __future__ import annotations

import logging

import orjson

from ..venues.common import clip, token
from .jobs import PollError


def failure_of(resp) -> PollError | None:
    """A RestResponse that is not a usable answer -> the PollError that describes it
    (stable reason, Retry-After honoured), or None for a 2xx answer.

    Reasons: `timeout`, `connection refused` (… the RestClient's short error),
    `rate limited` (held back locally), `429 rate limited`, `418 banned` (ERROR),
    `http 5xx`, `http 4xx` (+ the server's error code when the body names one).
    """
    status = resp.status
    if status is not None and 200 <= status < 300:
        return None
    if status is None:
        err = resp.error or "no answer"
        if err.startswith("blocked"):
            return PollError("rate limited", err, calls=0, deferred=True)
        if err == "stopped":
            return PollError("stopped", calls=0, deferred=True)
        return PollError(err)
    headers = resp.headers or {}
    retry = _retry_after_s(headers)
    if status == 429 and retry is None and hasattr(headers, "get") and headers.get("Remaining-Req"):
        retry = 1.0      # a per-second budget (Upbit sends no Retry-After): the next window, not a minute
    if status == 451:
        return PollError("451 restricted location", "the venue refuses this host's location")
    if status == 429:
        return PollError("429 rate limited", f"Retry-After {retry:g} s" if retry is not None else None,
                         retry_after_s=retry)
    if status == 418:
        return PollError("418 banned", f"Retry-After {retry:g} s" if retry is not None else "no Retry-After",
                         retry_after_s=retry, level=logging.ERROR)
    if status >= 500:
        return PollError(f"http {status}")
    code = error_code(resp.text)
    return PollError(f"http {status}" + (f" code {code[0]}" if code else ""), code[1] if code else None)


def _retry_after_s(headers) -> float | None:
    v = headers.get("Retry-After") if hasattr(headers, "get") else None
    if v is None:
        return None
    try:
        s = float(str(v).strip())
    except ValueError:
        return None
    return s if 0 <= s < 10 * 86400 else None


def error_code(text: str) -> tuple[str, str] | None:
    """The error envelope of a REST answer, Binance {"code":-1121,"msg":…} / Coinglass
    {"code":"40001","msg":…} -> (code, msg); None when the body is not one."""
    try:
        obj = orjson.loads(text)
    except (orjson.JSONDecodeError, TypeError):
        return None
    if type(obj) is dict and "code" in obj:
        return token(obj.get("code")), clip(obj.get("msg", ""), 160)
    return None
