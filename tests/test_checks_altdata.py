"""altdata_check on crafted databases: healthy -> 0, each failure mode -> 1 naming the metric."""
from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from freezegun import freeze_time

from cqt.checks import altdata
from cqt.timeutil import fmt_ms
from fixtures_checks import AS_OF, execute, failed_names, make_healthy_db, metric, run
from helpers import cqt_env, run_bin

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def db_template(tmp_path_factory):
    """Built once; each test gets a copy as `db` (conftest.py)."""
    return make_healthy_db(tmp_path_factory.mktemp("altdata") / "healthy.db")


def test_healthy_passes_every_metric(db):
    res = run("altdata_check", db)
    assert res.exit_code == 0, res.text()
    names = [m.name for m in res.metrics]
    for stream in ("binance.BTCUSDT.aggTrade", "binance.BTCUSDT.markPrice", "binance.BTCUSDT.bookTicker",
                   "upbit.KRW-BTC.trade", "upbit.KRW-BTC.orderbook"):
        assert {f"{stream}.lag_s", f"{stream}.fill", f"{stream}.skew_s"} <= set(names)
    for sparse in ("binance.BTCUSDT.forceOrder", "upbit.KRW-USDT.trade"):
        assert f"{sparse}.lag_s" in names and f"{sparse}.fill" not in names
    for rest in ("binance.BTCUSDT.openInterest", "binance.BTCUSDT.premiumIndex", "binance.BTCUSDT.fundingRate",
                 *(f"binance.BTCUSDT.ratios.{k}" for k in altdata.RATIO_KINDS)):
        assert {f"{rest}.lag_s", f"{rest}.fill"} <= set(names)
    assert "gaps.open" in names and "rejects.binance_ws.ratio" in names


