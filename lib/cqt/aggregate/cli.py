"""bin/cqt-aggregate: the service, or `--rebuild --from T --to T [--symbol A] [--db PATH] [--json]`.

    bin/cqt-aggregate                                   # the service: every asset of CQT_SYMBOLS
    bin/cqt-aggregate --rebuild --from T --to T [--symbol A] [--db PATH] [--json]
"""
from __future__ import annotations

import json
import logging
import sqlite3
import sys
from pathlib import Path
from typing import Any

import click

from .. import exitcodes
from ..config import ConfigError
from ..db import DatabaseMissing, is_fatal_io
from ..options import db_option, from_to_options, json_option
from ..runtime import load_settings_or_exit, run_service, setup_logging
from ..timeutil import fmt_ms
from .config import SERVICE, config_from_settings
from .rebuilds import RebuildStats, RebuildTooLong, rebuild_within_data
from .service import serve

log = logging.getLogger("cqt.aggregate")


def is_storage_error(exc: BaseException) -> bool:
    """Full disk, read-only file system, I/O error, a database file that cannot be opened: exit 74."""
    if isinstance(exc, OSError):
        return True
    return is_fatal_io(exc) or "unable to open database" in str(exc).lower()



@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rebuild", "do_rebuild", is_flag=True,
              help="Recompute [--from, --to] from the raw tables, replacing rows, and exit.")
@from_to_options(from_help="First bar time (the second's end), ISO-8601 (UTC if no zone) or epoch ms; inclusive.",
                 to_help="Last bar time, inclusive.", metavar="T")
@click.option("--symbol", "symbol", metavar="A", default=None,
              help="With --rebuild: only this asset (one of CQT_SYMBOLS, e.g. BTC); default: every asset.")
@db_option
@json_option(help="With --rebuild: print the summary as JSON.")
def main(do_rebuild: bool, from_ms: int | None, to_ms: int | None, symbol: str | None, db: str | None,
         as_json: bool) -> None:
    """Per-second market bars (market_1s) and causal feature vectors (predictions), per asset.

    Without --rebuild: the service. Every second it writes, for every asset of CQT_SYMBOLS,
    the bars that are complete after the grace delay (CQT_AGGREGATE_GRACE_S), catching up
    after a restart (at most CQT_AGGREGATE_MAX_CATCHUP_S). See docs/aggregate.md.
    """
    if not do_rebuild and (from_ms is not None or to_ms is not None):
        raise click.UsageError("--from/--to only go with --rebuild")
    if not do_rebuild and symbol is not None:
        raise click.UsageError("--symbol only goes with --rebuild (the service writes every asset of CQT_SYMBOLS)")
    if do_rebuild and (from_ms is None or to_ms is None):
        raise click.UsageError("--rebuild needs --from and --to")
    if do_rebuild and from_ms > to_ms:  # type: ignore[operator]
        raise click.UsageError("--from is after --to")
    settings = load_settings_or_exit(db=db)
    if symbol is not None and symbol.strip().upper() not in settings.assets:
        raise click.UsageError(f"--symbol {symbol}: not one of CQT_SYMBOLS ({', '.join(settings.assets)})")
    try:
        cfg = config_from_settings(settings, symbol)
    except (ConfigError, ValueError) as exc:
        print(f"cqt-aggregate: {exc}", file=sys.stderr)
        sys.exit(exitcodes.CONFIG)
    if not do_rebuild:
        holder: dict[str, Any] = {}
        sys.exit(run_service(SERVICE, lambda svc: serve(svc, cfg, holder), settings,
                             detail=lambda: holder["agg"].detail() if "agg" in holder else {}))

    if not Path(settings.db).exists():
        print(f"cqt-aggregate: database not found: {settings.db}", file=sys.stderr)
        sys.exit(exitcodes.NOEVAL)
    setup_logging(SERVICE, settings.log_level, settings.secrets)

    def progress(st: RebuildStats) -> None:
        through = min(st.to_ms, st.from_ms + st.seconds * 1000 - 1000)
        log.info("%s: rebuilt through %s seconds=%d elapsed_s=%.1f", st.symbol, fmt_ms(through), st.seconds,
                 st.elapsed_s)

    try:
        st = rebuild_within_data(settings, cfg, from_ms, to_ms, progress)  # type: ignore[arg-type]
    except DatabaseMissing as exc:
        print(f"cqt-aggregate: {exc}", file=sys.stderr)
        sys.exit(exitcodes.NOEVAL)
    except RebuildTooLong as exc:
        print(f"cqt-aggregate: {exc}", file=sys.stderr)
        sys.exit(exitcodes.USAGE)
    except (sqlite3.Error, OSError) as exc:
        print(f"cqt-aggregate: rebuild failed: {exc}", file=sys.stderr)
        sys.exit(exitcodes.IOERR if is_storage_error(exc) else exitcodes.FAIL)
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback
        log.debug("rebuild failed", exc_info=True)
        print(f"cqt-aggregate: rebuild failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(exitcodes.FAIL)
    if as_json:
        print(json.dumps(st.as_dict(), sort_keys=True))
    else:
        nulls = st.nulls.get("predictions", {})
        worst = ", ".join(f"{c}={n}" for c, n in sorted(nulls.items(), key=lambda kv: -kv[1])[:6]) or "none"
        assets = ", ".join(f"{s} {a.seconds}" for s, a in st.symbols.items()) or "none"
        print(f"rebuilt {st.seconds} seconds {fmt_ms(st.from_ms)} .. {fmt_ms(st.to_ms)} in {st.elapsed_s:.1f} s "
              f"(seconds per asset: {assets}): market_1s {st.market_rows} rows, predictions {st.prediction_rows} rows; "
              f"NULL features (look-back before data or stale source): {worst}; "
              f"late seconds corrected: {st.late_seconds_corrected} ({st.late_rows_corrected} rows)")
    sys.exit(exitcodes.OK)
