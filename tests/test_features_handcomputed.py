"""Hand-computed market_1s bars and features on a tiny fixture (a few dozen rows).

Times are relative to T (a whole second). Every expected value below is worked out by
hand from the rows inserted here, following docs/aggregate.md.
"""
from __future__ import annotations

import math
import sqlite3

import numpy as np
import pytest

from cqt import features, timerule
from cqt.db import open_db
from cqt.features import PREDICTION_COLUMNS, FeatureParams, compute_range, features_at, market_at

T = 1_700_000_000_000
P = FeatureParams()  # defaults: KRW-BTC, KRW-USDT, BTCUSDT, 1h Coinglass bars, 60 s delay


def _db(tmp_path) -> sqlite3.Connection:
    conn = open_db(tmp_path / "hand.db")
    ins = conn.executemany
    # Upbit KRW-BTC trades: (seq, ts, price, volume, side)
    ins("INSERT INTO upbit_trades VALUES ('KRW-BTC', ?, ?, ?, ?, ?, ?)", [
        (1, T - 10_000, 100.0, 1.0, "sell", T - 9_950),     # history: close(T) = 100 carried
        (2, T + 100, 100.0, 1.0, "buy", T + 150),           # bar T+1000
        (3, T + 500, 102.0, 2.0, "sell", T + 560),
        (4, T + 1000, 101.0, 1.0, "buy", T + 1040),         # exactly on the bar end: bar T+1000
        # bar T+2000: no trade
        (7, T + 2001, 103.0, 0.5, "buy", T + 2050),         # bar T+3000
        (9, T + 2500, 104.0, 1.0, "buy", T + 2550),         # same ms: order by sequential_id ...
        (8, T + 2500, 99.0, 1.0, "sell", T + 2550),         # ... so 99 (seq 8) comes first, 104 closes
    ])
    ins("INSERT INTO upbit_trades VALUES ('KRW-USDT', ?, ?, ?, ?, ?, ?)", [
        (1, T - 5_000, 2.0, 10.0, "buy", T - 4_990),
    ])
    # order book: (ts, bid, ask, bid_size, ask_size, total_bid, total_ask)
    ins("INSERT INTO upbit_orderbook VALUES ('KRW-BTC', ?, ?, ?, ?, ?, ?, ?, 15, ?)", [
        (T + 900, 100.0, 102.0, 1.0, 1.0, 3.0, 1.0, T + 950),
        (T + 2200, 103.0, 104.0, 1.0, 1.0, 1.0, 3.0, T + 2250),
    ])
    # Binance aggTrades: (agg_id, ts, price)
    ins("INSERT INTO binance_agg_trades VALUES ('BTCUSDT', ?, ?, ?, 0.1, 'buy', ?, ?, ?, ?)", [
        (5, T - 70_000, 49.0, 5, 5, T - 70_000, T - 69_990),
        (10, T + 200, 50.0, 10, 10, T + 201, T + 250),
        (11, T + 800, 51.0, 11, 11, T + 801, T + 850),
        (12, T + 1500, 50.5, 12, 12, None, T + 1600),     # a REST-backfilled row (no E)
    ])
    ins("INSERT INTO binance_mark_price VALUES ('BTCUSDT', ?, ?, ?, ?, ?, ?)", [
        (T + 1000, 51.1, 51.0, 0.0001, T + 28_800_000, T + 1030),
    ])
    # liquidation at T+1500: avg price 50.5 x filled 2 = 101 USDT
    ins("INSERT INTO binance_liquidations VALUES ('BTCUSDT', ?, ?, 'sell', 50.0, 50.5, 2.0, 2.0, 'FILLED', ?)", [
        (T + 1500, T + 1497, T + 1550),
    ])
    # open interest: (ts, value, recv); the last one is only available at its recv (T+1500)
    ins("INSERT INTO binance_open_interest VALUES ('BTCUSDT', ?, ?, ?)", [
        (T - 310_000, 1000.0, T - 309_900), (T - 200_000, 1050.0, T - 199_990), (T + 500, 1100.0, T + 1500),
    ])
    # global long/short 5m: ts = period start, available at max(ts + 5 min, recv)
    ins("INSERT INTO binance_ratios VALUES ('BTCUSDT', 'global_long_short', '5m', ?, ?, 0.6, 0.4, ?)", [
        (T - 600_000, 1.5, T - 299_000),     # available T-299000
        (T - 300_000, 1.7, T + 1_200),        # period ended at T, received T+1200
        (T, 9.9, T + 1_500),                  # still-open period: available only at T+300000
    ])
    # Coinglass 1h bars: available at close + 60 s
    ins("INSERT INTO coinglass_open_interest VALUES ('BTC', '1h', ?, ?, ?, ?, ?, ?, ?)", [
        (T - 7_200_000, T - 3_600_000, 100.0, 111.0, 99.0, 110.0, T - 3_570_000),
        (T - 3_600_000, T, 110.0, 120.0, 90.0, 100.0, T + 30_000),   # closes at T: usable from T+60 s
        (T, T + 3_600_000, 100.0, 130.0, 95.0, 125.0, T + 2_000),    # forming
    ])
    ins("INSERT INTO coinglass_funding VALUES ('Binance', 'BTCUSDT', '1h', ?, ?, 0.0001, 0.0004, 0.0001, ?, ?)", [
        (T - 7_200_000, T - 3_600_000, 0.0003, T - 3_570_000),
        (T - 3_600_000, T, 0.0005, T + 30_000),
    ])
    return conn


