"""One WebSocket endpoint probed: connect and subscribe exactly as the collector does, receive
for a while, parse every frame with the collector's parser, and say per stream what came."""
from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Callable, Iterable

import websocket

from ..stream.connection import open_endpoint
from ..stream.endpoints import Endpoint
from ..stream.settings import LoopSettings
from ..timeutil import now_ms
from ..venues.common import Reject
from .explain import explain_error, explain_status
from .result import Item


class _Stream:
    __slots__ = ("frames", "rows", "lags")

    def __init__(self):
        self.frames = 0
        self.rows = 0
        self.lags: list[int] = []


def probe_endpoint(source: str, ep: Endpoint, cfg: LoopSettings, seconds: float, expected: Iterable[str],
                   rare: Iterable[str] = (), *, connect: Callable = websocket.create_connection,
                   clock: Callable[[], float] = time.monotonic, wall_ms: Callable[[], int] = now_ms) -> list[Item]:
    """The connection's item, then one per expected stream (and any other stream seen).

    A stream in `rare` (liquidations) that sends nothing is OK with a note; any other silent
    stream is a FAIL (a quiet market needs a longer --seconds)."""
    t0 = clock()
    try:
        ws = open_endpoint(connect, ep, cfg)
    except Exception as exc:  # noqa: BLE001 - every connect failure is reported, none raised
        status = getattr(exc, "status_code", None)
        if status:
            headers = getattr(exc, "resp_headers", None) or {}
            cause, fix = explain_status(source, int(status), headers.get("retry-after"))
        else:
            cause, fix = explain_error(source, f"{type(exc).__name__}: {exc}", ws=True)
        return [Item(source, f"ws {ep.name}", False, cause=cause, fix=fix)]
    handshake_ms = (clock() - t0) * 1000.0
    streams: dict[str, _Stream] = {}
    rejects: Counter = Counter()
    frames = control = 0
    error = None
    last_rx = clock()
    try:
        while clock() - t0 < seconds:
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                if ep.idle_ping_s and clock() - last_rx >= ep.idle_ping_s:
                    ws.send(ep.ping_text)
                    last_rx = clock()
                continue
            except Exception as exc:  # noqa: BLE001 - a closed or broken connection ends the probe early
                error = f"{type(exc).__name__}: {exc}"
                break
            recv = wall_ms()
            last_rx = clock()
            frames += 1
            try:
                parsed = ep.parse(raw, recv)
            except Reject as rej:
                rejects[rej.reason] += 1
                continue
            if not parsed.rows:
                control += 1
                continue
            st = streams.setdefault(parsed.stream, _Stream())
            st.frames += 1
            st.rows += len(parsed.rows)
            if parsed.event_ts_ms is not None:
                st.lags.append(recv - parsed.event_ts_ms)
    finally:
        try:
            ws.close()
        except Exception:  # noqa: BLE001 - closing a broken socket may fail; nothing to report
            pass
    elapsed = clock() - t0
    conn = Item(source, f"ws {ep.name}", error is None and not rejects, frames=frames,
                rows=sum(s.rows for s in streams.values()), rejects=sum(rejects.values()),
                latency_ms=handshake_ms, reject_reasons=dict(rejects),
                note=f"handshake {handshake_ms:.0f} ms, {control} control frames, {elapsed:.1f} s")
    if error is not None:
        conn.cause, conn.fix = explain_error(source, f"connection ended after {elapsed:.1f} s: {error}", ws=True)
    elif rejects:
        conn.cause = f"{conn.rejects} frames the parser refused"
        conn.fix = "the venue's format may have changed: record a capture (--capture) and report it"
    out = [conn]
    rare = set(rare)
    for name in [*expected, *sorted(set(streams) - set(expected))]:
        st = streams.get(name)
        if st is None:
            quiet = name in rare
            out.append(Item(source, f"ws {ep.name} {name}", quiet,
                            note="no frames: rare events, none in this window" if quiet else "",
                            cause=f"no frames in {elapsed:.0f} s",
                            fix="a quiet market: run with a longer --seconds; otherwise check the symbol"))
            continue
        lag = statistics.median(st.lags) if st.lags else None
        # latency: median receive time minus event time (it includes the clocks' offset)
        out.append(Item(source, f"ws {ep.name} {name}", True, frames=st.frames, rows=st.rows, latency_ms=lag))
    return out
