"""The cqt-sim server: one aiohttp application on one loopback port serving

  Upbit      WS /websocket/v1, REST /v1/trades/ticks, /v1/ticker, /v1/orderbook
  Binance    WS /market/ws/<streams>, /market/stream?streams=…, /public/…, and the
             legacy un-routed /ws/…, /stream?… (the trap: /market streams never flow there);
             REST /fapi/v1/…, /futures/data/…
  Coinglass  REST /api/futures/…
  control    POST /_sim/fault, GET /_sim/stats, GET|POST /_sim/clock

Frames come from the MarketModel (or a replay capture); a pump task advances the
model clock and fans frames out to per-connection queues, each drained by a
writer task that writes pre-encoded WebSocket frames to the transport in
batches and waits for it to drain (backpressure).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import struct
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from . import binance, coinglass, faults as flt, upbit
from .model import (AGG, BINANCE_ALL_STREAMS, UPBIT_STREAMS, MarketModel)
from .replay import Capture, split_binance, upbit_stream
from .stats import StreamStats

log = logging.getLogger("cqt-sim")

TEXT, BINARY = 0x1, 0x2


def ws_frame(payload: bytes, opcode: int) -> bytes:
    """A complete unmasked server WebSocket frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


@dataclass
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0
    seed: int = 1
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
    binance_ban_seconds: float = 120.0
    upbit_idle_timeout: float = 120.0
    upbit_origin_interval: float = 10.0
    upbit_connects_per_s: int = 5
    upbit_rest_per_s: int = 10
    coinglass_key: str | None = None
    coinglass_limit: int = 30
    coinglass_plan: str = "standard"
    max_queue: int = 200_000
    faults: list = field(default_factory=list)


REJECTED_COINGLASS_KEYS = {"", "your_key_here", "YOUR_API_KEY", "invalid", "changeme", "none", "null"}


class SimClock:
    """Model time = origin + elapsed wall time x speed; can be paused."""

    def __init__(self, origin_ms: int, speed: float, paused: bool):
        self.speed = speed
        self.paused = paused
        self._base_ms = float(origin_ms)
        self._base_mono = time.monotonic()

    def now_ms(self) -> int:
        if self.paused or self.speed <= 0:
            return int(self._base_ms)
        return int(self._base_ms + (time.monotonic() - self._base_mono) * 1000.0 * self.speed)

    def pause(self) -> None:
        if not self.paused:
            self._base_ms = float(self.now_ms())
            self.paused = True

    def resume(self) -> None:
        if self.paused:
            self._base_mono = time.monotonic()
            self.paused = False


class Conn:
    """One WebSocket connection and its send queue."""

    _ids = 0

    def __init__(self, ws: web.WebSocketResponse, venue: str, path: str, route: str | None,
                 combined: bool, remote: str):
        Conn._ids += 1
        self.id = Conn._ids
        self.ws = ws
        self.venue = venue
        self.path = path
        self.route = route
        self.combined = combined
        self.remote = remote
        self.streams: list[str] = []        # Binance: subscribed, in order
        self.active: set[str] = set()       # streams whose frames this connection receives
        self.fmt = "DEFAULT"
        self.q: deque = deque()
        self.wake = asyncio.Event()
        self.sent = 0
        now = time.monotonic()
        self.opened = now
        self.last_rx = now
        self.last_tx = now
        self.ping_wait_since: float | None = None
        self.closed = False
        self.close_reason = ""
        self.tasks: list[asyncio.Task] = []
        self.rx_times: deque = deque()
        self.flood = False

    def push(self, frame: bytes) -> None:
        self.q.append(frame)
        self.wake.set()


class Limiter:
    """Fixed-window request counter (wall clock)."""

    def __init__(self, limit: int, window_s: float):
        self.limit = limit
        self.window_s = window_s
        self.win_start = 0.0
        self.used = 0

    def add(self, n: int, now: float) -> int:
        w = now - now % self.window_s
        if w != self.win_start:
            self.win_start, self.used = w, 0
        self.used += n
        return self.used

    def reset_in(self, now: float) -> int:
        return max(1, math.ceil(self.win_start + self.window_s - now))