@pytest.fixture()
def conn(tmp_path):
    c = _db(tmp_path)
    yield c
    c.close()


def approx(x):
    return pytest.approx(x, rel=1e-12, abs=1e-15)


def test_bars_and_carry(conn):
    res = compute_range(conn, T + 1000, T + 3000, P)
    rows = {int(r.ts_ms): r for r in res.market.itertuples()}
    b1, b2, b3 = rows[T + 1000], rows[T + 2000], rows[T + 3000]

    # (T, T+1000]: trades 100 x1 buy, 102 x2 sell, 101 x1 buy (the one exactly at T+1000)
    assert (b1.open, b1.high, b1.low, b1.close) == (100.0, 102.0, 100.0, 101.0)
    assert (b1.volume, b1.trade_count, b1.has_trade) == (4.0, 3, 1)
    assert b1.vwap == approx((100 + 204 + 101) / 4)
    assert (b1.buy_volume, b1.sell_volume) == (2.0, 2.0)
    assert b1.close_age_ms == 0
    # book at T+900
    assert (b1.best_bid, b1.best_ask, b1.mid) == (100.0, 102.0, 101.0)
    assert b1.spread_bps == approx(2 / 101 * 1e4)
    assert b1.book_imbalance == approx(0.5)
    assert b1.book_age_ms == 100
    # Binance: last aggTrade 51 at T+800; mark at T+1000
    assert (b1.binance_last, b1.binance_age_ms) == (51.0, 200)
    assert (b1.mark_price, b1.index_price, b1.funding_rate, b1.mark_age_ms) == (51.1, 51.0, 0.0001, 0)
    assert (b1.usdt_krw, b1.usdt_krw_age_ms) == (2.0, 6000)
    assert b1.kimchi_premium == approx(101 / (51 * 2) - 1)

    # (T+1000, T+2000]: no trade -> OHLC/vwap NULL, close carried with its age
    assert b2.has_trade == 0 and b2.trade_count == 0 and b2.volume == 0.0
    assert all(math.isnan(v) for v in (b2.open, b2.high, b2.low, b2.vwap))
    assert (b2.close, b2.close_age_ms) == (101.0, 1000)
    assert b2.book_age_ms == 1100
    assert (b2.binance_last, b2.binance_age_ms) == (50.5, 500)   # the REST row counts by trade time
    assert b2.mark_age_ms == 1000

    # (T+2000, T+3000]: 103, then two trades in the same ms ordered by sequential_id: 99, 104
    assert (b3.open, b3.high, b3.low, b3.close) == (103.0, 104.0, 99.0, 104.0)
    assert b3.trade_count == 3 and b3.close_age_ms == 500
    assert (b3.buy_volume, b3.sell_volume) == (1.5, 1.0)
    assert (b3.best_bid, b3.best_ask, b3.book_imbalance) == (103.0, 104.0, -0.5)


