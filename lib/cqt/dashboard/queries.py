"""Every read the dashboard and /healthz make, one read-only connection per call.

Streamlit runs the page script in a new thread per run and the /healthz route on the server's
event loop: a connection is opened (`mode=ro`, never `immutable`: that gives wrong answers beside
a live writer), used for one panel and closed, so no read transaction outlives a rerun and no
connection crosses threads. Every statement is bounded twice: the busy timeout, and a progress
handler that interrupts a statement running past its deadline. Queries name the leading column of
an index (`WHERE symbol = ?` before any time condition); the numbers come from the check modules
(cqt.checks), the bookkeeping queries (cqt.bookkeeping) and the thresholds of the registry.

Parameters pass through `sql_value`: a numpy integer bound as-is is stored by sqlite3 as a BLOB,
so `ts_ms > ?` silently matches nothing; the adapters registered below cover any caller.
"""
from __future__ import annotations

import os
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from .. import bookkeeping, db
from ..checks import altdata, feature
from ..checks.altdata import BINANCE_STREAMS, UPBIT_STREAMS, USDT_STREAM, Stream
from ..checks.base import CheckContext
from ..checks.result import Metric
from ..checks.thresholds import Thresholds
from ..config import Settings

OPEN_TIMEOUT_S = 2.0          # busy timeout: a writer's commit takes milliseconds
STATEMENT_DEADLINE_S = 3.0    # one panel's statements together; a slower one is interrupted
_PROGRESS_STEPS = 10_000      # SQLite VM steps between deadline checks

for _np_type in (np.integer, np.int64, np.int32, np.int16, np.int8, np.uint32, np.uint16, np.uint8):
    sqlite3.register_adapter(_np_type, int)
for _np_type in (np.float64, np.float32):
    sqlite3.register_adapter(_np_type, float)
sqlite3.register_adapter(np.bool_, int)


def sql_value(v: Any) -> Any:
    """A parameter as a Python number: numpy scalars unwrapped (ints stay ints)."""
    if isinstance(v, np.generic):
        return v.item()
    return v


def sql_params(params: Sequence[Any]) -> tuple:
    return tuple(sql_value(v) for v in params)


class Reader:
    """One read-only connection for one panel: `rows`/`one`/`scalar` convert their parameters."""

    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn, self.path = conn, path

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.conn.execute(sql, sql_params(params)).fetchall()

    def one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        return self.conn.execute(sql, sql_params(params)).fetchone()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.one(sql, params)
        return row[0] if row else None


@contextmanager
def reader(path: str | os.PathLike, deadline_s: float | None = None) -> Iterator[Reader]:
    """A read-only connection closed on exit; raises db.DatabaseMissing when there is no file. Its
    statements together may run `deadline_s` (default STATEMENT_DEADLINE_S), then the running one is
    interrupted (sqlite3.OperationalError "interrupted", see `interrupted`)."""
    path = Path(path)
    conn = db.connect(path, readonly=True, timeout_s=OPEN_TIMEOUT_S)
    deadline = time.monotonic() + (STATEMENT_DEADLINE_S if deadline_s is None else deadline_s)
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, _PROGRESS_STEPS)
    try:
        yield Reader(conn, path)
    finally:
        conn.close()


def interrupted(exc: sqlite3.Error) -> bool:
    """True when a statement was stopped by the deadline (not a problem of the database)."""
    return isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted"


# ------------------------------------------------------------------------------ streams
@dataclass(frozen=True)
class StreamRef:
    """One WebSocket stream of one venue symbol, as altdata_check names and judges it."""

    stream: Stream
    symbol: str

    @property
    def name(self) -> str:          # binance.BTCUSDT.aggTrade: the metric stem of altdata_check
        return self.stream.metric(self.symbol)

    @property
    def words(self) -> str:         # binance aggTrade BTCUSDT
        return f"{self.stream.venue} {self.stream.name} {self.symbol}"

    @property
    def lag_env(self) -> str:
        return f"CQT_CHECK_{self.stream.key}_LAG_MAX_S"


def stream_refs(settings: Settings) -> list[StreamRef]:
    """Every stream of every configured asset, then KRW-USDT once (altdata_check's order)."""
    out = []
    for asset in settings.assets:
        out += [StreamRef(s, settings.binance_symbol_of(asset)) for s in BINANCE_STREAMS]
        out += [StreamRef(s, settings.upbit_code_of(asset)) for s in UPBIT_STREAMS]
    out.append(StreamRef(USDT_STREAM, settings.usdt_code))
    return out


def newest_ms(r: Reader, ref: StreamRef, as_of_ms: int) -> int | None:
    s = ref.stream
    return r.scalar(f"SELECT MAX({s.time_col}) FROM {s.table} WHERE {s.filter_col} = ? AND {s.time_col} <= ?",
                    (ref.symbol, as_of_ms))


def latest_start_ms(r: Reader, service: str, as_of_ms: int) -> int | None:
    return r.scalar("SELECT MAX(start_ts_ms) FROM service_runs WHERE service = ? AND start_ts_ms <= ?",
                    (service, as_of_ms))


