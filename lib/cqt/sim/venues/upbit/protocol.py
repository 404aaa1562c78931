"""Upbit quotation, the server side: WebSocket /websocket/v1 and REST limits.

Wire facts reproduced: subscriptions are a JSON array (ticket, type objects,
format); both `is_only_snapshot`/`is_only_realtime` and the older camelCase
spellings are accepted; unknown or lower-case codes get nothing, silently; a bad
request gets ``{"error":{"name":…,"message":…}}`` and the socket is closed with
1000; "PING" is answered with ``{"status":"UP"}`` (then every 10 s); a connection
with no traffic either way for the idle timeout is dropped. REST: a per-second limit
per group (``Remaining-Req``); requests carrying an Origin header share one "origin"
group (REST and WebSocket) of one per interval.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import WSMsgType, web

from ...limits import Limiter, SlidingCount
from ...venue import VenueProtocol
from ...wsio import BINARY, ws_frame
from . import rest
from .frames import TRADE_STREAM, TYPES, as_snapshot, to_format

log = logging.getLogger("cqt-sim")

ERRORS = {
    "WRONG_FORMAT": "Format 이 맞지 않습니다.",
    "NO_TICKET": "티켓이 존재하지 않거나, 유효하지 않습니다.",
    "NO_TYPE": "type 필드가 존재하지 않습니다.",
    "NO_CODES": "codes 필드가 존재하지 않습니다.",
}


def ws_error(name: str, message: str | None = None) -> str:
    return json.dumps({"error": {"name": name, "message": message or ERRORS.get(name, name)}},
                      ensure_ascii=False, separators=(",", ":"))


class SubscriptionError(Exception):
    def __init__(self, name: str, message: str | None = None):
        super().__init__(name)
        self.name = name
        self.message = message or ERRORS.get(name, name)


def _flag(obj: dict, snake: str, camel: str) -> bool:
    v = obj.get(snake, obj.get(camel, False))
    return v is True or (isinstance(v, str) and v.lower() == "true")


def parse_subscription(text: str, known=("KRW-BTC", "KRW-USDT")) -> dict:
    """Parse a subscription request -> {"format": F, "subs": {stream: (snapshot, realtime)},
    "ignored": [codes not in `known`, the markets served]}; raises SubscriptionError."""
    try:
        req = json.loads(text)
    except ValueError:
        raise SubscriptionError("WRONG_FORMAT") from None
    if not isinstance(req, list) or not req or not all(isinstance(o, dict) for o in req):
        raise SubscriptionError("WRONG_FORMAT")
    if not any(isinstance(o.get("ticket"), str) and o.get("ticket") for o in req):
        raise SubscriptionError("NO_TICKET")
    fmt = "DEFAULT"
    types = []
    for o in req:
        if "format" in o:
            f = str(o.get("format")).upper()
            fmt = f if f in ("DEFAULT", "SIMPLE", "JSON_LIST", "SIMPLE_LIST") else "DEFAULT"
        elif "ticket" in o:
            continue
        else:
            types.append(o)
    if not types:
        raise SubscriptionError("NO_TYPE")
    subs: dict[str, tuple[bool, bool]] = {}
    ignored = []
    for o in types:
        t = o.get("type")
        if t is None:
            raise SubscriptionError("NO_TYPE")
        if t not in TYPES:
            raise SubscriptionError("INVALID_PARAM", f"{t} 은 지원하지 않는 타입입니다.")
        if "codes" not in o:
            raise SubscriptionError("NO_CODES")
        codes = o.get("codes")
        if not isinstance(codes, list):
            raise SubscriptionError("WRONG_FORMAT")
        if not codes:
            raise SubscriptionError("INVALID_PARAM", "codes 필드가 비어 있습니다.")
        only_snap = _flag(o, "is_only_snapshot", "isOnlySnapshot")
        only_real = _flag(o, "is_only_realtime", "isOnlyRealtime")
        for c in codes:
            code = str(c)
            if t == "orderbook" and "." in code:      # "KRW-BTC.15": depth suffix
                code = code.split(".", 1)[0]
            if code not in known:                     # unknown or lower case: nothing, silently
                ignored.append(str(c))
                continue
            subs[f"{code}@{t}"] = (not only_real, not only_snap)
    return {"format": fmt, "subs": subs, "ignored": ignored}


def idle_left(now: float, last_rx: float, last_tx: float, idle_s: float) -> float:
    """Seconds until a connection with this traffic is idle (<= 0: it is)."""
    return idle_s - (now - max(last_rx, last_tx))


class Protocol(VenueProtocol):
    name = "upbit"
    rest = rest
    websocket = True
    trade_stream = TRADE_STREAM

    def __init__(self, sim):
        super().__init__(sim)
        cfg = sim.cfg
        self.codes = tuple(f"KRW-{a}" for a in cfg.symbols) + ("KRW-USDT",)     # the markets served
        self.trade_stream = f"{self.codes[0]}@trade"
        self.groups: dict[str, Limiter] = {}
        self.origin_last = -1e9                   # the "origin" group: REST and WS share it
        self.connects = SlidingCount(1.0)
        self.per_s = cfg.upbit_rest_per_s
        self.origin_interval = cfg.upbit_origin_interval

    def add_routes(self, router) -> None:
        router.add_get("/websocket/v1", self.ws_handler)

    # ------------------------------------------------------------------ REST limits
    def error_body(self, status: int) -> str:
        return rest.error_body(status)

    def origin_ok(self, mono: float) -> bool:
        """One request with an Origin header per interval (REST and WebSocket together)."""
        if mono - self.origin_last < self.origin_interval:
            return False
        self.origin_last = mono
        return True

    def gate(self, headers, path: str, params: dict, now: float, mono: float):
        group = rest.GROUPS.get(path, "default")
        if "Origin" in headers:
            origin = {"Remaining-Req": "group=origin; min=6; sec=0"}
            if not self.origin_ok(mono):
                return 429, self.error_body(429), origin
            return None, None, origin
        lim = self.groups.get(group)
        if lim is None:
            lim = self.groups[group] = Limiter(self.per_s, 1.0)
        used = lim.add(1, now)
        left = max(0, self.per_s - used)
        out = {"Remaining-Req": f"group={group}; min=600; sec={left}", "Limit-By-Ip": "Yes"}
        if used > self.per_s:
            return 429, self.error_body(429), out
        return None, None, out

    # ------------------------------------------------------------------ WebSocket
    async def ws_handler(self, request: web.Request):
        sim = self.sim
        if sim.faults.refused("upbit"):
            request.transport.abort()
            log.info("ws refused venue=upbit (fault)")
            raise web.HTTPServiceUnavailable()
        now = time.monotonic()
        hdr = {"Remaining-Req": "group=websocket; min=300; sec=4", "Limit-By-Ip": "Yes"}
        if "Origin" in request.headers:
            if not self.origin_ok(now):
                log.info("ws rejected venue=upbit reason=origin-limit origin=%s", request.headers["Origin"])
                return web.Response(status=429, text="Too Many Requests",
                                    headers={"Remaining-Req": "group=origin; min=6; sec=0"})
        if self.connects.count(now) >= sim.cfg.upbit_connects_per_s:
            log.info("ws rejected venue=upbit reason=connect-rate")
            return web.Response(status=429, text="Too Many Requests", headers=hdr)
        self.connects.add(now)
        c, resp = await sim.accept(request, "upbit", None, False, hdr)
        if c is None:
            return resp
        c.fmt = "DEFAULT"
        log.info("ws open venue=upbit conn=%d origin=%s", c.id, request.headers.get("Origin", "-"))
        loop = asyncio.get_running_loop()
        c.tasks.append(loop.create_task(self._idle(c)))
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
                            status_task = loop.create_task(self._status(c))
                            c.tasks.append(status_task)
                        continue
                    self._subscribe(c, text)
        finally:
            sim.finish(c)
        return c.ws

    def _subscribe(self, c, text: str) -> None:
        sim = self.sim
        try:
            sub = parse_subscription(text, self.codes)
        except SubscriptionError as e:
            log.info("ws subscribe error venue=upbit conn=%d name=%s", c.id, e.name)
            c.push(ws_frame(ws_error(e.name, e.message).encode(), BINARY))
            asyncio.get_running_loop().call_later(0.15, lambda: asyncio.ensure_future(
                sim.close(c, 1000, "subscription error")))
            return
        c.fmt = sub["format"]
        c.active = {s for s, (_snap, real) in sub["subs"].items() if real}   # a new request replaces the old
        log.info("ws subscribe venue=upbit conn=%d streams=%s format=%s ignored=%s", c.id,
                 ",".join(sorted(sub["subs"])), c.fmt, ",".join(sub["ignored"]) or "-")
        snaps = [s for s, (snap, _real) in sub["subs"].items() if snap]
        # SNAPSHOT frames from the model (a replay sends exactly its capture, nothing more)
        if snaps and sim.market is not None and not sim.faults.stalled("upbit"):
            last = sim.market.last_frames("upbit", sim.pump.pumped, snaps)
            for s in snaps:
                raw = last.get(s)
                if raw is not None:
                    c.push(ws_frame(to_format(as_snapshot(raw), c.fmt).encode(), BINARY))

    async def _status(self, c) -> None:
        while not c.closed:
            await asyncio.sleep(10)
            c.push(ws_frame(b'{"status":"UP"}', BINARY))

    async def _idle(self, c) -> None:
        idle = self.sim.cfg.upbit_idle_timeout
        while not c.closed:
            left = idle_left(time.monotonic(), c.last_rx, c.last_tx, idle)
            if left <= 0:
                log.info("ws idle timeout venue=upbit conn=%d idle_s=%.0f", c.id, idle - left)
                self.sim.abort(c, "idle timeout")
                return
            await asyncio.sleep(min(1.0, left + 0.01))

    # ------------------------------------------------------------------ frames out
    def deliver(self, stream: str, raw: str, fid) -> int:
        by_fmt: dict[str, bytes] = {}
        delivered = 0
        push = self.sim.pump.push
        for c in self.sim.conns["upbit"]:
            if stream in c.active:
                fr = by_fmt.get(c.fmt)
                if fr is None:
                    fr = by_fmt[c.fmt] = ws_frame(to_format(raw, c.fmt).encode(), BINARY)
                push(c, fr)
                delivered += 1
        return delivered

    def replay(self, raw) -> None:
        """A captured frame, byte for byte, to every connection subscribed to it."""
        stream = upbit_stream(raw)
        if stream is None or self.sim.faults.stalled("upbit"):
            return
        fr = ws_frame(raw if isinstance(raw, bytes) else raw.encode(), BINARY)
        delivered = 0
        for c in self.sim.conns["upbit"]:
            if stream in c.active:
                self.sim.pump.push(c, fr)
                delivered += 1
        if delivered:
            self.sim.stat("upbit:" + stream).sent(delivered, _trade_id(stream, raw))

    def malformed_frame(self, kind: str, template: dict, seq: int) -> str:
        """One bad trade frame (a fault) built from the last real one: same ids, so a
        collector that stores it creates no gap; it must reject it by content."""
        d = dict(template)
        if kind == "not_json":
            return '{"type":"trade","code":"' + str(d.get("code", "KRW-BTC")) + '","trade_price":'
        if kind == "missing_keys":
            d.pop("trade_price", None)
            d.pop("trade_volume", None)
        elif kind == "wrong_types":
            d["trade_price"] = str(d.get("trade_price"))
            d["sequential_id"] = "sid-" + str(d.get("sequential_id"))
            d["ask_bid"] = 1
        elif kind == "nan":
            s = json.dumps(d, separators=(",", ":"), ensure_ascii=False)
            return s.replace('"trade_price":' + json.dumps(d.get("trade_price")), '"trade_price":NaN', 1)
        elif kind == "negative_price":
            d["trade_price"] = -abs(float(d.get("trade_price", 1) or 1))
        elif kind == "zero_price":
            d["trade_price"] = 0.0
        elif kind == "absurd_ts":
            d["trade_timestamp"] = 0 if seq % 2 else 99_999_999_999_999
            d["timestamp"] = d["trade_timestamp"]
        return json.dumps(d, separators=(",", ":"), ensure_ascii=False)

    def push_malformed(self, targets, stream: str, kind: str, text: str) -> None:
        fr = ws_frame(text.encode(), BINARY)
        for c in targets:
            c.push(fr)


def upbit_stream(raw) -> str | None:
    """The stream ("<code>@<type>") of a captured frame, in any format."""
    try:
        d = json.loads(raw)
    except ValueError:
        return None
    if isinstance(d, list) and d:
        d = d[0]
    if not isinstance(d, dict):
        return None
    t = d.get("type", d.get("ty"))
    c = d.get("code", d.get("cd"))
    if not t or not c:
        return None
    return f"{c}@{t}"


def _trade_id(stream: str, raw):
    if not stream.endswith("@trade"):
        return None
    try:
        d = json.loads(raw)
        return int(d.get("sequential_id", d.get("sid")))
    except (ValueError, TypeError):
        return None
