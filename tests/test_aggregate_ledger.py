"""Late data, in process (freezegun): the cache check, the per-second row ledger, late rows
of every stream source, a restart, and the first start's wait for the collectors.
(The same as a real service with a real-time writer: tests/test_aggregate_late.py.)"""
from __future__ import annotations

import logging

import pytest
from freezegun import freeze_time

from cqt.aggregate.config import AggregateConfig
from cqt.aggregate.late import CountLedger
from cqt.aggregate.service import LiveAggregator
from cqt.db import connect, open_db
from cqt.features import MARKET_COLUMNS, PREDICTION_COLUMNS, FeatureParams, SecondCache, compute_range
from fixtures_raw import DirectWriter, at, make_raw_db
from helpers import query

S = 1_700_000_000_000
PARAMS = FeatureParams()
AGG_SQL = "INSERT INTO binance_agg_trades VALUES ('BTCUSDT', ?, ?, 37000.5, 0.01, 'buy', ?, ?, ?, ?)"
UPBIT_SQL = "INSERT INTO upbit_trades VALUES (?, ?, ?, ?, 0.5, 'buy', ?)"


@pytest.fixture(scope="module")
def db_template(tmp_path_factory):
    """The raw tables every test starts from (`db` is a copy: conftest.py)."""
    path = tmp_path_factory.mktemp("ledger") / "raw.db"
    make_raw_db(path, S, 600, seed=4)
    return path


def late(path, source=None, symbol="BTC") -> dict:
    if source:
        return dict(query(path, "SELECT ts_ms, late_rows FROM aggregate_late WHERE symbol = ? AND source = ?",
                          (symbol, source)))
    return {(s, t): n for s, t, n in query(path, "SELECT source, ts_ms, late_rows FROM aggregate_late "
                                                 "WHERE symbol = ?", (symbol,))}


def row(path, ts, symbol="BTC"):
    m = query(path, f"SELECT {', '.join(MARKET_COLUMNS)} FROM market_1s WHERE symbol = ? AND ts_ms = ?",
              (symbol, ts))[0]
    p = query(path, f"SELECT {', '.join(PREDICTION_COLUMNS)} FROM predictions WHERE symbol = ? AND ts_ms = ?",
              (symbol, ts))[0]
    return m, p


def fresh(path, ts):
    """The rows for ts computed now from the whole database, no cache (= a rebuild)."""
    conn = connect(path, readonly=True)
    try:
        res = compute_range(conn, ts, ts, PARAMS)
        return res.market_rows()[0], res.prediction_rows()[0]
    finally:
        conn.close()


def test_count_ledger():
    led = CountLedger()
    assert led.observe(0, 5000, [1000, 3000], [2, 1]) == []
    assert led.observe(5000, 7000, [6000], [4]) == []                 # extension: nothing to compare
    assert (led.lo, led.hi, led.total(0, 7000)) == (0, 7000, 7)
    # a recount of (2000, 7000]: 3000 gained 2 rows, 4000 has its first, 6000 lost one
    assert led.observe(2000, 7000, [3000, 4000, 6000], [3, 1, 3]) == [(3000, 2), (4000, 1), (6000, -1)]
    assert led.n == {1000: 2, 3000: 3, 4000: 1, 6000: 3} and (led.lo, led.hi) == (0, 7000)
    led.prune(3000)
    assert led.n == {4000: 1, 6000: 3} and led.lo == 3000
    assert led.observe(20_000, 21_000, [21_000], [1]) == [] and led.n == {21_000: 1}   # disjoint: afresh


def test_cache_check_reloads_a_source_whose_span_changed(db):
    conn = connect(db, readonly=True)
    w = DirectWriter(db)
    seen = []
    cache = SecondCache(on_load=lambda src, lo, hi, d: seen.append((src, lo, hi, int(d["n"].sum()))))
    compute_range(conn, S + 400_000, S + 400_000, PARAMS, cache=cache)
    assert cache.validate(conn, PARAMS) == []
    vlo, hi = cache.span("binance")
    assert hi == S + 400_000 and vlo <= S + 400_000 - 61_000
    w(lambda c: c.execute(AGG_SQL, (1, S + 380_500, 1, 1, S + 380_500, S + 401_000)))
    assert cache.validate(conn, PARAMS) == ["binance"] and cache.reloads == 1
    res = compute_range(conn, S + 401_000, S + 401_000, PARAMS, cache=cache)
    assert res.prediction_rows() == compute_range(conn, S + 401_000, S + 401_000, PARAMS).prediction_rows()
    src, lo, hi, n = [x for x in seen if x[0] == "binance"][-1]
    assert lo <= S + 401_000 - 61_000 and hi == S + 401_000             # reloaded: the whole span, not just (400, 401]
    assert cache.validate(conn, PARAMS) == []
    conn.close()


