"""Time helpers. Wall-clock time only for timestamps, monotonic time for timers.

`now_ms()` goes through `time.time()` at call time so freezegun can drive it.
"""
from __future__ import annotations

import re
import time
from datetime import datetime, timezone

_EPOCH_MS_RE = re.compile(r"^-?\d{10,}$")


def now_ms() -> int:
    return int(time.time() * 1000)


def mono() -> float:
    """Monotonic seconds: for backoff, stall detection, watchdog and batching."""
    return time.monotonic()


def parse_time_ms(text: str | int | float) -> int:
    """ISO-8601 (UTC when no zone is given) or epoch milliseconds -> epoch ms.

    A bare number of at least 10 digits is taken as epoch milliseconds; 'now' is the clock.
    """
    if isinstance(text, (int, float)):
        return int(text)
    s = str(text).strip()
    if not s:
        raise ValueError("empty time")
    if s.lower() == "now":
        return now_ms()
    if _EPOCH_MS_RE.match(s):
        return int(s)
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        raise ValueError(f"not an ISO-8601 time or epoch milliseconds: {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(round(dt.timestamp() * 1000))


def fmt_ms(ms: int | None) -> str:
    """Epoch ms -> '2026-11-24T01:02:03.456Z' (UTC); '-' for None."""
    if ms is None:
        return "-"
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def floor_ms(ms: int, step_ms: int) -> int:
    return ms - (ms % step_ms)
