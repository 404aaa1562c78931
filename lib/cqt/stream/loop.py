"""StreamLoop: the receive threads (see the package docstring for what they do)."""
from __future__ import annotations

import logging
import struct
import threading
import time
from typing import Any, Callable, Iterable

import websocket

from ..redact import redact
from ..rest import location_refused_message
from ..timeutil import now_ms
from ..venues.common import Parsed, Reject
from .backoff import Backoff, ConnectPacer
from .buffer import RowBuffer
from .connection import Connection, open_endpoint
from .endpoints import NO_RULE, Endpoint, Gap, Handler, StreamRule
from .settings import LoopSettings
from .state import StreamState, symbols_snapshot

log = logging.getLogger("cqt.stream")


class StreamLoop:
    """Run endpoints in receive threads; see the module docstring.

    `svc` is a `cqt.runtime.Service` (writer, rejects, count, stopping); `handler.on_gap`
    receives detected gaps; `capture` is an optional `cqt.capture.CaptureWriter`.
    """

    def __init__(self, svc: Any, endpoints: Iterable[Endpoint], handler: Handler | None,
                 settings: LoopSettings | None = None, *, service: str | None = None, capture: Any = None,
                 clock: Callable[[], float] = time.monotonic, connect: Callable[..., Any] | None = None,
                 wait: Callable[[float], bool] | None = None):
        self.svc = svc
        svc_settings = getattr(svc, "settings", None)
        self.secrets: tuple[str, ...] = tuple(getattr(svc_settings, "secrets", ()) or ())
        self.clock = clock
        self.connect = connect or websocket.create_connection
        self.stop_event = threading.Event()
        self.wait = wait or self.stop_event.wait
        self.writer = svc.writer
        self.service = service or svc.name
        self.handler = handler
        self.cfg = settings or LoopSettings()
        self.capture = capture
        self.states: dict[str, StreamState] = {}
        self._states_lock = threading.Lock()
        self.pacer = ConnectPacer(self.cfg.connect_interval_s, clock)
        self.conns: list[Connection] = []
        for ep in endpoints:
            c = Connection(ep, Backoff(self.cfg.backoff_base_s, self.cfg.backoff_cap_s, self.cfg.backoff_reset_s),
                      RowBuffer(self.writer, self.cfg.flush_rows, self.cfg.flush_s), clock)
            for name, rule in ep.rules.items():
                c.streams[name] = self.state(name, ep.source, rule)
            self.conns.append(c)

    # -- shared state --------------------------------------------------------------------
    def state(self, name: str, source: str = "", rule: StreamRule | None = None) -> StreamState:
        st = self.states.get(name)
        if st is None:
            with self._states_lock:
                st = self.states.get(name)
                if st is None:
                    st = self.states[name] = StreamState(name, source, rule or NO_RULE)
        return st

    def seed(self, positions: dict[str, tuple[int | None, int | None]]) -> None:
        """Resume positions from `resume_state` (stream -> (last_id, last_ts_ms))."""
        for name, (last_id, last_ts) in positions.items():
            st = self.states.get(name)
            if st is not None:
                st.seed(last_id, last_ts)

    # -- control ---------------------------------------------------------------------------
    def start(self) -> None:
        for c in self.conns:
            c.thread = threading.Thread(target=self._run, args=(c,), name=f"ws:{c.ep.name}", daemon=True)
            c.thread.start()

    def stop(self, timeout: float = 2.5) -> None:
        """Ask every receive thread to flush and close; wait up to `timeout` in total."""
        self.stop_event.set()
        end = self.clock() + timeout
        for c in self.conns:
            if c.thread is not None:
                c.thread.join(max(0.05, end - self.clock()))

    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set() or self.svc.stopping.is_set()

    def healthy(self, max_silence_s: float | None = None) -> bool:
        """Every receive thread is cycling (not: data is flowing)."""
        limit = max_silence_s or (self.cfg.connect_timeout_s + 5.0)
        now = self.clock()
        return all(c.thread is not None and c.thread.is_alive() and now - c.tick <= limit for c in self.conns)

    def status_line(self) -> tuple[str, str]:
        """(heartbeat state, one human line) for Service.set_state."""
        parts = []
        state = "running"
        for c in self.conns:
            if c.state != "connected":
                state = "reconnecting"
            parts.append(f"{c.ep.name} {c.state}" + (f" (attempt {c.backoff.attempt})" if c.state != "connected"
                                                     and c.backoff.attempt else ""))
        return state, ", ".join(parts)

    def snapshot(self) -> dict:
        now = self.clock()
        eps = {}
        for c in self.conns:
            up_since = c.connected_at
            eps[c.ep.name] = {
                "state": c.state, "connects": c.connects, "reconnects": c.reconnects,
                "failed_attempts": c.failures, "backoff_attempt": c.backoff.attempt,
                "uptime_s": round(now - up_since, 1) if c.state == "connected" and up_since is not None else 0,
                "last_reason": c.last_reason or None, "last_error": c.last_error or None,
                "frames": c.total_frames, "buffer_rows": c.buffer.n,
            }
        return {"endpoints": eps, "symbols": symbols_snapshot(list(self.states.values()), now)}

    # -- receive thread -----------------------------------------------------------------------
    def _run(self, c: Connection) -> None:
        reason = "start"
        if any(st.pos_ts is not None or st.last_id is not None for st in c.streams.values()):
            reason = "restart"
        delay_next = False
        while not self.stopping:
            c.tick = self.clock()
            try:
                if delay_next and not self._backoff_sleep(c):
                    break
                ws = self._open(c)
                if ws is None:
                    delay_next = True
                    continue
                ended = self._receive(c, ws, reason)
            except Exception as exc:  # noqa: BLE001 - a bug in one frame path must not end the thread
                log.error("receive loop error endpoint=%s: %s", c.ep.name, exc, exc_info=True)
                ended = f"error: {type(exc).__name__}"
                self._close(c)
            self._flush(c)
            if self.stopping:
                break
            uptime = 0.0
            if c.connected_at is not None:      # only a connection that was up may reset the backoff
                uptime = self.clock() - c.connected_at
                c.connected_at = None
                c.backoff.connection_ended(uptime)
            c.last_reason = ended
            c.reconnects += 1
            c.state = "reconnecting"
            kind = ended.split(":", 1)[0].split(" ", 1)[0]
            reason = {"stall": "stall", "shutdown": "shutdown"}.get(kind, "reconnect")
            delay_next = kind != "shutdown"
            log.warning("websocket disconnected endpoint=%s reason=%s", c.ep.name, kind)
            log.info("disconnected endpoint=%s detail=%s uptime_s=%.1f", c.ep.name, ended.replace(" ", "_"), uptime)
        self._flush(c, final=True)
        self._close(c)
        c.state = "stopped"

    def _backoff_sleep(self, c: Connection) -> bool:
        """Wait the next backoff delay (interruptible); False when stopping."""
        attempt, delay, ceiling = c.backoff.next_delay()
        c.delays.append(delay)
        del c.delays[:-100]
        log.info("reconnect endpoint=%s attempt=%d delay_s=%.3f ceiling_s=%.3f", c.ep.name, attempt, delay, ceiling)
        return self._sleep(c, delay)

    def _sleep(self, c: Connection, delay: float) -> bool:
        """Wait `delay` s in short steps (the thread keeps counting as cycling); False when stopping."""
        end = self.clock() + delay
        while True:
            c.tick = self.clock()
            left = end - c.tick
            if left <= 0:
                return not self.stopping
            if self.wait(min(left, 0.25)) or self.svc.stopping.is_set():
                return False

    def _open(self, c: Connection, paced: bool = True) -> websocket.WebSocket | None:
        """Connect and subscribe. `paced`: first wait for this endpoint's slot of the
        connection pacer (a rollover takes a free slot itself, see `_periodic`)."""
        ep = c.ep
        c.state = "connecting"
        if paced:
            wait = self.pacer.reserve()
            if wait > 0:
                log.debug("connect endpoint=%s paced: waiting %.3f s for a connection slot", ep.name, wait)
                if not self._sleep(c, wait):
                    return None
        try:
            ws = open_endpoint(self.connect, ep, self.cfg)
        except Exception as exc:  # noqa: BLE001 - a bad URL or timeout (ValueError, OverflowError) fails the same way
            c.failures += 1
            c.last_error = _short(exc, self.secrets)
            c.state = "reconnecting"
            if getattr(exc, "status_code", None) == 451:
                self._location_refused(c)
                return None
            c.connect_failures.failed(c.last_error, f"connect failed endpoint={ep.name} "
                                                    f"error={c.last_error.replace(' ', '_')}")
            return None
        c.connects += 1
        c.location_refused = False
        c.connect_failures.ended(f"connect succeeded endpoint={ep.name}")
        log.info("connected endpoint=%s url=%s connects=%d", ep.name, _safe_url(ep.url), c.connects)
        return ws

    def _location_refused(self, c: Connection) -> None:
        """A 451 handshake: the venue refuses this host's location, so reconnecting soon cannot
        help. One ERROR, then a long wait (further refusals at DEBUG)."""
        if not c.location_refused:
            log.error("%s (websocket endpoint; next attempt in %.0f s)", location_refused_message(c.ep.name),
                      self.cfg.location_backoff_s)
            c.location_refused = True
        else:
            log.debug("connect refused endpoint=%s http 451 restricted location", c.ep.name)
        self._sleep(c, self.cfg.location_backoff_s)

    def _receive(self, c: Connection, ws: websocket.WebSocket, reason: str) -> str:
        now = self.clock()
        c.ws = ws
        c.connected_at = c.last_rx = c.last_ping = now
        c.state = "connected"
        c.shutdown = False
        for st in c.streams.values():
            st.advanced_at = now           # grace: each watched stream gets its full threshold
        self._mark_connected(c, reason)
        next_periodic = now
        cfg = self.cfg
        handle = self._handle
        while True:
            try:
                opcode, data = ws.recv_data()
            except websocket.WebSocketTimeoutException:
                opcode = None
            except (websocket.WebSocketConnectionClosedException, websocket.WebSocketException, OSError) as exc:
                self._close(c)
                return f"error: {_short(exc, self.secrets)}"
            now = self.clock()
            c.tick = now
            if opcode is not None:
                c.last_rx = now
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                    self._close(c)
                    return f"closed code={code}"
                handle(c, data, now)
                if c.shutdown:
                    self._close(c)
                    return "shutdown: serverShutdown event"
            if c.buffer.n >= cfg.flush_rows:
                self._flush(c)
            if now >= next_periodic:
                next_periodic = now + 0.05
                if self.stopping:
                    self._close(c)
                    return "stopping"
                ended = self._periodic(c, now)
                if ended:
                    self._close(c)
                    return ended
                if c.ws is not ws:          # rolled over
                    ws = c.ws

    def _mark_connected(self, c: Connection, reason: str) -> None:
        # every stream seen on this endpoint is in c.streams (with a rule or not); streams of
        # the other endpoints of the same source are not touched: their connections are up
        for st in c.streams.values():
            st.after_connect = reason

    def _periodic(self, c: Connection, now: float) -> str | None:
        """Every ~50 ms: flush, thinning slots, stall watchdog, idle ping, rollover."""
        self._emit_thinned(c, now)
        if c.buffer.due(now):
            self._flush(c)
        for st in c.streams.values():
            s = st.rule.stall_s
            if s and now - st.advanced_at > s:
                log.warning("stall endpoint=%s stream=%s: no new event for more than %g s; reconnecting",
                            c.ep.name, st.name, s)
                return f"stall: {st.name}"
        ep = c.ep
        if ep.idle_ping_s and now - c.last_rx >= ep.idle_ping_s and now - c.last_ping >= ep.idle_ping_s:
            c.last_ping = now
            try:
                c.ws.send(ep.ping_text)
            except (OSError, websocket.WebSocketException) as exc:
                return f"error: ping failed: {_short(exc, self.secrets)}"
        if now - c.connected_at >= self.cfg.max_age_s and now >= c.rollover_retry_at:
            wait = self.pacer.try_take()
            if wait > 0:                    # another endpoint is connecting: come back for a free slot
                c.rollover_retry_at = now + wait
            else:
                self._rollover(c)
        return None

    def _rollover(self, c: Connection) -> None:
        """Open the replacement first, read both until it delivers, then close the old one."""
        old = c.ws
        log.info("rollover endpoint=%s age_s=%.0f: opening the replacement connection",
                 c.ep.name, self.clock() - c.connected_at)
        new = self._open(c, paced=False)
        if new is None:
            c.state = "connected"
            c.rollover_retry_at = self.clock() + min(60.0, self.cfg.max_age_s / 10 + 1)
            log.warning("rollover failed endpoint=%s; keeping the old connection", c.ep.name)
            return
        self._mark_connected(c, "rollover")
        overlap = 0.05
        old.settimeout(overlap)
        new.settimeout(overlap)
        deadline = self.clock() + self.cfg.rollover_overlap_s
        got_new = False
        old_alive = True
        while self.clock() < deadline and not got_new and not self.stopping:
            for w in ((old, new) if old_alive else (new,)):
                try:
                    opcode, data = w.recv_data()
                except websocket.WebSocketTimeoutException:
                    continue
                except (websocket.WebSocketException, OSError):
                    if w is old:
                        old_alive = False
                        continue
                    log.warning("rollover endpoint=%s: replacement failed during overlap", c.ep.name)
                    _close_quietly(new)
                    old.settimeout(self.cfg.recv_timeout_s)
                    c.state = "connected"
                    c.rollover_retry_at = self.clock() + 30.0
                    return
                c.tick = self.clock()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    if w is old:
                        old_alive = False
                    continue
                self._handle(c, data, c.tick)
                if w is new:
                    got_new = True
        _close_quietly(old)
        new.settimeout(self.cfg.recv_timeout_s)
        c.ws = new
        c.connected_at = c.last_rx = self.clock()
        c.state = "connected"
        log.info("rollover done endpoint=%s new_connection_delivered=%s", c.ep.name, got_new)

    def _handle(self, c: Connection, data: bytes, now_mono: float) -> None:
        """One frame: capture, parse, ids/gaps, position, rows. The hot path."""
        recv_ts = now_ms()
        c.frames += 1
        c.total_frames += 1
        ep = c.ep
        if self.capture is not None:
            self.capture.ws(ep.source, data, recv_ts)
        try:
            p = ep.parse(data, recv_ts)
        except Reject as r:
            c.rejects += 1
            sym = ep.reject_symbol(data) if ep.reject_symbol is not None else None
            if sym is not None:
                c.rejects_by_symbol[sym] = c.rejects_by_symbol.get(sym, 0) + 1
            self.svc.rejects.record(r.source or ep.source, r.reason, data, recv_ts, symbol=sym)
            return
        if not p.table:
            self._control(c, p)
            return
        st = c.streams.get(p.stream)
        if st is None:
            st = self.state(p.stream, ep.source, ep.rules.get(p.stream))
            c.streams[p.stream] = st
        st.frames += 1
        ev = p.event_ts_ms
        pid, pts = ep.position(p)
        after = st.after_connect
        if after is not None:
            st.after_connect = None
            if st.first_live_ts is None:
                st.first_live_ts = ev
            self._window(c, st, after, p, pts, recv_ts)
        if p.ids is not None:
            self._ids(c, st, p, after, recv_ts)
        if ev is not None:
            if st.last_event_ts is None or ev > st.last_event_ts:
                st.last_event_ts = ev
                st.advanced_at = now_mono
            st.lag_ms = recv_ts - ev
        if pts is not None and (st.pos_ts is None or pts >= st.pos_ts):
            st.pos_ts = pts
            if pid is not None and (st.pos_id is None or pid > st.pos_id or p.ids is None):
                st.pos_id = pid
            st.dirty = True
        elif pid is not None and p.ids is not None and (st.pos_id is None or pid > st.pos_id):
            st.pos_id = pid
            st.dirty = True
        thin = st.rule.thin_ms
        if thin and ev is not None:
            self._thin(c, st, p, ev, thin, now_mono)
        else:
            c.buffer.add(p.sql, p.rows)
            c.rows += len(p.rows)
            st.rows += len(p.rows)

    def _control(self, c: Connection, p: Parsed) -> None:
        kind = p.kind
        if kind == "shutdown":
            log.warning("server shutdown announced endpoint=%s; reconnecting now", c.ep.name)
            c.shutdown = True
        elif kind == "error":
            log.warning("server error message endpoint=%s: %s", c.ep.name, p.detail)
        elif kind == "control":
            log.debug("control endpoint=%s %s", c.ep.name, p.detail)

    def _ids(self, c: Connection, st: StreamState, p: Parsed, after: str | None, recv_ts: int) -> None:
        first, last = p.ids
        gap = None
        with st.lock:
            prev = st.last_id
            if st.first_live_id is None:
                st.first_live_id = first
            if prev is None:
                st.last_id = last
            elif first > prev + 1:
                gap = (prev + 1, first - 1)
                st.last_id = last
            elif last > prev:
                st.last_id = last
        if gap is not None and self.handler is not None:
            self.handler.on_gap(Gap(c.ep.source, st.name, after or "id_jump", recv_ts, gap[0], gap[1],
                                    st.last_event_ts, p.event_ts_ms))

    def _window(self, c: Connection, st: StreamState, reason: str, p: Parsed, pts: int | None, recv_ts: int) -> None:
        """First event of a stream after a (re)connect: report the window if it is too long."""
        gm = st.rule.gap_min_ms
        if gm is None or p.ids is not None or pts is None or st.pos_ts is None:
            return
        if pts - st.pos_ts > gm and self.handler is not None:
            self.handler.on_gap(Gap(c.ep.source, st.name, reason, recv_ts, None, None, st.pos_ts, pts))

    def _thin(self, c: Connection, st: StreamState, p: Parsed, ev: int, thin: int, now_mono: float) -> None:
        slot = ev // thin
        if slot <= st.emitted_slot:
            st.thinned += 1                 # late frame of a slot already stored
            return
        if st.pending is not None and slot != st.pending_slot:
            self._emit(c, st)
        elif st.pending is not None:
            st.thinned += 1
        st.pending = p.rows[-1]
        st.pending_sql = p.sql
        st.pending_slot = slot
        st.pending_at = now_mono

    def _emit(self, c: Connection, st: StreamState) -> None:
        row = st.pending
        if row is None:
            return
        st.pending = None
        st.emitted_slot = st.pending_slot
        c.buffer.add(st.pending_sql, [row])
        c.rows += 1
        st.rows += 1

    def _emit_thinned(self, c: Connection, now_mono: float, force: bool = False) -> None:
        for st in c.streams.values():
            if st.pending is not None and (force or now_mono - st.pending_at >= st.rule.thin_ms / 1000.0):
                self._emit(c, st)

    def _flush(self, c: Connection, final: bool = False) -> None:
        if final:
            self._emit_thinned(c, self.clock(), force=True)
        resume = []
        ts = now_ms()
        for st in c.streams.values():
            if st.dirty:
                st.dirty = False
                resume.append((self.service, st.name, st.symbol, st.pos_id, st.pos_ts, ts))
        try:
            c.buffer.flush(resume)
        except RuntimeError as exc:            # writer is in a fatal state: the service is exiting
            log.error("cannot hand rows to the writer endpoint=%s: %s", c.ep.name, exc)
            c.buffer.by_sql, c.buffer.n = {}, 0
        if c.frames or c.rows or c.rejects:
            self._report_counts(c)

    def _report_counts(self, c: Connection) -> None:
        source = c.ep.source
        for sym, (frames, rows, rejects) in c.take_counts().items():
            self.svc.count(source, frames=frames, rows=rows, rejects=rejects, symbol=sym)

    def _close(self, c: Connection) -> None:
        ws, c.ws = c.ws, None
        if ws is not None:
            _close_quietly(ws)


def _close_quietly(ws: websocket.WebSocket) -> None:
    try:
        ws.close(timeout=0.2)
    except Exception:  # noqa: BLE001 - the peer may be gone already
        pass
    try:
        ws.shutdown()
    except Exception:  # noqa: BLE001
        pass


def _short(exc: BaseException, secrets: Iterable[str] = ()) -> str:
    """First line of an exception, keys masked before the cut to 120 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {redact(text, secrets, 120)}" if text else name


def _safe_url(url: str) -> str:
    """URL for logs without a query string (a key could travel there on some APIs)."""
    base, _, query = url.partition("?")
    return base + ("?streams=…" if "streams=" in query else "")
