"""The one WebSocket loop every WebSocket collector runs (Upbit, Binance USD-M futures).

A collector describes its connections as `Endpoint`s (URL, subscription, the pure parser,
a `StreamRule` per canonical stream) and hands them to a `StreamLoop`, which runs one
receive thread per endpoint:

    connect (websocket-client; skip_utf8_validation — the JSON parser validates anyway;
             optional suppress_origin for Upbit) -> send the subscription ->
    receive with a short timeout (so stop requests and the watchdog are seen at once) ->
    capture the raw frame -> parse -> rows into a per-endpoint RowBuffer, which hands
    them to the Service's BatchWriter in chunks, each followed by the resume position
    of its streams (same queue, so a kill -9 can only make the resume lag).

Around that:

* connection pacing: at most one new connection per `connect_interval_s` across every
  endpoint of the loop (CQT_WS_CONNECT_INTERVAL_S), so a drop that takes several
  connections down does not turn into a burst of connects; a rollover waits for a free slot;
* stall watchdog per stream (one per symbol and kind), keyed on the exchange's event time: no newer event for
  `StreamRule.stall_s` seconds -> reconnect (streams without a rule, like forceOrder,
  are never watched);
* reconnect on every close (even code 1000), error or stall, with exponential backoff
  and full jitter (tenacity's wait_random_exponential: delay in [0, min(cap, base*2^(n-1))]),
  reset only after a connection that was up stayed up `backoff_reset_s` (a failed connect
  never resets it); Binance serverShutdown -> immediate reconnect without backoff; a
  connect failure is logged when it starts or changes, then once a minute with a count;
* planned rollover before the exchange's 24 h cut: the new connection is opened and
  subscribed first, both are read until the new one delivers, then the old one is closed
  (duplicates are harmless: inserts are idempotent and id tracking keeps the high-water);
* Upbit: a text `PING` when nothing was received for `idle_ping_s`;
* gap hook: id jumps on id-sequenced streams (Binance aggTrade ids are consecutive) and,
  after a (re)connect, the window between the last event before and the first after
  (`StreamRule.gap_min_ms`) become `Gap`s passed to `handler.on_gap`, so the collector
  records and backfills them;
* thinning (`StreamRule.thin_ms`): at most one row per slot of event time, the last one;
* bookkeeping per venue symbol (the stream name's part before '@'): resume rows carry it,
  `svc.count(..., symbol=)` splits ingest_stats by it, a rejected frame carries the symbol
  the endpoint's `reject_symbol` finds in it, and the heartbeat groups streams by it.

All timers use the monotonic clock; `recv_ts_ms` is `cqt.timeutil.now_ms()`.

The modules, each importing only those above it:

    settings    LoopSettings (the CQT_* knobs)
    backoff     Backoff (full-jitter reconnect delays), ConnectPacer (one new connection per interval),
                RepeatedLog (a failure logged once per change)
    endpoints   what a collector describes: Endpoint, StreamRule, Gap, the Handler it reports gaps to
    state       StreamState: one canonical stream's ids, positions and thinning slot; the
                per-symbol heartbeat view
    buffer      RowBuffer, multi-row packing (pack_rows), the resume-position statement
    connection  Connection: one endpoint's socket, counters, buffer and backoff
    loop        StreamLoop: the receive threads, watchdog, rollover, gap and thinning logic

The loop logs as `cqt.stream`.
"""
from .backoff import Backoff, ConnectPacer, RepeatedLog
from .buffer import PACK_ROWS, RESUME_SQL, RowBuffer, pack_rows, rows_per_statement
from .endpoints import NO_RULE, Endpoint, Gap, Handler, StreamRule, default_position, venue_symbol
from .loop import StreamLoop
from .settings import LoopSettings
from .state import StreamState, symbols_snapshot

__all__ = [
    "LoopSettings", "Backoff", "ConnectPacer", "RepeatedLog", "NO_RULE", "Endpoint", "Gap", "Handler",
    "StreamRule", "default_position", "venue_symbol", "StreamState", "symbols_snapshot", "PACK_ROWS",
    "RESUME_SQL", "RowBuffer", "pack_rows", "rows_per_statement", "StreamLoop",
]
