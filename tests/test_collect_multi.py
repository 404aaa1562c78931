"""Both collectors with several symbols against a real cqt-sim subprocess: every symbol's
trades stored, every Binance symbol's aggTrade ids without a hole across a forced
disconnect (one connection per entry point, and streams split over several connections),
per-symbol bookkeeping rows, and the market-list check at start."""
from __future__ import annotations

import json
import re
import socket

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
    upbit_rest_trades,
    wait_rows,
)

ASSETS = ("BTC", "ETH", "SOL")
SYMBOLS = tuple(f"{a}USDT" for a in ASSETS)
CODES = tuple(f"KRW-{a}" for a in ASSETS) + ("KRW-USDT",)


def _connects(log, endpoint=r"[\w-]+") -> int:
    return len(re.findall(rf"stream: connected endpoint={endpoint} ", read_log(log)))


@pytest.mark.e2e
@pytest.mark.timeout(120)
@pytest.mark.parametrize("per_conn,endpoints", [(200, ["market", "public"]),
                                                (4, ["market-1", "market-2", "market-3", "public"])])
def test_binance_every_symbols_ids_complete_across_a_forced_disconnect(tmp_path, collectors,  # noqa: F811
                                                                       per_conn, endpoints):
    _binance_ids_across_a_drop(tmp_path, collectors, ASSETS, per_conn, endpoints,
                               sim_args=("--symbols", ",".join(ASSETS)))


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_binance_one_stream_per_connection_loses_no_id(tmp_path, collectors):  # noqa: F811
    """The smallest limit: each of BTCUSDT's four streams on its own connection."""
    _binance_ids_across_a_drop(tmp_path, collectors, ("BTC",), 1, ["market-1", "market-2", "market-3", "public"])


