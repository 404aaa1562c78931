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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__, exitcodes
from ..bookkeeping import insert_export_run
from ..config import ROOT
from ..db import DatabaseMissing, SchemaTooNew, connect, open_readonly
from ..outputs import OutputRefused, guard_output
from ..timeutil import fmt_ms, now_ms
from .labelling import DROP_REASONS, LABELS, label_rows, realized_volatility
from .parquet import FIXED_DESCRIPTIONS, FORMAT, build_table, with_symbol_column, write_parquet_atomic
from .reading import Inputs, feature_columns, has_asset, read_inputs, resolve_range
from .request import AssetResult, ExportError, ExportRequest, ExportResult

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


def insert_export_row(conn: sqlite3.Connection, res: ExportResult, ts_ms: int) -> None:
    """The export_runs row of `res`, with the assets the file holds."""
    insert_export_run(conn, ts_ms=ts_ms, output=str(res.output), size_bytes=res.size_bytes, rows=res.rows,
                      horizon_sec=res.horizon_sec, threshold=res.threshold.spec, from_ts_ms=res.from_ms,
                      to_ts_ms=res.to_ms, drops=res.drops, labels=res.labels,
                      volatility=res.volatility.get("annualized"), summary=res.summary(), symbols=res.symbols)


def record_export(db: Path, res: ExportResult, ts_ms: int | None = None) -> None:
    """One short write transaction: the export_runs row the report and retention read."""
    conn = connect(db)
    try:
        insert_export_row(conn, res, now_ms() if ts_ms is None else ts_ms)
    finally:
        conn.close()


def open_source(db: Path) -> sqlite3.Connection:
    try:
        return open_readonly(db)
    except (DatabaseMissing, SchemaTooNew) as exc:
        raise ExportError(exitcodes.NOEVAL, str(exc)) from None
    except sqlite3.Error as exc:
        raise ExportError(exitcodes.NOEVAL, f"cannot open database {db}: {exc}") from None


def check_assets(conn: sqlite3.Connection, req: ExportRequest) -> None:
    """An asset outside CQT_SYMBOLS may be exported only if the database holds it (an asset collected
    before); anything else is a typo: exit 2."""
    for asset in req.symbols:
        if asset not in req.configured and not has_asset(conn, asset):
            raise ExportError(exitcodes.USAGE, f"--symbol {asset}: not a configured asset "
                                               f"(CQT_SYMBOLS={','.join(req.configured)}) and not in the database")


@dataclass
class AssetRows:
    """One asset's labelled rows: its Arrow table (kept rows only) and its counts."""
    table: Any
    descriptions: dict[str, str]
    result: AssetResult
    worst_hint: str


def label_asset(inp: Inputs, req: ExportRequest, from_ms: int, to_ms: int) -> AssetRows | None:
    """Label one asset from its own rows; None when it has no candidates."""
    import numpy as np

    candidates = len(inp.pred)
    if candidates == 0:
        return None
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
    hint = ""
    if rows == 0:
        worst = max(drops, key=lambda k: drops[k])
        hint = f"mostly {worst}"
        if worst == "missing_features" and lab.missing_by_column:
            col = max(lab.missing_by_column, key=lambda k: lab.missing_by_column[k])
            hint += f" (most often NULL: {col}; see --allow-missing)"
        elif worst == "stale_source" and lab.stale_by_source:
            hint += f" (most often stale: {max(lab.stale_by_source, key=lambda k: lab.stale_by_source[k])})"
        elif worst == "label_pending":
            hint += f" (the label window of every row ends after the newest market_1s bar; wait {req.horizon_sec} s)"
    table, descriptions = build_table(t0, inp.pred, inp.features, lab) if rows else (None, {})
    return AssetRows(table, descriptions,
                     AssetResult(inp.symbol, rows, candidates, drops, details, labels, vol, inp.models), hint)


