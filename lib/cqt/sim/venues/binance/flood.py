"""`--flood N`: a benchmark stream of Binance aggTrade events, N msg/s spread evenly over
the served symbols' aggTrade streams (N / symbols each), to each /market connection
subscribed to them (a connection with every symbol gets up to N msg/s, round robin),
written in batches of pre-encoded frames, waiting for the socket to drain. Each
connection's stream has its own contiguous ids."""
from __future__ import annotations

import asyncio
import struct
import time

from .frames import fixed

BATCH = 2000                  # frames written at once, at most
ID_SPAN = 10_000_000_000      # ids of one stream on one connection


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


class _Stream:
    """One flooded aggTrade stream of one connection: its next ids and price texts."""
    __slots__ = ("name", "symbol", "a", "f", "prices", "qty", "stat")

    def __init__(self, name: str, symbol: str, a: int, leg, stat):
        self.name, self.symbol, self.a, self.f, self.stat = name, symbol, a, a * 3, stat
        if leg is None or leg.asset == "BTC":
            self.prices = [f"{90000 + i / 10:.2f}" for i in range(100)]
            self.qty = "0.001"
        else:
            spec = leg.spec
            self.prices = [f"{spec.price * (1 + i / 10_000):.{spec.pdec}f}" for i in range(100)]
            self.qty = fixed(1, spec.qdec)


async def flood(proto, c) -> None:
    """Flood one connection (proto: the Binance protocol, for its counters)."""
    sim = proto.sim
    while not c.flood and not c.closed:
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.05)                   # the rest of a SUBSCRIBE list
    tr, ws_proto = c.transport()
    order = [s for s in proto.flood_streams if s in c.flood]
    base = proto.flood_next_id
    proto.flood_next_id += ID_SPAN * max(1, len(proto.flood_streams))
    model = sim.market.model if sim.market is not None else None
    streams = []
    for i, name in enumerate(order):
        sym = name.split("@", 1)[0].upper()
        leg = model.by_symbol.get(sym) if model is not None else None
        streams.append(_Stream(name, sym, base + i * ID_SPAN, leg, sim.stat("binance:flood:" + name)))
    total = sim.stat("binance:flood")
    n_streams = len(streams)
    pacer = FloodPacer(sim.cfg.flood * n_streams / max(1, len(proto.flood_streams)), time.monotonic())
    sent = 0
    base_ms = sim.clock.now_ms()
    hdr4 = struct.Struct("!BBH")
    rr = 0
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
                st = streams[rr]
                rr = rr + 1 if rr + 1 < n_streams else 0
                a = st.a
                p = (f'{{"e":"aggTrade","E":{ms},"a":{a},"s":"{st.symbol}","p":"{st.prices[a % 100]}",'
                     f'"q":"{st.qty}","f":{st.f},"l":{st.f},"T":{ms},"m":{"true" if a & 1 else "false"}}}')
                if comb:
                    p = '{"stream":"' + st.name + '","data":' + p + "}"
                b = p.encode()
                parts.append(hdr4.pack(0x81, 126, len(b)) if len(b) >= 126 else bytes((0x81, len(b))))
                parts.append(b)
                s = st.stat
                if s.first_id is None:
                    s.first_id = a
                s.last_id = a
                s.frames += 1
                s.messages += 1
                st.a = a + 1
                st.f += 1
            if tr.is_closing():
                break
            tr.write(b"".join(parts))
            sent += n
            c.sent += n
            proto.flood_sent += n
            total.frames += n
            total.messages += n
            c.last_tx = now
            if ws_proto._paused:
                await ws_proto._drain_helper()
            else:
                await asyncio.sleep(0)
    except (ConnectionError, RuntimeError):
        pass
