"""The schedule, defined once: what runs when (UTC), for cron and for cqt-scheduler alike.

`cron/cqt.crontab` is rendered from JOBS (`python -m cqt.schedule > cron/cqt.crontab`;
a test fails when the committed file and this definition disagree), and
`bin/cqt-scheduler` builds its APScheduler jobs from the same JOBS. Both run a job
through `bin/cqt-scheduler --run NAME`-equivalent code (cqt.scheduler.run_job), so
every run is logged and recorded in `job_runs` whichever way it was started.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

CRON_HOME_DEFAULT = "/opt/cqt"
CRON_TAG = "cqt-cron"     # journal identifier of cron-started jobs (journalctl -t cqt-cron)


@dataclass(frozen=True)
class Job:
    name: str
    cron: str                    # standard 5-field expression, interpreted in UTC
    command: tuple[str, ...]     # path relative to the toolkit root, then arguments
    description: str
    timeout_s: int               # killed after this (exit 124): a hung run must not block the next ones
    misfire_grace_s: int         # cqt-scheduler: a run late by more than this is skipped, not run

    @property
    def env_name(self) -> str:
        """CQT_SCHEDULE_<NAME>: overrides the trigger in cqt-scheduler (tests, demo)."""
        return "CQT_SCHEDULE_" + self.name.upper()


JOBS: tuple[Job, ...] = (
    Job("pipeline_checks", "*/10 * * * *", ("checks/run_pipeline_checks.sh", "--window", "600"),
        "the four pipeline checks over the last 10 minutes (results in check_runs)",
        timeout_s=300, misfire_grace_s=120),
    Job("nightly", "10 0 * * *", ("bin/cqt-nightly",),
        "checks, 1 h and 24 h exports, the run report, retention",
        timeout_s=3 * 3600, misfire_grace_s=3600),
)
BY_NAME = {j.name: j for j in JOBS}


def validate_cron(expr: str) -> list[str]:
    """The five fields of a crontab expression, or ValueError (no library needed to render)."""
    fields = expr.split()
    if len(fields) != 5:
        raise ValueError(f"cron expression needs 5 fields: {expr!r}")
    return fields


def cron_line(job: Job) -> str:
    validate_cron(job.cron)
    # cron runs the line with /bin/sh; output goes to the journal (systemd-cat), or to syslog
    # through logger where there is no journal. No '%' anywhere: cron would turn it into a newline.
    return (f'{job.cron} "$CQT_HOME/bin/cqt-scheduler" --run {job.name} --trigger cron 2>&1 '
            f'| (systemd-cat -t {CRON_TAG} 2>/dev/null || logger -t {CRON_TAG})')


def render_crontab(home: str = CRON_HOME_DEFAULT) -> str:
    lines = [
        "# cqt schedule (times in UTC). GENERATED from lib/cqt/schedule.py - edit that file, then:",
        "#   .venv/bin/python -m cqt.schedule > cron/cqt.crontab",
        "# Install for the service user that owns the database (so its permissions hold):",
        "#   ./install.sh --cron      (sets CQT_HOME to the install prefix)",
        "#   by hand: sed \"s#^CQT_HOME=.*#CQT_HOME=/opt/cqt#\" cron/cqt.crontab | crontab -u cqt -",
        "# Each run is recorded in the job_runs table; its output goes to the journal:",
        f"#   journalctl -t {CRON_TAG}",
        "# CRON_TZ=UTC: cronie (Fedora, RHEL, Arch, openSUSE) reads the times below as UTC.",
        "# Debian/Ubuntu cron and busybox crond ignore it and use the system time zone:",
        "# run the host in UTC there, or use bin/cqt-scheduler (always UTC). See docs/checks.md.",
        "CRON_TZ=UTC",
        "SHELL=/bin/sh",
        "PATH=/usr/local/bin:/usr/bin:/bin",
        f"CQT_HOME={home}",
        "",
    ]
    for job in JOBS:
        lines.append(f"# {job.name}: {job.description}")
        lines.append(cron_line(job))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m cqt.schedule [HOME] > cron/cqt.crontab
    sys.stdout.write(render_crontab(sys.argv[1] if len(sys.argv) > 1 else CRON_HOME_DEFAULT))
