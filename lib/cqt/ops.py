"""Operator commands: `cqt env init|check` and `cqt status`.

Key values are never printed, not even partly: only present / missing / placeholder.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import click

from . import exitcodes
from .bookkeeping import latest_checks, latest_heartbeats, recent_events
from .config import ROOT, ConfigError, is_placeholder, load_settings
from .db import DatabaseMissing, SchemaTooNew, check_version, connect, latest_version, wal_size
from .options import db_option, json_option
from .timeutil import fmt_ms, now_ms
from .units import fmt_bytes

# (name, what makes it right) — the seed's required keys.
REQUIRED_KEYS = ("COINGLASS_ENABLED", "COINGLASS_API_KEY")


def _fail_config(exc: ConfigError) -> None:
    click.echo(f"cqt: {exc}", err=True)
    sys.exit(exitcodes.CONFIG)


@click.group("env")
def env() -> None:
    """Create or check .env (values of keys are never printed)."""


@env.command("init")
def env_init() -> None:
    """Write .env from .env.example (mode 0600) if it does not exist."""
    from .config import env_file_path
    target = env_file_path()
    if target.exists():
        click.echo(f"{target} exists: left untouched")
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o077)
        try:
            shutil.copyfile(ROOT / ".env.example", target)
        finally:
            os.umask(old)
        os.chmod(target, 0o600)
        click.echo(f"created {target} (mode 0600)")
    click.echo("fill in: COINGLASS_ENABLED=true and COINGLASS_API_KEY=<your key>; then run: bin/cqt env check")


def key_states(merged: dict[str, str]) -> dict[str, str]:
    """present | missing | placeholder | invalid for each required key (never the value)."""
    states: dict[str, str] = {}
    enabled = merged.get("COINGLASS_ENABLED", "")
    if enabled == "":
        states["COINGLASS_ENABLED"] = "missing"
    elif enabled == "true":
        states["COINGLASS_ENABLED"] = "present"
    else:
        states["COINGLASS_ENABLED"] = "invalid (must be exactly 'true')"
    key = merged.get("COINGLASS_API_KEY", "").strip()
    states["COINGLASS_API_KEY"] = "missing" if not key else ("placeholder" if is_placeholder(key) else "present")
    return states


@env.command("check")
@click.option("--strict", is_flag=True, help="Also fail when .env is readable by group or others.")
def env_check(strict: bool) -> None:
    """One line per required key: present / missing / placeholder. Exit 0 when all hold, else 1."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        _fail_config(exc)
    path = settings.env_file
    ok = True
    merged = dict(settings.raw)
    states = key_states(merged)
    for name in REQUIRED_KEYS:
        state = states[name]
        origin = settings.source.get(name, "not set")
        click.echo(f"{name:<20} {state:<12} ({origin})")
        ok &= state == "present"
    click.echo(f"{'CQT_SYMBOLS':<20} {', '.join(settings.assets)}  (binance {', '.join(settings.binance_symbols)}; "
               f"upbit {', '.join(settings.upbit_codes)})")
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            level = "FAIL" if strict else "WARNING"
            click.echo(f"{level}: {path} is readable by group/others (mode {mode:04o}); run: chmod 600 {path}")
            if strict:
                ok = False
    else:
        click.echo(f"note: {path} does not exist (values come from the environment); create it with: bin/cqt env init")
    click.echo("env check: PASS" if ok else "env check: FAIL")
    sys.exit(exitcodes.OK if ok else exitcodes.FAIL)


@env.command("docs")
@click.option("--write", "mode", flag_value="write", help="Regenerate the README's variable tables and .env.example.")
@click.option("--check", "mode", flag_value="check", help="Exit 1 when they differ from the settings registry.")
def env_docs(mode: str | None) -> None:
    """The README's variable tables and .env.example, generated from the settings registry."""
    from .config import docs
    if mode is None:
        raise click.UsageError("give --write or --check")
    sys.exit(docs.main([f"--{mode}"]))


