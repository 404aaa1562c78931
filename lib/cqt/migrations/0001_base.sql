-- cqt schema, version 1. Times are INTEGER milliseconds since the Unix epoch (UTC),
-- prices and sizes REAL. Every raw table keeps the source's event time and the
-- local receive time (recv_ts_ms). Natural keys make every insert idempotent.

-- ---------------------------------------------------------------- service bookkeeping
CREATE TABLE heartbeats (
    service TEXT NOT NULL,
    ts_ms   INTEGER NOT NULL,
    state   TEXT NOT NULL,            -- starting | running | reconnecting | stopping | stopped | error
    detail  TEXT,                     -- JSON object: counters, queue depth, lag ...
    PRIMARY KEY (service, ts_ms)
) WITHOUT ROWID;
CREATE INDEX heartbeats_ts ON heartbeats (ts_ms);

-- One row per process lifetime: start, stop, how it ended (the report's stop reasons).
CREATE TABLE service_runs (
    service       TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    start_ts_ms   INTEGER NOT NULL,
    stop_ts_ms    INTEGER,
    exit_code     INTEGER,
    reason        TEXT,
    PRIMARY KEY (service, start_ts_ms, pid)
);

-- Warnings and errors, rate-limited: identical messages within an hour bucket are
-- one row whose count grows, so a flood cannot fill the disk and the top-5 stays true.
CREATE TABLE events (
    ts_ms      INTEGER NOT NULL,      -- first occurrence in the bucket
    last_ts_ms INTEGER NOT NULL,
    hour_ms    INTEGER NOT NULL,      -- bucket start (ts_ms floored to the hour)
    service    TEXT NOT NULL,
    level      TEXT NOT NULL,
    message    TEXT NOT NULL,
    count      INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (service, level, message, hour_ms)
);
CREATE INDEX events_ts ON events (ts_ms);

-- Bad input. The first few raw payloads per (source, reason, hour) are kept here;
-- every reject is counted in reject_counts, so a format change cannot fill the disk.
CREATE TABLE rejects (
    id      INTEGER PRIMARY KEY,
    ts_ms   INTEGER NOT NULL,
    source  TEXT NOT NULL,
    reason  TEXT NOT NULL,
    raw     TEXT
);
CREATE INDEX rejects_ts ON rejects (ts_ms);
CREATE TABLE reject_counts (
    source  TEXT NOT NULL,
    reason  TEXT NOT NULL,
    hour_ms INTEGER NOT NULL,
    count   INTEGER NOT NULL,
    last_ts_ms INTEGER NOT NULL,
    PRIMARY KEY (source, reason, hour_ms)
) WITHOUT ROWID;

-- Frames received / rows produced / rejects per source, as deltas per heartbeat
-- interval: the denominator of the reject ratio.
CREATE TABLE ingest_stats (
    service TEXT NOT NULL,
    source  TEXT NOT NULL,
    ts_ms   INTEGER NOT NULL,
    frames  INTEGER NOT NULL,
    rows    INTEGER NOT NULL,
    rejects INTEGER NOT NULL,
    PRIMARY KEY (service, source, ts_ms)
) WITHOUT ROWID;
CREATE INDEX ingest_stats_ts ON ingest_stats (ts_ms);

-- Resume position per collector stream, written in the same transaction as its rows.
CREATE TABLE resume_state (
    service    TEXT NOT NULL,
    stream     TEXT NOT NULL,
    last_id    INTEGER,
    last_ts_ms INTEGER,
    updated_ts_ms INTEGER NOT NULL,
    PRIMARY KEY (service, stream)
) WITHOUT ROWID;

-- Every detected gap (id jump, reconnect window, stall) and how it was resolved.
CREATE TABLE gaps (
    id             INTEGER PRIMARY KEY,
    source         TEXT NOT NULL,        -- upbit | binance_ws | binance_rest | coinglass
    stream         TEXT NOT NULL,        -- e.g. BTCUSDT@aggTrade, KRW-BTC@trade
    detected_ts_ms INTEGER NOT NULL,
    from_id        INTEGER,
    to_id          INTEGER,
    from_ts_ms     INTEGER,
    to_ts_ms       INTEGER,
    filled_ts_ms   INTEGER,
    filled_rows    INTEGER,
    status         TEXT NOT NULL DEFAULT 'open'  -- open | filled | partial | unfillable
);
CREATE INDEX gaps_detected ON gaps (detected_ts_ms);
CREATE INDEX gaps_status ON gaps (status);

-- ---------------------------------------------------------------- Upbit
CREATE TABLE upbit_trades (
    code          TEXT NOT NULL,
    sequential_id INTEGER NOT NULL,
    trade_ts_ms   INTEGER NOT NULL,   -- Upbit trade_timestamp (not the message timestamp)
    price         REAL NOT NULL,
    volume        REAL NOT NULL,
    side          TEXT NOT NULL,      -- taker side: ASK -> 'sell', BID -> 'buy'
    recv_ts_ms    INTEGER NOT NULL,
    PRIMARY KEY (code, sequential_id)
) WITHOUT ROWID;
CREATE INDEX upbit_trades_ts ON upbit_trades (code, trade_ts_ms);

CREATE TABLE upbit_orderbook (
    code           TEXT NOT NULL,
    ts_ms          INTEGER NOT NULL,  -- message timestamp
    best_bid       REAL NOT NULL,
    best_ask       REAL NOT NULL,
    best_bid_size  REAL NOT NULL,
    best_ask_size  REAL NOT NULL,
    total_bid_size REAL NOT NULL,
    total_ask_size REAL NOT NULL,
    levels         INTEGER,
    recv_ts_ms     INTEGER NOT NULL,
    PRIMARY KEY (code, ts_ms)
) WITHOUT ROWID;

CREATE TABLE upbit_ticker (
    code                 TEXT NOT NULL,
    ts_ms                INTEGER NOT NULL,   -- message timestamp
    trade_ts_ms          INTEGER,
    trade_price          REAL NOT NULL,
    prev_closing_price   REAL,
    acc_trade_volume_24h REAL,
    acc_trade_price_24h  REAL,
    recv_ts_ms           INTEGER NOT NULL,
    PRIMARY KEY (code, ts_ms)
) WITHOUT ROWID;

-- ---------------------------------------------------------------- Binance USD-M futures (WebSocket)
CREATE TABLE binance_agg_trades (
    symbol         TEXT NOT NULL,
    agg_id         INTEGER NOT NULL,
    trade_ts_ms    INTEGER NOT NULL,   -- T
    price          REAL NOT NULL,
    qty            REAL NOT NULL,
    side           TEXT NOT NULL,      -- taker side: m=true -> 'sell'
    first_trade_id INTEGER NOT NULL,
    last_trade_id  INTEGER NOT NULL,
    event_ts_ms    INTEGER,            -- E (NULL for REST backfill rows)
    recv_ts_ms     INTEGER NOT NULL,
    PRIMARY KEY (symbol, agg_id)
) WITHOUT ROWID;
CREATE INDEX binance_agg_trades_ts ON binance_agg_trades (symbol, trade_ts_ms);

CREATE TABLE binance_mark_price (
    symbol             TEXT NOT NULL,
    event_ts_ms        INTEGER NOT NULL,
    mark_price         REAL NOT NULL,
    index_price        REAL,
    funding_rate       REAL,
    next_funding_ts_ms INTEGER,
    recv_ts_ms         INTEGER NOT NULL,
    PRIMARY KEY (symbol, event_ts_ms)
) WITHOUT ROWID;

CREATE TABLE binance_book_ticker (
    symbol      TEXT NOT NULL,
    update_id   INTEGER NOT NULL,    -- u
    event_ts_ms INTEGER NOT NULL,    -- E
    bid_price   REAL NOT NULL,
    bid_qty     REAL NOT NULL,
    ask_price   REAL NOT NULL,
    ask_qty     REAL NOT NULL,
    recv_ts_ms  INTEGER NOT NULL,
    PRIMARY KEY (symbol, update_id)
) WITHOUT ROWID;
CREATE INDEX binance_book_ticker_ts ON binance_book_ticker (symbol, event_ts_ms);

CREATE TABLE binance_liquidations (
    symbol       TEXT NOT NULL,
    event_ts_ms  INTEGER NOT NULL,    -- E
    trade_ts_ms  INTEGER NOT NULL,    -- o.T
    side         TEXT NOT NULL,       -- the liquidation order's side: 'sell' = a long was liquidated
    price        REAL NOT NULL,
    avg_price    REAL,
    qty          REAL NOT NULL,       -- o.q
    filled_qty   REAL,                -- o.z
    status       TEXT,
    recv_ts_ms   INTEGER NOT NULL,
    PRIMARY KEY (symbol, event_ts_ms, side)
) WITHOUT ROWID;

-- ---------------------------------------------------------------- Binance USD-M futures (REST)
CREATE TABLE binance_open_interest (
    symbol        TEXT NOT NULL,
    ts_ms         INTEGER NOT NULL,   -- 'time' of the answer
    open_interest REAL NOT NULL,
    recv_ts_ms    INTEGER NOT NULL,
    PRIMARY KEY (symbol, ts_ms)
) WITHOUT ROWID;

-- kind: global_long_short | top_long_short_position | taker_buy_sell | open_interest_hist
-- ts_ms is Binance's 'timestamp' (aligned to the period); value is the ratio (or
-- sumOpenInterest for open_interest_hist); value2/value3 keep the parts
-- (long/short account shares, buy/sell volume, sumOpenInterestValue).
CREATE TABLE binance_ratios (
    symbol     TEXT NOT NULL,
    kind       TEXT NOT NULL,
    period     TEXT NOT NULL,
    ts_ms      INTEGER NOT NULL,
    value      REAL NOT NULL,
    value2     REAL,
    value3     REAL,
    recv_ts_ms INTEGER NOT NULL,
    PRIMARY KEY (symbol, kind, period, ts_ms)
) WITHOUT ROWID;
CREATE INDEX binance_ratios_ts ON binance_ratios (kind, ts_ms);

