"""The one WebSocket loop every WebSocket collector runs (Upbit, Binance USD-M futures).

A collector describes its connections as `Endpoint`s (URL, subscription, the pure parser,
a `StreamRule` per canonical stream) and hands them to a `StreamLoop`, which runs one
receive thread per endpoint:

    connect (websocket-client; skip_utf8_validation — the JSON parser validates anyway;
             optional suppress_origin for Upbit) -> send the subscription ->
    receive with a short timeout (so stop requests and the watchdog are seen at once) ->
    capture the raw frame -> parse -> rows into a per-endpoint RowBuffer, which hands
    them to the Service's BatchWriter in chunks, each followed by the resume position
    of its streams (same queue, so a kill -9 can only make the resume lag).

Around that:

* stall watchdog per stream, keyed on the exchange's event time: no newer event for
  `StreamRule.stall_s` seconds -> reconnect (streams without a rule, like forceOrder,
  are never watched);
* reconnect on every close (even code 1000), error or stall, with exponential backoff
  and full jitter (tenacity's wait_random_exponential: delay in [0, min(cap, base*2^(n-1))]),
  reset only after a connection that was up stayed up `backoff_reset_s` (a failed connect
  never resets it); Binance serverShutdown -> immediate reconnect without backoff; a
  connect failure is logged when it starts or changes, then once a minute with a count;
* planned rollover before the exchange's 24 h cut: the new connection is opened and
  subscribed first, both are read until the new one delivers, then the old one is closed
  (duplicates are harmless: inserts are idempotent and id tracking keeps the high-water);
* Upbit: a text `PING` when nothing was received for `idle_ping_s`;
* gap hook: id jumps on id-sequenced streams (Binance aggTrade ids are consecutive) and,
  after a (re)connect, the window between the last event before and the first after
  (`StreamRule.gap_min_ms`) become `Gap`s passed to `handler.on_gap`, so the collector
  records and backfills them;
* thinning (`StreamRule.thin_ms`): at most one row per slot of event time, the last one.

All timers use the monotonic clock; `recv_ts_ms` is `cqt.timeutil.now_ms()`.
"""
from __future__ import annotations

import itertools
import logging
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

import websocket
from tenacity import wait_random_exponential

from .venues.common import Parsed, Reject
from .timeutil import now_ms

log = logging.getLogger("cqt.stream")

RESUME_SQL = ("INSERT OR REPLACE INTO resume_state (service, stream, last_id, last_ts_ms, updated_ts_ms) "
              "VALUES (?, ?, ?, ?, ?)")


# ------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class LoopSettings:
    """Knobs of the loop; `from_settings` reads the CQT_* variables (see docs/collectors.md)."""
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    backoff_reset_s: float = 60.0
    max_age_s: float = 23 * 3600.0
    connect_timeout_s: float = 10.0
    recv_timeout_s: float = 0.5
    rollover_overlap_s: float = 5.0
    flush_rows: int = 1000
    flush_s: float = 0.05

    @classmethod
    def from_settings(cls, settings: Any) -> "LoopSettings":
        g = settings.get_float
        return cls(
            backoff_base_s=g("CQT_BACKOFF_BASE_S", 1.0, 0.001),
            backoff_cap_s=g("CQT_BACKOFF_CAP_S", 60.0, 0.001),
            backoff_reset_s=g("CQT_BACKOFF_RESET_S", 60.0, 0.0),
            max_age_s=g("CQT_WS_MAX_AGE_S", 23 * 3600.0, 1.0),
            connect_timeout_s=g("CQT_WS_CONNECT_TIMEOUT_S", 10.0, 0.1),
            recv_timeout_s=min(1.0, g("CQT_WS_RECV_TIMEOUT_S", 0.5, 0.01)),
        )


