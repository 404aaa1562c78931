"""`cqt-export`: the command line of the export and its printed summary."""
from __future__ import annotations

import json
import re
import sys
from typing import Any

import click

from .. import exitcodes
from ..config import ConfigError
from ..options import db_option, from_to_options, json_option, last_option
from ..runtime import load_settings_or_exit
from ..units import fmt_bytes
from .request import DEFAULT_HORIZON_S, ExportError, settings_request, split_columns
from .run import export_target, run_export
from .threshold import DEFAULT_THRESHOLD, Threshold


def format_summary(s: dict[str, Any]) -> str:
    rows = s["rows"]
    labels = "  ".join(f"{k}={v:,} ({s['label_pct'][k]:.1f}%)" for k, v in s["labels"].items())
    other = {k: v for k, v in s["drops"].items() if k != "label_ts_violation"}
    vol = s["volatility"]
    if vol.get("sigma_1s") is not None:
        vol_line = (f"volatility: annualized={vol['annualized'] * 100:.1f}%  per_horizon({s['horizon_sec']}s)="
                    f"{vol['per_horizon'] * 100:.3f}%  sigma_1s={vol['sigma_1s']:.3g}")
    else:
        vol_line = "volatility: unknown (fewer than 2 one-second returns)"
    lines = [
        f"export: wrote {s['output']}  size={fmt_bytes(s['size_bytes'])} ({s['size_bytes']:,} bytes)  rows={rows:,}",
        f"range: {s['from']} .. {s['to']}  horizon={s['horizon_sec']}s  threshold={s['threshold']}",
        f"symbols: {','.join(s['symbols'])}",
        f"drops: label_ts_violation={s['label_ts_violation']}  "
        + "  ".join(f"{k}={v:,}" for k, v in other.items())
        + f"  (candidates={s['candidates']:,}, dropped={s['drops_total']:,})",
        f"labels: {labels}",
        vol_line,
    ]
    per = s.get("per_symbol") or {}
    if len(per) > 1:        # one line per asset: its rows, labels and drops are its own
        for asset, a in per.items():
            lab = "  ".join(f"{k}={v:,}" for k, v in a["labels"].items())
            lines.append(f"  {asset}: rows={a['rows']:,} of {a['candidates']:,}  {lab}  dropped={a['drops_total']:,}"
                         f"  label_ts_violation={a['label_ts_violation']}")
    return "\n".join(lines)


def _threshold_opt(ctx, param, value):
    try:
        return Threshold.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _symbol_opt(ctx, param, value):
    if value is None:
        return None
    asset = value.strip().upper()
    if not re.fullmatch(r"[A-Z0-9]{1,20}", asset):
        raise click.BadParameter(f"{value!r} is not a base asset like BTC")
    return asset


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Parquet file to write (e.g. data/datasets/btc_24h.parquet).")
@click.option("--horizon", default=None, type=click.IntRange(min=1),
              help=f"Label horizon in seconds [default: CQT_EXPORT_HORIZON_S or {DEFAULT_HORIZON_S}].")
@from_to_options(from_help="First t0 (ISO-8601 or epoch ms, inclusive).",
                 to_help="Last t0 (inclusive). Default: the newest predictions row (not the wall clock).")
@last_option(help="Range length ending at --to (default 24h); e.g. 1h, 24h.")
@click.option("--threshold", default=DEFAULT_THRESHOLD, show_default=True, callback=_threshold_opt,
              help="fixed:RETURN or dynamic:cost=C,k=K,vol_window=SECONDS (r_t = cost + k*sigma*sqrt(horizon)).")
@click.option("--allow-missing", default=None, metavar="COLS",
              help="Feature columns that may be NULL (comma-separated, or 'all'); "
                   "default: CQT_EXPORT_ALLOW_MISSING, else every feature required.")
@click.option("--symbol", "symbol", default=None, metavar="ASSET", callback=_symbol_opt,
              help="Export one asset (base asset, e.g. BTC); default: every asset of CQT_SYMBOLS in one file "
                   "with a `symbol` column.")
@db_option
@click.option("--no-record", is_flag=True, help="Do not add an export_runs row (ad-hoc exports).")
@json_option(help="Print the summary as one JSON object.")
def main(output, horizon, from_ms, to_ms, last_ms, threshold, allow_missing, symbol, db, no_record, as_json):
    """Write the labelled Parquet dataset and print what it contains and what was dropped.

    Exit codes: 0 written, 1 nothing to write (0 rows; the reason is printed), 2 usage (also an
    --output that is the database, a device or a file that is not a cqt Parquet file, or a --symbol
    neither configured nor in the database), 3 database missing or unreadable, 74 write error,
    78 bad setting.
    """
    settings = load_settings_or_exit(db=db)
    try:
        target = export_target(output, settings.db)
    except ExportError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "exit_code": exc.code, "error": str(exc)}))
        click.echo(f"cqt-export: {exc}", err=True)
        sys.exit(exc.code)
    try:
        allow = None if allow_missing is None else split_columns(allow_missing)
        req = settings_request(settings, target, horizon_sec=horizon,
                               from_ms=from_ms, to_ms=to_ms, last_ms=last_ms, threshold=threshold,
                               allow_missing=allow, record=not no_record,
                               symbols=None if symbol is None else (symbol,))
        stall = settings.get_float("CQT_EXPORT_TEST_STALL_S")
    except ConfigError as exc:
        click.echo(f"cqt-export: {exc}", err=True)
        sys.exit(exitcodes.CONFIG)
    try:
        res = run_export(settings.db, req, stall_s=stall)
    except ExportError as exc:
        if as_json:
            click.echo(json.dumps({"ok": False, "exit_code": exc.code, "error": str(exc)}))
        click.echo(f"cqt-export: {exc}", err=True)
        sys.exit(exc.code)
    s = res.summary()
    click.echo(json.dumps({"ok": True, **s}, sort_keys=True) if as_json else format_summary(s))
    sys.exit(exitcodes.OK)
