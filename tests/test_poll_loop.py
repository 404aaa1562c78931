"""cqt.poll: schedule (aligned, no drift, no burst after a stall), failure states logged once,
Retry-After / rate-limit gates, disable -> exit code, stuck runs, WindowLimit. In-process, fast.

The loop runs on a virtual clock (VirtualTime): time moves only when the loop waits, and only
once every run in flight has finished or is asleep on that clock, so the schedule is exact
and nothing here sleeps for real or depends on how busy the machine is. Runs still execute in
the loop's real worker threads."""
from __future__ import annotations

import logging
import threading

import pytest

from cqt.poll import PollError, PollJob, PollLoop, RunResult, WindowLimit, failure_of
from cqt.rest import RestResponse
from pollclock import VirtualTime, make_loop, run_for


@pytest.fixture
def vt():
    return VirtualTime()


def recorder(vt: VirtualTime, log: list, sleep: float = 0.0, fail=None):
    def fn():
        log.append((vt.monotonic(), vt.wall_ms()))
        if sleep:
            vt.sleep(sleep)
        if fail is not None:
            fail(len(log))
        return RunResult(rows=2)
    return fn


@pytest.mark.timeout(20)
def test_slots_are_aligned_and_do_not_drift(vt):
    runs: list = []
    job = PollJob("a", 0.25, recorder(vt, runs), jitter_s=0.0, run_at_start=False)
    loop = make_loop(vt, [job])
    _, rc = run_for(loop, 1.6)
    assert rc == 0
    assert 5 <= len(runs) <= 7
    # every start sits on a wall-clock multiple of 250 ms (phase 0), within scheduling noise
    offsets = [w % 250 for _, w in runs]
    assert all(o < 60 for o in offsets), offsets
    gaps = [b[0] - a[0] for a, b in zip(runs, runs[1:])]
    assert all(0.18 < g < 0.32 for g in gaps), gaps
    st = loop.status("a")
    assert st.runs == len(runs) and st.rows == 2 * len(runs) and st.errors == 0 and st.missed == 0


@pytest.mark.timeout(20)
def test_phase_and_jitter_stay_within_bounds(vt):
    runs: list = []
    job = PollJob("a", 0.3, recorder(vt, runs), phase_s=0.1, jitter_s=0.05, run_at_start=False)
    run_for(make_loop(vt, [job]), 1.4)
    assert len(runs) >= 3
    offsets = [(w - 100) % 300 for _, w in runs]
    assert all(o < 50 + 60 for o in offsets), offsets     # jitter 50 ms + noise, never accumulated


@pytest.mark.timeout(20)
def test_overrun_skips_missed_slots_instead_of_bursting(vt):
    runs: list = []
    job = PollJob("slow", 0.2, recorder(vt, runs, sleep=0.7), jitter_s=0.0)
    loop = make_loop(vt, [job])
    run_for(loop, 2.0)
    gaps = [b[0] - a[0] for a, b in zip(runs, runs[1:])]
    assert len(runs) >= 2 and all(g >= 0.7 for g in gaps), gaps       # never two runs back to back
    assert loop.status("slow").missed >= 3


@pytest.mark.timeout(20)
def test_start_up_runs_are_staggered_and_never_doubled(vt):
    runs: dict[str, list] = {f"j{i}": [] for i in range(3)}
    jobs = [PollJob(n, 1.0, recorder(vt, r), jitter_s=0.0) for n, r in runs.items()]
    run_for(make_loop(vt, jobs, workers=3, start_stagger_s=0.3), 1.3)
    firsts = sorted(r[0][0] for r in runs.values())
    assert firsts[-1] - firsts[0] >= 0.15                  # staggered, not a burst
    for r in runs.values():
        gaps = [b[0] - a[0] for a, b in zip(r, r[1:])]
        assert all(g >= 0.5 for g in gaps), gaps            # start-up run + an early slot: never doubled


