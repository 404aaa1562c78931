"""What every check shares: the evaluation context, the exit-code wrapper and the CLI.

A check is a function `evaluate(ctx: CheckContext) -> list[Metric]`. `run_check`
opens the database read-only, calls it and turns every way of not getting an
answer into exit 3 (could not evaluate) or 78 (misconfigured) with a one-line
reason — the traceback only at DEBUG — so exit 1 always means "the data failed".
"""
from __future__ import annotations

import logging
import sqlite3
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click

from .. import db, exitcodes
from ..config import ConfigError, Settings, load_settings
from ..options import (
    as_of_option,
    db_option,
    json_option,
    window_option,
)
from ..runtime import setup_logging
from ..timeutil import fmt_ms, now_ms
from .result import CheckResult, Metric
from .thresholds import Thresholds

log = logging.getLogger("cqt.checks")

INTEGRITY_MODES = ("quick", "full")
INTEGRITY_PRAGMA = {"quick": "quick_check", "full": "integrity_check"}
INTEGRITY_REPORTED = 20          # problems PRAGMA ... reports at most (the first three are printed)


@dataclass
class CheckContext:
    conn: sqlite3.Connection
    settings: Settings
    thresholds: Thresholds
    as_of_ms: int
    window_s: int
    notes: list[str] = field(default_factory=list)
    #: the assets judged: every one of CQT_SYMBOLS, or the one --symbol names (KRW-USDT, every
    #: asset's FX rate, and the whole-service metrics are judged either way)
    assets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.assets:
            self.assets = tuple(self.settings.assets)

    @property
    def limited(self) -> bool:
        """True when --symbol narrowed the run to fewer assets than CQT_SYMBOLS names."""
        return tuple(self.assets) != tuple(self.settings.assets)

    @property
    def start_ms(self) -> int:
        """Window is (start_ms, as_of_ms]."""
        return self.as_of_ms - self.window_s * 1000

    def note(self, text: str) -> None:
        self.notes.append(text)


Evaluate = Callable[[CheckContext], list[Metric]]


def run_check(name: str, evaluate: Evaluate, settings: Settings, as_of_ms: int, window_s: int,
              conn: sqlite3.Connection | None = None, integrity: str = "quick",
              assets: tuple[str, ...] = ()) -> CheckResult:
    """Run one check; never raises. `conn` lets the runner share one read-only connection
    (the runner then checks the database's integrity once itself, before any check);
    `assets` limits it to those assets (default: every one of CQT_SYMBOLS)."""
    t0 = time.monotonic()
    res = CheckResult(name, window_s, as_of_ms)
    own = conn is None
    note = None
    try:
        if own:
            conn = open_for_check(settings.db)
            note = verify_integrity(conn, settings, integrity)
        ctx = CheckContext(conn, settings, Thresholds(settings), as_of_ms, window_s, assets=tuple(assets))
        if note:
            ctx.note(note)
        res.metrics = evaluate(ctx)
        res.notes = ctx.notes
        if not res.metrics:
            res.error = "the check produced no metrics"  # a bug, but never a silent PASS
    except ConfigError as exc:
        res.error, res.error_code = str(exc), exitcodes.CONFIG
    except CannotEvaluate as exc:
        res.error = str(exc)
    except sqlite3.Error as exc:
        log.debug("database error in %s", name, exc_info=True)
        res.error = f"cannot read database {settings.db}: {exc}"
    except Exception as exc:  # noqa: BLE001 - exit 3 with one line, never 1 and never a traceback
        log.debug("unexpected error in %s", name, exc_info=True)
        res.error = (f"unexpected error in {name}: {type(exc).__name__}: {exc} "
                     "(run with CQT_LOG_LEVEL=DEBUG for the traceback)")
    finally:
        if own and conn is not None:
            conn.close()
    if res.error:
        res.error = " ".join(res.error.split())  # one line, whatever the exception said
    res.elapsed_ms = int((time.monotonic() - t0) * 1000)
    return res


class CannotEvaluate(Exception):
    """The database cannot answer (missing, unreadable, wrong schema): exit 3."""


class DatabaseDamaged(CannotEvaluate):
    """The file itself is damaged (integrity pragma, malformed, not a database): exit 3, no writes."""


def open_for_check(path: Path) -> sqlite3.Connection:
    try:
        return db.open_readonly(path)
    except db.DatabaseMissing:
        raise CannotEvaluate(f"database not found: {path} (check CQT_DB / --db; has a collector run yet?)") from None
    except db.SchemaTooNew as exc:
        raise CannotEvaluate(str(exc)) from None
    except sqlite3.OperationalError as exc:
        raise CannotEvaluate(f"cannot open database {path}: {exc}") from None
    except sqlite3.DatabaseError as exc:   # malformed, not a database: the file, not its access
        raise DatabaseDamaged(f"database {path} is damaged: cannot open it: {exc}") from None
    except sqlite3.Error as exc:
        raise CannotEvaluate(f"cannot open database {path}: {exc}") from None