def _binance_ids_across_a_drop(tmp_path, collectors, assets, per_conn, endpoints, sim_args=()):  # noqa: F811
    symbols = tuple(f"{a}USDT" for a in assets)
    db = tmp_path / "cqt.db"
    with start_sim(tmp_path, "--seed", "41", "--history", "300", *sim_args) as sim:
        env = collector_env(tmp_path, sim, CQT_SYMBOLS=",".join(assets), CQT_BINANCE_STREAMS_PER_CONN=per_conn)
        p, log = collectors("cqt-collect-binance", env)
        for sym in symbols:
            wait_rows(db, "binance_agg_trades", 5, where=f"WHERE symbol='{sym}'", timeout=30)
            wait_rows(db, "binance_mark_price", 2, where=f"WHERE symbol='{sym}'", timeout=30)
        assert sorted(set(re.findall(r"stream: connected endpoint=([\w-]+) ", read_log(log)))) == sorted(endpoints)
        n = _connects(log)
        sim.fault("drop", source="binance")                      # every connection at once
        wait_for(lambda: _connects(log) >= n + len(endpoints), 20, what="every connection back")
        for sym in symbols:
            top = count(db, f"SELECT MAX(agg_id) FROM binance_agg_trades WHERE symbol='{sym}'")
            wait_rows(db, "binance_agg_trades", 3, where=f"WHERE symbol='{sym}' AND agg_id > {top}", timeout=20)
        wait_for(lambda: count(db, "SELECT COUNT(*) FROM gaps WHERE status='open'") == 0, 20, what="no open gaps")
        # stop the flow, let the collector catch up, then stop it
        sim.fault("stall", seconds=4, source="binance")
        keys = {sym: f"binance:{sym.lower()}@aggTrade" for sym in symbols}
        wait_for(lambda: all(count(db, f"SELECT MAX(agg_id) FROM binance_agg_trades WHERE symbol='{s}'")
                             >= max(range_ids(sent_ranges(sim, k))) for s, k in keys.items()), 15,
                 what="collector caught up with every symbol")
        assert p.poll() is None, read_log(log)[-3000:]
        rc, took = stop(p)
        assert rc == 0 and took < 5, (rc, took)
        sent = {sym: range_ids(quiesce(sim, key)) for sym, key in keys.items()}
        sim_log = sim.log()

    text = read_log(log)
    no_traceback(text)
    for sym in symbols:
        stored = agg_ids(db, sym)
        assert sent[sym], sym
        lo, hi = min(sent[sym]), max(sent[sym])
        assert len(stored) == len(set(stored))
        missing = set(range(lo, hi + 1)) - set(stored)
        assert not missing, (sym, len(missing), sorted(missing)[:10])
        assert set(stored) <= set(range(lo, hi + 1)), sym            # nothing the sim did not produce
    # streams split as configured (the server's view): every stream on exactly one open
    # connection at a time, none with more than per_conn, never a /public stream on /market
    opened = re.findall(r"ws open venue=binance conn=\d+ route=(\w+) combined=True streams=(\S+)", sim_log)
    first = opened[:len(endpoints)]
    assert sorted(r for r, _ in first) == sorted(e.split("-")[0] for e in endpoints), opened[:6]
    assert sorted(x for _, st in first for x in st.split(",")) == sorted(
        f"{sym.lower()}@{k}" for sym in symbols for k in ("aggTrade", "markPrice@1s", "forceOrder", "bookTicker"))
    for route, streams in opened:
        names = streams.split(",")
        assert len(names) <= per_conn and all(("@bookTicker" in x) == (route == "public") for x in names), names
    # bookkeeping carries the symbol
    resume = dict(query(db, "SELECT stream, symbol FROM resume_state WHERE service='cqt-collect-binance'"))
    for sym in symbols:
        assert resume[f"{sym}@aggTrade"] == sym and resume[f"{sym}@markPrice"] == sym
    assert query(db, "SELECT COUNT(*) FROM gaps WHERE symbol IS NULL OR symbol != substr(stream, 1, "
                     "instr(stream, '@') - 1)")[0][0] == 0
    gap_syms = {s for (s,) in query(db, "SELECT DISTINCT symbol FROM gaps WHERE stream LIKE '%@aggTrade' "
                                        "AND reason = 'reconnect'")}
    assert gap_syms <= set(symbols)
    rows = dict(((src, sym), n) for src, sym, n in query(
        db, "SELECT source, symbol, SUM(rows) FROM ingest_stats WHERE service='cqt-collect-binance' "
            "GROUP BY source, symbol"))
    for sym in symbols:
        assert rows.get(("binance_ws", sym), 0) > 0, rows
    total = count(db, "SELECT COUNT(*) FROM binance_agg_trades") + count(db, "SELECT COUNT(*) FROM binance_mark_price")
    assert sum(n for (src, _), n in rows.items() if src in ("binance_ws", "binance_rest")) >= total
    hb = json.loads(query(db, "SELECT detail FROM heartbeats WHERE service='cqt-collect-binance' "
                              "ORDER BY ts_ms DESC LIMIT 1")[0][0])
    assert hb["symbols"] and set(symbols) <= set(hb["symbols"])
    assert sorted(hb["endpoints"]) == sorted(endpoints)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_upbit_every_codes_trades_stored_across_a_forced_disconnect(tmp_path, collectors):  # noqa: F811
    db = tmp_path / "cqt.db"
    with start_sim(tmp_path, "--seed", "43", "--history", "300", "--speed", "2",
                   "--symbols", ",".join(ASSETS)) as sim:
        # KRW-USDT's book is quiet (~1.4 frames/s here): a 3 s stall limit would reconnect now
        # and then, and the connections are counted below
        env = collector_env(tmp_path, sim, CQT_SYMBOLS=",".join(ASSETS), CQT_STALL_UPBIT_ORDERBOOK_S="15")
        p, log = collectors("cqt-collect-upbit", env)
        for code in CODES:
            wait_rows(db, "upbit_trades", 3, where=f"WHERE code='{code}'", timeout=40)
            wait_rows(db, "upbit_orderbook", 2, where=f"WHERE code='{code}'", timeout=30)
        n = _connects(log, "upbit")
        # refused for 2 s first: a drop with an instant reconnect may miss no trade at all
        # (the SNAPSHOT is the last trade seen), and then there is rightly no reconnect gap
        sim.fault("refuse", seconds=2, source="upbit")
        sim.fault("drop", source="upbit")
        wait_for(lambda: _connects(log, "upbit") > n, 15, what="reconnect after drop")
        wait_for(lambda: count(db, "SELECT COUNT(*) FROM gaps WHERE reason='reconnect' AND stream LIKE '%@trade' "
                                   "AND status='filled'") >= 1, 25, what="reconnect backfill")
        wait_for(lambda: count(db, "SELECT COUNT(*) FROM gaps WHERE status='open'") == 0, 25, what="no open gaps")
        sim.fault("stall", seconds=4, source="upbit")

        def caught_up() -> bool:
            have = {r[0] for r in query(db, "SELECT sequential_id FROM upbit_trades")}
            return all(range_ids(sent_ranges(sim, f"upbit:{c}@trade")) <= have for c in CODES)
        wait_for(caught_up, 15, what="collector caught up with every code")
        assert p.poll() is None, read_log(log)[-3000:]
        rc, _took = stop(p)
        assert rc == 0
        sent = {code: range_ids(quiesce(sim, f"upbit:{code}@trade")) for code in CODES}
        rest = {code: upbit_rest_trades(sim, code) for code in CODES}

    no_traceback(read_log(log))
    assert read_log(log).count("stream: connected endpoint=upbit ") == 2     # one connection for all codes
    for code in CODES:
        stored = dict(query(db, "SELECT sequential_id, trade_ts_ms FROM upbit_trades WHERE code = ?", (code,)))
        assert sent[code] and sent[code] <= set(stored), (code, len(sent[code] - set(stored)))
        assert set(stored) <= set(rest[code]), code
        lo = min(rest[code][s] for s in sent[code])
        hi = max(rest[code][s] for s in sent[code])
        window = {s for s, t in rest[code].items() if lo <= t <= hi}
        assert window <= set(stored), (code, len(window - set(stored)))
    assert {s for (s,) in query(db, "SELECT symbol FROM resume_state WHERE service='cqt-collect-upbit' "
                                    "AND stream LIKE '%@trade'")} == set(CODES)
    assert query(db, "SELECT COUNT(*) FROM gaps WHERE symbol IS NULL")[0][0] == 0
    per_code = {sym for (sym,) in query(db, "SELECT DISTINCT symbol FROM ingest_stats WHERE source='upbit' "
                                            "AND rows > 0")}
    assert set(CODES) <= per_code


