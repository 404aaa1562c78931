"""PollLoop: slots, runs in worker threads, rate-limit gates, backoff, state-change logging
(see the package docstring)."""
from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from ..timeutil import now_ms
from .jobs import JobStatus, PollError, PollJob, RunResult

log = logging.getLogger("cqt.poll")

MIN_INTERVAL_S = 0.2       # nothing polls faster: no tight loop, whatever the settings say
TICK_S = 0.25              # the loop wakes at least this often (stop requests, alive pings)
STOP_GRACE_S = 1.5         # on stop, wait this long for runs in flight
DETAIL_MAX_JOBS = 64       # heartbeat detail lists every job up to this many, then only the unwell ones
QUIET_STATES = ("scheduled", "running", "ok")
STATUS_MAX_FAILING = 8     # the status line names this many failing jobs, then "and N more"


@dataclass
class _Job:
    spec: PollJob
    status: JobStatus = field(default_factory=JobStatus)
    slot: float = 0.0                 # monotonic time of the current/next slot
    next_start: float = 0.0           # slot + jitter, or later (backoff, rate limit)
    thread: threading.Thread | None = None
    started: float = 0.0
    result: Any = None
    error: BaseException | None = None
    done: bool = False
    stuck_logged: bool = False
    wait_reason: str | None = None


