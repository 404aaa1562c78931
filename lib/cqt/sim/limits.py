"""Request counters of cqt-sim's venue limits. Time is always passed in (seconds), so
the rules are tested with a made-up clock."""
from __future__ import annotations

import math
from collections import deque


class Limiter:
    """Fixed-window request counter: windows start at multiples of window_s."""

    def __init__(self, limit: int, window_s: float):
        self.limit = limit
        self.window_s = window_s
        self.win_start = 0.0
        self.used = 0

    def add(self, n: int, now: float) -> int:
        w = now - now % self.window_s
        if w != self.win_start:
            self.win_start, self.used = w, 0
        self.used += n
        return self.used

    def reset_in(self, now: float) -> int:
        return max(1, math.ceil(self.win_start + self.window_s - now))


class SlidingCount:
    """Events in the last window_s seconds (a connect rate)."""

    def __init__(self, window_s: float = 1.0):
        self.window_s = window_s
        self.times: deque = deque()

    def count(self, now: float) -> int:
        dq = self.times
        while dq and now - dq[0] > self.window_s:
            dq.popleft()
        return len(dq)

    def add(self, now: float) -> None:
        self.times.append(now)