def total(results: list[AssetResult], key: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in results:
        for k, v in getattr(r, key).items():
            out[k] = out.get(k, 0) + v
    return out


def total_details(results: list[AssetResult]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {"missing_by_column": {}, "stale_by_source": {}}
    for r in results:
        for kind, counts in r.drop_details.items():
            for k, v in counts.items():
                out[kind][k] = out[kind].get(k, 0) + v
    return out


def run_export(db: Path, req: ExportRequest, stall_s: float = 0.0) -> ExportResult:
    """Read, label (each asset from its own rows), write, record. Raises ExportError (with an exit
    code) when no file is written."""
    started = time.monotonic()
    if req.horizon_sec <= 0:
        raise ExportError(exitcodes.USAGE, "--horizon must be a positive number of seconds")
    conn = open_source(db)
    done: list[AssetRows] = []
    per: dict[str, AssetResult] = {}
    try:
        check_assets(conn, req)
        from_ms, to_ms = resolve_range(conn, req.from_ms, req.to_ms, req.last_ms, req.symbols)
        vol_window = req.threshold.vol_window if req.threshold.policy == "dynamic" else 1
        feats = feature_columns(conn)
        unknown = [c for c in req.allow_missing if c != "all" and c not in feats]
        if unknown:
            raise ExportError(exitcodes.USAGE, f"--allow-missing: not a feature column: {', '.join(unknown)}")
        for asset in req.symbols:   # one asset in memory at a time: its inputs are freed before the next
            inp = read_inputs(conn, asset, from_ms, to_ms, req.horizon_sec, req.max_delay_s, vol_window, feats)
            one = label_asset(inp, req, from_ms, to_ms)
            if one is None:
                per[asset] = AssetResult(asset, 0, 0, {k: 0 for k in DROP_REASONS},
                                         {"missing_by_column": {}, "stale_by_source": {}},
                                         {"UP": 0, "DOWN": 0, "NONE": 0}, realized_volatility([], [], 0, 0, 1), [])
                continue
            per[asset] = one.result
            done.append(one)
    except sqlite3.Error as exc:
        raise ExportError(exitcodes.NOEVAL, f"cannot read database {db}: {exc}") from None
    finally:
        conn.close()

    results = list(per.values())
    candidates = sum(r.candidates for r in results)
    names = ", ".join(req.symbols)
    if candidates == 0:
        raise ExportError(exitcodes.FAIL, f"no predictions in range {fmt_ms(from_ms)} .. {fmt_ms(to_ms)} of {names}: "
                                          "is cqt-aggregate running?")
    drops, labels = total(results, "drops"), total(results, "labels")
    drops = {k: drops.get(k, 0) for k in DROP_REASONS}
    labels = {k: labels.get(k, 0) for k in ("UP", "DOWN", "NONE")}
    rows = sum(r.rows for r in results)
    details = total_details(results)
    if rows == 0:
        why = "; ".join(f"{x.result.symbol}: {x.worst_hint}" for x in done) if len(done) > 1 else done[0].worst_hint
        raise ExportError(exitcodes.FAIL, f"0 rows: all {candidates} candidates dropped, {why}; "
                                          f"drops {json.dumps(drops)}; nothing written")
    held = [x for x in done if x.result.rows > 0]
    symbols = tuple(x.result.symbol for x in held)
    table = with_symbol_column([x.table for x in held], symbols)
    descriptions = {"t0": held[0].descriptions["t0"], "symbol": FIXED_DESCRIPTIONS["symbol"], **held[0].descriptions}
    vol = per[symbols[0]].volatility
    models = sorted({m for r in results for m in r.models})
    version = code_version()
    res = ExportResult(output=req.output, size_bytes=0, rows=rows, candidates=candidates, drops=drops,
                       drop_details=details, labels=labels, volatility=vol, from_ms=from_ms, to_ms=to_ms,
                       horizon_sec=req.horizon_sec, threshold=req.threshold, elapsed_s=0.0, code_version=version,
                       symbols=symbols, per_symbol=per)
    meta = {
        "format": FORMAT,
        "created": fmt_ms(now_ms()),
        "horizon_sec": req.horizon_sec,
        "threshold": req.threshold.as_dict(),
        "threshold_spec": req.threshold.spec,
        "label_rule": "label_ts = first market_1s bar of the row's own symbol with has_trade = 1 and "
                      "ts_ms >= t0 + horizon_sec, "
                      "accepted up to t0 + horizon_sec + label_max_delay_s; ret = price_label / price_t0 - 1; "
                      "UP if ret > r_t, DOWN if ret < -r_t, else NONE",
        "label_max_delay_s": req.max_delay_s,
        "stale_limits_s": req.stale_limits_s,
        "allow_missing": list(req.allow_missing),
        "time_range": {"from": fmt_ms(from_ms), "to": fmt_ms(to_ms), "from_ts_ms": from_ms, "to_ts_ms": to_ms,
                       "bounds": "inclusive, bar times (a bar covering (t-1 s, t] has time t)"},
        "source_db": str(db),
        "models": models,
        "code_version": version,
        "candidates": candidates,
        "rows": rows,
        "drops": drops,
        "drop_details": details,
        "drop_order": list(DROP_REASONS),
        "labels": labels,
        "volatility": vol,
        "symbols": list(symbols),
        "per_symbol": {a: {"candidates": r.candidates, "rows": r.rows, "drops": r.drops, "drop_details": r.drop_details,
                           "labels": r.labels, "volatility": r.volatility, "models": r.models,
                           "time_range": {"from": fmt_ms(from_ms), "to": fmt_ms(to_ms), "from_ts_ms": from_ms,
                                          "to_ts_ms": to_ms}}
                       for a, r in per.items()},
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
