"""The newest export of each asset, as the checks see it: which file, its horizon, and its label counts.

feature_leak_check reads its t0/label_ts (the label horizon rule); feature_check judges its
label distribution (export.<asset>.labels.*): a dataset that is all NONE, or where one class
is almost absent, is useless for training however clean its features are — e.g. an export
run with a fixed threshold far above the market's moves (`--threshold fixed:0.5`).

A file holds one asset or several (its `symbol` column; the nightly writes one file per asset,
`<asset>_24h.parquet`). The newest export of asset A is the newest export_runs row whose file
still exists and holds A: the row's `symbols` column (schema 6) or its summary's `symbols`
say which assets; a file from before either has a `symbol` column, or held BTC only (the
single-symbol cqt). A's label counts are the ones cqt-export recorded for it
(summary_json.per_symbol[A].labels, or labels_json when the file holds A alone), else
counted in the file's rows of A.
"""
from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import CheckContext
from .result import Metric

LABEL_CLASSES = ("UP", "DOWN", "NONE")   # the export's classes (cqt.export.labelling.LABELS)
RECENT_RUNS = 50                         # export_runs rows per configured asset looked at
LEGACY_ASSET = "BTC"                     # what a file of the single-symbol cqt holds


@dataclass(frozen=True)
class Export:
    path: Path
    horizon_sec: int
    threshold: str
    asset: str
    symbols: tuple[str, ...]             # every asset the file holds
    has_symbol_column: bool
    recorded: dict[str, int] | None      # the asset's label counts as cqt-export recorded them


def _summary(text: str | None) -> dict[str, Any]:
    try:
        d = json.loads(text or "")
    except ValueError:
        return {}
    return d if isinstance(d, dict) else {}


def file_columns(path: Path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def file_symbols(path: Path) -> tuple[str, ...]:
    """The distinct values of the file's `symbol` column (one column read)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["symbol"]).column("symbol")
    return tuple(sorted(str(v) for v in pc.unique(pc.cast(col, pa.string())).to_pylist() if v))


def _run_symbols(row: sqlite3.Row | tuple, summary: dict[str, Any], path: Path, has_col: bool) -> tuple[str, ...]:
    listed = row[5] if len(row) > 5 else None
    if listed:
        return tuple(s.strip().upper() for s in str(listed).split(",") if s.strip())
    if isinstance(summary.get("symbols"), list) and summary["symbols"]:
        return tuple(str(s).upper() for s in summary["symbols"])
    if has_col:
        return file_symbols(path)
    return (LEGACY_ASSET,)


def recorded_counts(labels: Any) -> dict[str, int] | None:
    """{class: rows} as cqt-export recorded it (a JSON text or a dict), or None when it does not say."""
    d = labels
    if isinstance(labels, str):
        try:
            d = json.loads(labels)
        except ValueError:
            return None
    if not isinstance(d, dict) or not all(isinstance(d.get(c), int) and not isinstance(d.get(c), bool)
                                          for c in LABEL_CLASSES):
        return None
    return {c: int(d[c]) for c in LABEL_CLASSES}


def newest_exports(ctx: CheckContext) -> dict[str, Export]:
    """{asset: its newest export} for every judged asset that has one whose file still exists."""
    has_symbols = any(r[1] == "symbols" for r in ctx.conn.execute("PRAGMA table_info(export_runs)"))
    cols = "output, horizon_sec, threshold, labels_json, summary_json" + (", symbols" if has_symbols else "")
    wanted = set(ctx.assets)
    found: dict[str, Export] = {}
    limit = RECENT_RUNS * max(1, len(ctx.settings.assets))
    for row in ctx.conn.execute(f"SELECT {cols} FROM export_runs ORDER BY ts_ms DESC, id DESC LIMIT ?", (limit,)):
        if wanted <= set(found):
            break
        path = ctx.settings.resolve_path(row[0])
        if not path.is_file():
            continue
        summary = _summary(row[4])
        try:
            has_col = "symbol" in file_columns(path)
            symbols = _run_symbols(row, summary, path, has_col)
        except Exception:  # noqa: BLE001 - an unreadable file: the label metrics say so when they read it
            has_col, symbols = False, (LEGACY_ASSET,)
        per_symbol = summary.get("per_symbol") if isinstance(summary.get("per_symbol"), dict) else {}
        for asset in wanted & set(symbols) - set(found):
            mine = per_symbol.get(asset)
            recorded = recorded_counts(mine.get("labels")) if isinstance(mine, dict) else None
            if recorded is None and symbols == (asset,):
                recorded = recorded_counts(row[3] or "")
            found[asset] = Export(path, int(row[1]), str(row[2]), asset, symbols, has_col, recorded)
    return found


def file_rows(found: Export, columns: list[str]):
    """The file's `columns` for the export's asset only (its `symbol` column filtered when the
    file has one), as a pyarrow Table."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not found.has_symbol_column:
        return pq.read_table(found.path, columns=columns)
    table = pq.read_table(found.path, columns=["symbol", *columns])
    return table.filter(pc.equal(pc.cast(table.column("symbol"), pa.string()), found.asset)).select(columns)


def file_counts(found: Export) -> dict[str, int]:
    """{class: rows} of the asset from the file's `label` column (counted by pyarrow)."""
    import pyarrow.compute as pc

    col = file_rows(found, ["label"]).column("label")
    counts = {c: 0 for c in LABEL_CLASSES}
    if len(col) == 0:
        return counts
    for item in pc.value_counts(col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)).to_pylist():
        value = item["values"]
        if value in counts:
            counts[value] += int(item["counts"])
    return counts


