"""The control API of cqt-sim: fault state and its application (`POST /_sim/fault`,
`--fault`), the REST fault rules, `GET /_sim/stats` and `GET|POST /_sim/clock`."""
from __future__ import annotations

import asyncio
import json
import logging
import time

from aiohttp import web

from . import faults as flt
from .assets import asset_of

BINANCE_KINDS = ("aggTrade", "markPrice@1s", "markPrice", "bookTicker", "forceOrder")   # aggTrade first
UPBIT_TYPES = ("trade", "orderbook", "ticker")                                          # trade first

log = logging.getLogger("cqt-sim")


class Faults:
    """Pending faults. WebSocket faults are kept per WebSocket venue; times are
    monotonic seconds."""

    def __init__(self, ws_venues: list[str]):
        self.ws_venues = list(ws_venues)
        self.applied: list[dict] = []
        self.stall_until = {v: 0.0 for v in ws_venues}
        self.refuse_until = {v: 0.0 for v in ws_venues}
        self.refuse_rest_until = 0.0
        self.gaps: dict[str, int] = {}
        self.stall_streams: dict[str, float] = {}        # one symbol's streams stalled until
        self.malformed_stream: dict[str, str] = {}       # venue -> stream of its pending bad frames
        self.malformed = {v: flt.MalformedQueue() for v in ws_venues}
        self.malformed_per_frame = {v: 4 for v in ws_venues}
        self.malformed_sent: dict[str, dict[str, int]] = {v: {} for v in ws_venues}
        self.http_rules: list[dict] = []
        self.last_trade_raw: dict[str, str] = {}

    def stalled(self, venue: str) -> bool:
        return self.stall_until[venue] > time.monotonic()

    def stream_stalled(self, stream: str) -> bool:
        until = self.stall_streams.get(stream)
        if until is None:
            return False
        if until > time.monotonic():
            return True
        del self.stall_streams[stream]
        return False

    def refused(self, venue: str) -> bool:
        return self.refuse_until[venue] > time.monotonic()

    def rest_refused(self) -> bool:
        return self.refuse_rest_until > time.monotonic()

    def clear(self) -> None:
        self.stall_until = {v: 0.0 for v in self.ws_venues}
        self.refuse_until = {v: 0.0 for v in self.ws_venues}
        self.refuse_rest_until = 0.0
        self.gaps.clear()
        self.stall_streams.clear()
        for q in self.malformed.values():
            q.clear()
        self.http_rules.clear()

    def take_rule(self, path: str, only_errors: bool = False):
        """The next REST fault rule for `path` (used up by count)."""
        for r in self.http_rules:
            if r["count"] > 0 and flt.path_matches(r["path"], path) and not (only_errors and r["kind"] == "slow"):
                r["count"] -= 1
                if r["count"] <= 0:
                    self.http_rules.remove(r)
                return r
        return None

    def pending(self, now: float) -> dict:
        return {"gaps": self.gaps, "malformed": {v: len(q) for v, q in self.malformed.items()},
                "http": self.http_rules,
                "stall_s": {v: max(0.0, round(t - now, 3)) for v, t in self.stall_until.items()},
                "stall_streams_s": {s: round(t - now, 3) for s, t in self.stall_streams.items() if t > now},
                "refuse_s": {v: max(0.0, round(t - now, 3)) for v, t in self.refuse_until.items()}}


