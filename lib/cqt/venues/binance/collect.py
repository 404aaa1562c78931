"""`bin/cqt-collect-binance`: Binance USD-M futures WebSocket -> SQLite, zero-loss, every
symbol of `settings.binance_symbols` in one process.

Combined-stream connections on the routed entry points (never the legacy un-routed
path, where market streams are acknowledged and then stay silent):

    <CQT_BINANCE_WS_URL>/market/stream?streams=<sym>@aggTrade/<sym>@markPrice@1s/<sym>@forceOrder/…
    <CQT_BINANCE_WS_URL>/public/stream?streams=<sym>@bookTicker/…

Every stream is named in the URL, so no SUBSCRIBE message is ever sent (Binance allows 10
client messages a second per connection). A connection carries at most
CQT_BINANCE_STREAMS_PER_CONN streams (default 200; Binance allows 1024): more symbols open
more connections to the same entry point (`market-1`, `market-2`, …), a symbol's streams
kept on one connection where they fit. Each connection has its own reconnect, backoff and
24 h rollover; new connections are paced by the loop (CQT_WS_CONNECT_INTERVAL_S).

aggTrade ids are consecutive per symbol: any id jump (including the one a reconnect, a
stall or a restart leaves) is a `gaps` row and a REST backfill of exactly the missing ids
of that symbol (`/fapi/v1/aggTrades?symbol=&fromId=`). markPrice and bookTicker windows
longer than CQT_GAP_MIN_MS after a reconnect are recorded as `unfillable` gaps (no REST
history). bookTicker is thinned to one row per CQT_BOOKTICKER_MIN_MS per symbol (the last
in each slot); forceOrder is stored as it comes and never used as a liveness signal.

At start the symbols are checked against `/fapi/v1/exchangeInfo` (`markets.py`): one not
listed, not TRADING or not a PERPETUAL is one line and exit 78.

The run itself is the shared one (`cqt.collector.run_stream_collector`); this module is
what is Binance's: the endpoints, the stream rules, which gaps REST can fill (aggTrade
ids, `backfill.py`) and where an older database keeps the resume id.
"""
from __future__ import annotations

import logging
import re
import sys
from dataclasses import dataclass

import click

from ...collector import capture_target_or_exit, config_or_exit, markets_or_exit, run_stream_collector, symbol_fix
from ...config import ConfigError
from ...db import connect
from ...options import capture_option, db_option
from ...runtime import load_settings_or_exit, run_service
from ...stream import Endpoint, Gap, LoopSettings, StreamLoop, StreamRule
from ...symbols import base_asset_of_binance
from . import markets
from .backfill import AggTradeFill
from .parse import REST, WS, parse_binance_frame

log = logging.getLogger("cqt.collect.binance")

SERVICE = "cqt-collect-binance"
SOURCE = WS

#: the streams of one symbol on each entry point (wire names after '<symbol>@')
MARKET_STREAMS = ("aggTrade", "markPrice@1s", "forceOrder")
PUBLIC_STREAMS = ("bookTicker",)


@dataclass(frozen=True)
class BinanceConfig:
    symbols: tuple[str, ...]
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
    streams_per_conn: int         # CQT_BINANCE_STREAMS_PER_CONN

    @classmethod
    def from_settings(cls, settings) -> "BinanceConfig":
        return cls(
            symbols=tuple(s.upper() for s in settings.binance_symbols),
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
            streams_per_conn=settings.get_int("CQT_BINANCE_STREAMS_PER_CONN"),
        )


def pack_streams(groups: list[list[str]], per_conn: int) -> list[list[str]]:
    """Streams grouped by symbol -> connections of at most `per_conn` streams, in order.

    A symbol's streams share a connection whenever they fit on one (its aggTrade and
    markPrice reconnect together); only a group larger than `per_conn` is cut."""
    if per_conn < 1:
        raise ValueError("per_conn must be at least 1")
    conns: list[list[str]] = []
    cur: list[str] = []
    for group in groups:
        if len(cur) + len(group) > per_conn and cur:
            conns.append(cur)
            cur = []
        for stream in group:
            if len(cur) == per_conn:
                conns.append(cur)
                cur = []
            cur.append(stream)
    if cur:
        conns.append(cur)
    return conns


