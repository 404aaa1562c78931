"""What each writer puts in its `.prom` file (docs/monitoring.md lists every metric).

    cqt_checks.prom     the check runner, from the results it just computed (the same numbers
                        it prints and records in check_runs) and reject_counts
    cqt_nightly.prom    the nightly job, from its steps
    cqt_aggregate.prom  the aggregator, every ~15 s, from its own state and the database file sizes

Stream labels come from the check metric names (venue, then the venue symbol, then the
stream): `binance.BTCUSDT.aggTrade.lag_s` -> stream="binance.aggTrade", symbol="BTCUSDT";
`binance.BTCUSDT.ratios.taker_buy_sell.fill` -> stream="binance.ratios.taker_buy_sell";
`upbit.KRW-USDT.trade.lag_s` -> stream="upbit.trade", symbol="KRW-USDT". A stream with no data
at all has lag +Inf (infinitely stale, so a `>` alert fires), never a missing sample.
The inputs are plain dicts (CheckResult.to_dict(), the nightly's step dicts), so this module
knows no check, export or aggregate code.
"""
from __future__ import annotations

import logging
import math
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterable

from .. import db
from .textfile import MetricSet, TextfileWriter, finite

log = logging.getLogger("cqt.monitor")

CHECKS_FILE, NIGHTLY_FILE, AGGREGATE_FILE = "cqt_checks.prom", "cqt_nightly.prom", "cqt_aggregate.prom"
STREAM_VENUES = ("binance", "upbit")
# The last part of a stream metric's name -> (metric family, help, family of its threshold, help).
STREAM_MEASURES: dict[str, tuple[str, str, str | None, str]] = {
    "lag_s": ("cqt_stream_lag_seconds", "as-of minus the newest event time at or before it (+Inf: no data)",
              "cqt_stream_lag_limit_seconds", "altdata_check's lag threshold"),
    "fill": ("cqt_stream_fill_ratio", "share of the check window with data (0..1)",
             "cqt_stream_fill_min_ratio", "altdata_check's fill threshold"),
    "skew_s": ("cqt_stream_clock_skew_seconds", "median |receive time - event time|", None, ""),
    "frozen_s": ("cqt_stream_book_frozen_seconds",
                 "longest time the best bid/ask stood still while trades printed outside it", None, ""),
}
STREAM_LABELS = ("stream", "symbol")


def stream_labels(name: str) -> tuple[str, str, str] | None:
    """(stream, symbol, measure) of an altdata_check stream metric, else None."""
    parts = name.split(".")
    if len(parts) < 4 or parts[0] not in STREAM_VENUES:
        return None
    venue, symbol, *kind, measure = parts
    return f"{venue}.{'.'.join(kind)}", symbol, measure


def gap_labels(name: str) -> tuple[str, str] | None:
    """(stream, symbol) of `gaps.<venue>.<symbol>.<stream>.open` (or `gaps.<venue>.<name>.open`
    for a stream name without a symbol: symbol ""); None for the all-clear `gaps.open`."""
    parts = name.split(".")
    if parts[0] != "gaps" or parts[-1] != "open" or len(parts) < 4:
        return None
    if len(parts) == 4:
        return f"{parts[1]}.{parts[2]}", ""
    return f"{parts[1]}.{'.'.join(parts[3:-1])}", parts[2]


def reject_labels(name: str) -> tuple[str, str] | None:
    """(source, symbol) of `rejects.<source>.ratio` (symbol "": the whole service) or
    `rejects.<source>.<symbol>.ratio`."""
    parts = name.split(".")
    if parts[0] != "rejects" or parts[-1] != "ratio" or len(parts) not in (3, 4):
        return None
    return parts[1], parts[2] if len(parts) == 4 else ""


def metric_value(m: dict[str, Any]) -> float | None:
    """A metric's value as a sample: a lag with no data is +Inf; other missing values are left out."""
    v = m.get("value")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if v is None:
        return math.inf if m["name"].endswith(".lag_s") and m.get("status") == "FAIL" else None
    return finite(v)


