"""`bin/cqt-collect-binance`: Binance USD-M futures WebSocket -> SQLite, zero-loss.

Two combined-stream connections on the routed entry points (never the legacy un-routed
path, where market streams are acknowledged and then stay silent):

    <CQT_BINANCE_WS_URL>/market/stream?streams=<sym>@aggTrade/<sym>@markPrice@1s/<sym>@forceOrder
    <CQT_BINANCE_WS_URL>/public/stream?streams=<sym>@bookTicker

aggTrade ids are consecutive: any id jump (including the one a reconnect, a stall or a
restart leaves) is a `gaps` row and a REST backfill of exactly the missing ids
(`/fapi/v1/aggTrades?fromId=`). markPrice and bookTicker windows longer than
CQT_GAP_MIN_MS after a reconnect are recorded as `unfillable` gaps (no REST history).
bookTicker is thinned to one row per CQT_BOOKTICKER_MIN_MS per symbol (the last in
each slot); forceOrder is stored as it comes and never used as a liveness signal.

The run itself is the shared one (`cqt.collector.run_stream_collector`); this module is
what is Binance's: the two endpoints, the stream rules, which gaps REST can fill
(aggTrade ids, `backfill.py`) and where an older database keeps the resume id.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import click

from ...collector import capture_target_or_exit, config_or_exit, run_stream_collector
from ...db import connect
from ...options import capture_option, db_option
from ...runtime import load_settings_or_exit, run_service
from ...stream import Endpoint, Gap, LoopSettings, StreamLoop, StreamRule
from .backfill import AggTradeFill
from .parse import REST, WS, parse_binance_frame

log = logging.getLogger("cqt.collect.binance")

SERVICE = "cqt-collect-binance"
SOURCE = WS


@dataclass(frozen=True)
class BinanceConfig:
    symbol: str
    ws_base: str
    rest_base: str
    loop: object                  # cqt.stream.LoopSettings
    stall_aggtrade_s: float
    stall_markprice_s: float
    stall_bookticker_s: float
    gap_min_ms: int
    bookticker_min_ms: int
    backfill_s: int
    rest_timeout_s: float

    @classmethod
    def from_settings(cls, settings) -> "BinanceConfig":
        return cls(
            symbol=settings.binance_symbol.upper(),
            ws_base=settings.binance_ws_url.rstrip("/"),
            rest_base=settings.binance_rest_url,
            loop=LoopSettings.from_settings(settings),
            stall_aggtrade_s=settings.get_float("CQT_STALL_AGGTRADE_S"),
            stall_markprice_s=settings.get_float("CQT_STALL_MARKPRICE_S"),
            stall_bookticker_s=settings.get_float("CQT_STALL_BOOKTICKER_S"),
            gap_min_ms=settings.get_int("CQT_GAP_MIN_MS"),
            bookticker_min_ms=settings.bookticker_min_ms,
            backfill_s=settings.backfill_s,
            rest_timeout_s=settings.get_float("CQT_REST_TIMEOUT_S"),
        )


def endpoints(cfg: BinanceConfig) -> list[Endpoint]:
    """The two connections: /market (aggTrade, markPrice@1s, forceOrder) and /public (bookTicker)."""
    sym = cfg.symbol
    low = sym.lower()
    market = Endpoint(
        name="market",
        url=f"{cfg.ws_base}/market/stream?streams={low}@aggTrade/{low}@markPrice@1s/{low}@forceOrder",
        source=SOURCE, parse=parse_binance_frame,
        rules={
            f"{sym}@aggTrade": StreamRule(stall_s=cfg.stall_aggtrade_s or None),
            f"{sym}@markPrice": StreamRule(stall_s=cfg.stall_markprice_s or None, gap_min_ms=cfg.gap_min_ms),
            # forceOrder: silent when nobody is liquidated -> never a liveness signal
        })
    public = Endpoint(
        name="public",
        url=f"{cfg.ws_base}/public/stream?streams={low}@bookTicker",
        source=SOURCE, parse=parse_binance_frame,
        rules={f"{sym}@bookTicker": StreamRule(stall_s=cfg.stall_bookticker_s or None, gap_min_ms=cfg.gap_min_ms,
                                               thin_ms=cfg.bookticker_min_ms)})
    return [market, public]


class BinanceGapHandler:
    """Gap hook: aggTrade id gaps are backfilled by id; other windows are recorded as unfillable."""

    def __init__(self, cfg: BinanceConfig, svc, loop: StreamLoop, gaps, backfiller, rest):
        self.cfg = cfg
        self.svc = svc
        self.loop = loop
        self.gaps = gaps
        self.backfiller = backfiller
        self.rest = rest
        self.fillers: dict = {}
        self.detected = 0

    def filler(self, symbol: str) -> AggTradeFill:
        f = self.fillers.get(symbol)
        if f is None:
            st = self.loop.state(f"{symbol}@aggTrade", SOURCE)
            f = self.fillers[symbol] = AggTradeFill(self.svc, self.rest, self.gaps, symbol, st)
        return f

    def on_gap(self, gap) -> None:
        self.detected += 1
        if gap.stream.endswith("@aggTrade") and (gap.from_id is not None or gap.reason == "initial"):
            log.warning("gap detected source=%s stream=%s reason=%s; backfilling by id", gap.source, gap.stream,
                        gap.reason)
            log.info("gap stream=%s reason=%s from_id=%s to_id=%s ids=%s", gap.stream, gap.reason,
                     gap.from_id, gap.to_id, gap.n_ids)
            self.gaps.open(gap)
            self.backfiller.submit(self.filler(gap.stream.split("@", 1)[0]), gap)
        else:
            log.warning("gap detected source=%s stream=%s reason=%s; no REST history, recorded as unfillable",
                        gap.source, gap.stream, gap.reason)
            log.info("gap stream=%s reason=%s from_ts_ms=%s to_ts_ms=%s window_ms=%s", gap.stream, gap.reason,
                     gap.from_ts_ms, gap.to_ts_ms,
                     None if gap.from_ts_ms is None or gap.to_ts_ms is None else gap.to_ts_ms - gap.from_ts_ms)
            self.gaps.open(gap, status="unfillable")

    def resume(self, open_gaps: list, positions: dict, now: int) -> None:
        """Open aggTrade gaps of a previous run again; nothing stored: the last CQT_BACKFILL_S seconds."""
        for g in open_gaps:
            if g.stream.endswith("@aggTrade"):
                log.info("resuming open gap id=%s stream=%s from_id=%s to_id=%s", g.row_id, g.stream, g.from_id,
                         g.to_id)
                self.backfiller.submit(self.filler(g.stream.split("@", 1)[0]), g)
        agg_stream = f"{self.cfg.symbol}@aggTrade"
        if positions.get(agg_stream, (None, None))[0] is None and self.cfg.backfill_s > 0 \
                and not any(g.stream == agg_stream for g in open_gaps):
            log.info("empty database: backfilling the last %d s of %s", self.cfg.backfill_s, agg_stream)
            self.on_gap(Gap(SOURCE, agg_stream, "initial", now, None, None, now - self.cfg.backfill_s * 1000, None))

    def periodic(self) -> None:
        pass

    def snapshot(self) -> dict:
        d = {"gaps_detected": self.detected, **self.backfiller.snapshot()}
        for sym, f in self.fillers.items():
            d[sym] = f.snapshot()
        return d


def _agg_fallback(db_path, symbol: str):
    """Resume position from the table when resume_state has none (older database)."""
    conn = connect(db_path, readonly=True)
    try:
        row = conn.execute("SELECT MAX(agg_id) FROM binance_agg_trades WHERE symbol = ?", (symbol,)).fetchone()
        if row[0] is None:
            return None
        ts = conn.execute("SELECT trade_ts_ms FROM binance_agg_trades WHERE symbol = ? AND agg_id = ?",
                          (symbol, row[0])).fetchone()
        return row[0], ts[0] if ts else None
    finally:
        conn.close()


class BinanceStream:
    """cqt-collect-binance as the shared collector sees it (`cqt.venues.base.StreamVenue`)."""

    service = SERVICE
    source = SOURCE
    rest_name = REST

    def __init__(self, cfg: BinanceConfig):
        self.cfg = cfg
        self.rest_base = cfg.rest_base
        self.rest_timeout_s = cfg.rest_timeout_s
        self.loop_settings = cfg.loop

    def endpoints(self) -> list[Endpoint]:
        return endpoints(self.cfg)

    def heartbeat_head(self) -> dict:
        return {"symbol": self.cfg.symbol}

    def complete_positions(self, db_path, positions: dict) -> None:
        agg_stream = f"{self.cfg.symbol}@aggTrade"
        if positions.get(agg_stream, (None, None))[0] is None:
            fb = _agg_fallback(db_path, self.cfg.symbol)
            if fb is not None:
                positions[agg_stream] = fb

    def gap_handler(self, svc, loop: StreamLoop, rest, gaps, backfiller) -> BinanceGapHandler:
        return BinanceGapHandler(self.cfg, svc, loop, gaps, backfiller, rest)

    def started(self, loop: StreamLoop, positions: dict) -> None:
        log.info("streaming symbol=%s market=%s public=%s resume_id=%s", self.cfg.symbol,
                 loop.conns[0].ep.url.split("?")[0], loop.conns[1].ep.url.split("?")[0],
                 positions.get(f"{self.cfg.symbol}@aggTrade", (None, None))[0])


@click.command(SERVICE, context_settings={"help_option_names": ["-h", "--help"]})
@db_option(help="SQLite database (default: CQT_DB).")
@capture_option
@click.option("--symbol", help="USD-M futures symbol (default: CQT_BINANCE_SYMBOL).")
def main(db: str | None, capture_path: str | None, symbol: str | None) -> None:
    """Collect Binance USD-M futures aggTrade, markPrice@1s, bookTicker and forceOrder.

    Runs until SIGTERM; reconnects on every close, error or stall; backfills missed
    aggTrade ids over REST. See docs/collectors.md.
    """
    settings = load_settings_or_exit(db=db, binance_symbol=symbol)
    cfg = config_or_exit(lambda: BinanceConfig.from_settings(settings))
    capture_path = capture_target_or_exit(SERVICE, settings, capture_path)
    sys.exit(run_service(SERVICE, lambda svc: run_stream_collector(svc, BinanceStream(cfg), capture_path),
                         settings))
