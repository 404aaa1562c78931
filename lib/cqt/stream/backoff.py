"""Pacing of reconnects: exponential backoff with full jitter, one new connection per interval
across all endpoints (ConnectPacer), and a failure logged once per change."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from tenacity import wait_random_exponential


class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base*2^(n-1)))."""

    def __init__(self, base_s: float, cap_s: float, reset_s: float):
        self.base_s = base_s
        self.cap_s = cap_s
        self.reset_s = reset_s
        self.attempt = 0
        self._wait = wait_random_exponential(multiplier=base_s, max=cap_s)

    def ceiling(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** min(attempt - 1, 60))

    def next_delay(self) -> tuple[int, float, float]:
        """(attempt number, delay s, ceiling s) for the next attempt."""
        self.attempt += 1
        return self.attempt, float(self._wait(_Attempt(self.attempt))), self.ceiling(self.attempt)

    def connection_ended(self, uptime_s: float) -> None:
        """A connection that stayed up long enough resets the attempt count."""
        if uptime_s >= self.reset_s:
            self.attempt = 0


class _Attempt:
    __slots__ = ("attempt_number",)

    def __init__(self, n: int):
        self.attempt_number = n


class ConnectPacer:
    """At most one new connection per `interval_s`, shared by every endpoint of a loop.

    Binance budgets new connections per IP (about one a second during a reconnect storm is
    the safe pace); when a drop takes several connections down at once their attempts are
    spread out instead of arriving together. `reserve()` hands out slots in order (the
    caller waits the returned delay); `try_take()` takes the slot only if it is free now
    (a planned rollover, which can simply come back later). Thread-safe."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.interval_s = max(0.0, interval_s)
        self.clock = clock
        self._next = float("-inf")
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Take the next free slot; returns how long to wait before connecting (0 = now)."""
        with self._lock:
            now = self.clock()
            slot = max(now, self._next)
            self._next = slot + self.interval_s
            return slot - now

    def try_take(self) -> float:
        """0 and the slot taken when one is free now; else the seconds until one is (nothing taken)."""
        with self._lock:
            now = self.clock()
            if now >= self._next:
                self._next = now + self.interval_s
                return 0.0
            return self._next - now


class RepeatedLog:
    """A failure logged once when it starts or changes; the same failure again at most
    once per `every_s`, with how often it recurred. `ended()` reports the end of a run of
    failures. Keeps an endpoint that cannot connect from writing a line per attempt."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self.key: str | None = None
        self.repeats = 0          # since the last line
        self.total = 0            # in the current run of failures
        self.since = 0.0

    def failed(self, key: str, line: str) -> None:
        now = self.clock()
        self.total += 1
        if key != self.key:
            self.key, self.repeats, self.since = key, 0, now
            self.logger.warning("%s", line)
        elif now - self.since >= self.every_s:
            self.logger.warning("%s (%d more times in the last %.0f s)", line, self.repeats + 1, now - self.since)
            self.repeats, self.since = 0, now
        else:
            self.repeats += 1

    def ended(self, line: str) -> None:
        if self.key is not None:
            self.logger.warning("%s after %d failed attempts", line, self.total)
        self.key, self.repeats, self.total = None, 0, 0
