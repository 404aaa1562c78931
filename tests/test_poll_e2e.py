"""The pollers as real subprocesses against a real cqt-sim on 127.0.0.1.

One ~60 s run of cqt-poll-binance and cqt-poll-coinglass (with the WebSocket collectors
alongside), with faults injected while it runs: 429 storm (Retry-After honoured), 5xx
(back off, one log line, recovery), slow answers (timeouts recorded), Coinglass key
rejected (401 rows in coinglass_call_status), a 418 ban (loud, no request during it); no
process exits on its own, heartbeats stay fresh, the key appears nowhere. Plus: a plan that
refuses the interval, and misconfiguration, exit 78 with one line.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time

import pytest

from helpers import cqt_env, query, run_bin, start_bin, stop_proc, wait_for
from simproc import start_tls_sim as start_sim  # over TLS

KEY = "cgTESTkey-4f1d9a7c2e8b-not-a-real-one"

REST_TABLES = ("binance_open_interest", "binance_ratios", "binance_premium_index", "binance_funding_rate",
               "coinglass_open_interest", "coinglass_funding", "coinglass_liquidations", "coinglass_long_short")
WS_TABLES = ("upbit_trades", "upbit_orderbook", "binance_agg_trades", "binance_mark_price", "binance_book_ticker")
SERVICES = ("cqt-poll-binance", "cqt-poll-coinglass", "cqt-collect-upbit", "cqt-collect-binance")


def _count(db, table) -> int:
    return query(db, f"SELECT COUNT(*) FROM {table}")[0][0]


def _capture(path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass          # a line being written
    return out


# The HTTP timeout is far above what a busy machine adds to an answer from 127.0.0.1 (so the
# only timeouts are the injected ones, and each state change is logged exactly once), and the
# injected slow answers are far above the timeout (so they always time out).
TIMEOUT_S = 4
SLOW_S = 3 * TIMEOUT_S


def _poll_env(tmp_path, sim, **extra):
    env = dict(sim.env(), CQT_HEARTBEAT_S="1", CQT_POLL_OI_S="1", CQT_POLL_RATIOS_S="2",
               CQT_POLL_PREMIUM_S="2", CQT_POLL_FUNDING_S="4", CQT_POLL_COINGLASS_S="2",
               CQT_COINGLASS_INTERVAL="1m", CQT_COINGLASS_RATE_PER_MIN="300", CQT_POLL_TIMEOUT_S=str(TIMEOUT_S),
               COINGLASS_ENABLED="true", COINGLASS_API_KEY=KEY, CQT_BACKFILL_S="600")
    env.update(extra)
    return cqt_env(tmp_path, **env)


@pytest.mark.e2e
@pytest.mark.timeout(160)
def test_pollers_against_sim_survive_faults(tmp_path):
    db = tmp_path / "cqt.db"
    sim = start_sim(tmp_path, "--seed", "5", "--history", "1200", "--coinglass-key", KEY,
                    "--coinglass-limit", "1000")
    env = _poll_env(tmp_path, sim)
    logs = {s: tmp_path / f"{s}.log" for s in SERVICES}
    bcap, ccap = tmp_path / "binance_rest.jsonl", tmp_path / "coinglass.jsonl"
    procs = {
        "cqt-poll-binance": start_bin("cqt-poll-binance", "--capture", str(bcap), env=env,
                                      log_path=logs["cqt-poll-binance"]),
        "cqt-poll-coinglass": start_bin("cqt-poll-coinglass", "--capture", str(ccap), env=env,
                                        log_path=logs["cqt-poll-coinglass"]),
        "cqt-collect-upbit": start_bin("cqt-collect-upbit", env=env, log_path=logs["cqt-collect-upbit"]),
        "cqt-collect-binance": start_bin("cqt-collect-binance", env=env, log_path=logs["cqt-collect-binance"]),
    }
    t0 = time.monotonic()
    try:
        # -- normal operation: every table fills, every Coinglass call is recorded
        wait_for(lambda: all(_count(db, t) > 0 for t in REST_TABLES + WS_TABLES), 25, what="rows in every table")
        wait_for(lambda: _count(db, "coinglass_call_status") >= 8, 10, what="coinglass call status rows")

        # -- faults, while it runs
        sim.fault("http_error", path="/fapi/v1/openInterest", status=429, count=3, retry_after=2)
        sim.fault("http_error", path="/fapi/v1/premiumIndex", status=503, count=3)
        sim.fault("slow", path="/futures/data/takerlongshortRatio", seconds=SLOW_S, count=2)
        sim.fault("coinglass_auth", count=2)
        sim.fault("slow", path="/api/futures/funding-rate/history", seconds=SLOW_S, count=1)
        wait_for(lambda: query(db, "SELECT COUNT(*) FROM coinglass_call_status WHERE error = 'timeout'")[0][0] >= 1,
                 25, what="a Coinglass timeout recorded")
        wait_for(lambda: "job=BTCUSDT@premium recovered" in logs["cqt-poll-binance"].read_text(), 30,
                 what="premium job recovers after the 503s")
        wait_for(lambda: "job=BTCUSDT@taker recovered" in logs["cqt-poll-binance"].read_text(), 40,
                 what="taker job recovers after the timeouts")
        # the rest of the minute runs clean; then a 418 ban at the end
        while time.monotonic() - t0 < 52:
            time.sleep(0.5)
        sim.fault("http_error", path="/fapi/v1/openInterest", status=418, count=1, retry_after=60)
        wait_for(lambda: "failing: 418 banned" in logs["cqt-poll-binance"].read_text(), 8, what="the 418 answer")
        time.sleep(6)
        for name, p in procs.items():
            assert p.poll() is None, f"{name} exited on its own: {logs[name].read_text()[-2000:]}"
        now = int(time.time() * 1000)
        for s in SERVICES:
            last = query(db, "SELECT MAX(ts_ms) FROM heartbeats WHERE service = ?", (s,))[0][0]
            assert last is not None and now - last < 3500, f"{s} heartbeat is stale ({last}, now {now})"
        elapsed = time.monotonic() - t0
    finally:
        codes = {name: stop_proc(p) for name, p in procs.items()}
        sim.stop()
    assert codes["cqt-poll-binance"] == 0 and codes["cqt-poll-coinglass"] == 0, codes
    assert elapsed >= 58
    blog = logs["cqt-poll-binance"].read_text()
    clog = logs["cqt-poll-coinglass"].read_text()

    # 429 storm: after each 429 no Binance request until its Retry-After (2 s) has passed
    # (answers within 300 ms are requests that were already in flight)
    brecs = _capture(bcap)
    for r in brecs:
        if r["status"] == 429:
            t = r["recv_ts_ms"]
            early = [x for x in brecs if t + 300 < x["recv_ts_ms"] < t + 2000 - 50]
            assert early == [], (r, early)
    assert sum(r["status"] == 429 for r in brecs) == 3
    # 5xx and timeouts: logged once per state change, not per call
    assert blog.count("job=BTCUSDT@premium failing: http 503") == 1, blog
    assert blog.count("job=BTCUSDT@taker failing: timeout") == 1, blog
    assert "server error name=" not in blog          # the RestClient's per-call lines are folded
    # 418: loud, and nothing is sent while banned
    assert re.search(r"ERROR .*418", blog), blog
    t418 = next(r["recv_ts_ms"] for r in brecs if r["status"] == 418)
    assert [x for x in brecs if x["recv_ts_ms"] > t418 + 300] == []
    # Coinglass: every call recorded; key rejected and timeouts with short reasons
    cstat = query(db, "SELECT endpoint, http_status, ok, latency_ms, rows, error FROM coinglass_call_status")
    crecs = _capture(ccap)
    assert len(cstat) >= len(crecs) >= 20
    assert {r[0] for r in cstat} == {"/api/futures/open-interest/aggregated-history?coin=BTC",
                                     "/api/futures/funding-rate/history?coin=BTC",
                                     "/api/futures/liquidation/aggregated-history?coin=BTC",
                                     "/api/futures/global-long-short-account-ratio/history?coin=BTC"}
    rejected = [r for r in cstat if r[5] == "401 key rejected"]
    assert len(rejected) == 2 and all(r[1] == 401 and r[2] == 0 for r in rejected)
    timeouts = [r for r in cstat if r[5] == "timeout"]
    assert timeouts and all(r[1] is None and r[2] == 0 for r in timeouts)
    assert all(r[2] == 1 and r[1] == 200 and r[5] is None for r in cstat if r[5] is None)
    assert "401 key rejected" in clog and clog.count("failing: timeout") == 1
    # only closed bars: none stored before its interval closed
    for t in REST_TABLES[4:]:
        assert query(db, f"SELECT COUNT(*) FROM {t} WHERE avail_ts_ms > recv_ts_ms")[0][0] == 0
        assert query(db, f"SELECT COUNT(*) FROM {t} WHERE avail_ts_ms - open_ts_ms != 60000")[0][0] == 0
    # the key never appears: logs, captures, any table
    for path in list(logs.values()) + [bcap, ccap]:
        assert KEY not in path.read_text(errors="replace"), path
    conn = sqlite3.connect(db)
    try:
        dump = "\n".join(conn.iterdump())
    finally:
        conn.close()
    assert KEY not in dump
    assert KEY[:12] not in dump


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_plan_refusing_the_interval_stops_with_78_and_no_retry_loop(tmp_path):
    sim = start_sim(tmp_path, "--history", "600", "--coinglass-plan", "hobbyist")
    try:
        env = _poll_env(tmp_path, sim, CQT_COINGLASS_INTERVAL="1h")
        r = run_bin("cqt-poll-coinglass", env=env, timeout=30)
    finally:
        sim.stop()
    assert r.returncode == 78, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR poll: stopped polling")]
    assert len(errors) == 1 and "interval 1h" in errors[0] and "Hobbyist 4h" in errors[0], r.stderr
    rows = query(tmp_path / "cqt.db", "SELECT http_status, ok, error FROM coinglass_call_status")
    assert 1 <= len(rows) <= 2                       # the calls in flight, then nothing
    assert all(s == 401 and ok == 0 and e.startswith("interval not allowed by plan: ") for s, ok, e in rows)
    assert KEY not in r.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("prog, extra, needle", [
    ("cqt-poll-coinglass", {"COINGLASS_ENABLED": "false"}, "COINGLASS_ENABLED"),
    ("cqt-poll-coinglass", {"COINGLASS_ENABLED": "true", "COINGLASS_API_KEY": ""}, "COINGLASS_API_KEY: is missing"),
    ("cqt-poll-coinglass", {"COINGLASS_ENABLED": "true", "COINGLASS_API_KEY": "<YOUR_KEY>"}, "placeholder"),
    ("cqt-poll-coinglass", {"COINGLASS_ENABLED": "true", "COINGLASS_API_KEY": KEY, "CQT_COINGLASS_PLAN": "hobbyist"},
     "not allowed by the hobbyist plan"),
    ("cqt-poll-binance", {"CQT_POLL_OI_S": "soon"}, "CQT_POLL_OI_S"),
    ("cqt-poll-binance", {"CQT_POLL_RATIOS_S": "1"}, "CQT_POLL_RATIOS_S"),
])
def test_misconfiguration_is_one_line_and_exit_78(tmp_path, prog, extra, needle):
    r = run_bin(prog, env=cqt_env(tmp_path, **extra), timeout=30)
    assert r.returncode == 78
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], r.stderr
    assert KEY not in r.stderr
    assert not (tmp_path / "cqt.db").exists()        # nothing started
