"""cqt-aggregate: grace delay and catch-up (freezegun), late data, --rebuild CLI."""
from __future__ import annotations

import json
import logging
import sqlite3

import pytest
from freezegun import freeze_time

from cqt.aggregate.config import AggregateConfig
from cqt.aggregate.rebuilds import rebuild
from cqt.aggregate.service import LiveAggregator
from cqt.db import connect
from cqt.features import MARKET_COLUMNS, PREDICTION_COLUMNS, FeatureParams
from fixtures_raw import DirectWriter, at, make_raw_db
from helpers import cqt_env, query, run_bin

S = 1_700_000_000_000
PARAMS = FeatureParams()


@pytest.fixture(scope="module")
def db_template(tmp_path_factory):
    """The raw tables every test starts from (`db` is a copy: conftest.py)."""
    path = tmp_path_factory.mktemp("aggsvc") / "raw.db"
    make_raw_db(path, S, 600, seed=3)
    return path


def cfg(**kw) -> AggregateConfig:
    return AggregateConfig(assets=(PARAMS,), **kw)


def written(path) -> list[int]:
    return [r[0] for r in query(path, "SELECT ts_ms FROM market_1s WHERE symbol = 'BTC' ORDER BY ts_ms")]


def first_trade_bar(path) -> int:
    t = query(path, "SELECT MIN(trade_ts_ms) FROM upbit_trades WHERE code = 'KRW-BTC'")[0][0]
    return -(-t // 1000) * 1000


def test_grace_delay_writes_only_complete_seconds(db, tmp_path):
    w = DirectWriter(db)
    with freeze_time(at(S + 400_500)) as clock:
        agg = LiveAggregator(db, cfg(grace_ms=2000), w)
        n = agg.step()                               # first start: from the first trade to now - 2 s
        ts = written(db)
        assert ts[0] == first_trade_bar(db) and ts[-1] == S + 398_000
        assert n == len(ts) == (ts[-1] - ts[0]) // 1000 + 1
        clock.tick(0.5)                              # now S+401.0: bar S+399 is 2 s old
        assert agg.step() == 1 and written(db)[-1] == S + 399_000
        clock.tick(0.9)                              # now S+401.9: bar S+400 only 1.9 s old
        assert agg.step() == 0 and written(db)[-1] == S + 399_000
        assert 0.02 <= agg.sleep_s() <= 0.2
        clock.tick(0.1)
        assert agg.step() == 1 and written(db)[-1] == S + 400_000
        agg.close()
        # a longer grace after a restart: nothing is due yet, nothing is rewritten
        agg5 = LiveAggregator(db, cfg(grace_ms=5000), w)
        assert agg5.step() == 0 and written(db)[-1] == S + 400_000
        clock.tick(3.0)                              # now S+405.0: bar S+400 was already written
        assert agg5.step() == 0
        clock.tick(1.0)                              # now S+406.0: bar S+401 is 5 s old
        assert agg5.step() == 1 and written(db)[-1] == S + 401_000
        agg5.close()
    # what was written live, second by second, equals a rebuild of the same range
    ts = written(db)
    copy = tmp_path / "copy.db"
    src, dst = connect(db), sqlite3.connect(copy)
    src.backup(dst)
    src.close(), dst.close()
    rebuild(copy, ts[0], ts[-1], params=PARAMS)
    for table, cols in (("market_1s", MARKET_COLUMNS), ("predictions", PREDICTION_COLUMNS)):
        sql = f"SELECT {', '.join(cols)} FROM {table} ORDER BY ts_ms"
        assert query(db, sql) == query(copy, sql)


def test_catch_up_after_restart_is_bounded_and_logged(db, caplog):
    w = DirectWriter(db)
    with freeze_time(at(S + 20_500)) as clock:
        agg = LiveAggregator(db, cfg(grace_ms=2000, max_catchup_ms=120_000, catchup_step_s=50), w)
        agg.step()
        agg.close()
        assert written(db)[-1] == S + 18_000
        clock.move_to(at(S + 400_500))              # "restart" 380 s later: more than the 120 s bound
        caplog.set_level(logging.INFO, logger="cqt.aggregate")
        agg = LiveAggregator(db, cfg(grace_ms=2000, max_catchup_ms=120_000, catchup_step_s=50), w)
        steps = []
        while (n := agg.step()):
            steps.append(n)
            assert agg.catching_up == (len(steps) < 3)
        assert steps == [50, 50, 20] and agg.skipped_s == 260
        msg = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
        assert f"--rebuild --from {S + 19_000} --to {S + 278_000}" in msg and "skipping 260 s" in msg
        ts = written(db)
        after = [t for t in ts if t > S + 18_000]
        assert after == list(range(S + 279_000, S + 398_001, 1000))
        assert agg.detail()["skipped_s"] == 260 and agg.detail()["last_bar_ts_ms"] == S + 398_000
        agg.close()
        # within the bound: resume exactly after the last written second, no gap, no warning
        caplog.clear()
        clock.move_to(at(S + 430_500))
        agg = LiveAggregator(db, cfg(grace_ms=2000, max_catchup_ms=120_000, catchup_step_s=50), w)
        assert agg.step() == 30 and agg.skipped_s == 0
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert written(db)[-31:] == list(range(S + 398_000, S + 428_001, 1000))
        agg.close()


def test_late_trades_are_counted_and_rebuild_corrects_them(db):
    w = DirectWriter(db)
    with freeze_time(at(S + 300_500)):
        agg = LiveAggregator(db, cfg(), w)
        agg.step()
        x = S + 250_000
        before = query(db, "SELECT trade_count, volume FROM market_1s WHERE ts_ms = ?", (x,))[0]
        assert agg.scan_late() == {}
        # a backfilled trade for a second that was already written
        w(lambda c: c.execute("INSERT INTO upbit_trades VALUES ('KRW-BTC', 1, ?, 83000000.0, 0.5, 'buy', ?)",
                              (x - 400, S + 300_400)))
        late = agg.scan_late()
        assert late == {"upbit_trades_total": 1, "upbit_trades_pending": 1}
        assert agg.scan_late() == late                      # idempotent
        assert agg.detail()["late"] == late
        # a Coinglass bar available at close + 60 s but received after that second was written (S+300.5)
        close = S + 180_000
        w(lambda c: c.execute("INSERT INTO coinglass_open_interest VALUES ('BTC', '1h', ?, ?, 1, 2, 0.5, 1.5, ?)",
                              (close - 3_600_000, close, S + 300_600)))
        late = agg.scan_late()
        assert late["coinglass_open_interest_pending"] == 1
        assert query(db, "SELECT ts_ms, late_rows FROM aggregate_late WHERE source = 'coinglass_open_interest'") == \
            [(close + 60_000, 1)]
        assert query(db, "SELECT trade_count, volume FROM market_1s WHERE ts_ms = ?", (x,))[0] == before  # live stays
        st = rebuild(db, x - 5_000, x + 5_000, params=PARAMS)
        assert (st.late_seconds_corrected, st.late_rows_corrected) == (1, 1)
        after = query(db, "SELECT trade_count, volume FROM market_1s WHERE ts_ms = ?", (x,))[0]
        assert after == (before[0] + 1, pytest.approx(before[1] + 0.5))
        assert query(db, "SELECT late_rows, corrected_rows, rebuilt_ts_ms IS NOT NULL FROM aggregate_late "
                         "WHERE source = 'upbit_trades'") == [(1, 1, 1)]
        assert agg.scan_late()["upbit_trades_pending"] == 0
        # one more late trade in the same second after the rebuild
        w(lambda c: c.execute("INSERT INTO upbit_trades VALUES ('KRW-BTC', 2, ?, 83000000.0, 0.1, 'sell', ?)",
                              (x - 300, S + 300_450)))
        assert agg.scan_late()["upbit_trades_total"] == 2 and agg.late["upbit_trades_pending"] == 1
        agg.close()


def test_rebuild_cli_replaces_rows_bounds_inclusive(db, tmp_path):
    junk = [(t,) for t in range(S + 99_000, S + 202_000, 1000)]
    conn = connect(db)
    conn.executemany("INSERT INTO market_1s (symbol, ts_ms, close, volume, trade_count, buy_volume, sell_volume, "
                     "has_trade) VALUES ('BTC', ?, -1, 0, 0, 0, 0, 0)", junk)
    conn.executemany("INSERT INTO predictions (symbol, ts_ms, horizon_sec, model) VALUES ('BTC', ?, 1, 'junk')", junk)
    conn.close()
    env = cqt_env(tmp_path, PYTHONWARNINGS="error::RuntimeWarning")   # e.g. numpy's "invalid value in cast"
    r = run_bin("cqt-aggregate", "--rebuild", "--from", "2023-11-14T22:15:00.5Z", "--to", str(S + 200_000),
                "--db", str(db), "--json", env=env)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
    out = json.loads(r.stdout)
    assert (out["from_ms"], out["to_ms"], out["seconds"]) == (S + 101_000, S + 200_000, 100)
    assert out["nulls"]["predictions"]["ret_300s"] == 100     # data starts at S: 300 s look-back is NULL
    rows = dict(query(db, "SELECT ts_ms, close FROM market_1s"))
    assert rows[S + 99_000] == -1.0 and rows[S + 100_000] == -1.0 and rows[S + 201_000] == -1.0
    assert all(rows[t] is not None and rows[t] > 0 for t in range(S + 101_000, S + 200_001, 1000))
    models = dict(query(db, "SELECT ts_ms, model FROM predictions"))
    assert models[S + 101_000] == models[S + 200_000] == "baseline-v1" and models[S + 201_000] == "junk"



def test_cli_errors(db, tmp_path):
    from click.testing import CliRunner

    from cqt.aggregate.cli import main

    env = {"CQT_ENV_FILE": str(tmp_path / "none.env"), "CQT_DB": str(db)}

    def cli(*args, **extra):
        return CliRunner().invoke(main, list(args), env={**env, **extra})

    r = cli("--rebuild", "--from", str(S))
    assert r.exit_code == 2 and "--rebuild needs --from and --to" in r.output
    r = cli("--from", str(S), "--to", str(S))
    assert r.exit_code == 2 and "only go with --rebuild" in r.output
    r = cli("--rebuild", "--from", "yesterday-ish", "--to", str(S))
    assert r.exit_code == 2 and "not an ISO-8601 time" in r.output
    r = cli("--rebuild", "--from", str(S + 1000), "--to", str(S))
    assert r.exit_code == 2 and "--from is after --to" in r.output
    r = cli("--rebuild", "--from", str(S), "--to", str(S), "--db", str(tmp_path / "none.db"))
    assert r.exit_code == 3 and "database not found" in r.output
    r = cli("--rebuild", "--from", str(S), "--to", str(S), CQT_AGGREGATE_LS_PERIOD="7m")
    assert r.exit_code == 78 and "CQT_AGGREGATE_LS_PERIOD" in r.output
    # the real program, as systemd starts it: a bad setting is one line and exit 78, no traceback
    r = run_bin("cqt-aggregate", env=cqt_env(tmp_path, CQT_AGGREGATE_GRACE_S="soon"))
    assert r.returncode == 78 and "CQT_AGGREGATE_GRACE_S" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
