"""Where the label study's report lives and how others read its recommendation.

`--threshold recommended` (cqt-trainset) and `CQT_EXPORT_THRESHOLD=recommended` (cqt-nightly)
both mean: the `recommended.spec` of a `label-report.json`; by default the one the nightly
job wrote for that asset.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..config import ConfigError, Settings

REPORT_JSON = "label-report.json"
RECOMMENDED = "recommended"


def nightly_label_dir(settings: Settings, asset: str) -> Path:
    """The directory the nightly job's label study writes for one asset."""
    return settings.dataset_dir / "label-study" / asset.upper()


def read_recommended_spec(path: Path) -> str:
    """The recommended threshold spec of a label report (a file or the directory holding it).

    A missing, unreadable or recommendation-less report is a ConfigError naming the file and
    how to make one: the caller asked for "recommended" and there is nothing to recommend."""
    path = Path(path)
    if path.is_dir():
        path = path / REPORT_JSON
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"no label report at {path}: run cqt-labels --out {path.parent} first "
                          f"(or give an explicit --threshold)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read label report {path}: {exc}") from None
    rec = doc.get(RECOMMENDED) if isinstance(doc, dict) else None
    spec = rec.get("spec") if isinstance(rec, dict) else None
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"label report {path} has no recommended threshold (no candidate met the target?)")
    return spec
