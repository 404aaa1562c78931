"""One package per exchange (`upbit`, `binance`, `coinglass`), behind one small interface.

    base.py      the venue interface: `Venue` (record every package declares as VENUE),
                 `StreamVenue` / `GapHandler` (what the one WebSocket collector asks of a
                 venue)
    common.py    the parsers' shared contract: Parsed / Reject, table layout and SQL
                 (insert_sql, store_sql), value and time checks, intervals
    registry.py  every venue, and the dispatch by capture source: a WebSocket frame or a
                 recorded REST answer -> that venue's parser (replay, synth, pollers)

Each venue package holds its pure parsers (`parse.py`), its programs (`collect.py` for
cqt-collect-<venue>, `poll.py` for cqt-poll-<venue>) with their endpoints, subscription
messages, REST jobs and error formats, and its backfill filler (`backfill.py`). The
shared machinery they run on: `cqt.stream` (the WebSocket loop), `cqt.poll` (the REST
loop), `cqt.rest` (the HTTP client), `cqt.backfill` (gap book, worker) and
`cqt.collector` (the life of a collector process).

This module imports nothing, so a venue's modules can be imported one by one.
"""
