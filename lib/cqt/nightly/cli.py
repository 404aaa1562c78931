"""`cqt-nightly`: the command line; one nightly at a time (a lock file in the dataset directory)."""
from __future__ import annotations

import fcntl
import json
import os
import sys
import time

import click

from .. import exitcodes
from ..config import ConfigError
from ..export.threshold import DEFAULT_THRESHOLD, Threshold
from ..monitor.healthchecks import pinged_job
from ..monitor.jobmetrics import NIGHTLY_FILE, nightly_metrics
from ..monitor.textfile import TextfileWriter
from ..options import db_option, json_option, window_option
from ..runtime import load_settings_or_exit, setup_logging
from ..timeutil import now_ms
from .job import run_nightly, summary_line
from .steps import worst


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@db_option
@window_option(help="Window of the pipeline checks, seconds.")
@click.option("--horizon", default=None, type=click.IntRange(min=1),
              help="Export label horizon, s [default: CQT_EXPORT_HORIZON_S or 120].")
@click.option("--threshold", default=DEFAULT_THRESHOLD, show_default=True,
              help="Export threshold policy (see cqt-export).")
@click.option("--no-retention", is_flag=True, help="Skip the retention step.")
@json_option(help="Print the steps as one JSON object instead of the summary line.")
def main(db, window, horizon, threshold, no_retention, as_json):
    """Nightly job: pipeline checks, exports (1 h, 24 h + dated copy), report, retention.

    A failing step does not stop the later ones. Exit code = the worst step's
    (0 all fine, 1 a step failed, 3 could not evaluate, 74 I/O error, 78 bad setting).
    With CQT_HC_URL_NIGHTLY set it pings healthchecks (/start, then /<exit code> with the
    output); with CQT_TEXTFILE_DIR set it writes cqt_nightly.prom (docs/monitoring.md).
    """
    settings = load_settings_or_exit(db=db)
    setup_logging("cqt-nightly", settings.log_level, settings.secrets)
    with pinged_job(settings, "CQT_HC_URL_NIGHTLY", "cqt-nightly"):
        sys.exit(nightly(settings, window, horizon, threshold, no_retention, as_json))


def nightly(settings, window, horizon, threshold, no_retention, as_json) -> int:
    """The run after the settings are loaded: the lock, the steps, the output; returns the exit code."""
    try:
        Threshold.parse(threshold)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--threshold") from None
    try:
        timeout = settings.get_float("CQT_NIGHTLY_CHECK_TIMEOUT_S")
        settings.get_str("CQT_CAPTURE_DIR")
    except ConfigError as exc:
        click.echo(f"cqt-nightly: {exc}", err=True)
        return exitcodes.CONFIG
    ddir = settings.dataset_dir
    try:
        ddir.mkdir(parents=True, exist_ok=True)
        # opened without truncating and without following a symlink: the lock file never clobbers anything
        lock_fd = os.open(ddir / ".cqt-nightly.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        lock = os.fdopen(lock_fd, "r+")
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        click.echo("cqt-nightly: another cqt-nightly is running (lock held); not starting a second one", err=True)
        return exitcodes.FAIL
    except OSError as exc:
        click.echo(f"cqt-nightly: cannot use {ddir}: {exc}", err=True)
        return exitcodes.IOERR
    t = time.monotonic()
    steps = run_nightly(settings, window, horizon, threshold, not no_retention, timeout)
    code = worst(s.code for s in steps)
    elapsed_s = time.monotonic() - t
    step_dicts = [{"name": s.name, "exit_code": s.code, "detail": s.detail, "elapsed_s": round(s.elapsed_s, 3),
                   **s.data} for s in steps]
    if as_json:
        click.echo(json.dumps({"exit_code": code, "steps": step_dicts}, sort_keys=True, default=str))
    else:
        click.echo(summary_line(steps, elapsed_s))
    TextfileWriter(settings, NIGHTLY_FILE, "cqt-nightly").write(lambda: nightly_metrics(
        [{**d, "data": s.data} for d, s in zip(step_dicts, steps)], code, elapsed_s, now_ms()))
    lock.close()
    return code