CREATE TABLE binance_premium_index (
    symbol             TEXT NOT NULL,
    ts_ms              INTEGER NOT NULL,
    mark_price         REAL NOT NULL,
    index_price        REAL,
    last_funding_rate  REAL,
    interest_rate      REAL,
    next_funding_ts_ms INTEGER,
    recv_ts_ms         INTEGER NOT NULL,
    PRIMARY KEY (symbol, ts_ms)
) WITHOUT ROWID;

CREATE TABLE binance_funding_rate (
    symbol          TEXT NOT NULL,
    funding_ts_ms   INTEGER NOT NULL,
    funding_rate    REAL NOT NULL,
    mark_price      REAL,
    recv_ts_ms      INTEGER NOT NULL,
    PRIMARY KEY (symbol, funding_ts_ms)
) WITHOUT ROWID;

-- ---------------------------------------------------------------- Coinglass v4
-- open_ts_ms is the bar's 'time' (its open); avail_ts_ms = open_ts_ms + interval (its
-- close, the first moment it can be final). Publication delay is added at query time.
CREATE TABLE coinglass_open_interest (
    symbol      TEXT NOT NULL,       -- coin, e.g. BTC (aggregated over exchanges)
    interval    TEXT NOT NULL,
    open_ts_ms  INTEGER NOT NULL,
    avail_ts_ms INTEGER NOT NULL,
    open        REAL NOT NULL,
    high        REAL NOT NULL,
    low         REAL NOT NULL,
    close       REAL NOT NULL,
    recv_ts_ms  INTEGER NOT NULL,
    PRIMARY KEY (symbol, interval, open_ts_ms)
) WITHOUT ROWID;
CREATE INDEX coinglass_open_interest_avail ON coinglass_open_interest (avail_ts_ms);

