"""run_pipeline_checks: the operator's gate. Runs the four checks in one process.

    bash checks/run_pipeline_checks.sh --window 600 [--as-of T] [--db PATH] [--json]
    echo "EXIT_CODE=$?"

One process, one read-only connection, one as-of for all four (so they judge the
same window), pandas imported at most once. Prints a compact table and, under it,
every failing metric line; exits 0 only if all four pass, else the highest code.
Each check's result and the overall result are recorded in `check_runs`, one short
write transaction each (the only writes any check makes).
"""
from __future__ import annotations

import importlib
import json
import logging
import sqlite3
import sys
import time
from pathlib import Path

import click

from .. import db, exitcodes
from ..config import ConfigError
from ..monitor.healthchecks import pinged_job
from ..monitor.jobmetrics import write_checks_file
from ..timeutil import fmt_ms, now_ms
from . import CHECKS, RUNNER_NAME
from .base import (
    CannotEvaluate,
    DatabaseDamaged,
    assets_for_cli,
    common_options,
    open_for_check,
    run_check,
    settings_for_cli,
    verify_integrity,
)
from .result import FAIL, CheckResult, combine_exit_codes, fmt_num

log = logging.getLogger("cqt.checks.runner")


class Outcome(list):
    """The four results, and whether the file passed its integrity check (never write into it if not)."""

    damaged = False


def run_all(settings, as_of_ms: int, window_s: int, integrity: str = "quick",
            assets: tuple[str, ...] = ()) -> Outcome:
    """The four checks on one connection and one as-of; `assets` limits them (default: every asset)."""
    results = Outcome()
    conn = None
    try:
        conn = open_for_check(settings.db)
        note = verify_integrity(conn, settings, integrity)
    except (CannotEvaluate, ConfigError, sqlite3.Error) as exc:
        # One reason for all four: not evaluated. A damaged file is never a PASS.
        results.damaged = isinstance(exc, DatabaseDamaged)
        if conn is not None:
            conn.close()
        reason = str(exc) if not isinstance(exc, sqlite3.Error) else f"cannot read database {settings.db}: {exc}"
        code = exitcodes.CONFIG if isinstance(exc, ConfigError) else None
        for name, _ in CHECKS:
            results.append(CheckResult(name, window_s, as_of_ms, error=" ".join(reason.split()), error_code=code))
        return results
    try:
        for name, module in CHECKS:
            try:
                evaluate = importlib.import_module(module).evaluate
            except Exception as exc:  # noqa: BLE001 - a broken module is one check not evaluated
                log.debug("cannot import %s", module, exc_info=True)
                results.append(CheckResult(name, window_s, as_of_ms,
                                           error=f"cannot load {module}: {type(exc).__name__}: {exc}"))
                continue
            res = run_check(name, evaluate, settings, as_of_ms, window_s, conn=conn, assets=assets)
            if note:
                res.notes.insert(0, note)
            results.append(res)
    finally:
        conn.close()
    return results


def stored_summary(res: CheckResult) -> dict:
    """What check_runs keeps per check: status, summary and the failing metrics (not all)."""
    d = res.to_dict()
    return {
        "status": d["status"], "exit_code": d["exit_code"], "summary": d["summary"], "error": d["error"],
        "metrics": len(res.metrics), "skipped": sum(1 for m in res.metrics if m.status == "SKIP"),
        "failed": [m.to_dict() for m in res.metrics if m.status == FAIL],
        "notes": res.notes, "elapsed_ms": res.elapsed_ms,
    }


def overall_status(code: int) -> str:
    return {0: "PASS", 1: "FAIL", 3: "NOT EVALUATED", 78: "MISCONFIGURED"}.get(code, f"EXIT {code}")


def overall_summary(results: list[CheckResult], code: int, window_s: int, as_of_ms: int) -> str:
    bad = [f"{r.check} {r.status}" for r in results if r.exit_code != 0]
    status = overall_status(code)
    detail = f"all {len(results)} checks passed" if not bad else ", ".join(bad)
    return f"{RUNNER_NAME}: {status} exit={code} ({detail}) window={window_s}s as_of={fmt_ms(as_of_ms)}"


