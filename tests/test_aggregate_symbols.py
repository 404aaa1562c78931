"""Many assets: market_1s and predictions keyed by (symbol, ts_ms), each asset computed from
its own raw rows only (plus KRW-USDT, which every asset shares).

- differential: BTC computed in a database of BTC alone equals BTC computed in one that
  also holds ETH and SOL (compute_range and the rebuild's stored rows);
- another asset's rows never change an asset's rows (a property over random rows);
- the live service writes one row per asset and second; an asset without data, or one
  still waiting for its collectors, blocks no other; each asset resumes at its own last
  second; the late ledger is per asset;
- `--rebuild --symbol A` replaces that asset's rows only; the settings per asset.
"""
from __future__ import annotations

import json
import logging

import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings as hyp_settings, strategies as st

from cqt.aggregate.config import AggregateConfig, config_from_settings
from cqt.aggregate.rebuilds import clamp_to_data, data_range, rebuild
from cqt.aggregate.service import LiveAggregator
from cqt.config import ConfigError, load_settings
from cqt.db import connect, open_db
from cqt.features import MARKET_COLUMNS, PREDICTION_COLUMNS, FeatureParams, SecondCache, compute_range, params_for
from fixtures_raw import DirectWriter, at, make_raw_db, same_value
from helpers import cqt_env, query, run_bin

S = 1_700_000_000_000
SECONDS = 600
ASSETS = ("BTC", "ETH", "SOL")
P = {a: FeatureParams(asset=a) for a in ASSETS}
UPBIT_SQL = "INSERT INTO upbit_trades VALUES (?, ?, ?, ?, 0.5, 'buy', ?)"
AGG_SQL = "INSERT INTO binance_agg_trades VALUES (?, ?, ?, ?, 0.01, 'buy', ?, ?, ?, ?)"


@pytest.fixture(scope="module")
def db_template(tmp_path_factory):
    """Three assets' raw rows (`db` is a copy: conftest.py)."""
    path = tmp_path_factory.mktemp("symbols") / "raw.db"
    make_raw_db(path, S, SECONDS, seed=9, assets=ASSETS)
    return path


@pytest.fixture(scope="module")
def btc_only(tmp_path_factory):
    """The same BTC (and KRW-USDT) raw rows, alone."""
    path = tmp_path_factory.mktemp("btconly") / "raw.db"
    make_raw_db(path, S, SECONDS, seed=9, assets=("BTC",))
    return path


def rows_of(res) -> list[tuple]:
    return res.market_rows() + res.prediction_rows()


def stored(path, symbol) -> list[tuple]:
    out = []
    for table, cols in (("market_1s", MARKET_COLUMNS), ("predictions", PREDICTION_COLUMNS)):
        out += query(path, f"SELECT {', '.join(cols)} FROM {table} WHERE symbol = ? ORDER BY ts_ms", (symbol,))
    return out


def assert_same(xs, ys):
    assert len(xs) == len(ys)
    bad = [(x[:2], i) for x, y in zip(xs, ys) for i, (u, v) in enumerate(zip(x, y)) if not same_value(u, v)]
    assert not bad, bad[:5]