def test_features_hand_computed(conn):
    f1, f2, f3 = (features_at(conn, T + k * 1000, P) for k in (1, 2, 3))
    assert f1["ts_ms"] == T + 1000 and f1["horizon_sec"] == 120 and f1["model"] == "baseline-v1"
    assert f1["ret_1s"] == approx(math.log(101 / 100))      # close(T) = 100, carried from T-10 s
    assert f2["ret_1s"] == 0.0                                # empty second: carried close
    assert f3["ret_1s"] == approx(math.log(104 / 101))
    assert f3["ret_5s"] == approx(math.log(104 / 100))
    # look-backs reaching before the data are NULL, never computed on a shorter window
    for k in ("ret_30s", "ret_60s", "ret_300s", "rv_60s", "rv_300s", "flow_imb_60s", "kimchi_chg_60s",
              "score"):
        assert f3[k] is None, k
    assert f3["bn_ret_60s"] == approx(math.log(50.5 / 49))   # 49 at T-70 s is still within the carry
    # flow over (T-7 s, T+3 s]: buy 1 + 1 + 0.5 + 1 = 3.5, sell 2 + 1 = 3
    assert f3["flow_imb_10s"] == approx(0.5 / 6.5)
    assert f1["book_imbalance"] == approx(0.5) and f1["spread_bps"] == approx(2 / 101 * 1e4)
    assert f1["kimchi_premium"] == approx(101 / (51 * 2) - 1)
    assert f2["bn_ret_1s"] == approx(math.log(50.5 / 51))
    assert f1["bn_ret_5s"] == approx(math.log(51 / 49))      # 49 carried from T-70 s
    assert f1["basis_bps"] == approx((51.1 - 51.0) / 51.0 * 1e4)
    assert f1["funding_rate"] == 0.0001
    # open interest: at T+1000 the T+500 row is not yet available (recv T+1500)
    assert f1["oi_chg_300s"] == approx(1050 / 1000 - 1)
    assert f2["oi_chg_300s"] == approx(1100 / 1000 - 1)
    # long/short: the period ending at T arrived at T+1200; the open period is never used
    assert f1["ls_ratio"] == 1.5 and f2["ls_ratio"] == 1.7
    # liquidations over (t-60 s, t]
    assert f1["liq_notional_60s"] == 0.0 and f2["liq_notional_60s"] == approx(101.0)
    # Coinglass: the bar that closed at T is usable only from T+60 s; the forming bar never
    assert f1["cg_oi_chg"] == approx(110 / 100 - 1) and f1["cg_funding"] == 0.0003
    assert features_at(conn, T + 60_000, P)["cg_oi_chg"] == approx(100 / 110 - 1)
    assert features_at(conn, T + 59_000, P)["cg_oi_chg"] == approx(110 / 100 - 1)


def test_before_any_data_everything_null_but_counts(conn):
    res = compute_range(conn, T - 3_000_000, T - 2_999_000, P)
    assert res.market["trade_count"].tolist() == [0, 0]
    assert res.market["close"].isna().all()
    assert res.nulls["predictions"]["ret_1s"] == 2
    row = dict(zip(PREDICTION_COLUMNS, res.prediction_rows()[0]))
    assert row["symbol"] == "BTC" and row["ts_ms"] == T - 3_000_000 and row["score"] is None


def test_carry_limit_makes_stale_values_null(conn):
    # close was last set at T+2500; with the default 600 s carry it is gone at T+603 s
    assert market_at(conn, T + 602_000, P)["close"] == 104.0
    assert market_at(conn, T + 603_000, P)["close"] is None
    short = FeatureParams(carry_s=2)
    m = market_at(conn, T + 2000, short)
    assert m["close"] == 101.0 and m["binance_last"] == 50.5
    assert market_at(conn, T + 4000, short)["close"] == 104.0    # set at T+2500: 1.5 s old
    assert market_at(conn, T + 5000, short)["close"] is None     # 2.5 s old > 2 s


def test_baseline_score_formula():
    f = {"rv_60s": np.array([1e-4, 1e-6, np.nan]), "ret_60s": np.array([2e-4, 1e-5, 0.0]),
         "bn_ret_5s": np.array([1e-4, 0.0, 0.0]), "ret_5s": np.array([0.0, 0.0, 0.0]),
         "flow_imb_60s": np.array([0.2, -0.5, 0.0]), "book_imbalance": np.array([-0.4, 0.0, 0.0])}
    s = features.baseline_score(f)
    z1 = 0.25 * 2e-4 / (1e-4 * math.sqrt(60)) + 0.5 * 1e-4 / (1e-4 * math.sqrt(5)) + 0.5 * 0.2 + 0.25 * -0.4
    z2 = 0.25 * 1e-5 / (5e-5 * math.sqrt(60)) + 0.5 * -0.5      # sigma floored at 5e-5
    assert s[0] == approx(math.tanh(z1)) and s[1] == approx(math.tanh(z2))
    assert math.isnan(s[2])


def test_time_rule_sql_matches_python(conn):
    delay = 60
    for table in timerule.RAW_TABLES:
        cur = conn.execute(f"SELECT *, {timerule.availability_sql(table, delay)} FROM {table}")
        names = [d[0] for d in cur.description][:-1]
        for row in cur.fetchall():
            assert timerule.availability_ms(table, dict(zip(names, row[:-1])), delay) == row[-1], table
    # an unknown ratio period is never available
    assert timerule.availability_ms("binance_ratios", {"ts_ms": 0, "period": "7m", "recv_ts_ms": 1}) is None
    assert "open_ts_ms" not in timerule.availability_sql("coinglass_open_interest", delay)
    got = timerule.rows_available_at(conn, "binance_ratios", T + 1_200, columns="value")
    assert sorted(v for (v,) in got) == [1.5, 1.7]
    n = timerule.delete_unavailable(conn, T + 1000)
    assert n["upbit_trades"] == 3 and n["coinglass_open_interest"] == 2 and n["binance_open_interest"] == 1
