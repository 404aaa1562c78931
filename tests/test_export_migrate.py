"""Schema 6: export_runs gains `symbols` (the assets a file holds). A database of schema 5 is
migrated in place: every old export row is kept unchanged and is of BTC (the cqt that wrote it
exported BTC alone), so retention and the report read it as before."""
from __future__ import annotations

import sqlite3

from cqt import db as cdb
from cqt.nightly.retention import exported_coverage
from helpers import cqt_env, query, run_bin

EXPORT_COLUMNS = ("id, ts_ms, output, size_bytes, rows, horizon_sec, threshold, from_ts_ms, to_ts_ms, drops_json, "
                  "labels_json, volatility, summary_json")


def _schema5_db(path):
    """A database as the schema-5 cqt made it: migrations 1..5 only."""
    conn = sqlite3.connect(path, isolation_level=None)
    for version in range(1, 6):
        (sql,) = list(cdb.MIGRATIONS_DIR.glob(f"{version:04d}_*.sql"))
        conn.executescript(sql.read_text(encoding="utf-8"))
        conn.execute(f"PRAGMA user_version={version}")
    return conn


def test_schema5_exports_become_btc_and_are_kept(tmp_path):
    path = tmp_path / "cqt.db"
    conn = _schema5_db(path)
    assert "symbols" not in [r[1] for r in conn.execute("PRAGMA table_info(export_runs)")]
    for i in range(3):
        f = tmp_path / f"btc_{i}.parquet"
        f.write_bytes(b"x" * 10)
        conn.execute("INSERT INTO export_runs (ts_ms, output, size_bytes, rows, horizon_sec, threshold, from_ts_ms, "
                     "to_ts_ms, drops_json, labels_json, volatility, summary_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                     (1000 + i, str(f), 10, 5, 120, "fixed:0.001", i * 10_000, i * 10_000 + 5000, "{}",
                      '{"UP": 1, "DOWN": 2, "NONE": 2}', 0.5, "{}"))
    before = conn.execute(f"SELECT {EXPORT_COLUMNS} FROM export_runs ORDER BY id").fetchall()
    conn.close()
    # a read-only program refuses the old schema until it is migrated
    env = cqt_env(tmp_path, CQT_DB=str(path))
    r = run_bin("cqt-export", "--output", tmp_path / "x.parquet", env=env)
    assert r.returncode == 3 and "older than 6" in r.stderr
    r = run_bin("cqt", "db", "migrate", "--db", path, env=env)
    assert r.returncode == 0, r.stderr
    assert f"schema version 5 -> {cdb.latest_version()}" in r.stdout
    assert query(path, "PRAGMA user_version")[0][0] == cdb.latest_version() >= 6
    assert query(path, f"SELECT {EXPORT_COLUMNS} FROM export_runs ORDER BY id") == before
    assert query(path, "SELECT DISTINCT symbols FROM export_runs") == [("BTC",)]
    # retention reads them as BTC's exports
    conn = sqlite3.connect(path)
    try:
        assert exported_coverage(conn) == {"BTC": [(0, 5000), (10_000, 15_000), (20_000, 25_000)]}
    finally:
        conn.close()