def label_metrics(ctx: CheckContext) -> list[Metric]:
    """Per judged asset: export.<A>.labels.<class>.share >= CQT_CHECK_LABEL_MIN_SHARE for each
    class, and export.<A>.labels.not_all_none: at least one UP or DOWN row (fails even when the
    share limit is 0); SKIP export.<A>.labels when A has no export yet."""
    exports = newest_exports(ctx)
    out: list[Metric] = []
    for asset in ctx.assets:
        found = exports.get(asset)
        if found is None:
            out.append(Metric.skip(f"export.{asset}.labels",
                                   f"no export of {asset} yet (no export_runs entry whose file exists and holds it)"))
            continue
        out += asset_label_metrics(ctx, found)
    return out


def asset_label_metrics(ctx: CheckContext, found: Export) -> list[Metric]:
    prefix = f"export.{found.asset}.labels"
    counts, source = found.recorded, "as recorded in export_runs"
    if counts is None:
        try:
            counts = file_counts(found)
        except Exception as exc:  # noqa: BLE001 - an unreadable export is a failed metric, said plainly
            return [Metric.judge(f"{prefix}.not_all_none", None, ">=", 1,
                                 none_reason=f"cannot read the label column of {found.path}: "
                                             f"{type(exc).__name__}: {exc}")]
        source = "counted in the file"
    total = sum(counts.values())
    name = found.path.name
    of = f" of {found.asset}" if len(found.symbols) > 1 else ""
    if total == 0:
        return [Metric.judge(f"{prefix}.not_all_none", 0, ">=", 1, f"{name} has no labelled rows{of}")]
    min_share = ctx.thresholds("CQT_CHECK_LABEL_MIN_SHARE")
    dist = ", ".join(f"{c} {counts[c]} ({counts[c] / total:.1%})" for c in LABEL_CLASSES)
    detail = (f"{dist} of {total} rows{of} in {name} (threshold {found.threshold}, horizon {found.horizon_sec} s; "
              f"{source})")
    hint = ("; the label threshold is too wide for this market (try a dynamic or smaller --threshold)"
            if counts["NONE"] / total > 1 - min_share else
            "; the label threshold is too narrow: almost every move counts" if counts["NONE"] / total < min_share
            else "; a one-sided market over the export's range?")
    out = [Metric.judge(f"{prefix}.{c}.share", round(counts[c] / total, 4), ">=", min_share,
                        detail + hint) for c in LABEL_CLASSES]
    moved = counts["UP"] + counts["DOWN"]
    out.append(Metric.judge(f"{prefix}.not_all_none", moved, ">=", 1,
                            f"all {total} rows{of} are NONE: {detail}{hint}" if moved == 0 else detail))
    return out
