"""The live service of cqt-aggregate: writes `market_1s` and `predictions`, one row per second.

Every second it writes the seconds that are complete once the grace delay
(CQT_AGGREGATE_GRACE_S, default 2 s) has passed, i.e. every bar t <= now - grace. After
a restart it continues from the last written second; a gap longer than
CQT_AGGREGATE_MAX_CATCHUP_S (default 6 h) is skipped with a warning that names the
`--rebuild` command for the skipped range. On a first start (empty market_1s) it waits,
at most CQT_AGGREGATE_START_WAIT_S, for the collectors' start-up backfill. Each second
costs one bounded read of the new raw rows: per-second summaries are cached
(cqt.rawread.SecondCache) and checked against the database before every step (one
indexed COUNT(*) per stream source), so a live row is always what the database held.
Rows that land late are the late ledger's (cqt.aggregate.late).
"""
from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from .. import exitcodes, timerule
from ..db import connect, is_fatal_io
from ..features import compute_range
from ..rawread import SecondCache
from ..timeutil import fmt_ms, now_ms
from .bars import MARKET_SQL, PREDICTIONS_SQL, SECOND_MS, add_nulls, ceil_s, floor_s
from .config import AggregateConfig
from .late import LateLedger, WrittenSpan

log = logging.getLogger("cqt.aggregate")


class LiveAggregator:
    """The service's logic, apart from the process plumbing (testable under freezegun).

    `write(fn)` runs fn(conn) inside a write transaction (the service passes
    svc.writer.call, so rows commit in queue order through the batched writer).

    Each step reads one consistent snapshot of the database (a short read transaction):
    the per-second cache (cqt.features.SecondCache) is first checked against it — one
    indexed COUNT(*) per stream source over the cached span; a source that changed is
    reloaded — so a live row is always what the data in the database at that moment
    gives (what a rebuild would give if nothing more arrived). Every count read (cache
    loads, reloads, the periodic scan of the late window) goes through a CountLedger
    per source; a second whose count grew after it was written has late rows: counted
    in `aggregate_late` and logged with the `--rebuild` command that corrects them."""

    def __init__(self, db_path: str | Path, cfg: AggregateConfig,
                 write: Callable[[Callable[[sqlite3.Connection], Any]], None],
                 *, clock: Callable[[], int] = now_ms, started_ms: int | None = None,
                 sync: Callable[[float], Any] | None = None):
        self.db_path = Path(db_path)
        self.cfg = cfg
        self.write = write
        self.clock = clock
        self.started_ms = clock() if started_ms is None else started_ms
        self.conn = connect(self.db_path, readonly=True)
        self.written = WrittenSpan()
        self.late_ledger = LateLedger(self.conn, cfg, write, self.written, clock=clock, started_ms=self.started_ms,
                                      sync=sync)
        self.cache = SecondCache(on_load=self.late_ledger.on_load)
        self.rows_written = 0
        self.skipped_s = 0
        self.catching_up = False
        self.nulls: dict[str, dict[str, int]] = {}
        self._step_ms: deque[float] = deque(maxlen=600)

    @property
    def last_written(self) -> int | None:
        """The last second written (or, before the first step, the one to continue after)."""
        return self.written.last

    @last_written.setter
    def last_written(self, value: int | None) -> None:
        self.written.last = value

    @property
    def written_from(self) -> int | None:
        """First second of the stretch this process wrote (or restored)."""
        return self.written.first

    @written_from.setter
    def written_from(self, value: int | None) -> None:
        self.written.first = value

    @property
    def late(self) -> dict[str, int]:
        """aggregate_late totals (all processes), by source: `<source>_total`, `<source>_pending`."""
        return self.late_ledger.late

    def close(self) -> None:
        self.late_ledger.close()
        self.conn.close()

    def target(self, now: int | None = None) -> int:
        """The newest bar that is complete after the grace delay."""
        now = self.clock() if now is None else now
        return floor_s(now - self.cfg.grace_ms)

    # -- start ---------------------------------------------------------------------------------
    def start_blockers(self) -> list[str]:
        """On a first start (empty market_1s): what the collectors have not delivered yet —
        an initial backfill still running (`gaps` rows with reason 'initial', still open),
        no Upbit trade, no Binance aggTrade. Empty = go (and always once market_1s has rows)."""
        if self.conn.execute("SELECT 1 FROM market_1s LIMIT 1").fetchone():
            return []
        p = self.cfg.params
        out = []
        try:
            streams = sorted({r[0] for r in self.conn.execute(
                "SELECT stream FROM gaps WHERE status = 'open' AND reason = 'initial'")})
        except sqlite3.OperationalError:        # a schema without gaps.reason (no collectors' migration)
            streams = []
        if streams:
            out.append("the initial backfill of " + ", ".join(streams))
        if not self.conn.execute("SELECT 1 FROM upbit_trades WHERE code = ? LIMIT 1", (p.upbit_code,)).fetchone():
            out.append(f"Upbit {p.upbit_code} trades")
        if not self.conn.execute("SELECT 1 FROM binance_agg_trades WHERE symbol = ? LIMIT 1",
                                 (p.binance_symbol,)).fetchone():
            out.append(f"Binance {p.binance_symbol} aggTrades")
        return out

    def start(self) -> None:
        """Resume after the last written second, or on a first start from the first
        Upbit trade within the catch-up bound (else from now)."""
        row = self.conn.execute("SELECT MAX(ts_ms) FROM market_1s").fetchone()
        target = self.target()
        if row and row[0] is not None:
            self.last_written = int(row[0])
            behind = (target - self.last_written) // SECOND_MS
            log.info("resuming after %s behind_s=%d", fmt_ms(self.last_written), max(0, behind))
            self.late_ledger.restore()
            self.late_ledger.while_stopped()
            return
        lo = target - self.cfg.max_catchup_ms
        av = timerule.availability_sql("upbit_trades")
        first = self.conn.execute(f"SELECT MIN({av}) FROM upbit_trades WHERE code = ? AND {av} > ? AND {av} <= ?",
                                  (self.cfg.params.upbit_code, lo, target)).fetchone()[0]
        start = ceil_s(first) if first is not None else target
        self.last_written = start - SECOND_MS
        log.info("first start: writing from %s (%s)", fmt_ms(start),
                 "first Upbit trade" if first is not None else "no Upbit trades yet")

    # -- steps ---------------------------------------------------------------------------------
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
            self.written_from = None
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
        self.conn.execute("BEGIN")     # one snapshot: the cache check and the new rows agree
        try:
            for source in self.cache.validate(self.conn, self.cfg.params):
                # rows landed in the cached span (a backfill?): count the whole late window now,
                # so one log line names the whole range; the next get() reloads the span
                self.late_ledger.scan_source(source, self.last_written - self.cfg.late_window_ms, self.last_written)
            res = compute_range(self.conn, a, b, self.cfg.params, cache=self.cache)
        finally:
            self.conn.execute("COMMIT")
        market, preds = res.market_rows(), res.prediction_rows()

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(MARKET_SQL, market)
            conn.executemany(PREDICTIONS_SQL, preds)

        self.write(write)
        self._step_ms.append((time.monotonic() - t) * 1000)
        self.late_ledger.wrote(a, b, read_wall)
        if self.written_from is None:
            self.written_from = a
        self.last_written = b
        self.rows_written += len(market)
        add_nulls(self.nulls, res)
        if b - a >= 60 * SECOND_MS:
            log.info("caught up %s..%s seconds=%d", fmt_ms(a), fmt_ms(b), len(market))
        self.late_ledger.flush()
        return len(market)

    # -- late data -----------------------------------------------------------------------------
    # -- late data -----------------------------------------------------------------------------
    def scan_due(self, now: int | None = None) -> bool:
        return self.late_ledger.scan_due(now)

    def scan_late(self, now: int | None = None) -> dict[str, int]:
        """The late ledger's periodic scan of the late window (cqt.aggregate.late.LateLedger.scan)."""
        return self.late_ledger.scan(now)

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
            "late_seen": dict(self.late_ledger.late_seen),
            "cache_reloads": self.cache.reloads,
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


