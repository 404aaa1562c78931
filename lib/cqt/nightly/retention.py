"""Retention: rows older than CQT_KEEP_DAYS deleted - market data only where an export whose
file still exists covers them; bookkeeping by age; old rotated captures likewise; then a WAL
checkpoint and an incremental vacuum. Deletes go an hour per short write transaction.
"""
from __future__ import annotations

import re
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .. import exitcodes
from ..bookkeeping import exported_spans
from ..config import Settings
from ..db import connect
from ..timerule import RAW_TABLES, rule
from ..timeutil import now_ms
from .steps import Step

HOUR, DAY = 3_600_000, 86_400_000

# Market-data tables (time column from the time rule) and the index prefix that makes a
# time-range delete an index range instead of a table scan.
PREFIX = {
    "upbit_trades": "code", "upbit_orderbook": "code", "upbit_ticker": "code",
    "binance_agg_trades": "symbol", "binance_mark_price": "symbol", "binance_book_ticker": "symbol",
    "binance_liquidations": "symbol", "binance_open_interest": "symbol", "binance_ratios": "kind",
    "binance_premium_index": "symbol", "binance_funding_rate": "symbol",
}
DERIVED = {"market_1s": "ts_ms", "predictions": "ts_ms"}
# Bookkeeping: deleted by age alone (not exported data). heartbeats keep each service's first row
# (the report's collection start); check_runs, export_runs and service_runs are small and kept.
BOOKKEEPING = {"ingest_stats": "ts_ms", "rejects": "ts_ms", "coinglass_call_status": "ts_ms", "events": "ts_ms",
               "gaps": "detected_ts_ms", "reject_counts": "hour_ms", "heartbeats": "ts_ms"}
_CAPTURE_DAY_RE = re.compile(r"\.(\d{4}-\d{2}-\d{2})\.")


def merge_spans(spans: Iterable[tuple[int, int]], join_gap_ms: int = 1000) -> list[tuple[int, int]]:
    """Union of inclusive [lo, hi] spans; spans at most `join_gap_ms` apart (adjacent seconds) join."""
    out: list[list[int]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1] + join_gap_ms:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(a, b) for a, b in out]


