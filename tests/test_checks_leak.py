"""feature_leak_check: clean pipeline PASS; planted leaks FAIL (the check finds them, not the test).

A planted leak replaces THE feature function (cqt.features.compute_range) by a leaky
version for the whole test — the aggregate's stored rows and the check's recomputation
both run it, as they would in production. The check can only catch it because it runs
the function on a database truncated at t0, where the future does not exist.
"""
from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from freezegun import freeze_time

from cqt import features
from cqt.checks import leak
from cqt.timeutil import fmt_ms
from fixtures_checks import (
    AS_OF,
    LEAK_ENV,
    copy_db,
    execute,
    failed_names,
    make_raw,
    metric,
    run,
    settings_for,
    store_features,
)

pytestmark = pytest.mark.timeout(90)
W_FROM, W_TO = AS_OF - 599_000, AS_OF           # the 600 s window's seconds
FAST = {**LEAK_ENV, "CQT_CHECK_LEAK_SAMPLES": "12"}
REAL = features.compute_range


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    return make_raw(tmp_path_factory.mktemp("leak") / "raw.db")


@pytest.fixture(scope="module")
def db_template(raw, tmp_path_factory):
    """The clean pipeline (raw plus stored features); each test gets a copy as `db` (conftest.py)."""
    path = copy_db(raw, tmp_path_factory.mktemp("leak") / "clean.db")
    store_features(path, W_FROM, W_TO)
    return path


def planted(raw, tmp_path, monkeypatch, fn):
    monkeypatch.setattr(features, "compute_range", fn)
    path = copy_db(raw, tmp_path / "cqt.db")
    store_features(path, W_FROM, W_TO)
    return path


# ------------------------------------------------------------------------------ planted leaks
class Planted:
    """What a leaky compute_range returns: the same public surface as cqt.features' result
    (DataFrames `market` / `predictions`, `market_rows()` / `prediction_rows()`)."""

    def __init__(self, market, predictions):
        self.market = market.reset_index(drop=True)
        self.predictions = predictions.reset_index(drop=True)

    @staticmethod
    def _rows(df, columns):
        out = []
        for rec in df[list(columns)].itertuples(index=False):
            out.append(tuple(None if (isinstance(v, float) and np.isnan(v)) else
                             (v.item() if hasattr(v, "item") else v) for v in rec))
        return out

    def market_rows(self):
        return self._rows(self.market, features.MARKET_COLUMNS)

    def prediction_rows(self):
        return self._rows(self.predictions, features.PREDICTION_COLUMNS)


def _cut(res, a, b):
    return res.market.iloc[a:b].copy(), res.predictions.iloc[a:b].copy()


def centered_window(conn, t_from, t_to, params=None, **kw):
    """rv_60s over a CENTERED 61 s window (t-30 s .. t+30 s): half of it is the future."""
    kw.pop("cache", None)
    res = REAL(conn, t_from - 30_000, t_to + 30_000, params, **kw)
    rv = res.predictions["ret_1s"].rolling(61, center=True).std().to_numpy()
    market, pred = _cut(res, 30, len(rv) - 30)
    pred["rv_60s"] = rv[30:-30]
    return Planted(market, pred)


def coinglass_by_open_time(conn, t_from, t_to, params=None, **kw):
    """cg_funding joined on the bar's OPEN time: the newest bar that opened by t, still forming."""
    res = REAL(conn, t_from, t_to, params, **kw)
    market, pred = _cut(res, 0, len(res.predictions))
    vals = []
    for t in res.predictions["ts_ms"]:
        r = conn.execute("SELECT close FROM coinglass_funding WHERE open_ts_ms <= ? ORDER BY open_ts_ms DESC LIMIT 1",
                         (int(t),)).fetchone()
        vals.append(np.nan if r is None else r[0])
    pred["cg_funding"] = np.array(vals, dtype=float)
    return Planted(market, pred)


def future_price(conn, t_from, t_to, params=None, **kw):
    """ret_60s = log(close(t+60 s) / close(t)): the label, smuggled in as a feature."""
    kw.pop("cache", None)
    res = REAL(conn, t_from, t_to + 60_000, params, **kw)
    close = res.market["close"].to_numpy(dtype=float)
    n = len(close) - 60
    market, pred = _cut(res, 0, n)
    pred["ret_60s"] = np.log(close[60:] / close[:n])
    return Planted(market, pred)


