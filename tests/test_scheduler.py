"""The one schedule (cqt.schedule), the rendered crontab, bin/cqt-scheduler (APScheduler)."""
from __future__ import annotations

import json
import logging
import signal
import stat
import subprocess
import threading
import time
from datetime import datetime, timezone

import pytest
from apscheduler.schedulers.background import BackgroundScheduler  # noqa: F401 - imported before freezegun
from apscheduler.triggers.cron import CronTrigger
from freezegun import freeze_time

from cqt import schedule
from cqt.scheduler import EXIT_NOT_FOUND, EXIT_TIMEOUT, JobRecorder, JobState, build_scheduler, run_job, trigger_for
from fixtures_checks import copy_db, make_healthy_db, settings_for
from helpers import ROOT, cqt_env, query, run_bin, start_bin, stop_proc, wait_for

pytestmark = pytest.mark.timeout(60)
UTC = timezone.utc


def poll(pred, tries=500, step=0.01):
    """wait_for without time.monotonic (freezegun freezes it); bounded by tries * step."""
    for _ in range(tries):
        if pred():
            return True
        time.sleep(step)
    raise AssertionError("condition not reached")


# ------------------------------------------------------------------------------ one definition
def test_crontab_is_rendered_from_the_definition():
    text = (ROOT / "cron" / "cqt.crontab").read_text(encoding="utf-8")
    assert text == schedule.render_crontab(), \
        "cron/cqt.crontab is stale: .venv/bin/python -m cqt.schedule > cron/cqt.crontab"
    assert "\nCRON_TZ=UTC\n" in text and "%" not in text
    jobs = [ln for ln in text.splitlines() if ln and not ln.startswith("#") and "=" not in ln.split()[0]]
    assert len(jobs) == len(schedule.JOBS)
    for line, job in zip(jobs, schedule.JOBS):
        assert line.startswith(job.cron + " ") and f"--run {job.name} --trigger cron" in line
        assert "systemd-cat -t cqt-cron" in line and "logger -t cqt-cron" in line
        CronTrigger.from_crontab(job.cron, timezone=UTC)   # valid for APScheduler too
    assert schedule.BY_NAME["pipeline_checks"].cron == "*/10 * * * *"
    assert schedule.BY_NAME["nightly"].cron == "10 0 * * *"
    assert schedule.BY_NAME["nightly"].command == ("bin/cqt-nightly",)


def test_fire_times_are_utc_whatever_the_local_zone(monkeypatch, tmp_path):
    monkeypatch.setenv("TZ", "Asia/Seoul")
    time.tzset()
    try:
        s = settings_for(tmp_path / "x.db")
        nightly = trigger_for(schedule.BY_NAME["nightly"], s)
        after = datetime(2026, 1, 10, 23, 0, tzinfo=UTC)
        assert nightly.get_next_fire_time(None, after) == datetime(2026, 1, 11, 0, 10, tzinfo=UTC)
        checks = trigger_for(schedule.BY_NAME["pipeline_checks"], s)
        assert checks.get_next_fire_time(None, after.replace(minute=1)) == after.replace(minute=10)
        assert trigger_for(schedule.BY_NAME["nightly"], settings_for(tmp_path / "x.db",
                                                                     CQT_SCHEDULE_NIGHTLY="off")) is None
        every = trigger_for(schedule.BY_NAME["nightly"], settings_for(tmp_path / "x.db",
                                                                      CQT_SCHEDULE_NIGHTLY="@every 2s"))
        assert every.interval.total_seconds() == 2
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_list(tmp_path):
    p = run_bin("cqt-scheduler", "--list", env=cqt_env(tmp_path))
    assert p.returncode == 0
    assert "pipeline_checks  */10 * * * *" in p.stdout and "nightly          10 0 * * *" in p.stdout
    p = run_bin("cqt-scheduler", "--list", env=cqt_env(tmp_path, CQT_SCHEDULE_NIGHTLY="at noon"))
    assert p.returncode == 78 and "CQT_SCHEDULE_NIGHTLY" in p.stderr


