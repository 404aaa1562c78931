"""The nightly job: every step in order, one summary line; a failing step never stops the later ones."""
from __future__ import annotations

import sqlite3
import time
from typing import Any

from .. import exitcodes
from ..config import Settings
from ..export.request import nightly_export_name
from ..outputs import OutputRefused
from .retention import step_retention
from .steps import Step, dated_copy, log, step_checks, step_export, step_report, worst


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
    # Each asset its own files and its own steps: one asset's failed export never stops another's.
    for asset in settings.assets:
        for span in ("1h", "24h"):
            name = f"export_{span}.{asset}"
            res = run(name, step_export, settings, name, ddir / nightly_export_name(asset, span), span, horizon,
                      threshold, asset)
            if span == "24h" and res is not None:
                add_dated_copy(settings, steps[-1], res, asset)
    run("report", step_report, settings)
    if do_retention:
        run("retention", step_retention, settings)
    return steps


def add_dated_copy(settings: Settings, step: Step, res: Any, asset: str) -> None:
    """The dated copy of one asset's 24 h export; a failure is that asset's 24 h step's."""
    try:
        dst = dated_copy(settings, res, asset)
        step.data["dated_copy"] = str(dst)
        step.detail += f" dated={dst.name}"
    except OutputRefused as exc:
        step.code = exc.code
        step.detail += f" dated copy: {exc}"
        log.error("dated copy of %s: %s", res.output, exc)
    except (OSError, sqlite3.Error) as exc:
        step.code = exitcodes.IOERR
        step.detail += f" dated copy failed: {exc}"
        log.error("dated copy of %s failed: %s", res.output, exc)


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