CREATE TABLE coinglass_funding (
    exchange    TEXT NOT NULL,
    symbol      TEXT NOT NULL,       -- pair, e.g. BTCUSDT
    interval    TEXT NOT NULL,
    open_ts_ms  INTEGER NOT NULL,
    avail_ts_ms INTEGER NOT NULL,
    open        REAL NOT NULL,
    high        REAL NOT NULL,
    low         REAL NOT NULL,
    close       REAL NOT NULL,
    recv_ts_ms  INTEGER NOT NULL,
    PRIMARY KEY (exchange, symbol, interval, open_ts_ms)
) WITHOUT ROWID;
CREATE INDEX coinglass_funding_avail ON coinglass_funding (avail_ts_ms);

CREATE TABLE coinglass_liquidations (
    symbol         TEXT NOT NULL,    -- coin
    exchanges      TEXT NOT NULL,    -- the exchange_list asked for
    interval       TEXT NOT NULL,
    open_ts_ms     INTEGER NOT NULL,
    avail_ts_ms    INTEGER NOT NULL,
    long_liq_usd   REAL NOT NULL,
    short_liq_usd  REAL NOT NULL,
    recv_ts_ms     INTEGER NOT NULL,
    PRIMARY KEY (symbol, exchanges, interval, open_ts_ms)
) WITHOUT ROWID;
CREATE INDEX coinglass_liquidations_avail ON coinglass_liquidations (avail_ts_ms);

