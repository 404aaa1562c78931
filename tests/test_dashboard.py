"""cqt-dashboard: every panel through Streamlit's AppTest (values equal the database's, no
exception element), the /healthz decision in-process, and the real server as a subprocess:
200 on a healthy database, 503 naming a stale stream with its limit, 503 naming a missing
database, and unknown paths that do not look like a health answer."""
from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import urllib.error
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import fixtures_checks as fc
from cqt import bookkeeping
from cqt.checks import runner
from cqt.checks.thresholds import Thresholds
from cqt.dashboard import health, longfill, queries
from cqt.timeutil import fmt_ms, now_ms
from helpers import PY, ROOT, cqt_env, python_env, start_bin, stop_proc, wait_for

pytestmark = pytest.mark.timeout(240)

APPTEST_TIMEOUT_S = 60
ASSETS = ("BTC", "ETH")
PAGE = ROOT / "lib" / "cqt" / "dashboard" / "page.py"
PANELS = ("panel_checks", "panel_streams", "panel_services", "panel_ingest", "panel_prices", "panel_exports")


# ------------------------------------------------------------------------------ databases
def record_checks(path: Path, as_of_ms: int, results) -> None:
    code = max((r.exit_code for r in results), default=0)
    summary = runner.overall_summary(results, code, 600, as_of_ms)
    assert runner.record(path, results, code, summary, 600, as_of_ms, 5, ASSETS) is None


def break_stream(path: Path, symbol: str, after_ms: int) -> None:
    """No BTCUSDT aggTrade after `after_ms` (the collector stopped then)."""
    fc.execute(path, "DELETE FROM binance_agg_trades WHERE symbol = ? AND trade_ts_ms > ?", (symbol, after_ms))


