"""A virtual clock for cqt.poll.PollLoop tests: time moves only when the loop waits, and only
once every run in flight has finished or is asleep on that clock, so a schedule is exact and
nothing sleeps for real or depends on how busy the machine is. Runs still execute in the
loop's real worker threads.

    vt = VirtualTime()
    loop = make_loop(vt, jobs)          # PollLoop on vt's clocks, its wake-up event driven by vt
    svc, rc = run_for(loop, 600)        # ten virtual minutes
"""
from __future__ import annotations

import threading

from cqt.poll import PollLoop

SETTLE_S = 10.0          # real seconds a run in flight may take to finish or fall asleep


class VirtualTime:
    """A monotonic clock and a wall clock (ms) that advance only in the loop's wait, and
    the loop's wake-up event. `sleep` is what a run calls instead of time.sleep."""

    def __init__(self, wall_ms: int = 1_700_000_000_123):
        self.t = 1_000.0
        self._wall0_ms = wall_ms - self.t * 1000.0
        self._cond = threading.Condition()
        self._sleepers: dict[threading.Thread, float] = {}
        self._flag = False
        self._released = False
        self.loop: PollLoop | None = None
        self.svc = None
        self.end = float("inf")

    # clocks
    def monotonic(self) -> float:
        return self.t

    def wall_ms(self) -> int:
        return round(self._wall0_ms + self.t * 1000.0)

    def sleep(self, seconds: float) -> None:
        with self._cond:
            me = threading.current_thread()
            deadline = self.t + seconds
            self._sleepers[me] = deadline
            self._cond.notify_all()
            while self.t < deadline and not self._released:
                self._cond.wait(1.0)
            del self._sleepers[me]
            self._cond.notify_all()

    # the loop's wake-up event
    def set(self) -> None:
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def _busy(self) -> list:
        """Runs in flight that have neither finished nor fallen asleep until a later time."""
        return [j for j in self.loop.jobs if j.thread is not None and not j.done
                and not (self._released or self._sleepers.get(j.thread, self.t) > self.t)]

    def _settle(self) -> None:
        deadline = threading.Event()
        timer = threading.Timer(SETTLE_S, deadline.set)
        timer.start()
        try:
            while self._busy():
                assert not deadline.is_set(), f"runs neither finished nor slept: {self._busy()}"
                self._cond.wait(0.01)
        finally:
            timer.cancel()

    def wait(self, timeout: float) -> bool:
        with self._cond:
            self._settle()
            if not self._flag:
                # like a real timer, a wait never ends early (1 µs late, so "at least
                # d seconds later" holds despite float rounding)
                nxt = min(self._sleepers.values(), default=float("inf"))
                self.t = max(self.t, min(self.t + timeout + 1e-6, nxt, self.end))
                self._cond.notify_all()
                self._settle()
            if self.t >= self.end and not self.svc.stopping.is_set():
                # the run is over: stop the loop, and let sleeping runs finish at once
                self.svc.stopping.set()
                self._released = True
                self._cond.notify_all()
            return self._flag


class FakeSvc:
    def __init__(self):
        self.stopping = threading.Event()
        self.states: list[tuple[str, str]] = []
        self.stop_reason = ""
        self.alive_calls = 0

    def alive(self):
        self.alive_calls += 1

    def ready(self, status="running"):
        self.states.append(("ready", status))

    def set_state(self, state, status=None):
        if not self.states or self.states[-1] != (state, status):
            self.states.append((state, status))


def make_loop(vt: VirtualTime, jobs, **kw) -> PollLoop:
    loop = PollLoop(jobs, clock=vt.monotonic, wall_ms=vt.wall_ms, **kw)
    loop._wake = vt          # the loop's only real wait: driven by the virtual clock instead
    vt.loop = loop
    return loop


def run_for(loop: PollLoop, seconds: float) -> tuple[FakeSvc, int | None]:
    """Run the loop for `seconds` of virtual time (or until it returns by itself)."""
    vt = loop._wake
    svc = FakeSvc()
    vt.svc, vt.end = svc, vt.monotonic() + seconds
    rc = loop.run(svc)
    for j in loop.jobs:
        assert j.thread is None or not j.thread.is_alive(), "loop did not stop"
    return svc, rc
