"""`bin/cqt replay FILE [--db PATH]`: push a capture through the live parsers and writer.

Every WebSocket frame goes through the same parser as live (`parse_ws_frame`), every
recorded REST answer with status 200 through the matching REST parser
(`parse_rest_body`: aggTrades, Upbit ticks, the pollers' endpoints, Coinglass), and
the rows through the same `BatchWriter` with the same idempotent statements — as fast
as the machine allows. "Now" for every sanity rule is the record's `recv_ts_ms`, so an
old capture replays cleanly; symbols and codes are taken as they come.

Binance aggTrade lines (most of a busy capture) take a fast path that yields exactly the
row the full path would (`cqt.venues.binance.parse.agg_trade_capture_row`); any line it
declines goes through the full path, so rejects are the same too. Revisable rows
(binance_ratios, Coinglass bars) are written with the pollers' revise-only upsert
(`Parsed.sql` = `store_sql`), so a re-fetched unchanged answer keeps its first recv_ts_ms.

A line that is not a well-formed record (not UTF-8, not JSON, not an object, a missing
or mistyped field, `raw` that is not a string, a cut last line) is a reject in the
`capture` source with a reason naming the fault; a parser that fails on a record in an
unexpected way makes it a `parser_error` reject. Either way the lines around it are
stored and the replay goes on. Text kept for a reject is masked before it is cut.

Differences from the live path, by design: bookTicker frames are not thinned (a capture
keeps every frame, and so does its replay); no gaps are detected or backfilled (there is
no network); Coinglass answers also get their `coinglass_call_status` row, with
`latency_ms` NULL (not recorded in captures).

The modules, each importing only those above it:

    records    read_record / BadRecord: one capture line checked field by field
    processor  RecordProcessor, ReplayStats: lines -> rows and rejects (fast path, parsers, packing)
    blocks     replay_file: forked parsers over blocks of the file, the writes in file order
    cli        the `cqt replay` command
"""