def ema_from_start(conn, t_from, t_to, params=None, **kw):
    """score = an EMA of ret_1s started wherever the computation starts (warm-up dependent)."""
    kw.pop("cache", None)
    start = t_from - int(300_000 * kw.get("warmup", 1.0))
    res = REAL(conn, start, t_to, params, **kw)
    ema = res.predictions["ret_1s"].fillna(0).ewm(span=120, adjust=False).mean().to_numpy()
    n = (t_to - t_from) // 1000 + 1
    market, pred = _cut(res, len(ema) - n, len(ema))
    pred["score"] = ema[-n:]
    return Planted(market, pred)


# ------------------------------------------------------------------------------ tests
def test_clean_pipeline_passes(db):
    res = run("feature_leak_check", db, **LEAK_ENV)      # default K = 50
    assert res.exit_code == 0, res.text()
    assert metric(res, "leak.BTC.recompute.samples").value == 50
    for name in ("leak.BTC.market_1s.negative_ages", "leak.BTC.market_1s.provenance", "leak.BTC.predictions.sources",
                 "leak.BTC.recompute.mismatches", "leak.BTC.warmup.mismatches"):
        assert metric(res, name).status == "PASS", name
    labels = metric(res, "leak.BTC.labels.violations")
    assert labels.status == "SKIP" and "no export of BTC yet" in labels.reason


@pytest.mark.parametrize("fn, column", [
    (centered_window, "predictions.rv_60s"),
    (coinglass_by_open_time, "predictions.cg_funding"),
    (future_price, "predictions.ret_60s"),
])
def test_planted_leaks_fail_naming_the_feature(raw, tmp_path, monkeypatch, fn, column):
    path = planted(raw, tmp_path, monkeypatch, fn)
    res = run("feature_leak_check", path, **FAST)
    assert res.exit_code == 1, res.text()
    assert "leak.BTC.recompute.mismatches" in failed_names(res)
    m = metric(res, f"leak.BTC.recompute.{column}")
    assert m.status == "FAIL" and m.value >= 3
    assert f"{column} at t0=2026-01-10T" in m.reason and "stored " in m.reason and "recomputed " in m.reason
    assert "(look-ahead: a recomputation that sees data after t0 reproduces the stored value)" in m.reason
    assert "look-ahead]" in metric(res, "leak.BTC.recompute.mismatches").reason
    assert res.notes == [] or not any("late data" in n for n in res.notes)


def test_warmup_dependence_fails(raw, tmp_path, monkeypatch):
    path = planted(raw, tmp_path, monkeypatch, ema_from_start)
    res = run("feature_leak_check", path, **FAST)
    assert "leak.BTC.warmup.predictions.score" in failed_names(res)
    assert "depend on the warm-up" in metric(res, "leak.BTC.warmup.mismatches").reason


def test_late_data_is_a_note_not_a_leak(db):
    """Trades that reached the database after their seconds were written (a backfill) make the
    live rows differ from a recomputation; that is not a leak."""
    # backfilled after the whole window had been written live (received after as-of)
    rows = [("KRW-BTC", 900_000_000 + i, t, 86_000_000.0 + 1000 * (i % 7), 0.05, "buy", AS_OF + 60_000)
            for i, t in enumerate(range(AS_OF - 590_000, AS_OF - 10_000, 3_000))]
    conn = __import__("sqlite3").connect(db)
    conn.executemany("INSERT INTO upbit_trades VALUES (?,?,?,?,?,?,?)", rows)
    conn.commit()
    conn.close()
    res = run("feature_leak_check", db, **FAST)
    assert res.exit_code == 0, res.text()
    assert any("late data, not a leak" in n and "--rebuild" in n for n in res.notes), res.notes
    # the same rows received in time would have been seen live: then the stored rows are wrong
    execute(db, "UPDATE upbit_trades SET recv_ts_ms = trade_ts_ms + 50 WHERE sequential_id >= 900000000")
    res = run("feature_leak_check", db, **FAST)
    assert res.exit_code == 1 and "leak.BTC.recompute.mismatches" in failed_names(res)
    assert "not reproducible]" in metric(res, "leak.BTC.recompute.mismatches").reason
    assert "rebuild the range" in metric(res, "leak.BTC.recompute.market_1s.trade_count").reason


