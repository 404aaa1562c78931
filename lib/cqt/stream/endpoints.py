"""What a collector hands the loop: its `Endpoint`s, a `StreamRule` per canonical stream,
and the `Gap`s the loop reports back to its `Handler`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from ..venues.common import Parsed


@dataclass(frozen=True)
class StreamRule:
    """Per canonical stream (e.g. 'BTCUSDT@markPrice').

    stall_s     no newer exchange event for this long while connected -> reconnect (None: never)
    gap_min_ms  after a (re)connect, a window between the last event before and the first
                after that is longer than this is reported as a Gap (None: not checked;
                id-sequenced streams report exact id gaps instead)
    thin_ms     keep at most one row per this many ms of event time, the last in each slot
    """
    stall_s: float | None = None
    gap_min_ms: int | None = None
    thin_ms: int = 0


NO_RULE = StreamRule()


def venue_symbol(stream: str) -> str | None:
    """The venue symbol a stream name is about: the part before '@' ('BTCUSDT@aggTrade' ->
    'BTCUSDT', 'KRW-BTC@trade' -> 'KRW-BTC'); None for a name without one."""
    sym, at, _ = stream.partition("@")
    return sym if at and sym else None


def default_position(p: Parsed) -> tuple[int | None, int | None]:
    """Resume position of a parsed frame: (last id, event time)."""
    return (p.ids[1] if p.ids else None), p.event_ts_ms


@dataclass
class Endpoint:
    """One WebSocket connection the loop keeps open."""
    name: str                                    # 'market', 'public', 'upbit'
    url: str
    source: str                                  # 'binance_ws' | 'upbit' (captures, rejects, gaps)
    parse: Callable[[Any, int], Parsed]          # pure parser; raises Reject
    rules: dict[str, StreamRule] = field(default_factory=dict)
    subscribe: tuple[str, ...] = ()              # text messages sent after connecting
    suppress_origin: bool = False
    idle_ping_s: float | None = None             # send `ping_text` after this long without frames
    ping_text: str = "PING"
    position: Callable[[Parsed], tuple[int | None, int | None]] = default_position
    # raw frame the parser rejected -> the venue symbol it names, or None (rejects.symbol)
    reject_symbol: Callable[[Any], str | None] | None = None


@dataclass
class Gap:
    """Missing data the loop detected; the collector records (and maybe backfills) it."""
    source: str
    stream: str
    reason: str                     # id_jump | reconnect | stall | rollover | shutdown | restart | initial
    detected_ts_ms: int
    from_id: int | None = None
    to_id: int | None = None
    from_ts_ms: int | None = None
    to_ts_ms: int | None = None
    row_id: int | None = None       # gaps.id once inserted (set in the writer thread)
    filled_rows: int = 0

    @property
    def symbol(self) -> str | None:
        """The venue symbol of the gap's stream (gaps.symbol)."""
        return venue_symbol(self.stream)

    @property
    def n_ids(self) -> int | None:
        if self.from_id is None or self.to_id is None:
            return None
        return self.to_id - self.from_id + 1


class Handler(Protocol):
    def on_gap(self, gap: Gap) -> None: ...
