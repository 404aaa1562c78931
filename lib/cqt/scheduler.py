"""`bin/cqt-scheduler`: the schedule of cqt.schedule.JOBS without cron (APScheduler 3.x).

    bin/cqt-scheduler                      run as a service (systemd: cqt-scheduler.service)
    bin/cqt-scheduler --list               the jobs and their next run times (UTC)
    bin/cqt-scheduler --run NAME           run one job now, record it, exit with its code
                                           (what cron/cqt.crontab calls, with --trigger cron)

The service is a BlockingScheduler in UTC: `max_instances=1` (a slow run never
overlaps the next one of the same job: that fire is skipped and logged),
`coalesce=True` (after a pause, one catch-up run, not a burst), a misfire grace per
job (a run later than that is skipped and logged), and a timeout per job (exit 124).
Each job is a subprocess in its own process group, started by path; its output is
passed through to our stderr (the journal) and its exit code logged and recorded in
`job_runs`. SIGTERM: the scheduler stops, running jobs get SIGTERM (then SIGKILL after
a grace), their runs are recorded (143), exit 0 — within the runtime's stop deadline.
It runs under cqt.runtime.run_service: READY=1, watchdog pings, heartbeats (with the
jobs' last exit codes and next run times in the detail).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import click

from . import db, exitcodes
from .config import ROOT, ConfigError, Settings, load_settings
from .logsetup import setup_logging
from .options import db_option
from .runtime import Service, run_service
from .schedule import BY_NAME, JOBS, Job
from .timeutil import fmt_ms, now_ms

log = logging.getLogger("cqt.scheduler")

SERVICE = "cqt-scheduler"
TERM_GRACE_S = 2.5          # SIGTERM -> SIGKILL for a job's process group (inside the 4.5 s stop deadline)
ALIVE_EVERY_S = 2.0
EXIT_TIMEOUT = 124          # like timeout(1)
EXIT_NOT_FOUND = 127        # like sh: command not found
EXIT_TERMINATED = 128 + signal.SIGTERM


# ------------------------------------------------------------------------------ recording
class JobRecorder:
    """job_runs rows: one short write transaction when a job starts, one when it ends."""

    def __init__(self, db_path: Path, create: bool = False):
        self.db_path = Path(db_path)
        self.create = create       # the service may create/migrate the db; a cron run never creates it
        self._migrated = False

    def _conn(self) -> sqlite3.Connection | None:
        if not self.create and not self.db_path.exists():
            log.warning("job run not recorded: database %s does not exist", self.db_path)
            return None
        conn = db.connect(self.db_path)
        if not self._migrated:
            db.migrate(conn)
            self._migrated = True
        return conn

    def _write(self, sql: str, params: tuple) -> int | None:
        try:
            conn = self._conn()
            if conn is None:
                return None
            try:
                conn.execute("BEGIN IMMEDIATE")
                cur = conn.execute(sql, params)
                conn.execute("COMMIT")
                return cur.lastrowid
            finally:
                conn.close()
        except (sqlite3.Error, db.SchemaTooNew) as exc:
            log.warning("job run not recorded in %s: %s", self.db_path, exc)
            return None

    def start(self, job: str, trigger: str, scheduled_ms: int | None, start_ms: int, pid: int | None,
              command: list[str]) -> int | None:
        return self._write("INSERT INTO job_runs (job, trigger, scheduled_ts_ms, start_ts_ms, pid, detail) "
                           "VALUES (?, ?, ?, ?, ?, ?)",
                           (job, trigger, scheduled_ms, start_ms, pid, json.dumps({"command": command})))

    def finish(self, run_id: int | None, end_ms: int, exit_code: int, detail: dict[str, Any]) -> None:
        if run_id is None:
            return
        self._write("UPDATE job_runs SET end_ts_ms = ?, exit_code = ?, detail = ? WHERE id = ?",
                    (end_ms, exit_code, json.dumps(detail), run_id))


# ------------------------------------------------------------------------------ running one job
@dataclass
class JobState:
    running: dict[str, subprocess.Popen] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def terminate_all(self, grace_s: float = TERM_GRACE_S) -> None:
        """SIGTERM every running job's process group, SIGKILL what is left after the grace."""
        with self.lock:
            procs = list(self.running.items())
        for name, p in procs:
            log.info("stopping job=%s pid=%d", name, p.pid)
            _signal_group(p, signal.SIGTERM)
        end = time.monotonic() + grace_s
        for name, p in procs:
            try:
                p.wait(max(0.0, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("job did not stop in %.1f s, killing job=%s pid=%d", grace_s, name, p.pid)
                _signal_group(p, signal.SIGKILL)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def job_command(job: Job, root: Path = ROOT) -> list[str]:
    return [str(root / job.command[0]), *job.command[1:]]


def run_job(job: Job, *, trigger: str, recorder: JobRecorder | None, state: JobState | None = None,
            env: dict[str, str] | None = None, scheduled_ms: int | None = None, root: Path = ROOT,
            out=None) -> int:
    """Run `job` as a subprocess (own process group), pass its output through, log and record
    its exit code. Returns the exit code (124 timeout, 127 not found, 143 stopped by SIGTERM)."""
    state = state or JobState()
    out = out or sys.stderr
    cmd = job_command(job, root)
    start_ms = now_ms()
    t0 = time.monotonic()
    tail: list[str] = []
    if not os.access(cmd[0], os.X_OK):
        log.error("job cannot start job=%s: %s is missing or not executable", job.name, cmd[0])
        rid = recorder.start(job.name, trigger, scheduled_ms, start_ms, None, cmd) if recorder else None
        if recorder:
            recorder.finish(rid, now_ms(), EXIT_NOT_FOUND, {"command": cmd, "error": f"not found: {cmd[0]}"})
        return EXIT_NOT_FOUND
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env, cwd=str(root), start_new_session=True)
    with state.lock:
        state.running[job.name] = proc
    rid = recorder.start(job.name, trigger, scheduled_ms, start_ms, proc.pid, cmd) if recorder else None
    log.info("job started job=%s trigger=%s pid=%d", job.name, trigger, proc.pid)

    def pump() -> None:
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            out.write(f"[{job.name}] {line}\n")
            out.flush()
            if line.strip():
                tail.append(line)
                del tail[:-3]

    reader = threading.Thread(target=pump, name=f"job-output:{job.name}", daemon=True)
    reader.start()
    timed_out = False
    try:
        code = proc.wait(timeout=job.timeout_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        log.error("job timed out after %d s, stopping it job=%s", job.timeout_s, job.name)
        _signal_group(proc, signal.SIGTERM)
        try:
            proc.wait(TERM_GRACE_S)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()
        code = EXIT_TIMEOUT
    reader.join(timeout=2)
    with state.lock:
        state.running.pop(job.name, None)
    if code < 0:  # killed by a signal: report it as a shell would
        code = 128 - code
    duration_ms = int((time.monotonic() - t0) * 1000)
    detail = {"command": cmd, "duration_ms": duration_ms, "last_output": tail[-1] if tail else None,
              "timed_out": timed_out}
    if recorder:
        recorder.finish(rid, now_ms(), code, detail)
    with state.lock:
        state.last[job.name] = {"exit_code": code, "end": fmt_ms(now_ms()), "duration_ms": duration_ms}
    level = logging.INFO if code == 0 else logging.WARNING
    log.log(level, "job finished job=%s exit_code=%d duration_s=%.1f trigger=%s", job.name, code,
            duration_ms / 1000, trigger)
    return code


# ------------------------------------------------------------------------------ the APScheduler side
def trigger_for(job: Job, settings: Settings | None):
    """The job's trigger: its cron expression in UTC, unless CQT_SCHEDULE_<NAME> overrides it
    ('off', '@every <N>s' for tests and demos, or another 5-field cron expression)."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    expr = settings.get_str(job.env_name, "").strip() if settings else ""
    if not expr:
        return CronTrigger.from_crontab(job.cron, timezone=timezone.utc)
    if expr.lower() == "off":
        return None
    if expr.startswith("@every "):
        text = expr[len("@every "):].strip().rstrip("s")
        try:
            seconds = float(text)
        except ValueError:
            raise ConfigError(job.env_name, f"{expr!r}: use '@every <seconds>s'") from None
        if seconds <= 0:
            raise ConfigError(job.env_name, "the interval must be positive")
        return IntervalTrigger(seconds=seconds, timezone=timezone.utc)
    try:
        return CronTrigger.from_crontab(expr, timezone=timezone.utc)
    except ValueError as exc:
        raise ConfigError(job.env_name, f"{expr!r} is not a cron expression: {exc}") from None


def last_fire_ms(trigger, now: datetime, horizon_s: float) -> int | None:
    """The latest fire time <= now (within horizon): the run the scheduler meant."""
    t = trigger.get_next_fire_time(None, now - timedelta(seconds=horizon_s))
    last = None
    while t is not None and t <= now:
        last = t
        t = trigger.get_next_fire_time(t, t + timedelta(microseconds=1))
    return int(last.timestamp() * 1000) if last else None


def build_scheduler(jobs: tuple[Job, ...], run: Callable[[Job, int | None], Any], settings: Settings | None = None,
                    scheduler_cls=None, state: JobState | None = None):
    """An APScheduler scheduler with one entry per enabled job. `run(job, scheduled_ms)` is
    called in a worker thread. Tests pass another scheduler class and a fake `run`."""
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
    from apscheduler.executors.pool import ThreadPoolExecutor
    from apscheduler.schedulers.blocking import BlockingScheduler

    state = state or JobState()
    cls = scheduler_cls or BlockingScheduler
    sched = cls(timezone=timezone.utc, executors={"default": ThreadPoolExecutor(max_workers=len(jobs) + 2)},
                job_defaults={"max_instances": 1, "coalesce": True})

    def make(job: Job, trig):
        def fire() -> None:
            scheduled = last_fire_ms(trig, datetime.now(timezone.utc), job.misfire_grace_s + 1)
            try:
                run(job, scheduled)
            except Exception:  # noqa: BLE001 - a job's failure must never stop the scheduler
                log.error("job runner failed job=%s", job.name, exc_info=True)
        return fire

    for job in jobs:
        trig = trigger_for(job, settings)
        if trig is None:
            log.info("job disabled by %s=off job=%s", job.env_name, job.name)
            continue
        sched.add_job(make(job, trig), trig, id=job.name, name=job.name, max_instances=1, coalesce=True,
                      misfire_grace_time=job.misfire_grace_s)

    def on_event(ev) -> None:
        if ev.code == EVENT_JOB_MAX_INSTANCES:
            with state.lock:
                state.skipped[ev.job_id] = state.skipped.get(ev.job_id, 0) + 1
            log.warning("job still running, this run skipped job=%s", ev.job_id)
        elif ev.code == EVENT_JOB_MISSED:
            log.warning("job run missed its start by more than the misfire grace job=%s scheduled=%s",
                        ev.job_id, ev.scheduled_run_time.isoformat())
        elif ev.code == EVENT_JOB_ERROR:
            log.error("job raised job=%s: %s", ev.job_id, ev.exception)

    sched.add_listener(on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED | EVENT_JOB_ERROR)
    return sched


def next_runs(sched) -> dict[str, str]:
    out = {}
    for j in sched.get_jobs():
        nrt = getattr(j, "next_run_time", None)
        if nrt is not None:
            out[j.id] = nrt.astimezone(timezone.utc).isoformat()
    return out


def job_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["CQT_DB"] = str(settings.db)   # the database the scheduler was started with (--db)
    return env


def serve(svc: Service) -> int:
    settings = svc.settings
    state = JobState()
    recorder = JobRecorder(settings.db, create=True)
    env = job_env(settings)

    def run(job: Job, scheduled_ms: int | None) -> None:
        if svc.stopping.is_set():
            return
        run_job(job, trigger="scheduler", recorder=recorder, state=state, env=env, scheduled_ms=scheduled_ms)

    sched = build_scheduler(JOBS, run, settings, state=state)

    def alive() -> None:
        svc.alive()
        with state.lock:
            running = sorted(state.running)
        svc.set_state("running", f"running {', '.join(running)}" if running else "idle")

    sched.add_job(alive, "interval", seconds=ALIVE_EVERY_S, id="_alive", max_instances=1, coalesce=True)
    svc.set_detail(lambda: {"jobs": {name: {"running": name in state.running, "last": state.last.get(name),
                                             "skipped": state.skipped.get(name, 0)} for name in BY_NAME},
                             "next_runs": next_runs(sched)})

    def stop_when_asked() -> None:
        svc.stopping.wait()
        try:
            sched.shutdown(wait=False)
        except Exception:  # noqa: BLE001 - already stopped
            pass

    threading.Thread(target=stop_when_asked, name="scheduler-stop", daemon=True).start()
    if settings.log_level != "DEBUG":  # "Added job ..." chatter; our own lines say what runs
        logging.getLogger("apscheduler.scheduler").setLevel(logging.WARNING)
    enabled = [j.id for j in sched.get_jobs() if j.id != "_alive"]
    svc.ready(f"scheduling {', '.join(enabled) or 'nothing'}")
    log.info("scheduler started jobs=%s timezone=UTC", ",".join(enabled))
    sched.start()               # blocks until shutdown
    state.terminate_all()
    return exitcodes.OK


# ------------------------------------------------------------------------------ CLI
def _run_once(name: str, trigger: str, settings: Settings) -> int:
    job = BY_NAME[name]
    state = JobState()

    def on_term(signum, _frame) -> None:
        log.info("stopping on %s", signal.Signals(signum).name)
        with state.lock:
            procs = list(state.running.values())
        for p in procs:
            _signal_group(p, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    return run_job(job, trigger=trigger, recorder=JobRecorder(settings.db), state=state,
                   env=job_env(settings), out=sys.stdout)


@click.command(name=SERVICE, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--run", "run_name", type=click.Choice(sorted(BY_NAME)), default=None,
              help="Run this job once now (recorded in job_runs) and exit with its exit code.")
@click.option("--trigger", type=click.Choice(["manual", "cron"]), default="manual", show_default=True,
              help="With --run: who started it (recorded).")
@click.option("--list", "list_jobs", is_flag=True, help="Print the jobs and their next run times (UTC).")
@db_option
def main(run_name: str | None, trigger: str, list_jobs: bool, db: str | None) -> None:
    """Run the cqt schedule (pipeline checks every 10 min, nightly job at 00:10 UTC)
    without cron: an APScheduler service, or one job with --run."""
    try:
        settings = load_settings(db=db)
    except ConfigError as exc:
        print(f"{SERVICE}: {exc}", file=sys.stderr)
        sys.exit(exitcodes.CONFIG)
    if list_jobs:
        now = datetime.now(timezone.utc)
        for job in JOBS:
            try:
                trig = trigger_for(job, settings)
            except ConfigError as exc:
                print(f"{SERVICE}: {exc}", file=sys.stderr)
                sys.exit(exitcodes.CONFIG)
            nxt = trig.get_next_fire_time(None, now) if trig else None
            click.echo(f"{job.name:<16} {job.cron:<14} next {nxt.isoformat() if nxt else 'disabled'}  "
                       f"{' '.join(job.command)}  ({job.description})")
        sys.exit(exitcodes.OK)
    if run_name:
        setup_logging(SERVICE, settings.log_level, settings.secrets)
        sys.exit(_run_once(run_name, trigger, settings))
    sys.exit(run_service(SERVICE, serve, settings))
