"""The live service of cqt-aggregate: writes `market_1s` and `predictions`, one row per
second and asset.

One process writes every asset of CQT_SYMBOLS (one AssetAggregator each, cqt.aggregate.asset).
Every second it writes, for each asset, the seconds that are complete once the grace delay
(CQT_AGGREGATE_GRACE_S, default 2 s) has passed, i.e. every bar t <= now - grace. After a
restart each asset continues from its own last written second; a gap longer than
CQT_AGGREGATE_MAX_CATCHUP_S (default 6 h) is skipped with a warning that names the
`--rebuild` command for the skipped range. On an asset's first start (no market_1s rows of
it) that asset waits, at most CQT_AGGREGATE_START_WAIT_S, for the collectors' start-up
backfill of its markets — the other assets keep writing meanwhile. Each second costs one
bounded read of the new raw rows per asset: per-second summaries are cached
(cqt.rawread.SecondCache, one per asset) and checked against the database before every
step (one indexed COUNT(*) per stream source), so a live row is always what the database
held. Rows that land late are the late ledger's (cqt.aggregate.late), one per asset.
"""
from __future__ import annotations

import logging
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable

from .. import exitcodes
from ..db import connect, is_fatal_io
from ..monitor.jobmetrics import AGGREGATE_FILE, aggregate_metrics
from ..monitor.textfile import TextfileWriter
from ..timeutil import fmt_ms, now_ms
from .asset import AssetAggregator
from .bars import MARKET_SQL, PREDICTIONS_SQL, SECOND_MS, floor_s
from .config import AggregateConfig

log = logging.getLogger("cqt.aggregate")

#: how often a waiting asset's collectors' data is looked for again
WAIT_CHECK_MS = 500
#: how often cqt_aggregate.prom is rewritten (CQT_TEXTFILE_DIR set): in-memory state and two stat() calls
TEXTFILE_EVERY_S = 15.0
#: at most this many assets listed in the heartbeat detail (the ones that need attention first):
#: a heartbeat row every CQT_HEARTBEAT_S must stay small however many assets are configured
DETAIL_ASSETS_MAX = 20