CREATE TABLE coinglass_long_short (
    exchange      TEXT NOT NULL,
    symbol        TEXT NOT NULL,     -- pair
    interval      TEXT NOT NULL,
    open_ts_ms    INTEGER NOT NULL,
    avail_ts_ms   INTEGER NOT NULL,
    long_percent  REAL NOT NULL,
    short_percent REAL NOT NULL,
    long_short_ratio REAL NOT NULL,
    recv_ts_ms    INTEGER NOT NULL,
    PRIMARY KEY (exchange, symbol, interval, open_ts_ms)
) WITHOUT ROWID;
CREATE INDEX coinglass_long_short_avail ON coinglass_long_short (avail_ts_ms);

-- One row per Coinglass HTTP call, success or not. error is a short reason, never the key.
CREATE TABLE coinglass_call_status (
    id          INTEGER PRIMARY KEY,
    ts_ms       INTEGER NOT NULL,
    endpoint    TEXT NOT NULL,
    http_status INTEGER,             -- NULL when no answer (timeout, refused)
    ok          INTEGER NOT NULL,    -- 1 = HTTP 200 and code "0"
    latency_ms  INTEGER,
    rows        INTEGER NOT NULL DEFAULT 0,
    error       TEXT
);
CREATE INDEX coinglass_call_status_ts ON coinglass_call_status (ts_ms);
CREATE INDEX coinglass_call_status_ep ON coinglass_call_status (endpoint, ts_ms);

-- ---------------------------------------------------------------- checks and exports
CREATE TABLE check_runs (
    id           INTEGER PRIMARY KEY,
    ts_ms        INTEGER NOT NULL,   -- when the check ran
    check_name   TEXT NOT NULL,      -- altdata_check | feature_check | feature_leak_check | coinglass_check | run_pipeline_checks
    window_s     INTEGER NOT NULL,
    as_of_ts_ms  INTEGER,
    exit_code    INTEGER NOT NULL,
    summary_json TEXT NOT NULL
);
CREATE INDEX check_runs_ts ON check_runs (check_name, ts_ms);

CREATE TABLE export_runs (
    id           INTEGER PRIMARY KEY,
    ts_ms        INTEGER NOT NULL,
    output       TEXT NOT NULL,
    size_bytes   INTEGER NOT NULL,
    rows         INTEGER NOT NULL,
    horizon_sec  INTEGER NOT NULL,
    threshold    TEXT NOT NULL,
    from_ts_ms   INTEGER NOT NULL,
    to_ts_ms     INTEGER NOT NULL,
    drops_json   TEXT NOT NULL,
    labels_json  TEXT NOT NULL,
    volatility   REAL,
    summary_json TEXT
);
CREATE INDEX export_runs_ts ON export_runs (ts_ms);
