"""Queries over the bookkeeping tables: check_runs, export_runs, service_runs, heartbeats, events.

Shared by the report, the plots, `cqt status` and the nightly job (retention), so each
question is asked one way. Every query is one short statement on a connection the caller
opened (read-only unless it writes); nothing here knows a command or a venue.
"""
from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

# The programs whose heartbeats mark the collection as running.
COLLECTORS = ("cqt-collect-upbit", "cqt-collect-binance", "cqt-poll-binance", "cqt-poll-coinglass")
# check_runs names: the four check modules and the runner that records them together.
MODULES = ("altdata_check", "feature_check", "feature_leak_check", "coinglass_check")
RUNNER = "run_pipeline_checks"
# The nightly exports' file names (the report's export tables and the labels plot read them back).
EXPORT_1H, EXPORT_24H = "btc_1h.parquet", "btc_24h.parquet"


def load_json(text: str | None) -> Any:
    """A stored JSON column; {} when empty or unreadable."""
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


# ------------------------------------------------------------------------------ check_runs
@dataclass
class CheckRun:
    ts_ms: int
    name: str
    exit_code: int
    summary: dict[str, Any]


_CHECK_COLS = "ts_ms, check_name, exit_code, summary_json"


def check_at_or_after(conn: sqlite3.Connection, name: str, t_ms: int, as_of_ms: int,
                      before_ms: int | None = None) -> CheckRun | None:
    """The first run of `name` at or after t_ms (and before before_ms), none after as_of."""
    hi = as_of_ms if before_ms is None else min(as_of_ms, before_ms - 1)
    r = conn.execute(f"SELECT {_CHECK_COLS} FROM check_runs WHERE check_name = ? "
                     "AND ts_ms >= ? AND ts_ms <= ? ORDER BY ts_ms, id LIMIT 1", (name, t_ms, hi)).fetchone()
    return CheckRun(r[0], r[1], r[2], load_json(r[3])) if r else None


def latest_check(conn: sqlite3.Connection, name: str, as_of_ms: int) -> CheckRun | None:
    r = conn.execute(f"SELECT {_CHECK_COLS} FROM check_runs WHERE check_name = ? "
                     "AND ts_ms <= ? ORDER BY ts_ms DESC, id DESC LIMIT 1", (name, as_of_ms)).fetchone()
    return CheckRun(r[0], r[1], r[2], load_json(r[3])) if r else None


def latest_checks(conn: sqlite3.Connection) -> list[tuple[str, int, int]]:
    """(check name, ts_ms, exit code) of every check's newest run, by name."""
    return conn.execute(
        "SELECT c.check_name, c.ts_ms, c.exit_code FROM check_runs c JOIN "
        "(SELECT check_name, MAX(ts_ms) AS m FROM check_runs GROUP BY check_name) l "
        "ON c.check_name = l.check_name AND c.ts_ms = l.m ORDER BY c.check_name").fetchall()


def nearest_check_code(conn: sqlite3.Connection, name: str, t_ms: int, lo_ms: int, hi_ms: int) -> int | None:
    """Exit code of the run of `name` in [lo, hi] closest to t_ms."""
    r = conn.execute("SELECT exit_code FROM check_runs WHERE check_name = ? AND ts_ms BETWEEN ? AND ? "
                     "ORDER BY ABS(ts_ms - ?) LIMIT 1", (name, lo_ms, hi_ms, t_ms)).fetchone()
    return r[0] if r else None


def check_codes_between(conn: sqlite3.Connection, lo_ms: int, hi_ms: int) -> list[tuple[int, str, int]]:
    """(ts_ms, check name, exit code) of every run in [lo, hi], in time order."""
    return conn.execute("SELECT ts_ms, check_name, exit_code FROM check_runs WHERE ts_ms >= ? AND ts_ms <= ? "
                        "ORDER BY ts_ms, id", (lo_ms, hi_ms)).fetchall()


def exit_code_counts(conn: sqlite3.Connection, name: str, after_ms: int, until_ms: int) -> list[tuple[int, int]]:
    """(exit code, runs) of `name` in (after, until], by code."""
    return conn.execute("SELECT exit_code, COUNT(*) FROM check_runs WHERE check_name = ? AND ts_ms > ? "
                        "AND ts_ms <= ? GROUP BY exit_code ORDER BY exit_code", (name, after_ms, until_ms)).fetchall()


# ------------------------------------------------------------------------------ export_runs
EXPORT_RUNS_SQL = ("INSERT INTO export_runs (ts_ms, output, size_bytes, rows, horizon_sec, threshold, from_ts_ms, "
                   "to_ts_ms, drops_json, labels_json, volatility, summary_json, symbols) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)")
_EXPORT_KEYS = ("id", "ts_ms", "output", "size_bytes", "rows", "horizon_sec", "threshold", "from_ts_ms",
                "to_ts_ms", "drops", "labels", "volatility", "summary")


