"""feature_check on crafted market_1s / predictions rows."""
from __future__ import annotations

import sqlite3

import pytest
from freezegun import freeze_time

from cqt.timeutil import fmt_ms
from fixtures_checks import AS_OF, COINGLASS_OK_ENV, execute, failed_names, make_healthy_db, metric, run
from helpers import cqt_env, run_bin

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def db_template(tmp_path_factory):
    """Built once; each test gets a copy as `db` (conftest.py)."""
    return make_healthy_db(tmp_path_factory.mktemp("feature") / "healthy.db")


def test_healthy(db, tmp_path):
    res = run("feature_check", db)
    assert res.exit_code == 0, res.text()
    names = {m.name for m in res.metrics}
    for t in ("market_1s", "predictions"):
        assert {f"{t}.BTC.lag_s", f"{t}.BTC.coverage", f"{t}.BTC.ts_ms.duplicates", f"{t}.BTC.ts_ms.misaligned",
                f"{t}.BTC.ts_ms.future"} <= names
    assert {"predictions.BTC.rv_60s.null_rate", "predictions.BTC.rv_60s.range", "market_1s.BTC.spread_bps.range",
            "market_1s.BTC.bar.consistency"} <= names
    assert "market_1s.BTC.open.null_rate" not in names          # NULL by design when no trade
    # Coinglass disabled: cg_* null rates are not judged here, and say so
    assert metric(res, "predictions.BTC.cg_funding.null_rate").status == "SKIP"
    p = run_bin("feature_check", "--as-of", "2026-01-10T12:00:00Z", env=cqt_env(tmp_path, CQT_DB=str(db)))
    assert p.returncode == 0 and p.stdout.splitlines()[-1].startswith("feature_check: PASS")


def test_coverage_hole_and_stale_aggregate(db):
    execute(db, "DELETE FROM predictions WHERE ts_ms > ? AND ts_ms <= ?", (AS_OF - 400_000, AS_OF - 380_000))
    execute(db, "DELETE FROM market_1s WHERE ts_ms > ?", (AS_OF - 30_000,))
    res = run("feature_check", db)
    assert set(failed_names(res)) == {"predictions.BTC.coverage", "market_1s.BTC.lag_s", "market_1s.BTC.coverage"}
    assert metric(res, "predictions.BTC.coverage").value == pytest.approx(580 / 600, abs=1e-3)
    assert "is cqt-aggregate running" in metric(res, "market_1s.BTC.lag_s").reason


def test_null_rate_with_per_column_override(db):
    execute(db, "UPDATE predictions SET rv_300s = NULL WHERE ts_ms > ? AND ts_ms % 10000 = 0", (AS_OF - 600_000,))
    res = run("feature_check", db)
    assert failed_names(res) == ["predictions.BTC.rv_300s.null_rate"]
    m = metric(res, "predictions.BTC.rv_300s.null_rate")
    assert m.value == 0.1 and m.reason == "60 of 600 rows NULL"
    assert run("feature_check", db, CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_RV_300S="0.2").exit_code == 0
    # liquidations are sparse: NULL allowed by the built-in override
    execute(db, "UPDATE predictions SET liq_notional_60s = NULL")
    assert run("feature_check", db, CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_RV_300S="0.2").exit_code == 0


def test_coinglass_columns_judged_when_enabled(db):
    execute(db, "UPDATE predictions SET cg_oi_chg = NULL WHERE ts_ms % 5000 = 0")
    assert run("feature_check", db).exit_code == 0
    res = run("feature_check", db, **COINGLASS_OK_ENV)
    assert failed_names(res) == ["predictions.BTC.cg_oi_chg.null_rate"]
    assert metric(res, "predictions.BTC.cg_oi_chg.null_rate").threshold == 0.05


@pytest.mark.parametrize("sql, metric_name", [
    ("UPDATE market_1s SET spread_bps = -1.5 WHERE ts_ms = {t}", "market_1s.BTC.spread_bps.range"),
    ("UPDATE predictions SET spread_bps = -0.1 WHERE ts_ms = {t}", "predictions.BTC.spread_bps.range"),
    ("UPDATE market_1s SET kimchi_premium = 0.25 WHERE ts_ms = {t}", "market_1s.BTC.kimchi_premium.range"),
    ("UPDATE predictions SET kimchi_premium = -0.3 WHERE ts_ms = {t}", "predictions.BTC.kimchi_premium.range"),
    ("UPDATE predictions SET funding_rate = 0.05 WHERE ts_ms = {t}", "predictions.BTC.funding_rate.range"),
    ("UPDATE predictions SET rv_60s = -1e-6 WHERE ts_ms = {t}", "predictions.BTC.rv_60s.range"),
    ("UPDATE predictions SET ls_ratio = 0 WHERE ts_ms = {t}", "predictions.BTC.ls_ratio.range"),
    ("UPDATE market_1s SET mark_price = -5 WHERE ts_ms = {t}", "market_1s.BTC.mark_price.range"),
    ("UPDATE market_1s SET book_age_ms = -250 WHERE ts_ms = {t}", "market_1s.BTC.book_age_ms.range"),
    ("UPDATE predictions SET flow_imb_10s = 1.5 WHERE ts_ms = {t}", "predictions.BTC.flow_imb_10s.range"),
    ("UPDATE predictions SET ret_5s = 9e999 WHERE ts_ms = {t}", "predictions.BTC.ret_5s.range"),
])
def test_ranges(db, sql, metric_name):
    t = AS_OF - 123_000
    execute(db, sql.format(t=t))
    res = run("feature_check", db)
    assert failed_names(res) == [metric_name]
    m = metric(res, metric_name)
    assert m.value == 1 and f"first at {fmt_ms(t)}" in m.reason