class PollLoop:
    """Runs PollJobs until `svc.stopping` is set (or every job is disabled)."""

    def __init__(self, jobs: Iterable[PollJob], *, workers: int = 2, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic, wall_ms: Callable[[], int] = now_ms,
                 start_stagger_s: float = 0.5, detail_max_jobs: int = DETAIL_MAX_JOBS):
        self.jobs = [_Job(j) for j in jobs]
        names = [j.spec.name for j in self.jobs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate job names: {names}")
        self.workers = max(1, workers)
        self.rng = rng or random.Random()
        self.clock = clock
        self.wall_ms = wall_ms
        self.start_stagger_s = start_stagger_s
        self.detail_max_jobs = detail_max_jobs
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self.started_ms: int | None = None

    # ------------------------------------------------------------------ scheduling maths
    def _interval(self, job: _Job) -> float:
        return max(MIN_INTERVAL_S, job.spec.interval_s)

    def _jitter(self, job: _Job) -> float:
        j = job.spec.jitter_s
        if j is None:
            j = min(1.0, 0.05 * self._interval(job))
        return self.rng.uniform(0.0, j) if j > 0 else 0.0

    def first_slot(self, job: _Job, mono_now: float, wall_now_ms: int) -> float:
        """The first aligned slot strictly after now (monotonic time)."""
        iv_ms = self._interval(job) * 1000.0
        phase_ms = (job.spec.phase_s * 1000.0) % iv_ms
        k = (wall_now_ms - phase_ms) // iv_ms + 1
        slot_wall = k * iv_ms + phase_ms
        return mono_now + (slot_wall - wall_now_ms) / 1000.0

    def next_slot_after(self, job: _Job, t: float) -> tuple[float, int]:
        """The first slot after max(t, current slot) on the job's grid, and how many slots
        were skipped (missed) on the way."""
        iv = self._interval(job)
        slot = job.slot
        if t < slot:
            return slot, 0
        k = int((t - slot) // iv) + 1
        return slot + k * iv, k - 1

    # ------------------------------------------------------------------ the loop
    def run(self, svc) -> int:
        now = self.clock()
        wall = self.wall_ms()
        self.started_ms = wall
        immediate = [j for j in self.jobs if j.spec.run_at_start]
        for job in self.jobs:
            job.slot = self.first_slot(job, now, wall)
            job.next_start = job.slot + self._jitter(job)
        for i, job in enumerate(immediate):
            # First runs right away, spread a little so a start is not a burst.
            job.next_start = now + (self.start_stagger_s * i / max(1, len(immediate)))
        svc.ready(f"polling {len(self.jobs)} jobs")
        try:
            while not svc.stopping.is_set():
                svc.alive()
                self._reap()
                if all(j.status.state == "disabled" for j in self.jobs):
                    code = max(j.status.exit_code for j in self.jobs)
                    reasons = list(dict.fromkeys(j.status.disabled_reason for j in self.jobs))
                    svc.stop_reason = svc.stop_reason or "every poll job is disabled: " + (
                        reasons[0] if len(reasons) == 1 else
                        "; ".join(f"{j.spec.name}: {j.status.disabled_reason}" for j in self.jobs))
                    log.error("nothing left to poll, exiting exit_code=%d", code)
                    return code
                self._start_due()
                self._update_service_state(svc)
                self._wake.wait(self._sleep_s())
                self._wake.clear()
        finally:
            self._drain(STOP_GRACE_S)
        return 0

    def _drain(self, grace_s: float) -> None:
        """On the way out: give runs in flight a moment to finish, so an answer already
        on its way is stored before the writer is flushed (the runtime's stop deadline is
        4.5 s; HTTP timeouts bound every run anyway)."""
        end = self.clock() + grace_s
        for job in self.jobs:
            t = job.thread
            if t is not None:
                t.join(max(0.0, end - self.clock()))
        self._reap()

    def _sleep_s(self) -> float:
        now = self.clock()
        nxt = min((j.next_start for j in self.jobs if j.status.state != "disabled" and j.thread is None),
                  default=now + TICK_S)
        return max(0.01, min(TICK_S, nxt - now))

    def _gate_wait(self, job: _Job) -> tuple[float, str | None]:
        """Seconds the job must still wait for its client / window limits."""
        wait, why = 0.0, None
        client = job.spec.client
        rate = getattr(client, "rate", None) if client is not None else None
        if rate is not None:
            w = rate.wait_s()
            if w > wait:
                wait, why = w, f"{getattr(client, 'name', 'rest')}: {rate.block_reason or 'rate limited'}"
        for lim in job.spec.limits:
            w = lim.wait_s()
            if w > wait:
                wait, why = w, f"limit {lim.name}: {lim.max_calls} calls / {lim.window_s:g} s"
        return wait, why

    def _start_due(self) -> None:
        now = self.clock()
        running = sum(1 for j in self.jobs if j.thread is not None)
        for job in sorted(self.jobs, key=lambda j: j.next_start):
            if job.status.state == "disabled" or job.thread is not None or job.next_start > now:
                continue
            if running >= self.workers:
                return
            wait, why = self._gate_wait(job)
            if wait > 0:
                # Held back by a rate limit: start when it lifts (plus jitter), and move the
                # slot grid along so the skipped slots are not made up later.
                job.next_start = now + wait + self._jitter(job)
                job.slot, missed = self.next_slot_after(job, job.next_start)
                job.status.missed += missed
                if job.wait_reason != why:
                    # The failing job already said why (once); this is detail for debugging.
                    log.debug("job=%s waiting %.1f s (%s)", job.spec.name, wait, why)
                    job.wait_reason = why
                job.status.state = "waiting"
                continue
            job.wait_reason = None
            self._launch(job)
            running += 1

    def _launch(self, job: _Job) -> None:
        job.done = False
        job.result = job.error = None
        job.stuck_logged = False
        job.started = self.clock()
        job.status.state = "running"
        job.status.last_run_ms = self.wall_ms()

        def body() -> None:
            try:
                job.result = job.spec.fn()
            except BaseException as exc:  # noqa: BLE001 - reported by the loop
                job.error = exc
            finally:
                job.done = True
                self._wake.set()

        t = threading.Thread(target=body, name=f"poll:{job.spec.name}", daemon=True)
        job.thread = t
        t.start()

    def _reap(self) -> None:
        now = self.clock()
        for job in self.jobs:
            if job.thread is None:
                continue
            if not job.done:
                if now - job.started > job.spec.timeout_s and not job.stuck_logged:
                    job.stuck_logged = True
                    job.status.state = "stuck"
                    log.warning("job=%s still running after %.0f s (timeout_s=%.0f)",
                                job.spec.name, now - job.started, job.spec.timeout_s)
                continue
            job.thread.join(timeout=0.1)
            job.thread = None
            self._finish(job, now)

    def _finish(self, job: _Job, now: float) -> None:
        st = job.status
        st.runs += 1
        st.last_latency_ms = int((now - job.started) * 1000)
        wall = self.wall_ms()
        err = job.error
        retry_after = None
        if isinstance(err, PollError) and err.deferred:
            # Not sent (a rate limit lifted and closed again between the gate and the call).
            st.calls += err.calls
            st.rows += err.rows
            st.state = "failing" if st.consecutive_errors else ("ok" if st.last_ok_ms else "scheduled")
            job.next_start = now + max(err.retry_after_s or 0.0, 0.05) + self._jitter(job)
            job.slot, missed = self.next_slot_after(job, job.next_start)
            st.missed += missed
            return
        if err is None:
            res = job.result
            if isinstance(res, RunResult):
                rows, calls, st.note = res.rows, res.calls, res.note
            else:
                rows, calls = int(res or 0), 1
            st.calls += calls
            st.rows += rows
            if st.consecutive_errors:
                log.info("job=%s recovered after %d failed runs in %.0f s", job.spec.name,
                         st.consecutive_errors, (wall - (st.failing_since_ms or wall)) / 1000)
            st.consecutive_errors = 0
            st.failing_since_ms = None
            st.last_ok_ms = wall
            st.state = "ok"
            delay = 0.0
        else:
            if isinstance(err, PollError):
                reason, detail, level = err.reason, err.detail, err.level
                st.calls += err.calls
                st.rows += err.rows
                retry_after = err.retry_after_s
            else:
                reason, detail, level = f"unexpected {type(err).__name__}", str(err)[:200], logging.ERROR
            st.errors += 1
            st.consecutive_errors += 1
            st.last_error_ms = wall
            previous = st.last_error if st.consecutive_errors > 1 else None
            if st.failing_since_ms is None:
                st.failing_since_ms = wall
            st.last_error = reason
            if isinstance(err, PollError) and err.disable:
                why = f"{reason}: {detail}" if detail else reason
                targets = [j for j in self.jobs if j.status.state != "disabled"] if err.disable_all else [job]
                for j in targets:
                    j.status.state = "disabled"
                    j.status.disabled_reason = why
                    j.status.exit_code = err.exit_code
                if err.disable_all:
                    log.error("stopped polling (every job): %s", why)
                else:
                    log.error("job=%s stopped polling: %s", job.spec.name, why)
                return
            st.state = "failing"
            if reason != previous:
                # Once per state change, not once per call.
                log.log(level, "job=%s failing: %s%s", job.spec.name, reason, f" ({detail})" if detail else "")
            # Backoff from the interval: 1x, 2x, 4x ... capped, with jitter in [d/2, d].
            iv = self._interval(job)
            d = min(job.spec.max_backoff_s, iv * 2 ** min(st.consecutive_errors - 1, 20))
            delay = self.rng.uniform(d / 2, d) if d > iv else 0.0
            if retry_after:
                delay = max(delay, retry_after)
        # Never two runs closer than half an interval (e.g. a start-up run just before a slot).
        base = max(now + delay, job.started + self._interval(job) / 2)
        job.slot, missed = self.next_slot_after(job, base)
        st.missed += missed if delay == 0 else 0
        job.next_start = job.slot + self._jitter(job)

    def _update_service_state(self, svc) -> None:
        active = [j for j in self.jobs if j.status.state != "disabled"]
        failing = [j for j in active if j.status.consecutive_errors > 0]
        waiting = sorted({j.wait_reason for j in active if j.status.state == "waiting" and j.wait_reason})
        held = f"; held back: {', '.join(waiting)}" if waiting else ""
        banned = any("418" in w or "banned" in w for w in waiting)
        named = ", ".join(f"{j.spec.name}={j.status.last_error}" for j in failing[:STATUS_MAX_FAILING])
        if len(failing) > STATUS_MAX_FAILING:
            named += f" and {len(failing) - STATUS_MAX_FAILING} more"
        if active and (len(failing) == len(active) or banned):
            svc.set_state("error", ("all jobs failing: " if len(failing) == len(active) else "") + named + held)
        elif failing:
            svc.set_state("running", f"{len(active) - len(failing)}/{len(active)} jobs ok; failing: " + named + held)
        else:
            svc.set_state("running", f"polling {len(active)} jobs{held}")

    # ------------------------------------------------------------------ reporting
    def detail(self) -> dict[str, Any]:
        """Heartbeat detail: {"jobs": {name: status…}, "jobs_by_state": {state: count}}
        (wall-clock ms; next_in_s from now). With more than `detail_max_jobs` jobs (many
        symbols), `jobs` lists only the ones not scheduled/running/ok, at most that many, so
        a heartbeat stays small; the counts cover them all."""
        now = self.clock()
        by_state: dict[str, int] = {}
        for j in self.jobs:
            by_state[j.status.state] = by_state.get(j.status.state, 0) + 1
        listed = self.jobs
        if len(listed) > self.detail_max_jobs:
            listed = [j for j in listed if j.status.state not in QUIET_STATES][: self.detail_max_jobs]
        jobs = {}
        for j in listed:
            st = j.status
            d = {k: v for k, v in st.__dict__.items() if v is not None}
            d["interval_s"] = j.spec.interval_s
            if st.state != "disabled" and j.thread is None:
                d["next_in_s"] = round(max(0.0, j.next_start - now), 1)
            if j.wait_reason:
                d["waiting_for"] = j.wait_reason
            jobs[j.spec.name] = d
        return {"jobs": jobs, "jobs_by_state": by_state}

    def status(self, name: str) -> JobStatus:
        for j in self.jobs:
            if j.spec.name == name:
                return j.status
        raise KeyError(name)