def test_late_rows_of_every_stream_source_are_counted_and_used(db, caplog):
    w = DirectWriter(db)
    caplog.set_level(logging.WARNING, logger="cqt.aggregate")
    with freeze_time(at(S + 400_500)) as clock:
        agg = LiveAggregator(db, AggregateConfig(assets=(PARAMS,)), w)
        agg.step()                                        # catch-up to S+398
        for _ in range(70):                               # then live, second by second, to S+468
            clock.tick(1.0)
            assert agg.step() == 1
        assert late(db) == {}
        # rows land for seconds already written: inside the cached spans and long before them
        w(lambda c: c.executemany(AGG_SQL, [(1, S + 450_200, 1, 1, S + 450_200, S + 470_700),
                                             (2, S + 450_300, 2, 2, S + 450_300, S + 470_700),
                                             (3, S + 300_300, 3, 3, S + 300_300, S + 470_700),
                                             (4, S + 300_400, 4, 4, S + 300_400, S + 470_700),
                                             (5, S + 300_900, 5, 5, S + 300_900, S + 470_700)]))
        w(lambda c: c.execute(UPBIT_SQL, ("KRW-USDT", 11, S + 440_100, 1390.0, S + 470_700)))
        w(lambda c: c.execute(UPBIT_SQL, ("KRW-BTC", 12, S + 465_100, 83_000_000.0, S + 470_700)))
        w(lambda c: c.execute("INSERT INTO upbit_orderbook VALUES ('KRW-BTC', ?, 1, 2, 1, 1, 5, 5, 15, ?)",
                              (S + 466_001, S + 470_700)))
        w(lambda c: c.execute("INSERT INTO binance_mark_price VALUES ('BTCUSDT', ?, 37000, 36990, 0.0001, 0, ?)",
                              (S + 467_500, S + 470_700)))
        w(lambda c: c.execute("INSERT INTO binance_liquidations VALUES ('BTCUSDT', ?, ?, 'sell', 37000, 37000, 1, 1, "
                              "'FILLED', ?)", (S + 455_000, S + 454_990, S + 470_700)))
        clock.tick(1.0)
        assert agg.step() == 1                            # S+469: uses every one of them
        assert row(db, S + 469_000) == fresh(db, S + 469_000)
        assert late(db) == {("binance_agg_trades", S + 451_000): 2, ("binance_agg_trades", S + 301_000): 3,
                            ("upbit_trades_usdt", S + 441_000): 1, ("upbit_trades", S + 466_000): 1,
                            ("upbit_orderbook", S + 467_000): 1, ("binance_mark_price", S + 468_000): 1,
                            ("binance_liquidations", S + 455_000): 1}
        assert agg.detail()["late_seen"]["binance_agg_trades"] == 5
        msgs = [r.getMessage() for r in caplog.records if "late data" in r.getMessage()]
        assert len(msgs) == 1 and "10 rows" in msgs[0] and f"--rebuild --from {S + 301_000} --to" in msgs[0]
        # idempotent: neither the next steps nor a scan count them again
        for _ in range(3):
            clock.tick(1.0)
            agg.step()
        totals = agg.scan_late()
        assert totals["binance_agg_trades_total"] == 5 and totals["upbit_trades_pending"] == 1
        assert sum(late(db).values()) == 10
        agg.close()


