"""Filling the report: render every block from the database, draw the plots, edit the file once."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import ConfigError, Settings
from ..db import open_readonly
from ..timeutil import now_ms
from .blocks import (
    RUN_LOG_PREFIX,
    TEMPLATE,
    insert_block_after,
    replace_blocks,
    report_target,
    upsert_dated_block,
    write_if_changed,
)
from .context import build_context
from .operations import block_run_log
from .sections import block_plots, render_blocks, run_log_date

# (block, the block it follows) for blocks newer than some operators' report files
ADDED_BLOCKS = (("export-symbols", "export-24h"),)


@dataclass
class ReportOutcome:
    path: Path
    written: bool
    blocks: list[str]
    missing_blocks: list[str]
    run_log_date: str | None
    plots: list[Path]
    as_of_ms: int


def journal_mode_setting(settings: Settings) -> str:
    """CQT_REPORT_JOURNAL: auto (journal when cqt units log there, else events) | journal | events."""
    mode = settings.get_str("CQT_REPORT_JOURNAL").strip().lower()
    if mode not in ("auto", "journal", "events"):
        raise ConfigError("CQT_REPORT_JOURNAL", f"{mode!r} is not one of auto, journal, events")
    return mode


def update_report(settings: Settings, out: Path | None = None, as_of_ms: int | None = None, plots: bool = True,
                  start_ms: int | None = None, journal_lines: list[str] | None = None,
                  journal_mode: str | None = None) -> ReportOutcome:
    """Fill the report from the database. Raises OutputRefused (before anything is written),
    DatabaseMissing/SchemaTooNew/sqlite3.Error/OSError/ConfigError."""
    journal_mode = journal_mode or journal_mode_setting(settings)
    as_of = now_ms() if as_of_ms is None else as_of_ms
    conn = open_readonly(settings.db)
    try:
        path = report_target(Path(out) if out is not None else settings.report, settings.db)
        ctx = build_context(conn, settings, as_of, start_ms, journal_lines, journal_mode)
        bodies = render_blocks(ctx)
        made: list[Any] = []
        if plots:
            from ..plots import make_plots  # matplotlib: imported only when drawing

            made = make_plots(conn, settings, path.parent, path.stem, ctx)
            bodies["plots"] = block_plots(made, path.parent)
        date = run_log_date(ctx)
        log_body = block_run_log(ctx, date) if date else None
    finally:
        conn.close()
    # bytes, not read_text(): universal newlines would turn the operator's \r\n into \n
    text = (path if path.exists() else TEMPLATE).read_bytes().decode("utf-8", errors="surrogateescape")
    new, missing = replace_blocks(text, bodies)
    # blocks the template gained after the operator's file was made: placed where the template has them
    for name, after in ADDED_BLOCKS:
        if name in missing and name in bodies:
            added = insert_block_after(new, name, bodies[name], after)
            if added != new:
                new = added
                missing.remove(name)
    if date and log_body:
        new = upsert_dated_block(new, RUN_LOG_PREFIX + date, log_body)
    written = write_if_changed(path, new)
    return ReportOutcome(path, written, sorted(bodies), missing, date, [p.path for p in made], as_of)