def test_program_exit_codes(db, tmp_path):
    env = cqt_env(tmp_path, CQT_DB=str(db))
    p = run_bin("altdata_check", "--window", "600", "--as-of", "2026-01-10T12:00:00Z", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[0] == "binance.BTCUSDT.aggTrade.lag_s 0.363 <=10 PASS"
    assert lines[-1].startswith("altdata_check: PASS (")
    p = run_bin("altdata_check", "--as-of", str(AS_OF), "--json", env=env)
    d = json.loads(p.stdout)
    assert p.returncode == 0 and d["exit_code"] == 0 and d["as_of_ms"] == AS_OF and len(d["metrics"]) > 30
    missing = tmp_path / "nope" / "cqt.db"
    p = run_bin("altdata_check", "--db", str(missing), env=env)
    assert p.returncode == 3 and "database not found" in p.stdout and not missing.exists()
    assert run_bin("altdata_check", "--bogus", env=env).returncode == 2
    assert run_bin("altdata_check", "--as-of", "yesterday-ish", env=env).returncode == 2
    assert run_bin("altdata_check", "--window", "0", env=env).returncode == 2
    bad = cqt_env(tmp_path, CQT_DB=str(db), CQT_CHECK_SKEW_MAX_S="abc")
    p = run_bin("altdata_check", "--as-of", str(AS_OF), env=bad)
    assert p.returncode == 78 and "CQT_CHECK_SKEW_MAX_S" in p.stderr


def test_default_as_of_is_now_under_freezegun(db, tmp_path):
    with freeze_time(fmt_ms(AS_OF)):
        r = CliRunner().invoke(altdata.main, ["--db", str(db)], env={"CQT_ENV_FILE": "/dev/null"})
    assert r.exit_code == 0, r.output
    assert "as_of=2026-01-10T12:00:00.000Z" in r.output
    with freeze_time(fmt_ms(AS_OF + 3_600_000)):   # an hour later nothing is fresh any more
        r = CliRunner().invoke(altdata.main, ["--db", str(db)], env={"CQT_ENV_FILE": "/dev/null"})
    assert r.exit_code == 1 and "binance.BTCUSDT.aggTrade.lag_s 3600" in r.output


def test_stale_aggtrade_names_the_stream(db):
    execute(db, "DELETE FROM binance_agg_trades WHERE trade_ts_ms > ?", (AS_OF - 60_000,))
    res = run("altdata_check", db)
    assert res.exit_code == 1
    assert "binance.BTCUSDT.aggTrade.lag_s" in failed_names(res)
    m = metric(res, "binance.BTCUSDT.aggTrade.lag_s")
    assert 59 < m.value < 61 and "binance.BTCUSDT.aggTrade.lag_s" in res.summary()


def test_markprice_hole_fails_fill(db):
    execute(db, "DELETE FROM binance_mark_price WHERE event_ts_ms > ? AND event_ts_ms <= ?",
            (AS_OF - 300_000, AS_OF - 270_000))
    res = run("altdata_check", db)
    assert failed_names(res) == ["binance.BTCUSDT.markPrice.fill"]
    assert 0.94 < metric(res, "binance.BTCUSDT.markPrice.fill").value < 0.96


def test_dead_bookticker_and_upbit_orderbook_hole(db):
    execute(db, "DELETE FROM binance_book_ticker WHERE event_ts_ms > ?", (AS_OF - 700_000,))
    execute(db, "DELETE FROM upbit_orderbook WHERE ts_ms > ? AND ts_ms <= ?", (AS_OF - 400_000, AS_OF - 200_000))
    res = run("altdata_check", db)
    assert set(failed_names(res)) == {"binance.BTCUSDT.bookTicker.lag_s", "binance.BTCUSDT.bookTicker.fill",
                                      "binance.BTCUSDT.bookTicker.skew_s", "upbit.KRW-BTC.orderbook.fill"}
    assert metric(res, "binance.BTCUSDT.bookTicker.fill").value == 0
    assert "no rows in the window" in metric(res, "binance.BTCUSDT.bookTicker.skew_s").reason


def test_sparse_streams_lag_only_counted_from_collector_start(db):
    execute(db, "DELETE FROM binance_liquidations")
    res = run("altdata_check", db)
    m = metric(res, "binance.BTCUSDT.forceOrder.lag_s")
    assert m.status == "PASS" and m.value == 1200 and "since cqt-collect-binance started" in m.reason
    execute(db, "UPDATE service_runs SET start_ts_ms = ? WHERE service = 'cqt-collect-binance'", (AS_OF - 7_200_000,))
    execute(db, "DELETE FROM upbit_trades WHERE code = 'KRW-USDT' AND trade_ts_ms > ?", (AS_OF - 1_000_000,))
    res = run("altdata_check", db)
    assert set(failed_names(res)) == {"binance.BTCUSDT.forceOrder.lag_s", "upbit.KRW-USDT.trade.lag_s"}
    assert metric(res, "binance.BTCUSDT.forceOrder.lag_s").value == 7200


def test_rest_series_use_the_pollers_intervals(db):
    # The fixture polls open interest every 10 s: fine for CQT_POLL_OI_S=10, a hole for 2.
    res = run("altdata_check", db, CQT_POLL_OI_S="2")
    assert {"binance.BTCUSDT.openInterest.lag_s", "binance.BTCUSDT.openInterest.fill"} <= set(failed_names(res))
    assert metric(res, "binance.BTCUSDT.openInterest.lag_s").threshold == 4
    execute(db, "DELETE FROM binance_open_interest WHERE ts_ms > ? AND ts_ms <= ?", (AS_OF - 400_000, AS_OF - 300_000))
    res = run("altdata_check", db)
    assert failed_names(res) == ["binance.BTCUSDT.openInterest.fill"]


def test_missing_ratio_period_and_funding(db):
    execute(db, "DELETE FROM binance_ratios WHERE kind = 'global_long_short' AND ts_ms > ? AND ts_ms <= ?",
            (AS_OF - 1_000_000, AS_OF - 500_000))
    execute(db, "DELETE FROM binance_funding_rate")
    res = run("altdata_check", db)
    assert set(failed_names(res)) == {"binance.BTCUSDT.ratios.global_long_short.fill",
                                      "binance.BTCUSDT.fundingRate.lag_s", "binance.BTCUSDT.fundingRate.fill"}
    fill = metric(res, "binance.BTCUSDT.ratios.global_long_short.fill")
    assert fill.value == 0 and "0 of 2 periods present; missing 2026-01-10T11:4" in fill.reason
    assert metric(res, "binance.BTCUSDT.fundingRate.lag_s").value is None


def test_clock_skew(db):
    execute(db, "UPDATE binance_mark_price SET recv_ts_ms = event_ts_ms - 5000")
    res = run("altdata_check", db)
    assert failed_names(res) == ["binance.BTCUSDT.markPrice.skew_s"]
    assert "-5.000 s" in metric(res, "binance.BTCUSDT.markPrice.skew_s").reason and "clock behind" in res.text()


def test_open_gaps(db):
    gap = ("INSERT INTO gaps (source, stream, detected_ts_ms, from_id, to_id, from_ts_ms, to_ts_ms, filled_ts_ms, "
           "status, symbol) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, substr(?2, 1, instr(?2, '@') - 1))")
    execute(db, gap, ("binance_ws", "BTCUSDT@aggTrade", AS_OF - 30_000, 5, 9, None, None, None, "open"))  # young
    execute(db, gap, ("upbit", "KRW-BTC@trade", AS_OF - 900_000, None, None, AS_OF - 901_000, None, AS_OF - 800_000,
                      "filled"))
    assert run("altdata_check", db).exit_code == 0          # backfill in progress / done: fine
    execute(db, gap, ("binance_ws", "BTCUSDT@aggTrade", AS_OF - 300_000, 100, 150, None, None, None, "open"))
    execute(db, gap, ("upbit", "KRW-BTC@trade", AS_OF - 200_000, None, None, AS_OF - 201_000, None, AS_OF + 5_000,
                      "filled"))                             # filled only after as-of: open then
    res = run("altdata_check", db)
    assert set(failed_names(res)) == {"gaps.binance.BTCUSDT.aggTrade.open", "gaps.upbit.KRW-BTC.trade.open"}
    assert "ids 100-150" in metric(res, "gaps.binance.BTCUSDT.aggTrade.open").reason
    # ten seconds later the second gap is filled; the first is still open
    assert failed_names(run("altdata_check", db, as_of_ms=AS_OF + 10_000, CQT_CHECK_BINANCE_AGGTRADE_LAG_MAX_S="60",
                            CQT_CHECK_BINANCE_MARKPRICE_LAG_MAX_S="60", CQT_CHECK_BINANCE_BOOKTICKER_LAG_MAX_S="60",
                            CQT_CHECK_UPBIT_KRWBTC_ORDERBOOK_LAG_MAX_S="60")) == \
        ["gaps.binance.BTCUSDT.aggTrade.open"]


def test_reject_ratio_names_source_and_reasons(db):
    execute(db, "UPDATE ingest_stats SET rejects = 10 WHERE source = 'upbit'")    # 10 of 40 frames
    execute(db, "INSERT INTO reject_counts VALUES ('upbit', 'missing_key:tp', ?, 600, ?)",
            (AS_OF - AS_OF % 3_600_000, AS_OF - 5_000))
    res = run("altdata_check", db)
    assert failed_names(res) == ["rejects.upbit.ratio"]
    m = metric(res, "rejects.upbit.ratio")
    assert m.value == 0.25 and "missing_key:tp x600" in m.reason and "format change" in m.reason


def test_rejects_without_frame_counts(db):
    execute(db, "DELETE FROM ingest_stats WHERE source = 'coinglass'")
    execute(db, "INSERT INTO reject_counts VALUES ('coinglass', 'api_error:50001', ?, 3, ?)",
            (AS_OF - AS_OF % 3_600_000, AS_OF - 5_000))
    res = run("altdata_check", db)
    assert failed_names(res) == ["rejects.coinglass.ratio"]
    assert "no frames counted" in metric(res, "rejects.coinglass.ratio").reason


def test_empty_window_is_a_clear_fail_not_a_crash(tmp_path):
    from cqt.db import open_db

    open_db(tmp_path / "empty.db").close()
    res = run("altdata_check", tmp_path / "empty.db")
    assert res.exit_code == 1 and res.error is None
    assert metric(res, "binance.BTCUSDT.aggTrade.lag_s").reason == \
        "no aggTrade event at or before as-of (is cqt-collect-binance running?)"
    assert "are the collectors running?" in metric(res, "rejects.ratio").reason


def test_unreadable_database_is_exit_3(tmp_path):
    bad = tmp_path / "cqt.db"
    bad.write_text("this is not sqlite")
    assert run("altdata_check", bad).exit_code == 3
    old = tmp_path / "old.db"
    shutil.copyfile(bad, old)
    import sqlite3

    old.unlink()
    c = sqlite3.connect(old)
    c.execute("PRAGMA user_version=1")
    c.close()
    res = run("altdata_check", old)
    assert res.exit_code == 3 and "older" in res.error
