"""The one small venue interface the shared machinery calls.

* :class:`Venue` — what every venue package declares in its ``__init__`` as ``VENUE``:
  its capture sources, its pure parsers (a WebSocket frame; a REST answer by path), the
  paths whose answers carry rows, and the request context a recorded answer may lack.
  `cqt.venues.registry` dispatches captures, replays and synthesised answers through it.
* :class:`StreamVenue` — what a WebSocket collector program hands to the one collector
  runner (`cqt.collector.run_stream_collector`): its endpoints (`cqt.stream.Endpoint`)
  and the hooks that decide which gaps its REST backfill fills.
* REST pollers hand `cqt.poll.PollJob`s to the one REST loop (`cqt.poll.PollLoop`) and
  are started by `cqt.collector.run_rest_poller`; the backfill worker
  (`cqt.backfill.Backfiller`) runs a venue's fillers (callables on a `cqt.stream.Gap`).

Pure declarations: nothing here does I/O or imports the machinery.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from .common import Parsed

#: (raw frame, recv_ts_ms, now_ms) -> Parsed; raises Reject
FrameParser = Callable[[Any, int, "int | None"], Parsed]
#: (path, params, body, recv_ts_ms, now_ms) -> Parsed, or None for a path without rows;
#: raises Reject for a bad body, ValueError when params lack the context the parser needs
RestParser = Callable[[str, Mapping[str, Any], Any, int, "int | None"], "Parsed | None"]
#: (path, params, settings) -> params completed from settings
RestContext = Callable[[str, Mapping[str, Any], Any], dict]


@dataclass(frozen=True)
class Venue:
    """One exchange, as replay, synth and the answer dispatch see it."""
    name: str                                  # 'upbit', 'binance', 'coinglass'
    ws_source: str | None                      # capture/reject/gaps source of its frames
    rest_source: str | None                    # capture/reject source of its REST answers
    parse_frame: FrameParser | None = None
    parse_rest: RestParser | None = None
    data_paths: tuple[str, ...] = ()           # REST paths whose answers carry rows
    rest_context: RestContext | None = None
    programs: Mapping[str, str] = field(default_factory=dict)   # program -> "module:attr" of its command


class GapHandler(Protocol):
    """A venue's gap hook, built once the stream loop exists (`StreamVenue.gap_handler`)."""

    def on_gap(self, gap: Any) -> None:
        """A gap the loop detected: record it; queue a backfill when REST can fill it."""

    def resume(self, open_gaps: list, positions: dict, now_ms: int) -> None:
        """At start: re-queue the `open` gaps a previous run left; with nothing stored, the
        first-start backfill."""

    def periodic(self) -> None:
        """Called every half second by the collector's main loop (e.g. reconciliation)."""

    def snapshot(self) -> dict:
        """The `backfill` part of the heartbeat."""


class StreamVenue(Protocol):
    """What `cqt.collector.run_stream_collector` asks of a WebSocket venue."""
    service: str              # program name; resume_state.service
    source: str               # gaps.source of its streams
    rest_name: str            # name of its REST client (counters, captures)
    rest_base: str
    rest_timeout_s: float
    loop_settings: Any        # cqt.stream.LoopSettings

    def endpoints(self) -> list:
        """The `cqt.stream.Endpoint`s to keep open."""

    def heartbeat_head(self) -> dict:
        """First keys of the heartbeat detail (what it collects)."""

    def complete_positions(self, db_path: Any, positions: dict) -> None:
        """Resume positions resume_state lacks, from the tables (an older database)."""

    def gap_handler(self, svc: Any, loop: Any, rest: Any, gaps: Any, backfiller: Any) -> GapHandler:
        """The gap hook over this venue's fillers."""

    def started(self, loop: Any, positions: dict) -> None:
        """Log what is being streamed."""