class Control:
    """The /_sim endpoints of one server."""

    def __init__(self, sim):
        self.sim = sim

    def add_routes(self, router) -> None:
        router.add_post("/_sim/fault", self.fault_handler)
        router.add_get("/_sim/stats", self.stats_handler)
        router.add_get("/_sim/clock", self.clock_handler)
        router.add_post("/_sim/clock", self.clock_handler)

    # ------------------------------------------------------------------ faults
    async def fault_handler(self, request: web.Request):
        try:
            f = flt.parse_request(await request.read())
            self.symbol_streams(f)
        except flt.FaultError as e:
            return web.json_response({"ok": False, "error": str(e), "field": e.field}, status=400)
        if "at" in f:
            delay = f.pop("at")
            asyncio.get_running_loop().call_later(delay, self.apply_fault, f)
            log.info("fault scheduled kind=%s in_s=%.1f", f["kind"], delay)
            return web.json_response({"ok": True, "scheduled_in_s": delay, "fault": f})
        self.apply_fault(f)
        return web.json_response({"ok": True, "fault": f})

    def symbol_streams(self, f: dict) -> dict[str, list[str]] | None:
        """The streams of the fault's `symbol` per WebSocket venue it targets (None: no
        symbol); FaultError when no targeted venue serves it."""
        name = f.get("symbol")
        if name is None:
            return None
        sim = self.sim
        asset = asset_of(name)
        venues = [f["source"]] if f.get("source") else list(self.sim.faults.ws_venues)
        out: dict[str, list[str]] = {}
        if "binance" in venues and asset in sim.assets:
            out["binance"] = [f"{asset.lower()}usdt@{k}" for k in BINANCE_KINDS]
        code = f"KRW-{asset}"
        if "upbit" in venues and code in sim.upbit_codes:
            out["upbit"] = [f"{code}@{t}" for t in UPBIT_TYPES]
        if not out:
            raise flt.FaultError(f"{f['kind']}: symbol {name!r} is not served (--symbols "
                                 f"{','.join(sim.assets)}; Upbit KRW-USDT too)", "symbol")
        return out

    def apply_fault(self, f: dict) -> None:
        if "at" in f:
            f = dict(f)
            delay = f.pop("at")
            asyncio.get_running_loop().call_later(delay, self.apply_fault, f)
            return
        sim = self.sim
        st = sim.faults
        kind = f["kind"]
        venues = [f["source"]] if f.get("source") else list(st.ws_venues)
        try:
            by_symbol = self.symbol_streams(f)
        except flt.FaultError as e:
            log.warning("fault not applied: %s", e)
            return
        if by_symbol is not None:
            venues = [v for v in venues if v in by_symbol]
        now = time.monotonic()
        st.applied.append(dict(f, applied_at_ms=sim.clock.now_ms()))
        del st.applied[:-1000]
        log.info("fault applied %s", json.dumps(f, separators=(",", ":")))
        if kind == "drop":
            for v in venues:
                for c in list(sim.conns[v]):
                    if by_symbol is not None and not c.active.intersection(by_symbol[v]):
                        continue
                    if f.get("close_code"):
                        asyncio.ensure_future(sim.close(c, f["close_code"], "dropped (fault)"))
                    else:
                        sim.abort(c, "dropped (fault)")
        elif kind == "stall":
            for v in venues:
                if by_symbol is None:
                    st.stall_until[v] = now + f["seconds"]
                else:
                    for s in by_symbol[v]:
                        st.stall_streams[s] = now + f["seconds"]
        elif kind == "refuse":
            for v in venues:
                st.refuse_until[v] = now + f["seconds"]
            if f.get("rest"):
                st.refuse_rest_until = now + f["seconds"]
        elif kind == "gap":
            if f.get("stream"):
                streams = [f["stream"]]
            elif by_symbol is not None:
                streams = [by_symbol[v][0] for v in venues]          # the trade stream first
            else:
                streams = [sim.protocols[v].trade_stream for v in ("binance", "upbit") if v in venues]
            for s in streams:
                st.gaps[s] = st.gaps.get(s, 0) + f["ids"]
        elif kind == "malformed":
            for v in venues:
                st.malformed[v].add(f["kinds"], f["count"])     # produced lazily, per_frame at a time
                st.malformed_per_frame[v] = f["per_frame"]
                if by_symbol is not None:
                    st.malformed_stream[v] = by_symbol[v][0]
                else:
                    st.malformed_stream.pop(v, None)
        elif kind in ("http_error", "slow"):
            st.http_rules.append(dict(f))
        elif kind == "clear":
            st.clear()
            for p in sim.protocols.values():
                p.clear_faults()
        else:
            for p in sim.protocols.values():
                if p.apply_fault(f):
                    break

    def rule_response(self, rule: dict, venue: str, path: str, params: dict):
        """The answer a REST fault rule gives instead of the real one."""
        status = rule["status"]
        kind = rule["body"]
        headers = {}
        if status in (429, 418) and rule.get("retry_after"):
            headers["Retry-After"] = str(rule["retry_after"])
        if kind == "truncated":
            _s, real = self.sim.answer(venue, path, params)
            body = real[: max(1, len(real) // 2)]
        elif kind == "non_json":
            body = f"<html><head><title>{status} Bad Gateway</title></head><body><h1>{status}</h1></body></html>"
        elif kind == "empty":
            body = ""
        else:
            body = self.sim.protocols[venue].error_body(status)
        log.info("rest fault path=%s status=%d body=%s", path, status, kind)
        return status, body, headers

    # ------------------------------------------------------------------ stats, clock
    async def stats_handler(self, request: web.Request):
        sim = self.sim
        with_ids = request.query.get("ids", "1") not in ("0", "false", "no")
        only = request.query.get("stream")
        now = time.monotonic()
        streams = {k: s.as_dict(with_ids) for k, s in sorted(sim.stats.items())
                   if only is None or k == only or k.split(":", 1)[1] == only}
        conns = [{"id": c.id, "venue": c.venue, "path": c.path, "route": c.route, "combined": c.combined,
                  "streams": sorted(c.streams or c.active), "active": sorted(c.active), "format": c.fmt,
                  "sent": c.sent, "queued": len(c.q), "age_s": round(now - c.opened, 3)}
                 for v in sim.conns.values() for c in sorted(v, key=lambda c: c.id)]
        body = {
            "mode": "replay" if sim.capture else "model",
            "model_time_ms": sim.clock.now_ms(), "paused": sim.clock.paused, "speed": sim.cfg.speed,
            "uptime_s": round(now - sim.started_mono, 3),
            "streams": streams,
            "malformed": sim.faults.malformed_sent,
            "connections": conns,
            "connections_total": sim.conn_total,
            "closed": sim.closed_reasons,
            "faults": {"applied": sim.faults.applied[-50:], "pending": sim.faults.pending(now)},
            "rest": {"requests": sim.rest_counts, "status": sim.rest_status},
        }
        for p in sim.protocols.values():
            p.add_stats(body)
        if sim.capture is not None:
            total = len(sim.capture.frames)
            body["replay"] = {"frames_total": total, "frames_sent": sim.pump.replay_sent,
                              "done": sim.pump.replay_sent >= total}
        if sim.market is not None:
            m = sim.market.model
            body["model"] = {"seed": m.seed, "origin_ms": m.origin_ms, "start_ms": m.start_ms}
        return web.json_response(body)

    async def clock_handler(self, request: web.Request):
        clock = self.sim.clock
        if request.method == "POST":
            try:
                spec = await request.json()
            except ValueError:
                spec = {}
            action = spec.get("action") if isinstance(spec, dict) else None
            if action == "pause":
                clock.pause()
            elif action == "resume":
                clock.resume()
            else:
                return web.json_response({"ok": False, "error": "action must be 'pause' or 'resume'"}, status=400)
            log.info("clock %s model_time_ms=%d", action, clock.now_ms())
        return web.json_response({"ok": True, "paused": clock.paused, "model_time_ms": clock.now_ms()})