def test_a_restart_counts_what_landed_while_stopped_once(db):
    w = DirectWriter(db)
    with freeze_time(at(S + 400_500)) as clock:
        agg = LiveAggregator(db, AggregateConfig(assets=(PARAMS,)), w)
        agg.step()
        w(lambda c: c.execute(UPBIT_SQL, ("KRW-BTC", 21, S + 390_500, 83_000_000.0, S + 400_700)))   # late, live
        clock.tick(1.0)
        agg.step()
        assert late(db, "upbit_trades") == {S + 391_000: 1}
        agg.close()
        w(lambda c: c.execute("INSERT INTO service_runs VALUES ('cqt-aggregate', 1, ?, ?, 0, 'exited')",
                              (S + 300_000, S + 401_600)))
        # while stopped: a trade and an aggTrade for written seconds, and one for a new second
        w(lambda c: c.execute(UPBIT_SQL, ("KRW-BTC", 22, S + 395_500, 83_000_000.0, S + 410_000)))
        w(lambda c: c.execute(AGG_SQL, (31, S + 396_500, 31, 31, S + 396_500, S + 410_000)))
        w(lambda c: c.execute(AGG_SQL, (32, S + 405_500, 32, 32, S + 405_500, S + 410_000)))
        clock.move_to(at(S + 420_500))
        agg = LiveAggregator(db, AggregateConfig(assets=(PARAMS,)), w, started_ms=S + 420_000)
        assert agg.step() == 19
        assert late(db, "upbit_trades") == {S + 391_000: 1, S + 396_000: 1}     # the first one not again
        assert late(db, "binance_agg_trades") == {S + 397_000: 1}
        agg.scan_late()
        assert sum(late(db).values()) == 3
        agg.close()


def test_first_start_waits_for_the_collectors_initial_backfill_bounded(tmp_path, caplog):
    path = tmp_path / "empty.db"
    conn = open_db(path)
    conn.execute("INSERT INTO gaps (source, stream, detected_ts_ms, status, reason) "
                 "VALUES ('binance_ws', 'BTCUSDT@aggTrade', 1, 'open', 'initial')")
    now = [S + 10_000]
    agg = LiveAggregator(path, AggregateConfig(assets=(PARAMS,), start_wait_ms=3000), lambda fn: None,
                         clock=lambda: now[0])
    btc = agg.assets["BTC"]
    assert btc.start_blockers() == ["the initial backfill of BTCUSDT@aggTrade", "Upbit KRW-BTC trades",
                                    "Binance BTCUSDT aggTrades"]
    caplog.set_level(logging.INFO, logger="cqt.aggregate")
    assert agg.step() == 0 and agg.waiting == ["BTC"] and agg.status()[0] == "waiting"
    assert 0 < agg.sleep_s() <= 0.5
    now[0] += 2000
    assert agg.step() == 0 and agg.waiting == ["BTC"]          # still within CQT_AGGREGATE_START_WAIT_S
    now[0] += 1000
    assert agg.step() == 1 and agg.waiting == []                # bounded: starts after 3 s without the data
    assert "starting: rows that arrive" in caplog.text
    assert btc.last_written == now[0] - agg.cfg.grace_ms and agg.status()[0] == "running"
    agg.close()
    # the collectors deliver: no waiting at all
    conn.execute("UPDATE gaps SET status = 'filled'")
    conn.execute(UPBIT_SQL, ("KRW-BTC", 1, S, 1.0, S))
    conn.execute(AGG_SQL, (1, S, 1, 1, S, S))
    agg = LiveAggregator(path, AggregateConfig(assets=(PARAMS,), start_wait_ms=3000), lambda fn: None,
                         clock=lambda: now[0])
    assert agg.assets["BTC"].start_blockers() == []
    agg.begin()
    assert agg.waiting == []
    agg.close()
    # once the asset has market_1s rows (a restart) it never waits
    conn.execute("DELETE FROM upbit_trades")
    conn.execute("INSERT INTO market_1s (symbol, ts_ms, volume, trade_count, buy_volume, sell_volume, has_trade) "
                 "VALUES ('BTC', 1000, 0, 0, 0, 0, 0)")
    agg = LiveAggregator(path, AggregateConfig(assets=(PARAMS,), start_wait_ms=3000), lambda fn: None,
                         clock=lambda: now[0])
    assert agg.assets["BTC"].start_blockers() == []
    agg.close()
    conn.close()
