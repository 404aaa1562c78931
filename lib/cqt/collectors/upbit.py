"""`bin/cqt-collect-upbit`: Upbit quotation WebSocket -> SQLite (trades, order book, ticker).

One connection to CQT_UPBIT_WS_URL without an `Origin` header (websocket-client sends
one unless told not to, and Upbit then allows one request per 10 s), subscribing to
trade, orderbook and ticker for CQT_UPBIT_CODES in the DEFAULT format. A text `PING`
goes out when nothing arrived for CQT_UPBIT_PING_S (Upbit closes idle connections
after ~120 s).

`sequential_id` is unique but not ordered, so trades are not gap-checked by id: after
every (re)connect or restart, the window between the last stored trade and the first
new one is backfilled from `/v1/trades/ticks` (newest first, `cursor`, `days_ago`)
and deduplicated by `(code, sequential_id)`. While connected, every
CQT_UPBIT_RECONCILE_S the newest REST pages are compared with the stored trades, so
trades the stream skipped are inserted and recorded (`UpbitReconcile`). Order book
windows longer than CQT_GAP_MIN_MS are recorded as `unfillable` gaps.
"""
from __future__ import annotations

import logging
import sys
import uuid
from dataclasses import dataclass

import click

from . import (capture_target_or_exit, config_or_exit, open_capture_and_rest, read_positions, report_in_heartbeat,
               run_ws_collector)

log = logging.getLogger("cqt.collect.upbit")

SERVICE = "cqt-collect-upbit"
SOURCE = "upbit"


@dataclass(frozen=True)
class UpbitConfig:
    codes: tuple[str, ...]
    ws_url: str
    rest_base: str
    loop: object
    stall_trade_s: float
    stall_orderbook_s: float
    gap_min_ms: int
    ping_s: float
    backfill_s: int
    rest_timeout_s: float
    reconcile_s: float = 180.0
    reconcile_settle_s: float = 10.0

    @classmethod
    def from_settings(cls, settings) -> "UpbitConfig":
        from ..stream import LoopSettings
        return cls(
            codes=tuple(settings.upbit_codes),
            ws_url=settings.upbit_ws_url,
            rest_base=settings.upbit_rest_url,
            loop=LoopSettings.from_settings(settings),
            stall_trade_s=settings.get_float("CQT_STALL_UPBIT_TRADE_S", 300.0, 0.0),
            stall_orderbook_s=settings.get_float("CQT_STALL_UPBIT_ORDERBOOK_S", 30.0, 0.0),
            gap_min_ms=settings.get_int("CQT_GAP_MIN_MS", 3000, 0),
            ping_s=settings.get_float("CQT_UPBIT_PING_S", 30.0, 0.1),
            backfill_s=settings.backfill_s,
            rest_timeout_s=settings.get_float("CQT_REST_TIMEOUT_S", 10.0, 0.1),
            reconcile_s=settings.get_float("CQT_UPBIT_RECONCILE_S", 180.0, minimum=1.0, maximum=86400.0),
            reconcile_settle_s=settings.get_float("CQT_UPBIT_RECONCILE_SETTLE_S", 10.0, minimum=0.0,
                                                  maximum=600.0),
        )


def subscription(codes: tuple[str, ...], ticket: str | None = None) -> str:
    """The Upbit request array: ticket, one type object per stream, format."""
    import orjson
    codes_l = list(codes)
    return orjson.dumps([
        {"ticket": ticket or f"cqt-{uuid.uuid4()}"},
        {"type": "trade", "codes": codes_l},
        {"type": "orderbook", "codes": codes_l},
        {"type": "ticker", "codes": codes_l},
        {"format": "DEFAULT"},
    ]).decode()


def trade_position(p):
    """Resume position of an Upbit frame: trades by trade time (sequential_id kept for reference)."""
    if p.kind == "trade" and p.rows:
        row = max(p.rows, key=lambda r: r[2])
        return row[1], row[2]
    return None, p.event_ts_ms


def endpoint(cfg: UpbitConfig):
    from ..sources import parse_upbit_frame
    from ..stream import Endpoint, StreamRule
    rules = {}
    for code in cfg.codes:
        # gap_min_ms=0: every reconnect window of trades is backfilled, however short
        rules[f"{code}@trade"] = StreamRule(stall_s=cfg.stall_trade_s or None, gap_min_ms=0)
        rules[f"{code}@orderbook"] = StreamRule(stall_s=cfg.stall_orderbook_s or None, gap_min_ms=cfg.gap_min_ms)
    return Endpoint(name="upbit", url=cfg.ws_url, source=SOURCE, parse=parse_upbit_frame, rules=rules,
                    subscribe=(subscription(cfg.codes),), suppress_origin=True, idle_ping_s=cfg.ping_s,
                    ping_text="PING", position=trade_position)


