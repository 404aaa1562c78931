"""Retention: rows older than CQT_KEEP_DAYS deleted - an asset's market data only where an
export holding that asset (export_runs.symbols) whose file still exists covers them; KRW-USDT,
which every asset's features read, and the capture files, which hold every asset's frames, only
where every configured asset's exports cover them; bookkeeping by age; then a WAL checkpoint
and an incremental vacuum. Deletes go an hour per short write transaction.
"""
from __future__ import annotations

import re
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from .. import exitcodes
from ..bookkeeping import exported_spans_by_asset
from ..config import ConfigError, Settings
from ..db import connect
from ..featureparams import coinglass_coin_for
from ..report.context import intersect
from ..symbols import base_asset_of_binance, base_asset_of_upbit
from ..timerule import RAW_TABLES, rule
from ..timeutil import now_ms
from .steps import Step

HOUR, DAY = 3_600_000, 86_400_000

# Market-data tables (time column from the time rule): the column naming the venue symbol of a row
# (KRW-BTC, BTCUSDT, the Coinglass coin or pair), and where the time index starts with another
# column, that column too, so a time-range delete stays an index range instead of a table scan.
SYMBOL_COLUMN = {t: "code" if t.startswith("upbit_") else "symbol" for t in RAW_TABLES}
EXTRA_PREFIX = {"binance_ratios": "kind"}
DERIVED = {"market_1s": "ts_ms", "predictions": "ts_ms"}        # symbol = the base asset
EVERY_ASSET = ""        # the owner of rows every asset reads (KRW-USDT)
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


def exported_coverage(conn: sqlite3.Connection) -> dict[str, list[tuple[int, int]]]:
    """Per asset: the merged time spans an export of that asset still covers."""
    return {a: merge_spans(s) for a, s in exported_spans_by_asset(conn).items()}


def covered_by_all(coverage: dict[str, list[tuple[int, int]]], assets: Iterable[str]) -> list[tuple[int, int]]:
    """The spans every one of `assets` has an export for."""
    out: list[tuple[int, int]] | None = None
    for a in assets:
        out = coverage.get(a, []) if out is None else intersect(out, coverage.get(a, []))
    return out or []


def venue_owners(settings: Settings) -> dict[str, str]:
    """Venue symbol -> the configured asset it belongs to (KRW-USDT: every asset)."""
    owners = {settings.usdt_code: EVERY_ASSET}
    for a in settings.assets:
        try:
            coin = coinglass_coin_for(settings, a)
        except ConfigError:
            coin = a
        for name in (settings.upbit_code_of(a), settings.binance_symbol_of(a), coin):
            owners.setdefault(name, a)
    return owners


def owner_of(table: str, value: str, owners: dict[str, str]) -> str:
    """The asset a raw row of `table` with venue symbol `value` belongs to: a configured asset's
    own symbol, else the base asset the name spells (an asset collected before, no longer configured)."""
    if value in owners:
        return owners[value]
    return base_asset_of_upbit(value) if table.startswith("upbit_") else base_asset_of_binance(value)


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
                 prefix: str | None = None, chunk_ms: int = HOUR, extra: str = "", where: str = "",
                 params: tuple = ()) -> int:
    """Delete rows with tcol in the inclusive spans (and `where`), an hour per transaction."""
    total = 0
    keys: list[Any] = _prefixes(conn, table, prefix) if prefix else [None]
    for key in keys:
        pwhere, pparams = (f"{prefix} = ? AND ", (key,)) if prefix else ("", ())
        if where:
            pwhere, pparams = f"{pwhere}{where} AND ", (*pparams, *params)
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
        coverage = {a: clip(s, cutoff) for a, s in exported_coverage(conn).items()}
        covered = covered_by_all(coverage, settings.assets)
        owners = venue_owners(settings)
        for table in (*RAW_TABLES, *DERIVED):
            if table not in tables:
                continue
            tcol = DERIVED.get(table) or rule(table).time_col
            scol = "symbol" if table in DERIVED else SYMBOL_COLUMN[table]
            n = 0
            for value in _prefixes(conn, table, scol):
                asset = value if table in DERIVED else owner_of(table, value, owners)
                spans = covered if asset == EVERY_ASSET else coverage.get(asset, [])
                if spans:
                    n += delete_spans(conn, table, tcol, spans, EXTRA_PREFIX.get(table), where=f"{scol} = ?",
                                      params=(value,))
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
                 "covered": covered, "covered_by_asset": coverage, "checkpoint": list(ck), "vacuum": vac})


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
    was exported (`covered`: by every asset, since one capture file holds every asset's frames).
    The current (unrotated) file is never touched."""
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
