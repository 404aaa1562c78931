"""`--flood N`: a benchmark stream of Binance aggTrade events at up to N msg/s to each
/market connection subscribed to btcusdt@aggTrade, written in batches of pre-encoded
frames, waiting for the socket to drain."""
from __future__ import annotations

import asyncio
import struct
import time

BATCH = 2000                  # frames written at once, at most


class FloodPacer:
    """How many frames are due at time `now` (seconds) for a rate of `rate` msg/s.
    "Up to N": a sender that fell behind by more than a second does not catch up."""

    def __init__(self, rate: float, start: float):
        self.rate = float(rate)
        self.t_start = start

    def due(self, now: float, sent: int) -> int:
        due = int((now - self.t_start) * self.rate) - sent
        if due > self.rate:                     # fell behind by a second: rate is "up to N"
            self.t_start = now - sent / self.rate
            due = int(self.rate)
        return min(due, BATCH) if due > 0 else 0


async def flood(proto, c) -> None:
    """Flood one connection (proto: the Binance protocol, for its counters)."""
    sim = proto.sim
    while not c.flood and not c.closed:
        await asyncio.sleep(0.05)
    tr, ws_proto = c.transport()
    a = proto.flood_next_id
    proto.flood_next_id += 10_000_000_000
    f = a * 3
    stat = sim.stat("binance:flood")
    pacer = FloodPacer(sim.cfg.flood, time.monotonic())
    sent = 0
    pstr = [f"{90000 + i / 10:.2f}" for i in range(100)]
    base_ms = sim.clock.now_ms()
    hdr4 = struct.Struct("!BBH")
    try:
        while not c.closed and c.flood:
            now = time.monotonic()
            n = pacer.due(now, sent)
            if n <= 0:
                await asyncio.sleep(0.002)
                continue
            ms = base_ms + int((now - sim.started_mono) * 1000)
            parts = []
            comb = c.combined
            for _ in range(n):
                p = (f'{{"e":"aggTrade","E":{ms},"a":{a},"s":"BTCUSDT","p":"{pstr[a % 100]}",'
                     f'"q":"0.001","f":{f},"l":{f},"T":{ms},"m":{"true" if a & 1 else "false"}}}')
                if comb:
                    p = '{"stream":"btcusdt@aggTrade","data":' + p + "}"
                b = p.encode()
                parts.append(hdr4.pack(0x81, 126, len(b)) if len(b) >= 126 else bytes((0x81, len(b))))
                parts.append(b)
                a += 1
                f += 1
            if tr.is_closing():
                break
            tr.write(b"".join(parts))
            sent += n
            c.sent += n
            proto.flood_sent += n
            stat.frames += n
            stat.messages += n
            if stat.first_id is None:
                stat.first_id = a - n
            stat.last_id = a - 1
            c.last_tx = now
            if ws_proto._paused:
                await ws_proto._drain_helper()
            else:
                await asyncio.sleep(0)
    except (ConnectionError, RuntimeError):
        pass
