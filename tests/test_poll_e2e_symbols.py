"""Both pollers as real subprocesses against cqt-sim serving three assets: every symbol's
rows in every REST table, a coinglass_call_status row per call naming its coin, and — the
settings asking for more than 80 % of the limits for three symbols — one log line per
poller saying which intervals were stretched, the heartbeat carrying the plan."""
from __future__ import annotations

import json

import pytest

from helpers import cqt_env, query, start_bin, stop_proc, wait_for
from simproc import start_tls_sim as start_sim  # over TLS

KEY = "cgTESTkey-7a1c9e3b5d2f-not-a-real-one"
ASSETS = ("BTC", "ETH", "SOL")
BINANCE = {f"{a}USDT" for a in ASSETS}
#: table -> the symbols its `symbol` column must hold
TABLES = {
    "binance_open_interest": BINANCE, "binance_ratios": BINANCE, "binance_premium_index": BINANCE,
    "binance_funding_rate": BINANCE, "coinglass_open_interest": set(ASSETS), "coinglass_liquidations": set(ASSETS),
    "coinglass_funding": BINANCE, "coinglass_long_short": BINANCE,
}
SERVICES = ("cqt-poll-binance", "cqt-poll-coinglass")


def _symbols(db, table) -> set[str]:
    return {r[0] for r in query(db, f"SELECT DISTINCT symbol FROM {table}")}


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_both_pollers_store_every_symbol_and_stretch_once(tmp_path):
    db = tmp_path / "cqt.db"
    sim = start_sim(tmp_path, "--seed", "11", "--history", "1200", "--symbols", ",".join(ASSETS),
                    "--coinglass-key", KEY, "--coinglass-limit", "1000")
    # Ratios every 2 s: 600 /futures/data calls per 5 min per symbol, 1 800 for three, over
    # 80 % of 900 (720): stretched x 2.5 to 5 s. Coinglass every 2 s: 120 calls per minute
    # per coin, 360 for three, over 80 % of 300 (240): stretched x 1.5 to 3 s.
    env = cqt_env(tmp_path, **sim.env(), CQT_SYMBOLS=",".join(ASSETS), CQT_HEARTBEAT_S="1",
                  CQT_POLL_OI_S="1", CQT_POLL_RATIOS_S="2", CQT_POLL_PREMIUM_S="2", CQT_POLL_FUNDING_S="4",
                  CQT_POLL_COINGLASS_S="2", CQT_COINGLASS_INTERVAL="1m", CQT_COINGLASS_RATE_PER_MIN="300",
                  CQT_POLL_TIMEOUT_S="4", COINGLASS_ENABLED="true", COINGLASS_API_KEY=KEY, CQT_BACKFILL_S="600")
    logs = {s: tmp_path / f"{s}.log" for s in SERVICES}
    procs = {s: start_bin(s, env=env, log_path=logs[s]) for s in SERVICES}
    try:
        wait_for(lambda: all(db.exists() and _symbols(db, t) >= want for t, want in TABLES.items()), 45,
                 what="rows of every symbol in every REST table")
        wait_for(lambda: len(query(db, "SELECT DISTINCT endpoint FROM coinglass_call_status")) >= 12, 20,
                 what="call status rows of every endpoint and coin")
        wait_for(lambda: all(query(db, "SELECT COUNT(*) FROM heartbeats WHERE service = ?", (s,))[0][0] >= 2
                             for s in SERVICES), 10, what="heartbeats")
        for name, p in procs.items():
            assert p.poll() is None, f"{name} exited: {logs[name].read_text()[-2000:]}"
    finally:
        codes = {name: stop_proc(p) for name, p in procs.items()}
        sim.stop()
    assert codes == {s: 0 for s in SERVICES}, codes

    endpoints = {r[0] for r in query(db, "SELECT DISTINCT endpoint FROM coinglass_call_status")}
    assert {e.split("?coin=")[1] for e in endpoints} == set(ASSETS)
    assert all(e.split("?coin=")[0].startswith("/api/futures/") for e in endpoints)
    kinds = {r[0] for r in query(db, "SELECT DISTINCT kind FROM binance_ratios WHERE symbol = 'SOLUSDT'")}
    assert kinds == {"open_interest_hist", "global_long_short", "top_long_short_position", "taker_buy_sell"}

    blog, clog = (logs[s].read_text() for s in SERVICES)
    stretched = [line for line in blog.splitlines() if "intervals stretched" in line]
    assert len(stretched) == 1 and "oi_hist/global_ls/top_ls/taker 2 s -> 5 s" in stretched[0], blog
    stretched = [line for line in clog.splitlines() if "intervals stretched" in line]
    assert len(stretched) == 1 and "open_interest/funding/liquidations/long_short 2 s -> 3 s" in stretched[0], clog
    detail = json.loads(query(db, "SELECT detail FROM heartbeats WHERE service = 'cqt-poll-binance' "
                                  "ORDER BY ts_ms DESC LIMIT 1")[0][0])
    assert detail["plan"]["symbols"] == 3 and detail["plan"]["intervals_s"]["taker"] == 5.0
    assert {n.split("@")[0] for n in detail["jobs"]} == BINANCE
    # every symbol's ratio job ran about as often (spread, not one symbol starving the others)
    runs = {name: st["runs"] for name, st in detail["jobs"].items() if name.endswith("@taker")}
    assert len(runs) == 3 and max(runs.values()) - min(runs.values()) <= 2, runs