def verify_integrity(conn: sqlite3.Connection, settings: Settings, mode: str = "quick") -> str | None:
    """PRAGMA quick_check (mode "quick") or integrity_check ("full") before any check reads.

    A damaged file raises CannotEvaluate (exit 3): a check must never PASS on a database it
    cannot trust, and the pages it happens to read may be the undamaged ones. The quick check
    stops after CQT_CHECK_INTEGRITY_BUDGET_S (a very large file) and returns a note saying
    so; the full check (nightly) has no time limit. Returns a note or None."""
    pragma = INTEGRITY_PRAGMA[mode]
    budget_s = Thresholds(settings)("CQT_CHECK_INTEGRITY_BUDGET_S") if mode == "quick" else 0.0
    deadline = time.monotonic() + budget_s
    timed_out = False

    def over_budget() -> int:
        nonlocal timed_out
        timed_out = time.monotonic() > deadline
        return 1 if timed_out else 0

    if budget_s > 0:
        conn.set_progress_handler(over_budget, 10_000)
    try:
        rows = [r[0] for r in conn.execute(f"PRAGMA {pragma}({INTEGRITY_REPORTED})").fetchall()]
    except sqlite3.OperationalError as exc:
        if timed_out:
            return (f"PRAGMA {pragma} stopped after CQT_CHECK_INTEGRITY_BUDGET_S={budget_s:g} s (a large file): "
                    "integrity not fully verified; the nightly run checks it in full (--integrity full)")
        raise DatabaseDamaged(f"database {settings.db} is damaged: PRAGMA {pragma} failed: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise DatabaseDamaged(f"database {settings.db} is damaged: PRAGMA {pragma} failed: {exc}") from None
    finally:
        if budget_s > 0:
            conn.set_progress_handler(None, 0)
    if rows == ["ok"]:
        return None
    shown = "; ".join(rows[:3]) + (f"; +{len(rows) - 3} more" if len(rows) > 3 else "")
    raise DatabaseDamaged(f"database {settings.db} is damaged: PRAGMA {pragma} found {len(rows)}"
                         f"{'+' if len(rows) >= INTEGRITY_REPORTED else ''} problem(s): {shown} "
                         "(restore it from a backup; do not trust any result from it)")


# ------------------------------------------------------------------------------ CLI
def common_options(fn):
    """--window, --as-of, --db, --json, --integrity, --symbol: the same for every check and the runner."""
    fn = click.option("--symbol", "symbol", default=None, metavar="ASSET",
                      help="Judge this asset only (a base asset of CQT_SYMBOLS, e.g. ETH); KRW-USDT, every "
                           "asset's FX rate, and the whole-service metrics are judged too. Default: every asset.")(fn)
    fn = click.option("--integrity", type=click.Choice(INTEGRITY_MODES), default="quick", show_default=True,
                      help="Verify the database file first: quick = PRAGMA quick_check (bounded by "
                           "CQT_CHECK_INTEGRITY_BUDGET_S), full = PRAGMA integrity_check (nightly). "
                           "A damaged file is exit 3.")(fn)
    fn = json_option(fn)
    fn = db_option(fn)
    fn = as_of_option(fn)
    fn = window_option(fn)
    return fn


def settings_for_cli(name: str, db_path: str | None) -> Settings:
    """Settings with --db applied; a bad setting is one line on stderr and exit 78."""
    try:
        settings = load_settings(db=db_path)
    except ConfigError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        sys.exit(exitcodes.CONFIG)
    setup_logging(name, settings.log_level, settings.secrets)
    return settings


def assets_for_cli(name: str, settings: Settings, symbol: str | None) -> tuple[str, ...]:
    """The assets a run judges: every one of CQT_SYMBOLS, or the one --symbol names. An asset
    CQT_SYMBOLS does not name is a usage error: one line on stderr, exit 2."""
    if symbol is None:
        return tuple(settings.assets)
    asset = symbol.strip().upper()
    if asset not in settings.assets:
        print(f"{name}: --symbol {symbol}: not one of CQT_SYMBOLS ({','.join(settings.assets)})", file=sys.stderr)
        sys.exit(exitcodes.USAGE)
    return (asset,)


def emit(res: CheckResult, as_json: bool) -> None:
    if as_json:
        click.echo(res.to_json())
    else:
        click.echo(res.text())
    if res.error:
        click.echo(f"{res.check}: {res.error}", err=True)


def check_command(name: str, evaluate: Evaluate, help_text: str) -> click.Command:
    """The click program for one check (`checks/<name>`)."""

    @click.command(name=name, help=help_text, context_settings={"help_option_names": ["-h", "--help"]})
    @common_options
    def cmd(window: int, as_of: int | None, db: str | None, as_json: bool, integrity: str,
            symbol: str | None) -> None:
        settings = settings_for_cli(name, db)
        assets = assets_for_cli(name, settings, symbol)
        as_of_ms = now_ms() if as_of is None else as_of
        res = run_check(name, evaluate, settings, as_of_ms, window, integrity=integrity, assets=assets)
        emit(res, as_json)
        log.debug("%s exit=%d elapsed_ms=%d as_of=%s", name, res.exit_code, res.elapsed_ms, fmt_ms(as_of_ms))
        sys.exit(res.exit_code)

    return cmd
