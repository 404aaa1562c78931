-- Many symbols: the derived tables are keyed by (symbol, ts_ms), symbol = the base asset
-- (BTC, ETH, ...). A database written by the single-symbol cqt held BTC only: its rows are
-- copied unchanged with symbol 'BTC'. The bookkeeping tables gain the venue symbol the row
-- is about (BTCUSDT, KRW-BTC, a Coinglass coin), taken from the stream name where one exists.

CREATE TABLE market_1s_v5 (

    symbol           TEXT NOT NULL,     -- base asset (BTC)
    ts_ms            INTEGER NOT NULL,
    -- Upbit KRW-<symbol> trades in (ts_ms-1000, ts_ms]; OHLC NULL when no trade (has_trade = 0)
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
    -- latest Upbit KRW-<symbol> order book at or before ts_ms
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
    kimchi_premium   REAL,              -- close / (binance_last * usdt_krw) - 1
    PRIMARY KEY (symbol, ts_ms)
) WITHOUT ROWID;
INSERT INTO market_1s_v5 (symbol, ts_ms, open, high, low, close, volume, trade_count, vwap, buy_volume, sell_volume, has_trade, close_age_ms, best_bid, best_ask, mid, spread_bps, book_imbalance, book_age_ms, binance_last, binance_age_ms, mark_price, index_price, funding_rate, mark_age_ms, usdt_krw, usdt_krw_age_ms, kimchi_premium)
    SELECT 'BTC', ts_ms, open, high, low, close, volume, trade_count, vwap, buy_volume, sell_volume, has_trade, close_age_ms, best_bid, best_ask, mid, spread_bps, book_imbalance, book_age_ms, binance_last, binance_age_ms, mark_price, index_price, funding_rate, mark_age_ms, usdt_krw, usdt_krw_age_ms, kimchi_premium FROM market_1s;
DROP TABLE market_1s;
ALTER TABLE market_1s_v5 RENAME TO market_1s;
CREATE INDEX market_1s_ts ON market_1s (ts_ms);

CREATE TABLE predictions_v5 (

    symbol           TEXT NOT NULL,     -- base asset (BTC)
    ts_ms            INTEGER NOT NULL,
    horizon_sec      INTEGER NOT NULL,
    model            TEXT NOT NULL,
    score            REAL,
    -- Upbit KRW-<symbol> log returns of close over the look-back
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
    -- Binance <symbol>USDT log returns of last price
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
    cg_funding       REAL,              -- Coinglass funding close of the latest available bar
    PRIMARY KEY (symbol, ts_ms)
) WITHOUT ROWID;
INSERT INTO predictions_v5 (symbol, ts_ms, horizon_sec, model, score, ret_1s, ret_5s, ret_30s, ret_60s, ret_300s, rv_60s, rv_300s, flow_imb_10s, flow_imb_60s, book_imbalance, spread_bps, kimchi_premium, kimchi_chg_60s, bn_ret_1s, bn_ret_5s, bn_ret_30s, bn_ret_60s, basis_bps, funding_rate, oi_chg_300s, ls_ratio, liq_notional_60s, cg_oi_chg, cg_funding)
    SELECT 'BTC', ts_ms, horizon_sec, model, score, ret_1s, ret_5s, ret_30s, ret_60s, ret_300s, rv_60s, rv_300s, flow_imb_10s, flow_imb_60s, book_imbalance, spread_bps, kimchi_premium, kimchi_chg_60s, bn_ret_1s, bn_ret_5s, bn_ret_30s, bn_ret_60s, basis_bps, funding_rate, oi_chg_300s, ls_ratio, liq_notional_60s, cg_oi_chg, cg_funding FROM predictions;
DROP TABLE predictions;
ALTER TABLE predictions_v5 RENAME TO predictions;
CREATE INDEX predictions_ts ON predictions (ts_ms);

-- Late data per asset: the same ledger, one per symbol.
CREATE TABLE aggregate_late_v5 (
    symbol               TEXT NOT NULL,
    source               TEXT NOT NULL,
    ts_ms                INTEGER NOT NULL,
    late_rows            INTEGER NOT NULL,
    corrected_rows       INTEGER NOT NULL DEFAULT 0,
    first_detected_ts_ms INTEGER NOT NULL,
    last_detected_ts_ms  INTEGER NOT NULL,
    rebuilt_ts_ms        INTEGER,
    PRIMARY KEY (symbol, source, ts_ms)
) WITHOUT ROWID;
INSERT INTO aggregate_late_v5 (symbol, source, ts_ms, late_rows, corrected_rows, first_detected_ts_ms,
                               last_detected_ts_ms, rebuilt_ts_ms)
    SELECT 'BTC', source, ts_ms, late_rows, corrected_rows, first_detected_ts_ms, last_detected_ts_ms,
           rebuilt_ts_ms FROM aggregate_late;
DROP TABLE aggregate_late;
ALTER TABLE aggregate_late_v5 RENAME TO aggregate_late;
CREATE INDEX aggregate_late_ts ON aggregate_late (ts_ms);

-- Frames/rows/rejects per symbol. '' = not split by symbol (every row written before this
-- version, and sources that have no symbol).
CREATE TABLE ingest_stats_v5 (
    service TEXT NOT NULL,
    source  TEXT NOT NULL,
    symbol  TEXT NOT NULL DEFAULT '',
    ts_ms   INTEGER NOT NULL,
    frames  INTEGER NOT NULL,
    rows    INTEGER NOT NULL,
    rejects INTEGER NOT NULL,
    PRIMARY KEY (service, source, symbol, ts_ms)
) WITHOUT ROWID;
INSERT INTO ingest_stats_v5 (service, source, symbol, ts_ms, frames, rows, rejects)
    SELECT service, source, '', ts_ms, frames, rows, rejects FROM ingest_stats;
DROP TABLE ingest_stats;
ALTER TABLE ingest_stats_v5 RENAME TO ingest_stats;
CREATE INDEX ingest_stats_ts ON ingest_stats (ts_ms);

-- The venue symbol of a stream 'BTCUSDT@aggTrade' / 'KRW-BTC@trade' is the part before '@'.
ALTER TABLE gaps ADD COLUMN symbol TEXT;
UPDATE gaps SET symbol = substr(stream, 1, instr(stream, '@') - 1) WHERE instr(stream, '@') > 1;
CREATE INDEX gaps_symbol ON gaps (symbol, detected_ts_ms);

ALTER TABLE resume_state ADD COLUMN symbol TEXT;
UPDATE resume_state SET symbol = substr(stream, 1, instr(stream, '@') - 1) WHERE instr(stream, '@') > 1;

-- NULL when the frame was too broken to tell.
ALTER TABLE rejects ADD COLUMN symbol TEXT;

-- The checks and features read one symbol's newest ratio (`symbol = ? AND kind = ? AND ts_ms <= ?`);
-- without this index SQLite takes (kind, ts_ms) and walks back through every symbol's history.
CREATE INDEX binance_ratios_symbol_ts ON binance_ratios (symbol, kind, ts_ms);
