"""A database written by the single-symbol cqt (schema 4, BTC only) is migrated in place to the
per-symbol schema: every old row is kept unchanged, the derived rows become symbol BTC, the
bookkeeping rows gain their venue symbol, and the pipeline checks judge it as the old cqt did.

The fixture `tests/expected/cqt-v4-btc.db.gz` was written by the old cqt itself (how: its `.json`)."""
from __future__ import annotations

import gzip
import json
import shutil
import sqlite3

import pytest

from cqt import db as cdb
from helpers import ROOT, cqt_env, run_bin

FIXTURE = ROOT / "tests" / "expected" / "cqt-v4-btc.db.gz"
MADE = json.loads((ROOT / "tests" / "expected" / "cqt-v4-btc.json").read_text())
#: columns this migration adds, per table (everything else must be byte-for-byte the same)
ADDED = {"market_1s": {"symbol"}, "predictions": {"symbol"}, "aggregate_late": {"symbol"},
         "ingest_stats": {"symbol"}, "gaps": {"symbol"}, "resume_state": {"symbol"}, "rejects": {"symbol"},
         "export_runs": {"symbols"}}


def _old_db(tmp_path):
    path = tmp_path / "cqt.db"
    with gzip.open(FIXTURE, "rb") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return path


def _tables(conn):
    return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                       "AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def _columns(conn, table):
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _rows(conn, table, columns):
    cols = ", ".join(columns)
    return sorted(conn.execute(f"SELECT {cols} FROM {table}").fetchall(), key=repr)


def _snapshot(path):
    conn = sqlite3.connect(path)
    try:
        return {t: (_columns(conn, t), _rows(conn, t, _columns(conn, t))) for t in _tables(conn)}
    finally:
        conn.close()


@pytest.fixture
def migrated(tmp_path):
    path = _old_db(tmp_path)
    before = _snapshot(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 4
    r = run_bin("cqt", "db", "migrate", "--db", path, env=cqt_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"schema version 4 -> {cdb.latest_version()}" in r.stdout
    return path, before


def test_every_old_row_is_kept_unchanged(migrated):
    path, before = migrated
    conn = sqlite3.connect(path)
    assert sum(len(rows) for _, rows in before.values()) > 30_000     # the fixture is not empty
    for table, (old_cols, old_rows) in before.items():
        new_cols = _columns(conn, table)
        assert set(new_cols) - set(old_cols) == ADDED.get(table, set()), table
        assert _rows(conn, table, old_cols) == old_rows, table


def test_derived_rows_become_btc_and_bookkeeping_names_the_venue_symbol(migrated):
    path, before = migrated
    conn = sqlite3.connect(path)
    for table in ("market_1s", "predictions", "aggregate_late"):
        assert conn.execute(f"SELECT DISTINCT symbol FROM {table}").fetchall() == [("BTC",)], table
    assert len(before["market_1s"][1]) == conn.execute("SELECT COUNT(*) FROM market_1s").fetchone()[0] > 0
    assert dict(conn.execute("SELECT stream, symbol FROM gaps")) == {
        "BTCUSDT@aggTrade": "BTCUSDT", "KRW-BTC@orderbook": "KRW-BTC"}
    assert conn.execute("SELECT symbol FROM resume_state WHERE stream = 'BTCUSDT@aggTrade'").fetchone() == (
        "BTCUSDT",)
    assert conn.execute("SELECT DISTINCT symbol FROM ingest_stats").fetchall() == [("",)]
    assert conn.execute("SELECT symbol FROM rejects").fetchall() == [(None,)]
    # the new key: one row per (symbol, second)
    pk = [r[1] for r in conn.execute("PRAGMA table_info(market_1s)") if r[5]]
    assert pk == ["symbol", "ts_ms"]


def test_migrated_database_passes_the_pipeline_checks_as_before(migrated, tmp_path):
    path, _ = migrated
    env = cqt_env(tmp_path, **MADE["env"])
    r = run_bin(str(ROOT / "checks" / "run_pipeline_checks.sh"), "--db", str(path), "--window",
                str(MADE["window_s"]), "--as-of", MADE["as_of"], "--json", env=env, timeout=120)
    out = json.loads(r.stdout)
    old = MADE["pipeline"]
    assert r.returncode == old["exit_code"], r.stdout[-2000:] + r.stderr[-2000:]
    got = {c["check"]: (c["status"], c["exit_code"]) for c in out["checks"]}
    assert got == {name: (c["status"], c["exit_code"]) for name, c in old["checks"].items()}
    # judged under the names of the many-symbol scheme: BTC and its venue symbols; the old bare
    # Coinglass paths count for the one coin configured
    judged = {c["check"]: {m["name"]: m["status"] for m in c["metrics"]} for c in out["checks"]}
    assert judged["altdata_check"]["binance.BTCUSDT.aggTrade.lag_s"] == "PASS"
    assert judged["altdata_check"]["upbit.KRW-BTC.orderbook.frozen_s"] == "PASS"
    assert judged["feature_check"]["market_1s.BTC.coverage"] == "PASS"
    assert judged["feature_leak_check"]["leak.BTC.recompute.mismatches"] == "PASS"
    assert judged["coinglass_check"]["coinglass.BTC.open_interest.ok_calls"] == "PASS"
    assert out["assets"] == ["BTC"]
