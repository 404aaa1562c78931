"""What the server asks of a venue's protocol (`venues/<name>/protocol.py`).

A protocol object is made per server (``Protocol(sim)``) and holds that venue's
server-side state: its WebSocket connections' rules, its limits, its fault state.
The defaults here are those of a REST-only venue with no limits.
"""
from __future__ import annotations


class VenueProtocol:
    name = ""                   # "binance": the key of connections, stats and fault "source"
    rest = None                 # the venue's REST module: PREFIXES, owns, not_found
    websocket = False           # whether it has WebSocket connections (faults, pump, stats)
    trade_stream = None         # WebSocket venues: default stream of the gap and malformed faults

    def __init__(self, sim):
        self.sim = sim

    def add_routes(self, router) -> None:
        """Register the venue's WebSocket endpoints (REST is routed by `rest.PREFIXES`)."""

    def gate(self, headers, path: str, params: dict, now: float, mono: float):
        """Limits and authentication of one REST request before it is answered:
        (status, body, headers) with status None to let it through. now: wall-clock
        seconds (fixed windows), mono: monotonic seconds."""
        return None, None, {}

    def finish_headers(self, headers: dict) -> None:
        """Headers every REST answer of the venue carries."""

    def error_body(self, status: int) -> str:
        """The body of an injected HTTP error, in the venue's error shape."""
        raise NotImplementedError

    # ---- WebSocket venues
    def deliver(self, stream: str, raw: str, fid) -> int:
        """Send one model frame to every connection that receives `stream`; the count."""
        return 0

    def replay(self, raw) -> None:
        """Send one captured frame to the connections subscribed to its stream."""

    def malformed_frame(self, kind: str, template: dict, seq: int) -> str:
        """A bad frame of `kind` (faults.MALFORMED_KINDS) made from the last real trade."""
        raise NotImplementedError

    def push_malformed(self, targets, stream: str, kind: str, text: str) -> None:
        """Send one bad frame (a fault) to `targets`."""

    # ---- faults and stats
    def apply_fault(self, f: dict) -> bool:
        """Apply a fault only this venue knows; True if it did."""
        return False

    def clear_faults(self) -> None:
        """Cancel the venue's own pending faults."""

    def add_stats(self, body: dict) -> None:
        """Add the venue's counters to the `GET /_sim/stats` body."""
