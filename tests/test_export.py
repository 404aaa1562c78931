"""cqt-export: labels, thresholds, drop accounting, Parquet file, CLI."""
from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from freezegun import freeze_time

from cqt.db import open_db
from cqt.export import labelling
from cqt.export.parquet import read_metadata
from cqt.export.request import ExportError, ExportRequest, ExportResult
from cqt.export.run import run_export
from cqt.export.threshold import Threshold
from cqt.timeutil import parse_duration_ms
from helpers import cqt_env, query, run_bin, start_bin, stop_proc, wait_for

T = 1_771_000_000_000          # a whole second (ms)
S = 1000


# ------------------------------------------------------------------------------ fixtures
def _feature_names(conn: sqlite3.Connection) -> list[str]:
    return [r[1] for r in conn.execute("PRAGMA table_info(predictions)")
            if r[1] not in ("symbol", "ts_ms", "horizon_sec", "model", "score")]


def make_db(path: Path, market: dict[int, dict], preds: dict[int, dict], symbol: str = "BTC") -> Path:
    """market: ts_ms -> {close, has_trade, *_age_ms}; preds: ts_ms -> {feature: value} (others 0.1);
    the rows of one asset (`symbol`), added to the database at `path`."""
    conn = open_db(path)
    feats = _feature_names(conn)
    conn.execute("BEGIN")
    for ts, m in sorted(market.items()):
        row = {"symbol": symbol, "ts_ms": ts, "close": 1024.0, "volume": 1.0, "trade_count": 1, "buy_volume": 0.5,
               "sell_volume": 0.5, "has_trade": 1, "close_age_ms": 0, "book_age_ms": 100, "binance_age_ms": 100,
               "mark_age_ms": 100, "usdt_krw_age_ms": 1000}
        row.update(m)
        if not row["has_trade"]:
            row["trade_count"] = 0
        conn.execute(f"INSERT INTO market_1s ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))
    for ts, p in sorted(preds.items()):
        row = {"symbol": symbol, "ts_ms": ts, "horizon_sec": 120, "model": "test", "score": 0.0,
               **{f: 0.1 for f in feats}}
        row.update(p)
        conn.execute(f"INSERT INTO predictions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                     list(row.values()))
    conn.execute("COMMIT")
    conn.close()
    return path


def export(db: Path, out: Path, **kw) -> ExportResult:
    kw.setdefault("record", False)
    return run_export(db, ExportRequest(output=out, **kw))


def read_rows(path: Path) -> dict[int, dict]:
    t = pq.read_table(path).to_pylist()
    return {int(r["t0"].timestamp() * 1000): r for r in t}


# ------------------------------------------------------------------------------ labels at the threshold
R = 2.0 ** -10     # exactly representable: 1025/1024 - 1 == R, 1023/1024 - 1 == -R


def test_labels_exact_at_just_above_and_just_below_threshold(tmp_path):
    h = 10
    market = {T + i * S: {} for i in range(-2, 30)}
    # candidates t0 = T..T+4 (close 1024); their label bars are t0 + 10 s
    market[T + 10 * S] = {"close": 1025.0}              # ret == r_t      -> NONE
    market[T + 11 * S] = {"close": 1025.0001}           # just above      -> UP
    market[T + 12 * S] = {"close": 1024.9999}           # just below      -> NONE
    market[T + 13 * S] = {"close": 1023.0}              # ret == -r_t     -> NONE
    market[T + 14 * S] = {"close": 1022.9999}           # just below -r_t -> DOWN
    db = make_db(tmp_path / "cqt.db", market, {T + i * S: {} for i in range(5)})
    res = export(db, tmp_path / "o.parquet", horizon_sec=h, from_ms=T, to_ms=T + 4 * S,
                 threshold=Threshold("fixed", value=R))
    rows = read_rows(tmp_path / "o.parquet")
    assert [rows[T + i * S]["label"] for i in range(5)] == ["NONE", "UP", "NONE", "NONE", "DOWN"]
    assert rows[T]["ret"] == R and rows[T + 3 * S]["ret"] == -R
    assert all(rows[T + i * S]["r_t"] == R for i in range(5))
    assert all(int(rows[T + i * S]["label_ts"].timestamp() * 1000) == T + (10 + i) * S for i in range(5))
    assert rows[T + 1 * S]["price_label"] == 1025.0001 and rows[T]["price_t0"] == 1024.0
    assert res.labels == {"UP": 1, "DOWN": 1, "NONE": 3}
    assert res.drops == {k: 0 for k in labelling.DROP_REASONS}


def test_drops_by_reason_add_up(tmp_path):
    h = 10
    market = {T + i * S: {} for i in range(-5, 61)}
    for i in range(20, 27):                     # a 7 s gap without trades (close carried forward)
        market[T + i * S] = {"has_trade": 0, "close_age_ms": (i - 19) * S}
    market[T + 14 * S] = {"binance_age_ms": 60_000}   # Binance stale at t0 = T+14
    del market[T + 15 * S]                            # no market_1s row at t0 = T+15
    market[T + 27 * S] = {"close": 1030.0}
    preds = {T + i * S: {} for i in (9, 10, 11, 12, 14, 15, 50, 51)}
    preds[T + 13 * S] = {"ret_1s": None}              # a NULL feature
    db = make_db(tmp_path / "cqt.db", market, preds)
    res = export(db, tmp_path / "o.parquet", horizon_sec=h, from_ms=T, to_ms=T + 60 * S)
    rows = read_rows(tmp_path / "o.parquet")
    assert sorted(rows) == [T + 9 * S, T + 12 * S, T + 50 * S]
    # t0 = T+12: target T+22, first trade T+27 == target + max delay: accepted
    assert int(rows[T + 12 * S]["label_ts"].timestamp() * 1000) == T + 27 * S
    assert rows[T + 12 * S]["price_label"] == 1030.0 and rows[T + 12 * S]["label"] == "UP"
    assert int(rows[T + 9 * S]["label_ts"].timestamp() * 1000) == T + 19 * S
    assert res.drops == {"stale_source": 1, "missing_features": 2, "label_pending": 1, "no_label": 2,
                         "label_ts_violation": 0}
    assert res.rows + sum(res.drops.values()) == res.candidates == 9
    assert res.drop_details["stale_by_source"] == {"binance_trade": 1}
    assert res.drop_details["missing_by_column"] == {"ret_1s": 1, "price_t0": 1}
    # the same with a shorter accepted delay: T+12 loses its label too
    res2 = export(db, tmp_path / "o2.parquet", horizon_sec=h, from_ms=T, to_ms=T + 60 * S, max_delay_s=4)
    assert res2.drops["no_label"] == 3 and res2.rows == 2
    # allowing the NULL feature keeps that row, with a null in the file
    res3 = export(db, tmp_path / "o3.parquet", horizon_sec=h, from_ms=T, to_ms=T + 60 * S, allow_missing=("ret_1s",))
    assert res3.rows == 4 and read_rows(tmp_path / "o3.parquet")[T + 13 * S]["ret_1s"] is None


def test_label_ts_violation_is_counted_not_hidden(monkeypatch):
    """The label lookup is verified after the fact: a lookup that returned a bar before t0 + horizon
    (a bug) shows up as label_ts_violation instead of a silently leaking row."""
    t0 = np.array([T, T + S], dtype=np.int64)
    market = np.array([[T + i * S, 1024.0 + i, 1, 0, 0, 0, 0, 0] for i in range(30)])
    feats = np.zeros((2, 1))
    ok = labelling.label_rows(t0, feats, ["f"], market, 10, 5, Threshold(), T + 29 * S, {}, ())
    assert ok.keep.tolist() == [True, True] and ok.label_ts.tolist() == [T + 10 * S, T + 11 * S]
    real = labelling.first_at_or_after
    monkeypatch.setattr(labelling, "first_at_or_after", lambda ts, target: real(ts, target) - 1)
    bad = labelling.label_rows(t0, feats, ["f"], market, 10, 5, Threshold(), T + 29 * S, {}, ())
    assert [labelling.DROP_REASONS[r] for r in bad.reason] == ["label_ts_violation"] * 2
    assert not bad.keep.any()


# ------------------------------------------------------------------------------ dynamic threshold
def _walk_market(n: int, seed: int = 3) -> dict[int, dict]:
    rng = np.random.default_rng(seed)
    price = 1e8 * np.exp(np.cumsum(rng.normal(0, 2e-4, n)))
    return {T + i * S: {"close": float(p)} for i, p in enumerate(price)}


def test_dynamic_threshold_uses_only_data_up_to_t0(tmp_path):
    n, h, w = 900, 60, 300
    market = _walk_market(n)
    t0 = T + 600 * S
    preds = {T + i * S: {} for i in range(590, 611)}
    thr = Threshold("dynamic", cost=0.0005, k=1.5, vol_window=w)
    db = make_db(tmp_path / "a.db", market, preds)
    export(db, tmp_path / "a.parquet", horizon_sec=h, from_ms=T + 590 * S, to_ms=T + 610 * S, threshold=thr)
    r_a = read_rows(tmp_path / "a.parquet")[t0]["r_t"]
    # the value by hand: std of the 300 one-second log returns in (t0 - 300 s, t0]
    closes = np.array([market[T + i * S]["close"] for i in range(600 - w, 601)])
    sigma = np.std(np.diff(np.log(closes)), ddof=1)
    assert r_a == pytest.approx(0.0005 + 1.5 * sigma * math.sqrt(h), rel=1e-9)
    # change every price after t0: r_t at t0 is unchanged (the labels may change)
    rng = np.random.default_rng(9)
    changed = {ts: {"close": m["close"] * (1 + rng.normal(0, 0.01))} if ts > t0 else m for ts, m in market.items()}
    db_b = make_db(tmp_path / "b.db", changed, preds)
    export(db_b, tmp_path / "b.parquet", horizon_sec=h, from_ms=T + 590 * S, to_ms=T + 610 * S, threshold=thr)
    rows_b = read_rows(tmp_path / "b.parquet")
    assert rows_b[t0]["r_t"] == r_a
    assert rows_b[t0]["price_label"] != read_rows(tmp_path / "a.parquet")[t0]["price_label"]
    # ...while a change inside the window does move it (the test can fail)
    inside = dict(market)
    inside[t0 - 10 * S] = {"close": market[t0 - 10 * S]["close"] * 1.01}
    db_c = make_db(tmp_path / "c.db", inside, preds)
    export(db_c, tmp_path / "c.parquet", horizon_sec=h, from_ms=T + 590 * S, to_ms=T + 610 * S, threshold=thr)
    assert read_rows(tmp_path / "c.parquet")[t0]["r_t"] != r_a


def test_dynamic_threshold_pure_function_is_causal():
    rng = np.random.default_rng(1)
    n = 1200
    ts = T + np.arange(n, dtype=np.int64) * S
    close = 1e8 * np.exp(np.cumsum(rng.normal(0, 2e-4, n)))
    t0s = ts[400:1000:37]
    base = labelling.dynamic_threshold(ts, close, t0s, 120, 0.001, 1.0, 300)
    assert np.isfinite(base).all()
    for j, t0 in enumerate(t0s):
        future = close.copy()
        future[ts > t0] *= np.exp(rng.normal(0, 0.05, (ts > t0).sum()))
        assert labelling.dynamic_threshold(ts, future, t0s, 120, 0.001, 1.0, 300)[j] == base[j]


def test_threshold_parse():
    assert Threshold.parse("fixed:0.002") == Threshold("fixed", value=0.002)
    assert Threshold.parse("fixed") == Threshold()
    d = Threshold.parse("dynamic:cost=0.002,k=0.5,vol_window=600")
    assert (d.policy, d.cost, d.k, d.vol_window) == ("dynamic", 0.002, 0.5, 600)
    assert Threshold.parse("dynamic:").spec == "dynamic:cost=0.001,k=1,vol_window=300"
    for bad in ("fixed:abc", "fixed:-1", "dynamic:cost=1,x=2", "dynamic:vol_window=1.5", "median:3", "fixed:nan"):
        with pytest.raises(ValueError):
            Threshold.parse(bad)


# ------------------------------------------------------------------------------ the file
def test_metadata_round_trip_and_types(tmp_path):
    db = make_db(tmp_path / "cqt.db", _walk_market(400), {T + i * S: {} for i in range(100, 200)})
    out = tmp_path / "d" / "x.parquet"
    res = export(db, out, horizon_sec=30, threshold=Threshold("dynamic", vol_window=60))
    meta = read_metadata(out)
    assert meta["horizon_sec"] == 30 and meta["threshold"]["policy"] == "dynamic"
    assert meta["threshold"]["vol_window_s"] == 60 and meta["threshold_spec"] == res.threshold.spec
    assert meta["time_range"]["from_ts_ms"] == res.from_ms and meta["time_range"]["to_ts_ms"] == T + 199 * S
    assert meta["drops"] == res.drops and meta["labels"] == res.labels and meta["rows"] == res.rows
    assert meta["source_db"] == str(db) and meta["code_version"]
    assert "purg" in meta["note"] and "embargo" in meta["note"] and "30 seconds" in meta["note"]
    schema = pq.read_schema(out)
    feats = _feature_names(sqlite3.connect(db))
    assert schema.names == ["t0", "symbol", *feats, "score", "price_t0", "label_ts", "price_label", "ret", "r_t",
                            "label"]
    assert set(meta["columns"]) == set(schema.names)
    assert str(schema.field("t0").type) == "timestamp[ms, tz=UTC]" == str(schema.field("label_ts").type)
    for c in ("ret", "r_t", "price_t0", "price_label", *feats):
        assert str(schema.field(c).type) == "double"
    assert str(schema.field("label").type) == "dictionary<values=string, indices=int8, ordered=0>"
    assert str(schema.field("symbol").type) == "dictionary<values=string, indices=int32, ordered=0>"
    assert meta["format"] == "cqt-dataset/2" and meta["symbols"] == ["BTC"]
    assert meta["per_symbol"]["BTC"]["labels"] == res.labels and meta["per_symbol"]["BTC"]["rows"] == res.rows
    md = pq.ParquetFile(out).metadata
    assert md.row_group(0).column(0).compression == "ZSTD"
    import pandas as pd
    df = pd.read_parquet(out)
    assert str(df["t0"].dtype) == "datetime64[ms, UTC]" and str(df["label"].dtype) == "category"
    assert str(df["symbol"].dtype) == "category" and set(df["symbol"]) == {"BTC"}
    assert len(df) == res.rows == md.num_rows


def test_zero_rows_is_refused_and_nothing_written(tmp_path):
    market = {T + i * S: {"binance_age_ms": 99_000} for i in range(200)}
    db = make_db(tmp_path / "cqt.db", market, {T + i * S: {} for i in range(50)})
    env = cqt_env(tmp_path, CQT_DB=str(db))
    out = tmp_path / "ds" / "btc.parquet"
    r = run_bin("cqt-export", "--output", out, "--horizon", "10", env=env)
    assert r.returncode == 1, r.stderr
    assert "0 rows" in r.stderr and "stale_source" in r.stderr and "binance_trade" in r.stderr
    assert not out.exists() and not list(out.parent.glob(".*tmp*"))
    assert query(db, "SELECT COUNT(*) FROM export_runs") == [(0,)]
    # an empty database says what to do
    empty = open_db(tmp_path / "empty.db")
    empty.close()
    r = run_bin("cqt-export", "--output", out, "--db", tmp_path / "empty.db", env=env)
    assert r.returncode == 1 and "is cqt-aggregate running?" in r.stderr
    r = run_bin("cqt-export", "--output", out, "--db", tmp_path / "empty.db", "--from", str(T), "--to", str(T + S),
                env=env)
    assert r.returncode == 1 and "no predictions in range" in r.stderr


def test_usage_and_missing_database(tmp_path):
    env = cqt_env(tmp_path)
    r = run_bin("cqt-export", "--output", tmp_path / "x.parquet", "--threshold", "median:2", env=env)
    assert r.returncode == 2 and "threshold" in r.stderr
    r = run_bin("cqt-export", "--output", tmp_path / "x.parquet", "--last", "yesterday", env=env)
    assert r.returncode == 2
    r = run_bin("cqt-export", "--output", tmp_path / "x.parquet", "--db", tmp_path / "nope.db", env=env)
    assert r.returncode == 3 and "not found" in r.stderr
    r = run_bin("cqt-export", "--output", tmp_path / "x.parquet", env={**env, "CQT_LABEL_MAX_DELAY_S": "soon"})
    assert r.returncode == 78 and "CQT_LABEL_MAX_DELAY_S" in r.stderr


@pytest.mark.timeout(60)
def test_kill_during_write_leaves_no_file(tmp_path):
    db = make_db(tmp_path / "cqt.db", _walk_market(400), {T + i * S: {} for i in range(100, 300)})
    out = tmp_path / "ds" / "btc.parquet"
    env = cqt_env(tmp_path, CQT_DB=str(db), CQT_EXPORT_TEST_STALL_S="30")
    p = start_bin("cqt-export", "--output", out, "--horizon", "10", env=env)
    try:
        tmp = wait_for(lambda: list(out.parent.glob(f".{out.name}.tmp-*")), timeout=30, what="temp file")
        assert tmp[0].stat().st_size > 0
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        stop_proc(p)
    assert not out.exists()
    # an old complete file survives a killed export byte for byte; the next export replaces it and
    # removes the dead process's temp file
    old = b"PAR1 not really, but the old file\n"
    out.write_bytes(old)
    p = start_bin("cqt-export", "--output", out, "--horizon", "10", env=env)
    try:
        tmp2 = wait_for(lambda: [t for t in out.parent.glob(f".{out.name}.tmp-*") if t != tmp[0]], timeout=30,
                        what="second temp")
        assert not tmp[0].exists()      # the dead first export's temp file was cleaned up
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
    finally:
        stop_proc(p)
    assert out.read_bytes() == old and tmp2[0].exists()
    env.pop("CQT_EXPORT_TEST_STALL_S")
    r = run_bin("cqt-export", "--output", out, "--horizon", "10", env=env)
    assert r.returncode == 0, r.stderr
    assert read_metadata(out)["rows"] > 0
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_failure_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    db = make_db(tmp_path / "cqt.db", _walk_market(400), {T + i * S: {} for i in range(100, 300)})
    out = tmp_path / "btc.parquet"
    out.write_bytes(b"old")

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(ExportError) as ei:
        export(db, out, horizon_sec=10)
    assert ei.value.code == 74 and "No space left" in str(ei.value)
    assert out.read_bytes() == b"old" and not list(tmp_path.glob(".btc*"))


# ------------------------------------------------------------------------------ range
def test_default_range_ends_at_newest_prediction_not_wall_clock(tmp_path):
    db = make_db(tmp_path / "cqt.db", _walk_market(600), {T + i * S: {} for i in range(0, 500)})
    newest = T + 499 * S
    with freeze_time("2031-01-01T00:00:00Z"):
        res = export(db, tmp_path / "a.parquet", horizon_sec=10)
        assert (res.from_ms, res.to_ms) == (newest - 86_400 * S + S, newest)
        res = export(db, tmp_path / "b.parquet", horizon_sec=10, last_ms=parse_duration_ms("1m"))
        assert (res.from_ms, res.to_ms) == (newest - 59 * S, newest) and res.candidates == 60
        res = export(db, tmp_path / "c.parquet", horizon_sec=10, to_ms=T + 99 * S, last_ms=60_000)
        assert (res.from_ms, res.to_ms) == (T + 40 * S, T + 99 * S)
        assert read_metadata(tmp_path / "c.parquet")["created"].startswith("2031-01-01T00:00:00")


def test_parse_duration():
    assert parse_duration_ms("1h") == 3_600_000
    assert parse_duration_ms("24h") == 86_400_000
    assert parse_duration_ms("90s") == 90_000
    with pytest.raises(ValueError):
        parse_duration_ms("0s")


# ------------------------------------------------------------------------------ end to end
@pytest.mark.timeout(90)
def test_end_to_end_one_hour_synthetic(tmp_path):
    """`bin/cqt synth` (the sim's market model through the collectors' parsers and the aggregate's
    rebuild) for one hour, then bin/cqt-export with the defaults."""
    db = tmp_path / "cqt.db"
    env = cqt_env(tmp_path, CQT_DB=str(db))
    r = run_bin("cqt", "synth", "--hours", "1", "--db", db, "--seed", "5", "--end", "2026-02-22T12:00:00Z",
                env=env, timeout=80)
    assert r.returncode == 0, r.stdout + r.stderr
    out = tmp_path / "datasets" / "btc_1h.parquet"
    r = run_bin("cqt-export", "--output", out, "--horizon", "120", "--last", "1h", env=env)
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 10_000
    assert "labels: UP=" in r.stdout and "label_ts_violation=0" in r.stdout and "annualized=" in r.stdout
    meta = read_metadata(out)
    labels, drops = meta["labels"], meta["drops"]
    assert sum(labels.values()) == meta["rows"] >= 2500
    assert meta["rows"] + sum(drops.values()) == meta["candidates"] == 3600
    assert labels["UP"] > 0.05 * meta["rows"] and labels["DOWN"] > 0.05 * meta["rows"], labels   # not all NONE
    assert drops["label_ts_violation"] == 0 and drops["label_pending"] == 120
    assert meta["time_range"]["to"] == "2026-02-22T12:00:00.000Z"
    (rec,) = query(db, "SELECT output, size_bytes, rows, horizon_sec, threshold, drops_json, labels_json, volatility, "
                       "to_ts_ms - from_ts_ms, symbols FROM export_runs")
    assert rec[:5] == (str(out), out.stat().st_size, meta["rows"], 120, "fixed:0.001")
    assert json.loads(rec[5]) == drops and json.loads(rec[6]) == labels
    assert 0.05 < rec[7] < 5.0 and rec[8] == 3_599_000 and rec[9] == "BTC"
    # --json: the same numbers as one object
    r = run_bin("cqt-export", "--output", out, "--last", "1h", "--json", "--no-record", env=env)
    s = json.loads(r.stdout)
    assert s["ok"] and s["rows"] == meta["rows"] and s["labels"] == labels and s["label_ts_violation"] == 0
    assert set(s["label_pct"]) == {"UP", "DOWN", "NONE"} and s["volatility"]["per_horizon"] > 0
    assert query(db, "SELECT COUNT(*) FROM export_runs") == [(1,)]


def test_generated_fixture_has_the_model_volatility(tmp_path):
    """The stand-in generator other tests use: 1 s log-return std ~2e-4, not all NONE at 0.001."""
    from bench.export_24h import build_synthetic_db

    db = build_synthetic_db(tmp_path / "cqt.db", hours=1.0)
    res = export(db, tmp_path / "x.parquet", last_ms=3_600_000)
    assert 1.5e-4 < res.volatility["sigma_1s"] < 3e-4
    assert min(res.labels.values()) > 0.1 * res.rows
