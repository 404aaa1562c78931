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
        self.total_frames = 0
        self.streams: dict[str, StreamState] = {}
        self.shutdown = False
        self.rollover_retry_at = 0.0
        self.thread: threading.Thread | None = None
