"""Connection: one endpoint's runtime in the loop (socket, counters, buffer, backoff),
owned by its receive thread."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import websocket

from .backoff import Backoff, RepeatedLog
from .buffer import RowBuffer
from .endpoints import Endpoint
from .state import StreamState

log = logging.getLogger("cqt.stream")


class BufferedRecv:
    """websocket-client's frame reader asks for each part of a frame (header, length,
    payload) with its own recv(): three system calls and three GIL hand-overs per frame,
    which the writer thread then takes. This serves those reads from one large recv()
    instead (about 1.7x the frames a second). Timeouts and a closed socket behave as
    before: the underlying recv is called only when the buffer is empty."""

    __slots__ = ("raw", "buf", "pos")
    CHUNK = 1 << 18

    def __init__(self, raw: Callable[[int], bytes]):
        self.raw = raw
        self.buf = b""
        self.pos = 0

    def __call__(self, n: int) -> bytes:
        buf, pos = self.buf, self.pos
        if pos >= len(buf):
            buf = self.buf = self.raw(self.CHUNK)     # raises on timeout / close, as before
            pos = 0
        out = buf[pos:pos + n]
        self.pos = pos + len(out)
        return out


def buffer_reads(ws) -> None:
    """Give a websocket-client connection a BufferedRecv (a test double without a frame
    reader is left alone). Relies on websocket-client's `frame_buffer.recv` (pinned 1.9.2;
    `frame_buffer.recv_strict` loops until it has what it asked for, so short reads are fine)."""
    fb = getattr(ws, "frame_buffer", None)
    if fb is not None and not isinstance(getattr(fb, "recv", None), BufferedRecv):
        fb.recv = BufferedRecv(fb.recv)


def open_endpoint(connect: Callable[..., websocket.WebSocket], ep: Endpoint, cfg) -> websocket.WebSocket:
    """Connect to `ep` and send its subscriptions: the collector's loop and `cqt probe` open a
    connection the same way (CA bundle, no Origin where the venue limits it, buffered reads).
    `cfg` is a LoopSettings. Raises what websocket-client raises."""
    tls = {"sslopt": {"ca_certs": cfg.ca_bundle}} if cfg.ca_bundle else {}
    ws = connect(ep.url, timeout=cfg.connect_timeout_s, suppress_origin=ep.suppress_origin,
                 skip_utf8_validation=True, enable_multithread=False, **tls)
    buffer_reads(ws)
    for msg in ep.subscribe:
        ws.send(msg)
    ws.settimeout(cfg.recv_timeout_s)
    return ws


class Connection:
    """Per-endpoint runtime: the socket, counters, buffer (owned by its receive thread)."""

    def __init__(self, ep: Endpoint, backoff: Backoff, buffer: RowBuffer, clock: Callable[[], float]):
        self.ep = ep
        self.backoff = backoff
        self.buffer = buffer
        self.ws: websocket.WebSocket | None = None
        self.connected_at: float | None = None      # None while no connection is up
        self.connect_failures = RepeatedLog(log, clock=clock)
        self.location_refused = False               # a 451 handshake was logged (ERROR once until a connect)
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
        self.rejects_by_symbol: dict[str, int] = {}     # of self.rejects: those whose frame named a symbol
        self.total_frames = 0
        self.streams: dict[str, StreamState] = {}
        self.shutdown = False
        self.rollover_retry_at = 0.0
        self.thread: threading.Thread | None = None

    def take_counts(self) -> dict[str, list[int]]:
        """[frames, rows, rejects] since the last call, per venue symbol (ingest_stats); resets
        them. A stream's frames and rows go to its symbol, a rejected frame to the symbol it
        names; what names none (control frames, unreadable rejects) to symbol ''."""
        by_symbol: dict[str, list[int]] = {}
        for st in self.streams.values():
            frames, rows = st.frames - st.reported_frames, st.rows - st.reported_rows
            if frames or rows:
                st.reported_frames, st.reported_rows = st.frames, st.rows
                acc = by_symbol.setdefault(st.symbol or "", [0, 0, 0])
                acc[0] += frames
                acc[1] += rows
        for sym, n in self.rejects_by_symbol.items():
            acc = by_symbol.setdefault(sym, [0, 0, 0])
            acc[0] += n
            acc[2] += n
        self.rejects_by_symbol.clear()
        rest = [self.frames, self.rows, self.rejects]
        for acc in by_symbol.values():
            rest = [r - a for r, a in zip(rest, acc)]
        if any(x > 0 for x in rest):
            acc = by_symbol.setdefault("", [0, 0, 0])
            for i in range(3):
                acc[i] += max(0, rest[i])
        self.frames = self.rows = self.rejects = 0
        return by_symbol