# ------------------------------------------------------------------------------ the feature function
def test_the_raw_rows_of_other_assets_do_not_change_an_asset(db, btc_only):
    a, b = S + 300_000, S + 599_000
    both, alone = connect(db, readonly=True), connect(btc_only, readonly=True)
    try:
        # the fixture is what the test needs: the same BTC and KRW-USDT rows, and ETH/SOL rows beside them
        for sql in ("SELECT COUNT(*), SUM(price) FROM upbit_trades WHERE code IN ('KRW-BTC', 'KRW-USDT')",
                    "SELECT COUNT(*), SUM(price) FROM binance_agg_trades WHERE symbol = 'BTCUSDT'"):
            assert both.execute(sql).fetchone() == alone.execute(sql).fetchone()
        assert both.execute("SELECT COUNT(DISTINCT code) FROM upbit_trades").fetchone()[0] == 4
        r_both, r_alone = compute_range(both, a, b, P["BTC"]), compute_range(alone, a, b, P["BTC"])
        assert_same(rows_of(r_both), rows_of(r_alone))
        assert {r[0] for r in rows_of(r_both)} == {"BTC"}
        assert r_both.rows_read == r_alone.rows_read            # not one row of ETH or SOL read
        # every asset has its own rows: prices of its own level, features of its own path
        res = {x: compute_range(both, a, b, P[x]) for x in ASSETS}
        closes = {x: float(r.market["close"].mean()) for x, r in res.items()}
        assert closes["BTC"] > 10 * closes["ETH"] > 100 * closes["SOL"] > 0
        assert all(r.predictions["symbol"].eq(x).all() and r.market["symbol"].eq(x).all() for x, r in res.items())
        # the shared KRW-USDT: the same rate in every asset's rows
        usdt = {x: r.market["usdt_krw"].tolist() for x, r in res.items()}
        assert usdt["BTC"] == usdt["ETH"] == usdt["SOL"]
    finally:
        both.close(), alone.close()


def test_rebuild_of_every_asset_equals_each_alone(db, btc_only):
    st_all = rebuild(db, S + 1000, S + SECONDS * 1000 - 1000, params=tuple(P.values()), chunk_s=97)
    st_btc = rebuild(btc_only, S + 1000, S + SECONDS * 1000 - 1000, params=P["BTC"], chunk_s=600)
    assert set(st_all.symbols) == set(ASSETS) and st_all.seconds == 3 * st_btc.seconds == 3 * (SECONDS - 1)
    assert st_all.as_dict()["symbols"]["ETH"]["seconds"] == SECONDS - 1
    assert_same(stored(db, "BTC"), stored(btc_only, "BTC"))
    assert query(btc_only, "SELECT DISTINCT symbol FROM market_1s") == [("BTC",)]
    for x in ASSETS:                                  # what was stored = the function, per asset
        conn = connect(db, readonly=True)
        try:
            assert_same(stored(db, x), rows_of(compute_range(conn, S + 1000, S + SECONDS * 1000 - 1000, P[x])))
        finally:
            conn.close()


def _other_asset_rows(draw_rows):
    out = []
    for kind, sec, px in draw_rows:
        t = S + 200_000 + sec * 37
        if kind == "upbit":
            out.append((UPBIT_SQL, ("KRW-ETH", 10**9 + sec, t, 4_000_000.0 * px, t)))
        elif kind == "binance":
            out.append((AGG_SQL, ("ETHUSDT", 10**9 + sec, t, 3000.0 * px, 1, 1, t, t)))
        elif kind == "book":
            out.append(("INSERT OR IGNORE INTO upbit_orderbook VALUES ('KRW-ETH', ?, ?, ?, 1, 1, 5, 5, 15, ?)",
                        (t, 4_000_000.0 * px, 4_001_000.0 * px, t)))
        elif kind == "mark":
            out.append(("INSERT OR IGNORE INTO binance_mark_price VALUES ('ETHUSDT', ?, ?, ?, 0.001, 0, ?)",
                        (t, 3000.0 * px, 2999.0 * px, t)))
        elif kind == "oi":
            out.append(("INSERT OR IGNORE INTO binance_open_interest VALUES ('ETHUSDT', ?, ?, ?)", (t, 1e6 * px, t)))
        else:
            out.append(("INSERT OR IGNORE INTO coinglass_open_interest VALUES ('ETH', '1h', ?, ?, 1, 2, 0.5, ?, ?)",
                        (t - 3_600_000, t - 60_000, px, t)))
    return out


ROW = st.tuples(st.sampled_from(["upbit", "binance", "book", "mark", "oi", "cg"]), st.integers(0, 4000),
                st.floats(0.5, 2.0))