def checks_metrics(checks: list[dict[str, Any]], runner: dict[str, Any], ts_ms: int,
                   reject_totals: Iterable[tuple[str, str, int]] = ()) -> MetricSet:
    """cqt_checks.prom: `checks` are CheckResult.to_dict() of the four checks, `runner` the gate's
    own {"check", "exit_code", "elapsed_ms", "window_s", "as_of_ms"}; `ts_ms` when the run was recorded."""
    ms = MetricSet()
    code = ms.gauge("cqt_check_exit_code", "exit code of the newest run (0 PASS, 1 FAIL, 3 not evaluated, "
                    "78 misconfigured)", ["check"])
    last = ms.gauge("cqt_check_last_run_timestamp_seconds", "when the newest run was recorded (Unix time)",
                    ["check"])
    took = ms.gauge("cqt_check_duration_seconds", "how long the newest run took", ["check"])
    failed = ms.gauge("cqt_check_failed_metrics", "metrics that missed their threshold in the newest run",
                      ["check"])
    for c in [*checks, runner]:
        code.set(c["exit_code"], c["check"])
        last.set(ts_ms / 1000, c["check"])
        took.set(c.get("elapsed_ms", 0) / 1000, c["check"])
    for c in checks:
        failed.set(len(c.get("failed", [])), c["check"])
    failed.set(sum(len(c.get("failed", [])) for c in checks), runner["check"])
    ms.gauge("cqt_check_window_seconds", "the window the newest run judged").set(runner["window_s"])
    ms.gauge("cqt_check_as_of_timestamp_seconds", "the as-of the newest run judged (Unix time)").set(
        runner["as_of_ms"] / 1000)
    families = {}
    for measure, (name, doc, limit_name, limit_doc) in STREAM_MEASURES.items():
        families[measure] = (ms.gauge(name, doc, STREAM_LABELS),
                             ms.gauge(limit_name, limit_doc, STREAM_LABELS) if limit_name else None)
    gaps = ms.gauge("cqt_gaps_open", "gaps of the stream still open at as-of (past the grace)", STREAM_LABELS)
    ratio = ms.gauge("cqt_rejects_ratio", "rejected frames / frames in the window (symbol \"\": the whole "
                     "service)", ["source", "symbol"])
    altdata = next((c for c in checks if c["check"] == "altdata_check"), None)
    for m in (altdata or {}).get("metrics", []):
        if (labels := stream_labels(m["name"])) is not None:
            stream, symbol, measure = labels
            if measure in families:
                value_family, limit_family = families[measure]
                value_family.set(metric_value(m), stream, symbol)
                if limit_family is not None:
                    limit_family.set(finite(m.get("threshold")), stream, symbol)
                if measure == "lag_s" and (stream, symbol) not in gaps.samples:
                    gaps.set(0, stream, symbol)    # every judged stream: 0 unless a gap metric names it
        elif (labels := gap_labels(m["name"])) is not None:
            gaps.set(finite(m.get("value")), *labels)
        elif (labels := reject_labels(m["name"])) is not None:
            ratio.set(metric_value(m), *labels)
    total = ms.counter("cqt_rejects_total", "rejects kept in reject_counts (every hour CQT_KEEP_DAYS keeps; "
                       "the nightly retention lowers it)", ["source", "reason"])
    for source, reason, n in reject_totals:
        total.set(n, source, reason)
    return ms


def reject_totals(db_path: str | os.PathLike) -> list[tuple[str, str, int]]:
    """Rejects per source and reason over the hours reject_counts keeps (a small table: one row
    per source, reason and hour); [] when the database cannot be read."""
    try:
        conn = db.open_readonly(db_path)
    except (db.DatabaseMissing, db.SchemaTooNew, sqlite3.Error):
        return []
    try:
        return conn.execute("SELECT source, reason, SUM(count) FROM reject_counts "
                            "GROUP BY source, reason ORDER BY source, reason").fetchall()
    except sqlite3.Error as exc:
        log.debug("reject_counts not read: %s", exc)
        return []
    finally:
        conn.close()


