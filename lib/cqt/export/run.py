"""The export: read, label, write the Parquet file, record one export_runs row.

`--output` passes the output guard first (`cqt.outputs`: never the database, its side
files, a device or an existing file that is not a cqt Parquet file); the file is written to
a temporary name in the output directory and renamed, so `--output` is either the old file
or the complete new one, never half a file. The only database write is the export_runs row,
in one short transaction.
"""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

from .. import __version__, exitcodes
from ..bookkeeping import insert_export_run
from ..config import ROOT
from ..db import DatabaseMissing, SchemaTooNew, connect, open_readonly
from ..outputs import OutputRefused, guard_output
from ..timeutil import fmt_ms, now_ms
from .labelling import DROP_REASONS, LABELS, label_rows, realized_volatility
from .parquet import FORMAT, build_table, write_parquet_atomic
from .reading import read_inputs, resolve_range
from .request import ExportError, ExportRequest, ExportResult

OVERLAP_NOTE = (
    "Labels of neighbouring rows overlap: with 1 s rows and a horizon of H seconds, about H consecutive "
    "rows share part of each label's future price path, so rows are not independent. Cross-validation "
    "and train/test splits must purge rows whose label window [t0, label_ts] overlaps the test period "
    "and add an embargo of at least H seconds (better H + label_max_delay_s) after each test block; "
    "a plain shuffled K-fold leaks the future.")


def code_version() -> str:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--tags", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=3)
        if out.returncode == 0 and out.stdout.strip():
            return f"{__version__}+git.{out.stdout.strip()}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def export_target(output: str | os.PathLike, db: Path) -> Path:
    """The real path `--output` names, after the output guard (never the database, a device,
    or an existing file that is not a cqt Parquet file); ExportError(2) otherwise."""
    try:
        return guard_output(output, "parquet", db_path=db)
    except OutputRefused as exc:
        raise ExportError(exc.code, str(exc)) from None


def record_export(db: Path, res: ExportResult, ts_ms: int | None = None) -> None:
    """One short write transaction: the export_runs row the report and retention read."""
    s = res.summary()
    conn = connect(db)
    try:
        insert_export_run(conn, ts_ms=now_ms() if ts_ms is None else ts_ms, output=str(res.output),
                          size_bytes=res.size_bytes, rows=res.rows, horizon_sec=res.horizon_sec,
                          threshold=res.threshold.spec, from_ts_ms=res.from_ms, to_ts_ms=res.to_ms, drops=res.drops,
                          labels=res.labels, volatility=res.volatility.get("annualized"), summary=s)
    finally:
        conn.close()