class Sim:
    def __init__(self, cfg: SimConfig):
        self.cfg = cfg
        self.capture: Capture | None = None
        self.model: MarketModel | None = None
        if cfg.replay:
            self.capture = Capture(cfg.replay)
            origin = self.capture.frames[0][0] if self.capture.frames else 0
            self.clock = SimClock(origin, cfg.speed, cfg.paused)
        else:
            origin = cfg.start_ms if cfg.start_ms is not None else int(time.time() * 1000)
            self.model = MarketModel(cfg.seed, origin, cfg.history_s, cfg.speed, cfg.retain_s, cfg.usdt_krw)
            self.clock = SimClock(origin, cfg.speed if cfg.speed > 0 else 1.0, cfg.paused)
        self.conns: dict[str, set[Conn]] = {"upbit": set(), "binance": set()}
        self.stats: dict[str, StreamStats] = {}
        self.malformed_sent: dict[str, dict[str, int]] = {"upbit": {}, "binance": {}}
        self.closed_reasons: dict[str, int] = {}
        self.rest_counts: dict[str, int] = {}
        self.rest_status: dict[str, int] = {}
        self.conn_total = {"upbit": 0, "binance": 0}
        self.applied_faults: list[dict] = []
        # fault state
        self.stall_until = {"upbit": 0.0, "binance": 0.0}
        self.refuse_until = {"upbit": 0.0, "binance": 0.0}
        self.refuse_rest_until = 0.0
        self.gaps: dict[str, int] = {}
        self.malformed = {"upbit": flt.MalformedQueue(), "binance": flt.MalformedQueue()}
        self.malformed_per_frame = {"upbit": 4, "binance": 4}
        self.http_rules: list[dict] = []
        self.cg_auth_fail = 0
        self.last_trade_raw: dict[str, str] = {}
        # limits
        self.bn_weight = Limiter(cfg.binance_weight_limit, 60)
        self.bn_data = Limiter(1000, 300)
        self.bn_funding = Limiter(500, 300)
        self.bn_retry_until = 0.0
        self.bn_violations = 0
        self.bn_banned_until = 0.0
        self.bn_bans = 0
        self.up_groups: dict[str, Limiter] = {}
        self.up_origin_last = -1e9                   # the "origin" group: REST and WS share it
        self.up_ws_connects: deque = deque()
        self.cg_limiter = Limiter(cfg.coinglass_limit, 60)
        # runtime
        self._pumped = self.clock.now_ms()
        self._runner: web.AppRunner | None = None
        self.port: int | None = None
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.started_mono = time.monotonic()
        self.replay_sent = 0
        self.flood_sent = 0
        self._flood_next_id = 9_000_000_000

    # ------------------------------------------------------------------ lifecycle
    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_get("/websocket/v1", self.upbit_ws)
        for route in ("market", "public"):
            r.add_get(f"/{route}/ws{{tail:(/.*)?}}", self._binance_ws_handler(route, False))
            r.add_get(f"/{route}/stream", self._binance_ws_handler(route, True))
        r.add_get("/ws{tail:(/.*)?}", self._binance_ws_handler("legacy", False))
        r.add_get("/stream", self._binance_ws_handler("legacy", True))
        r.add_get("/fapi/{tail:.*}", self.rest_handler)
        r.add_get("/futures/data/{tail:.*}", self.rest_handler)
        r.add_get("/v1/{tail:.*}", self.rest_handler)
        r.add_get("/api/{tail:.*}", self.rest_handler)
        r.add_post("/_sim/fault", self.fault_handler)
        r.add_get("/_sim/stats", self.stats_handler)
        r.add_get("/_sim/clock", self.clock_handler)
        r.add_post("/_sim/clock", self.clock_handler)
        return app

    async def start(self) -> None:
        if self.model is not None:
            t0 = time.monotonic()
            self.model.ensure(self.clock.now_ms())
            log.info("model ready seed=%d origin_ms=%d history_s=%d gen_s=%.2f", self.model.seed,
                     self.model.origin_ms, self.model.history_s, time.monotonic() - t0)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.cfg.host, self.cfg.port, reuse_address=True)
        await site.start()
        sock = site._server.sockets[0]          # the bound port (for --port 0)
        self.port = sock.getsockname()[1]
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._replay_pump() if self.capture else self._pump()))
        for spec in self.cfg.faults:
            self.apply_fault(flt.validate(spec))
        if self.cfg.ports_file:
            self._write_ports_file(self.cfg.ports_file)
        log.info("listening host=%s port=%d mode=%s speed=%s paused=%s flood=%d", self.cfg.host, self.port,
                 "replay" if self.capture else "model", self.cfg.speed, self.clock.paused, self.cfg.flood)

    def urls(self) -> dict:
        h, p = self.cfg.host, self.port
        if ":" in h:
            h = f"[{h}]"
        return {"CQT_UPBIT_WS_URL": f"ws://{h}:{p}/websocket/v1", "CQT_UPBIT_REST_URL": f"http://{h}:{p}",
                "CQT_BINANCE_WS_URL": f"ws://{h}:{p}", "CQT_BINANCE_REST_URL": f"http://{h}:{p}",
                "CQT_COINGLASS_URL": f"http://{h}:{p}", "control": f"http://{h}:{p}/_sim"}

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
        await asyncio.gather(*(self._close(c, 1001, "server stopping")
                               for v in self.conns.values() for c in list(v)), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("stopped")

    # ------------------------------------------------------------------ frame flow
    def _stat(self, key: str) -> StreamStats:
        s = self.stats.get(key)
        if s is None:
            s = self.stats[key] = StreamStats()
        return s

    async def _pump(self) -> None:
        """Advance the model clock and fan its frames out."""
        streams = {"binance": BINANCE_ALL_STREAMS, "upbit": UPBIT_STREAMS}
        while True:
            await asyncio.sleep(0.02)
            now = self.clock.now_ms()
            while self._pumped < now:
                t_to = min(now, self._pumped + 2000)
                for venue in ("binance", "upbit"):
                    for fr in self.model.ws_frames_ids(venue, self._pumped, t_to, streams[venue]):
                        self._dispatch(venue, fr[1], fr[2], fr[3])
                self._pumped = t_to
                if t_to < now:
                    await asyncio.sleep(0)

    async def _replay_pump(self) -> None:
        frames = self.capture.frames
        i = 0
        due = frames[0][0] if frames else 0
        while i < len(frames):
            if self.clock.paused:
                await asyncio.sleep(0.02)
                continue
            fast = self.cfg.speed <= 0
            now = self.clock.now_ms()
            n = 0
            while i < len(frames) and n < 2000:
                ts, venue, raw = frames[i]
                due = max(due, ts)
                if not fast and due > now:
                    break
                if venue == "binance":
                    if isinstance(raw, bytes):
                        raw = raw.decode("utf-8", "replace")
                    stream, inner, wrapped = split_binance(raw)
                    self._dispatch_replay_binance(stream, inner, raw, wrapped)
                else:
                    stream = upbit_stream(raw)
                    if stream is not None:
                        self._dispatch_replay_upbit(stream, raw)
                i += 1
                n += 1
                self.replay_sent = i
            if fast:
                # backpressure: let writers drain before queuing more
                while any(len(c.q) > 5000 for v in self.conns.values() for c in v):
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.005 if n >= 2000 else 0.01)
        log.info("replay finished frames=%d", len(frames))

    def _dispatch_replay_upbit(self, stream: str, raw) -> None:
        """A captured Upbit frame, byte for byte, to every connection subscribed to it."""
        if self.stall_until["upbit"] > time.monotonic():
            return
        fr = ws_frame(raw if isinstance(raw, bytes) else raw.encode(), BINARY)
        delivered = 0
        for c in self.conns["upbit"]:
            if stream in c.active:
                self._push(c, fr)
                delivered += 1
        if delivered:
            self._stat("upbit:" + stream).sent(delivered, self._upbit_id(stream, raw))

    def _upbit_id(self, stream: str, raw):
        if not stream.endswith("@trade"):
            return None
        try:
            d = json.loads(raw)
            return int(d.get("sequential_id", d.get("sid")))
        except (ValueError, TypeError):
            return None

    def _dispatch_replay_binance(self, stream, inner: str, raw: str, wrapped: bool) -> None:
        """A captured Binance frame to every connection subscribed to its stream: a
        combined connection gets the captured envelope as is (or one made for it), a
        raw connection the bare event."""
        if stream is None or self.stall_until["binance"] > time.monotonic():
            return
        fid = None
        if stream.endswith("@aggTrade"):
            try:
                fid = int(json.loads(inner)["a"])
            except (ValueError, KeyError, TypeError):
                fid = None
        aliases = {stream}
        if stream.endswith("@markPrice@1s"):
            aliases.add(stream[: -len("@1s")])
        if stream.endswith("@depth"):
            aliases.update({stream + "@100ms", stream + "@500ms"})
        frames: dict[tuple[str, bool], bytes] = {}
        delivered = 0
        for c in self.conns["binance"]:
            name = stream if stream in c.active else next((s for s in aliases if s in c.active), None)
            if name is None:
                continue
            key = (name, c.combined)
            fr = frames.get(key)
            if fr is None:
                if not c.combined:
                    text = inner
                elif wrapped and name == stream:
                    text = raw
                else:
                    text = '{"stream":"' + name + '","data":' + inner + "}"
                fr = frames[key] = ws_frame(text.encode(), TEXT)
            self._push(c, fr)
            delivered += 1
        if delivered:
            self._stat("binance:" + stream).sent(delivered, fid)

    def _dispatch(self, venue: str, stream: str, raw: str, fid) -> None:
        """Send one frame to every connection of `venue` that receives `stream`,
        applying the stall / gap / malformed faults."""
        if self.stall_until[venue] > time.monotonic():
            if self.conns[venue]:
                self._stat(f"{venue}:{stream}").stalled += 1
            return
        if fid is not None:
            left = self.gaps.get(stream)
            if left:
                self.gaps[stream] = left - 1
                self._stat(f"{venue}:{stream}").skipped.add(fid)
                return
            self.last_trade_raw[stream] = raw
        delivered = 0
        if venue == "binance":
            bare = comb = None
            for c in self.conns["binance"]:
                if stream in c.active and not (c.flood and stream == AGG):
                    if c.combined:
                        if comb is None:
                            comb = ws_frame(('{"stream":"' + stream + '","data":' + raw + "}").encode(), TEXT)
                        self._push(c, comb)
                    else:
                        if bare is None:
                            bare = ws_frame(raw.encode(), TEXT)
                        self._push(c, bare)
                    delivered += 1
        else:
            by_fmt: dict[str, bytes] = {}
            for c in self.conns["upbit"]:
                if stream in c.active:
                    fr = by_fmt.get(c.fmt)
                    if fr is None:
                        fr = by_fmt[c.fmt] = ws_frame(upbit.to_format(raw, c.fmt).encode(), BINARY)
                    self._push(c, fr)
                    delivered += 1
        if delivered:
            self._stat(f"{venue}:{stream}").sent(delivered, fid)
        if self.malformed[venue]:
            self._emit_malformed(venue)

    def _push(self, c: Conn, frame: bytes) -> None:
        if c.closed:
            return
        c.push(frame)
        if len(c.q) > self.cfg.max_queue:
            log.warning("slow client conn=%d queue=%d: disconnecting", c.id, len(c.q))
            self._abort(c, "slow client")

    def _emit_malformed(self, venue: str) -> None:
        stream = AGG if venue == "binance" else "KRW-BTC@trade"
        targets = [c for c in self.conns[venue] if stream in c.active and not c.closed]
        template_raw = self.last_trade_raw.get(stream)
        if not targets or template_raw is None:
            return
        template = json.loads(template_raw)
        q = self.malformed[venue]
        for _ in range(self.malformed_per_frame[venue]):
            kind = q.pop()
            if kind is None:
                break
            n = self.malformed_sent[venue].get(kind, 0)
            text = flt.malformed_frame(venue, kind, template, n)
            self.malformed_sent[venue][kind] = n + 1
            if venue == "binance":
                bare = ws_frame(text.encode(), TEXT)
                comb = ws_frame(('{"stream":"' + stream + '","data":' + text + "}").encode(), TEXT) \
                    if kind != "not_json" else bare
                for c in targets:
                    c.push(comb if c.combined else bare)
            else:
                fr = ws_frame(text.encode(), BINARY)
                for c in targets:
                    c.push(fr)

    async def _writer(self, c: Conn) -> None:
        """Drain the connection's queue: pre-encoded frames written in batches,
        then wait for the transport to drain."""
        writer = c.ws._writer                 # aiohttp internals (pinned 3.14): batch writes
        tr, proto = writer.transport, writer.protocol
        try:
            while not c.closed:
                if not c.q:
                    c.wake.clear()
                    await c.wake.wait()
                    continue
                batch = []
                q = c.q
                while q and len(batch) < 1024:
                    batch.append(q.popleft())
                if tr is None or tr.is_closing():
                    break
                tr.write(b"".join(batch))
                c.sent += len(batch)
                c.last_tx = time.monotonic()
                if proto._paused:
                    await proto._drain_helper()
        except (ConnectionError, RuntimeError):
            pass
        except asyncio.CancelledError:
            raise

    # ------------------------------------------------------------------ WebSocket handlers
    def _refused(self, venue: str) -> bool:
        return self.refuse_until[venue] > time.monotonic()

    async def _accept(self, request: web.Request, venue: str, route, combined, extra_headers=None):
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=1 << 20)
        if extra_headers:
            ws.headers.update(extra_headers)
        if not ws.can_prepare(request).ok:
            return None, web.Response(status=400, text="Bad Request: not a WebSocket handshake")
        await ws.prepare(request)
        c = Conn(ws, venue, request.path_qs, route, combined, request.remote or "")
        self.conns[venue].add(c)
        self.conn_total[venue] += 1
        loop = asyncio.get_running_loop()
        c.tasks.append(loop.create_task(self._writer(c)))
        return c, None

    def _abort(self, c: Conn, reason: str) -> None:
        """Drop without a close frame (the client sees 1006)."""
        if c.closed:
            return
        c.closed = True
        c.close_reason = reason
        c.wake.set()
        tr = c.ws._writer.transport if c.ws._writer is not None else None
        if tr is not None:
            tr.abort()

    async def _close(self, c: Conn, code: int, reason: str) -> None:
        if c.closed:
            return
        c.closed = True
        c.close_reason = reason
        c.wake.set()
        try:
            await asyncio.wait_for(c.ws.close(code=code, message=reason.encode()[:120]), 2.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            self._abort(c, reason)

    def _finish(self, c: Conn) -> None:
        self.conns[c.venue].discard(c)
        c.closed = True
        c.wake.set()
        for t in c.tasks:
            t.cancel()
        reason = c.close_reason or "client closed"
        self.closed_reasons[reason] = self.closed_reasons.get(reason, 0) + 1
        log.info("ws closed venue=%s conn=%d sent=%d reason=%s", c.venue, c.id, c.sent, reason)

    # ---- Upbit
    async def upbit_ws(self, request: web.Request):
        if self._refused("upbit"):
            request.transport.abort()
            log.info("ws refused venue=upbit (fault)")
            raise web.HTTPServiceUnavailable()
        now = time.monotonic()
        hdr = {"Remaining-Req": "group=websocket; min=300; sec=4", "Limit-By-Ip": "Yes"}
        if "Origin" in request.headers:
            if now - self.up_origin_last < self.cfg.upbit_origin_interval:
                log.info("ws rejected venue=upbit reason=origin-limit origin=%s", request.headers["Origin"])
                return web.Response(status=429, text="Too Many Requests",
                                    headers={"Remaining-Req": "group=origin; min=6; sec=0"})
            self.up_origin_last = now
        dq = self.up_ws_connects
        while dq and now - dq[0] > 1.0:
            dq.popleft()
        if len(dq) >= self.cfg.upbit_connects_per_s:
            log.info("ws rejected venue=upbit reason=connect-rate")
            return web.Response(status=429, text="Too Many Requests", headers=hdr)
        dq.append(now)
        c, resp = await self._accept(request, "upbit", None, False, hdr)
        if c is None:
            return resp
        log.info("ws open venue=upbit conn=%d origin=%s", c.id, request.headers.get("Origin", "-"))
        loop = asyncio.get_running_loop()
        c.tasks.append(loop.create_task(self._upbit_idle(c)))
        status_task = None
        try:
            async for msg in c.ws:
                c.last_rx = time.monotonic()
                if msg.type == WSMsgType.PING:
                    await c.ws.pong(msg.data)
                elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    text = msg.data if msg.type == WSMsgType.TEXT else msg.data.decode("utf-8", "replace")
                    if text.strip() == "PING":
                        c.push(ws_frame(b'{"status":"UP"}', BINARY))
                        if status_task is None:
                            status_task = loop.create_task(self._upbit_status(c))
                            c.tasks.append(status_task)
                        continue
                    self._upbit_subscribe(c, text)
        finally:
            self._finish(c)
        return c.ws

    def _upbit_subscribe(self, c: Conn, text: str) -> None:
        try:
            sub = upbit.parse_subscription(text)
        except upbit.SubscriptionError as e:
            log.info("ws subscribe error venue=upbit conn=%d name=%s", c.id, e.name)
            c.push(ws_frame(upbit.ws_error(e.name, e.message).encode(), BINARY))
            asyncio.get_running_loop().call_later(0.15, lambda: asyncio.ensure_future(
                self._close(c, 1000, "subscription error")))
            return
        c.fmt = sub["format"]
        c.active = {s for s, (_snap, real) in sub["subs"].items() if real}   # a new request replaces the old
        log.info("ws subscribe venue=upbit conn=%d streams=%s format=%s ignored=%s", c.id,
                 ",".join(sorted(sub["subs"])), c.fmt, ",".join(sub["ignored"]) or "-")
        snaps = [s for s, (snap, _real) in sub["subs"].items() if snap]
        # SNAPSHOT frames from the model (a replay sends exactly its capture, nothing more)
        if snaps and self.model is not None and self.stall_until["upbit"] <= time.monotonic():
            last = self.model.last_frames("upbit", self._pumped, snaps)
            for s in snaps:
                raw = last.get(s)
                if raw is not None:
                    c.push(ws_frame(upbit.to_format(upbit.as_snapshot(raw), c.fmt).encode(), BINARY))

    async def _upbit_status(self, c: Conn) -> None:
        while not c.closed:
            await asyncio.sleep(10)
            c.push(ws_frame(b'{"status":"UP"}', BINARY))

    async def _upbit_idle(self, c: Conn) -> None:
        idle = self.cfg.upbit_idle_timeout
        while not c.closed:
            quiet = time.monotonic() - max(c.last_rx, c.last_tx)
            if quiet >= idle:
                log.info("ws idle timeout venue=upbit conn=%d idle_s=%.0f", c.id, quiet)
                self._abort(c, "idle timeout")
                return
            await asyncio.sleep(min(1.0, idle - quiet + 0.01))

    # ---- Binance
    def _binance_ws_handler(self, route: str, combined: bool):
        async def handler(request: web.Request):
            return await self.binance_ws(request, route, combined)
        return handler

    async def binance_ws(self, request: web.Request, route: str, combined: bool):
        if self._refused("binance"):
            request.transport.abort()
            log.info("ws refused venue=binance (fault)")
            raise web.HTTPServiceUnavailable()
        if combined:
            streams = [s for s in request.query.get("streams", "").split("/") if s]
        else:
            tail = request.match_info.get("tail", "")
            streams = [s for s in tail.split("/") if s]
        c, resp = await self._accept(request, "binance", route, combined)
        if c is None:
            return resp
        for s in streams:
            self._bn_add(c, s)
        log.info("ws open venue=binance conn=%d route=%s combined=%s streams=%s", c.id, route, combined,
                 ",".join(streams) or "-")
        loop = asyncio.get_running_loop()
        c.tasks.append(loop.create_task(self._binance_keepalive(c)))
        if self.cfg.flood and route == "market":
            c.tasks.append(loop.create_task(self._flood(c)))
        try:
            async for msg in c.ws:
                c.last_rx = time.monotonic()
                if msg.type == WSMsgType.PING:
                    await c.ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    c.ping_wait_since = None
                elif msg.type == WSMsgType.TEXT:
                    now = time.monotonic()
                    c.rx_times.append(now)
                    while c.rx_times and now - c.rx_times[0] > 1.0:
                        c.rx_times.popleft()
                    if len(c.rx_times) > 10:
                        log.info("ws too many messages venue=binance conn=%d", c.id)
                        self._abort(c, "more than 10 incoming messages per second")
                        break
                    self._binance_request(c, msg.data)
        finally:
            self._finish(c)
        return c.ws

    def _bn_add(self, c: Conn, s: str) -> None:
        if s not in c.streams:
            c.streams.append(s)
        if binance.delivers(c.route, s):
            c.active.add(s)
            if self.cfg.flood and s == AGG and c.route == "market":
                c.flood = True

    def _binance_request(self, c: Conn, text: str) -> None:
        def reply(obj):
            c.push(ws_frame(json.dumps(obj, separators=(",", ":")).encode(), TEXT))
        try:
            req = json.loads(text)
        except ValueError as e:
            reply({"code": 3, "msg": f"Invalid JSON: {e}"})
            return
        if not isinstance(req, dict):
            reply({"code": 3, "msg": "Invalid JSON: expected an object"})
            return
        rid = req.get("id")
        if isinstance(rid, bool) or not isinstance(rid, int) or rid < 0:
            reply({"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"})
            return
        method = req.get("method")
        params = req.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                reply({"code": 2, "msg": "Invalid request: invalid type: expected a sequence of strings", "id": rid})
                return
            bad = [p for p in params if "@" not in p and not p.startswith("!")]
            if bad:
                reply({"code": 2, "msg": f"Invalid request: invalid stream name {bad[0]}", "id": rid})
                return
            for p in params:
                if method == "SUBSCRIBE":
                    self._bn_add(c, p)
                else:
                    if p in c.streams:
                        c.streams.remove(p)
                    c.active.discard(p)
            log.info("ws %s venue=binance conn=%d route=%s streams=%s", method.lower(), c.id, c.route,
                     ",".join(params))
            reply({"result": None, "id": rid})
        elif method == "LIST_SUBSCRIPTIONS":
            reply({"result": list(c.streams), "id": rid})
        elif method == "SET_PROPERTY":
            if not isinstance(params, list) or len(params) != 2 or params[0] != "combined":
                reply({"code": 0, "msg": "Unknown property", "id": rid})
            elif not isinstance(params[1], bool):
                reply({"code": 1, "msg": "Invalid value type: expected Boolean", "id": rid})
            else:
                c.combined = params[1]
                reply({"result": None, "id": rid})
        elif method == "GET_PROPERTY":
            if params != ["combined"]:
                reply({"code": 0, "msg": "Unknown property", "id": rid})
            else:
                reply({"result": c.combined, "id": rid})
        else:
            reply({"code": 2, "msg": f"Invalid request: unknown variant `{method}`, expected one of `SUBSCRIBE`, "
                                     "`UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, `SET_PROPERTY`, `GET_PROPERTY`",
                   "id": rid})

    async def _binance_keepalive(self, c: Conn) -> None:
        """Server pings on the configured interval; disconnect when pongs stop;
        cut the connection at the end of its lifetime."""
        cfg = self.cfg
        next_ping = time.monotonic() + cfg.binance_ping_interval
        end = c.opened + cfg.binance_lifetime
        while not c.closed:
            now = time.monotonic()
            if now >= end:
                log.info("ws lifetime reached venue=binance conn=%d", c.id)
                await self._close(c, 1000, "connection lifetime reached")
                return
            if c.ping_wait_since is not None and now - c.ping_wait_since >= cfg.binance_pong_timeout:
                log.info("ws pong timeout venue=binance conn=%d", c.id)
                self._abort(c, "pong timeout")
                return
            if now >= next_ping:
                try:
                    await c.ws.ping(b"")
                except (ConnectionError, RuntimeError):
                    return
                if c.ping_wait_since is None:
                    c.ping_wait_since = now
                next_ping = now + cfg.binance_ping_interval
            await asyncio.sleep(max(0.01, min(1.0, min(next_ping, end) - time.monotonic())))

    async def _flood(self, c: Conn) -> None:
        """--flood N: aggTrade at up to N msg/s to this /market connection, written in
        batches of pre-encoded frames, waiting for the socket to drain."""
        while not c.flood and not c.closed:
            await asyncio.sleep(0.05)
        rate = float(self.cfg.flood)
        writer = c.ws._writer
        tr, proto = writer.transport, writer.protocol
        a = self._flood_next_id
        self._flood_next_id += 10_000_000_000
        f = a * 3
        stat = self._stat("binance:flood")
        t_start = time.monotonic()
        sent = 0
        pstr = [f"{90000 + i / 10:.2f}" for i in range(100)]
        base_ms = self.clock.now_ms()
        hdr4 = struct.Struct("!BBH")
        try:
            while not c.closed and c.flood:
                now = time.monotonic()
                due = int((now - t_start) * rate) - sent
                if due > rate:                     # fell behind by a second: rate is "up to N"
                    t_start = now - sent / rate
                    due = int(rate)
                if due <= 0:
                    await asyncio.sleep(0.002)
                    continue
                n = min(due, 2000)
                ms = base_ms + int((now - self.started_mono) * 1000)
                parts = []
                comb = c.combined
                for i in range(n):
                    p = (f'{{"e":"aggTrade","E":{ms},"a":{a},"s":"BTCUSDT","p":"{pstr[a % 100]}",'
                         f'"q":"0.001","f":{f},"l":{f},"T":{ms},"m":{"true" if a & 1 else "false"}}}')
                    if comb:
                        p = '{"stream":"btcusdt@aggTrade","data":' + p + "}"
                    b = p.encode()
                    parts.append(hdr4.pack(0x81, 126, len(b)) if len(b) >= 126 else bytes((0x81, len(b))))
                    parts.append(b)
                    a += 1
                    f += 1
                if tr.is_closing():
                    break
                tr.write(b"".join(parts))
                sent += n
                c.sent += n
                self.flood_sent += n
                stat.frames += n
                stat.messages += n
                if stat.first_id is None:
                    stat.first_id = a - n
                stat.last_id = a - 1
                c.last_tx = now
                if proto._paused:
                    await proto._drain_helper()
                else:
                    await asyncio.sleep(0)
        except (ConnectionError, RuntimeError):
            pass

    # ------------------------------------------------------------------ REST
    async def rest_handler(self, request: web.Request):
        path = request.path
        params = dict(request.query)
        if path.startswith("/api/"):
            venue = "coinglass"
        elif path.startswith("/v1/"):
            venue = "upbit"
        else:
            venue = "binance"
        if path in self.rest_counts or len(self.rest_counts) < 1000:
            self.rest_counts[path] = self.rest_counts.get(path, 0) + 1
        if self.refuse_rest_until > time.monotonic():
            request.transport.abort()
            raise web.HTTPServiceUnavailable()
        rule = self._take_rule(path)
        if rule is not None and rule["kind"] == "slow":
            log.info("rest slow path=%s seconds=%s", path, rule["seconds"])
            await asyncio.sleep(rule["seconds"])
            rule = self._take_rule(path, only_errors=True)
        headers: dict[str, str] = {}
        status = body = None
        if rule is not None:
            status, body, headers = self._rule_response(rule, venue, path, params)
        if status is None:
            status, body, headers = self._limits(request, venue, path, params)
        if status is None:
            status, body = self._answer(venue, path, params)
        self.rest_status[str(status)] = self.rest_status.get(str(status), 0) + 1
        if venue == "binance":
            headers.setdefault("X-MBX-USED-WEIGHT-1m", str(self.bn_weight.used))
        ctype = "text/html" if body.startswith("<") else "application/json"
        return web.Response(status=status, body=body.encode(), headers=headers, content_type=ctype,
                            charset="utf-8")

    def _answer(self, venue: str, path: str, params: dict) -> tuple[int, str]:
        if self.capture is not None:
            got = self.capture.answer(path, params)
            if got is not None:
                return got
            if venue == "binance":
                return binance.not_found(path)
            if venue == "upbit":
                return upbit.not_found(path)
            return coinglass.not_found(path)
        return self.model.rest(path, params, self.clock.now_ms())

    def _take_rule(self, path: str, only_errors: bool = False):
        for r in self.http_rules:
            if r["count"] > 0 and flt.path_matches(r["path"], path) and not (only_errors and r["kind"] == "slow"):
                r["count"] -= 1
                if r["count"] <= 0:
                    self.http_rules.remove(r)
                return r
        return None

    def _rule_response(self, rule: dict, venue: str, path: str, params: dict):
        status = rule["status"]
        kind = rule["body"]
        headers = {}
        if status in (429, 418) and rule.get("retry_after"):
            headers["Retry-After"] = str(rule["retry_after"])
        if kind == "truncated":
            _s, real = self._answer(venue, path, params)
            body = real[: max(1, len(real) // 2)]
        elif kind == "non_json":
            body = f"<html><head><title>{status} Bad Gateway</title></head><body><h1>{status}</h1></body></html>"
        elif kind == "empty":
            body = ""
        else:
            body = self._error_body(venue, status)
        log.info("rest fault path=%s status=%d body=%s", path, status, kind)
        return status, body, headers

    def _error_body(self, venue: str, status: int) -> str:
        if venue == "binance":
            msgs = {429: (-1003, "Too many requests; current limit of IP(127.0.0.1) request weight per minute is "
                                 f"{self.cfg.binance_weight_limit}. Please use WebSocket Streams for live updates "
                                 "to avoid polling the API."),
                    418: (-1003, f"Way too much request weight used; IP banned until "
                                 f"{int(time.time() * 1000) + 120000}. Please use WebSocket Streams for live "
                                 "updates to avoid bans."),
                    503: (-1001, "Internal error; unable to process your request. Please try again."),
                    500: (-1000, "An unknown error occurred while processing the request.")}
            code, msg = msgs.get(status, (-1000, "An unknown error occurred while processing the request."))
            return json.dumps({"code": code, "msg": msg}, separators=(",", ":"))
        if venue == "upbit":
            msg = "Too many API requests." if status in (429, 418) else "Internal server error"
            return json.dumps({"error": {"name": status, "message": msg}}, separators=(",", ":"))
        msg = {429: "Too Many Requests", 401: "Invalid API key"}.get(status, "Internal Server Error")
        return coinglass.error_body(str(status), msg)

    def _limits(self, request: web.Request, venue: str, path: str, params: dict):
        now = time.time()
        if venue == "binance":
            return self._binance_limits(now, path, params)
        if venue == "upbit":
            return self._upbit_limits(request, now, path)
        return self._coinglass_gate(request, now, params)

    def _binance_limits(self, now: float, path: str, params: dict):
        headers = {}
        if self.bn_banned_until > now:
            wait = math.ceil(self.bn_banned_until - now)
            headers["Retry-After"] = str(wait)
            return 418, self._ban_body(), headers
        used = self.bn_weight.add(binance.weight(path, params), now)
        headers["X-MBX-USED-WEIGHT-1m"] = str(used)
        over = used > self.cfg.binance_weight_limit
        wait = self.bn_weight.reset_in(now)
        if not over and path.startswith("/futures/data/"):
            over = self.bn_data.add(1, now) > 1000
            wait = self.bn_data.reset_in(now) if over else wait
        if not over and path == "/fapi/v1/fundingRate":
            over = self.bn_funding.add(1, now) > 500
            wait = self.bn_funding.reset_in(now) if over else wait
        if not over:
            return None, None, headers
        if now < self.bn_retry_until:
            self.bn_violations += 1
            if self.bn_violations >= 3:            # kept going after being told to back off
                ban = min(self.cfg.binance_ban_seconds * (2 ** self.bn_bans), 3 * 86400)
                self.bn_bans += 1
                self.bn_violations = 0
                self.bn_banned_until = now + ban
                headers["Retry-After"] = str(math.ceil(ban))
                log.warning("rest ban venue=binance seconds=%.0f", ban)
                return 418, self._ban_body(), headers
        else:
            self.bn_violations = 0
        self.bn_retry_until = now + wait
        headers["Retry-After"] = str(wait)
        log.info("rest rate limit venue=binance used=%d path=%s retry_after=%d", used, path, wait)
        return 429, self._error_body("binance", 429), headers

    def _ban_body(self) -> str:
        return json.dumps({"code": -1003, "msg": f"Way too much request weight used; IP banned until "
                                                 f"{int(self.bn_banned_until * 1000)}. Please use WebSocket "
                                                 "Streams for live updates to avoid bans."},
                          separators=(",", ":"))

    def _upbit_limits(self, request: web.Request, now: float, path: str):
        group = upbit.GROUPS.get(path, "default")
        if "Origin" in request.headers:
            now = time.monotonic()
            if now - self.up_origin_last < self.cfg.upbit_origin_interval:
                return 429, self._error_body("upbit", 429), {"Remaining-Req": "group=origin; min=6; sec=0"}
            self.up_origin_last = now
            return None, None, {"Remaining-Req": "group=origin; min=6; sec=0"}
        lim = self.up_groups.get(group)
        if lim is None:
            lim = self.up_groups[group] = Limiter(self.cfg.upbit_rest_per_s, 1.0)
        used = lim.add(1, now)
        left = max(0, self.cfg.upbit_rest_per_s - used)
        headers = {"Remaining-Req": f"group={group}; min=600; sec={left}", "Limit-By-Ip": "Yes"}
        if used > self.cfg.upbit_rest_per_s:
            return 429, self._error_body("upbit", 429), headers
        return None, None, headers

    def _coinglass_gate(self, request: web.Request, now: float, params: dict):
        key = request.headers.get("CG-API-KEY")
        headers = {"API-KEY-MAX-LIMIT": str(self.cfg.coinglass_limit)}
        if self.cg_auth_fail > 0 and key:
            self.cg_auth_fail -= 1
            return 401, coinglass.error_body("401", "Invalid API key"), headers
        if not key:
            return 401, coinglass.error_body("401", "API key missing"), headers
        want = self.cfg.coinglass_key
        if (want is not None and key != want) or (want is None and key in REJECTED_COINGLASS_KEYS):
            return 401, coinglass.error_body("401", "Invalid API key"), headers
        used = self.cg_limiter.add(1, now)
        headers["API-KEY-USE-LIMIT"] = str(used)
        if used > self.cfg.coinglass_limit:
            headers["Retry-After"] = str(self.cg_limiter.reset_in(now))
            return 429, coinglass.error_body("429", "Too Many Requests"), headers
        iv = params.get("interval")
        plan = self.cfg.coinglass_plan
        if iv and not coinglass.plan_allows(plan, iv):
            return 401, coinglass.error_body(
                "401", f"Upgrade plan: interval {iv} is not available on the {plan.capitalize()} plan "
                       f"(minimum {coinglass.PLANS[plan]})"), headers
        return None, None, headers

    # ------------------------------------------------------------------ control
    async def fault_handler(self, request: web.Request):
        try:
            f = flt.parse_request(await request.read())
        except flt.FaultError as e:
            return web.json_response({"ok": False, "error": str(e), "field": e.field}, status=400)
        if "at" in f:
            delay = f.pop("at")
            asyncio.get_running_loop().call_later(delay, self.apply_fault, f)
            log.info("fault scheduled kind=%s in_s=%.1f", f["kind"], delay)
            return web.json_response({"ok": True, "scheduled_in_s": delay, "fault": f})
        self.apply_fault(f)
        return web.json_response({"ok": True, "fault": f})

    def apply_fault(self, f: dict) -> None:
        if "at" in f:
            f = dict(f)
            delay = f.pop("at")
            asyncio.get_running_loop().call_later(delay, self.apply_fault, f)
            return
        kind = f["kind"]
        venues = [f["source"]] if f.get("source") else ["upbit", "binance"]
        now = time.monotonic()
        self.applied_faults.append(dict(f, applied_at_ms=self.clock.now_ms()))
        del self.applied_faults[:-1000]
        log.info("fault applied %s", json.dumps(f, separators=(",", ":")))
        if kind == "drop":
            for v in venues:
                for c in list(self.conns[v]):
                    if f.get("close_code"):
                        asyncio.ensure_future(self._close(c, f["close_code"], "dropped (fault)"))
                    else:
                        self._abort(c, "dropped (fault)")
        elif kind == "stall":
            for v in venues:
                self.stall_until[v] = now + f["seconds"]
        elif kind == "refuse":
            for v in venues:
                self.refuse_until[v] = now + f["seconds"]
            if f.get("rest"):
                self.refuse_rest_until = now + f["seconds"]
        elif kind == "gap":
            if f.get("stream"):
                streams = [f["stream"]]
            else:
                streams = [s for v, s in (("binance", AGG), ("upbit", "KRW-BTC@trade")) if v in venues]
            for s in streams:
                self.gaps[s] = self.gaps.get(s, 0) + f["ids"]
        elif kind == "malformed":
            for v in venues:
                self.malformed[v].add(f["kinds"], f["count"])     # produced lazily, per_frame at a time
                self.malformed_per_frame[v] = f["per_frame"]
        elif kind == "server_shutdown":
            ms = self.clock.now_ms()
            for c in list(self.conns["binance"]):
                ev = '{"e":"serverShutdown","E":' + str(ms) + "}"
                if c.combined:
                    ev = '{"stream":"!serverShutdown","data":' + ev + "}"
                c.push(ws_frame(ev.encode(), TEXT))
                asyncio.get_running_loop().call_later(
                    f["delay"], lambda c=c: asyncio.ensure_future(self._close(c, 1001, "server shutdown")))
        elif kind in ("http_error", "slow"):
            self.http_rules.append(dict(f))
        elif kind == "coinglass_auth":
            self.cg_auth_fail += f["count"]
        elif kind == "clear":
            self.stall_until = {"upbit": 0.0, "binance": 0.0}
            self.refuse_until = {"upbit": 0.0, "binance": 0.0}
            self.refuse_rest_until = 0.0
            self.gaps.clear()
            for q in self.malformed.values():
                q.clear()
            self.http_rules.clear()
            self.cg_auth_fail = 0

    async def stats_handler(self, request: web.Request):
        with_ids = request.query.get("ids", "1") not in ("0", "false", "no")
        only = request.query.get("stream")
        now = time.monotonic()
        streams = {k: s.as_dict(with_ids) for k, s in sorted(self.stats.items())
                   if only is None or k == only or k.split(":", 1)[1] == only}
        conns = [{"id": c.id, "venue": c.venue, "path": c.path, "route": c.route, "combined": c.combined,
                  "streams": sorted(c.streams) if c.venue == "binance" else sorted(c.active),
                  "active": sorted(c.active), "format": c.fmt if c.venue == "upbit" else None,
                  "sent": c.sent, "queued": len(c.q), "age_s": round(now - c.opened, 3)}
                 for v in self.conns.values() for c in sorted(v, key=lambda c: c.id)]
        body = {
            "mode": "replay" if self.capture else "model",
            "model_time_ms": self.clock.now_ms(), "paused": self.clock.paused, "speed": self.cfg.speed,
            "uptime_s": round(now - self.started_mono, 3),
            "streams": streams,
            "malformed": self.malformed_sent,
            "connections": conns,
            "connections_total": self.conn_total,
            "closed": self.closed_reasons,
            "faults": {"applied": self.applied_faults[-50:],
                       "pending": {"gaps": self.gaps, "malformed": {v: len(q) for v, q in self.malformed.items()},
                                   "http": self.http_rules, "coinglass_auth": self.cg_auth_fail,
                                   "stall_s": {v: max(0.0, round(t - now, 3)) for v, t in self.stall_until.items()},
                                   "refuse_s": {v: max(0.0, round(t - now, 3)) for v, t in self.refuse_until.items()}}},
            "rest": {"requests": self.rest_counts, "status": self.rest_status,
                     "binance_weight_used": self.bn_weight.used},
            "flood": {"rate": self.cfg.flood, "sent": self.flood_sent},
        }
        if self.capture is not None:
            body["replay"] = {"frames_total": len(self.capture.frames), "frames_sent": self.replay_sent,
                              "done": self.replay_sent >= len(self.capture.frames)}
        if self.model is not None:
            body["model"] = {"seed": self.model.seed, "origin_ms": self.model.origin_ms,
                             "start_ms": self.model.start_ms}
        return web.json_response(body)

    async def clock_handler(self, request: web.Request):
        if request.method == "POST":
            try:
                spec = await request.json()
            except ValueError:
                spec = {}
            action = spec.get("action") if isinstance(spec, dict) else None
            if action == "pause":
                self.clock.pause()
            elif action == "resume":
                self.clock.resume()
            else:
                return web.json_response({"ok": False, "error": "action must be 'pause' or 'resume'"}, status=400)
            log.info("clock %s model_time_ms=%d", action, self.clock.now_ms())
        return web.json_response({"ok": True, "paused": self.clock.paused, "model_time_ms": self.clock.now_ms()})