@pytest.mark.timeout(20)
def test_failures_log_once_per_state_change_and_back_off(vt, caplog):
    runs: list = []

    def fail(n):
        if n <= 4:
            raise PollError("http 503", f"call {n}")      # detail varies, reason does not
        if n == 5:
            raise PollError("timeout")

    job = PollJob("oi", 0.1, recorder(vt, runs, fail=fail), jitter_s=0.0, max_backoff_s=0.4)
    loop = make_loop(vt, [job])
    with caplog.at_level(logging.INFO, logger="cqt.poll"):
        svc, _ = run_for(loop, 2.6)
    msgs = [r.getMessage() for r in caplog.records if r.name == "cqt.poll"]
    assert sum("failing: http 503" in m for m in msgs) == 1, msgs
    assert sum("failing: timeout" in m for m in msgs) == 1, msgs
    assert sum("recovered after 5 failed runs" in m for m in msgs) == 1, msgs
    st = loop.status("oi")
    assert st.errors == 5 and st.consecutive_errors == 0 and st.last_error == "timeout"
    assert st.last_ok_ms is not None and st.state == "ok"
    gaps = [b[0] - a[0] for a, b in zip(runs, runs[1:])]
    # backoff grows from the interval (0.1) towards the cap (0.4, jitter in [d/2, d])
    assert gaps[2] >= 0.19 and gaps[3] >= 0.19, gaps
    assert max(gaps[:5]) <= 0.4 + 0.15, gaps
    assert any(s == "error" for s, _ in svc.states)            # the only job failing -> error state
    assert svc.states[-1][0] == "running"


@pytest.mark.timeout(20)
def test_retry_after_is_honoured(vt):
    runs: list = []

    def fail(n):
        if n == 1:
            raise PollError("429 rate limited", retry_after_s=1.0)

    run_for(make_loop(vt, [PollJob("a", 0.2, recorder(vt, runs, fail=fail), jitter_s=0.0)]), 1.6)
    assert len(runs) >= 2
    assert runs[1][0] - runs[0][0] >= 1.0


class _Rate:
    def __init__(self, until, clock):
        self.until = until
        self.clock = clock
        self.block_reason = "429 too many requests"

    def wait_s(self):
        return max(0.0, self.until - self.clock())


class _Client:
    name = "binance_rest"

    def __init__(self, until, clock):
        self.rate = _Rate(until, clock)


@pytest.mark.timeout(20)
def test_client_rate_limit_holds_every_job_back(vt):
    runs: list = []
    t0 = vt.monotonic()
    client = _Client(t0 + 0.8, vt.monotonic)
    jobs = [PollJob(n, 0.2, recorder(vt, runs), jitter_s=0.0, client=client) for n in ("a", "b")]
    loop = make_loop(vt, jobs)
    run_for(loop, 1.3)
    assert runs and min(t for t, _ in runs) >= t0 + 0.8
    assert loop.status("a").runs >= 1 and loop.status("b").runs >= 1


@pytest.mark.timeout(20)
def test_window_limit_gates_jobs(vt):
    runs: list = []
    lim = WindowLimit("three_per_window", 3, 1.0, clock=vt.monotonic)

    def fn():
        lim.note()
        runs.append(vt.monotonic())
        return 1

    run_for(make_loop(vt, [PollJob("a", 0.1, fn, jitter_s=0.0, limits=(lim,))]), 1.5)
    # at most 3 calls in any 1 s window
    for i in range(len(runs)):
        assert sum(1 for t in runs if runs[i] <= t < runs[i] + 1.0) <= 3
    assert 3 <= len(runs) <= 6


