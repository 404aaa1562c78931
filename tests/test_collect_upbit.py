"""cqt-collect-upbit against a real cqt-sim subprocess: faults, rollover, zero loss, replay."""
from __future__ import annotations

import json
import os
import re
import signal
import time

import pytest

from helpers import query, run_bin, wait_for
from simproc import start_tls_sim as start_sim  # over TLS
from test_collect_support import (
    collector_env,
    collectors,  # noqa: F401 - a pytest fixture, requested by name
    count,
    no_traceback,
    quiesce,
    range_ids,
    read_log,
    sent_ranges,
    stop,
    upbit_rest_trades,
    wait_log,
    wait_rows,
)


def _connects(log) -> int:
    return len(re.findall(r"stream: connected endpoint=upbit ", read_log(log)))


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_faults_rollover_kill_restart_and_replay(tmp_path, collectors):  # noqa: F811 - the fixture imported above
    """Drops, a stall (PING/UP while silent), 1 000 malformed frames, refused connections,
    planned rollovers and a kill -9 + restart: every trade the sim has in the collected
    window is stored exactly once; the capture replays to the same rows."""
    db = tmp_path / "cqt.db"
    cap1, cap2 = tmp_path / "cap1.jsonl", tmp_path / "cap2.jsonl"
    with start_sim(tmp_path, "--seed", "33", "--history", "600", "--speed", "2") as sim:
        env = collector_env(tmp_path, sim, CQT_WS_MAX_AGE_S="5", CQT_UPBIT_PING_S="1",
                            CQT_STALL_UPBIT_ORDERBOOK_S="2.5")
        p, log = collectors("cqt-collect-upbit", env, "--capture", str(cap1))
        wait_rows(db, "upbit_trades", 10)
        wait_rows(db, "upbit_orderbook", 5)
        for _ in range(10):
            n = _connects(log)
            sim.fault("drop", source="upbit")
            wait_for(lambda n=n: _connects(log) > n, 10, what="reconnect after drop")
        sim.fault("stall", seconds=4, source="upbit")
        wait_log(log, r"stall endpoint=upbit stream=KRW-\w+@orderbook", timeout=15)
        sim.fault("malformed", count=1000, source="upbit", per_frame=100)
        wait_for(lambda: count(db, "SELECT SUM(count) FROM reject_counts WHERE source='upbit'") >= 1000, 40,
                 what="1000 rejects")
        sim.fault("refuse", seconds=2, source="upbit")
        n = _connects(log)
        sim.fault("drop", source="upbit")
        wait_log(log, r"connect failed endpoint=upbit", timeout=10)
        wait_for(lambda: _connects(log) > n, 15, what="reconnect after refused connections")
        wait_log(log, r"rollover done endpoint=upbit new_connection_delivered=True", timeout=15)
        assert p.poll() is None, "collector exited on its own:\n" + read_log(log)[-3000:]
        os.kill(p.pid, signal.SIGKILL)
        p.wait(5)
        time.sleep(1.0)
        p2, log2 = collectors("cqt-collect-upbit", env, "--capture", str(cap2))
        wait_for(lambda: count(db, "SELECT COUNT(*) FROM gaps WHERE source='upbit' AND reason='restart' "
                                   "AND stream LIKE '%@trade' AND status='filled'") >= 1, 25, what="restart backfill")
        wait_for(lambda: count(db, "SELECT COUNT(*) FROM gaps WHERE status='open'") == 0, 20, what="no open gaps")
        assert p2.poll() is None, read_log(log2)[-3000:]
        # Stop the flow first: trades the sim wrote but the collector had not read when SIGTERM
        # came would be fetched by the next start's backfill, not by this process.
        sim.fault("stall", seconds=4, source="upbit")
        time.sleep(0.3)

        def caught_up() -> bool:
            have = {r[0] for r in query(db, "SELECT sequential_id FROM upbit_trades")}
            return all(range_ids(sent_ranges(sim, f"upbit:{c}@trade")) <= have for c in ("KRW-BTC", "KRW-USDT"))
        wait_for(caught_up, 10, what="collector caught up with the sim before the stop")
        rc, took = stop(p2)
        assert rc == 0 and took < 5, (rc, took)
        sent = {code: range_ids(quiesce(sim, f"upbit:{code}@trade")) for code in ("KRW-BTC", "KRW-USDT")}
        rest = {code: upbit_rest_trades(sim, code) for code in ("KRW-BTC", "KRW-USDT")}

    text = read_log(log) + read_log(log2)
    no_traceback(text)
    assert "Origin" not in text
    for code in ("KRW-BTC", "KRW-USDT"):
        stored = dict(query(db, "SELECT sequential_id, trade_ts_ms FROM upbit_trades WHERE code = ?", (code,)))
        assert sent[code], code
        assert sent[code] <= set(stored), (code, len(sent[code] - set(stored)))
        assert set(stored) <= set(rest[code]), "stored a trade the exchange does not have"
        lo = min(rest[code][s] for s in sent[code])
        hi = max(rest[code][s] for s in sent[code])
        window = {s for s, t in rest[code].items() if lo <= t <= hi}
        in_window = {s for s, t in stored.items() if lo <= t <= hi}
        assert window == in_window, (code, len(window - in_window), len(in_window - window))
    assert count(db, "SELECT SUM(count) FROM reject_counts WHERE source='upbit'") == 1000
    gaps = query(db, "SELECT stream, reason, status FROM gaps WHERE source='upbit'")
    assert {"reconnect", "stall", "restart", "rollover"} & {g[1] for g in gaps} >= {"reconnect", "restart"}, gaps
    assert all(g[2] in ("filled", "unfillable") for g in gaps), gaps
    assert all(g[2] == "filled" for g in gaps if g[0].endswith("@trade")), gaps

    # every Upbit parser path live: trade, orderbook, ticker, PING -> {"status":"UP"}, rejects
    from cqt.venues.upbit.parse import Reject, parse_upbit_frame
    kinds = set()
    for line in cap1.read_text().splitlines() + cap2.read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue                                   # the kill -9 may cut the last line
        if rec["source"] == "upbit":
            try:
                kinds.add(parse_upbit_frame(rec["raw"], rec["recv_ts_ms"]).kind)
            except Reject:
                kinds.add("reject")
    assert {"trade", "orderbook", "ticker", "pong", "reject"} <= kinds, kinds

    # the capture of the second run replays to exactly the rows that run stored
    out = tmp_path / "replay.db"
    r = run_bin("cqt", "replay", str(cap2), "--db", str(out), "--json",
                env={**collector_env(tmp_path, sim), "CQT_DB": str(out)}, timeout=60)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["rows"] > 0 and summary["records"] > 0
    t0 = query(db, "SELECT MIN(start_ts_ms) FROM service_runs WHERE service='cqt-collect-upbit' AND pid=?",
               (p2.pid,))[0][0]
    for table, cols in (("upbit_trades", "code, sequential_id, trade_ts_ms, price, volume, side"),
                        ("upbit_orderbook", "code, ts_ms, best_bid, best_ask, best_bid_size, best_ask_size, "
                                            "total_bid_size, total_ask_size, levels"),
                        ("upbit_ticker", "code, ts_ms, trade_ts_ms, trade_price, prev_closing_price")):
        replayed = set(query(out, f"SELECT {cols} FROM {table}"))
        live_all = set(query(db, f"SELECT {cols} FROM {table}"))
        live_run2 = set(query(db, f"SELECT {cols} FROM {table} WHERE recv_ts_ms >= ?", (t0,)))
        # run 2 stored what was new to the database; the replay into an empty one stores
        # those rows and the ones run 1 had already stored, and nothing else
        assert live_run2 and live_run2 <= replayed, (table, len(live_run2 - replayed))
        assert replayed <= live_all, (table, len(replayed - live_all))