def stream_age_s(r: Reader, ref: StreamRef, as_of_ms: int) -> tuple[int | None, float | None]:
    """(newest event time, age in s): a sparse stream (lag only in altdata_check) silent since its
    collector started counts its age from that start, as the check does."""
    newest = newest_ms(r, ref, as_of_ms)
    since = newest
    if ref.stream.fill is None:
        start = latest_start_ms(r, ref.stream.service, as_of_ms)
        if start is not None and (newest is None or start > newest):
            since = start
    return newest, (None if since is None else round((as_of_ms - since) / 1000, 3))


def rows_between(r: Reader, ref: StreamRef, lo_ms: int, hi_ms: int) -> int:
    s = ref.stream
    return r.scalar(f"SELECT COUNT(*) FROM {s.table} WHERE {s.filter_col} = ? AND {s.time_col} > ? "
                    f"AND {s.time_col} <= ?", (ref.symbol, lo_ms, hi_ms))


def check_context(r: Reader, settings: Settings, as_of_ms: int, window_s: int) -> CheckContext:
    return CheckContext(r.conn, settings, Thresholds(settings), int(as_of_ms), int(window_s))


def stream_metrics(r: Reader, settings: Settings, ref: StreamRef, as_of_ms: int, window_s: int) -> dict[str, Metric]:
    """altdata_check's own metrics of one stream over the window ending at as-of, by suffix
    (lag_s, fill, skew_s): the same numbers and thresholds the check prints."""
    ctx = check_context(r, settings, as_of_ms, window_s)
    return {m.name.rsplit(".", 1)[1]: m for m in altdata.ws_stream_metrics(ctx, ref.stream, ref.symbol)}


def null_rates(r: Reader, settings: Settings, asset: str, as_of_ms: int, window_s: int) -> list[Metric]:
    """feature_check's null-rate metrics of `asset`'s predictions over the window."""
    ctx = check_context(r, settings, as_of_ms, window_s)
    n = count_rows(r, "predictions", asset, ctx.start_ms, ctx.as_of_ms)
    if not n:
        return []
    return feature.null_metrics(ctx, "predictions", asset, feature.columns(ctx, "predictions"), n)


# ------------------------------------------------------------------------------ checks and jobs
CHECK_NAMES = (bookkeeping.RUNNER, *bookkeeping.MODULES)


def latest_checks(r: Reader, as_of_ms: int) -> dict[str, bookkeeping.CheckRun | None]:
    return {name: bookkeeping.latest_check(r.conn, name, as_of_ms) for name in CHECK_NAMES}


def check_history(r: Reader, name: str, lo_ms: int, hi_ms: int) -> list[tuple[int, int]]:
    """(ts_ms, exit code) of `name`'s runs in [lo, hi] (the check_runs (check_name, ts_ms) index)."""
    return r.rows("SELECT ts_ms, exit_code FROM check_runs WHERE check_name = ? AND ts_ms >= ? AND ts_ms <= ? "
                  "ORDER BY ts_ms", (name, lo_ms, hi_ms))


def job_history(r: Reader, job: str, lo_ms: int, limit: int = 50) -> list[tuple]:
    """(start, end, exit code, trigger) of `job`'s newest runs started after lo."""
    return r.rows("SELECT start_ts_ms, end_ts_ms, exit_code, trigger FROM job_runs WHERE job = ? AND start_ts_ms >= ? "
                  "ORDER BY start_ts_ms DESC LIMIT ?", (job, lo_ms, limit))


# ------------------------------------------------------------------------------ gaps, services
def gaps_of(r: Reader, symbol: str, lo_ms: int, limit: int = 20) -> list[tuple]:
    """(source, stream, status, detected, from, to, filled rows, reason) of `symbol`'s gaps that are
    open or were detected after lo, newest first (the gaps (symbol, detected_ts_ms) index)."""
    return r.rows("SELECT source, stream, status, detected_ts_ms, from_ts_ms, to_ts_ms, filled_rows, reason "
                  "FROM gaps WHERE symbol = ? AND (detected_ts_ms >= ? OR status = 'open') "
                  "ORDER BY detected_ts_ms DESC LIMIT ?", (symbol, lo_ms, limit))


def services(r: Reader) -> list[str]:
    known = set(bookkeeping.COLLECTORS)
    known |= {s for (s,) in r.rows("SELECT DISTINCT service FROM service_runs")}
    return sorted(known)


def service_rows(r: Reader, as_of_ms: int, since_ms: int) -> list[dict[str, Any]]:
    """Per service: newest heartbeat and state, runs started since `since` (restarts) and the
    newest stopped run's exit code and reason."""
    out = []
    for service in services(r):
        hb = r.one("SELECT ts_ms, state FROM heartbeats WHERE service = ? AND ts_ms <= ? ORDER BY ts_ms DESC LIMIT 1",
                   (service, as_of_ms))
        starts = r.scalar("SELECT COUNT(*) FROM service_runs WHERE service = ? AND start_ts_ms > ? "
                          "AND start_ts_ms <= ?", (service, since_ms, as_of_ms))
        last = r.one("SELECT stop_ts_ms, exit_code, reason FROM service_runs WHERE service = ? "
                     "AND stop_ts_ms IS NOT NULL ORDER BY stop_ts_ms DESC LIMIT 1", (service,))
        out.append({"service": service, "heartbeat_ms": hb[0] if hb else None, "state": hb[1] if hb else None,
                    "starts": starts, "last_stop_ms": last[0] if last else None,
                    "last_exit": last[1] if last else None, "last_reason": last[2] if last else None})
    return out