class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base*2^(n-1)))."""

    def __init__(self, base_s: float, cap_s: float, reset_s: float):
        self.base_s = base_s
        self.cap_s = cap_s
        self.reset_s = reset_s
        self.attempt = 0
        self._wait = wait_random_exponential(multiplier=base_s, max=cap_s)

    def ceiling(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2 ** min(attempt - 1, 60))

    def next_delay(self) -> tuple[int, float, float]:
        """(attempt number, delay s, ceiling s) for the next attempt."""
        self.attempt += 1
        return self.attempt, float(self._wait(_Attempt(self.attempt))), self.ceiling(self.attempt)

    def connection_ended(self, uptime_s: float) -> None:
        """A connection that stayed up long enough resets the attempt count."""
        if uptime_s >= self.reset_s:
            self.attempt = 0


class _Attempt:
    __slots__ = ("attempt_number",)

    def __init__(self, n: int):
        self.attempt_number = n


# ------------------------------------------------------------------------------ description
@dataclass(frozen=True)
class StreamRule:
    """Per canonical stream (e.g. 'BTCUSDT@markPrice').

    stall_s     no newer exchange event for this long while connected -> reconnect (None: never)
    gap_min_ms  after a (re)connect, a window between the last event before and the first
                after that is longer than this is reported as a Gap (None: not checked;
                id-sequenced streams report exact id gaps instead)
    thin_ms     keep at most one row per this many ms of event time, the last in each slot
    """
    stall_s: float | None = None
    gap_min_ms: int | None = None
    thin_ms: int = 0


NO_RULE = StreamRule()


def default_position(p: Parsed) -> tuple[int | None, int | None]:
    """Resume position of a parsed frame: (last id, event time)."""
    return (p.ids[1] if p.ids else None), p.event_ts_ms


@dataclass
class Endpoint:
    """One WebSocket connection the loop keeps open."""
    name: str                                    # 'market', 'public', 'upbit'
    url: str
    source: str                                  # 'binance_ws' | 'upbit' (captures, rejects, gaps)
    parse: Callable[[Any, int], Parsed]          # pure parser; raises Reject
    rules: dict[str, StreamRule] = field(default_factory=dict)
    subscribe: tuple[str, ...] = ()              # text messages sent after connecting
    suppress_origin: bool = False
    idle_ping_s: float | None = None             # send `ping_text` after this long without frames
    ping_text: str = "PING"
    position: Callable[[Parsed], tuple[int | None, int | None]] = default_position


@dataclass
class Gap:
    """Missing data the loop detected; the collector records (and maybe backfills) it."""
    source: str
    stream: str
    reason: str                     # id_jump | reconnect | stall | rollover | shutdown | restart | initial
    detected_ts_ms: int
    from_id: int | None = None
    to_id: int | None = None
    from_ts_ms: int | None = None
    to_ts_ms: int | None = None
    row_id: int | None = None       # gaps.id once inserted (set in the writer thread)
    filled_rows: int = 0

    @property
    def n_ids(self) -> int | None:
        if self.from_id is None or self.to_id is None:
            return None
        return self.to_id - self.from_id + 1


class Handler(Protocol):
    def on_gap(self, gap: Gap) -> None: ...


class StreamState:
    """What the loop knows about one canonical stream (shared by rollover connections)."""

    __slots__ = ("name", "source", "rule", "frames", "rows", "last_event_ts", "advanced_at",
                 "lag_ms", "last_id", "first_live_id", "first_live_ts", "pos_id", "pos_ts", "dirty", "after_connect",
                 "lock", "pending", "pending_sql", "pending_slot", "pending_at", "emitted_slot", "thinned")

    def __init__(self, name: str, source: str, rule: StreamRule):
        self.name = name
        self.source = source
        self.rule = rule
        self.frames = 0
        self.rows = 0
        self.last_event_ts: int | None = None
        self.advanced_at = time.monotonic()
        self.lag_ms: int | None = None
        self.last_id: int | None = None          # high-water id seen live (id streams)
        self.first_live_id: int | None = None    # first id seen live in this process
        self.first_live_ts: int | None = None    # event time of the first frame seen live in this process
        self.pos_id: int | None = None           # resume position
        self.pos_ts: int | None = None
        self.dirty = False
        self.after_connect: str | None = None    # reason of the last (re)connect until first event
        self.lock = threading.Lock()
        self.pending: tuple | None = None        # thinning: last row of the current slot
        self.pending_sql = ""
        self.pending_slot = -1
        self.pending_at = 0.0
        self.emitted_slot = -1
        self.thinned = 0

    def seed(self, last_id: int | None, last_ts: int | None) -> None:
        """Resume from a previous process: ids continue from last_id."""
        with self.lock:
            self.last_id = last_id
            self.pos_id = last_id
            self.pos_ts = last_ts
            self.last_event_ts = last_ts

    def claim_live_start(self, last_id: int) -> bool:
        """Initial backfill caught up before any live frame: live ids continue from last_id."""
        with self.lock:
            if self.last_id is None:
                self.last_id = last_id
                return True
            return False

    def snapshot(self, now_mono: float) -> dict:
        d = {"frames": self.frames, "rows": self.rows, "last_event_ts_ms": self.last_event_ts,
             "lag_ms": self.lag_ms, "silent_s": round(now_mono - self.advanced_at, 1)}
        if self.last_id is not None:
            d["last_id"] = self.last_id
        if self.thinned:
            d["thinned"] = self.thinned
        return d


# ------------------------------------------------------------------------------ buffering
PACK_ROWS = 256          # rows per multi-row INSERT: fewer statements, fewer GIL hand-overs in the writer


def pack_rows(sql: str, rows: list[tuple], k: int = PACK_ROWS) -> list[tuple[str, list]]:
    """Turn `INSERT OR IGNORE … VALUES (?,…)` + rows into multi-row statements
    (`VALUES (…),(…)…`, k rows each) plus the single-row statement for the rest.
    Same rows, same order, same conflict handling; other statements pass through."""
    n = len(rows)
    if n < k or not sql.startswith("INSERT OR IGNORE") or " ON CONFLICT" in sql:
        return [(sql, rows)]
    multi = _MULTI.get((sql, k))
    if multi is None:
        head, _, values = sql.partition(" VALUES ")
        multi = _MULTI[(sql, k)] = f"{head} VALUES {','.join([values] * k)}"
    full = n - n % k
    chain = itertools.chain.from_iterable
    params = [tuple(chain(rows[i:i + k])) for i in range(0, full, k)]
    out = [(multi, params)]
    if full < n:
        out.append((sql, rows[full:]))
    return out


_MULTI: dict[tuple[str, int], str] = {}
_ROWS_PER_STMT: dict[str, int] = {}


def rows_per_statement(stmt: str) -> int:
    """How many table rows one parameter tuple of `stmt` carries (k for a packed statement)."""
    n = _ROWS_PER_STMT.get(stmt)
    if n is None:
        n = _ROWS_PER_STMT[stmt] = stmt.partition(" VALUES ")[2].count("),(") + 1
    return n


class RowBuffer:
    """Rows of one receive thread, grouped by statement, handed to the writer in chunks."""

    def __init__(self, writer: Any, flush_rows: int, flush_s: float):
        self.writer = writer
        self.flush_rows = flush_rows
        self.flush_s = flush_s
        self.by_sql: dict[str, list] = {}
        self.n = 0
        self.first_at = 0.0

    def add(self, sql: str, rows: list) -> None:
        lst = self.by_sql.get(sql)
        if lst is None:
            self.by_sql[sql] = lst = []
        if not self.n:
            self.first_at = time.monotonic()
        lst.extend(rows)
        self.n += len(rows)

    def due(self, now_mono: float) -> bool:
        return self.n >= self.flush_rows or (self.n > 0 and now_mono - self.first_at >= self.flush_s)

    def flush(self, resume_rows: list[tuple]) -> int:
        n = self.n
        if n:
            by_sql, self.by_sql, self.n = self.by_sql, {}, 0
            for sql, rows in by_sql.items():
                for stmt, params in pack_rows(sql, rows):
                    self.writer.put_many(stmt, params, nrows=len(params) * rows_per_statement(stmt))
        if resume_rows:
            self.writer.put_many(RESUME_SQL, resume_rows)
        return n


# ------------------------------------------------------------------------------ the loop
class RepeatedLog:
    """A failure logged once when it starts or changes; the same failure again at most
    once per `every_s`, with how often it recurred. `ended()` reports the end of a run of
    failures. Keeps an endpoint that cannot connect from writing a line per attempt."""

    def __init__(self, logger: logging.Logger, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self.key: str | None = None
        self.repeats = 0          # since the last line
        self.total = 0            # in the current run of failures
        self.since = 0.0

    def failed(self, key: str, line: str) -> None:
        now = self.clock()
        self.total += 1
        if key != self.key:
            self.key, self.repeats, self.since = key, 0, now
            self.logger.warning("%s", line)
        elif now - self.since >= self.every_s:
            self.logger.warning("%s (%d more times in the last %.0f s)", line, self.repeats + 1, now - self.since)
            self.repeats, self.since = 0, now
        else:
            self.repeats += 1

    def ended(self, line: str) -> None:
        if self.key is not None:
            self.logger.warning("%s after %d failed attempts", line, self.total)
        self.key, self.repeats, self.total = None, 0, 0


class _Conn:
    """Per-endpoint runtime: the socket, counters, buffer (owned by its receive thread)."""

    def __init__(self, ep: Endpoint, backoff: Backoff, buffer: RowBuffer, clock: Callable[[], float]):
        self.ep = ep
        self.backoff = backoff
        self.buffer = buffer
        self.ws: websocket.WebSocket | None = None
        self.connected_at: float | None = None      # None while no connection is up
        self.connect_failures = RepeatedLog(log, clock=clock)
        self.last_rx = 0.0
        self.last_ping = 0.0
        self.tick = time.monotonic()
        self.connects = 0
        self.reconnects = 0
        self.failures = 0
        self.last_reason = ""
        self.last_error = ""
        self.delays: list[float] = []
        self.state = "starting"
        self.frames = self.rows = self.rejects = 0      # not yet reported to svc.count
        self.total_frames = 0
        self.streams: dict[str, StreamState] = {}
        self.shutdown = False
        self.rollover_retry_at = 0.0
        self.thread: threading.Thread | None = None


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
        self.conns: list[_Conn] = []
        for ep in endpoints:
            c = _Conn(ep, Backoff(self.cfg.backoff_base_s, self.cfg.backoff_cap_s, self.cfg.backoff_reset_s),
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
        streams = {name: st.snapshot(now) for name, st in list(self.states.items())}
        return {"endpoints": eps, "streams": streams}

    # -- receive thread -----------------------------------------------------------------------
    def _run(self, c: _Conn) -> None:
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

    def _backoff_sleep(self, c: _Conn) -> bool:
        """Wait the next backoff delay (interruptible); False when stopping."""
        attempt, delay, ceiling = c.backoff.next_delay()
        c.delays.append(delay)
        del c.delays[:-100]
        log.info("reconnect endpoint=%s attempt=%d delay_s=%.3f ceiling_s=%.3f", c.ep.name, attempt, delay, ceiling)
        end = self.clock() + delay
        while True:
            c.tick = self.clock()
            left = end - c.tick
            if left <= 0:
                return not self.stopping
            if self.wait(min(left, 0.25)) or self.svc.stopping.is_set():
                return False

    def _open(self, c: _Conn) -> websocket.WebSocket | None:
        ep = c.ep
        c.state = "connecting"
        try:
            ws = self.connect(
                ep.url, timeout=self.cfg.connect_timeout_s, suppress_origin=ep.suppress_origin,
                skip_utf8_validation=True, enable_multithread=False)
            for msg in ep.subscribe:
                ws.send(msg)
            ws.settimeout(self.cfg.recv_timeout_s)
        except Exception as exc:  # noqa: BLE001 - a bad URL or timeout (ValueError, OverflowError) fails the same way
            c.failures += 1
            c.last_error = _short(exc, self.secrets)
            c.state = "reconnecting"
            c.connect_failures.failed(c.last_error, f"connect failed endpoint={ep.name} "
                                                    f"error={c.last_error.replace(' ', '_')}")
            return None
        c.connects += 1
        c.connect_failures.ended(f"connect succeeded endpoint={ep.name}")
        log.info("connected endpoint=%s url=%s connects=%d", ep.name, _safe_url(ep.url), c.connects)
        return ws

    def _receive(self, c: _Conn, ws: websocket.WebSocket, reason: str) -> str:
        ep = c.ep
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

    def _mark_connected(self, c: _Conn, reason: str) -> None:
        for st in c.streams.values():
            st.after_connect = reason
        # streams seen on this endpoint without a rule (other symbols) too
        for st in list(self.states.values()):
            if st.source == c.ep.source and st.name not in c.streams and st.frames:
                st.after_connect = reason

    def _periodic(self, c: _Conn, now: float) -> str | None:
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
            self._rollover(c)
        return None

    def _rollover(self, c: _Conn) -> None:
        """Open the replacement first, read both until it delivers, then close the old one."""
        old = c.ws
        log.info("rollover endpoint=%s age_s=%.0f: opening the replacement connection",
                 c.ep.name, self.clock() - c.connected_at)
        new = self._open(c)
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

    def _handle(self, c: _Conn, data: bytes, now_mono: float) -> None:
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
            self.svc.rejects.record(r.source or ep.source, r.reason, data, recv_ts)
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

    def _control(self, c: _Conn, p: Parsed) -> None:
        kind = p.kind
        if kind == "shutdown":
            log.warning("server shutdown announced endpoint=%s; reconnecting now", c.ep.name)
            c.shutdown = True
        elif kind == "error":
            log.warning("server error message endpoint=%s: %s", c.ep.name, p.detail)
        elif kind == "control":
            log.debug("control endpoint=%s %s", c.ep.name, p.detail)

    def _ids(self, c: _Conn, st: StreamState, p: Parsed, after: str | None, recv_ts: int) -> None:
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

    def _window(self, c: _Conn, st: StreamState, reason: str, p: Parsed, pts: int | None, recv_ts: int) -> None:
        """First event of a stream after a (re)connect: report the window if it is too long."""
        gm = st.rule.gap_min_ms
        if gm is None or p.ids is not None or pts is None or st.pos_ts is None:
            return
        if pts - st.pos_ts > gm and self.handler is not None:
            self.handler.on_gap(Gap(c.ep.source, st.name, reason, recv_ts, None, None, st.pos_ts, pts))

    def _thin(self, c: _Conn, st: StreamState, p: Parsed, ev: int, thin: int, now_mono: float) -> None:
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

    def _emit(self, c: _Conn, st: StreamState) -> None:
        row = st.pending
        if row is None:
            return
        st.pending = None
        st.emitted_slot = st.pending_slot
        c.buffer.add(st.pending_sql, [row])
        c.rows += 1
        st.rows += 1

    def _emit_thinned(self, c: _Conn, now_mono: float, force: bool = False) -> None:
        for st in c.streams.values():
            if st.pending is not None and (force or now_mono - st.pending_at >= st.rule.thin_ms / 1000.0):
                self._emit(c, st)

    def _flush(self, c: _Conn, final: bool = False) -> None:
        if final:
            self._emit_thinned(c, self.clock(), force=True)
        resume = []
        ts = now_ms()
        for st in c.streams.values():
            if st.dirty:
                st.dirty = False
                resume.append((self.service, st.name, st.pos_id, st.pos_ts, ts))
        try:
            c.buffer.flush(resume)
        except RuntimeError as exc:            # writer is in a fatal state: the service is exiting
            log.error("cannot hand rows to the writer endpoint=%s: %s", c.ep.name, exc)
            c.buffer.by_sql, c.buffer.n = {}, 0
        if c.frames or c.rows or c.rejects:
            self.svc.count(c.ep.source, frames=c.frames, rows=c.rows, rejects=c.rejects)
            c.frames = c.rows = c.rejects = 0

    def _close(self, c: _Conn) -> None:
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
    from .redact import redact
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    return f"{name}: {redact(text, secrets, 120)}" if text else name


def _safe_url(url: str) -> str:
    """URL for logs without a query string (a key could travel there on some APIs)."""
    base, _, query = url.partition("?")
    return base + ("?streams=…" if "streams=" in query else "")
