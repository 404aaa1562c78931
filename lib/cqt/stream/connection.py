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


class Connection:
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