@hyp_settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(ROW, min_size=1, max_size=30))
def test_property_rows_of_another_asset_never_change_btc(db, draws):
    conn = open_db(db)
    try:
        a, b = S + 300_000, S + 360_000
        before = rows_of(compute_range(conn, a, b, P["BTC"]))
        eth_before = rows_of(compute_range(conn, a, b, P["ETH"]))
        conn.execute("SAVEPOINT other")
        for sql, args in _other_asset_rows(draws):
            conn.execute(sql.replace("INSERT INTO", "INSERT OR IGNORE INTO"), args)
        assert_same(rows_of(compute_range(conn, a, b, P["BTC"])), before)
        changed = rows_of(compute_range(conn, a, b, P["ETH"])) != eth_before
        conn.execute("ROLLBACK TO other")
        conn.execute("RELEASE other")
        # not vacuous: an ETH trade inside the range changes ETH's rows (its second's trade count)
        if any(k == "upbit" and a <= S + 200_000 + s * 37 <= b for k, s, _ in draws):
            assert changed
    finally:
        conn.close()


def test_a_cache_holds_one_asset(db):
    conn = connect(db, readonly=True)
    cache = SecondCache()
    try:
        compute_range(conn, S + 400_000, S + 400_000, P["BTC"], cache=cache)
        with pytest.raises(ValueError, match="one cache per asset"):
            compute_range(conn, S + 401_000, S + 401_000, P["ETH"], cache=cache)
        cache.clear()
        compute_range(conn, S + 401_000, S + 401_000, P["ETH"], cache=cache)
    finally:
        conn.close()


def test_data_range_is_the_assets_own(db):
    conn = open_db(db)
    try:
        conn.execute(UPBIT_SQL, ("KRW-USDT", 777, S + 900_000, 1390.0, S + 900_000))   # shared: makes no bar
        conn.execute(AGG_SQL, ("SOLUSDT", 1, S + 950_000, 150.0, 1, 1, S + 950_000, S + 950_000))
        lo, hi = data_range(conn, P["BTC"])
        assert lo >= S and hi <= S + SECONDS * 1000
        assert data_range(conn, P["SOL"])[1] == S + 950_000
        assert data_range(conn, FeatureParams(asset="DOGE")) is None
        assert clamp_to_data(conn, S, S + 10**7, FeatureParams(asset="DOGE"), S + 10**7) is None
    finally:
        conn.close()


# ------------------------------------------------------------------------------ the live service
def cfg(assets=ASSETS, **kw) -> AggregateConfig:
    return AggregateConfig(assets=tuple(P[a] if a in P else FeatureParams(asset=a) for a in assets), **kw)


def written(path) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for s, t in query(path, "SELECT symbol, ts_ms FROM market_1s ORDER BY symbol, ts_ms"):
        out.setdefault(s, []).append(t)
    return out


def test_live_writes_one_row_per_asset_and_second_and_equals_a_rebuild(db, tmp_path):
    w = DirectWriter(db)
    with freeze_time(at(S + 400_500)) as clock:
        agg = LiveAggregator(db, cfg(grace_ms=2000), w)
        first = agg.step()                          # every asset catches up from its own first trade
        ts = written(db)
        assert set(ts) == set(ASSETS) and first == sum(len(v) for v in ts.values())
        assert all(v[-1] == S + 398_000 and v == list(range(v[0], v[-1] + 1, 1000)) for v in ts.values())
        for _ in range(5):
            clock.tick(1.0)
            assert agg.step() == 3 and agg.last_step == {"BTC": 1, "ETH": 1, "SOL": 1}
        d = agg.detail()
        assert set(d["symbols"]) == set(ASSETS) and d["last_bar_ts_ms"] == S + 403_000
        assert all(x["state"] == "running" and x["last_bar_ts_ms"] == S + 403_000 for x in d["symbols"].values())
        agg.close()
    copy = tmp_path / "copy.db"
    src, dst = connect(db), connect(copy)
    src.backup(dst)
    src.close(), dst.close()
    lo = min(v[0] for v in written(db).values())
    rebuild(copy, lo, S + 403_000, params=tuple(P.values()))
    for x in ASSETS:
        assert_same(stored(db, x), stored(copy, x))