# ------------------------------------------------------------------ market list at start
@pytest.mark.timeout(60)
@pytest.mark.parametrize("program,extra,named,fix", [
    ("cqt-collect-binance", {"CQT_SYMBOLS": "BTC,XYZ"}, "XYZUSDT is not listed", "change CQT_SYMBOLS"),
    ("cqt-collect-binance", {"CQT_BINANCE_SYMBOLS": "BTCUSDT,QQQUSDT", "CQT_SYMBOLS": "BTC,QQQ"},
     "QQQUSDT is not listed", "change CQT_BINANCE_SYMBOLS"),
    ("cqt-collect-upbit", {"CQT_SYMBOLS": "BTC,XYZ"}, "KRW-XYZ is not listed", "change CQT_SYMBOLS"),
])
def test_unknown_symbol_is_one_line_and_exit_78(tmp_path, program, extra, named, fix):
    with start_sim(tmp_path, "--seed", "3", "--history", "30") as sim:
        env = collector_env(tmp_path, sim, **extra)
        r = run_bin(program, env=env, timeout=30)
    assert r.returncode == 78, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and fix in lines[0] and lines[0].startswith(f"{program}: "), lines
    assert not (tmp_path / "cqt.db").exists() or not query(tmp_path / "cqt.db", "SELECT * FROM service_runs")


@pytest.mark.timeout(60)
def test_unknown_symbol_on_the_command_line_names_the_option(tmp_path):
    with start_sim(tmp_path, "--seed", "3", "--history", "30") as sim:
        r = run_bin("cqt-collect-binance", "--symbol", "NOPEUSDT", env=collector_env(tmp_path, sim), timeout=30)
    assert r.returncode == 78, r.stderr
    assert r.stderr.strip() == ("cqt-collect-binance: NOPEUSDT is not listed on Binance USD-M futures "
                                "(TRADING perpetuals); change --symbols")


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_market_list_unreachable_at_start_is_one_warning_and_the_collector_runs(tmp_path, collectors):  # noqa: F811
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    db = tmp_path / "cqt.db"
    with start_sim(tmp_path, "--seed", "8", "--history", "60") as sim:
        env = collector_env(tmp_path, sim, CQT_BINANCE_REST_URL=dead)
        p, log = collectors("cqt-collect-binance", env)
        wait_rows(db, "binance_agg_trades", 5, timeout=30)
        assert p.poll() is None, read_log(log)[-3000:]
        rc, _ = stop(p)
    assert rc == 0
    text = read_log(log)
    warnings = [ln for ln in text.splitlines() if "market list not checked" in ln]
    assert len(warnings) == 1 and warnings[0].startswith("WARNING ") and "/fapi/v1/exchangeInfo" in warnings[0]
    assert "connection refused" in warnings[0]
    assert query(db, "SELECT COUNT(*) FROM events WHERE message LIKE 'market list not checked%'")[0][0] == 1