# ------------------------------------------------------------------------------ driven clock
def test_driven_clock_fires_and_never_overlaps(caplog):
    job = schedule.Job("slow", "*/10 * * * *", ("x",), "test", timeout_s=60, misfire_grace_s=120)
    release = threading.Event()
    fired: list[int | None] = []
    running = [0]
    peak = [0]
    lock = threading.Lock()

    def fake_run(j, scheduled_ms):
        with lock:
            fired.append(scheduled_ms)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1

    state = JobState()
    caplog.set_level(logging.WARNING, logger="cqt.scheduler")
    with freeze_time("2026-01-10T00:00:00Z") as clock:
        sched = build_scheduler((job,), fake_run, scheduler_cls=BackgroundScheduler, state=state)
        assert sched.get_job("slow").max_instances == 1 and sched.get_job("slow").coalesce is True
        sched.start()
        try:
            poll(lambda: len(fired) == 1)                       # 00:00 fires at once
            clock.move_to("2026-01-10T00:10:00Z")
            sched.wakeup()
            poll(lambda: state.skipped.get("slow") == 1)        # 00:10: still running -> skipped
            assert len(fired) == 1 and peak[0] == 1
            release.set()
            poll(lambda: running[0] == 0)
            clock.move_to("2026-01-10T00:20:00.500Z")
            sched.wakeup()
            poll(lambda: len(fired) == 2)                       # 00:20 runs again
            poll(lambda: running[0] == 0)
            clock.move_to("2026-01-10T00:33:00Z")                # 00:30 is 3 min late > 120 s grace
            sched.wakeup()
            poll(lambda: "missed its start" in caplog.text)
            clock.move_to("2026-01-10T00:40:01Z")
            sched.wakeup()
            poll(lambda: len(fired) == 3)
        finally:
            release.set()
            sched.shutdown(wait=True)
    assert peak[0] == 1
    base = int(datetime(2026, 1, 10, tzinfo=UTC).timestamp() * 1000)
    assert fired == [base, base + 1_200_000, base + 2_400_000]   # the fire times the schedule meant
    assert "job still running, this run skipped job=slow" in caplog.text


# ------------------------------------------------------------------------------ running a job
def _script(path, body):
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_run_job_exit_codes_timeout_and_missing(tmp_path):
    db = make_healthy_db(tmp_path / "cqt.db", span_s=30, derived=False)
    rec = JobRecorder(db)
    _script(tmp_path / "ok.sh", "echo first; echo last line; exit 5")
    _script(tmp_path / "hang.sh", "echo started; sleep 31.7 & wait")
    ok = schedule.Job("ok", "* * * * *", ("ok.sh",), "", timeout_s=10, misfire_grace_s=1)
    hang = schedule.Job("hang", "* * * * *", ("hang.sh",), "", timeout_s=1, misfire_grace_s=1)
    gone = schedule.Job("gone", "* * * * *", ("missing.sh",), "", timeout_s=1, misfire_grace_s=1)
    out = open(tmp_path / "out.log", "w")
    assert run_job(ok, trigger="manual", recorder=rec, root=tmp_path, out=out) == 5
    t0 = time.monotonic()
    assert run_job(hang, trigger="manual", recorder=rec, root=tmp_path, out=out) == EXIT_TIMEOUT
    assert time.monotonic() - t0 < 5
    assert run_job(gone, trigger="manual", recorder=rec, root=tmp_path, out=out) == EXIT_NOT_FOUND
    out.close()
    rows = query(db, "SELECT job, trigger, exit_code, end_ts_ms >= start_ts_ms, detail FROM job_runs ORDER BY id")
    assert [r[:4] for r in rows] == [("ok", "manual", 5, 1), ("hang", "manual", 124, 1), ("gone", "manual", 127, 1)]
    assert json.loads(rows[0][4])["last_output"] == "last line"
    assert json.loads(rows[1][4])["timed_out"] is True
    assert "[ok] first" in (tmp_path / "out.log").read_text()
    # the hung job's whole process group is gone (its `sleep 30` child too)
    poll(lambda: subprocess.run(["pgrep", "-f", "sleep 31.7"], capture_output=True).returncode == 1, tries=100)