def insert_export_run(conn: sqlite3.Connection, *, ts_ms: int, output: str, size_bytes: int, rows: int,
                      horizon_sec: int, threshold: str, from_ts_ms: int, to_ts_ms: int, drops: dict[str, int],
                      labels: dict[str, int], volatility: float | None, summary: dict[str, Any],
                      symbols: Sequence[str]) -> None:
    """One export_runs row in one short write transaction (the report and retention read it);
    `symbols`: the assets the file holds, in file order (stored comma-separated)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(EXPORT_RUNS_SQL, (
            ts_ms, output, size_bytes, rows, horizon_sec, threshold, from_ts_ms, to_ts_ms,
            json.dumps(drops, sort_keys=True), json.dumps(labels, sort_keys=True), volatility,
            json.dumps(summary, sort_keys=True), ",".join(symbols)))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def latest_export(conn: sqlite3.Connection, basename: str, as_of_ms: int) -> dict[str, Any] | None:
    """The newest export_runs row at or before as_of whose file is named `basename` (JSON columns decoded)."""
    rows = conn.execute("SELECT id, ts_ms, output, size_bytes, rows, horizon_sec, threshold, from_ts_ms, to_ts_ms, "
                        "drops_json, labels_json, volatility, summary_json FROM export_runs WHERE ts_ms <= ? "
                        "AND (output = ? OR output LIKE ?) ORDER BY ts_ms DESC, id DESC",
                        (as_of_ms, basename, f"%/{basename}")).fetchall()
    for r in rows:
        if Path(r[2]).name == basename:
            d = dict(zip(_EXPORT_KEYS, r))
            for key in ("drops", "labels", "summary"):
                d[key] = load_json(d[key])
            return d
    return None


def exported_spans_by_asset(conn: sqlite3.Connection) -> dict[str, list[tuple[int, int]]]:
    """Per asset: [from, to] of every export with rows that holds the asset and whose file still
    exists with the recorded size (a row without `symbols` is BTC's, as every export before schema 6)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for output, size, lo, hi, symbols in conn.execute(
            "SELECT output, size_bytes, from_ts_ms, to_ts_ms, symbols FROM export_runs WHERE rows > 0"):
        try:
            if os.path.getsize(output) != size:
                continue
        except OSError:
            continue
        for asset in filter(None, (a.strip() for a in (symbols or "BTC").split(","))):
            spans.setdefault(asset, []).append((int(lo), int(hi)))
    return spans


# ------------------------------------------------------------------------------ service_runs
def service_runs_until(conn: sqlite3.Connection, as_of_ms: int) -> list[tuple]:
    """(service, pid, start_ts_ms, stop_ts_ms, exit_code, reason) of every run started by as_of."""
    return conn.execute(
        "SELECT service, pid, start_ts_ms, stop_ts_ms, exit_code, reason FROM service_runs WHERE start_ts_ms <= ? "
        "ORDER BY start_ts_ms, service", (as_of_ms,)).fetchall()


def stops_between(conn: sqlite3.Connection, after_ms: int, until_ms: int) -> int:
    """Recorded process stops in (after, until]."""
    return conn.execute("SELECT COUNT(*) FROM service_runs WHERE stop_ts_ms > ? AND stop_ts_ms <= ?",
                        (after_ms, until_ms)).fetchone()[0]


# ------------------------------------------------------------------------------ heartbeats
def _in(services: Sequence[str]) -> str:
    return ",".join("?" * len(services))


def first_heartbeat(conn: sqlite3.Connection, services: Sequence[str], as_of_ms: int) -> int | None:
    return conn.execute(f"SELECT MIN(ts_ms) FROM heartbeats WHERE service IN ({_in(services)}) AND ts_ms <= ?",
                        (*services, as_of_ms)).fetchone()[0]


def newest_heartbeat(conn: sqlite3.Connection, as_of_ms: int) -> int | None:
    return conn.execute("SELECT MAX(ts_ms) FROM heartbeats WHERE ts_ms <= ?", (as_of_ms,)).fetchone()[0]


def heartbeat_times(conn: sqlite3.Connection, service: str, lo_ms: int, hi_ms: int) -> list[int]:
    return [r[0] for r in conn.execute("SELECT ts_ms FROM heartbeats WHERE service = ? AND ts_ms >= ? AND ts_ms <= ? "
                                       "ORDER BY ts_ms", (service, lo_ms, hi_ms))]


def latest_heartbeats(conn: sqlite3.Connection, services: Sequence[str] | None = None,
                      as_of_ms: int | None = None) -> list[tuple[str, int, str, str | None]]:
    """(service, ts_ms, state, detail) of each service's newest heartbeat (of `services`, at or
    before as_of when given), by service."""
    where, params = [], []
    if services is not None:
        where.append(f"service IN ({_in(services)})")
        params += list(services)
    if as_of_ms is not None:
        where.append("ts_ms <= ?")
        params.append(as_of_ms)
    cond = f"WHERE {' AND '.join(where)} " if where else ""
    return conn.execute(
        "SELECT h.service, h.ts_ms, h.state, h.detail FROM heartbeats h JOIN "
        f"(SELECT service, MAX(ts_ms) AS m FROM heartbeats {cond}GROUP BY service) l "
        "ON h.service = l.service AND h.ts_ms = l.m ORDER BY h.service", params).fetchall()


# ------------------------------------------------------------------------------ events
def last_error(conn: sqlite3.Connection, service: str, lo_ms: int, hi_ms: int) -> str | None:
    """The newest ERROR/CRITICAL message of `service` with its last time in [lo, hi]."""
    r = conn.execute("SELECT message FROM events WHERE service = ? AND level IN ('ERROR', 'CRITICAL') "
                     "AND last_ts_ms BETWEEN ? AND ? ORDER BY last_ts_ms DESC LIMIT 1",
                     (service, lo_ms, hi_ms)).fetchone()
    return r[0] if r else None


def recent_events(conn: sqlite3.Connection, since_ms: int, limit: int = 8) -> list[tuple]:
    """(last_ts_ms, service, level, message, count) of the newest events since since_ms."""
    return conn.execute("SELECT last_ts_ms, service, level, message, count FROM events WHERE last_ts_ms >= ? "
                        "ORDER BY last_ts_ms DESC LIMIT ?", (since_ms, limit)).fetchall()