# ------------------------------------------------------------------------------ status
COLLECTED_TABLES = (
    ("upbit_trades", "trade_ts_ms"), ("upbit_orderbook", "ts_ms"), ("upbit_ticker", "ts_ms"),
    ("binance_agg_trades", "trade_ts_ms"), ("binance_mark_price", "event_ts_ms"),
    ("binance_book_ticker", "event_ts_ms"), ("binance_liquidations", "event_ts_ms"),
    ("binance_open_interest", "ts_ms"), ("binance_ratios", "ts_ms"), ("binance_premium_index", "ts_ms"),
    ("binance_funding_rate", "funding_ts_ms"),
    ("coinglass_open_interest", "open_ts_ms"), ("coinglass_funding", "open_ts_ms"),
    ("coinglass_liquidations", "open_ts_ms"), ("coinglass_long_short", "open_ts_ms"),
    ("coinglass_call_status", "ts_ms"), ("market_1s", "ts_ms"), ("predictions", "ts_ms"),
)


VERDICTS = {0: "PASS", 1: "FAIL", 2: "USAGE", 3: "NOEVAL", 78: "CONFIG"}


def _fmt_age(ms: int | None) -> str:
    if ms is None:
        return "-"
    s = ms / 1000
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f}m"
    return f"{s / 3600:.1f}h"


#: per asset: (column label, table, key column, which venue symbol, time column)
SYMBOL_STREAMS = (
    ("upbit trade", "upbit_trades", "code", "upbit", "trade_ts_ms"),
    ("binance aggTrade", "binance_agg_trades", "symbol", "binance", "trade_ts_ms"),
    ("market_1s", "market_1s", "symbol", "asset", "ts_ms"),
)


def _symbol_rows(conn, settings, now: int) -> list[dict]:
    """Newest row per asset and stream: one indexed MAX per (table, symbol), so it stays fast."""
    out = []
    for asset in settings.assets:
        keys = {"upbit": settings.upbit_code_of(asset), "binance": settings.binance_symbol_of(asset), "asset": asset}
        row: dict = {"symbol": asset}
        for label, table, key_col, which, col in SYMBOL_STREAMS:
            newest = conn.execute(f"SELECT MAX({col}) FROM {table} WHERE {key_col} = ?", (keys[which],)).fetchone()[0]
            row[label] = None if newest is None else now - newest
        out.append(row)
    return out


def gather_status(db_path: Path, now: int | None = None, settings=None) -> dict:
    """Everything `cqt status` shows, as data (also for --json and tests)."""
    now = now_ms() if now is None else now
    out: dict = {"db": str(db_path), "now_ms": now}
    conn = connect(db_path, readonly=True)
    try:
        v = check_version(conn)
        out["schema_version"] = v
        if v == 0:
            out["empty"] = True
            return out
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        services = []
        for svc, ts, state, detail in latest_heartbeats(conn):
            d = json.loads(detail) if detail else {}
            services.append({"service": svc, "age_ms": now - ts, "state": state, "status": d.get("status", ""),
                             "queue_depth": (d.get("writer") or {}).get("queue_depth")})
        out["services"] = services
        since = now - 600_000
        rows = []
        for table, col in COLLECTED_TABLES:
            if table not in tables:
                continue
            n, newest = conn.execute(f"SELECT COUNT(*), MAX({col}) FROM {table} WHERE {col} >= ?", (since,)).fetchone()
            if newest is None:
                newest = conn.execute(f"SELECT MAX({col}) FROM {table}").fetchone()[0]
            rows.append({"table": table, "rows_10m": n, "newest_ms": newest,
                         "age_ms": None if newest is None else now - newest})
        out["tables"] = rows
        if settings is not None:
            out["symbols"] = _symbol_rows(conn, settings, now)
        out["checks"] = [{"check": c, "ts_ms": ts, "exit_code": code} for c, ts, code in latest_checks(conn)]
        out["errors"] = [
            {"last_ts_ms": ts, "service": s, "level": lvl, "message": msg, "count": n}
            for ts, s, lvl, msg, n in recent_events(conn, now - 3_600_000, limit=8)]
        out["open_gaps"] = conn.execute("SELECT COUNT(*) FROM gaps WHERE status = 'open'").fetchone()[0]
    finally:
        conn.close()
    out["db_bytes"] = db_path.stat().st_size
    out["wal_bytes"] = wal_size(db_path)
    return out


