"""cqt-nightly: step order, exit codes, a failing step does not stop the others, retention."""
from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from cqt.config import load_settings
from cqt.db import open_db
from cqt.nightly.job import summary_line
from cqt.nightly.retention import clip, incremental_vacuum, merge_spans, retention
from cqt.nightly.steps import Step, worst
from cqt.timeutil import now_ms
from helpers import ROOT, cqt_env, query, run_bin

DAY, HOUR = 86_400_000, 3_600_000


def _stub_checks(tmp_path: Path, code: int) -> str:
    """A stand-in for run_pipeline_checks: records one runner row like the real one, exits `code`."""
    script = tmp_path / "fake_checks.py"
    script.write_text(
        "import json, sqlite3, sys, time\n"
        "args = dict(zip(sys.argv[1::2], sys.argv[2::2]))\n"
        "c = sqlite3.connect(args['--db'])\n"
        "codes = {'altdata_check': %d, 'feature_check': 0, 'feature_leak_check': 0, 'coinglass_check': 0}\n"
        "c.execute('INSERT INTO check_runs (ts_ms, check_name, window_s, exit_code, summary_json) VALUES (?,?,?,?,?)',"
        " (int(time.time() * 1000), 'run_pipeline_checks', int(args['--window']), %d, json.dumps({'checks': codes})))\n"
        "c.commit()\n"
        "print('run_pipeline_checks: FAIL exit=%d (altdata_check FAIL)' if %d else 'run_pipeline_checks: PASS')\n"
        "sys.exit(%d)\n" % (code, code, code, code, code), encoding="utf-8")
    return f"{ROOT / '.venv' / 'bin' / 'python'} {script}"


def _synthetic(tmp_path: Path, seconds: int = 3900) -> tuple[Path, int]:
    """Raw rows through the aggregator's rebuild, ending a minute ago (younger than CQT_KEEP_DAYS)."""
    from test_export_symbols import derived_db

    end = now_ms() - now_ms() % 1000 - 60_000
    derived_db(tmp_path / "cqt.db", end - seconds * 1000, seconds)
    return tmp_path / "cqt.db", int(query(tmp_path / "cqt.db", "SELECT MAX(ts_ms) FROM predictions")[0][0])