class LiveAggregator:
    """The service's logic, apart from the process plumbing (testable under freezegun).

    `write(fn)` runs fn(conn) inside a write transaction (the service passes
    svc.writer.call, so rows commit in queue order through the batched writer).

    `assets[symbol]` is each asset's AssetAggregator. `begin()` starts them (a first start
    may wait: `state` "waiting", looked at again every 0.5 s in `step()`, never longer than
    CQT_AGGREGATE_START_WAIT_S); `step()` computes what is due for every running asset —
    each asset in its own read snapshot — and queues all their rows in one write."""

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
        self.assets: dict[str, AssetAggregator] = {
            p.asset: AssetAggregator(self.conn, p, cfg, write, clock=clock, started_ms=self.started_ms, sync=sync)
            for p in cfg.assets}
        self.last_step: dict[str, int] = {}     # rows queued by the last step, per asset
        self._began = False
        self._wait_checked_ms: int | None = None
        self._step_ms: deque[float] = deque(maxlen=600)

    # -- what the service shows ------------------------------------------------------------------
    @property
    def catching_up(self) -> bool:
        return any(a.catching_up for a in self.assets.values())

    @property
    def skipped_s(self) -> int:
        return sum(a.skipped_s for a in self.assets.values())

    @property
    def rows_written(self) -> int:
        return sum(a.rows_written for a in self.assets.values())

    @property
    def late(self) -> dict[str, int]:
        """aggregate_late totals (all processes) summed over the assets, by source:
        `<source>_total`, `<source>_pending` (per asset: `assets[symbol].late`)."""
        out: dict[str, int] = {}
        for a in self.assets.values():
            for k, v in a.late.items():
                out[k] = out.get(k, 0) + v
        return out

    @property
    def waiting(self) -> list[str]:
        return [s for s, a in self.assets.items() if a.state == "waiting"]

    def close(self) -> None:
        for a in self.assets.values():
            a.late_ledger.close()
        self.conn.close()

    def target(self, now: int | None = None) -> int:
        """The newest bar that is complete after the grace delay."""
        now = self.clock() if now is None else now
        return floor_s(now - self.cfg.grace_ms)

    # -- start ---------------------------------------------------------------------------------
    def begin(self) -> None:
        """Start every asset: resume the ones with rows; on a first start wait (bounded) for
        the collectors' data of that asset when CQT_AGGREGATE_START_WAIT_S > 0."""
        self._began = True
        now = self.clock()
        for a in self.assets.values():
            reasons = a.start_blockers() if self.cfg.start_wait_ms > 0 else []
            if not reasons:
                a.start(self.target(now))
                continue
            a.state, a.waiting_for, a.wait_until = "waiting", reasons, now + self.cfg.start_wait_ms
            log.info("%s: first start: waiting up to %.0f s for %s", a.symbol, self.cfg.start_wait_ms / 1000,
                     "; ".join(reasons))
        self._wait_checked_ms = now

    def check_waiting(self, now: int | None = None) -> None:
        """Start each waiting asset whose collectors' data is there, or whose wait is over."""
        now = self.clock() if now is None else now
        if not self.waiting or (self._wait_checked_ms is not None and now - self._wait_checked_ms < WAIT_CHECK_MS):
            return
        self._wait_checked_ms = now
        for a in self.assets.values():
            if a.state != "waiting":
                continue
            assert a.wait_until is not None
            waited_s = (now - (a.wait_until - self.cfg.start_wait_ms)) / 1000
            a.waiting_for = a.start_blockers()
            if not a.waiting_for:
                log.info("%s: first start: the collectors' data is there after %.1f s", a.symbol, waited_s)
            elif now >= a.wait_until:
                log.warning("%s: first start: still no %s after %.0f s (CQT_AGGREGATE_START_WAIT_S); starting: rows "
                            "that arrive for seconds already written are counted late", a.symbol,
                            "; ".join(a.waiting_for), self.cfg.start_wait_ms / 1000)
            else:
                continue
            a.waiting_for, a.wait_until = [], None
            a.start(self.target(now))

    # -- steps ---------------------------------------------------------------------------------
    def step(self, now: int | None = None) -> int:
        """Compute and queue the rows that are due now for every running asset; returns the
        number of market_1s rows queued (one per asset and second; per asset: `last_step`)."""
        if not self._began:
            self.begin()
        self.check_waiting(now)
        target = self.target(now)
        t = time.monotonic()
        done = []
        for a in self.assets.values():
            if a.state != "running":
                continue
            rng = a.pending(target)
            if rng is None:
                continue
            read_wall = self.clock()       # rows committed after this are not in these seconds
            done.append((a, *rng, a.compute(*rng), read_wall))
        self.last_step = {a.symbol: len(res) for a, _, _, res, _ in done}
        if not done:
            return 0
        market = [r for *_, res, _ in done for r in res.market_rows()]
        preds = [r for *_, res, _ in done for r in res.prediction_rows()]

        def write(conn: sqlite3.Connection) -> None:
            conn.executemany(MARKET_SQL, market)
            conn.executemany(PREDICTIONS_SQL, preds)

        self.write(write)
        self._step_ms.append((time.monotonic() - t) * 1000)
        for a, lo, hi, res, read_wall in done:
            a.wrote(lo, hi, res, read_wall)
        return len(market)

    # -- late data -----------------------------------------------------------------------------
    def scan_due(self, now: int | None = None) -> bool:
        return any(a.late_ledger.scan_due(now) for a in self.assets.values() if a.state == "running")

    def scan_late(self, now: int | None = None) -> dict[str, int]:
        """Every running asset's late-ledger scan of the late window
        (cqt.aggregate.late.LateLedger.scan); returns the totals summed over the assets."""
        for a in self.assets.values():
            if a.state == "running":
                a.late_ledger.scan(now)
        return self.late

    def detail(self) -> dict[str, Any]:
        """The heartbeat detail: the whole service (the asset furthest behind for the last
        bar and lag), then each asset under "symbols"."""
        now = self.clock()
        steps = sorted(self._step_ms)
        running = [a for a in self.assets.values() if a.state == "running" and a.last_written is not None]
        oldest = min((a.last_written for a in running if a.last_written is not None), default=None)
        nulls: dict[str, int] = {}
        late_seen: dict[str, int] = {}
        for a in self.assets.values():
            for c, n in a.nulls.get("predictions", {}).items():
                nulls[c] = nulls.get(c, 0) + n
            for src, n in a.late_ledger.late_seen.items():
                late_seen[src] = late_seen.get(src, 0) + n
        return {
            "last_bar_ts_ms": oldest,
            "last_bar": fmt_ms(oldest),
            "lag_ms": None if oldest is None else now - oldest,
            "rows_written": self.rows_written,
            "catching_up": self.catching_up,
            "skipped_s": self.skipped_s,
            "waiting": self.waiting,
            "late": self.late,
            "late_seen": late_seen,
            "cache_reloads": sum(a.cache.reloads for a in self.assets.values()),
            "null_features": dict(sorted(nulls.items(), key=lambda kv: -kv[1])[:8]),
            "step_ms_p50": round(steps[len(steps) // 2], 2) if steps else None,
            "step_ms_max": round(steps[-1], 2) if steps else None,
            **self._asset_details(now),
        }

    def _asset_details(self, now: int) -> dict[str, Any]:
        """`symbols`: every asset's detail, or with more than DETAIL_ASSETS_MAX assets the ones
        that need attention (waiting, catching up, furthest behind, late rows pending) first,
        cut to that many, and `symbols_not_listed`: how many were left out."""
        details = {s: a.detail(now) for s, a in self.assets.items()}
        if len(details) <= DETAIL_ASSETS_MAX:
            return {"symbols": details}

        def attention(item: tuple[str, dict[str, Any]]) -> tuple:
            d = item[1]
            return (d["state"] != "waiting", not d["catching_up"], -(d["lag_ms"] or 0), -d["late_pending"])

        listed = dict(sorted(details.items(), key=attention)[:DETAIL_ASSETS_MAX])
        return {"symbols": listed, "symbols_not_listed": len(details) - len(listed)}

    def status(self) -> tuple[str, str]:
        """(state, status text) for the service manager."""
        waiting = self.waiting
        running = [a for a in self.assets.values() if a.state == "running"]
        if not running:
            return "waiting", "waiting for " + "; ".join(
                f"{a.symbol}: {', '.join(a.waiting_for)}" for a in self.assets.values() if a.state == "waiting")
        oldest = min((a.last_written or 0) for a in running)
        text = (f"catching up {(self.target() - oldest) // 1000} s" if self.catching_up
                else f"writing {fmt_ms(oldest)}")
        if waiting:
            text += f"; first start of {', '.join(waiting)} waiting for the collectors"
        return "running", text

    def sleep_s(self, now: int | None = None) -> float:
        """Seconds until the next bar is due (next whole second + grace), at most 1 s
        (0.5 s while an asset waits for its first data)."""
        if self.catching_up:
            return 0.0
        now = self.clock() if now is None else now
        lasts = [a.last_written for a in self.assets.values() if a.state == "running" and a.last_written is not None]
        nxt = (min(lasts) if lasts else floor_s(now)) + SECOND_MS + self.cfg.grace_ms + 20
        limit = WAIT_CHECK_MS / 1000 if self.waiting else 1.0
        return min(limit, max(0.02, (nxt - now) / 1000.0))


def write_textfile(agg: LiveAggregator, writer: TextfileWriter) -> bool:
    """cqt_aggregate.prom from the aggregator's own state (no database read); never raises."""
    now = agg.clock()
    return writer.write(lambda: aggregate_metrics({s: a.detail(now) for s, a in agg.assets.items()},
                                                  agg.db_path, agg.rows_written))


def serve(svc: Any, cfg: AggregateConfig, holder: dict[str, Any]) -> int:
    agg = LiveAggregator(svc.settings.db, cfg, svc.writer.call, started_ms=svc.started_ms, sync=svc.writer.flush)
    holder["agg"] = agg
    textfile = TextfileWriter(svc.settings, AGGREGATE_FILE, "cqt-aggregate")
    textfile_due = 0.0
    try:
        svc.ready(f"aggregating {','.join(cfg.symbols)} grace={cfg.grace_ms}ms")
        agg.begin()
        errors = 0
        while not svc.stopping.is_set():
            svc.alive()
            try:
                if agg.step():
                    for symbol, n in agg.last_step.items():   # ingest_stats.symbol: the asset of the rows
                        svc.count("market_1s", rows=n, symbol=symbol)
                        svc.count("predictions", rows=n, symbol=symbol)
                if agg.scan_due():
                    agg.scan_late()
                errors = 0
                if textfile.enabled and time.monotonic() >= textfile_due:
                    textfile_due = time.monotonic() + TEXTFILE_EVERY_S
                    write_textfile(agg, textfile)
            except sqlite3.OperationalError as exc:
                if is_fatal_io(exc):
                    raise
                errors += 1
                log.warning("database read failed (attempt %d), retrying in 1 s: %s", errors, exc)
                svc.set_state("error", f"read failed: {exc}")
                svc.sleep(1.0)
                continue
            svc.set_state(*agg.status())
            if agg.catching_up:
                continue
            svc.sleep(agg.sleep_s())
    finally:
        agg.close()
    return exitcodes.OK
