"""The newest export, as the checks see it: which file, its horizon, and its label counts.

feature_leak_check reads its t0/label_ts (the label horizon rule); feature_check judges its
label distribution (export.labels.*): a dataset that is all NONE, or where one class is
almost absent, is useless for training however clean its features are — e.g. an export
run with a fixed threshold far above the market's moves (`--threshold fixed:0.5`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .base import CheckContext
from .result import Metric

LABEL_CLASSES = ("UP", "DOWN", "NONE")   # the export's classes (cqt.export.labelling.LABELS)
RECENT_RUNS = 50                         # export_runs rows looked at for one whose file still exists


@dataclass(frozen=True)
class Export:
    path: Path
    horizon_sec: int
    threshold: str
    labels_json: str


def newest_export(ctx: CheckContext) -> Export | None:
    """The newest export_runs entry whose file still exists (older ones may be rotated away)."""
    for output, horizon, threshold, labels_json in ctx.conn.execute(
            "SELECT output, horizon_sec, threshold, labels_json FROM export_runs "
            "ORDER BY ts_ms DESC, id DESC LIMIT ?", (RECENT_RUNS,)):
        p = ctx.settings.resolve_path(output)
        if p.is_file():
            return Export(p, int(horizon), str(threshold), labels_json or "")
    return None


def recorded_counts(labels_json: str) -> dict[str, int] | None:
    """{class: rows} as cqt-export recorded it, or None when the row does not say."""
    try:
        d = json.loads(labels_json)
    except ValueError:
        return None
    if not isinstance(d, dict) or not all(isinstance(d.get(c), int) and not isinstance(d.get(c), bool)
                                          for c in LABEL_CLASSES):
        return None
    return {c: int(d[c]) for c in LABEL_CLASSES}


def file_counts(path: Path) -> dict[str, int]:
    """{class: rows} from the file's `label` column (one column read, counted by pyarrow)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    col = pq.read_table(path, columns=["label"]).column("label")
    counts = {c: 0 for c in LABEL_CLASSES}
    for item in pc.value_counts(col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)).to_pylist():
        value = item["values"]
        if value in counts:
            counts[value] += int(item["counts"])
    return counts


def label_metrics(ctx: CheckContext) -> list[Metric]:
    """export.labels.<class>.share >= CQT_CHECK_LABEL_MIN_SHARE for each class, and
    export.labels.not_all_none: at least one UP or DOWN row (fails even when the share limit is 0)."""
    found = newest_export(ctx)
    if found is None:
        return [Metric.skip("export.labels", "no export yet (no export_runs entry whose file exists)")]
    counts = recorded_counts(found.labels_json)
    source = "as recorded in export_runs"
    if counts is None:
        try:
            counts = file_counts(found.path)
        except Exception as exc:  # noqa: BLE001 - an unreadable export is a failed metric, said plainly
            return [Metric.judge("export.labels.not_all_none", None, ">=", 1,
                                 none_reason=f"cannot read the label column of {found.path}: "
                                             f"{type(exc).__name__}: {exc}")]
        source = "counted in the file"
    total = sum(counts.values())
    name = found.path.name
    if total == 0:
        return [Metric.judge("export.labels.not_all_none", 0, ">=", 1, f"{name} has no labelled rows")]
    min_share = ctx.thresholds("CQT_CHECK_LABEL_MIN_SHARE")
    dist = ", ".join(f"{c} {counts[c]} ({counts[c] / total:.1%})" for c in LABEL_CLASSES)
    detail = f"{dist} of {total} rows in {name} (threshold {found.threshold}, horizon {found.horizon_sec} s; {source})"
    hint = ("; the label threshold is too wide for this market (try a dynamic or smaller --threshold)"
            if counts["NONE"] / total > 1 - min_share else
            "; the label threshold is too narrow: almost every move counts" if counts["NONE"] / total < min_share
            else "; a one-sided market over the export's range?")
    out = [Metric.judge(f"export.labels.{c}.share", round(counts[c] / total, 4), ">=", min_share,
                        detail + hint) for c in LABEL_CLASSES]
    moved = counts["UP"] + counts["DOWN"]
    out.append(Metric.judge("export.labels.not_all_none", moved, ">=", 1,
                            f"all {total} rows are NONE: {detail}{hint}" if moved == 0 else detail))
    return out