def record(path: Path, results: list[CheckResult], code: int, summary: str, window_s: int, as_of_ms: int,
           elapsed_ms: int, assets: tuple[str, ...] = (), ts_ms: int | None = None) -> str | None:
    """Insert one check_runs row per result and one for the runner, all stamped `ts_ms` (default
    now: one run, one time, the same the textfile metrics carry); returns a warning or None."""
    ts_ms = now_ms() if ts_ms is None else ts_ms
    if not Path(path).exists():
        return f"results not recorded: database {path} does not exist"
    rows = [(r.check, r.exit_code, json.dumps(stored_summary(r))) for r in results]
    rows.append((RUNNER_NAME, code, json.dumps({
        "status": overall_status(code), "exit_code": code,
        "summary": summary, "checks": {r.check: r.exit_code for r in results}, "elapsed_ms": elapsed_ms,
        "assets": list(assets)})))
    try:
        conn = db.connect(path)
    except sqlite3.Error as exc:
        return f"results not recorded: cannot open {path} for writing: {exc}"
    try:
        for name, exit_code, summary_json in rows:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("INSERT INTO check_runs (ts_ms, check_name, window_s, as_of_ts_ms, exit_code, "
                             "summary_json) VALUES (?, ?, ?, ?, ?, ?)",
                             (ts_ms, name, window_s, as_of_ms, exit_code, summary_json))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    except sqlite3.Error as exc:
        return f"results not recorded in check_runs: {exc}"
    finally:
        conn.close()
    return None


def table_text(results: list[CheckResult], summary: str) -> str:
    w = max(len(r.check) for r in results)
    lines = [f"{'check':<{w}}  {'status':<13}  exit  {'ms':>6}  detail"]
    for r in results:
        if r.error:
            detail = r.error
        elif r.failed:
            detail = ", ".join(f"{m.name}={fmt_num(m.value)} (limit {m.limit_text})" for m in r.failed[:3])
            detail += f", +{len(r.failed) - 3} more" if len(r.failed) > 3 else ""
        else:
            detail = f"{len(r.metrics)} metrics ok"
        lines.append(f"{r.check:<{w}}  {r.status:<13}  {r.exit_code:>4}  {r.elapsed_ms:>6}  {detail}")
    failing = [(r.check, m) for r in results for m in r.failed]
    if failing:
        lines.append("")
        lines.append("failed metrics (name value threshold status):")
        lines += [f"  {check}: {m.line()}" for check, m in failing]
    notes = [(r.check, n) for r in results for n in r.notes]
    lines += [f"  {check}: note: {n}" for check, n in notes]
    lines.append(summary)
    return "\n".join(lines)


@click.command(name=RUNNER_NAME, context_settings={"help_option_names": ["-h", "--help"]})
@common_options
def main(window: int, as_of: int | None, db: str | None, as_json: bool, integrity: str, symbol: str | None) -> None:
    """Run altdata_check, feature_check, feature_leak_check and coinglass_check on the
    same window; print a compact table; record every result in check_runs.
    --symbol ASSET limits all four to that asset (KRW-USDT is judged too).

    Exit 0 only if all four pass, else the highest exit code among them
    (1 FAIL, 3 could not evaluate, 78 misconfigured; 2 = usage error of this command).
    With CQT_HC_URL_CHECKS set, each run pings healthchecks (/start, then /<exit code> with
    the output); with CQT_TEXTFILE_DIR set, it writes cqt_checks.prom (docs/monitoring.md)."""
    t0 = time.monotonic()
    settings = settings_for_cli(RUNNER_NAME, db)
    with pinged_job(settings, "CQT_HC_URL_CHECKS", RUNNER_NAME):
        sys.exit(run_gate(settings, t0, window, as_of, as_json, integrity, symbol))


def run_gate(settings, t0: float, window: int, as_of: int | None, as_json: bool, integrity: str,
             symbol: str | None) -> int:
    """The gate's run after its settings are loaded: check, record, print; returns the exit code."""
    assets = assets_for_cli(RUNNER_NAME, settings, symbol)
    as_of_ms = now_ms() if as_of is None else as_of
    results = run_all(settings, as_of_ms, window, integrity, assets)
    code = combine_exit_codes([r.exit_code for r in results])
    summary = overall_summary(results, code, window, as_of_ms)
    elapsed_ms = int((time.monotonic() - t0) * 1000)
    recorded_ms = now_ms()
    if results.damaged:
        warning = "results not recorded: the database failed its integrity check (no writes into a damaged file)"
    else:
        warning = record(settings.db, results, code, summary, window, as_of_ms, elapsed_ms, assets, recorded_ms)
    checks = [r.to_dict() for r in results]
    if as_json:
        click.echo(json.dumps({"check": RUNNER_NAME, "status": overall_status(code), "exit_code": code,
                               "window_s": window, "as_of_ms": as_of_ms, "as_of": fmt_ms(as_of_ms),
                               "assets": list(assets),
                               "summary": summary, "recorded": warning is None, "elapsed_ms": elapsed_ms,
                               "recorded_ts_ms": recorded_ms, "checks": checks}))
    else:
        click.echo(table_text(results, summary))
    if warning:
        click.echo(f"{RUNNER_NAME}: warning: {warning}", err=True)
    write_checks_file(settings, checks, {"check": RUNNER_NAME, "exit_code": code, "elapsed_ms": elapsed_ms,
                                         "window_s": window, "as_of_ms": as_of_ms}, recorded_ms)
    log.debug("runner elapsed_ms=%d", elapsed_ms)
    return code
