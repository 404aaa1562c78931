"""WebSocket framing and connections of cqt-sim: pre-encoded server frames, one send
queue per connection drained in batches (backpressure), abort and close."""
from __future__ import annotations

import asyncio
import struct
import time
from collections import deque

from aiohttp import web

TEXT, BINARY = 0x1, 0x2


def ws_frame(payload: bytes, opcode: int) -> bytes:
    """A complete unmasked server WebSocket frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


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
        self.fmt: str | None = None         # Upbit: the subscription's format
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
        self.flood: set[str] = set()        # Binance --flood: aggTrade streams flooded here

    def push(self, frame: bytes) -> None:
        self.q.append(frame)
        self.wake.set()

    def transport(self):
        """(transport, protocol) under aiohttp (internals, pinned 3.14), for batch writes."""
        writer = self.ws._writer
        return writer.transport, writer.protocol

    async def write_loop(self) -> None:
        """Drain the queue: pre-encoded frames written in batches, then wait for the
        transport to drain."""
        tr, proto = self.transport()
        try:
            while not self.closed:
                if not self.q:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                batch = []
                q = self.q
                while q and len(batch) < 1024:
                    batch.append(q.popleft())
                if tr is None or tr.is_closing():
                    break
                tr.write(b"".join(batch))
                self.sent += len(batch)
                self.last_tx = time.monotonic()
                if proto._paused:
                    await proto._drain_helper()
        except (ConnectionError, RuntimeError):
            pass
        except asyncio.CancelledError:
            raise

    def abort(self, reason: str) -> None:
        """Drop without a close frame (the client sees 1006)."""
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.wake.set()
        tr = self.ws._writer.transport if self.ws._writer is not None else None
        if tr is not None:
            tr.abort()

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        self.wake.set()
        try:
            await asyncio.wait_for(self.ws.close(code=code, message=reason.encode()[:120]), 2.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            self.abort(reason)