def test_structural_parts(db):
    s = settings_for(db, **FAST)
    from cqt.checks.base import CheckContext, open_for_check
    from cqt.checks.thresholds import Thresholds

    conn = open_for_check(db)
    sample, _ = leak.sample_t0(CheckContext(conn, s, Thresholds(s), AS_OF, 600))
    conn.close()
    t = sample[3]
    execute(db, "UPDATE market_1s SET close = close + 1000 WHERE ts_ms = ?", (t,))
    execute(db, "UPDATE market_1s SET book_age_ms = -400 WHERE ts_ms = ?", (AS_OF - 333_000,))
    res = run("feature_leak_check", db, **FAST)
    assert {"leak.BTC.market_1s.negative_ages", "leak.BTC.market_1s.provenance",
            "leak.BTC.recompute.market_1s.close"} <= set(failed_names(res))
    assert f"market_1s.close at {fmt_ms(t)}" in metric(res, "leak.BTC.market_1s.provenance").reason
    assert metric(res, "leak.BTC.market_1s.negative_ages").value == 1


def test_value_without_any_available_source(db):
    execute(db, "DELETE FROM coinglass_funding")   # stored cg_funding values now have no source at all
    res = run("feature_leak_check", db, **FAST)
    m = metric(res, "leak.BTC.predictions.sources")
    assert m.status == "FAIL" and "predictions.cg_funding at" in m.reason and "coinglass_funding" in m.reason


def _export(path, t0_ms, label_ms, db, horizon=120, ts=None):
    tz = pa.timestamp("ms", tz="UTC")
    pq.write_table(pa.table({"t0": pa.array(t0_ms, tz), "label_ts": pa.array(label_ms, tz),
                             "label": pa.array(["UP"] * len(t0_ms))}), path)
    execute(db, "INSERT INTO export_runs (ts_ms, output, size_bytes, rows, horizon_sec, threshold, from_ts_ms, "
                "to_ts_ms, drops_json, labels_json) VALUES (?, ?, 1, ?, ?, 'fixed:0.001', 0, 0, '{}', '{}')",
            (ts or AS_OF, str(path), len(t0_ms), horizon))


def test_labels_from_the_newest_existing_export(db, tmp_path):
    t0 = [AS_OF - 600_000 + 1000 * i for i in range(100)]
    _export(tmp_path / "good.parquet", t0, [t + 120_000 for t in t0], db, ts=AS_OF - 10)
    res = run("feature_leak_check", db, **FAST)
    m = metric(res, "leak.BTC.labels.violations")
    assert m.status == "PASS" and m.value == 0
    bad = [t + 120_000 for t in t0]
    bad[7] = t0[7] + 119_000
    bad[8] = None                                  # no label: not a violation
    _export(tmp_path / "bad.parquet", t0, bad, db, ts=AS_OF)
    _export(tmp_path / "deleted.parquet", t0, bad, db, ts=AS_OF + 5)
    (tmp_path / "deleted.parquet").unlink()        # newest entry's file is gone: the one before counts
    res = run("feature_leak_check", db, **FAST)
    m = metric(res, "leak.BTC.labels.violations")
    assert m.status == "FAIL" and m.value == 1 and "bad.parquet have label_ts < t0 + 120 s" in m.reason


def test_empty_window_and_cannot_import(db, monkeypatch):
    res = run("feature_leak_check", db, as_of_ms=AS_OF + 3_600_000, **FAST)
    assert res.exit_code == 1 and failed_names(res) == ["leak.BTC.recompute.samples"]
    assert "no BTC predictions rows" in metric(res, "leak.BTC.recompute.samples").reason
    import cqt

    monkeypatch.setitem(sys.modules, "cqt.features", None)
    monkeypatch.delattr(cqt, "features")
    res = run("feature_leak_check", db, **FAST)
    assert res.exit_code == 3 and "cqt.features cannot be imported" in res.error


def test_program_default_as_of_under_freezegun(db):
    with freeze_time(fmt_ms(AS_OF)):
        r = CliRunner().invoke(leak.main, ["--db", str(db), "--window", "300"],
                               env={"CQT_ENV_FILE": "/dev/null", **FAST})
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1].startswith("feature_leak_check: PASS") and "window=300s" in r.output
