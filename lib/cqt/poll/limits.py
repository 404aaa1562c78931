"""WindowLimit: at most N requests in any sliding window, shared by the jobs behind one server-side limit."""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable


class WindowLimit:
    """At most `max_calls` requests in any `window_s` seconds (sliding window), shared by
    the jobs that hit one server-side limit. Thread-safe; monotonic clock."""

    def __init__(self, name: str, max_calls: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        if max_calls < 1 or window_s <= 0:
            raise ValueError("WindowLimit needs max_calls >= 1 and window_s > 0")
        self.name = name
        self.max_calls = max_calls
        self.window_s = window_s
        self.clock = clock
        self._calls: deque[float] = deque()
        self._lock = threading.Lock()

    def _trim(self, now: float) -> None:
        while self._calls and self._calls[0] <= now - self.window_s:
            self._calls.popleft()

    def wait_s(self, n: int = 1) -> float:
        """Seconds until `n` more calls fit (0 = now)."""
        with self._lock:
            now = self.clock()
            self._trim(now)
            over = len(self._calls) + n - self.max_calls
            if over <= 0:
                return 0.0
            if n > self.max_calls:
                return self.window_s
            return max(0.0, self._calls[over - 1] + self.window_s - now)

    def note(self, n: int = 1) -> None:
        with self._lock:
            now = self.clock()
            self._trim(now)
            self._calls.extend([now] * n)

    def acquire(self, stop: threading.Event, max_wait_s: float = 600.0) -> bool:
        """Wait (up to max_wait_s, or until `stop`) for room, then take one call. False = gave up."""
        end = self.clock() + max_wait_s
        while True:
            w = self.wait_s()
            if w <= 0:
                self.note()
                return True
            if self.clock() + w > end or stop.wait(min(w, 1.0)):
                return False

    def used(self) -> int:
        with self._lock:
            self._trim(self.clock())
            return len(self._calls)
