"""cqt-nightly: the nightly job that cron / cqt-scheduler call.

Steps, in order; a failing step never stops the later ones:

    1. checks      checks/run_pipeline_checks.sh --window 600 --db DB   (a subprocess;
                   CQT_NIGHTLY_CHECKS_CMD replaces the command)
    2. export_1h   CQT_DATASET_DIR/btc_1h.parquet   (the hour ending at the newest predictions row)
    3. export_24h  CQT_DATASET_DIR/btc_24h.parquet  + dated copy btc_YYYYMMDD.parquet
                   (YYYYMMDD = UTC date of the data's end)
    4. report      CQT_REPORT (tables, plots, the run log section of that date)
    5. retention   rows older than CQT_KEEP_DAYS deleted - market data only where an export
                   whose file still exists covers them; bookkeeping by age; old rotated captures
                   likewise; then a WAL checkpoint and an incremental vacuum

Every file it writes (exports, dated copy, report, plots) passes the output guard
(`cqt.outputs`) first: a refused target is that step's exit 2, and nothing is written to it.

Exit code = the worst step's (the highest code; codes outside 0/1/2/3/74/78 count as 1).
One summary line on stdout; step details on stderr (both end up in the journal).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import click

from . import exitcodes
from .config import ROOT, ConfigError, Settings
from .db import connect
from .outputs import OutputRefused, guard_output, write_atomic
from .timeutil import now_ms

log = logging.getLogger("cqt.nightly")

KNOWN_CODES = (exitcodes.OK, exitcodes.FAIL, exitcodes.USAGE, exitcodes.NOEVAL, exitcodes.IOERR, exitcodes.CONFIG)
HOUR, DAY = 3_600_000, 86_400_000
RUNNER = ROOT / "checks" / "run_pipeline_checks.sh"

# Market-data tables (time column from the time rule) and the index prefix that makes a
# time-range delete an index range instead of a table scan.
PREFIX = {
    "upbit_trades": "code", "upbit_orderbook": "code", "upbit_ticker": "code",
    "binance_agg_trades": "symbol", "binance_mark_price": "symbol", "binance_book_ticker": "symbol",
    "binance_liquidations": "symbol", "binance_open_interest": "symbol", "binance_ratios": "kind",
    "binance_premium_index": "symbol", "binance_funding_rate": "symbol",
}
DERIVED = {"market_1s": "ts_ms", "predictions": "ts_ms"}
# Bookkeeping: deleted by age alone (not exported data). heartbeats keep each service's first row
# (the report's collection start); check_runs, export_runs and service_runs are small and kept.
BOOKKEEPING = {"ingest_stats": "ts_ms", "rejects": "ts_ms", "coinglass_call_status": "ts_ms", "events": "ts_ms",
               "gaps": "detected_ts_ms", "reject_counts": "hour_ms", "heartbeats": "ts_ms"}
_CAPTURE_DAY_RE = re.compile(r"\.(\d{4}-\d{2}-\d{2})\.")


@dataclass
class Step:
    name: str
    code: int = exitcodes.OK
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    elapsed_s: float = 0.0


def normalize_code(code: int) -> int:
    return code if code in KNOWN_CODES else exitcodes.FAIL


def worst(codes: Iterable[int]) -> int:
    return max((normalize_code(c) for c in codes), default=exitcodes.OK)


# ------------------------------------------------------------------------------ steps
def checks_command(settings: Settings) -> list[str]:
    """CQT_NIGHTLY_CHECKS_CMD (a command line; default: the pipeline runner) - `--window N --db DB` are appended.

    The default runner does the full `integrity_check` at night (the scheduled runs do the
    bounded quick check), so a damaged page anywhere is found within a day."""
    text = settings.get_str("CQT_NIGHTLY_CHECKS_CMD", "")
    return shlex.split(text) if text.strip() else ["sh", str(RUNNER), "--integrity", "full"]


def step_checks(settings: Settings, window: int, timeout_s: float) -> Step:
    cmd = [*checks_command(settings), "--window", str(window), "--db", str(settings.db)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return Step("checks", exitcodes.FAIL, f"run_pipeline_checks did not finish in {timeout_s:g} s")
    except OSError as exc:
        return Step("checks", exitcodes.NOEVAL, f"cannot run {cmd[0]}: {exc}")
    for line in (r.stdout + r.stderr).strip().splitlines()[-12:]:
        log.info("checks: %s", line)
    last = next((ln for ln in reversed(r.stdout.strip().splitlines()) if ln.strip()), "") or \
        next((ln for ln in reversed(r.stderr.strip().splitlines()) if ln.strip()), "")
    return Step("checks", r.returncode, f"EXIT_CODE={r.returncode} {last.strip()[:200]}", {"exit_code": r.returncode})


def step_export(settings: Settings, name: str, output: Path, last: str, horizon: int | None, threshold: str) -> tuple[Step, Any]:
    from .dataset import ExportError, Threshold, export_target, parse_duration_ms, run_export, settings_request

    try:
        output = export_target(output, settings.db)
        req = settings_request(settings, output, horizon_sec=horizon, last_ms=parse_duration_ms(last),
                               threshold=Threshold.parse(threshold))
        res = run_export(settings.db, req)
    except ExportError as exc:
        return Step(name, exc.code, str(exc)), None
    except ConfigError as exc:
        return Step(name, exitcodes.CONFIG, str(exc)), None
    s = res.summary()
    pct = s["label_pct"]
    return Step(name, exitcodes.OK,
                f"{output.name} rows={res.rows} size={res.size_bytes} label_ts_violation={s['label_ts_violation']} "
                f"UP/DOWN/NONE={pct['UP']:.1f}/{pct['DOWN']:.1f}/{pct['NONE']:.1f}%",
                {"output": str(output), "rows": res.rows, "size_bytes": res.size_bytes, "to_ts_ms": res.to_ms}), res


def dated_copy(settings: Settings, res: Any) -> Path:
    """btc_YYYYMMDD.parquet (UTC date of the data's end) beside btc_24h.parquet, atomically, and its
    own export_runs row (so retention still finds a file for this range after btc_24h is replaced)."""
    from .dataset import record_export

    day = datetime.fromtimestamp(res.to_ms / 1000, tz=timezone.utc).strftime("%Y%m%d")
    dst = guard_output(res.output.parent / f"btc_{day}.parquet", "parquet", db_path=settings.db)

    def link_or_copy(tmp: Path) -> None:
        try:
            os.link(res.output, tmp)           # same bytes, no copy; btc_24h is replaced by rename, never rewritten
        except OSError:
            shutil.copyfile(res.output, tmp)

    write_atomic(dst, write=link_or_copy, keep_mode=False)   # a chmod would change btc_24h too (one inode)
    copy = type(res)(**{**res.__dict__, "output": dst})
    record_export(settings.db, copy)
    return dst


def step_report(settings: Settings) -> Step:
    from .db import DatabaseMissing, SchemaTooNew
    from .report import update_report

    try:
        out = update_report(settings)
    except OutputRefused as exc:
        return Step("report", exc.code, str(exc))
    except (DatabaseMissing, SchemaTooNew) as exc:
        return Step("report", exitcodes.NOEVAL, str(exc))
    except sqlite3.Error as exc:
        return Step("report", exitcodes.NOEVAL, f"cannot read database: {exc}")
    except OSError as exc:
        return Step("report", exitcodes.IOERR, f"cannot write {settings.report}: {exc}")
    except ConfigError as exc:
        return Step("report", exitcodes.CONFIG, str(exc))
    if out.missing_blocks and len(out.missing_blocks) == len(out.blocks):
        return Step("report", exitcodes.FAIL, f"{out.path} has none of the cqt blocks")
    return Step("report", exitcodes.OK, f"{'updated' if out.written else 'unchanged'} {out.path} "
                                        f"run_log={out.run_log_date} plots={len(out.plots)}",
                {"path": str(out.path), "written": out.written, "plots": len(out.plots)})


# ------------------------------------------------------------------------------ retention
def merge_spans(spans: Iterable[tuple[int, int]], join_gap_ms: int = 1000) -> list[tuple[int, int]]:
    """Union of inclusive [lo, hi] spans; spans at most `join_gap_ms` apart (adjacent seconds) join."""
    out: list[list[int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + join_gap_ms:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(a, b) for a, b in out]


def exported_coverage(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """Time spans covered by an export whose file still exists with the recorded size."""
    spans = []
    for output, size, lo, hi in conn.execute(
            "SELECT output, size_bytes, from_ts_ms, to_ts_ms FROM export_runs WHERE rows > 0"):
        try:
            if os.path.getsize(output) == size:
                spans.append((int(lo), int(hi)))
        except OSError:
            continue
    return merge_spans(spans)


def clip(spans: list[tuple[int, int]], cutoff_ms: int) -> list[tuple[int, int]]:
    """The parts of the spans strictly before the cutoff."""
    return [(lo, min(hi, cutoff_ms - 1)) for lo, hi in spans if lo < cutoff_ms]


def _write(conn: sqlite3.Connection, sql: str, params: tuple) -> int:
    """One short write transaction; busy is retried a few times (writers hold the lock for ms)."""
    for attempt in range(6):
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise
        try:
            n = conn.execute(sql, params).rowcount
            conn.execute("COMMIT")
            return n
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    raise sqlite3.OperationalError("database is locked (retention gave up after 6 attempts)")


def _prefixes(conn: sqlite3.Connection, table: str, col: str) -> list[Any]:
    """Distinct values of an index prefix, each found with one index seek."""
    out, last = [], None
    while True:
        if last is None:
            r = conn.execute(f"SELECT MIN({col}) FROM {table}").fetchone()
        else:
            r = conn.execute(f"SELECT MIN({col}) FROM {table} WHERE {col} > ?", (last,)).fetchone()
        if r is None or r[0] is None:
            return out
        out.append(r[0])
        last = r[0]


def delete_spans(conn: sqlite3.Connection, table: str, tcol: str, spans: list[tuple[int, int]],
                 prefix: str | None = None, chunk_ms: int = HOUR, extra: str = "") -> int:
    """Delete rows with tcol in the inclusive spans, an hour per transaction."""
    total = 0
    keys: list[Any] = _prefixes(conn, table, prefix) if prefix else [None]
    for key in keys:
        pwhere, pparams = (f"{prefix} = ? AND ", (key,)) if prefix else ("", ())
        oldest = conn.execute(f"SELECT MIN({tcol}) FROM {table} WHERE {pwhere}1", pparams).fetchone()[0]
        if oldest is None:
            continue
        for lo, hi in spans:
            lo = max(lo, int(oldest))
            while lo <= hi:
                top = min(hi, lo + chunk_ms - 1)
                total += _write(conn, f"DELETE FROM {table} WHERE {pwhere}{tcol} >= ? AND {tcol} <= ?{extra}",
                                (*pparams, lo, top))
                lo = top + 1
    return total


def retention(settings: Settings, now: int | None = None) -> Step:
    from .timerule import RAW_TABLES, rule

    now = now_ms() if now is None else now
    cutoff = now - settings.keep_days * DAY
    conn = connect(settings.db)
    deleted: dict[str, int] = {}
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        covered = clip(exported_coverage(conn), cutoff)
        for table in (*RAW_TABLES, *DERIVED):
            if table not in tables:
                continue
            tcol = DERIVED.get(table) or rule(table).time_col
            n = delete_spans(conn, table, tcol, covered, PREFIX.get(table))
            if n:
                deleted[table] = n
        for table, tcol in BOOKKEEPING.items():
            if table not in tables:
                continue
            oldest = conn.execute(f"SELECT MIN({tcol}) FROM {table}").fetchone()[0]
            if oldest is None or oldest >= cutoff:
                continue
            extra = ""
            if table == "heartbeats":
                extra = (" AND ts_ms > (SELECT MIN(h2.ts_ms) FROM heartbeats h2 WHERE h2.service = heartbeats.service)")
            chunk = DAY if table in ("reject_counts",) else HOUR
            n = delete_spans(conn, table, tcol, [(int(oldest), cutoff - 1)], chunk_ms=chunk, extra=extra)
            if n:
                deleted[table] = n
        captures = prune_captures(settings, covered, cutoff)
        ck = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        vac = incremental_vacuum(conn)
    finally:
        conn.close()
    total = sum(deleted.values())
    return Step("retention", exitcodes.OK,
                f"deleted_rows={total} captures_removed={len(captures)} checkpoint_busy={ck[0]} {vac}",
                {"deleted": deleted, "captures_removed": [str(p) for p in captures], "cutoff_ms": cutoff,
                 "covered": covered, "checkpoint": list(ck), "vacuum": vac})


def incremental_vacuum(conn: sqlite3.Connection, pages_per_step: int = 2000, max_steps: int = 500) -> str:
    mode = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    if mode != 2:
        return (f"vacuum=skipped(auto_vacuum={('NONE', 'FULL', 'INCREMENTAL')[mode]}, free_pages={free}: "
                "freed pages are reused; the file does not shrink)")
    before = free
    for _ in range(max_steps):
        if free <= 0:
            break
        conn.execute(f"PRAGMA incremental_vacuum({pages_per_step})").fetchall()
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return f"vacuum=incremental(freed_pages={before - free})"


def prune_captures(settings: Settings, covered: list[tuple[int, int]], cutoff: int) -> list[Path]:
    """Remove rotated capture files (`name.YYYY-MM-DD.ext`) of days before the cutoff whose whole day
    was exported. The current (unrotated) file is never touched."""
    cdir = settings.resolve_path(settings.get_str("CQT_CAPTURE_DIR", "data/captures"))
    if not cdir.is_dir():
        return []
    removed = []
    for p in sorted(cdir.iterdir()):
        m = _CAPTURE_DAY_RE.search(p.name)
        if not m or not p.is_file():
            continue
        try:
            day = int(datetime.strptime(m.group(1), "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() * 1000)
        except ValueError:
            continue
        lo, hi = day, day + DAY - 1000
        if hi < cutoff and any(a <= lo and hi <= b for a, b in covered):
            p.unlink()
            removed.append(p)
    return removed


def step_retention(settings: Settings) -> Step:
    try:
        return retention(settings)
    except sqlite3.Error as exc:
        return Step("retention", exitcodes.IOERR if "disk" in str(exc).lower() else exitcodes.FAIL,
                    f"retention stopped: {exc}")
    except OSError as exc:
        return Step("retention", exitcodes.IOERR, f"retention stopped: {exc}")


# ------------------------------------------------------------------------------ the job
def run_nightly(settings: Settings, window: int = 600, horizon: int | None = None, threshold: str = "fixed:0.001",
                do_retention: bool = True, check_timeout_s: float = 900.0) -> list[Step]:
    steps: list[Step] = []

    def run(name: str, fn, *args) -> Any:
        t = time.monotonic()
        try:
            out = fn(*args)
        except Exception as exc:  # noqa: BLE001 - one broken step must not stop the next
            log.error("nightly step %s failed unexpectedly: %s", name, exc, exc_info=True)
            out = Step(name, exitcodes.FAIL, f"unexpected error: {type(exc).__name__}: {exc}")
        step, extra = out if isinstance(out, tuple) else (out, None)
        step.elapsed_s = time.monotonic() - t
        steps.append(step)
        logf = log.info if step.code == 0 else log.error
        logf("step=%s exit_code=%d elapsed_s=%.1f %s", step.name, step.code, step.elapsed_s, step.detail)
        return extra

    ddir = settings.dataset_dir
    run("checks", step_checks, settings, window, check_timeout_s)
    run("export_1h", step_export, settings, "export_1h", ddir / "btc_1h.parquet", "1h", horizon, threshold)
    res24 = run("export_24h", step_export, settings, "export_24h", ddir / "btc_24h.parquet", "24h", horizon, threshold)
    if res24 is not None:
        try:
            dst = dated_copy(settings, res24)
            steps[-1].data["dated_copy"] = str(dst)
            steps[-1].detail += f" dated={dst.name}"
        except OutputRefused as exc:
            steps[-1].code = exc.code
            steps[-1].detail += f" dated copy: {exc}"
            log.error("dated copy of %s: %s", res24.output, exc)
        except (OSError, sqlite3.Error) as exc:
            steps[-1].code = exitcodes.IOERR
            steps[-1].detail += f" dated copy failed: {exc}"
            log.error("dated copy of %s failed: %s", res24.output, exc)
    run("report", step_report, settings)
    if do_retention:
        run("retention", step_retention, settings)
    return steps


def summary_line(steps: list[Step], elapsed_s: float) -> str:
    code = worst(s.code for s in steps)
    parts = " ".join(f"{s.name}={s.code}" for s in steps)
    rows = {s.name: s.data.get("rows") for s in steps if "rows" in s.data}
    extra = " ".join(f"{k}_rows={v}" for k, v in rows.items())
    ret = next((s for s in steps if s.name == "retention"), None)
    if ret is not None and "deleted" in ret.data:
        extra += f" deleted_rows={sum(ret.data['deleted'].values())}"
    failed = [s.name for s in steps if s.code != 0]
    return (f"nightly: exit={code} {parts} {extra} elapsed_s={elapsed_s:.1f}"
            + (f" failed={','.join(failed)}" if failed else "")).replace("  ", " ")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", type=click.Path(dir_okay=False), help="Database file (default CQT_DB).")
@click.option("--window", default=600, show_default=True, type=click.IntRange(min=1),
              help="Window of the pipeline checks, seconds.")
@click.option("--horizon", default=None, type=click.IntRange(min=1),
              help="Export label horizon, s [default: CQT_EXPORT_HORIZON_S or 120].")
@click.option("--threshold", default="fixed:0.001", show_default=True, help="Export threshold policy (see cqt-export).")
@click.option("--no-retention", is_flag=True, help="Skip the retention step.")
@click.option("--json", "as_json", is_flag=True, help="Print the steps as one JSON object instead of the summary line.")
def main(db, window, horizon, threshold, no_retention, as_json):
    """Nightly job: pipeline checks, exports (1 h, 24 h + dated copy), report, retention.

    A failing step does not stop the later ones. Exit code = the worst step's
    (0 all fine, 1 a step failed, 3 could not evaluate, 74 I/O error, 78 bad setting).
    """
    from .dataset import Threshold
    from .runtime import load_settings_or_exit, setup_logging

    settings = load_settings_or_exit(db=db)
    setup_logging("cqt-nightly", settings.log_level, settings.secrets)
    try:
        Threshold.parse(threshold)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--threshold") from None
    try:
        timeout = settings.get_float("CQT_NIGHTLY_CHECK_TIMEOUT_S", 900.0, minimum=1)
        settings.get_str("CQT_CAPTURE_DIR", "data/captures")
    except ConfigError as exc:
        click.echo(f"cqt-nightly: {exc}", err=True)
        sys.exit(exitcodes.CONFIG)
    ddir = settings.dataset_dir
    try:
        ddir.mkdir(parents=True, exist_ok=True)
        # opened without truncating and without following a symlink: the lock file never clobbers anything
        lock_fd = os.open(ddir / ".cqt-nightly.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        lock = os.fdopen(lock_fd, "r+")
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        click.echo("cqt-nightly: another cqt-nightly is running (lock held); not starting a second one", err=True)
        sys.exit(exitcodes.FAIL)
    except OSError as exc:
        click.echo(f"cqt-nightly: cannot use {ddir}: {exc}", err=True)
        sys.exit(exitcodes.IOERR)
    t = time.monotonic()
    steps = run_nightly(settings, window, horizon, threshold, not no_retention, timeout)
    code = worst(s.code for s in steps)
    if as_json:
        click.echo(json.dumps({"exit_code": code, "steps": [
            {"name": s.name, "exit_code": s.code, "detail": s.detail, "elapsed_s": round(s.elapsed_s, 3), **s.data}
            for s in steps]}, sort_keys=True, default=str))
    else:
        click.echo(summary_line(steps, time.monotonic() - t))
    lock.close()
    sys.exit(code)
