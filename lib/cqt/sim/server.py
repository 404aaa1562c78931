"""The cqt-sim server: one aiohttp application on one loopback port serving

  Upbit      WS /websocket/v1, REST /v1/trades/ticks, /v1/ticker, /v1/orderbook
  Binance    WS /market/ws/<streams>, /market/stream?streams=…, /public/…, and the
             legacy un-routed /ws/…, /stream?… (the trap: /market streams never flow there);
             REST /fapi/v1/…, /futures/data/…
  Coinglass  REST /api/futures/…
  control    POST /_sim/fault, GET /_sim/stats, GET|POST /_sim/clock

Frames come from the Market (or a replay capture); the pump (`pump`) advances the
model clock and fans frames out to per-connection queues, each drained by a writer
task that writes pre-encoded WebSocket frames in batches and waits for the transport
to drain (`wsio`). What is particular to a venue (its WebSocket protocol, limits,
error shapes) is its protocol module's (`venues/<name>/protocol.py`); this module
holds the configuration, the clock, the connections and REST routing.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable

from aiohttp import web

from . import faults as flt
from .control import Control, Faults
from .market import Market
from .model import MarketModel
from .pump import Pump
from .replay import Capture
from .stats import StreamStats
from .venues.binance.history import HistoryLimits
from .venues.binance.protocol import Protocol as BinanceProtocol
from .venues.coinglass.protocol import Protocol as CoinglassProtocol
from .venues.upbit.protocol import Protocol as UpbitProtocol
from .wsio import Conn

log = logging.getLogger("cqt-sim")

# The venues served, in route order; the WebSocket ones in this order in every stats map.
PROTOCOLS = (UpbitProtocol, BinanceProtocol, CoinglassProtocol)


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0
    tls_cert: str | None = None          # PEM certificate chain: serve wss:// and https:// (tests, demos)
    tls_key: str | None = None           # its private key (PEM); None: the key is in tls_cert
    seed: int = 1
    symbols: tuple = ("BTC",)            # base assets served (BTCUSDT/KRW-BTC, …; KRW-USDT always)
    start_ms: int | None = None
    history_s: int = 3600
    speed: float = 1.0
    replay: str | None = None
    flood: int = 0
    paused: bool = False
    retain_s: int | None = None
    usdt_krw: float = 1415.0
    ports_file: str | None = None
    binance_ping_interval: float = 180.0
    binance_pong_timeout: float = 600.0
    binance_lifetime: float = 86400.0
    binance_weight_limit: int = 2400
    binance_agg_history_s: int = 0          # 0 = unlimited (only --retain)
    binance_futures_data_days: int = 0      # 0 = an older startTime is clamped to 30 days
    binance_futures_data_window: str = "oldest"
    binance_ban_seconds: float = 120.0
    binance_restricted_location: bool = False   # every request and handshake: HTTP 451
    upbit_idle_timeout: float = 120.0
    upbit_origin_interval: float = 10.0
    upbit_connects_per_s: int = 5
    upbit_rest_per_s: int = 10
    coinglass_key: str | None = None
    coinglass_limit: int = 30
    coinglass_plan: str = "standard"
    coinglass_errors: str = "legacy"          # legacy | real: cqt.sim.venues.coinglass.rest
    max_queue: int = 200_000
    faults: list = field(default_factory=list)


class SimClock:
    """Model time = origin + elapsed monotonic time x speed; can be paused."""

    def __init__(self, origin_ms: int, speed: float, paused: bool, mono: Callable[[], float] = time.monotonic):
        self.speed = speed
        self.paused = paused
        self.mono = mono
        self._base_ms = float(origin_ms)
        self._base_mono = mono()

    def now_ms(self) -> int:
        if self.paused or self.speed <= 0:
            return int(self._base_ms)
        return int(self._base_ms + (self.mono() - self._base_mono) * 1000.0 * self.speed)

    def pause(self) -> None:
        if not self.paused:
            self._base_ms = float(self.now_ms())
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self._base_mono = self.mono()
            self.paused = False


class Sim:
    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.capture: Capture | None = None
        self.market: Market | None = None
        if cfg.replay:
            self.capture = Capture(cfg.replay)
            origin = self.capture.frames[0][0] if self.capture.frames else 0
            self.clock = SimClock(origin, cfg.speed, cfg.paused)
        else:
            origin = cfg.start_ms if cfg.start_ms is not None else int(time.time() * 1000)
            self.market = Market(MarketModel(cfg.seed, origin, cfg.history_s, cfg.speed, cfg.retain_s,
                                             cfg.usdt_krw, assets=cfg.symbols))
            self.market.binance_history = HistoryLimits(cfg.binance_agg_history_s, cfg.binance_futures_data_days,
                                                        cfg.binance_futures_data_window)
            self.clock = SimClock(origin, cfg.speed if cfg.speed > 0 else 1.0, cfg.paused)
        if self.market is not None:
            self.assets = self.market.model.assets
            self.upbit_codes = self.market.model.upbit_codes
        else:
            self.assets = tuple(cfg.symbols)
            self.upbit_codes = tuple(f"KRW-{a}" for a in cfg.symbols) + ("KRW-USDT",)
        self.protocols = {}
        for cls in PROTOCOLS:
            self.protocols[cls.name] = cls(self)
        ws_venues = [name for name, p in self.protocols.items() if p.websocket]
        self.conns: dict[str, set[Conn]] = {v: set() for v in ws_venues}
        self.conn_total = {v: 0 for v in ws_venues}
        self.stats: dict[str, StreamStats] = {}
        self.closed_reasons: dict[str, int] = {}
        self.rest_counts: dict[str, int] = {}
        self.rest_status: dict[str, int] = {}
        self.faults = Faults(ws_venues)
        self.control = Control(self)
        self.pump = Pump(self)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.started_mono = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        for p in self.protocols.values():
            p.add_routes(r)
        for p in self.protocols.values():                 # REST: by path prefix
            for prefix in p.rest.PREFIXES:
                r.add_get(prefix + "{tail:.*}", self.rest_handler)
        self.control.add_routes(r)
        return app

    async def start(self) -> None:
        if self.market is not None:
            t0 = time.monotonic()
            m = self.market.model
            m.ensure(self.clock.now_ms())
            log.info("model ready seed=%d origin_ms=%d history_s=%d symbols=%s gen_s=%.2f", m.seed,
                     m.origin_ms, m.history_s, ",".join(m.assets), time.monotonic() - t0)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, reuse_address=True,
                           ssl_context=self.ssl_context())
        await site.start()
        sock = site._server.sockets[0]          # the bound port (for --port 0)
        self.port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self.pump.run_replay() if self.capture else self.pump.run_model()))
        for spec in self.cfg.faults:
            self.control.apply_fault(flt.validate(spec))
        if self.cfg.ports_file:
            self._write_ports_file(self.cfg.ports_file)
        log.info("listening host=%s port=%d mode=%s speed=%s paused=%s flood=%d", self.cfg.host, self.port,
                 "replay" if self.capture else "model", self.cfg.speed, self.clock.paused, self.cfg.flood)

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS on the one port when a certificate is configured (OSError/ssl.SSLError if unusable)."""
        if not self.cfg.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        return ctx

    def urls(self) -> dict:
        h, p = self.cfg.host, self.port
        if ":" in h:
            h = f"[{h}]"
        ws, http = ("wss", "https") if self.cfg.tls_cert else ("ws", "http")
        return {"CQT_UPBIT_WS_URL": f"{ws}://{h}:{p}/websocket/v1", "CQT_UPBIT_REST_URL": f"{http}://{h}:{p}",
                "CQT_BINANCE_WS_URL": f"{ws}://{h}:{p}", "CQT_BINANCE_REST_URL": f"{http}://{h}:{p}",
                "CQT_COINGLASS_URL": f"{http}://{h}:{p}", "control": f"{http}://{h}:{p}/_sim"}

    def _write_ports_file(self, path: str) -> None:
        d = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(d, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.urls(), fh, indent=1)
            fh.write("\n")
        os.replace(tmp, path)

    async def stop(self) -> None:
        self._stopping = True
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*(self.close(c, 1001, "server stopping")
                               for v in self.conns.values() for c in list(v)), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("stopped")

    # ------------------------------------------------------------------ connections
    def stat(self, key: str) -> StreamStats:
        s = self.stats.get(key)
        if s is None:
            s = self.stats[key] = StreamStats()
        return s

    async def accept(self, request: web.Request, venue: str, route, combined, extra_headers=None):
        """Complete a WebSocket handshake: (connection, None), or (None, a 400 answer)."""
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=1 << 20)
        if extra_headers:
            ws.headers.update(extra_headers)
        if not ws.can_prepare(request).ok:
            return None, web.Response(status=400, text="Bad Request: not a WebSocket handshake")
        await ws.prepare(request)
        c = Conn(ws, venue, request.path_qs, route, combined, request.remote or "")
        self.conns[venue].add(c)
        self.conn_total[venue] += 1
        c.tasks.append(asyncio.get_running_loop().create_task(c.write_loop()))
        return c, None

    def abort(self, c: Conn, reason: str) -> None:
        c.abort(reason)

    async def close(self, c: Conn, code: int, reason: str) -> None:
        await c.close(code, reason)

    def finish(self, c: Conn) -> None:
        self.conns[c.venue].discard(c)
        c.closed = True
        c.wake.set()
        for t in c.tasks:
            t.cancel()
        reason = c.close_reason or "client closed"
        self.closed_reasons[reason] = self.closed_reasons.get(reason, 0) + 1
        log.info("ws closed venue=%s conn=%d sent=%d reason=%s", c.venue, c.id, c.sent, reason)

    # ------------------------------------------------------------------ REST
    def venue_of(self, path: str) -> str:
        for name, p in self.protocols.items():
            if p.rest.owns(path):
                return name
        return "binance"

    async def rest_handler(self, request: web.Request):
        path = request.path
        params = dict(request.query)
        venue = self.venue_of(path)
        proto = self.protocols[venue]
        if path in self.rest_counts or len(self.rest_counts) < 1000:
            self.rest_counts[path] = self.rest_counts.get(path, 0) + 1
        if self.faults.rest_refused():
            request.transport.abort()
            raise web.HTTPServiceUnavailable()
        rule = self.faults.take_rule(path)
        if rule is not None and rule["kind"] == "slow":
            log.info("rest slow path=%s seconds=%s", path, rule["seconds"])
            await asyncio.sleep(rule["seconds"])
            rule = self.faults.take_rule(path, only_errors=True)
        headers: dict[str, str] = {}
        status = body = None
        if rule is not None:
            status, body, headers = self.control.rule_response(rule, venue, path, params)
        if status is None:
            status, body, headers = proto.gate(request.headers, path, params, time.time(), time.monotonic())
        if status is None:
            status, body = self.answer(venue, path, params)
        self.rest_status[str(status)] = self.rest_status.get(str(status), 0) + 1
        proto.finish_headers(headers)
        ctype = "text/html" if body.startswith("<") else "application/json"
        return web.Response(status=status, body=body.encode(), headers=headers, content_type=ctype,
                            charset="utf-8")

    def answer(self, venue: str, path: str, params: dict) -> tuple[int, str]:
        """The real answer: the capture's recorded one in replay, else the market's."""
        if self.capture is not None:
            got = self.capture.answer(path, params)
            if got is not None:
                return got
            return self.protocols[venue].rest.not_found(path)
        return self.market.rest(path, params, self.clock.now_ms())