# ------------------------------------------------------------------------------ rejects, late rows, Coinglass
def rejects_by_reason(r: Reader, since_ms: int) -> list[tuple[str, str, int, int]]:
    """(source, reason, count, last time) since `since`, from the hourly counters."""
    hour = since_ms // 3_600_000 * 3_600_000
    return r.rows("SELECT source, reason, SUM(count), MAX(last_ts_ms) FROM reject_counts WHERE hour_ms >= ? "
                  "GROUP BY source, reason ORDER BY SUM(count) DESC", (hour,))


def late_rows(r: Reader, since_ms: int) -> list[tuple]:
    """(symbol, source, late rows, corrected rows, rebuilt?) of the seconds that got late raw rows."""
    return r.rows("SELECT symbol, source, SUM(late_rows), SUM(corrected_rows), "
                  "SUM(rebuilt_ts_ms IS NOT NULL), COUNT(*) FROM aggregate_late WHERE ts_ms >= ? "
                  "GROUP BY symbol, source ORDER BY symbol, source", (since_ms,))


def coinglass_calls(r: Reader, since_ms: int) -> list[tuple[str, int, int, int | None]]:
    """(endpoint, calls, failed calls, newest ok time) since `since`. The ts_ms index is named: for the
    GROUP BY SQLite would otherwise walk the whole (endpoint, ts_ms) index."""
    return r.rows("SELECT endpoint, COUNT(*), SUM(ok = 0), MAX(CASE WHEN ok THEN ts_ms END) "
                  "FROM coinglass_call_status INDEXED BY coinglass_call_status_ts WHERE ts_ms >= ? "
                  "GROUP BY endpoint ORDER BY endpoint", (since_ms,))


def coinglass_last_errors(r: Reader, since_ms: int, limit: int = 5) -> list[tuple]:
    return r.rows("SELECT ts_ms, endpoint, http_status, error FROM coinglass_call_status WHERE ts_ms >= ? "
                  "AND ok = 0 ORDER BY ts_ms DESC LIMIT ?", (since_ms, limit))


# ------------------------------------------------------------------------------ prices and features
PRICE_COLUMNS = ("close", "binance_last", "usdt_krw", "kimchi_premium")


def prices(r: Reader, asset: str, lo_ms: int, hi_ms: int, step_s: int) -> list[tuple]:
    """(ts_ms, Upbit close KRW, Binance last USDT, KRW/USDT, kimchi premium) of `asset`, one row every
    `step_s` seconds of (lo, hi] (the market_1s (symbol, ts_ms) key)."""
    return r.rows("SELECT ts_ms, close, binance_last, usdt_krw, kimchi_premium FROM market_1s WHERE symbol = ? "
                  "AND ts_ms > ? AND ts_ms <= ? AND ts_ms % ? = 0 ORDER BY ts_ms",
                  (asset, lo_ms, hi_ms, step_s * 1000))


def latest_row(r: Reader, table: str, asset: str, as_of_ms: int) -> dict[str, Any] | None:
    cur = r.conn.execute(f"SELECT * FROM {table} WHERE symbol = ? AND ts_ms <= ? ORDER BY ts_ms DESC LIMIT 1",
                         sql_params((asset, as_of_ms)))
    row = cur.fetchone()
    return None if row is None else dict(zip([d[0] for d in cur.description], row))


def count_rows(r: Reader, table: str, asset: str, lo_ms: int, hi_ms: int) -> int:
    return r.scalar(f"SELECT COUNT(*) FROM {table} WHERE symbol = ? AND ts_ms > ? AND ts_ms <= ?",
                    (asset, lo_ms, hi_ms))


# ------------------------------------------------------------------------------ exports, files
def latest_exports(r: Reader, limit: int = 5) -> list[dict[str, Any]]:
    rows = r.rows("SELECT ts_ms, output, rows, size_bytes, drops_json, labels_json, symbols FROM export_runs "
                  "ORDER BY ts_ms DESC, id DESC LIMIT ?", (limit,))
    return [{"ts_ms": t, "output": out, "rows": n, "size_bytes": size, "drops": bookkeeping.load_json(d),
             "labels": bookkeeping.load_json(lab), "symbols": syms or "BTC"}
            for t, out, n, size, d, lab, syms in rows]


def file_sizes(path: str | os.PathLike) -> dict[str, int | None]:
    """Bytes of the database and its WAL (None when absent)."""
    out: dict[str, int | None] = {}
    for key, suffix in (("db_bytes", ""), ("wal_bytes", "-wal")):
        try:
            out[key] = os.stat(f"{path}{suffix}").st_size
        except OSError:
            out[key] = None
    return out