def write_checks_file(settings, checks: list[dict[str, Any]], runner: dict[str, Any], ts_ms: int) -> bool:
    """cqt_checks.prom when CQT_TEXTFILE_DIR is set; never raises (a failure is one warning)."""
    writer = TextfileWriter(settings, CHECKS_FILE, runner["check"])
    return writer.enabled and writer.write(
        lambda: checks_metrics(checks, runner, ts_ms, reject_totals(settings.db)))


def nightly_metrics(steps: list[dict[str, Any]], code: int, elapsed_s: float, ts_ms: int) -> MetricSet:
    """cqt_nightly.prom: `steps` as the nightly's --json prints them (name, exit_code, elapsed_s, data)."""
    ms = MetricSet()
    ms.gauge("cqt_nightly_exit_code", "exit code of the newest nightly run (the worst step's)").set(code)
    ms.gauge("cqt_nightly_last_run_timestamp_seconds", "when the newest nightly run ended (Unix time)").set(
        ts_ms / 1000)
    ms.gauge("cqt_nightly_duration_seconds", "how long the newest nightly run took").set(elapsed_s)
    step_code = ms.gauge("cqt_nightly_step_exit_code", "exit code of each step of the newest run", ["step"])
    step_took = ms.gauge("cqt_nightly_step_duration_seconds", "how long each step took", ["step"])
    rows = ms.gauge("cqt_export_rows", "rows of each export the newest nightly run wrote (dataset: the file's "
                    "name without .parquet)", ["dataset"])
    size = ms.gauge("cqt_export_bytes", "size of each export file the newest nightly run wrote", ["dataset"])
    deleted = ms.gauge("cqt_nightly_retention_deleted_rows", "rows the retention step deleted, per table",
                       ["table"])
    for s in steps:
        step_code.set(s["exit_code"], s["name"])
        step_took.set(s.get("elapsed_s"), s["name"])
        data = s.get("data", {})
        if "rows" in data and data.get("output"):
            dataset = Path(data["output"]).name.removesuffix(".parquet")
            rows.set(data["rows"], dataset)
            size.set(data.get("size_bytes"), dataset)
        for table, n in (data.get("deleted") or {}).items():
            deleted.set(n, table)
    return ms


def file_bytes(path: str | os.PathLike) -> int:
    """A file's size, 0 when it does not exist (no WAL file between checkpoints of a closed db)."""
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def aggregate_metrics(assets: dict[str, dict[str, Any]], db_path: str | os.PathLike, rows_total: int) -> MetricSet:
    """cqt_aggregate.prom: `assets` are each asset's heartbeat detail (AssetAggregator.detail)."""
    ms = MetricSet()
    last = ms.gauge("cqt_aggregate_last_bar_timestamp_seconds", "newest market_1s second written (Unix time)",
                    ["asset"])
    lag = ms.gauge("cqt_aggregate_lag_seconds", "now minus the newest second written", ["asset"])
    up = ms.gauge("cqt_aggregate_running", "1 when the asset is being written, 0 while it waits for its "
                  "first data", ["asset"])
    catching = ms.gauge("cqt_aggregate_catching_up", "1 while the asset catches up after a pause", ["asset"])
    pending = ms.gauge("cqt_aggregate_late_pending", "late raw rows waiting to be folded into written seconds",
                       ["asset"])
    rows = ms.counter("cqt_aggregate_rows_written_total", "market_1s rows written since the service started",
                      ["asset"])
    for asset, d in assets.items():
        ts = d.get("last_bar_ts_ms")
        last.set(None if ts is None else ts / 1000, asset)
        lag.set(None if d.get("lag_ms") is None else d["lag_ms"] / 1000, asset)
        up.set(d.get("state") == "running", asset)
        catching.set(bool(d.get("catching_up")), asset)
        pending.set(d.get("late_pending"), asset)
        rows.set(d.get("rows_written"), asset)
    ms.counter("cqt_aggregate_rows_total", "market_1s rows written by this process, every asset").set(rows_total)
    ms.gauge("cqt_db_bytes", "size of the database file").set(file_bytes(db_path))
    ms.gauge("cqt_wal_bytes", "size of the database's write-ahead log").set(file_bytes(f"{db_path}-wal"))
    return ms
