"""cqt-collect-binance against a real cqt-sim subprocess: faults, zero loss, stop, leaks."""
from __future__ import annotations

import gzip
import json
import os
import re
import signal
import time

import psutil
import pytest

from helpers import query, run_bin, wait_for
from simproc import start_tls_sim as start_sim  # over TLS
from test_collect_support import (
    agg_ids,
    collector_env,
    collectors,  # noqa: F401 - a pytest fixture, requested by name
    count,
    no_traceback,
    quiesce,
    range_ids,
    read_log,
    sent_ranges,
    stop,
    wait_log,
    wait_rows,
)

AGG = "binance:btcusdt@aggTrade"
SECRET = "cg-live-key-7d1e5b93a04c"


def _connects(log, endpoint="market") -> int:
    """Connections made so far ('\\w+' for any endpoint)."""
    return len(re.findall(rf"stream: connected endpoint={endpoint} ", read_log(log)))


def _open_gaps(db) -> int:
    return count(db, "SELECT COUNT(*) FROM gaps WHERE status = 'open'")


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_faults_leave_stored_ids_equal_to_sent_ids(tmp_path, collectors):  # noqa: F811 - the fixture imported above
    """10 drops, a stall, an id gap, 1 000 malformed frames, refused connections,
    serverShutdown and a kill -9 + restart: stored agg ids == the sim's ids exactly."""
    db = tmp_path / "cqt.db"
    cap1, cap2 = tmp_path / "cap1.jsonl.gz", tmp_path / "cap2.jsonl"
    with start_sim(tmp_path, "--seed", "21", "--history", "600", "--binance-ping-interval", "1",
                   "--binance-pong-timeout", "4") as sim:
        env = collector_env(tmp_path, sim)
        p, log = collectors("cqt-collect-binance", env, "--capture", str(cap1))
        wait_rows(db, "binance_agg_trades", 20)
        wait_rows(db, "binance_mark_price", 2)

        for _ in range(10):                                    # 10 forced disconnects
            n = _connects(log)
            sim.fault("drop", source="binance")
            wait_for(lambda n=n: _connects(log) > n, 10, what="reconnect after drop")
        wait_rows(db, "binance_mark_price", count(db, "SELECT COUNT(*) FROM binance_mark_price") + 2)

        sim.fault("stall", seconds=4, source="binance")        # > CQT_STALL_MARKPRICE_S=2.5
        wait_log(log, r"stall endpoint=market stream=BTCUSDT@markPrice", timeout=15)
        wait_for(lambda: count(db, "SELECT COUNT(*) FROM gaps WHERE reason='stall' AND stream='BTCUSDT@aggTrade' "
                                   "AND status='filled'") >= 1, 20, what="stall window backfilled")
        top = count(db, "SELECT MAX(agg_id) FROM binance_agg_trades")
        wait_rows(db, "binance_agg_trades", 3, where=f"WHERE agg_id > {top}")

        sim.fault("gap", ids=50, stream="btcusdt@aggTrade")    # ids skipped on the WebSocket only
        wait_for(lambda: count(db, "SELECT COUNT(*) FROM gaps WHERE reason='id_jump' AND status='filled' "
                                   "AND filled_rows > 0") >= 1, 20, what="id gap backfilled")

        sim.fault("malformed", count=1000, source="binance", per_frame=50)
        wait_for(lambda: count(db, "SELECT SUM(count) FROM reject_counts WHERE source='binance_ws'") >= 1000,
                 40, what="1000 rejects")

        sim.fault("refuse", seconds=2, source="binance")
        n = _connects(log)
        sim.fault("drop", source="binance")
        wait_log(log, r"connect failed endpoint=market", timeout=10)
        wait_for(lambda: _connects(log) > n, 15, what="reconnect after refused connections")

        n = _connects(log)
        sim.fault("server_shutdown", source="binance")
        wait_log(log, r"server shutdown announced endpoint=market", timeout=10)
        wait_for(lambda n=n: _connects(log) > n, 10, what="reconnect after serverShutdown")

        assert p.poll() is None, "collector exited on its own:\n" + read_log(log)[-3000:]
        before = count(db, "SELECT MAX(agg_id) FROM binance_agg_trades")
        os.kill(p.pid, signal.SIGKILL)                           # kill -9 mid-stream
        p.wait(5)
        time.sleep(1.0)                                         # trades flow while it is down
        p2, log2 = collectors("cqt-collect-binance", env, "--capture", str(cap2))
        wait_for(lambda: count(db, "SELECT COUNT(*) FROM gaps WHERE reason='restart' AND status='filled'") >= 1,
                 20, what="restart gap backfilled")
        wait_rows(db, "binance_agg_trades", 1, where=f"WHERE agg_id > {before + 20}")
        wait_for(lambda: _open_gaps(db) == 0, 20, what="no open gaps")
        assert p2.poll() is None, "collector exited on its own:\n" + read_log(log2)[-3000:]
        # Stop the flow first: frames the sim wrote but the collector had not read when SIGTERM
        # came would be fetched by the next start's backfill, not by this process.
        sim.fault("stall", seconds=4, source="binance")
        time.sleep(0.3)
        top_sent = max(range_ids(sent_ranges(sim, AGG)))
        wait_for(lambda: count(db, "SELECT MAX(agg_id) FROM binance_agg_trades") >= top_sent, 10,
                 what="collector caught up with the sim before the stop")
        rc, took = stop(p2)
        assert rc == 0 and took < 5, (rc, took)

        sent = quiesce(sim, AGG)
        forced = sim.stats(ids=False)["streams"]
    stored = agg_ids(db)
    sent_ids = range_ids(sent)
    lo, hi = min(sent_ids), max(sent_ids)
    assert len(stored) == len(set(stored))                       # 0 duplicate (the key guarantees it too)
    missing = set(range(lo, hi + 1)) - set(stored)
    extra = set(stored) - set(range(lo, hi + 1))
    assert not missing, f"{len(missing)} missing ids, e.g. {sorted(missing)[:10]}"
    assert not extra, f"{len(extra)} ids outside what the sim produced, e.g. {sorted(extra)[:10]}"
    assert sent_ids <= set(stored)

    # every malformed frame is a counted reject
    assert count(db, "SELECT SUM(count) FROM reject_counts WHERE source='binance_ws'") == 1000
    assert count(db, "SELECT COUNT(*) FROM rejects WHERE source='binance_ws'") >= 7   # raw samples kept
    # gaps are data: the id gap of exactly 50 ids, reconnect windows, a stall, a restart
    rows = query(db, "SELECT reason, status, from_id, to_id, filled_rows FROM gaps WHERE stream='BTCUSDT@aggTrade'")
    assert any(r[0] == "id_jump" and r[2] is not None and r[3] - r[2] + 1 == 50 and r[4] == 50 for r in rows), rows
    reasons = {r[0] for r in query(db, "SELECT reason FROM gaps")}
    assert {"id_jump", "restart"} <= reasons, reasons
    assert "stall" in reasons or "stall" in {r[0] for r in rows}, reasons
    assert all(r[1] == "filled" for r in rows), rows
    assert count(db, "SELECT COUNT(*) FROM gaps WHERE stream='BTCUSDT@markPrice' AND status='unfillable'") >= 1
    # bookTicker thinned live: at most one row per CQT_BOOKTICKER_MIN_MS (100 ms) slot of event time
    assert count(db, "SELECT COUNT(*) FROM binance_book_ticker") > 10
    assert count(db, "SELECT COUNT(*) FROM (SELECT event_ts_ms / 100 AS slot FROM binance_book_ticker "
                     "GROUP BY symbol, slot HAVING COUNT(*) > 1)") == 0
    # resume position saved
    rid = query(db, "SELECT last_id FROM resume_state WHERE service='cqt-collect-binance' "
                    "AND stream='BTCUSDT@aggTrade'")[0][0]
    assert rid == max(stored)
    # heartbeats with counters
    hb = json.loads(query(db, "SELECT detail FROM heartbeats WHERE service='cqt-collect-binance' "
                              "ORDER BY ts_ms DESC LIMIT 1")[0][0])
    assert hb["totals"]["binance_ws"]["frames"] > 0 and "endpoints" in hb and "writer" in hb

    # every parser path was hit live (from the capture of the first run)
    kinds = set()
    from cqt.venues.binance.parse import Reject, parse_binance_frame
    with gzip.open(cap1, "rt") as fh:
        lines = []
        try:
            for line in fh:
                lines.append(line)
        except EOFError:
            pass                                             # the kill -9 cut the gzip stream
    for line in lines:
        rec = json.loads(line)
        if rec["source"] == "binance_ws":
            try:
                kinds.add(parse_binance_frame(rec["raw"], rec["recv_ts_ms"]).kind)
            except Reject:
                kinds.add("reject")
    assert {"aggTrade", "markPrice", "bookTicker", "reject"} <= kinds, kinds   # shutdown: seen in the log above
    if forced.get("binance:btcusdt@forceOrder", {}).get("frames"):
        assert count(db, "SELECT COUNT(*) FROM binance_liquidations") >= 1
    assert any(json.loads(x).get("path") == "/fapi/v1/aggTrades" for x in lines)
    text = read_log(log) + read_log(log2)
    no_traceback(text)
    assert "/ws/" not in text and "/stream?" not in text.replace("/market/stream?", "").replace("/public/stream?", "")


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_sigterm_with_data_flowing_loses_nothing(tmp_path, collectors):  # noqa: F811 - the fixture imported above
    db = tmp_path / "cqt.db"
    cap = tmp_path / "cap.jsonl"
    # server pings every 0.5 s, disconnect after 1.5 s without a pong: must never happen
    with start_sim(tmp_path, "--seed", "5", "--speed", "4", "--binance-ping-interval", "0.5",
                   "--binance-pong-timeout", "1.5") as sim:
        env = collector_env(tmp_path, sim, CQT_BOOKTICKER_MIN_MS="0", COINGLASS_API_KEY=SECRET,
                            COINGLASS_ENABLED="true")
        p, log = collectors("cqt-collect-binance", env, "--capture", str(cap))
        wait_rows(db, "binance_agg_trades", 200, timeout=30)
        assert p.poll() is None
        rc, took = stop(p)
    assert rc == 0, read_log(log)[-2000:]
    assert took < 5, took
    assert _connects(log, "market") == 1 and _connects(log, "public") == 1, read_log(log)[-2000:]
    received = {"aggTrade": set(), "markPrice": set(), "bookTicker": set()}
    from cqt.venues.binance.parse import Reject, parse_binance_frame
    for line in cap.read_text().splitlines():
        rec = json.loads(line)
        if rec["source"] != "binance_ws":
            continue
        try:
            pr = parse_binance_frame(rec["raw"], rec["recv_ts_ms"])
        except Reject:
            continue
        if pr.kind in received:
            key = pr.rows[0][1]                                 # agg_id / event_ts_ms / update_id
            received[pr.kind].add(key)
    stored = {
        "aggTrade": {r[0] for r in query(db, "SELECT agg_id FROM binance_agg_trades")},
        "markPrice": {r[0] for r in query(db, "SELECT event_ts_ms FROM binance_mark_price")},
        "bookTicker": {r[0] for r in query(db, "SELECT update_id FROM binance_book_ticker")},
    }
    for k in received:
        assert received[k], k
        assert received[k] <= stored[k], (k, len(received[k] - stored[k]))
    assert query(db, "SELECT exit_code FROM service_runs WHERE service='cqt-collect-binance'")[0][0] == 0

    # the Coinglass key never reaches this program's log, capture or database
    assert SECRET not in read_log(log) and SECRET not in cap.read_text()
    for table in ("events", "rejects", "heartbeats"):
        assert not query(db, f"SELECT 1 FROM {table} WHERE CAST({table} AS TEXT) LIKE ?".replace(
            f"CAST({table} AS TEXT)", {"events": "message", "rejects": "raw", "heartbeats": "detail"}[table]),
            (f"%{SECRET}%",))

    # the capture replays to the same rows (every bookTicker kept: CQT_BOOKTICKER_MIN_MS=0)
    out = tmp_path / "replay.db"
    r = run_bin("cqt", "replay", str(cap), "--db", str(out), env={**env, "CQT_DB": str(out)}, timeout=60)
    assert r.returncode == 0, r.stderr
    for table, cols in (("binance_agg_trades", "symbol, agg_id, trade_ts_ms, price, qty, side, first_trade_id, "
                                               "last_trade_id"),
                        ("binance_mark_price", "symbol, event_ts_ms, mark_price, index_price, funding_rate, "
                                               "next_funding_ts_ms, recv_ts_ms"),
                        ("binance_book_ticker", "symbol, update_id, event_ts_ms, bid_price, bid_qty, ask_price, "
                                                "ask_qty, recv_ts_ms"),
                        ("binance_liquidations", "*")):
        assert set(query(out, f"SELECT {cols} FROM {table}")) == set(query(db, f"SELECT {cols} FROM {table}")), table


