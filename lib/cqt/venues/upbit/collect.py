"""`bin/cqt-collect-upbit`: Upbit quotation WebSocket -> SQLite (trades, order book, ticker).

One connection to CQT_UPBIT_WS_URL without an `Origin` header (websocket-client sends
one unless told not to, and Upbit then allows one request per 10 s), subscribing to
trade, orderbook and ticker for every code of `settings.upbit_codes` (the KRW market of
each asset of CQT_SYMBOLS, KRW-USDT always) in one request message in the DEFAULT format.
Upbit limits requests (5 a second and 100 a minute per connection) and connections (5 a
second), not the codes one request names: one message per connection (and per rollover)
carries them all, so there is no reason to split. A text `PING`
goes out when nothing arrived for CQT_UPBIT_PING_S (Upbit closes idle connections
after ~120 s).

`sequential_id` is unique but not ordered, so trades are not gap-checked by id: after
every (re)connect or restart, the window between the last stored trade and the first
new one is backfilled from `/v1/trades/ticks` (newest first, `cursor`, `days_ago`)
and deduplicated by `(code, sequential_id)`. While connected, every
CQT_UPBIT_RECONCILE_S the newest REST pages are compared with the stored trades, so
trades the stream skipped are inserted and recorded (`UpbitReconcile`). Both work per
code. Order book windows longer than CQT_GAP_MIN_MS are recorded as `unfillable` gaps.

At start the codes are checked against `/v1/market/all` (`markets.py`): a code Upbit does
not list is one line and exit 78.

The run itself is the shared one (`cqt.collector.run_stream_collector`); this module is
what is Upbit's: the endpoint and its subscription message, the stream rules, which gaps
REST can fill (trades, by time) and the reconciliation (`backfill.py`).
"""
from __future__ import annotations

import logging
import re
import sys
import uuid
from dataclasses import dataclass

import click
import orjson

from ...collector import capture_target_or_exit, config_or_exit, markets_or_exit, run_stream_collector, symbol_fix
from ...db import connect
from ...options import capture_option, db_option
from ...runtime import load_settings_or_exit, run_service
from ...stream import Endpoint, Gap, LoopSettings, StreamLoop, StreamRule
from ...symbols import base_asset_of_upbit
from . import markets
from .backfill import UpbitReconcile, UpbitTradeFill
from .parse import REST, WS, parse_upbit_frame

log = logging.getLogger("cqt.collect.upbit")

SERVICE = "cqt-collect-upbit"
SOURCE = WS


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
        return cls(
            codes=tuple(settings.upbit_codes),
            ws_url=settings.upbit_ws_url,
            rest_base=settings.upbit_rest_url,
            loop=LoopSettings.from_settings(settings),
            stall_trade_s=settings.get_float("CQT_STALL_UPBIT_TRADE_S"),
            stall_orderbook_s=settings.get_float("CQT_STALL_UPBIT_ORDERBOOK_S"),
            gap_min_ms=settings.get_int("CQT_GAP_MIN_MS"),
            ping_s=settings.get_float("CQT_UPBIT_PING_S"),
            backfill_s=settings.backfill_s,
            rest_timeout_s=settings.get_float("CQT_REST_TIMEOUT_S"),
            reconcile_s=settings.get_float("CQT_UPBIT_RECONCILE_S"),
            reconcile_settle_s=settings.get_float("CQT_UPBIT_RECONCILE_SETTLE_S"),
        )


def subscription(codes: tuple[str, ...], ticket: str | None = None) -> str:
    """The Upbit request array: ticket, one type object per stream, format."""
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


_CODE_NAMED = re.compile(rb'"(?:code|cd)"\s*:\s*"([A-Za-z0-9]{2,5}-[A-Za-z0-9]{1,20})"')


def reject_code_of(codes: tuple[str, ...]):
    """A rejected frame -> the collected code it names (`code` / `cd`), or None (rejects.symbol)."""
    known = frozenset(codes)

    def find(raw) -> str | None:
        data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
        if not isinstance(data, (bytes, bytearray)):
            return None
        m = _CODE_NAMED.search(data)
        code = m.group(1).decode("ascii").upper() if m else None
        return code if code in known else None
    return find


def endpoint(cfg: UpbitConfig) -> Endpoint:
    rules = {}
    for code in cfg.codes:
        # gap_min_ms=0: every reconnect window of trades is backfilled, however short
        rules[f"{code}@trade"] = StreamRule(stall_s=cfg.stall_trade_s or None, gap_min_ms=0)
        rules[f"{code}@orderbook"] = StreamRule(stall_s=cfg.stall_orderbook_s or None, gap_min_ms=cfg.gap_min_ms)
    return Endpoint(name="upbit", url=cfg.ws_url, source=SOURCE, parse=parse_upbit_frame, rules=rules,
                    subscribe=(subscription(cfg.codes),), suppress_origin=True, idle_ping_s=cfg.ping_s,
                    ping_text="PING", position=trade_position, reject_symbol=reject_code_of(cfg.codes))