def test_crontab_line_runs_and_logs_to_the_journal_or_logger(tmp_path):
    """The real crontab line, time fields removed, run by sh as cron would: no journal here,
    so systemd-cat fails and logger gets the output; the run is recorded as trigger=cron."""
    db = copy_db(make_healthy_db(tmp_path / "src.db", span_s=60), tmp_path / "cqt.db")
    fake = tmp_path / "fakebin"
    fake.mkdir()
    _script(fake / "systemd-cat", "exit 1")
    _script(fake / "logger", f'cat >> "{tmp_path}/syslog"')
    line = next(ln for ln in schedule.render_crontab().splitlines() if "--run pipeline_checks" in ln)
    command = line.split(None, 5)[5]
    env = cqt_env(tmp_path, CQT_HOME=str(ROOT), PATH=f"{fake}:/usr/bin:/bin")
    subprocess.run(["/bin/sh", "-c", command], env=env, timeout=60, check=True)
    log = (tmp_path / "syslog").read_text()
    assert "run_pipeline_checks: FAIL exit=1" in log          # the fixture's data is months old
    assert "job finished job=pipeline_checks exit_code=1" in log
    rows = query(db, "SELECT job, trigger, exit_code FROM job_runs")
    assert rows == [("pipeline_checks", "cron", 1)]
    assert query(db, "SELECT COUNT(*) FROM check_runs")[0][0] == 5


# ------------------------------------------------------------------------------ the service
@pytest.mark.timeout(90)
def test_service_runs_jobs_records_and_stops_on_sigterm(tmp_path):
    db = copy_db(make_healthy_db(tmp_path / "src.db", span_s=60), tmp_path / "cqt.db")
    env = cqt_env(tmp_path, CQT_DB=str(db), CQT_SCHEDULE_PIPELINE_CHECKS="@every 1s", CQT_SCHEDULE_NIGHTLY="off",
                  CQT_HEARTBEAT_S="0.5")
    p = start_bin("cqt-scheduler", env=env, log_path=tmp_path / "scheduler.log")
    try:
        wait_for(lambda: query(db, "SELECT COUNT(*) FROM job_runs WHERE exit_code IS NOT NULL")[0][0] >= 2, 45,
                 what="two finished pipeline_checks runs")
        time.sleep(0.3)
    finally:
        t0 = time.monotonic()
        code = stop_proc(p, timeout=8, sig=signal.SIGTERM)
        stop_s = time.monotonic() - t0
    log = (tmp_path / "scheduler.log").read_text()
    assert code == 0, log
    assert stop_s < 5, log
    rows = query(db, "SELECT start_ts_ms, end_ts_ms, exit_code, trigger FROM job_runs WHERE job = 'pipeline_checks' "
                     "ORDER BY start_ts_ms")
    assert all(r[2] is not None and r[3] == "scheduler" for r in rows), rows   # nothing left "running"
    assert all(a[1] <= b[0] for a, b in zip(rows, rows[1:])), "two runs of one job overlapped"
    assert {r[2] for r in rows} <= {1, 143}
    assert "job finished job=pipeline_checks exit_code=1" in log and "ready status=scheduling_pipeline_checks" in log
    hb = query(db, "SELECT detail FROM heartbeats WHERE service = 'cqt-scheduler' ORDER BY ts_ms DESC LIMIT 1")
    assert "pipeline_checks" in json.loads(hb[0][0])["jobs"]
    assert query(db, "SELECT exit_code FROM service_runs WHERE service = 'cqt-scheduler'") == [(0,)]
