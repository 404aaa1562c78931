"""StreamState: what the loop knows about one canonical stream (ids, positions, thinning)."""
from __future__ import annotations

import threading
import time

from .endpoints import StreamRule, venue_symbol


class StreamState:
    """What the loop knows about one canonical stream (shared by rollover connections)."""

    __slots__ = ("name", "symbol", "source", "rule", "frames", "rows", "reported_frames", "reported_rows",
                 "last_event_ts", "advanced_at",
                 "lag_ms", "last_id", "first_live_id", "first_live_ts", "pos_id", "pos_ts", "dirty", "after_connect",
                 "lock", "pending", "pending_sql", "pending_slot", "pending_at", "emitted_slot", "thinned")

    def __init__(self, name: str, source: str, rule: StreamRule):
        self.name = name
        self.symbol = venue_symbol(name)         # resume_state.symbol, the ingest_stats split
        self.source = source
        self.rule = rule
        self.frames = 0
        self.rows = 0
        self.reported_frames = 0                 # frames/rows already handed to svc.count
        self.reported_rows = 0
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


def symbols_snapshot(states: list[StreamState], now_mono: float) -> dict:
    """Per venue symbol (heartbeat detail): frames and rows so far and each stream's
    position and lag, `{"BTCUSDT": {"frames": …, "rows": …, "streams": {"aggTrade": {…}}}}`."""
    out: dict[str, dict] = {}
    for st in states:
        d = out.get(st.symbol or "")
        if d is None:
            d = out[st.symbol or ""] = {"frames": 0, "rows": 0, "streams": {}}
        d["frames"] += st.frames
        d["rows"] += st.rows
        d["streams"][st.name.partition("@")[2] or st.name] = st.snapshot(now_mono)
    return out