class UpbitGapHandler:
    """Gap hook: trade windows are backfilled by time; order book windows recorded as unfillable."""

    def __init__(self, cfg: UpbitConfig, gaps, backfiller, filler, reconcile=None):
        self.cfg = cfg
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

    def resume(self, open_gaps: list, positions: dict, now: int) -> None:
        """Open trade gaps of a previous run again; a code with nothing stored: the last
        CQT_BACKFILL_S seconds."""
        for g in open_gaps:
            if g.stream.endswith("@trade"):
                log.info("resuming open gap id=%s stream=%s from_ts_ms=%s", g.row_id, g.stream, g.from_ts_ms)
                self.backfiller.submit(self.filler, g)
        if self.cfg.backfill_s > 0:
            for code in self.cfg.codes:
                key = f"{code}@trade"
                if positions.get(key, (None, None))[1] is None and not any(g.stream == key for g in open_gaps):
                    log.info("empty database: backfilling the last %d s of %s", self.cfg.backfill_s, key)
                    self.on_gap(Gap(SOURCE, key, "initial", now, None, None, now - self.cfg.backfill_s * 1000, now))

    def periodic(self) -> None:
        if self.reconcile is not None:
            self.reconcile.tick()

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
    conn = connect(db_path, readonly=True)
    try:
        row = conn.execute("SELECT sequential_id, trade_ts_ms FROM upbit_trades WHERE code = ? "
                           "ORDER BY trade_ts_ms DESC LIMIT 1", (code,)).fetchone()
    finally:
        conn.close()
    return (row[0], row[1]) if row else None


class UpbitStream:
    """cqt-collect-upbit as the shared collector sees it (`cqt.venues.base.StreamVenue`)."""

    service = SERVICE
    source = SOURCE
    rest_name = REST     # Upbit REST allows 10 requests/s per group; the client honours Remaining-Req

    def __init__(self, cfg: UpbitConfig):
        self.cfg = cfg
        self.rest_base = cfg.rest_base
        self.rest_timeout_s = cfg.rest_timeout_s
        self.loop_settings = cfg.loop

    def endpoints(self) -> list[Endpoint]:
        return [endpoint(self.cfg)]

    def heartbeat_head(self) -> dict:
        return {"codes": list(self.cfg.codes)}

    def complete_positions(self, db_path, positions: dict) -> None:
        for code in self.cfg.codes:
            key = f"{code}@trade"
            if positions.get(key, (None, None))[1] is None:
                fb = _trade_fallback(db_path, code)
                if fb is not None:
                    positions[key] = fb

    def gap_handler(self, svc, loop: StreamLoop, rest, gaps, backfiller) -> UpbitGapHandler:
        cfg = self.cfg
        filler = UpbitTradeFill(svc, rest, gaps)
        reconcile = UpbitReconcile(filler, backfiller, cfg.codes, interval_s=cfg.reconcile_s,
                                   settle_ms=int(cfg.reconcile_settle_s * 1000),
                                   connected=lambda: all(c.state == "connected" for c in loop.conns),
                                   stream_times=lambda code: _live_times(loop, code))
        return UpbitGapHandler(cfg, gaps, backfiller, filler, reconcile)

    def started(self, loop: StreamLoop, positions: dict) -> None:
        log.info("streaming codes=%s url=%s", ",".join(self.cfg.codes), self.cfg.ws_url)


@click.command(SERVICE, context_settings={"help_option_names": ["-h", "--help"]})
@db_option(help="SQLite database (default: CQT_DB).")
@capture_option
@click.option("--codes", metavar="LIST", help="Comma-separated market codes (default: CQT_UPBIT_CODES, else "
              "KRW-<ASSET> for each asset of CQT_SYMBOLS); KRW-USDT is always added.")
def main(db: str | None, capture_path: str | None, codes: str | None) -> None:
    """Collect Upbit trades, order book (top of book + level sums) and ticker.

    Runs until SIGTERM; reconnects on every close, error or stall; backfills missed
    trades over REST. Checks the codes against /v1/market/all first (exit 78 for one
    Upbit does not list). See docs/collectors.md.
    """
    settings = load_settings_or_exit(db=db, **codes_overrides(codes))
    cfg = config_or_exit(lambda: UpbitConfig.from_settings(settings))
    capture_path = capture_target_or_exit(SERVICE, settings, capture_path)
    unchecked = markets_or_exit(
        SERVICE, cfg.rest_base, markets.PATH, lambda listed: markets.code_problems(listed, cfg.codes),
        venue="Upbit", fix=symbol_fix(settings, "CQT_UPBIT_CODES", option="--codes"), timeout_s=cfg.rest_timeout_s,
        ca_bundle=cfg.loop.ca_bundle)
    sys.exit(run_service(SERVICE, lambda svc: run_stream_collector(svc, UpbitStream(cfg), capture_path, unchecked),
                         settings))


def codes_overrides(codes: str | None) -> dict[str, str]:
    """Settings overrides for `--codes LIST`: collect exactly these (and KRW-USDT), whatever
    CQT_SYMBOLS says (the assets follow from the codes)."""
    if not codes:
        return {}
    assets = [base_asset_of_upbit(c) for c in codes.split(",") if c.strip()]
    assets = [a for a in dict.fromkeys(assets) if a != "USDT"]
    return {"upbit_codes": codes, **({"symbols": ",".join(assets)} if assets else {})}
