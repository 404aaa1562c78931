"""Time helpers. Wall-clock time only for timestamps, monotonic time for timers.

`now_ms()` goes through `time.time()` at call time so freezegun can drive it.
"""
from __future__ import annotations

import math
import re
import time
from datetime import datetime, timezone

_EPOCH_MS_RE = re.compile(r"^-?\d{10,}$")

# Every time a user gives is inside [2009-01-01, 2100-01-01) UTC: no market data this toolkit reads is
# older, and anything later is a typo (or a unit slip) that would make a loop or an allocation unbounded.
MIN_TIME_MS = 1_230_768_000_000     # 2009-01-01T00:00:00Z
MAX_TIME_MS = 4_102_444_800_000     # 2100-01-01T00:00:00Z (excluded)
_TIME_RANGE = "the accepted range (from 2009-01-01 up to, not including, 2100-01-01 UTC)"


def now_ms() -> int:
    return int(time.time() * 1000)


def mono() -> float:
    """Monotonic seconds: for backoff, stall detection, watchdog and batching."""
    return time.monotonic()


def _shown(text: object, limit: int = 40) -> str:
    s = repr(text)
    return s if len(s) <= limit else s[:limit] + f"... ({len(str(text))} characters)"


def check_time_ms(ms: int, text: object = None) -> int:
    """`ms` if inside the accepted range, else ValueError saying the range."""
    if not MIN_TIME_MS <= ms < MAX_TIME_MS:
        raise ValueError(f"{_shown(ms if text is None else text)} is outside {_TIME_RANGE}")
    return ms


def parse_time_ms(text: str | int | float) -> int:
    """ISO-8601 (UTC when no zone is given) or epoch milliseconds -> epoch ms, inside MIN/MAX_TIME_MS.

    A bare number of at least 10 digits is taken as epoch milliseconds; 'now' is the clock.
    Anything else, or a time outside the range, is a ValueError with a one-line message.
    """
    if isinstance(text, (int, float)):
        if isinstance(text, float) and not math.isfinite(text):
            raise ValueError(f"{text!r} is not a time")
        return check_time_ms(int(text), text)
    s = str(text).strip()
    if not s:
        raise ValueError("empty time")
    if s.lower() == "now":
        return check_time_ms(now_ms(), "now")
    if _EPOCH_MS_RE.match(s):
        if len(s.lstrip("-")) > 16:       # far outside the range; also keeps int() away from huge strings
            raise ValueError(f"{_shown(text)} is outside {_TIME_RANGE}")
        return check_time_ms(int(s), text)
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        ms = int(round(dt.timestamp() * 1000))
    except (ValueError, OverflowError):   # OverflowError: a zone offset pushing year 1 or 9999 out of range
        raise ValueError(f"not an ISO-8601 time or epoch milliseconds: {_shown(text)}") from None
    return check_time_ms(ms, text)


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$", re.IGNORECASE)

# No range is longer than the span of accepted times (2009-01-01 .. 2100-01-01).
MAX_DURATION_MS = MAX_TIME_MS - MIN_TIME_MS


def parse_duration_ms(text: str) -> int:
    """'1h', '24h', '30m', '90s', '7d' -> milliseconds (at least 1 s, at most MAX_DURATION_MS)."""
    m = _DURATION_RE.match(text) if len(text) <= 40 else None
    if not m:
        shown = repr(text) if len(text) <= 40 else f"{text[:40]!r}... ({len(text)} characters)"
        raise ValueError(f"{shown} is not a duration like 1h or 24h")
    mult = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2).lower()]
    value = float(m.group(1)) * mult
    if not value <= MAX_DURATION_MS:        # also inf, from a number too long for a float
        raise ValueError(f"{text.strip()!r} is longer than the span of accepted times "
                         f"(2009-01-01 .. 2100-01-01: at most {MAX_DURATION_MS // 86_400_000}d)")
    ms = int(value)
    if ms < 1000:
        raise ValueError("duration must be at least 1 s")
    return ms


def fmt_ms(ms: int | None) -> str:
    """Epoch ms -> '2026-11-24T01:02:03.456Z' (UTC); '-' for None; a time no datetime holds as '<n>ms'."""
    if ms is None:
        return "-"
    try:
        dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    except (OverflowError, ValueError, OSError):
        return f"{ms}ms"
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def floor_ms(ms: int, step_ms: int) -> int:
    return ms - (ms % step_ms)