@pytest.mark.timeout(20)
def test_disabled_jobs_end_the_loop_with_their_exit_code(vt, caplog):
    def refused():
        raise PollError("interval not allowed by plan", "Hobbyist: 4h and longer", disable=True, exit_code=78)

    calls: list = []
    jobs = [PollJob("a", 0.2, refused), PollJob("b", 0.2, lambda: calls.append(1) or refused())]
    with caplog.at_level(logging.ERROR, logger="cqt.poll"):
        svc, rc = run_for(make_loop(vt, jobs), 3.0)
    assert rc == 78
    assert len(calls) == 1                  # no retry loop
    assert "every poll job is disabled" in svc.stop_reason
    assert sum("stopped polling" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.timeout(20)
def test_unexpected_exception_is_counted_not_fatal(vt, caplog):
    runs: list = []

    def fail(n):
        if n == 1:
            raise KeyError("boom")

    loop = make_loop(vt, [PollJob("a", 0.2, recorder(vt, runs, fail=fail), jitter_s=0.0)])
    with caplog.at_level(logging.WARNING, logger="cqt.poll"):
        _, rc = run_for(loop, 0.9)
    assert rc == 0 and len(runs) >= 2
    assert loop.status("a").errors == 1
    assert any("unexpected KeyError" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(20)
def test_stuck_run_is_reported_once_and_its_result_kept(vt, caplog):
    runs: list = []
    loop = make_loop(vt, [PollJob("hang", 5.0, recorder(vt, runs, sleep=0.7), timeout_s=0.2)])
    with caplog.at_level(logging.WARNING, logger="cqt.poll"):
        run_for(loop, 1.1)
    assert sum("still running" in r.getMessage() for r in caplog.records) == 1
    st = loop.status("hang")
    assert st.runs == 1 and st.rows == 2 and st.state == "ok"


@pytest.mark.timeout(20)
def test_workers_bound_concurrency(vt):
    active = []
    peak = [0]
    lock = threading.Lock()

    def fn():
        with lock:
            active.append(1)
            peak[0] = max(peak[0], len(active))
        vt.sleep(0.2)
        with lock:
            active.pop()
        return 0

    run_for(make_loop(vt, [PollJob(f"j{i}", 0.3, fn) for i in range(5)], workers=2), 0.9)
    assert peak[0] == 2


def test_detail_reports_each_job():
    loop = PollLoop([PollJob("a", 10, lambda: 1), PollJob("b", 60, lambda: 1, phase_s=5)])
    d = loop.detail()["jobs"]
    assert set(d) == {"a", "b"}
    assert d["a"]["state"] == "scheduled" and d["a"]["calls"] == 0 and d["b"]["interval_s"] == 60


def test_window_limit_maths():
    now = [100.0]
    lim = WindowLimit("x", 2, 10.0, clock=lambda: now[0])
    assert lim.wait_s() == 0
    lim.note()
    now[0] = 103.0
    lim.note()
    assert lim.wait_s() == pytest.approx(7.0)
    now[0] = 110.0
    assert lim.wait_s() == pytest.approx(0.0)
    assert lim.used() == 1


def _resp(status, text="", headers=None, error=None):
    return RestResponse(status, headers or {}, text, 5, 0, "/p", {}, error)


def test_failure_of_maps_http_outcomes():
    assert failure_of(_resp(200, "[]")) is None
    e = failure_of(_resp(429, "", {"Retry-After": "7"}))
    assert e.reason == "429 rate limited" and e.retry_after_s == 7
    e = failure_of(_resp(418, "", {"Retry-After": "120"}))
    assert e.reason == "418 banned" and e.retry_after_s == 120 and e.level == logging.ERROR
    assert failure_of(_resp(503, "oops")).reason == "http 503"
    e = failure_of(_resp(400, '{"code":-1121,"msg":"Invalid symbol."}'))
    assert e.reason == "http 400 code -1121" and e.detail == "Invalid symbol."
    assert failure_of(_resp(None, error="timeout")).reason == "timeout"
    e = failure_of(_resp(None, error="blocked 30 s: 429 too many requests"))
    assert e.reason == "rate limited" and e.calls == 0


@pytest.mark.timeout(20)
def test_a_deferred_run_is_not_a_failure(vt, caplog):
    runs: list = []

    def fail(n):
        if n == 1:
            raise PollError("rate limited", "held back locally", calls=0, deferred=True, retry_after_s=0.3)

    loop = make_loop(vt, [PollJob("a", 5.0, recorder(vt, runs, fail=fail), jitter_s=0.0)])
    with caplog.at_level(logging.INFO, logger="cqt.poll"):
        run_for(loop, 0.8)
    st = loop.status("a")
    assert len(runs) == 2 and runs[1][0] - runs[0][0] >= 0.3       # retried after the hold, not a slot later
    assert st.errors == 0 and st.calls == 1 and st.state == "ok"
    assert not [r for r in caplog.records if "failing" in r.getMessage()]