def canonical_stream(wire: str) -> str:
    """'btcusdt@markPrice@1s' -> 'BTCUSDT@markPrice': the parser's stream name."""
    sym, _, kind = wire.partition("@")
    return f"{sym.upper()}@{kind.split('@', 1)[0]}"


def _rules(cfg: BinanceConfig) -> dict[str, StreamRule]:
    """StreamRule per stream kind (forceOrder: silent when nobody is liquidated -> never a
    liveness signal, no rule)."""
    return {
        "aggTrade": StreamRule(stall_s=cfg.stall_aggtrade_s or None),
        "markPrice": StreamRule(stall_s=cfg.stall_markprice_s or None, gap_min_ms=cfg.gap_min_ms),
        "bookTicker": StreamRule(stall_s=cfg.stall_bookticker_s or None, gap_min_ms=cfg.gap_min_ms,
                                 thin_ms=cfg.bookticker_min_ms),
    }


_STREAM_NAMED = re.compile(rb'"stream"\s*:\s*"([A-Za-z0-9]{1,30})@')
_SYMBOL_NAMED = re.compile(rb'"s"\s*:\s*"([A-Za-z0-9]{1,30})"')


def reject_symbol_of(symbols: tuple[str, ...]):
    """A rejected frame -> the collected symbol it names (the combined wrapper's stream,
    else the event's `s`), or None (rejects.symbol)."""
    known = frozenset(symbols)

    def find(raw) -> str | None:
        data = raw.encode("utf-8", "replace") if isinstance(raw, str) else raw
        if not isinstance(data, (bytes, bytearray)):
            return None
        for pattern in (_STREAM_NAMED, _SYMBOL_NAMED):
            m = pattern.search(data)
            if m:
                sym = m.group(1).decode("ascii").upper()
                if sym in known:
                    return sym
        return None
    return find


def endpoints(cfg: BinanceConfig) -> list[Endpoint]:
    """/market connections (aggTrade, markPrice@1s, forceOrder) and /public ones
    (bookTicker), each with at most `cfg.streams_per_conn` streams."""
    rules = _rules(cfg)
    find_symbol = reject_symbol_of(cfg.symbols)
    out = []
    for route, kinds in (("market", MARKET_STREAMS), ("public", PUBLIC_STREAMS)):
        groups = [[f"{sym.lower()}@{kind}" for kind in kinds] for sym in cfg.symbols]
        conns = pack_streams(groups, cfg.streams_per_conn)
        for i, wire in enumerate(conns, 1):
            ep_rules = {}
            for w in wire:
                name = canonical_stream(w)
                rule = rules.get(name.split("@", 1)[1])
                if rule is not None:
                    ep_rules[name] = rule
            out.append(Endpoint(
                name=route if len(conns) == 1 else f"{route}-{i}",
                url=f"{cfg.ws_base}/{route}/stream?streams={'/'.join(wire)}",
                source=SOURCE, parse=parse_binance_frame, rules=ep_rules, reject_symbol=find_symbol))
    return out


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
        """Open aggTrade gaps of a previous run again (any symbol they name); a collected
        symbol with nothing stored: its last CQT_BACKFILL_S seconds."""
        for g in open_gaps:
            if g.stream.endswith("@aggTrade"):
                log.info("resuming open gap id=%s stream=%s from_id=%s to_id=%s", g.row_id, g.stream, g.from_id,
                         g.to_id)
                self.backfiller.submit(self.filler(g.stream.split("@", 1)[0]), g)
        if self.cfg.backfill_s <= 0:
            return
        for sym in self.cfg.symbols:
            agg_stream = f"{sym}@aggTrade"
            if positions.get(agg_stream, (None, None))[0] is None and not any(g.stream == agg_stream
                                                                             for g in open_gaps):
                log.info("empty database: backfilling the last %d s of %s", self.cfg.backfill_s, agg_stream)
                self.on_gap(Gap(SOURCE, agg_stream, "initial", now, None, None, now - self.cfg.backfill_s * 1000,
                                None))

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
        return {"symbols": list(self.cfg.symbols)}

    def complete_positions(self, db_path, positions: dict) -> None:
        for sym in self.cfg.symbols:
            agg_stream = f"{sym}@aggTrade"
            if positions.get(agg_stream, (None, None))[0] is None:
                fb = _agg_fallback(db_path, sym)
                if fb is not None:
                    positions[agg_stream] = fb

    def gap_handler(self, svc, loop: StreamLoop, rest, gaps, backfiller) -> BinanceGapHandler:
        return BinanceGapHandler(self.cfg, svc, loop, gaps, backfiller, rest)

    def started(self, loop: StreamLoop, positions: dict) -> None:
        eps = ",".join(f"{c.ep.name}:{c.ep.url.split('streams=', 1)[1].count('/') + 1}" for c in loop.conns)
        resume = ",".join(f"{sym}:{positions.get(f'{sym}@aggTrade', (None, None))[0]}" for sym in self.cfg.symbols)
        log.info("streaming symbols=%d %s base=%s streams_per_connection=%s resume_ids=%s", len(self.cfg.symbols),
                 eps, self.cfg.ws_base, self.cfg.streams_per_conn, resume)