def _fds_threads(pid: int) -> tuple[int, int]:
    pr = psutil.Process(pid)
    return pr.num_fds(), pr.num_threads()


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_fifty_reconnects_no_leak_and_reconnect_storm_backoff(tmp_path, collectors):  # noqa: F811 - the fixture imported above
    """50 reconnect cycles: fds and threads back to baseline. Then new connections are
    refused for 4 s: every backoff delay within [0, min(cap, base*2^(n-1))], attempts
    bounded, no exit, reconnected afterwards."""
    db = tmp_path / "cqt.db"
    base_s, cap_s = 0.05, 0.4
    with start_sim(tmp_path, "--seed", "9") as sim:
        env = collector_env(tmp_path, sim, CQT_BACKOFF_BASE_S=base_s, CQT_BACKOFF_CAP_S=cap_s)
        p, log = collectors("cqt-collect-binance", env)
        wait_rows(db, "binance_agg_trades", 5)
        # one cycle first so the REST pool connection and every lazy thread exist
        n = _connects(log, r"\w+")
        sim.fault("drop", source="binance")
        wait_for(lambda n=n: _connects(log, r"\w+") >= n + 2, 10, what="first reconnect")
        wait_for(lambda: _open_gaps(db) == 0, 10, what="backfill idle")
        time.sleep(0.5)
        fds0, thr0 = _fds_threads(p.pid)
        for _ in range(50):
            n = _connects(log, r"\w+")
            sim.fault("drop", source="binance")
            wait_for(lambda n=n: _connects(log, r"\w+") >= n + 2, 10, interval=0.05, what="both endpoints reconnected")
        wait_for(lambda: _open_gaps(db) == 0, 15, what="backfill idle")
        time.sleep(0.5)
        fds1, thr1 = _fds_threads(p.pid)
        assert thr1 == thr0, (thr0, thr1)
        assert fds1 <= fds0 + 1, (fds0, fds1)      # +1: a REST keep-alive socket may be mid-reopen

        # reconnect storm
        mark = len(read_log(log))
        sim.fault("refuse", seconds=4, source="binance")
        sim.fault("drop", source="binance")
        time.sleep(4.0)
        wait_for(lambda: "stream: connected endpoint=market" in read_log(log)[mark:], 15,
                 what="reconnected after the storm")
        assert p.poll() is None, read_log(log)[-2000:]
        rc, _ = stop(p)
        assert rc == 0
    storm = read_log(log)[mark:]
    delays = [(int(a), float(d), float(c), ep) for ep, a, d, c in
              re.findall(r"reconnect endpoint=(\w+) attempt=(\d+) delay_s=([\d.]+) ceiling_s=([\d.]+)", storm)]
    assert len(delays) >= 6, storm[-2000:]
    for attempt, delay, ceiling, _ep in delays:
        bound = min(cap_s, base_s * 2 ** (attempt - 1))
        assert abs(ceiling - bound) < 1e-3, (attempt, ceiling, bound)
        assert 0.0 <= delay <= bound + 1e-3, (attempt, delay, bound)
    per_ep = {}
    for _attempt, _d, _c, ep in delays:
        per_ep[ep] = per_ep.get(ep, 0) + 1
    for ep, k in per_ep.items():
        # 4 s refused with full jitter (mean cap/2 once capped): ~4/0.2 + ramp-up; 4x slack
        assert k <= 4 * 4.0 / (cap_s / 2) + 10, (ep, k)
    assert count(db, "SELECT COUNT(*) FROM service_runs WHERE service='cqt-collect-binance'") == 1


@pytest.mark.timeout(30)
@pytest.mark.parametrize("program,var,value", [("cqt-collect-binance", "CQT_STALL_MARKPRICE_S", "abc"),
                                               ("cqt-collect-upbit", "CQT_BACKOFF_CAP_S", "-1"),
                                               ("cqt-collect-upbit", "CQT_UPBIT_WS_URL", "http://x")])
def test_bad_setting_is_one_line_and_exit_78(tmp_path, program, var, value):
    from helpers import cqt_env
    r = run_bin(program, env=cqt_env(tmp_path, **{var: value}), timeout=20)
    assert r.returncode == 78, r.stderr
    assert var in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
