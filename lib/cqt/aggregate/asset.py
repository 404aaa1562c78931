"""One asset of the live service: where its rows continue, what is due, computing them.

The service (cqt.aggregate.service.LiveAggregator) holds one AssetAggregator per asset of
CQT_SYMBOLS, all on its one read-only connection. Each asset has its own written stretch
(its rows in market_1s: `symbol` = the asset), its own SecondCache (the per-second
summaries of its raw rows and KRW-USDT) and its own late ledger; nothing of one asset
waits for another.
"""
from __future__ import annotations

import logging
import sqlite3
from typing import Any, Callable

from .. import timerule
from ..featureparams import FeatureParams
from ..features import FeatureResult, compute_range
from ..rawread import SecondCache
from ..timeutil import fmt_ms
from .bars import SECOND_MS, add_nulls, ceil_s
from .config import AggregateConfig
from .late import LateLedger, Write, WrittenSpan

log = logging.getLogger("cqt.aggregate")


class AssetAggregator:
    """The rows of one asset (`params.asset`): resume or first start, the next range due,
    its computation in one read snapshot. `state`: "new" (not started), "waiting" (first
    start: the collectors' data of this asset is not there yet), "running"."""

    def __init__(self, conn: sqlite3.Connection, params: FeatureParams, cfg: AggregateConfig, write: Write, *,
                 clock: Callable[[], int], started_ms: int, sync: Callable[[float], Any] | None = None):
        self.conn = conn
        self.params = params
        self.symbol = params.asset
        self.cfg = cfg
        self.written = WrittenSpan()
        self.late_ledger = LateLedger(conn, params, cfg, write, self.written, clock=clock, started_ms=started_ms,
                                      sync=sync)
        self.cache = SecondCache(on_load=self.late_ledger.on_load)
        self.state = "new"
        self.wait_until: int | None = None     # while waiting: when the first start goes ahead anyway
        self.waiting_for: list[str] = []
        self.rows_written = 0
        self.skipped_s = 0
        self.catching_up = False
        self.nulls: dict[str, dict[str, int]] = {}

    @property
    def last_written(self) -> int | None:
        """The last second written (or, before the first step, the one to continue after)."""
        return self.written.last

    @property
    def late(self) -> dict[str, int]:
        """aggregate_late totals of this asset (all processes), by source."""
        return self.late_ledger.late

    def has_rows(self) -> bool:
        return self.conn.execute("SELECT 1 FROM market_1s WHERE symbol = ? LIMIT 1", (self.symbol,)).fetchone() \
            is not None

    # -- start ---------------------------------------------------------------------------------
    def start_blockers(self) -> list[str]:
        """On a first start of this asset (no market_1s rows of it): what the collectors have
        not delivered yet — an initial backfill of one of its streams (or KRW-USDT's) still
        running (`gaps` rows with reason 'initial', still open), no Upbit trade of its market,
        no Binance aggTrade of its symbol. Empty = go (and always once it has rows)."""
        if self.has_rows():
            return []
        p = self.params
        out = []
        venue_symbols = (p.binance_symbol, p.upbit_code, p.usdt_code)
        try:
            streams = sorted({r[0] for r in self.conn.execute(
                "SELECT stream FROM gaps WHERE status = 'open' AND reason = 'initial' "
                "AND UPPER(substr(stream, 1, instr(stream, '@') - 1)) IN (?, ?, ?)", venue_symbols)})
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

    def start(self, target: int) -> None:
        """Resume after the asset's last written second, or on a first start from its first
        Upbit trade within the catch-up bound (else from `target`: rows with NULL features
        until its data arrives, like any missing source)."""
        self.state = "running"
        row = self.conn.execute("SELECT MAX(ts_ms) FROM market_1s WHERE symbol = ?", (self.symbol,)).fetchone()
        if row and row[0] is not None:
            self.written.last = int(row[0])
            behind = (target - self.written.last) // SECOND_MS
            log.info("%s: resuming after %s behind_s=%d", self.symbol, fmt_ms(self.written.last), max(0, behind))
            self.late_ledger.restore()
            self.late_ledger.while_stopped()
            return
        lo = target - self.cfg.max_catchup_ms
        av = timerule.availability_sql("upbit_trades")
        first = self.conn.execute(f"SELECT MIN({av}) FROM upbit_trades WHERE code = ? AND {av} > ? AND {av} <= ?",
                                  (self.params.upbit_code, lo, target)).fetchone()[0]
        start = ceil_s(first) if first is not None else target
        self.written.last = start - SECOND_MS
        log.info("%s: first start: writing from %s (%s)", self.symbol, fmt_ms(start),
                 f"first Upbit {self.params.upbit_code} trade" if first is not None
                 else f"no Upbit {self.params.upbit_code} trades yet")

    # -- steps ---------------------------------------------------------------------------------
    def pending(self, target: int) -> tuple[int, int] | None:
        """The next range of bars to write for `target` (bounded by the catch-up step), or None."""
        last = self.written.last
        assert last is not None, "start() first"
        if target <= last:
            self.catching_up = False
            return None
        if target - last > self.cfg.max_catchup_ms:
            skip_from = last + SECOND_MS
            new_last = target - self.cfg.max_catchup_ms
            skipped = (new_last - last) // SECOND_MS
            self.skipped_s += skipped
            log.warning("%s: catch-up bounded to CQT_AGGREGATE_MAX_CATCHUP_S=%d: skipping %d s; to fill them run "
                        "bin/cqt-aggregate --rebuild --from %d --to %d --symbol %s", self.symbol,
                        self.cfg.max_catchup_ms // SECOND_MS, skipped, skip_from, new_last, self.symbol)
            self.written.last = last = new_last
            self.written.first = None
        start = last + SECOND_MS
        end = min(target, start + (self.cfg.catchup_step_s - 1) * SECOND_MS)
        self.catching_up = end < target
        return start, end

    def compute(self, a: int, b: int) -> FeatureResult:
        """The rows of bars a..b from one snapshot of the database (a short read transaction):
        the cache is first checked against it, so a row is what the database holds now."""
        self.conn.execute("BEGIN")
        try:
            for source in self.cache.validate(self.conn, self.params):
                # rows landed in the cached span (a backfill?): count the whole late window now,
                # so one log line names the whole range; the next get() reloads the span
                assert self.written.last is not None
                self.late_ledger.scan_source(source, self.written.last - self.cfg.late_window_ms, self.written.last)
            return compute_range(self.conn, a, b, self.params, cache=self.cache)
        finally:
            self.conn.execute("COMMIT")

    def wrote(self, a: int, b: int, res: FeatureResult, read_wall: int) -> None:
        """Bars a..b (computed from what the database held at wall time `read_wall`) are queued."""
        self.late_ledger.wrote(a, b, read_wall)
        if self.written.first is None:
            self.written.first = a
        self.written.last = b
        self.rows_written += len(res)
        add_nulls(self.nulls, res)
        if b - a >= 60 * SECOND_MS:
            log.info("%s: caught up %s..%s seconds=%d", self.symbol, fmt_ms(a), fmt_ms(b), len(res))
        self.late_ledger.flush()

    def detail(self, now: int) -> dict[str, Any]:
        """This asset's part of the heartbeat detail (small: there may be many assets)."""
        last = self.written.last
        out: dict[str, Any] = {"state": self.state, "last_bar_ts_ms": last,
                               "lag_ms": None if last is None or self.state != "running" else now - last,
                               "rows_written": self.rows_written, "catching_up": self.catching_up,
                               "skipped_s": self.skipped_s,
                               "late_pending": sum(v for k, v in self.late.items() if k.endswith("_pending")),
                               "late_seen": sum(self.late_ledger.late_seen.values()),
                               "cache_reloads": self.cache.reloads}
        if self.state == "waiting":
            out["waiting_for"] = self.waiting_for
        return out