def test_bar_consistency(db):
    t = execute(db, "UPDATE market_1s SET open = NULL WHERE ts_ms = (SELECT MIN(ts_ms) FROM market_1s "
                    "WHERE has_trade = 1 AND ts_ms > ?)", (AS_OF - 500_000,))
    assert t == 1
    assert failed_names(run("feature_check", db)) == ["market_1s.BTC.bar.consistency"]


def test_misaligned_and_future_rows(db):
    execute(db, "INSERT INTO predictions (symbol, ts_ms, horizon_sec, model) VALUES ('BTC', ?, 120, 'x')",
            (AS_OF - 100_500,))
    res = run("feature_check", db, CQT_CHECK_NULL_RATE_MAX="0.01")
    assert "predictions.BTC.ts_ms.misaligned" in failed_names(res)
    # a row stamped after the wall clock (driven by freezegun)
    execute(db, "DELETE FROM predictions WHERE ts_ms % 1000 != 0")
    execute(db, "INSERT INTO market_1s SELECT symbol, ts_ms + 3600000, open, high, low, close, volume, trade_count, "
                "vwap, buy_volume, sell_volume, has_trade, close_age_ms, best_bid, best_ask, mid, spread_bps, "
                "book_imbalance, book_age_ms, binance_last, binance_age_ms, mark_price, index_price, funding_rate, "
                "mark_age_ms, usdt_krw, usdt_krw_age_ms, kimchi_premium FROM market_1s WHERE ts_ms = ?", (AS_OF,))
    with freeze_time(fmt_ms(AS_OF + 2_000)):
        res = run("feature_check", db)
    assert failed_names(res) == ["market_1s.BTC.ts_ms.future"]
    assert "stamped after the wall clock" in metric(res, "market_1s.BTC.ts_ms.future").reason


def test_duplicates_are_counted(tmp_path):
    """ts_ms is the primary key, so SQLite itself forbids duplicates; a table rebuilt without it
    (a bad hand-made migration) must still be caught."""
    path = make_healthy_db(tmp_path / "cqt.db", span_s=700)
    c = sqlite3.connect(path)
    c.executescript("CREATE TABLE p2 AS SELECT * FROM predictions; DROP TABLE predictions; "
                    "ALTER TABLE p2 RENAME TO predictions; "
                    f"INSERT INTO predictions SELECT * FROM predictions WHERE ts_ms = {AS_OF - 10_000};")
    c.close()
    res = run("feature_check", path)
    assert failed_names(res) == ["predictions.BTC.ts_ms.duplicates"]


def test_empty_window_fails_clearly(db):
    execute(db, "DELETE FROM predictions")
    res = run("feature_check", db)
    assert res.exit_code == 1 and res.error is None
    assert set(failed_names(res)) == {"predictions.BTC.lag_s", "predictions.BTC.coverage"}
    assert metric(res, "predictions.BTC.columns").status == "SKIP"
    assert "no predictions rows of BTC in the window" in metric(res, "predictions.BTC.coverage").reason


def test_warm_up_rows_are_not_counted_as_missing(db):
    """oi_chg_300s needs open interest 300 s back; open interest has no history to backfill,
    so right after the poller's first start the feature is NULL by the aggregate's rule."""
    first_oi = AS_OF - 400_000
    execute(db, "DELETE FROM binance_open_interest WHERE ts_ms < ?", (first_oi,))
    execute(db, "UPDATE predictions SET oi_chg_300s = NULL WHERE ts_ms < ?", (first_oi + 300_000,))
    res = run("feature_check", db)
    assert res.exit_code == 0, res.text()
    m = metric(res, "predictions.BTC.oi_chg_300s.null_rate")
    assert m.value == 0 and m.reason.startswith("0 of 100 rows NULL (the 500 rows before")
    execute(db, "UPDATE predictions SET oi_chg_300s = NULL WHERE ts_ms IN (?, ?)", (AS_OF - 50_000, AS_OF - 40_000))
    assert failed_names(run("feature_check", db)) == ["predictions.BTC.oi_chg_300s.null_rate"]
    execute(db, "DELETE FROM binance_open_interest WHERE ts_ms < ?", (AS_OF - 10_000,))   # first OI 10 s ago
    m = metric(run("feature_check", db), "predictions.BTC.oi_chg_300s.null_rate")
    assert m.status == "SKIP" and "warming up" in m.reason and "binance_open_interest" in m.reason
