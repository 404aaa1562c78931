"""The frame pump of cqt-sim: advances the model clock (or walks a capture) and fans
frames out to the connections' send queues, applying the stall / gap / malformed
faults on the way."""
from __future__ import annotations

import asyncio
import json
import logging

log = logging.getLogger("cqt-sim")

CHUNK_MS = 2000               # model time pumped at once
REPLAY_BATCH = 2000           # capture frames sent at once


class ReplayCursor:
    """Which captured frames are due: in file order, paced by recv_ts_ms against the
    replay clock (model ms); a frame never goes before the one ahead of it."""

    def __init__(self, frames: list):
        self.frames = frames
        self.i = 0
        self.due = frames[0][0] if frames else 0

    @property
    def done(self) -> bool:
        return self.i >= len(self.frames)

    def take(self, now_ms: int, fast: bool, limit: int = REPLAY_BATCH) -> list:
        """The next frames due at now_ms (all of them, `limit` at a time, when fast)."""
        out = []
        frames = self.frames
        while self.i < len(frames) and len(out) < limit:
            fr = frames[self.i]
            self.due = max(self.due, fr[0])
            if not fast and self.due > now_ms:
                break
            out.append(fr)
            self.i += 1
        return out


class Pump:
    def __init__(self, sim):
        self.sim = sim
        self.pumped = sim.clock.now_ms()      # model time up to which frames went out
        self.replay_sent = 0

    async def run_model(self) -> None:
        """Advance the model clock and fan its frames out (Binance first, then Upbit)."""
        sim = self.sim
        venues = [(name, sim.market.frames[name].all_streams) for name in ("binance", "upbit")]
        while True:
            await asyncio.sleep(0.02)
            now = sim.clock.now_ms()
            while self.pumped < now:
                t_to = min(now, self.pumped + CHUNK_MS)
                for venue, streams in venues:
                    for fr in sim.market.ws_frames_ids(venue, self.pumped, t_to, streams):
                        self.dispatch(venue, fr[1], fr[2], fr[3])
                self.pumped = t_to
                if t_to < now:
                    await asyncio.sleep(0)

    async def run_replay(self) -> None:
        sim = self.sim
        cursor = ReplayCursor(sim.capture.frames)
        while not cursor.done:
            if sim.clock.paused:
                await asyncio.sleep(0.02)
                continue
            fast = sim.cfg.speed <= 0
            batch = cursor.take(sim.clock.now_ms(), fast)
            for _ts, venue, raw in batch:
                sim.protocols[venue].replay(raw)
                self.replay_sent += 1
            if fast:
                # backpressure: let writers drain before queuing more
                while any(len(c.q) > 5000 for v in sim.conns.values() for c in v):
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0)
            else:
                await asyncio.sleep(0.005 if len(batch) >= REPLAY_BATCH else 0.01)
        log.info("replay finished frames=%d", len(cursor.frames))

    def dispatch(self, venue: str, stream: str, raw: str, fid) -> None:
        """Send one frame to every connection of `venue` that receives `stream`,
        applying the stall / gap / malformed faults."""
        sim = self.sim
        faults = sim.faults
        if faults.stalled(venue) or (faults.stall_streams and faults.stream_stalled(stream)):
            if sim.conns[venue]:
                sim.stat(f"{venue}:{stream}").stalled += 1
            return
        if fid is not None:
            left = faults.gaps.get(stream)
            if left:
                faults.gaps[stream] = left - 1
                sim.stat(f"{venue}:{stream}").skipped.add(fid)
                return
            faults.last_trade_raw[stream] = raw
        delivered = sim.protocols[venue].deliver(stream, raw, fid)
        if delivered:
            sim.stat(f"{venue}:{stream}").sent(delivered, fid)
        if faults.malformed[venue]:
            self.emit_malformed(venue)

    def push(self, c, frame: bytes) -> None:
        if c.closed:
            return
        c.push(frame)
        if len(c.q) > self.sim.cfg.max_queue:
            log.warning("slow client conn=%d queue=%d: disconnecting", c.id, len(c.q))
            self.sim.abort(c, "slow client")

    def emit_malformed(self, venue: str) -> None:
        sim = self.sim
        faults = sim.faults
        proto = sim.protocols[venue]
        stream = faults.malformed_stream.get(venue) or proto.trade_stream
        targets = [c for c in sim.conns[venue] if stream in c.active and not c.closed]
        template_raw = faults.last_trade_raw.get(stream)
        if not targets or template_raw is None:
            return
        template = json.loads(template_raw)
        q = faults.malformed[venue]
        sent = faults.malformed_sent[venue]
        for _ in range(faults.malformed_per_frame[venue]):
            kind = q.pop()
            if kind is None:
                break
            n = sent.get(kind, 0)
            text = proto.malformed_frame(kind, template, n)
            sent[kind] = n + 1
            proto.push_malformed(targets, stream, kind, text)