@pytest.mark.timeout(60)
def test_failing_check_still_exports_and_reports_and_exits_1(tmp_path):
    db, end = _synthetic(tmp_path)
    env = cqt_env(tmp_path, CQT_DB=str(db), CQT_NIGHTLY_CHECKS_CMD=_stub_checks(tmp_path, 1),
                  CQT_REPORT_JOURNAL="events")
    r = run_bin("cqt-nightly", env=env, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    line = r.stdout.strip()
    assert line.startswith("nightly: exit=1 checks=1 export_1h.BTC=0 export_24h.BTC=0 report=0 retention=0"), line
    assert "failed=checks" in line and len(r.stdout.strip().splitlines()) == 1
    ds = tmp_path / "datasets"
    day = datetime.fromtimestamp(end / 1000, tz=timezone.utc).strftime("%Y%m%d")
    for name in ("btc_1h.parquet", "btc_24h.parquet", f"btc_{day}.parquet"):
        assert (ds / name).stat().st_size > 10_000, name
    assert (ds / "btc_24h.parquet").read_bytes() == (ds / f"btc_{day}.parquet").read_bytes()
    rows = query(db, "SELECT output, rows FROM export_runs ORDER BY id")
    assert [Path(o).name for o, _ in rows] == ["btc_1h.parquet", "btc_24h.parquet", f"btc_{day}.parquet"]
    rep = (tmp_path / "reports" / "step-alt-5.md").read_text(encoding="utf-8")
    assert "마지막 실행 EXIT_CODE=1" in rep and "- [x] `./data/datasets/btc_24h.parquet` 생성 성공" in rep
    assert (tmp_path / "reports" / "step-alt-5-price.png").stat().st_size > 0
    assert "step=checks exit_code=1" in r.stderr and "step=retention exit_code=0" in r.stderr
    # recent data is kept by retention (younger than CQT_KEEP_DAYS)
    assert query(db, "SELECT COUNT(*) FROM predictions")[0][0] == 3900 - 1


@pytest.mark.timeout(60)
def test_real_runner_and_a_failing_export(tmp_path):
    """With the real pipeline runner on a database without raw data (checks fail) and without
    predictions (both exports refuse): report and retention still run; exit = worst step."""
    db = open_db(tmp_path / "cqt.db")
    db.execute("INSERT INTO heartbeats (service, ts_ms, state) VALUES ('cqt-collect-upbit', ?, 'running')",
               (now_ms() - 1000,))
    db.close()
    env = cqt_env(tmp_path, CQT_REPORT_JOURNAL="events")
    r = run_bin("cqt-nightly", "--json", env=env, timeout=60)
    out = json.loads(r.stdout)
    steps = {s["name"]: s for s in out["steps"]}
    assert list(steps) == ["checks", "export_1h.BTC", "export_24h.BTC", "report", "retention"]
    assert steps["checks"]["exit_code"] != 0
    assert steps["export_1h.BTC"]["exit_code"] == 1
    assert "is cqt-aggregate running?" in steps["export_1h.BTC"]["detail"]
    assert steps["report"]["exit_code"] == 0 and steps["retention"]["exit_code"] == 0
    assert r.returncode == out["exit_code"] == worst(s["exit_code"] for s in out["steps"]) >= 1
    assert query(tmp_path / "cqt.db",
                 "SELECT COUNT(*) FROM check_runs WHERE check_name = 'run_pipeline_checks'")[0][0] >= 1
    assert (tmp_path / "reports" / "step-alt-5.md").exists()
    assert not list((tmp_path / "datasets").glob("*.parquet"))


def test_second_nightly_refuses_while_one_runs(tmp_path):
    ds = tmp_path / "datasets"
    ds.mkdir()
    with open(ds / ".cqt-nightly.lock", "w") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        r = run_bin("cqt-nightly", env=cqt_env(tmp_path), timeout=30)
    assert r.returncode == 1 and "another cqt-nightly is running" in r.stderr


def test_worst_code_and_summary():
    assert worst([0, 1, 0]) == 1
    assert worst([0, 3, 1]) == 3
    assert worst([0, 127]) == 1 and worst([-9]) == 1 and worst([]) == 0
    steps = [Step("checks", 1), Step("export_1h", 0, data={"rows": 5}), Step("report", 0)]
    line = summary_line(steps, 1.25)
    assert line == "nightly: exit=1 checks=1 export_1h=0 report=0 export_1h_rows=5 elapsed_s=1.2 failed=checks"


# ------------------------------------------------------------------------------ retention
NOW = 1_790_000_000_000


def test_retention_deletes_only_old_and_exported(tmp_path):
    keep = 14
    cutoff = NOW - keep * DAY
    covered = (cutoff - 3 * DAY, cutoff - DAY)          # an export whose file is still there
    gone = (cutoff - 6 * DAY, cutoff - 5 * DAY)          # exported, but the file was deleted
    resized = (cutoff - 8 * DAY, cutoff - 7 * DAY)       # exported, file replaced by another
    straddle = (cutoff - HOUR, cutoff + HOUR)            # exported, half of it still young
    ds = tmp_path / "datasets"
    ds.mkdir()
    conn = open_db(tmp_path / "cqt.db")
    conn.execute("BEGIN")
    for i, (lo, hi) in enumerate((covered, gone, resized, straddle)):
        f = ds / f"e{i}.parquet"
        f.write_bytes(b"x" * 100)
        conn.execute("INSERT INTO export_runs (ts_ms, output, size_bytes, rows, horizon_sec, threshold, from_ts_ms, "
                     "to_ts_ms, drops_json, labels_json) VALUES (?,?,?,?,?,?,?,?,?,?)",
                     (hi, str(f), 100 if i != 2 else 99, 10, 120, "fixed:0.001", lo, hi, "{}", "{}"))
    (ds / "e1.parquet").unlink()
    times = {"in_covered": covered[0] + HOUR, "covered_edge": covered[1], "in_gone": gone[0] + HOUR,
             "in_resized": resized[0] + HOUR, "straddle_old": cutoff - 60_000, "straddle_young": cutoff + 60_000,
             "recent": NOW - DAY}
    n = 0
    for t in times.values():
        for code in ("KRW-BTC", "KRW-USDT"):
            n += 1
            conn.execute("INSERT INTO upbit_trades VALUES (?,?,?,?,?,?,?)", (code, n, t, 1.0, 1.0, "buy", t))
        conn.execute("INSERT INTO binance_agg_trades VALUES ('BTCUSDT',?,?,1,1,'buy',?,?,NULL,?)", (n, t, n, n, t))
        conn.execute("INSERT INTO market_1s (symbol, ts_ms, close, volume, trade_count, buy_volume, sell_volume, "
                     "has_trade) VALUES ('BTC', ?, 1, 0, 0, 0, 0, 0)", (t - t % 1000,))
        conn.execute("INSERT INTO coinglass_open_interest VALUES ('BTC','1h',?,?,1,1,1,1,?)", (t - HOUR, t, t))
    for svc in ("cqt-collect-upbit", "cqt-poll-binance"):
        for t in range(cutoff - 2 * DAY, cutoff + DAY, HOUR):
            conn.execute("INSERT INTO heartbeats (service, ts_ms, state) VALUES (?, ?, 'running')", (svc, t))
    conn.execute("INSERT INTO events (ts_ms, last_ts_ms, hour_ms, service, level, message) VALUES (?,?,?,?,?,?)",
                 (cutoff - DAY, cutoff - DAY, cutoff - DAY, "x", "WARNING", "old"))
    conn.execute("INSERT INTO events (ts_ms, last_ts_ms, hour_ms, service, level, message) VALUES (?,?,?,?,?,?)",
                 (NOW, NOW, NOW, "x", "WARNING", "new"))
    conn.execute("COMMIT")
    conn.close()
    caps = tmp_path / "captures"
    caps.mkdir()

    def day_name(ms):
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")

    covered_day = covered[0] - covered[0] % DAY + DAY     # a whole UTC day inside `covered`
    for name in (f"binance.{day_name(covered_day)}.jsonl.gz", f"binance.{day_name(gone[0])}.jsonl.gz",
                 f"binance.{day_name(NOW - DAY)}.jsonl.gz", "binance.jsonl.gz", "notes.txt"):
        (caps / name).write_bytes(b"x")
    st = load_settings({"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(tmp_path / "cqt.db"), "CQT_KEEP_DAYS": str(keep),
                        "CQT_CAPTURE_DIR": str(caps)})
    step = retention(st, now=NOW)
    assert step.code == 0
    db = tmp_path / "cqt.db"
    left = {r[0] for r in query(db, "SELECT trade_ts_ms FROM upbit_trades")}
    expect_left = {times[k] for k in ("in_gone", "in_resized", "straddle_young", "recent")}
    assert left == expect_left
    assert query(db, "SELECT COUNT(*) FROM upbit_trades")[0][0] == 2 * len(expect_left)      # both codes
    assert {r[0] for r in query(db, "SELECT trade_ts_ms FROM binance_agg_trades")} == expect_left
    assert {r[0] for r in query(db, "SELECT avail_ts_ms FROM coinglass_open_interest")} == expect_left
    assert len(query(db, "SELECT ts_ms FROM market_1s")) == len(expect_left)
    assert step.data["deleted"]["upbit_trades"] == 6
    # bookkeeping by age: each service keeps its first heartbeat (the report's collection start)
    for svc in ("cqt-collect-upbit", "cqt-poll-binance"):
        ts = [r[0] for r in query(db, "SELECT ts_ms FROM heartbeats WHERE service = ? ORDER BY ts_ms", (svc,))]
        assert ts[0] == cutoff - 2 * DAY and all(t >= cutoff for t in ts[1:]) and len(ts) == 1 + 24
    assert [r[0] for r in query(db, "SELECT message FROM events")] == ["new"]
    assert sorted(p.name for p in caps.iterdir()) == sorted(
        [f"binance.{day_name(gone[0])}.jsonl.gz", f"binance.{day_name(NOW - DAY)}.jsonl.gz", "binance.jsonl.gz",
         "notes.txt"])
    assert "vacuum=" in step.detail and step.data["checkpoint"][0] == 0
    # a second run finds nothing more to delete
    assert sum(retention(st, now=NOW).data["deleted"].values()) == 0


def test_merge_and_clip():
    assert merge_spans([(0, 10_000), (11_000, 20_000), (40_000, 50_000)]) == [(0, 20_000), (40_000, 50_000)]
    assert clip([(0, 100), (200, 300)], 250) == [(0, 100), (200, 249)]


def test_incremental_vacuum_when_enabled(tmp_path):
    conn = sqlite3.connect(tmp_path / "v.db", isolation_level=None)
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?)", [(os.urandom(4000),) for _ in range(500)])
    conn.execute("COMMIT")
    conn.execute("DELETE FROM t")
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] > 100
    msg = incremental_vacuum(conn)
    assert msg.startswith("vacuum=incremental(freed_pages=")
    assert conn.execute("PRAGMA freelist_count").fetchone()[0] == 0
