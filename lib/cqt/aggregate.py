"""cqt-aggregate: writes `market_1s` and `predictions`, one row per second, from raw tables.

    bin/cqt-aggregate                                   # the service (systemd: cqt-aggregate.service)
    bin/cqt-aggregate --rebuild --from T --to T [--db PATH] [--json]

Service: every second it writes the seconds that are complete once the grace delay
(CQT_AGGREGATE_GRACE_S, default 2 s) has passed, i.e. every bar t <= now - grace. After
a restart it continues from the last written second; a gap longer than
CQT_AGGREGATE_MAX_CATCHUP_S (default 6 h) is skipped with a warning that names the
`--rebuild` command for the skipped range. Each second costs one bounded read of the
new raw rows (per-second summaries are cached, see cqt.features.SecondCache).

Late data: a raw row that becomes visible after its second was written is counted in
`aggregate_late` and in the heartbeat detail (Upbit KRW-BTC trades by a periodic
recount against market_1s.trade_count; Coinglass bars received more than the grace
delay after their availability). The live rows stay what was known live;
`--rebuild` over the range recomputes them with the late rows and marks them corrected.

Rebuild: recomputes [from, to] (bar times, both inclusive) from the raw tables in
chunks, replacing the rows there, each chunk in its own short write transaction.
`rebuild()` is the same path for `bin/cqt synth`.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import click

from . import exitcodes, timerule
from .config import ConfigError, Settings
from .db import DatabaseMissing, connect, is_fatal_io, open_db
from .features import (MARKET_COLUMNS, PREDICTION_COLUMNS, FeatureParams, FeatureResult, SecondCache,
                       compute_range, params_from_settings)
from .timeutil import fmt_ms, now_ms, parse_time_ms

log = logging.getLogger("cqt.aggregate")

SERVICE = "cqt-aggregate"
SECOND_MS = 1000

MARKET_SQL = (f"INSERT OR REPLACE INTO market_1s ({', '.join(MARKET_COLUMNS)}) "
              f"VALUES ({', '.join('?' * len(MARKET_COLUMNS))})")
PREDICTIONS_SQL = (f"INSERT OR REPLACE INTO predictions ({', '.join(PREDICTION_COLUMNS)}) "
                   f"VALUES ({', '.join('?' * len(PREDICTION_COLUMNS))})")
LATE_TRADES_SQL = (
    "INSERT INTO aggregate_late (source, ts_ms, late_rows, corrected_rows, first_detected_ts_ms, last_detected_ts_ms) "
    "VALUES ('upbit_trades', ?, ?, 0, ?, ?) ON CONFLICT(source, ts_ms) DO UPDATE SET "
    "late_rows = aggregate_late.corrected_rows + excluded.late_rows, last_detected_ts_ms = excluded.last_detected_ts_ms "
    "WHERE aggregate_late.late_rows != aggregate_late.corrected_rows + excluded.late_rows")
LATE_ROWS_SQL = (
    "INSERT INTO aggregate_late (source, ts_ms, late_rows, corrected_rows, first_detected_ts_ms, last_detected_ts_ms) "
    "VALUES (?, ?, ?, 0, ?, ?) ON CONFLICT(source, ts_ms) DO UPDATE SET "
    "late_rows = excluded.late_rows, last_detected_ts_ms = excluded.last_detected_ts_ms "
    "WHERE aggregate_late.late_rows != excluded.late_rows")


# ------------------------------------------------------------------------------ configuration
@dataclass(frozen=True)
class AggregateConfig:
    params: FeatureParams
    grace_ms: int = 2000
    max_catchup_ms: int = 6 * 3600 * SECOND_MS
    chunk_s: int = 3600            # rebuild chunk; live catch-up writes at most catchup_step_s per step
    catchup_step_s: int = 600
    late_window_ms: int = 3600 * SECOND_MS
    late_scan_ms: int = 30 * SECOND_MS


def config_from_settings(settings: Settings) -> AggregateConfig:
    """All cqt-aggregate variables (docs/aggregate.md); raises ConfigError on a bad value."""
    grace_s = settings.get_float("CQT_AGGREGATE_GRACE_S", 2.0, minimum=0.0)
    return AggregateConfig(
        params=params_from_settings(settings),
        grace_ms=int(round(grace_s * 1000)),
        max_catchup_ms=settings.get_int("CQT_AGGREGATE_MAX_CATCHUP_S", 6 * 3600, minimum=1) * SECOND_MS,
        chunk_s=settings.get_int("CQT_AGGREGATE_CHUNK_S", 3600, minimum=1),
        catchup_step_s=settings.get_int("CQT_AGGREGATE_CATCHUP_STEP_S", 600, minimum=1),
        late_window_ms=settings.get_int("CQT_AGGREGATE_LATE_WINDOW_S", 3600, minimum=1) * SECOND_MS,
        late_scan_ms=int(settings.get_float("CQT_AGGREGATE_LATE_SCAN_S", 30.0, minimum=0.1) * SECOND_MS),
    )


def floor_s(ms: int) -> int:
    return (int(ms) // SECOND_MS) * SECOND_MS


def ceil_s(ms: int) -> int:
    return -((-int(ms)) // SECOND_MS) * SECOND_MS


def _write_result(conn: sqlite3.Connection, res: FeatureResult) -> int:
    m, p = res.market_rows(), res.prediction_rows()
    conn.executemany(MARKET_SQL, m)
    conn.executemany(PREDICTIONS_SQL, p)
    return len(m)


def _add_nulls(total: dict[str, dict[str, int]], res: FeatureResult) -> None:
    for table, cols in res.nulls.items():
        t = total.setdefault(table, {})
        for c, n in cols.items():
            if n:
                t[c] = t.get(c, 0) + n


# ------------------------------------------------------------------------------ rebuild
@dataclass
class RebuildStats:
    from_ms: int
    to_ms: int
    seconds: int = 0
    market_rows: int = 0
    prediction_rows: int = 0
    elapsed_s: float = 0.0
    chunks: int = 0
    raw_rows_read: int = 0
    late_seconds_corrected: int = 0
    late_rows_corrected: int = 0
    nulls: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"from_ms": self.from_ms, "to_ms": self.to_ms, "from": fmt_ms(self.from_ms), "to": fmt_ms(self.to_ms),
                "seconds": self.seconds, "market_rows": self.market_rows, "prediction_rows": self.prediction_rows,
                "elapsed_s": round(self.elapsed_s, 3), "chunks": self.chunks, "raw_rows_read": self.raw_rows_read,
                "late_seconds_corrected": self.late_seconds_corrected, "late_rows_corrected": self.late_rows_corrected,
                "nulls": self.nulls}


def rebuild(db_path: str | Path, from_ms: int, to_ms: int, settings: Settings | None = None, *,
            params: FeatureParams | None = None, chunk_s: int | None = None,
            progress: Callable[[RebuildStats], None] | None = None) -> RebuildStats:
    """Recompute market_1s and predictions for every bar in [from_ms, to_ms] (rounded
    inward to whole seconds) from the raw tables, replacing the rows there.

    Chunked: each chunk is read in bounded statements and written in one short
    transaction (DELETE the chunk's seconds, INSERT, mark late rows corrected), so
    services keep writing meanwhile. `bin/cqt synth` and `--rebuild` call this."""
    if params is None:
        params = params_from_settings(settings) if settings is not None else FeatureParams()
    if chunk_s is None:
        chunk_s = settings.get_int("CQT_AGGREGATE_CHUNK_S", 3600, minimum=1) if settings is not None else 3600
    lo, hi = ceil_s(from_ms), floor_s(to_ms)
    stats = RebuildStats(lo, hi)
    if hi < lo:
        return stats
    started = time.monotonic()
    conn = open_db(db_path)
    cache = SecondCache()
    try:
        a = lo
        while a <= hi:
            b = min(hi, a + (chunk_s - 1) * SECOND_MS)
            res = compute_range(conn, a, b, params, cache=cache)
            now = now_ms()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("DELETE FROM market_1s WHERE ts_ms BETWEEN ? AND ?", (a, b))
                conn.execute("DELETE FROM predictions WHERE ts_ms BETWEEN ? AND ?", (a, b))
                n = _write_result(conn, res)
                cur = conn.execute(
                    "SELECT COUNT(*), COALESCE(SUM(late_rows - corrected_rows), 0) FROM aggregate_late "
                    "WHERE ts_ms BETWEEN ? AND ? AND late_rows > corrected_rows", (a, b)).fetchone()
                conn.execute("UPDATE aggregate_late SET corrected_rows = late_rows, rebuilt_ts_ms = ? "
                             "WHERE ts_ms BETWEEN ? AND ? AND late_rows > corrected_rows", (now, a, b))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            stats.seconds += n
            stats.market_rows += n
            stats.prediction_rows += n
            stats.chunks += 1
            stats.raw_rows_read += res.rows_read
            stats.late_seconds_corrected += cur[0]
            stats.late_rows_corrected += cur[1]
            _add_nulls(stats.nulls, res)
            stats.elapsed_s = time.monotonic() - started
            if progress:
                progress(stats)
            a = b + SECOND_MS
    finally:
        conn.close()
    stats.elapsed_s = time.monotonic() - started
    return stats


# ------------------------------------------------------------------------------ live
class LiveAggregator:
    """The service's logic, apart from the process plumbing (testable under freezegun).

    `write(fn)` runs fn(conn) inside a write transaction (the service passes
    svc.writer.call, so rows commit in queue order through the batched writer)."""

    def __init__(self, db_path: str | Path, cfg: AggregateConfig, write: Callable[[Callable[[sqlite3.Connection], Any]], None],
                 *, clock: Callable[[], int] = now_ms):
        self.db_path = Path(db_path)
        self.cfg = cfg
        self.write = write
        self.clock = clock
        self.conn = connect(self.db_path, readonly=True)
        self.cache = SecondCache()
        self.last_written: int | None = None
        self.rows_written = 0
        self.skipped_s = 0
        self.catching_up = False
        self.nulls: dict[str, dict[str, int]] = {}
        self.late: dict[str, int] = {}
        self._step_ms: deque[float] = deque(maxlen=600)
        self._last_scan_ms: int | None = None
        self._written_at: deque[tuple[int, int, int]] = deque()   # (first bar, last bar, wall ms) per step
        self._reported: dict[tuple[str, int], int] = {}           # late rows already logged

    def close(self) -> None:
        self.conn.close()

    def target(self, now: int | None = None) -> int:
        """The newest bar that is complete after the grace delay."""
        now = self.clock() if now is None else now
        return floor_s(now - self.cfg.grace_ms)

    def start(self) -> None:
        """Resume after the last written second, or on a first start from the first
        Upbit trade within the catch-up bound (else from now)."""
        row = self.conn.execute("SELECT MAX(ts_ms) FROM market_1s").fetchone()
        target = self.target()
        if row and row[0] is not None:
            self.last_written = int(row[0])
            behind = (target - self.last_written) // SECOND_MS
            log.info("resuming after %s behind_s=%d", fmt_ms(self.last_written), max(0, behind))
            return
        lo = target - self.cfg.max_catchup_ms
        av = timerule.availability_sql("upbit_trades")
        first = self.conn.execute(f"SELECT MIN({av}) FROM upbit_trades WHERE code = ? AND {av} > ? AND {av} <= ?",
                                  (self.cfg.params.upbit_code, lo, target)).fetchone()[0]
        start = ceil_s(first) if first is not None else target
        self.last_written = start - SECOND_MS
        log.info("first start: writing from %s (%s)", fmt_ms(start),
                 "first Upbit trade" if first is not None else "no Upbit trades yet")

    def pending(self, now: int | None = None) -> tuple[int, int] | None:
        """The next range of bars to write now (bounded by the catch-up step), or None."""
        if self.last_written is None:
            self.start()
        target = self.target(now)
        assert self.last_written is not None
        if target <= self.last_written:
            self.catching_up = False
            return None
        if target - self.last_written > self.cfg.max_catchup_ms:
            skip_from = self.last_written + SECOND_MS
            new_last = target - self.cfg.max_catchup_ms
            skipped = (new_last - self.last_written) // SECOND_MS
            self.skipped_s += skipped
            log.warning("catch-up bounded to CQT_AGGREGATE_MAX_CATCHUP_S=%d: skipping %d s; to fill them run "
                        "bin/cqt-aggregate --rebuild --from %d --to %d", self.cfg.max_catchup_ms // SECOND_MS,
                        skipped, skip_from, new_last)
            self.last_written = new_last
        start = self.last_written + SECOND_MS
        end = min(target, start + (self.cfg.catchup_step_s - 1) * SECOND_MS)
        self.catching_up = end < target
        return start, end

    def step(self, now: int | None = None) -> int:
        """Compute and queue the rows that are due now; returns the number of seconds."""
        rng = self.pending(now)
        if rng is None:
            return 0
        a, b = rng
        t = time.monotonic()
        read_wall = self.clock()       # rows committed after this are not in these seconds
        res = compute_range(self.conn, a, b, self.cfg.params, cache=self.cache)
        market, preds = res.market_rows(), res.prediction_rows()

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(MARKET_SQL, market)
            conn.executemany(PREDICTIONS_SQL, preds)

        self.write(write)
        self._step_ms.append((time.monotonic() - t) * 1000)
        self._written_at.append((a, b, read_wall))
        while self._written_at and self._written_at[0][1] < b - self.cfg.late_window_ms:
            self._written_at.popleft()
        self.last_written = b
        self.rows_written += len(market)
        _add_nulls(self.nulls, res)
        if b - a >= 60 * SECOND_MS:
            log.info("caught up %s..%s seconds=%d", fmt_ms(a), fmt_ms(b), len(market))
        return len(market)

    # -- late data ---------------------------------------------------------------------------
    def scan_due(self, now: int | None = None) -> bool:
        now = self.clock() if now is None else now
        return self._last_scan_ms is None or now - self._last_scan_ms >= self.cfg.late_scan_ms

    def scan_late(self, now: int | None = None) -> dict[str, int]:
        """Count raw rows that arrived after their second was written (see module doc).
        Only seconds already committed in market_1s are compared."""
        now = self.clock() if now is None else now
        self._last_scan_ms = now
        if self.last_written is None:
            return self.late
        p = self.cfg.params
        hi = self.last_written
        lo = hi - self.cfg.late_window_ms
        self._reported = {k: v for k, v in self._reported.items() if k[1] > lo}
        trades = self.conn.execute(
            "SELECT ts_ms, n - trade_count FROM (SELECT m.ts_ms, m.trade_count, "
            "(SELECT COUNT(*) FROM upbit_trades u WHERE u.code = ? AND u.trade_ts_ms > m.ts_ms - 1000 "
            "AND u.trade_ts_ms <= m.ts_ms) AS n FROM market_1s m WHERE m.ts_ms > ? AND m.ts_ms <= ?) "
            "WHERE n > trade_count", (p.upbit_code, lo, hi)).fetchall()
        polled: list[tuple] = []
        grace = self.cfg.grace_ms
        for table, where, args in (
                ("coinglass_open_interest", "symbol = ? AND interval = ?", (p.cg_symbol, p.cg_interval)),
                ("coinglass_funding", "exchange = ? AND symbol = ? AND interval = ?",
                 (p.cg_exchange, p.cg_symbol_pair, p.cg_interval))):
            av = timerule.availability_sql(table, p.cg_delay_s)
            counts: dict[int, int] = {}
            for s, recv in self.conn.execute(
                    f"SELECT (({av} + 999) / 1000) * 1000, recv_ts_ms FROM {table} WHERE {where} "
                    f"AND avail_ts_ms > ? AND {av} <= ? AND recv_ts_ms > {av} + ?",
                    (*args, lo - p.cg_delay_s * SECOND_MS, hi, grace)).fetchall():
                wall = self._wall_written(s)
                if wall is not None and recv > wall:    # received after this process wrote its second
                    counts[s] = counts.get(s, 0) + 1
            polled += [(table, s, n) for s, n in sorted(counts.items())]
        if trades or polled:
            def write(conn: sqlite3.Connection) -> None:
                conn.executemany(LATE_TRADES_SQL, [(s, n, now, now) for s, n in trades])
                conn.executemany(LATE_ROWS_SQL, [(t, s, n, now, now) for t, s, n in polled])
            self.write(write)
            new = [(src, s, n) for src, s, n in [("upbit_trades", s, n) for s, n in trades] + polled
                   if self._reported.get((src, s), 0) < n]
            for src, s, n in new:
                self._reported[(src, s)] = n
            if new:
                log.warning("late data: %d new rows in %d already written seconds (%s), first %s; "
                            "bin/cqt-aggregate --rebuild --from %d --to %d corrects them",
                            sum(n for _, _, n in new), len(new), ",".join(sorted({x[0] for x in new})),
                            fmt_ms(min(x[1] for x in new)), min(x[1] for x in new), max(x[1] for x in new))
        totals = self.conn.execute(
            "SELECT source, SUM(late_rows), SUM(late_rows - corrected_rows) FROM aggregate_late GROUP BY source").fetchall()
        self.late = {}
        for src, tot, pend in totals:
            self.late[f"{src}_total"] = int(tot)
            self.late[f"{src}_pending"] = int(pend)
        return self.late

    def _wall_written(self, bar: int) -> int | None:
        """When this process wrote `bar` (wall ms), if it did within the late window."""
        for a, b, wall in self._written_at:
            if a <= bar <= b:
                return wall
        return None

    def detail(self) -> dict[str, Any]:
        now = self.clock()
        steps = sorted(self._step_ms)
        nulls = self.nulls.get("predictions", {})
        return {
            "last_bar_ts_ms": self.last_written,
            "last_bar": fmt_ms(self.last_written),
            "lag_ms": None if self.last_written is None else now - self.last_written,
            "rows_written": self.rows_written,
            "catching_up": self.catching_up,
            "skipped_s": self.skipped_s,
            "late": dict(self.late),
            "null_features": dict(sorted(nulls.items(), key=lambda kv: -kv[1])[:8]),
            "step_ms_p50": round(steps[len(steps) // 2], 2) if steps else None,
            "step_ms_max": round(steps[-1], 2) if steps else None,
        }

    def sleep_s(self, now: int | None = None) -> float:
        """Seconds until the next bar is due (next whole second + grace), at most 1 s."""
        if self.catching_up:
            return 0.0
        now = self.clock() if now is None else now
        nxt = (self.last_written or floor_s(now)) + SECOND_MS + self.cfg.grace_ms + 20
        return min(1.0, max(0.02, (nxt - now) / 1000.0))


def _serve(svc: Any, cfg: AggregateConfig, holder: dict[str, Any]) -> int:
    agg = LiveAggregator(svc.settings.db, cfg, svc.writer.call)
    holder["agg"] = agg
    try:
        agg.start()
        svc.ready(f"aggregating grace={cfg.grace_ms}ms")
        errors = 0
        while not svc.stopping.is_set():
            svc.alive()
            try:
                n = agg.step()
                if n:
                    svc.count("market_1s", rows=n)
                    svc.count("predictions", rows=n)
                if agg.scan_due():
                    agg.scan_late()
                errors = 0
            except sqlite3.OperationalError as exc:
                if is_fatal_io(exc):
                    raise
                errors += 1
                log.warning("database read failed (attempt %d), retrying in 1 s: %s", errors, exc)
                svc.set_state("error", f"read failed: {exc}")
                svc.sleep(1.0)
                continue
            lag = agg.target() - (agg.last_written or 0)
            svc.set_state("running", f"catching up {lag // 1000} s" if agg.catching_up
                          else f"writing {fmt_ms(agg.last_written)}")
            if agg.catching_up:
                continue
            svc.sleep(agg.sleep_s())
    finally:
        agg.close()
    return exitcodes.OK


# ------------------------------------------------------------------------------ CLI
def _time_opt(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_time_ms(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--rebuild", "do_rebuild", is_flag=True, help="Recompute [--from, --to] from the raw tables, replacing rows, and exit.")
@click.option("--from", "from_ms", metavar="T", callback=_time_opt,
              help="First bar time (the second's end), ISO-8601 (UTC if no zone) or epoch ms; inclusive.")
@click.option("--to", "to_ms", metavar="T", callback=_time_opt, help="Last bar time, inclusive.")
@click.option("--db", type=click.Path(dir_okay=False), help="Database file (default: CQT_DB).")
@click.option("--json", "as_json", is_flag=True, help="With --rebuild: print the summary as JSON.")
def main(do_rebuild: bool, from_ms: int | None, to_ms: int | None, db: str | None, as_json: bool) -> None:
    """Per-second market bars (market_1s) and causal feature vectors (predictions).

    Without --rebuild: the service. Every second it writes the bars that are complete
    after the grace delay (CQT_AGGREGATE_GRACE_S), catching up after a restart
    (at most CQT_AGGREGATE_MAX_CATCHUP_S). See docs/aggregate.md.
    """
    from .runtime import load_settings_or_exit, run_service, setup_logging

    if not do_rebuild and (from_ms is not None or to_ms is not None):
        raise click.UsageError("--from/--to only go with --rebuild")
    if do_rebuild and (from_ms is None or to_ms is None):
        raise click.UsageError("--rebuild needs --from and --to")
    if do_rebuild and from_ms > to_ms:  # type: ignore[operator]
        raise click.UsageError("--from is after --to")
    settings = load_settings_or_exit(db=db)
    try:
        cfg = config_from_settings(settings)
    except (ConfigError, ValueError) as exc:
        print(f"cqt-aggregate: {exc}", file=sys.stderr)
        sys.exit(exitcodes.CONFIG)
    if not do_rebuild:
        holder: dict[str, Any] = {}
        sys.exit(run_service(SERVICE, lambda svc: _serve(svc, cfg, holder), settings,
                             detail=lambda: holder["agg"].detail() if "agg" in holder else {}))

    if not Path(settings.db).exists():
        print(f"cqt-aggregate: database not found: {settings.db}", file=sys.stderr)
        sys.exit(exitcodes.NOEVAL)
    setup_logging(SERVICE, settings.log_level, settings.secrets)

    def progress(st: RebuildStats) -> None:
        log.info("rebuilt through %s seconds=%d elapsed_s=%.1f", fmt_ms(min(st.to_ms, st.from_ms + st.seconds * 1000 - 1000)),
                 st.seconds, st.elapsed_s)

    try:
        st = rebuild(settings.db, from_ms, to_ms, settings, params=cfg.params, chunk_s=cfg.chunk_s, progress=progress)  # type: ignore[arg-type]
    except DatabaseMissing as exc:
        print(f"cqt-aggregate: {exc}", file=sys.stderr)
        sys.exit(exitcodes.NOEVAL)
    except sqlite3.Error as exc:
        print(f"cqt-aggregate: rebuild failed: {exc}", file=sys.stderr)
        sys.exit(exitcodes.IOERR if is_fatal_io(exc) else exitcodes.FAIL)
    except Exception as exc:  # noqa: BLE001 - one clear line, never a traceback
        log.debug("rebuild failed", exc_info=True)
        print(f"cqt-aggregate: rebuild failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(exitcodes.FAIL)
    if as_json:
        print(json.dumps(st.as_dict(), sort_keys=True))
    else:
        nulls = st.nulls.get("predictions", {})
        worst = ", ".join(f"{c}={n}" for c, n in sorted(nulls.items(), key=lambda kv: -kv[1])[:6]) or "none"
        print(f"rebuilt {st.seconds} seconds {fmt_ms(st.from_ms)} .. {fmt_ms(st.to_ms)} in {st.elapsed_s:.1f} s: "
              f"market_1s {st.market_rows} rows, predictions {st.prediction_rows} rows; "
              f"NULL features (look-back before data or stale source): {worst}; "
              f"late seconds corrected: {st.late_seconds_corrected} ({st.late_rows_corrected} rows)")
    sys.exit(exitcodes.OK)
