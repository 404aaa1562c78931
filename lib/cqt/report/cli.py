"""`cqt-report`: the command line of the report."""
from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import click

from .. import exitcodes, outputs
from ..clicktypes import TIME
from ..config import ConfigError
from ..db import DatabaseMissing, SchemaTooNew
from ..options import as_of_option, db_option, json_option, out_option
from ..runtime import load_settings_or_exit
from .update import journal_mode_setting, update_report


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@db_option
@out_option(help="Report file (default CQT_REPORT).")
@as_of_option(help="Report time (ISO-8601 or epoch ms; default now).")
@click.option("--start", "start", type=TIME,
              help="Collection start (default: the first collector heartbeat).")
@click.option("--no-plots", is_flag=True, help="Do not (re)draw the PNG plots.")
@click.option("--journal-json", type=click.Path(exists=True, dir_okay=False),
              help="Take warnings/errors from a recorded `journalctl -o json` export instead.")
@json_option(help="Print the outcome as one JSON object.")
def main(db, out, as_of, start, no_plots, journal_json, as_json):
    """Fill the run report's tables from the database (in place, idempotent).

    Exit codes: 0 report up to date, 3 database missing or unreadable, 74 cannot write
    the report, 78 bad setting, 1 the report file (Markdown) has none of the cqt blocks
    (nothing is written), 2 --out (or a plot beside it) is the database, a device or an
    existing file that is not a cqt report / cqt plot.
    """
    settings = load_settings_or_exit(db=db)
    try:
        mode = journal_mode_setting(settings)
    except ConfigError as exc:
        click.echo(f"cqt-report: {exc}", err=True)
        sys.exit(exitcodes.CONFIG)
    lines = Path(journal_json).read_text(encoding="utf-8", errors="replace").splitlines() if journal_json else None
    target = Path(out).expanduser().absolute() if out else settings.report
    code = exitcodes.OK
    try:
        res = update_report(settings, target, as_of, not no_plots, start, lines, mode)
    except outputs.OutputRefused as exc:
        click.echo(f"cqt-report: {exc}", err=True)
        sys.exit(exc.code)
    except (DatabaseMissing, SchemaTooNew) as exc:
        click.echo(f"cqt-report: {exc}", err=True)
        sys.exit(exitcodes.NOEVAL)
    except sqlite3.Error as exc:
        click.echo(f"cqt-report: cannot read database {settings.db}: {exc}", err=True)
        sys.exit(exitcodes.NOEVAL)
    except OSError as exc:
        click.echo(f"cqt-report: cannot write {target}: {exc}", err=True)
        sys.exit(exitcodes.IOERR)
    if len(res.missing_blocks) == len(res.blocks):
        click.echo(f"cqt-report: {res.path} has none of the cqt blocks; nothing filled "
                   "(move it away to start from the template)", err=True)
        code = exitcodes.FAIL
    elif res.missing_blocks:
        click.echo(f"cqt-report: warning: blocks not found in {res.path}: {', '.join(res.missing_blocks)}", err=True)
    if as_json:
        click.echo(json.dumps({"report": str(res.path), "written": res.written, "missing_blocks": res.missing_blocks,
                               "run_log_date": res.run_log_date, "plots": [str(p) for p in res.plots],
                               "exit_code": code}, sort_keys=True))
    else:
        state = "updated" if res.written else "unchanged"
        click.echo(f"report: {state} {res.path} run_log={res.run_log_date or '-'} plots={len(res.plots)}")
    sys.exit(code)
