-- Derived tables written by cqt-aggregate. A row is stamped with the moment it
-- became known: the bar covering (t-1 s, t] has ts_ms = t (its end).

CREATE TABLE market_1s (
    ts_ms            INTEGER PRIMARY KEY,
    -- Upbit KRW-BTC trades in (ts_ms-1000, ts_ms]; OHLC NULL when no trade (has_trade = 0)
    open             REAL,
    high             REAL,
    low              REAL,
    close            REAL,              -- carries the last price forward when no trade
    volume           REAL NOT NULL,
    trade_count      INTEGER NOT NULL,
    vwap             REAL,
    buy_volume       REAL NOT NULL,
    sell_volume      REAL NOT NULL,
    has_trade        INTEGER NOT NULL,  -- 1 = a real trade in this second, 0 = carried forward
    close_age_ms     INTEGER,           -- ts_ms - time of the trade that set close
    -- latest Upbit KRW-BTC order book at or before ts_ms
    best_bid         REAL,
    best_ask         REAL,
    mid              REAL,
    spread_bps       REAL,
    book_imbalance   REAL,              -- (bid_size - ask_size) / (bid_size + ask_size), level sums
    book_age_ms      INTEGER,
    -- Binance context (latest at or before ts_ms)
    binance_last     REAL,
    binance_age_ms   INTEGER,
    mark_price       REAL,
    index_price      REAL,
    funding_rate     REAL,
    mark_age_ms      INTEGER,
    -- Upbit KRW-USDT last trade
    usdt_krw         REAL,
    usdt_krw_age_ms  INTEGER,
    kimchi_premium   REAL               -- close / (binance_last * usdt_krw) - 1
);

CREATE TABLE predictions (
    ts_ms            INTEGER PRIMARY KEY,
    horizon_sec      INTEGER NOT NULL,
    model            TEXT NOT NULL,
    score            REAL,
    -- Upbit KRW-BTC log returns of close over the look-back
    ret_1s           REAL,
    ret_5s           REAL,
    ret_30s          REAL,
    ret_60s          REAL,
    ret_300s         REAL,
    -- realized volatility: std of 1 s log returns over the look-back (not annualized)
    rv_60s           REAL,
    rv_300s          REAL,
    -- taker flow imbalance (buy - sell) / (buy + sell) of Upbit volume
    flow_imb_10s     REAL,
    flow_imb_60s     REAL,
    book_imbalance   REAL,
    spread_bps       REAL,
    kimchi_premium   REAL,
    kimchi_chg_60s   REAL,
    -- Binance BTCUSDT log returns of last price
    bn_ret_1s        REAL,
    bn_ret_5s        REAL,
    bn_ret_30s       REAL,
    bn_ret_60s       REAL,
    basis_bps        REAL,              -- (mark - index) / index * 1e4
    funding_rate     REAL,
    oi_chg_300s      REAL,              -- relative change of Binance open interest over 5 min
    ls_ratio         REAL,              -- Binance global long/short account ratio (latest available)
    liq_notional_60s REAL,              -- Binance forced-order notional (USDT) over 60 s
    cg_oi_chg        REAL,              -- Coinglass aggregated OI: close/open - 1 of the latest available bar
    cg_funding       REAL               -- Coinglass funding close of the latest available bar
);

-- Late data seen by cqt-aggregate: raw rows that became visible only after the second
-- they belong to had been written, so the live row did not include them.
--   upbit_trades: ts_ms = bar second; late_rows = trades stored for that second minus
--                 market_1s.trade_count as written (detected by a periodic recount);
--   coinglass_*:  ts_ms = availability second; late_rows = bars received more than the
--                 grace delay after their availability time (avail_ts_ms + delay).
-- `bin/cqt-aggregate --rebuild` recomputes the range with the late rows and marks them
-- corrected (corrected_rows = late_rows, rebuilt_ts_ms); pending = late_rows - corrected_rows.
-- (Kept in 0002 with the tables it describes: 0003 is reserved for the collectors.)
CREATE TABLE aggregate_late (
    source               TEXT NOT NULL,
    ts_ms                INTEGER NOT NULL,
    late_rows            INTEGER NOT NULL,
    corrected_rows       INTEGER NOT NULL DEFAULT 0,
    first_detected_ts_ms INTEGER NOT NULL,
    last_detected_ts_ms  INTEGER NOT NULL,
    rebuilt_ts_ms        INTEGER,
    PRIMARY KEY (source, ts_ms)
) WITHOUT ROWID;
CREATE INDEX aggregate_late_ts ON aggregate_late (ts_ms);
-- aggregate_late.source, as cqt-aggregate writes it (docs/aggregate.md "Late data"):
--   upbit_trades (KRW-BTC), upbit_trades_usdt (KRW-USDT), upbit_orderbook, binance_agg_trades,
--   binance_mark_price, binance_liquidations: late_rows = rows of the stream whose availability
--                 second had already been written when they landed (per-second row counts,
--                 added up as they are found; after a restart also rows received after the
--                 previous run stopped);
--   coinglass_open_interest, coinglass_funding: as described above.