class UpbitGapHandler:
    """Gap hook: trade windows are backfilled by time; order book windows recorded as unfillable."""

    def __init__(self, gaps, backfiller, filler, reconcile=None):
        self.gaps = gaps
        self.backfiller = backfiller
        self.filler = filler
        self.reconcile = reconcile
        self.detected = 0

    def on_gap(self, gap) -> None:
        self.detected += 1
        if gap.stream.endswith("@trade"):
            log.warning("gap detected source=%s stream=%s reason=%s; backfilling by time", gap.source, gap.stream,
                        gap.reason)
            log.info("gap stream=%s reason=%s from_ts_ms=%s to_ts_ms=%s", gap.stream, gap.reason, gap.from_ts_ms,
                     gap.to_ts_ms)
            self.gaps.open(gap)
            self.backfiller.submit(self.filler, gap)
        else:
            log.warning("gap detected source=%s stream=%s reason=%s; no REST history, recorded as unfillable",
                        gap.source, gap.stream, gap.reason)
            log.info("gap stream=%s reason=%s from_ts_ms=%s to_ts_ms=%s", gap.stream, gap.reason, gap.from_ts_ms,
                     gap.to_ts_ms)
            self.gaps.open(gap, status="unfillable")

    def snapshot(self) -> dict:
        out = {"gaps_detected": self.detected, **self.backfiller.snapshot(), **self.filler.snapshot()}
        if self.reconcile is not None:
            out["reconcile"] = self.reconcile.snapshot()
        return out


def _live_times(loop, code: str) -> tuple[int | None, int | None]:
    """(first, newest) exchange time of the live trades of `code` in this process."""
    st = loop.states.get(f"{code}@trade")
    return (None, None) if st is None else (st.first_live_ts, st.last_event_ts)


def _trade_fallback(db_path, code: str):
    from ..db import connect
    conn = connect(db_path, readonly=True)
    try:
        row = conn.execute("SELECT sequential_id, trade_ts_ms FROM upbit_trades WHERE code = ? "
                           "ORDER BY trade_ts_ms DESC LIMIT 1", (code,)).fetchone()
    finally:
        conn.close()
    return (row[0], row[1]) if row else None


def run(svc, cfg: UpbitConfig, capture_path: str | None) -> int:
    from ..db import connect
    from ..stream import Gap, StreamLoop
    from ..timeutil import now_ms
    from .backfill import Backfiller, GapBook, UpbitReconcile, UpbitTradeFill

    settings = svc.settings
    # Upbit REST allows 10 requests/s per group; Remaining-Req is honoured by the client.
    capture, rest = open_capture_and_rest(svc, cfg.rest_base, "upbit_rest", cfg.rest_timeout_s, capture_path)
    gaps = GapBook(svc.writer)
    backfiller = Backfiller(svc, "backfill")
    filler = UpbitTradeFill(svc, rest, gaps)
    handler = UpbitGapHandler(gaps, backfiller, filler)
    loop = StreamLoop(svc, [endpoint(cfg)], handler, cfg.loop, service=SERVICE, capture=capture)
    handler.reconcile = UpbitReconcile(filler, backfiller, cfg.codes, interval_s=cfg.reconcile_s,
                                       settle_ms=int(cfg.reconcile_settle_s * 1000),
                                       connected=lambda: all(c.state == "connected" for c in loop.conns),
                                       stream_times=lambda code: _live_times(loop, code))
    report_in_heartbeat(svc, {"codes": list(cfg.codes)}, loop, handler, rest, capture)

    positions = read_positions(settings.db, SERVICE)
    for code in cfg.codes:
        key = f"{code}@trade"
        if positions.get(key, (None, None))[1] is None:
            fb = _trade_fallback(settings.db, code)
            if fb is not None:
                positions[key] = fb
    loop.seed(positions)
    conn = connect(settings.db, readonly=True)
    try:
        open_gaps = GapBook.load_open(conn, SOURCE)
    finally:
        conn.close()
    for g in open_gaps:
        if g.stream.endswith("@trade"):
            log.info("resuming open gap id=%s stream=%s from_ts_ms=%s", g.row_id, g.stream, g.from_ts_ms)
            backfiller.submit(filler, g)
    if cfg.backfill_s > 0:
        now = now_ms()
        for code in cfg.codes:
            key = f"{code}@trade"
            if positions.get(key, (None, None))[1] is None and not any(g.stream == key for g in open_gaps):
                log.info("empty database: backfilling the last %d s of %s", cfg.backfill_s, key)
                handler.on_gap(Gap(SOURCE, key, "initial", now, None, None, now - cfg.backfill_s * 1000, now))
    log.info("streaming codes=%s url=%s", ",".join(cfg.codes), cfg.ws_url)
    return run_ws_collector(svc, loop, backfiller, capture=capture, rest=rest, periodic=handler.reconcile.tick)


@click.command("cqt-collect-upbit", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", type=click.Path(dir_okay=False), help="SQLite database (default: CQT_DB).")
@click.option("--capture", "capture_path", type=click.Path(dir_okay=False),
              help="Also record every frame and REST answer here (JSON Lines; .gz compresses; rotated daily).")
@click.option("--codes", help="Comma-separated market codes (default: CQT_UPBIT_CODES).")
def main(db: str | None, capture_path: str | None, codes: str | None) -> None:
    """Collect Upbit trades, order book (top of book + level sums) and ticker.

    Runs until SIGTERM; reconnects on every close, error or stall; backfills missed
    trades over REST. See docs/collectors.md.
    """
    from ..runtime import load_settings_or_exit, run_service
    settings = load_settings_or_exit(db=db, upbit_codes=codes)
    cfg = config_or_exit(lambda: UpbitConfig.from_settings(settings))
    capture_path = capture_target_or_exit(SERVICE, settings, capture_path)
    sys.exit(run_service(SERVICE, lambda svc: run(svc, cfg, capture_path), settings))