def test_an_asset_without_data_blocks_no_other(db, caplog):
    w = DirectWriter(db)
    caplog.set_level(logging.INFO, logger="cqt.aggregate")
    with freeze_time(at(S + 400_500)) as clock:
        # XRP has no raw row at all; with no wait it starts at once with NULL features
        agg = LiveAggregator(db, cfg(("BTC", "XRP"), start_wait_ms=0), w)
        agg.step()
        clock.tick(1.0)
        assert agg.step() == 2
        xrp = query(db, "SELECT ts_ms, close, trade_count, kimchi_premium, usdt_krw FROM market_1s "
                        "WHERE symbol = 'XRP'")
        assert [r[0] for r in xrp] == [S + 398_000, S + 399_000]
        assert all(r[1] is None and r[2] == 0 and r[3] is None and r[4] is not None for r in xrp)  # KRW-USDT shared
        assert query(db, "SELECT COUNT(*) FROM predictions WHERE symbol = 'XRP' AND ret_1s IS NOT NULL")[0][0] == 0
        assert "XRP: first start: writing from" in caplog.text and "no Upbit KRW-XRP trades yet" in caplog.text
        agg.close()


def test_a_waiting_asset_blocks_no_other_and_resumes_are_per_asset(db, caplog):
    w = DirectWriter(db)
    caplog.set_level(logging.INFO, logger="cqt.aggregate")
    now = [S + 400_500]
    # a first run writes BTC only
    agg = LiveAggregator(db, cfg(("BTC",)), w, clock=lambda: now[0])
    agg.step()
    agg.close()
    assert set(written(db)) == {"BTC"}
    # ETH and XRP are added: ETH has data (its first start catches up from its first trade),
    # XRP has none yet (it waits, bounded) — BTC resumes after its own last second meanwhile
    now[0] = S + 410_500
    agg = LiveAggregator(db, cfg(("BTC", "ETH", "XRP"), start_wait_ms=5000), w, clock=lambda: now[0])
    n = agg.step()
    ts = written(db)
    assert ts["BTC"][-10:] == list(range(S + 399_000, S + 408_001, 1000)) and len(ts["BTC"]) == len(set(ts["BTC"]))
    first_eth = -(-query(db, "SELECT MIN(trade_ts_ms) FROM upbit_trades WHERE code = 'KRW-ETH'")[0][0] // 1000) * 1000
    assert ts["ETH"][0] == first_eth and ts["ETH"][-1] == S + 408_000
    assert "XRP" not in ts and agg.waiting == ["XRP"] and n == 10 + len(ts["ETH"])
    state, text = agg.status()
    assert state == "running" and "first start of XRP waiting" in text
    assert agg.detail()["symbols"]["XRP"]["waiting_for"] == ["Upbit KRW-XRP trades", "Binance XRPUSDT aggTrades"]
    # XRP's data arrives: it starts from its first trade; the others go on second by second
    w(lambda c: c.execute(UPBIT_SQL, ("KRW-XRP", 1, S + 409_100, 700.0, S + 409_150)))
    w(lambda c: c.execute(AGG_SQL, ("XRPUSDT", 1, S + 409_200, 0.5, 1, 1, S + 409_200, S + 409_250)))
    now[0] += 1000                               # target S+409: XRP starts there (its trade is in bar S+410)
    assert agg.step() == 3 and agg.waiting == [] and "XRP: first start: the collectors' data is there" in caplog.text
    now[0] += 1000
    assert agg.step() == 3 and agg.last_step == {"BTC": 1, "ETH": 1, "XRP": 1}
    assert query(db, "SELECT ts_ms, trade_count FROM market_1s WHERE symbol = 'XRP'") == \
        [(S + 409_000, 0), (S + 410_000, 1)]
    assert all(written(db)[x][-1] == S + 410_000 for x in ("BTC", "ETH", "XRP"))
    agg.close()


def test_the_late_ledger_is_per_asset(db, caplog):
    w = DirectWriter(db)
    caplog.set_level(logging.WARNING, logger="cqt.aggregate")
    with freeze_time(at(S + 300_500)) as clock:
        agg = LiveAggregator(db, cfg(("BTC", "ETH")), w)
        agg.step()
        assert agg.scan_late() == {}
        x = S + 250_000
        # a late ETH trade and a late ETH aggTrade, for seconds already written
        w(lambda c: c.execute(UPBIT_SQL, ("KRW-ETH", 5, x - 400, 4_100_000.0, S + 300_400)))
        w(lambda c: c.execute(AGG_SQL, ("ETHUSDT", 5, x - 300, 3001.0, 1, 1, x - 300, S + 300_400)))
        clock.tick(1.0)
        agg.step()
        agg.scan_late()
        assert agg.assets["ETH"].late == {"upbit_trades_total": 1, "upbit_trades_pending": 1,
                                          "binance_agg_trades_total": 1, "binance_agg_trades_pending": 1}
        assert agg.assets["BTC"].late == {}
        assert query(db, "SELECT symbol, source, ts_ms, late_rows FROM aggregate_late ORDER BY source") == \
            [("ETH", "binance_agg_trades", x, 1), ("ETH", "upbit_trades", x, 1)]
        msg = " ".join(r.getMessage() for r in caplog.records)
        assert "late data of ETH" in msg and "--symbol ETH" in msg and "late data of BTC" not in msg
        # a late KRW-USDT trade feeds every asset's kimchi premium: late for each
        w(lambda c: c.execute(UPBIT_SQL, ("KRW-USDT", 6, x - 200, 1391.0, S + 301_400)))
        clock.tick(1.0)
        agg.step()
        agg.scan_late()
        assert query(db, "SELECT symbol FROM aggregate_late WHERE source = 'upbit_trades_usdt' ORDER BY symbol") == \
            [("BTC",), ("ETH",)]
        # a rebuild of ETH corrects ETH's only
        st = rebuild(db, x - 5_000, x + 5_000, params=P["ETH"])
        assert (st.late_seconds_corrected, st.late_rows_corrected) == (3, 3)
        assert query(db, "SELECT symbol, SUM(late_rows - corrected_rows) FROM aggregate_late GROUP BY symbol") == \
            [("BTC", 1), ("ETH", 0)]
        agg.close()


# ------------------------------------------------------------------------------ settings and the CLI
def test_settings_per_asset(tmp_path):
    env = {"CQT_ENV_FILE": str(tmp_path / "none.env"), "CQT_DB": str(tmp_path / "x.db")}
    s = load_settings({**env, "CQT_SYMBOLS": "BTC,ETH,SOL"})
    c = config_from_settings(s)
    assert c.symbols == ASSETS
    eth = c.assets[1]
    assert (eth.asset, eth.upbit_code, eth.binance_symbol, eth.cg_symbol, eth.cg_symbol_pair, eth.usdt_code) == \
        ("ETH", "KRW-ETH", "ETHUSDT", "ETH", "ETHUSDT", "KRW-USDT")
    assert config_from_settings(s, "sol").symbols == ("SOL",)
    with pytest.raises(ConfigError, match="CQT_SYMBOLS"):
        config_from_settings(s, "DOGE")
    # per-venue overrides are honoured per asset
    s = load_settings({**env, "CQT_SYMBOLS": "BTC,ETH", "CQT_BINANCE_SYMBOLS": "BTCUSDC,ETHUSDT"})
    assert params_for(s, "BTC").binance_symbol == "BTCUSDC" and params_for(s, "BTC").cg_symbol == "BTC"
    # CQT_AGGREGATE_CG_SYMBOL: one asset only
    one = load_settings({**env, "CQT_SYMBOLS": "BTC", "CQT_AGGREGATE_CG_SYMBOL": "XBT"})
    assert params_for(one, "BTC").cg_symbol == "XBT"
    two = load_settings({**env, "CQT_SYMBOLS": "BTC,ETH", "CQT_AGGREGATE_CG_SYMBOL": "XBT"})
    with pytest.raises(ConfigError, match="CQT_AGGREGATE_CG_SYMBOL.*only when CQT_SYMBOLS names one asset"):
        config_from_settings(two)


def test_rebuild_symbol_replaces_that_asset_only(db, tmp_path):
    junk = [(a, t) for a in ASSETS for t in range(S + 99_000, S + 202_000, 1000)]
    conn = connect(db)
    conn.executemany("INSERT INTO market_1s (symbol, ts_ms, close, volume, trade_count, buy_volume, sell_volume, "
                     "has_trade) VALUES (?, ?, -1, 0, 0, 0, 0, 0)", junk)
    conn.close()
    env = cqt_env(tmp_path, CQT_SYMBOLS="BTC,ETH,SOL")
    r = run_bin("cqt-aggregate", "--rebuild", "--from", str(S + 101_000), "--to", str(S + 200_000),
                "--symbol", "eth", "--db", str(db), "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert list(out["symbols"]) == ["ETH"] and out["seconds"] == out["symbols"]["ETH"]["seconds"] == 100
    closes = {(s, t): c for s, t, c in query(db, "SELECT symbol, ts_ms, close FROM market_1s")}
    assert all(closes[("ETH", t)] > 0 for t in range(S + 101_000, S + 200_001, 1000))
    assert closes[("ETH", S + 100_000)] == closes[("ETH", S + 201_000)] == -1.0
    assert all(closes[(a, t)] == -1.0 for a in ("BTC", "SOL") for t in range(S + 99_000, S + 202_000, 1000))
    # all assets (the default), each cut to its own data
    r = run_bin("cqt-aggregate", "--rebuild", "--from", str(S - 10**7), "--to", str(S + 200_000), "--db", str(db),
                "--json", env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out["symbols"]) == set(ASSETS) and "rebuild range cut to the data: SOL" in r.stderr
    for a in ASSETS:
        first = out["symbols"][a]["from_ms"]
        assert first >= S and out["symbols"][a]["to_ms"] == S + 200_000
        assert query(db, "SELECT MIN(ts_ms) FROM market_1s WHERE symbol = ?", (a,))[0][0] == first
    # the options' errors: one line, exit 2
    r = run_bin("cqt-aggregate", "--rebuild", "--from", str(S), "--to", str(S + 1000), "--symbol", "DOGE",
                "--db", str(db), env=env)
    assert r.returncode == 2 and "DOGE" in r.stderr and "CQT_SYMBOLS" in r.stderr
    r = run_bin("cqt-aggregate", "--symbol", "BTC", "--db", str(db), env=env)
    assert r.returncode == 2 and "--symbol only goes with --rebuild" in r.stderr
    r = run_bin("cqt-aggregate", "--rebuild", "--from", str(S), "--to", str(S + 1000), "--db", str(db),
                env={**env, "CQT_AGGREGATE_CG_SYMBOL": "XBT"})
    assert r.returncode == 78 and "CQT_AGGREGATE_CG_SYMBOL" in r.stderr and "Traceback" not in r.stderr


def test_the_heartbeat_detail_stays_small_with_many_assets(db):
    many = ("BTC", "ETH", *(f"X{i:02d}" for i in range(23)))        # 25 assets; X.. have no data
    w = DirectWriter(db)
    now = [S + 400_500]
    agg = LiveAggregator(db, cfg(many, start_wait_ms=0), w, clock=lambda: now[0])
    agg.step()
    now[0] += 1000
    assert agg.step() == 25
    agg.assets["ETH"].catching_up = True                # needs attention: listed whatever the order
    d = agg.detail()
    assert len(d["symbols"]) == 20 and d["symbols_not_listed"] == 5 and "ETH" in d["symbols"]
    assert len(json.dumps(d)) < 8000
    agg.close()
    few = LiveAggregator(db, cfg(ASSETS), w, clock=lambda: now[0])
    assert set(few.detail()["symbols"]) == set(ASSETS) and "symbols_not_listed" not in few.detail()
    few.close()
