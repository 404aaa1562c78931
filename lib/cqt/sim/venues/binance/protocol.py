"""Binance USD-M futures, the server side: the routed WebSocket entry points and REST limits.

Since April 2026 the service is split into routed entry points: /market carries
regular market data, /public the high-frequency book streams.  The legacy
un-routed /ws and /stream paths still ACK any SUBSCRIBE but only deliver
/public streams (the trap a collector on the wrong URL falls into).  Raw paths
(``/ws/<s>/<s>``) send bare events, combined ones (``/stream?streams=``) wrap them
as ``{"stream":…,"data":…}``.  The server pings on an interval, drops a connection
whose pongs stop, cuts every connection at the end of its lifetime and drops a
client sending more than 10 messages a second.  REST: request weight per minute
(429 with Retry-After, then 418 bans that double for a client that keeps going).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time

from aiohttp import WSMsgType, web

from ...limits import Limiter
from ...venue import VenueProtocol
from ...wsio import TEXT, ws_frame
from . import rest
from .flood import flood
from .frames import TRADE_STREAM

log = logging.getLogger("cqt-sim")

_MARKET_RE = re.compile(r"^[a-z0-9]+@(aggTrade|trade|markPrice(@1s)?|kline_\w+|continuousKline_\w+|"
                        r"ticker|miniTicker|forceOrder|compositeIndex|assetIndex)$|^!forceOrder@arr$|"
                        r"^!contractInfo$|^!(mini)?[tT]icker@arr$|^!markPrice@arr(@1s)?$")
_PUBLIC_RE = re.compile(r"^[a-z0-9]+@(bookTicker|depth(5|10|20)?(@100ms|@500ms)?|rpiDepth(@500ms)?)$|"
                        r"^!bookTicker$")
_COMBINED = re.compile(r'^\{"stream":"([^"]+)","data":(.*)\}$', re.S)


def stream_route(stream: str) -> str | None:
    """'market', 'public' or None (a name the real service does not know)."""
    if _MARKET_RE.match(stream):
        return "market"
    if _PUBLIC_RE.match(stream):
        return "public"
    return None


def delivers(route: str, stream: str) -> bool:
    """Whether a connection on `route` ('market' | 'public' | 'legacy') gets data for stream."""
    r = stream_route(stream)
    if route == "market":
        return r == "market"
    return r == "public"          # /public and the legacy paths


def split_binance(raw: str) -> tuple[str | None, str, bool]:
    """A captured frame: (stream name or None, bare event text, was it wrapped in a
    combined envelope)."""
    m = _COMBINED.match(raw)
    if m:
        return m.group(1), m.group(2), True
    stream = None
    try:
        d = json.loads(raw)
    except ValueError:
        return None, raw, False
    if isinstance(d, dict):
        e, s = d.get("e"), str(d.get("s") or (d.get("o") or {}).get("s") or "").lower()
        if e == "aggTrade":
            stream = f"{s}@aggTrade"
        elif e == "markPriceUpdate":
            stream = f"{s}@markPrice@1s"
        elif e == "bookTicker":
            stream = f"{s}@bookTicker"
        elif e == "forceOrder":
            stream = f"{s}@forceOrder"
        elif e == "kline":
            stream = f"{s}@kline_{(d.get('k') or {}).get('i', '1m')}"
        elif e == "depthUpdate":
            stream = f"{s}@depth"
        elif e == "serverShutdown":
            stream = "!serverShutdown"
    return stream, raw, False


class Keepalive:
    """The server's ping schedule of one connection (monotonic seconds passed in)."""

    def __init__(self, start: float, opened: float, ping_interval: float, pong_timeout: float,
                 lifetime: float):
        self.interval = ping_interval
        self.pong_timeout = pong_timeout
        self.next_ping = start + ping_interval
        self.end = opened + lifetime

    def due(self, now: float, ping_wait_since: float | None) -> str | None:
        """'lifetime' (close it), 'pong timeout' (drop it), 'ping' (send one) or None."""
        if now >= self.end:
            return "lifetime"
        if ping_wait_since is not None and now - ping_wait_since >= self.pong_timeout:
            return "pong timeout"
        if now >= self.next_ping:
            return "ping"
        return None

    def pinged(self, now: float) -> None:
        self.next_ping = now + self.interval

    def sleep_s(self, now: float) -> float:
        return max(0.01, min(1.0, min(self.next_ping, self.end) - now))