def exported_coverage(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """Time spans covered by an export whose file still exists with the recorded size."""
    return merge_spans(exported_spans(conn))


def clip(spans: list[tuple[int, int]], cutoff_ms: int) -> list[tuple[int, int]]:
    """The parts of the spans strictly before the cutoff."""
    return [(lo, min(hi, cutoff_ms - 1)) for lo, hi in spans if lo < cutoff_ms]


def _write(conn: sqlite3.Connection, sql: str, params: tuple) -> int:
    """One short write transaction; busy is retried a few times (writers hold the lock for ms)."""
    for attempt in range(6):
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise
        try:
            n = conn.execute(sql, params).rowcount
            conn.execute("COMMIT")
            return n
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    raise sqlite3.OperationalError("database is locked (retention gave up after 6 attempts)")


def _prefixes(conn: sqlite3.Connection, table: str, col: str) -> list[Any]:
    """Distinct values of an index prefix, each found with one index seek."""
    out, last = [], None
    while True:
        if last is None:
            r = conn.execute(f"SELECT MIN({col}) FROM {table}").fetchone()
        else:
            r = conn.execute(f"SELECT MIN({col}) FROM {table} WHERE {col} > ?", (last,)).fetchone()
        if r is None or r[0] is None:
            return out
        out.append(r[0])
        last = r[0]


def delete_spans(conn: sqlite3.Connection, table: str, tcol: str, spans: list[tuple[int, int]],
                 prefix: str | None = None, chunk_ms: int = HOUR, extra: str = "") -> int:
    """Delete rows with tcol in the inclusive spans, an hour per transaction."""
    total = 0
    keys: list[Any] = _prefixes(conn, table, prefix) if prefix else [None]
    for key in keys:
        pwhere, pparams = (f"{prefix} = ? AND ", (key,)) if prefix else ("", ())
        oldest = conn.execute(f"SELECT MIN({tcol}) FROM {table} WHERE {pwhere}1", pparams).fetchone()[0]
        if oldest is None:
            continue
        for lo, hi in spans:
            lo = max(lo, int(oldest))
            while lo <= hi:
                top = min(hi, lo + chunk_ms - 1)
                total += _write(conn, f"DELETE FROM {table} WHERE {pwhere}{tcol} >= ? AND {tcol} <= ?{extra}",
                                (*pparams, lo, top))
                lo = top + 1
    return total


def retention(settings: Settings, now: int | None = None) -> Step:
    now = now_ms() if now is None else now
    cutoff = now - settings.keep_days * DAY
    conn = connect(settings.db)
    deleted: dict[str, int] = {}
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        covered = clip(exported_coverage(conn), cutoff)
        for table in (*RAW_TABLES, *DERIVED):
            if table not in tables:
                continue
            tcol = DERIVED.get(table) or rule(table).time_col
            n = delete_spans(conn, table, tcol, covered, PREFIX.get(table))
            if n:
                deleted[table] = n
        for table, tcol in BOOKKEEPING.items():
            if table not in tables:
                continue
            oldest = conn.execute(f"SELECT MIN({tcol}) FROM {table}").fetchone()[0]
            if oldest is None or oldest >= cutoff:
                continue
            extra = ""
            if table == "heartbeats":
                extra = (" AND ts_ms > (SELECT MIN(h2.ts_ms) FROM heartbeats h2 WHERE h2.service = heartbeats.service)")
            chunk = DAY if table in ("reject_counts",) else HOUR
            n = delete_spans(conn, table, tcol, [(int(oldest), cutoff - 1)], chunk_ms=chunk, extra=extra)
            if n:
                deleted[table] = n
        captures = prune_captures(settings, covered, cutoff)
        ck = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        vac = incremental_vacuum(conn)
    finally:
        conn.close()
    total = sum(deleted.values())
    return Step("retention", exitcodes.OK,
                f"deleted_rows={total} captures_removed={len(captures)} checkpoint_busy={ck[0]} {vac}",
                {"deleted": deleted, "captures_removed": [str(p) for p in captures], "cutoff_ms": cutoff,
                 "covered": covered, "checkpoint": list(ck), "vacuum": vac})


def incremental_vacuum(conn: sqlite3.Connection, pages_per_step: int = 2000, max_steps: int = 500) -> str:
    mode = conn.execute("PRAGMA auto_vacuum").fetchone()[0]
    free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    if mode != 2:
        return (f"vacuum=skipped(auto_vacuum={('NONE', 'FULL', 'INCREMENTAL')[mode]}, free_pages={free}: "
                "freed pages are reused; the file does not shrink)")
    before = free
    for _ in range(max_steps):
        if free <= 0:
            break
        conn.execute(f"PRAGMA incremental_vacuum({pages_per_step})").fetchall()
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    return f"vacuum=incremental(freed_pages={before - free})"


def prune_captures(settings: Settings, covered: list[tuple[int, int]], cutoff: int) -> list[Path]:
    """Remove rotated capture files (`name.YYYY-MM-DD.ext`) of days before the cutoff whose whole day
    was exported. The current (unrotated) file is never touched."""
    cdir = settings.resolve_path(settings.get_str("CQT_CAPTURE_DIR"))
    if not cdir.is_dir():
        return []
    removed = []
    for p in sorted(cdir.iterdir()):
        m = _CAPTURE_DAY_RE.search(p.name)
        if not m or not p.is_file():
            continue
        try:
            day = int(datetime.strptime(m.group(1), "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() * 1000)
        except ValueError:
            continue
        lo, hi = day, day + DAY - 1000
        if hi < cutoff and any(a <= lo and hi <= b for a, b in covered):
            p.unlink()
            removed.append(p)
    return removed


def step_retention(settings: Settings) -> Step:
    try:
        return retention(settings)
    except sqlite3.Error as exc:
        return Step("retention", exitcodes.IOERR if "disk" in str(exc).lower() else exitcodes.FAIL,
                    f"retention stopped: {exc}")
    except OSError as exc:
        return Step("retention", exitcodes.IOERR, f"retention stopped: {exc}")