def run_export(db: Path, req: ExportRequest, stall_s: float = 0.0) -> ExportResult:
    """Read, label, write, record. Raises ExportError (with an exit code) when no file is written."""
    import numpy as np

    started = time.monotonic()
    if req.horizon_sec <= 0:
        raise ExportError(exitcodes.USAGE, "--horizon must be a positive number of seconds")
    try:
        conn = open_readonly(db)
    except DatabaseMissing as exc:
        raise ExportError(exitcodes.NOEVAL, str(exc)) from None
    except SchemaTooNew as exc:
        raise ExportError(exitcodes.NOEVAL, str(exc)) from None
    except sqlite3.Error as exc:
        raise ExportError(exitcodes.NOEVAL, f"cannot open database {db}: {exc}") from None
    try:
        from_ms, to_ms = resolve_range(conn, req.from_ms, req.to_ms, req.last_ms)
        vol_window = req.threshold.vol_window if req.threshold.policy == "dynamic" else 1
        inp = read_inputs(conn, from_ms, to_ms, req.horizon_sec, req.max_delay_s, vol_window)
    except sqlite3.Error as exc:
        raise ExportError(exitcodes.NOEVAL, f"cannot read database {db}: {exc}") from None
    finally:
        conn.close()

    unknown = [c for c in req.allow_missing if c != "all" and c not in inp.features]
    if unknown:
        raise ExportError(exitcodes.USAGE, f"--allow-missing: not a feature column: {', '.join(unknown)}")
    candidates = len(inp.pred)
    if candidates == 0:
        raise ExportError(exitcodes.FAIL, f"no predictions in range {fmt_ms(from_ms)} .. {fmt_ms(to_ms)}: "
                                          "is cqt-aggregate running?")
    t0 = inp.pred[:, 0].astype(np.int64)
    features = inp.pred[:, 1:1 + len(inp.features)]
    lab = label_rows(t0, features, inp.features, inp.market, req.horizon_sec, req.max_delay_s, req.threshold,
                     inp.newest_market_ms, req.stale_limits_s, req.allow_missing)
    drops = {name: int((lab.reason == i).sum()) for i, name in enumerate(DROP_REASONS)}
    rows = int(lab.keep.sum())
    assert rows + sum(drops.values()) == candidates
    labels = {name: int(((lab.label == i) & lab.keep).sum()) for i, name in enumerate(LABELS)}
    labels = {k: labels[k] for k in ("UP", "DOWN", "NONE")}
    vol = realized_volatility(inp.market[:, 0] if len(inp.market) else np.empty(0),
                              inp.market[:, 1] if len(inp.market) else np.empty(0), from_ms, to_ms, req.horizon_sec)
    details = {"missing_by_column": lab.missing_by_column, "stale_by_source": lab.stale_by_source}
    if rows == 0:
        worst = max(drops, key=lambda k: drops[k])
        hint = ""
        if worst == "missing_features" and lab.missing_by_column:
            col = max(lab.missing_by_column, key=lambda k: lab.missing_by_column[k])
            hint = f" (most often NULL: {col}; see --allow-missing)"
        elif worst == "stale_source" and lab.stale_by_source:
            hint = f" (most often stale: {max(lab.stale_by_source, key=lambda k: lab.stale_by_source[k])})"
        elif worst == "label_pending":
            hint = f" (the label window of every row ends after the newest market_1s bar; wait {req.horizon_sec} s)"
        raise ExportError(exitcodes.FAIL, f"0 rows: all {candidates} candidates dropped, mostly {worst}{hint}; "
                                          f"drops {json.dumps(drops)}; nothing written")

    table, descriptions = build_table(t0, inp.pred, inp.features, lab)
    version = code_version()
    res = ExportResult(output=req.output, size_bytes=0, rows=rows, candidates=candidates, drops=drops,
                       drop_details=details, labels=labels, volatility=vol, from_ms=from_ms, to_ms=to_ms,
                       horizon_sec=req.horizon_sec, threshold=req.threshold, elapsed_s=0.0, code_version=version)
    meta = {
        "format": FORMAT,
        "created": fmt_ms(now_ms()),
        "horizon_sec": req.horizon_sec,
        "threshold": req.threshold.as_dict(),
        "threshold_spec": req.threshold.spec,
        "label_rule": "label_ts = first market_1s bar with has_trade = 1 and ts_ms >= t0 + horizon_sec, "
                      "accepted up to t0 + horizon_sec + label_max_delay_s; ret = price_label / price_t0 - 1; "
                      "UP if ret > r_t, DOWN if ret < -r_t, else NONE",
        "label_max_delay_s": req.max_delay_s,
        "stale_limits_s": req.stale_limits_s,
        "allow_missing": list(req.allow_missing),
        "time_range": {"from": fmt_ms(from_ms), "to": fmt_ms(to_ms), "from_ts_ms": from_ms, "to_ts_ms": to_ms,
                       "bounds": "inclusive, bar times (a bar covering (t-1 s, t] has time t)"},
        "source_db": str(db),
        "models": inp.models,
        "code_version": version,
        "candidates": candidates,
        "rows": rows,
        "drops": drops,
        "drop_details": details,
        "drop_order": list(DROP_REASONS),
        "labels": labels,
        "volatility": vol,
        "columns": descriptions,
        "note": OVERLAP_NOTE.replace("H seconds", f"H = {req.horizon_sec} seconds", 1),
    }
    try:
        res.size_bytes = write_parquet_atomic(table, req.output, meta, stall_s=stall_s)
    except OSError as exc:
        raise ExportError(exitcodes.IOERR, f"cannot write {req.output}: {exc.strerror or exc}") from None
    res.elapsed_s = time.monotonic() - started
    if req.record:
        try:
            record_export(db, res)
            res.recorded = True
        except sqlite3.Error as exc:
            raise ExportError(exitcodes.IOERR,
                              f"wrote {req.output} but could not record it in export_runs: {exc}") from None
    return res
