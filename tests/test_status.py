"""`cqt status`: missing database, empty database, and a populated one."""
import json

from cqt import db as cdb
from cqt.timeutil import now_ms
from helpers import cqt_env, run_bin


def test_missing_database(tmp_path):
    r = run_bin("cqt", "status", env=cqt_env(tmp_path))
    assert r.returncode == 3
    assert "no database" in r.stdout and "Traceback" not in r.stderr


def test_empty_database(tmp_path):
    (tmp_path / "cqt.db").touch()
    r = run_bin("cqt", "status", env=cqt_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "no schema yet" in r.stdout


def test_populated(tmp_path):
    path = tmp_path / "cqt.db"
    conn = cdb.open_db(path)
    now = now_ms()
    conn.execute("INSERT INTO heartbeats VALUES ('cqt-collect-binance', ?, 'running', ?)",
                 (now - 5000, json.dumps({"status": "streaming 212 msg/s", "writer": {"queue_depth": 3}})))
    conn.execute("INSERT INTO heartbeats VALUES ('cqt-collect-upbit', ?, 'reconnecting', '{}')", (now - 300_000,))
    conn.executemany("INSERT INTO binance_agg_trades VALUES ('BTCUSDT', ?, ?, 1, 1, 'buy', 0, 0, NULL, ?)",
                     [(i, now - 1000 * i, now) for i in range(100)])
    conn.execute("INSERT INTO check_runs (ts_ms, check_name, window_s, exit_code, summary_json) "
                 "VALUES (?, 'run_pipeline_checks', 600, 1, '{}')", (now - 60_000,))
    conn.execute("INSERT INTO events VALUES (?, ?, ?, 'cqt-collect-upbit', 'ERROR', 'connection refused', 7)",
                 (now - 9000, now - 8000, now - now % 3600000))
    conn.close()
    r = run_bin("cqt", "status", env=cqt_env(tmp_path))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "cqt-collect-binance" in out and "streaming 212 msg/s" in out
    assert "STALE" in out                               # upbit's heartbeat is 5 min old
    assert "binance_agg_trades" in out and "100" in out
    assert "run_pipeline_checks" in out and "FAIL" in out
    assert "connection refused" in out and "x7" in out
    j = json.loads(run_bin("cqt", "status", "--json", env=cqt_env(tmp_path)).stdout)
    assert {s["service"] for s in j["services"]} == {"cqt-collect-binance", "cqt-collect-upbit"}
