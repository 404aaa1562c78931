"""The one REST polling loop every poller uses (`bin/cqt-poll-binance`, `bin/cqt-poll-coinglass`).

A poller is a list of `PollJob(name, interval_s, fn)`. `PollLoop.run(svc)` runs them:

* **schedule** — each job has slots on the monotonic clock, `interval_s` apart, aligned
  to wall-clock multiples of the interval plus the job's `phase_s` (so "every 60 s, 5 s
  after the minute" means the same instants on every host and after every restart). A
  slot is computed from the previous slot, never from when a run ended, so there is no
  drift; a run that overran, or a process that was stopped for a while, skips the slots
  it missed (counted as `missed`) instead of catching up in a burst. Each run starts a
  little after its slot (`jitter_s`, random, never accumulated).
* **execution** — each run is one short-lived daemon thread; a job never runs twice at
  once, and at most `workers` runs are in flight. A run past its `timeout_s` is reported
  (`stuck`, once) and its result still taken when it returns; HTTP timeouts are the
  RestClient's, so a stuck run always ends.
* **rate limits** — a job bound to a `RestClient` does not start while the client's
  `RateLimitState` holds requests back (429 until Retry-After, 418 ban, 5xx/timeout
  backoff, weight budget); a job bound to `WindowLimit`s (requests per window, e.g.
  Binance `/futures/data/*` 1 000 per 5 min) does not start while a limit is spent.
* **failures** — `fn` raises `PollError(reason, …)` (or anything else: "unexpected …");
  the job backs off exponentially (from its interval, with jitter, up to `max_backoff_s`),
  honours `retry_after_s`, and is logged **once per state change**: when it starts
  failing, when the reason changes, and when it recovers (with the count). `disable=True`
  stops a job for good (e.g. an interval the API plan refuses); when every job is
  disabled the loop returns the highest `exit_code` they carried (78 = misconfigured).
* **many symbols** — a poller runs one job per kind and symbol; `budget` plans, once at
  start, the interval of each kind for N symbols so every limit stays at or under 80 % in
  steady state (stretching evenly when it would not), and spreads the symbols of one kind
  over its interval. With many jobs the heartbeat detail lists only the unwell ones.
* **liveness** — the loop calls `svc.alive()` every few hundred ms (watchdog), sets
  the heartbeat state (`running`, or `error` when every enabled job is failing) and
  `detail()` gives per-job status for the heartbeat.

Timers use the monotonic clock; wall-clock time only aligns slots and stamps rows.

The modules, each importing only those above it:

    budget    Budget, JobKind, plan_intervals, max_symbols, spread_phase (pure planning maths)
    limits    WindowLimit (requests per sliding window, shared by jobs)
    jobs      PollJob, RunResult, PollError, JobStatus, NewestTimes
    outcomes  failure_of (an HTTP answer -> PollError), error_code (the error envelope)
    loop      PollLoop: schedule, execution, gates, failures, liveness, heartbeat detail

The loop logs as `cqt.poll`.
"""
from .jobs import JobStatus, NewestTimes, PollError, PollJob, RunResult
from .limits import WindowLimit
from .loop import PollLoop
from .outcomes import error_code, failure_of

__all__ = ["WindowLimit", "JobStatus", "NewestTimes", "PollError", "PollJob", "RunResult", "error_code",
           "failure_of", "PollLoop"]