@pytest.fixture(scope="module")
def page_db(tmp_path_factory) -> tuple[Path, int]:
    """Two assets, data ending 30 s ago, a stored failing altdata_check (BTCUSDT aggTrade stopped
    two minutes before the end), heartbeats, rejects, late rows and one export."""
    path = tmp_path_factory.mktemp("dash") / "cqt.db"
    end = now_ms() // 1000 * 1000 - 30_000
    fc.make_healthy_db(path, as_of_ms=end, assets=ASSETS)
    break_stream(path, "BTCUSDT", end - 120_000)
    env = fc.symbols_env(ASSETS)
    results = [fc.run("altdata_check", path, as_of_ms=end, **env)]
    assert results[0].exit_code == 1
    record_checks(path, end, results)
    conn = sqlite3.connect(path)
    with conn:
        conn.executemany("INSERT INTO heartbeats (service, ts_ms, state, detail) VALUES (?,?,?,?)",
                         [("cqt-collect-binance", end - 5000, "running", "{}"),
                          ("cqt-aggregate", end - 2000, "running", "{}")])
        conn.executemany("INSERT INTO reject_counts (source, reason, hour_ms, count, last_ts_ms) VALUES (?,?,?,?,?)",
                         [("binance_ws", "bad price", end // 3_600_000 * 3_600_000, 7, end - 1000),
                          ("upbit_ws", "unknown type", end // 3_600_000 * 3_600_000, 2, end - 2000)])
        conn.executemany("INSERT INTO gaps (source, stream, detected_ts_ms, from_ts_ms, to_ts_ms, filled_ts_ms, "
                         "filled_rows, status, reason, symbol) VALUES (?,?,?,?,?,?,?,?,?,?)",
                         [("binance_ws", "BTCUSDT@aggTrade", end - 100_000, end - 120_000, end - 110_000, None, None,
                           "open", "reconnect", "BTCUSDT"),
                          ("upbit_ws", "KRW-ETH@trade", end - 400_000, end - 410_000, end - 405_000, end - 390_000,
                           42, "filled", "sequence", "KRW-ETH")])
        conn.execute("INSERT INTO service_runs (service, pid, start_ts_ms, stop_ts_ms, exit_code, reason) "
                     "VALUES ('cqt-collect-upbit', 99, ?, ?, 1, 'watchdog: no progress for 60 s')",
                     (end - 900_000, end - 800_000))
        conn.execute("INSERT INTO aggregate_late (symbol, source, ts_ms, late_rows, corrected_rows, "
                     "first_detected_ts_ms, last_detected_ts_ms) VALUES ('BTC', 'upbit_trades', ?, 3, 1, ?, ?)",
                     (end - 60_000, end - 50_000, end - 50_000))
    conn.close()
    conn = sqlite3.connect(path, isolation_level=None)
    bookkeeping.insert_export_run(conn, ts_ms=end - 10_000, output=str(path.parent / "btc_1h.parquet"),
                                  size_bytes=12345, rows=3456, horizon_sec=120, threshold="fixed:10bps",
                                  from_ts_ms=end - 3_600_000, to_ts_ms=end, drops={"no_label": 120},
                                  labels={"UP": 1000, "DOWN": 1100, "NONE": 1356}, volatility=None, summary={},
                                  symbols=["BTC"])
    conn.close()
    return path, end


@pytest.fixture()
def page_env(page_db, monkeypatch):
    path, end = page_db
    monkeypatch.setenv("CQT_ENV_FILE", "/dev/null")
    monkeypatch.setenv("CQT_DB", str(path))
    monkeypatch.setenv("CQT_SYMBOLS", ",".join(ASSETS))
    return path, end


# ------------------------------------------------------------------------------ reading the page
class Rows(HTMLParser):
    """The <tr> rows of one table id: their data-* attributes and cell texts."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.inside, self.rows, self.cell = table_id, False, [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.inside = a.get("id") == self.table_id
        elif self.inside and tag == "tr" and "class" in a:
            self.rows.append({"data": {k[5:]: v for k, v in a.items() if k.startswith("data-")}, "cells": []})
        elif self.inside and tag == "td" and self.rows:
            self.cell = ""

    def handle_data(self, data):
        if self.cell is not None:
            self.cell += data

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None and self.rows:
            self.rows[-1]["cells"].append(self.cell)
            self.cell = None
        elif tag == "table":
            self.inside = False


def table_rows(at, table_id: str) -> list[dict]:
    for md in at.markdown:
        if f'id="{table_id}"' in md.value:
            parser = Rows(table_id)
            parser.feed(md.value)
            return parser.rows
    raise AssertionError(f"no table {table_id} in the page")


def run_app(script: Path | None = None, source: str | None = None):
    from streamlit.testing.v1 import AppTest

    at = (AppTest.from_file(str(script), default_timeout=APPTEST_TIMEOUT_S) if script else
          AppTest.from_string(source, default_timeout=APPTEST_TIMEOUT_S))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def run_panel(name: str):
    return run_app(source=f"from cqt.config import load_settings\nfrom cqt.dashboard import panels\n"
                          f"panels.{name}(load_settings())\n")


def db_one(path: Path, sql: str, params=()):
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql, params).fetchone()
    finally:
        conn.close()


# ------------------------------------------------------------------------------ the page and its panels
def test_the_page_shows_all_six_panels_without_an_exception(page_env):
    at = run_app(PAGE)
    headers = [h.value for h in at.subheader]
    assert headers == ["Checks and gate", "Streams", "Services", "Rejects and Coinglass", "Prices",
                       "Exports and database"]
    assert not at.error, [e.value for e in at.error]


@pytest.mark.parametrize("name", PANELS)
def test_each_panel_renders_on_its_own(page_env, name):
    at = run_panel(name)
    assert not at.error, [e.value for e in at.error]


def test_checks_panel_shows_the_stored_results_and_failing_metrics(page_env):
    path, end = page_env
    at = run_panel("panel_checks")
    rows = {r["data"]["check"]: r["data"] for r in table_rows(at, "cqt-checks")}
    assert list(rows) == list(queries.CHECK_NAMES)
    for name in ("run_pipeline_checks", "altdata_check"):
        ts, code = db_one(path, "SELECT ts_ms, exit_code FROM check_runs WHERE check_name = ? "
                                "ORDER BY ts_ms DESC, id DESC LIMIT 1", (name,))
        assert rows[name]["ts-ms"] == str(ts) and rows[name]["exit"] == str(code) and rows[name]["status"] == "FAIL"
    assert rows["feature_check"]["status"] == "NONE" and rows["feature_check"]["exit"] == ""
    stored = json.loads(db_one(path, "SELECT summary_json FROM check_runs WHERE check_name = 'altdata_check'")[0])
    failing = {r["data"]["metric"]: r["data"] for r in table_rows(at, "cqt-failing")}
    assert stored["failed"] and set(failing) == {m["name"] for m in stored["failed"]}
    lag = failing["binance.BTCUSDT.aggTrade.lag_s"]
    want = next(m for m in stored["failed"] if m["name"] == "binance.BTCUSDT.aggTrade.lag_s")
    assert float(lag["value"]) == want["value"] and float(lag["threshold"]) == want["threshold"] == 10.0


def test_streams_panel_ages_and_limits_equal_the_database(page_env):
    path, end = page_env
    at = run_panel("panel_streams")
    rows = {r["data"]["stream"]: r for r in table_rows(at, "cqt-streams")}
    settings = fc.settings_for(path, **fc.symbols_env(ASSETS))
    th = Thresholds(settings)
    refs = queries.stream_refs(settings)
    assert list(rows) == [ref.name for ref in refs]
    for ref in refs:
        s = ref.stream
        newest = db_one(path, f"SELECT MAX({s.time_col}) FROM {s.table} WHERE {s.filter_col} = ?", (ref.symbol,))[0]
        data = rows[ref.name]["data"]
        assert data["newest-ms"] == ("" if newest is None else str(newest)), ref.name
        assert float(data["limit-s"]) == th(ref.lag_env)
        assert float(data["age-s"]) >= 30 and (data["ok"] == "1") == (float(data["age-s"]) <= th(ref.lag_env))
    btc = rows["binance.BTCUSDT.aggTrade"]
    assert btc["data"]["ok"] == "0" and "STALE" in btc["cells"]
    assert float(btc["data"]["age-s"]) >= 150     # stopped two minutes before the data's end


def test_streams_panel_fill_is_the_check_s_fill(page_env):
    """The 10-minute fill shown is altdata_check's own metric (same window, same model)."""
    path, _ = page_env
    at = run_panel("panel_streams")
    row = next(r for r in table_rows(at, "cqt-streams") if r["data"]["stream"] == "binance.ETHUSDT.markPrice")
    settings = fc.settings_for(path, **fc.symbols_env(ASSETS))
    ref = next(r for r in queries.stream_refs(settings) if r.name == "binance.ETHUSDT.markPrice")
    with queries.reader(path) as r:
        want = queries.stream_metrics(r, settings, ref, now_ms(), 600)["fill"].value
    # the page rendered a moment earlier: the fill window may have moved by a second
    assert abs(float(row["cells"][7].rstrip("%")) - want * 100) <= 0.5


def test_streams_panel_shows_the_fills_computed_beside_it(page_env, monkeypatch):
    """The 1 h and 24 h fills come from the background computation: altdata_check's metric over
    those windows, shown with the time they were computed."""
    path, end = page_env
    settings = fc.settings_for(path, **fc.symbols_env(ASSETS))
    monkeypatch.setattr(longfill, "now_ms", lambda: end)
    fills = longfill.long_fills(settings)
    for window_s in (3600, 86400):
        fills.compute(window_s)
    refs = {r.name: r for r in queries.stream_refs(settings)}
    at = run_panel("panel_streams")
    rows = {r["data"]["stream"]: r["cells"] for r in table_rows(at, "cqt-streams")}
    with queries.reader(path) as r:
        for name in ("binance.BTCUSDT.bookTicker", "upbit.KRW-ETH.trade", "binance.ETHUSDT.markPrice"):
            want = [queries.stream_metrics(r, settings, refs[name], end, w)["fill"].value for w in (3600, 86400)]
            assert rows[name][8:10] == [f"{w:.1%}" for w in want], name
            assert 0 < want[1] < want[0] <= 1     # the fixture holds 20 minutes
    assert rows["binance.BTCUSDT.forceOrder"][7:10] == ["-", "-", "-"]       # sparse: lag only
    assert any("fill 24h computed at" in c.value for c in at.caption)


def test_services_panel_shows_newest_heartbeats(page_env):
    path, end = page_env
    at = run_panel("panel_services")
    rows = {r["data"]["service"]: r["data"] for r in table_rows(at, "cqt-services")}
    assert set(bookkeeping.COLLECTORS) <= set(rows)
    ts, state = db_one(path, "SELECT ts_ms, state FROM heartbeats WHERE service = 'cqt-collect-binance' "
                             "ORDER BY ts_ms DESC LIMIT 1")
    assert rows["cqt-collect-binance"] == {"service": "cqt-collect-binance", "heartbeat-ms": str(ts), "state": state}
    assert rows["cqt-collect-upbit"]["heartbeat-ms"] == ""
    upbit = next(r["cells"] for r in table_rows(at, "cqt-services") if r["data"]["service"] == "cqt-collect-upbit")
    starts = db_one(path, "SELECT COUNT(*) FROM service_runs WHERE service = 'cqt-collect-upbit' AND start_ts_ms > ?",
                    (now_ms() - 86_400_000,))[0]
    assert upbit[3:] == [str(starts), fmt_ms(end - 800_000), "1", "watchdog: no progress for 60 s"]
    assert starts == 2


def test_streams_panel_lists_open_and_recent_gaps(page_env):
    path, end = page_env
    at = run_panel("panel_streams")
    assert "**Gaps** (open, or detected in the last 24 h): 2" in [m.value for m in at.markdown]
    gaps = at.dataframe[0].value
    assert dict(zip(gaps["symbol"], gaps["status"])) == {"BTCUSDT": "open", "KRW-ETH": "filled"}
    assert list(gaps["detected"]) == [fmt_ms(end - 100_000), fmt_ms(end - 400_000)]   # by venue symbol
    assert list(gaps["filled rows"].fillna(-1)) == [-1, 42]


def test_ingest_panel_counts_rejects_late_rows_and_coinglass_calls(page_env):
    path, end = page_env
    at = run_panel("panel_ingest")
    texts = [m.value for m in at.markdown]
    assert "**Rejects (24 h)**: 9" in texts and "**Late rows (24 h)**: 3" in texts
    calls, errors = db_one(path, "SELECT COUNT(*), SUM(ok = 0) FROM coinglass_call_status WHERE ts_ms >= ?",
                           (now_ms() - 3_600_000,))
    assert calls > 0
    assert any(t.startswith(f"**Coinglass calls (1 h)**: {calls}, errors: {errors or 0}") for t in texts), texts
    rejects = at.dataframe[0].value
    assert dict(zip(rejects["reason"], rejects["count"])) == {"bad price": 7, "unknown type": 2}


def test_prices_panel_shows_the_newest_bar_of_the_selected_asset(page_env):
    path, end = page_env
    at = run_panel("panel_prices")
    for asset in ASSETS:
        if asset != ASSETS[0]:
            at.selectbox(key="asset").set_value(asset).run()
            assert not at.exception
        row = table_rows(at, "cqt-prices")[0]["data"]
        ts, close, last, fx, kp = db_one(path, "SELECT ts_ms, close, binance_last, usdt_krw, kimchi_premium FROM "
                                               "market_1s WHERE symbol = ? ORDER BY ts_ms DESC LIMIT 1", (asset,))
        assert row["asset"] == asset and row["ts-ms"] == str(ts)
        assert [float(row[k]) for k in ("upbit-krw", "binance-usdt", "usdt-krw", "kimchi-premium")] == [close, last,
                                                                                                           fx, kp]
        feats = at.dataframe[-1].value
        pred = db_one(path, "SELECT ret_1s, spread_bps FROM predictions WHERE symbol = ? ORDER BY ts_ms DESC LIMIT 1",
                      (asset,))
        shown = dict(zip(feats["feature"], feats["value"]))
        assert [float(shown["ret_1s"]), float(shown["spread_bps"])] == pytest.approx(list(pred), rel=1e-3)
        assert set(feats["status"].dropna()) <= {"PASS", "FAIL", "SKIP"}


def test_exports_panel_shows_the_newest_export_and_file_sizes(page_env):
    path, _ = page_env
    at = run_panel("panel_exports")
    df = at.dataframe[0].value
    assert list(df["rows"]) == [3456] and list(df["file"]) == [str(path.parent / "btc_1h.parquet")]
    assert df["labels"][0] == "DOWN 1100, NONE 1356, UP 1000" and df["drops"][0] == "no_label 120"
    assert at.metric[0].label == "database" and at.metric[0].value.endswith("iB")


def test_a_missing_database_is_an_error_box_not_an_exception(tmp_path, monkeypatch):
    monkeypatch.setenv("CQT_ENV_FILE", "/dev/null")
    monkeypatch.setenv("CQT_DB", str(tmp_path / "nope.db"))
    monkeypatch.delenv("CQT_SYMBOLS", raising=False)
    at = run_app(PAGE)
    errors = [e.value for e in at.error]
    assert errors and all(e == f"database missing: {tmp_path / 'nope.db'}" for e in errors)
    assert not (tmp_path / "nope.db").exists()    # read-only: nothing created


RAW_TABLES = ("upbit_trades", "upbit_orderbook", "upbit_ticker", "binance_agg_trades", "binance_mark_price",
              "binance_book_ticker", "binance_liquidations", "binance_open_interest", "binance_ratios",
              "binance_premium_index", "binance_funding_rate", "coinglass_call_status", "market_1s", "predictions",
              "heartbeats", "ingest_stats", "check_runs", "gaps")


def test_no_statement_scans_a_raw_table(page_env, monkeypatch):
    """Every statement the page, the background fills and /healthz run uses an index (no SCAN)."""
    path, end = page_env
    seen: list[str] = []
    connect = queries.db.connect

    def traced(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(seen.append)
        return conn
    monkeypatch.setattr(queries.db, "connect", traced)
    monkeypatch.setattr(longfill, "now_ms", lambda: end)
    settings = fc.settings_for(path, **fc.symbols_env(ASSETS))
    for window_s in (3600, 86400):
        longfill.long_fills(settings).compute(window_s)
    run_app(PAGE)
    health.decide(settings, end)
    statements = {q for q in seen if q.lstrip().upper().startswith(("SELECT", "WITH"))}
    assert len(statements) > 50
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    scans = {}
    for q in statements:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + q)]
        bad = [d for d in plan if any(re.match(rf"SCAN {t}\b", d) for t in RAW_TABLES)]
        if bad:
            scans[q] = bad
    conn.close()
    assert not scans, scans


def test_a_statement_past_its_deadline_is_stopped_and_the_panel_says_so(page_env, monkeypatch):
    path, _ = page_env
    endless = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) "
               "SELECT COUNT(*) FROM (SELECT x FROM c LIMIT 100000000)")
    with queries.reader(path, deadline_s=0.2) as r:
        with pytest.raises(sqlite3.OperationalError) as caught:
            r.scalar(endless)
        assert queries.interrupted(caught.value)
    monkeypatch.setattr(queries, "STATEMENT_DEADLINE_S", 0.0)
    monkeypatch.setattr(queries, "_PROGRESS_STEPS", 1)      # even an index lookup meets the deadline
    code, body = health.decide(fc.settings_for(path), now_ms())
    assert code == 503 and body["reasons"] == [f"database too slow: {path}: no answer within 0 s"]
    at = run_panel("panel_streams")
    assert [e.value for e in at.error] == ["this panel's queries ran past their 0 s deadline and were stopped "
                                           "(the next redraw tries again)"]


# ------------------------------------------------------------------------------ numpy values as parameters
def test_a_numpy_integer_binds_as_an_integer(page_db):
    """numpy.int64 is bound by sqlite3 as a BLOB unless adapted: `ts_ms > ?` then matches nothing."""
    path, end = page_db
    lo = np.int64(end - 600_000)
    with queries.reader(path) as r:
        assert r.scalar("SELECT typeof(?)", (np.int64(5),)) == "integer"
        assert r.scalar("SELECT typeof(?)", (np.float32(0.5),)) == "real"
        n_np = r.scalar("SELECT COUNT(*) FROM binance_agg_trades WHERE symbol = ? AND trade_ts_ms > ?", ("ETHUSDT", lo))
        n_int = r.scalar("SELECT COUNT(*) FROM binance_agg_trades WHERE symbol = ? AND trade_ts_ms > ?",
                         ("ETHUSDT", int(lo)))
        assert n_np == n_int > 0
        settings = fc.settings_for(path, **fc.symbols_env(ASSETS))
        ref = queries.stream_refs(settings)[0]
        assert queries.stream_age_s(r, ref, np.int64(end)) == queries.stream_age_s(r, ref, end)
        assert queries.rows_between(r, ref, np.int64(end - 600_000), np.int64(end)) == \
            queries.rows_between(r, ref, end - 600_000, end) > 0
    assert type(queries.sql_value(np.int64(7))) is int and type(queries.sql_value(np.float64(0.5))) is float


def test_without_the_adapters_the_trap_is_real(tmp_path):
    """The guard above is needed: plain sqlite3 binds numpy.int64 as a BLOB (nothing matches)."""
    code = ("import sqlite3, numpy as np; c = sqlite3.connect(':memory:'); "
            "print(c.execute('SELECT typeof(?), 5 > ?', (np.int64(5), np.int64(1))).fetchone())")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60, env=python_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "('blob', 0)"


# ------------------------------------------------------------------------------ /healthz, in-process
def fresh_db(path: Path, now: int, checks_exit: int = 0, assets=ASSETS) -> Path:
    """Data up to five minutes ahead of `now` (so it is fresh whenever it is read in the next
    minutes) and a run_pipeline_checks result stored at `now`."""
    fc.make_healthy_db(path, as_of_ms=now + 300_000, assets=assets)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("INSERT INTO check_runs (ts_ms, check_name, window_s, as_of_ts_ms, exit_code, summary_json) "
                     "VALUES (?, ?, 600, ?, ?, ?)", (now, bookkeeping.RUNNER, now, checks_exit,
                                                     json.dumps({"status": "PASS" if not checks_exit else "FAIL"})))
    conn.close()
    return path


def test_healthz_ok_on_a_healthy_database(tmp_path):
    now = now_ms()
    path = fresh_db(tmp_path / "cqt.db", now)
    code, body = health.decide(fc.settings_for(path, **fc.symbols_env(ASSETS)), now + 1000)
    assert (code, body["status"], body["reasons"]) == (200, "ok", [])
    assert set(body["streams"]) == {ref.name for ref in queries.stream_refs(fc.settings_for(
        path, **fc.symbols_env(ASSETS)))}
    assert body["checks"]["run_pipeline_checks"]["exit_code"] == 0 and body["db"]["readable"] is True


def test_healthz_names_a_stale_stream_with_its_limit(tmp_path):
    now = now_ms()
    path = fresh_db(tmp_path / "cqt.db", now)
    break_stream(path, "ETHUSDT", now - 42_000)
    code, body = health.decide(fc.settings_for(path, **fc.symbols_env(ASSETS)), now)
    assert code == 503 and body["status"] == "fail"
    assert body["reasons"] == ["binance aggTrade ETHUSDT: no data for 42 s (limit 10 s)"]
    assert body["streams"]["binance.ETHUSDT.aggTrade"] >= 42


def test_healthz_fails_on_an_old_or_failing_gate(tmp_path):
    now = now_ms()
    path = fresh_db(tmp_path / "cqt.db", now, checks_exit=1)
    settings = fc.settings_for(path, **fc.symbols_env(ASSETS), CQT_HEALTHZ_CHECK_MAX_AGE_S="60")
    code, body = health.decide(settings, now + 1000)
    assert code == 503 and len(body["reasons"]) == 1
    assert body["reasons"][0].startswith("run_pipeline_checks: exit 1 at ")
    code, body = health.decide(settings, now + 61_000)
    assert "run_pipeline_checks: newest result is 61 s old (limit 60 s, CQT_HEALTHZ_CHECK_MAX_AGE_S)" \
        in body["reasons"]
    fc.execute(path, "DELETE FROM check_runs")
    code, body = health.decide(settings, now)
    assert code == 503 and body["reasons"] == ["run_pipeline_checks: no result in check_runs"]


def test_healthz_judges_every_configured_symbol_only(tmp_path):
    now = now_ms()
    path = fresh_db(tmp_path / "cqt.db", now, assets=("BTC",))
    code, _ = health.decide(fc.settings_for(path), now)
    assert code == 200
    code, body = health.decide(fc.settings_for(path, **fc.symbols_env(ASSETS)), now)
    assert code == 503 and "binance aggTrade ETHUSDT: no data (limit 10 s)" in body["reasons"]


def test_healthz_names_a_missing_database(tmp_path):
    code, body = health.decide(fc.settings_for(tmp_path / "gone.db"), now_ms())
    assert code == 503 and body["reasons"] == [f"database missing: {tmp_path / 'gone.db'}"]
    assert body["db"]["readable"] is False and not (tmp_path / "gone.db").exists()


def test_healthz_and_the_page_on_a_file_that_is_no_database(tmp_path, monkeypatch):
    path = tmp_path / "cqt.db"
    path.write_bytes(b"not a database at all" * 100)
    code, body = health.decide(fc.settings_for(path), now_ms())
    assert code == 503 and len(body["reasons"]) == 1
    assert body["reasons"][0].startswith(f"database unreadable: {path}: ")
    monkeypatch.setenv("CQT_ENV_FILE", "/dev/null")
    monkeypatch.setenv("CQT_DB", str(path))
    at = run_app(PAGE)
    assert at.error and all(e.value.startswith(f"database unreadable: {path}") for e in at.error)


# ------------------------------------------------------------------------------ the real server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 10.0) -> tuple[int, str, str]:
    """(status, content type, body) of a GET; HTTP errors are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode("utf-8", "replace")


@pytest.fixture()
def server(tmp_path):
    """A real cqt-dashboard on a free port over tmp_path/cqt.db (created by the test)."""
    port = free_port()
    path = tmp_path / "cqt.db"
    env = cqt_env(tmp_path, CQT_SYMBOLS=",".join(ASSETS))
    procs = []

    def start():
        p = start_bin("cqt-dashboard", "--db", str(path), "--port", str(port), env=env,
                      log_path=tmp_path / "dashboard.log")
        procs.append(p)
        base = f"http://127.0.0.1:{port}"

        def up():
            if p.poll() is not None:
                raise AssertionError(f"cqt-dashboard exited {p.returncode}: "
                                     f"{(tmp_path / 'dashboard.log').read_text()[-2000:]}")
            try:
                return get(base + "/_stcore/health", timeout=2)[0] == 200
            except OSError:
                return False
        wait_for(up, 60, what="the dashboard's /_stcore/health")
        return base, path
    yield start
    for p in procs:
        assert stop_proc(p, timeout=15) == 0, (tmp_path / "dashboard.log").read_text()[-2000:]


def test_the_server_answers_healthz_truthfully(server):
    base, path = server()
    now = now_ms()
    fresh_db(path, now)
    status, ctype, body = get(base + "/healthz")
    assert status == 200 and ctype.startswith("application/json"), body
    answer = json.loads(body)
    assert answer["status"] == "ok" and answer["reasons"] == [] and set(answer) >= {"streams", "checks", "db"}

    break_stream(path, "BTCUSDT", now_ms() - 60_000)     # the collector stopped a minute ago
    status, _, body = get(base + "/healthz")
    answer = json.loads(body)
    assert status == 503 and answer["status"] == "fail"
    assert len(answer["reasons"]) == 1
    assert re.fullmatch(r"binance aggTrade BTCUSDT: no data for \d+ s \(limit 10 s\)", answer["reasons"][0])

    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    status, _, body = get(base + "/healthz")
    assert status == 503 and json.loads(body)["reasons"] == [f"database missing: {path}"]
    assert not path.exists()


def test_an_unknown_path_is_not_a_health_answer(server):
    base, path = server()
    fresh_db(path, now_ms())
    assert get(base + "/healthz")[0] == 200
    for suffix in ("/healthzz", "/nope", "/healthz/x"):
        status, ctype, body = get(base + suffix)
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        assert not (isinstance(answer, dict) and "status" in answer), (suffix, status, body[:200])
        assert "application/json" not in ctype


APPTEST_UNDER_FILTER = """
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
assert not at.exception, [e.value for e in at.exception]
print(len(at.subheader), len(at.markdown))
"""


def test_the_server_and_the_page_work_without_writable_executable_memory(page_db, tmp_path):
    """The unit sets MemoryDenyWriteExecute=yes: the server and the page script (pandas, pyarrow,
    the charts) run under the same seccomp rule."""
    from mdwe_exec import supported
    if not supported():
        pytest.skip("seccomp filter not supported here (x86-64 Linux only)")
    path, _ = page_db
    mdwe = str(ROOT / "tests" / "mdwe_exec.py")
    env = {**cqt_env(tmp_path, CQT_SYMBOLS=",".join(ASSETS), CQT_DB=str(path)), **{"PYTHONPATH": python_env()[
        "PYTHONPATH"]}}
    out = subprocess.run([PY, mdwe, PY, "-c", APPTEST_UNDER_FILTER, str(PAGE)], capture_output=True, text=True,
                         timeout=180, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2] == "6"
    port = free_port()
    p = subprocess.Popen([PY, mdwe, str(ROOT / "bin" / "cqt-dashboard"), "--port", str(port)], env=env,
                         stdout=subprocess.DEVNULL, stderr=open(tmp_path / "dash.log", "wb"), start_new_session=True)
    try:
        def answered():
            assert p.poll() is None, (tmp_path / "dash.log").read_text()[-2000:]
            try:
                return get(f"http://127.0.0.1:{port}/healthz", timeout=2)
            except OSError:
                return None
        status, ctype, body = wait_for(answered, 60, what="/healthz under the filter")
        assert status == 503 and json.loads(body)["status"] == "fail"      # the page database's data is old
    finally:
        assert stop_proc(p, timeout=15) == 0


def test_a_port_in_use_is_an_error_not_another_port(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = subprocess.run([str(ROOT / "bin" / "cqt-dashboard"), "--db", str(tmp_path / "x.db"), "--port", str(port)],
                           env=cqt_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and f"Port {port} is not available" in p.stdout + p.stderr


def test_the_program_refuses_a_bad_port_setting(tmp_path):
    p = subprocess.run([str(ROOT / "bin" / "cqt-dashboard"), "--db", str(tmp_path / "x.db")],
                       env=cqt_env(tmp_path, CQT_DASHBOARD_PORT="70000"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 78 and "CQT_DASHBOARD_PORT" in p.stderr


def test_help_names_the_options():
    p = subprocess.run([str(ROOT / "bin" / "cqt-dashboard"), "--help"], capture_output=True, text=True, timeout=60,
                       env=python_env())
    assert p.returncode == 0 and all(o in p.stdout for o in ("--db", "--port", "--address"))
