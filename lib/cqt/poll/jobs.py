"""What a poller hands the loop: PollJob, and what a run reports back (RunResult, PollError);
JobStatus, a job's counters for heartbeats; NewestTimes, the resume points of a poller's jobs."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from .limits import WindowLimit


class PollError(Exception):
    """A run failed. `reason` is short and stable (it is the job's failure state: the same
    reason twice is one state, logged once); `detail` is free text for the log.

    retry_after_s  do not run this job again before this many seconds
    disable        stop polling this job for good (logged once, as an ERROR)
    disable_all    stop every job of the loop (a condition they all share, e.g. an API
                   plan that refuses the configured interval): one ERROR, then exit
    exit_code      with disable: the code the loop returns once every job is disabled
    level          logging level of the state-change line (default WARNING)
    calls / rows   what the run did before failing (counted in the job's status)
    deferred       nothing was sent (held back locally by a rate limit): not a failure,
                   the job just runs again after retry_after_s
    """

    def __init__(self, reason: str, detail: str | None = None, *, retry_after_s: float | None = None,
                 disable: bool = False, disable_all: bool = False, exit_code: int = 0,
                 level: int = logging.WARNING, calls: int = 1, rows: int = 0, deferred: bool = False):
        super().__init__(reason if not detail else f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retry_after_s = retry_after_s
        self.disable = disable or disable_all
        self.disable_all = disable_all
        self.exit_code = exit_code
        self.level = level
        self.calls = calls
        self.rows = rows
        self.deferred = deferred


@dataclass
class RunResult:
    """What a successful run did; a job fn may also just return the number of rows."""
    rows: int = 0
    calls: int = 1
    note: str | None = None        # e.g. "backfilled 3 periods" (heartbeat, not logged)


@dataclass
class PollJob:
    """One periodic call (or small group of calls) of a poller.

    fn()          runs the call(s), stores rows, returns rows (int) or RunResult; raises
                  PollError on failure. Runs in a worker thread.
    interval_s    time between slots
    phase_s       slots sit at wall-clock multiples of interval_s plus this offset
    timeout_s     a run longer than this is reported stuck (HTTP timeouts end it)
    jitter_s      random start delay after each slot (default min(1 s, 5 % of interval))
    client        RestClient whose rate-limit state gates the job (or None)
    limits        WindowLimits the job's calls count against (checked before a run;
                  fn takes the calls with WindowLimit.acquire/note)
    max_backoff_s ceiling of the failure backoff
    run_at_start  first run right after start (staggered), not at the first slot
    """
    name: str
    interval_s: float
    fn: Callable[[], Any]
    phase_s: float = 0.0
    timeout_s: float = 30.0
    jitter_s: float | None = None
    client: Any = None
    limits: Sequence[WindowLimit] = ()
    max_backoff_s: float = 300.0
    run_at_start: bool = True


@dataclass
class JobStatus:
    """Per-job counters and state for heartbeats (times are wall-clock ms)."""
    state: str = "scheduled"          # scheduled | running | ok | failing | stuck | waiting | disabled
    runs: int = 0
    calls: int = 0
    rows: int = 0
    errors: int = 0
    consecutive_errors: int = 0
    missed: int = 0                   # slots skipped because a run overran or the loop stalled
    last_ok_ms: int | None = None
    last_error_ms: int | None = None
    last_error: str | None = None
    last_run_ms: int | None = None
    last_latency_ms: int | None = None
    failing_since_ms: int | None = None
    note: str | None = None
    disabled_reason: str | None = None
    exit_code: int = 0


class NewestTimes(dict):
    """Per job, the newest stored time (the resume point), advanced from several job threads."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def advance(self, key: str, ts: int | None) -> None:
        if ts is None:
            return
        with self._lock:
            cur = self.get(key)
            if cur is None or ts > cur:
                self[key] = ts
