"""The nightly job's steps (checks, exports with the dated copy, report) and their verdicts.

Each step returns a Step and never raises for a failure it can name: a refused target is
that step's exit 2, a bad setting its 78, and so on.
"""
from __future__ import annotations

import logging
import os
import shlex
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .. import exitcodes
from ..config import ROOT, ConfigError, Settings
from ..db import DatabaseMissing, SchemaTooNew
from ..export.request import ExportError, nightly_export_name, settings_request
from ..export.run import export_target, record_export, run_export
from ..export.threshold import Threshold
from ..outputs import OutputRefused, guard_output, write_atomic
from ..report.update import update_report
from ..timeutil import parse_duration_ms

log = logging.getLogger("cqt.nightly")

KNOWN_CODES = (exitcodes.OK, exitcodes.FAIL, exitcodes.USAGE, exitcodes.NOEVAL, exitcodes.IOERR, exitcodes.CONFIG)
RUNNER = ROOT / "checks" / "run_pipeline_checks.sh"


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
    text = settings.get_str("CQT_NIGHTLY_CHECKS_CMD")
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


def step_export(settings: Settings, name: str, output: Path, last: str, horizon: int | None,
                threshold: str, asset: str = "BTC") -> tuple[Step, Any]:
    """One asset's export (`--symbol asset --last 1h|24h`): the range ends at that asset's newest row."""
    try:
        output = export_target(output, settings.db)
        req = settings_request(settings, output, horizon_sec=horizon, last_ms=parse_duration_ms(last),
                               threshold=Threshold.parse(threshold), symbols=(asset,))
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
                {"output": str(output), "symbol": asset, "rows": res.rows, "size_bytes": res.size_bytes,
                 "to_ts_ms": res.to_ms}), res


def dated_copy(settings: Settings, res: Any, asset: str = "BTC") -> Path:
    """<asset>_YYYYMMDD.parquet (UTC date of the data's end) beside <asset>_24h.parquet, atomically, and
    its own export_runs row (so retention still finds a file for this range after the 24 h file is replaced)."""
    day = datetime.fromtimestamp(res.to_ms / 1000, tz=timezone.utc).strftime("%Y%m%d")
    dst = guard_output(res.output.parent / nightly_export_name(asset, day), "parquet", db_path=settings.db)

    def link_or_copy(tmp: Path) -> None:
        try:
            os.link(res.output, tmp)     # same bytes, no copy; the 24 h file is replaced by rename, never rewritten
        except OSError:
            shutil.copyfile(res.output, tmp)

    write_atomic(dst, write=link_or_copy, keep_mode=False)   # a chmod would change the 24 h file too (one inode)
    copy = type(res)(**{**res.__dict__, "output": dst})
    record_export(settings.db, copy)
    return dst


def step_report(settings: Settings) -> Step:
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
