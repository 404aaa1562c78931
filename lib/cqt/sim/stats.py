"""What cqt-sim sent, per stream, in a compact form (`GET /_sim/stats`)."""
from __future__ import annotations

import bisect


class RangeSet:
    """A set of integers kept as sorted, merged [first, last] ranges.  At most
    `max_ranges` are kept (the oldest are forgotten, counted in `dropped`), so a sim
    running for days stays bounded even for Upbit's sparse sequential ids."""

    __slots__ = ("starts", "ends", "max_ranges", "dropped")

    def __init__(self, max_ranges: int = 200_000):
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.max_ranges = max_ranges
        self.dropped = 0

    def add(self, x: int) -> None:
        s, e = self.starts, self.ends
        if len(s) >= self.max_ranges:
            cut = self.max_ranges // 10
            del s[:cut], e[:cut]
            self.dropped += cut
        if e and x == e[-1] + 1:                # the common case: the next id
            e[-1] = x
            return
        if not s or x > e[-1] + 1:
            s.append(x)
            e.append(x)
            return
        i = bisect.bisect_right(s, x) - 1        # the range starting at or before x
        if i >= 0 and x <= e[i]:
            return
        if i >= 0 and x == e[i] + 1:
            e[i] = x
            if i + 1 < len(s) and s[i + 1] == x + 1:
                e[i] = e[i + 1]
                del s[i + 1], e[i + 1]
            return
        if i + 1 < len(s) and s[i + 1] == x + 1:
            s[i + 1] = x
            return
        s.insert(i + 1, x)
        e.insert(i + 1, x)

    def __contains__(self, x: int) -> bool:
        i = bisect.bisect_right(self.starts, x) - 1
        return i >= 0 and x <= self.ends[i]

    def __len__(self) -> int:
        return sum(b - a + 1 for a, b in zip(self.starts, self.ends))

    def ranges(self) -> list[list[int]]:
        return [[a, b] for a, b in zip(self.starts, self.ends)]


class StreamStats:
    __slots__ = ("frames", "messages", "first_id", "last_id", "ids", "skipped", "stalled")

    def __init__(self):
        self.frames = 0          # distinct frames delivered to at least one connection
        self.messages = 0        # frames x connections
        self.first_id = None
        self.last_id = None
        self.ids = RangeSet()    # trade ids delivered on the WebSocket
        self.skipped = RangeSet()  # trade ids held back by a `gap` fault
        self.stalled = 0         # frames lost to a `stall` fault

    def sent(self, n_conns: int, fid) -> None:
        self.frames += 1
        self.messages += n_conns
        if fid is not None:
            if self.first_id is None:
                self.first_id = fid
            self.last_id = fid
            self.ids.add(fid)

    def as_dict(self, with_ids: bool) -> dict:
        d = {"frames": self.frames, "messages": self.messages, "first_id": self.first_id,
             "last_id": self.last_id, "range_count": len(self.ids.starts),
             "ranges_forgotten": self.ids.dropped,
             "skipped": self.skipped.ranges(), "stalled": self.stalled}
        if with_ids:
            d["ranges"] = self.ids.ranges()
        return d