def symbols_overrides(symbols: str | None, symbol: str | None) -> dict[str, str]:
    """Settings overrides for `--symbols LIST` / `--symbol S` (its one-symbol alias): collect
    exactly these, whatever CQT_SYMBOLS says (the assets follow from the symbols)."""
    if symbols and symbol:
        raise ConfigError("--symbol", "give --symbols or --symbol, not both")
    given = symbols or symbol
    if not given:
        return {}
    names = [s.strip().upper() for s in given.split(",") if s.strip()]
    if not names:
        raise ConfigError("--symbols", "lists no symbol")
    assets = dict.fromkeys(base_asset_of_binance(s) for s in names)
    return {"binance_symbols": ",".join(names), "symbols": ",".join(assets)}


@click.command(SERVICE, context_settings={"help_option_names": ["-h", "--help"]})
@db_option(help="SQLite database (default: CQT_DB).")
@capture_option
@click.option("--symbols", metavar="LIST",
              help="Comma-separated USD-M perpetuals to collect (default: CQT_BINANCE_SYMBOLS, else "
                   "<ASSET>USDT for each asset of CQT_SYMBOLS).")
@click.option("--symbol", metavar="SYMBOL", help="One symbol: the same as --symbols SYMBOL.")
def main(db: str | None, capture_path: str | None, symbols: str | None, symbol: str | None) -> None:
    """Collect Binance USD-M futures aggTrade, markPrice@1s, bookTicker and forceOrder for
    every configured symbol.

    Runs until SIGTERM; reconnects on every close, error or stall; backfills missed
    aggTrade ids over REST. Checks the symbols against /fapi/v1/exchangeInfo first (exit 78
    for one Binance does not trade). See docs/collectors.md.
    """
    overrides = config_or_exit(lambda: symbols_overrides(symbols, symbol), SERVICE)
    settings = load_settings_or_exit(db=db, **overrides)
    cfg = config_or_exit(lambda: BinanceConfig.from_settings(settings))
    capture_path = capture_target_or_exit(SERVICE, settings, capture_path)
    unchecked = markets_or_exit(
        SERVICE, cfg.rest_base, markets.PATH, lambda info: markets.symbol_problems(info, cfg.symbols),
        venue="Binance USD-M futures (TRADING perpetuals)",
        fix=symbol_fix(settings, "CQT_BINANCE_SYMBOLS", "CQT_BINANCE_SYMBOL"), timeout_s=cfg.rest_timeout_s,
        ca_bundle=cfg.loop.ca_bundle)
    sys.exit(run_service(SERVICE, lambda svc: run_stream_collector(svc, BinanceStream(cfg), capture_path, unchecked),
                         settings))