def wait_for_collectors(svc: Any, agg: LiveAggregator, cfg: AggregateConfig) -> None:
    """First start only: wait (at most CQT_AGGREGATE_START_WAIT_S) until the collectors'
    data is there, so the catch-up and the first live rows include their start-up backfill
    instead of counting it late. Never blocks a restart, never waits without bound."""
    if cfg.start_wait_ms <= 0:
        return
    reasons = agg.start_blockers()
    if not reasons:
        return
    t0 = time.monotonic()
    limit = cfg.start_wait_ms / 1000
    log.info("first start: waiting up to %.0f s for %s", limit, "; ".join(reasons))
    while reasons and not svc.stopping.is_set() and time.monotonic() - t0 < limit:
        svc.alive()
        svc.set_state("waiting", "waiting for " + "; ".join(reasons))
        svc.sleep(0.5)
        reasons = agg.start_blockers()
    if reasons and not svc.stopping.is_set():
        log.warning("first start: still no %s after %.0f s (CQT_AGGREGATE_START_WAIT_S); starting: rows that "
                    "arrive for seconds already written are counted late", "; ".join(reasons), limit)
    elif not reasons:
        log.info("first start: the collectors' data is there after %.1f s", time.monotonic() - t0)


def serve(svc: Any, cfg: AggregateConfig, holder: dict[str, Any]) -> int:
    agg = LiveAggregator(svc.settings.db, cfg, svc.writer.call, started_ms=svc.started_ms, sync=svc.writer.flush)
    holder["agg"] = agg
    try:
        svc.ready(f"aggregating grace={cfg.grace_ms}ms")
        wait_for_collectors(svc, agg, cfg)
        if svc.stopping.is_set():
            return exitcodes.OK
        agg.start()
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