def render_status(st: dict) -> str:
    lines = [f"cqt status — {fmt_ms(st['now_ms'])}   db {st['db']}"]
    if st.get("empty"):
        lines.append("the database has no schema yet: no cqt service has started against it.")
        return "\n".join(lines)
    lines.append(f"database {fmt_bytes(st['db_bytes'])}, WAL {fmt_bytes(st['wal_bytes'])}, "
                 f"schema v{st['schema_version']}/{latest_version()}, open gaps {st['open_gaps']}")
    lines.append("")
    lines.append("SERVICE               HEARTBEAT  STATE         STATUS")
    if not st["services"]:
        lines.append("(no heartbeats yet: start the services — systemctl start cqt.target)")
    for s in st["services"]:
        stale = "  << STALE" if s["age_ms"] > 60_000 and s["state"] not in ("stopped",) else ""
        lines.append(f"{s['service']:<21} {_fmt_age(s['age_ms']):>9}  {s['state']:<13} {s['status']}{stale}")
    lines.append("")
    lines.append("TABLE                     ROWS/10m   NEWEST")
    for t in st["tables"]:
        lines.append(f"{t['table']:<25} {t['rows_10m']:>8}   {_fmt_age(t['age_ms']):>6} ago" if t["age_ms"] is not None
                     else f"{t['table']:<25} {t['rows_10m']:>8}   never")
    if st.get("symbols"):
        lines.append("")
        lines.append("SYMBOL     " + "".join(f"{label:>18}" for label, *_ in SYMBOL_STREAMS) + "   (newest row, age)")
        for r in st["symbols"]:
            lines.append(f"{r['symbol']:<11}" + "".join(
                f"{(_fmt_age(r[label]) + ' ago') if r[label] is not None else 'never':>18}"
                for label, *_ in SYMBOL_STREAMS))
    lines.append("")
    if st["checks"]:
        lines.append("LAST CHECKS")
        for c in st["checks"]:
            verdict = VERDICTS.get(c["exit_code"], str(c["exit_code"]))
            lines.append(f"  {c['check']:<22} {verdict:<6} {_fmt_age(st['now_ms'] - c['ts_ms'])} ago")
    else:
        lines.append("LAST CHECKS: none yet (checks/run_pipeline_checks.sh --window 600)")
    lines.append("")
    if st["errors"]:
        lines.append("RECENT WARNINGS/ERRORS (last hour)")
        for e in st["errors"]:
            lines.append(f"  {fmt_ms(e['last_ts_ms'])} {e['service']} {e['level']} x{e['count']}: {e['message']}")
    else:
        lines.append("RECENT WARNINGS/ERRORS: none in the last hour")
    return "\n".join(lines)


@click.command("status")
@db_option
@json_option(help="Print the same as one JSON object.")
def status(db: str | None, as_json: bool) -> None:
    """One screen: services, rows per table, freshness, last checks, sizes, recent errors."""
    try:
        settings = load_settings(db=db)
    except ConfigError as exc:
        _fail_config(exc)
    try:
        st = gather_status(settings.db, settings=settings)
    except DatabaseMissing:
        click.echo(f"no database at {settings.db}: nothing has been collected yet "
                   "(start the services: systemctl start cqt.target, or try: bin/cqt demo)")
        sys.exit(exitcodes.NOEVAL)
    except SchemaTooNew as exc:
        click.echo(f"cqt status: {exc}", err=True)
        sys.exit(exitcodes.NOEVAL)
    except Exception as exc:  # noqa: BLE001 - unreadable/corrupt database: say so plainly
        click.echo(f"cqt status: cannot read {settings.db}: {exc}", err=True)
        sys.exit(exitcodes.NOEVAL)
    click.echo(json.dumps(st, indent=2) if as_json else render_status(st))