# What Binance answers a host in a country it does not serve (HTTP 451), REST and handshake alike.
RESTRICTED_LOCATION_BODY = json.dumps(
    {"code": 0, "msg": "Service unavailable from a restricted location according to 'b. Eligibility' in "
                       "https://www.binance.com/en/terms. Please contact customer service if you believe you "
                       "received this message in error."}, separators=(",", ":"))


class Protocol(VenueProtocol):
    name = "binance"
    rest = rest
    websocket = True
    trade_stream = TRADE_STREAM

    def __init__(self, sim):
        super().__init__(sim)
        cfg = sim.cfg
        self.weight_limit = cfg.binance_weight_limit
        self.ban_seconds = cfg.binance_ban_seconds
        self.weight = Limiter(cfg.binance_weight_limit, 60)
        self.data = Limiter(1000, 300)
        self.funding = Limiter(500, 300)
        self.retry_until = 0.0
        self.violations = 0
        self.banned_until = 0.0
        self.bans = 0
        self.flood_sent = 0
        self.flood_next_id = 9_000_000_000
        self.flood_streams = tuple(f"{a.lower()}usdt@aggTrade" for a in cfg.symbols)   # every served symbol's
        self.trade_stream = self.flood_streams[0]

    def add_routes(self, router) -> None:
        for route in ("market", "public"):
            router.add_get(f"/{route}/ws{{tail:(/.*)?}}", self._handler(route, False))
            router.add_get(f"/{route}/stream", self._handler(route, True))
        router.add_get("/ws{tail:(/.*)?}", self._handler("legacy", False))
        router.add_get("/stream", self._handler("legacy", True))

    # ------------------------------------------------------------------ REST limits
    def error_body(self, status: int) -> str:
        msgs = {429: (-1003, "Too many requests; current limit of IP(127.0.0.1) request weight per minute is "
                             f"{self.weight_limit}. Please use WebSocket Streams for live updates "
                             "to avoid polling the API."),
                418: (-1003, f"Way too much request weight used; IP banned until "
                             f"{int(time.time() * 1000) + 120000}. Please use WebSocket Streams for live "
                             "updates to avoid bans."),
                503: (-1001, "Internal error; unable to process your request. Please try again."),
                500: (-1000, "An unknown error occurred while processing the request.")}
        code, msg = msgs.get(status, (-1000, "An unknown error occurred while processing the request."))
        return json.dumps({"code": code, "msg": msg}, separators=(",", ":"))

    def _ban_body(self) -> str:
        return json.dumps({"code": -1003, "msg": f"Way too much request weight used; IP banned until "
                                                 f"{int(self.banned_until * 1000)}. Please use WebSocket "
                                                 "Streams for live updates to avoid bans."},
                          separators=(",", ":"))

    def gate(self, headers, path: str, params: dict, now: float, mono: float):
        out = {}
        if self.sim.cfg.binance_restricted_location:
            return 451, RESTRICTED_LOCATION_BODY, out
        if self.banned_until > now:
            wait = math.ceil(self.banned_until - now)
            out["Retry-After"] = str(wait)
            return 418, self._ban_body(), out
        used = self.weight.add(rest.weight(path, params), now)
        out["X-MBX-USED-WEIGHT-1m"] = str(used)
        over = used > self.weight_limit
        wait = self.weight.reset_in(now)
        if not over and path.startswith("/futures/data/"):
            over = self.data.add(1, now) > 1000
            wait = self.data.reset_in(now) if over else wait
        if not over and path == "/fapi/v1/fundingRate":
            over = self.funding.add(1, now) > 500
            wait = self.funding.reset_in(now) if over else wait
        if not over:
            return None, None, out
        if now < self.retry_until:
            self.violations += 1
            if self.violations >= 3:            # kept going after being told to back off
                ban = min(self.ban_seconds * (2 ** self.bans), 3 * 86400)
                self.bans += 1
                self.violations = 0
                self.banned_until = now + ban
                out["Retry-After"] = str(math.ceil(ban))
                log.warning("rest ban venue=binance seconds=%.0f", ban)
                return 418, self._ban_body(), out
        else:
            self.violations = 0
        self.retry_until = now + wait
        out["Retry-After"] = str(wait)
        log.info("rest rate limit venue=binance used=%d path=%s retry_after=%d", used, path, wait)
        return 429, self.error_body(429), out

    def finish_headers(self, headers: dict) -> None:
        headers.setdefault("X-MBX-USED-WEIGHT-1m", str(self.weight.used))

    # ------------------------------------------------------------------ WebSocket
    def _handler(self, route: str, combined: bool):
        async def handler(request: web.Request):
            return await self.ws_handler(request, route, combined)
        return handler

    async def ws_handler(self, request: web.Request, route: str, combined: bool):
        sim = self.sim
        if sim.cfg.binance_restricted_location:
            log.info("ws refused venue=binance status=451 (restricted location)")
            return web.Response(status=451, text=RESTRICTED_LOCATION_BODY, content_type="application/json")
        if sim.faults.refused("binance"):
            request.transport.abort()
            log.info("ws refused venue=binance (fault)")
            raise web.HTTPServiceUnavailable()
        if combined:
            streams = [s for s in request.query.get("streams", "").split("/") if s]
        else:
            tail = request.match_info.get("tail", "")
            streams = [s for s in tail.split("/") if s]
        c, resp = await sim.accept(request, "binance", route, combined)
        if c is None:
            return resp
        for s in streams:
            self._add(c, s)
        log.info("ws open venue=binance conn=%d route=%s combined=%s streams=%s", c.id, route, combined,
                 ",".join(streams) or "-")
        loop = asyncio.get_running_loop()
        c.tasks.append(loop.create_task(self._keepalive(c)))
        if sim.cfg.flood and route == "market":
            c.tasks.append(loop.create_task(flood(self, c)))
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
                        sim.abort(c, "more than 10 incoming messages per second")
                        break
                    self._request(c, msg.data)
        finally:
            sim.finish(c)
        return c.ws

    def _add(self, c, s: str) -> None:
        if s not in c.streams:
            c.streams.append(s)
        if delivers(c.route, s):
            c.active.add(s)
            if self.sim.cfg.flood and s in self.flood_streams and c.route == "market":
                c.flood.add(s)

    def _request(self, c, text: str) -> None:
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
                    self._add(c, p)
                else:
                    if p in c.streams:
                        c.streams.remove(p)
                    c.active.discard(p)
                    c.flood.discard(p)
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

    async def _keepalive(self, c) -> None:
        """Server pings on the configured interval; disconnect when pongs stop;
        cut the connection at the end of its lifetime."""
        cfg = self.sim.cfg
        ka = Keepalive(time.monotonic(), c.opened, cfg.binance_ping_interval, cfg.binance_pong_timeout,
                       cfg.binance_lifetime)
        while not c.closed:
            now = time.monotonic()
            action = ka.due(now, c.ping_wait_since)
            if action == "lifetime":
                log.info("ws lifetime reached venue=binance conn=%d", c.id)
                await self.sim.close(c, 1000, "connection lifetime reached")
                return
            if action == "pong timeout":
                log.info("ws pong timeout venue=binance conn=%d", c.id)
                self.sim.abort(c, "pong timeout")
                return
            if action == "ping":
                try:
                    await c.ws.ping(b"")
                except (ConnectionError, RuntimeError):
                    return
                if c.ping_wait_since is None:
                    c.ping_wait_since = now
                ka.pinged(now)
            await asyncio.sleep(ka.sleep_s(time.monotonic()))

    # ------------------------------------------------------------------ frames out
    def deliver(self, stream: str, raw: str, fid) -> int:
        bare = comb = None
        delivered = 0
        push = self.sim.pump.push
        for c in self.sim.conns["binance"]:
            if stream in c.active and stream not in c.flood:
                if c.combined:
                    if comb is None:
                        comb = ws_frame(('{"stream":"' + stream + '","data":' + raw + "}").encode(), TEXT)
                    push(c, comb)
                else:
                    if bare is None:
                        bare = ws_frame(raw.encode(), TEXT)
                    push(c, bare)
                delivered += 1
        return delivered

    def replay(self, raw) -> None:
        """A captured frame to every connection subscribed to its stream: a combined
        connection gets the captured envelope as is (or one made for it), a raw
        connection the bare event."""
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        stream, inner, wrapped = split_binance(raw)
        sim = self.sim
        if stream is None or sim.faults.stalled("binance"):
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
        for c in sim.conns["binance"]:
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
            sim.pump.push(c, fr)
            delivered += 1
        if delivered:
            sim.stat("binance:" + stream).sent(delivered, fid)

    def malformed_frame(self, kind: str, template: dict, seq: int) -> str:
        """One bad trade frame (a fault) built from the last real one: same ids, so a
        collector that stores it creates no gap; it must reject it by content."""
        d = dict(template)
        if kind == "not_json":
            return '{"e":"aggTrade","E":' + str(d.get("E", 0)) + ',"a":' + str(d.get("a", 0)) + ',"p":"1'
        if kind == "missing_keys":
            d.pop("p", None)
            d.pop("q", None)
        elif kind == "wrong_types":
            d["p"] = float(d.get("p", "0") or 0)
            d["a"] = str(d.get("a"))
            d["m"] = "maybe"
        elif kind == "nan":
            d["p"] = "NaN"
            d["q"] = "NaN"
        elif kind == "negative_price":
            d["p"] = "-" + str(d.get("p", "1"))
        elif kind == "zero_price":
            d["p"] = "0.00"
        elif kind == "absurd_ts":
            d["T"] = 0 if seq % 2 else 99_999_999_999_999
            d["E"] = d["T"]
        return json.dumps(d, separators=(",", ":"))

    def push_malformed(self, targets, stream: str, kind: str, text: str) -> None:
        bare = ws_frame(text.encode(), TEXT)
        comb = ws_frame(('{"stream":"' + stream + '","data":' + text + "}").encode(), TEXT) \
            if kind != "not_json" else bare
        for c in targets:
            c.push(comb if c.combined else bare)

    # ------------------------------------------------------------------ faults, stats
    def apply_fault(self, f: dict) -> bool:
        if f["kind"] != "server_shutdown":
            return False
        sim = self.sim
        ms = sim.clock.now_ms()
        loop = asyncio.get_running_loop()
        for c in list(sim.conns["binance"]):
            ev = '{"e":"serverShutdown","E":' + str(ms) + "}"
            if c.combined:
                ev = '{"stream":"!serverShutdown","data":' + ev + "}"
            c.push(ws_frame(ev.encode(), TEXT))
            loop.call_later(f["delay"], lambda c=c: asyncio.ensure_future(sim.close(c, 1001, "server shutdown")))
        return True

    def add_stats(self, body: dict) -> None:
        body["rest"]["binance_weight_used"] = self.weight.used
        body["flood"] = {"rate": self.sim.cfg.flood, "sent": self.flood_sent}
