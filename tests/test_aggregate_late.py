"""Late data in the live service (rows that land after their second was written).

bin/cqt-aggregate runs as a real service for two assets (BTC, ETH) while a writer thread
inserts raw rows of both in real time, except BTCUSDT aggTrades of a stretch of ~90 s (a
disconnect). Once every second
of that stretch has been written, the missing aggTrades land as one block — a collector's
gap backfill by `fromId`. Then:

- every row computed AFTER the block landed equals a rebuild of the range (1e-12): the
  service's per-second cache must not keep serving the empty seconds it read before;
- the rows written before it stay what was known live (and some of them do differ, so
  the block mattered);
- every row of the block is counted late, per second, in `aggregate_late` (symbol BTC,
  source `binance_agg_trades`), in the heartbeat, and logged once with the `--rebuild` command;
- ETH has no late row, and every ETH row written live equals a rebuild: BTC's late data
  is BTC's alone.

Part of the block lies inside the cache's span (found by the per-step check) and part
before it (found by the periodic scan of the late window, CQT_AGGREGATE_LATE_SCAN_S).
"""
from __future__ import annotations

import json
import re
import sqlite3
import threading
import time

import pytest

from cqt.db import open_db
from cqt.features import MARKET_COLUMNS, PREDICTION_COLUMNS
from cqt.timeutil import now_ms
from fixtures_raw import RawGenerator, insert_rows, same_value
from helpers import cqt_env, query, run_bin, start_bin, stop_proc, wait_for
from test_aggregate_live import RealTimeWriter

HISTORY_S = 420          # > the 300 s look-back, so every feature has its history
GAP_BEFORE_S = 90        # aggTrades withheld from now - 90 s ...
GAP_AFTER_S = 3          # ... to now + 3 s (the test's start)
AFTER_S = 7              # seconds the service runs after the block landed


class GapWriter(RealTimeWriter):
    """RealTimeWriter that withholds BTCUSDT aggTrades with trade time in [gap_from, gap_to)
    until `release` is set, then inserts them in one transaction (the backfill)."""

    def __init__(self, path, gen, since_ms, gap_from, gap_to, withheld):
        super().__init__(path, gen, since_ms)
        self.gap_from, self.gap_to = gap_from, gap_to
        self.withheld = list(withheld)
        self.block: list[tuple] = []
        self.landed_ms: int | None = None
        self.release = threading.Event()

    def held(self, row) -> bool:
        return row[0] == "BTCUSDT" and self.gap_from <= row[2] < self.gap_to

    def split(self, rows):
        self.withheld += [r for r in rows["binance_agg_trades"] if self.held(r)]
        rows["binance_agg_trades"] = [r for r in rows["binance_agg_trades"] if not self.held(r)]
        return rows

    def run(self) -> None:
        try:
            while not self.stop.wait(0.1):
                upto = now_ms() - 100
                for gen in self.gens:
                    self.rows += insert_rows(self.conn, self.split(gen.rows(self.last, upto)))
                self.last = upto
                if self.release.is_set() and self.landed_ms is None:
                    self.block, self.withheld = self.withheld, []
                    insert_rows(self.conn, {"binance_agg_trades": self.block})
                    self.landed_ms = now_ms()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.conn.close()


def _diff(db, copy, lo, hi, symbol="BTC"):
    out = []
    for table, cols in (("market_1s", MARKET_COLUMNS), ("predictions", PREDICTION_COLUMNS)):
        sql = f"SELECT {', '.join(cols)} FROM {table} WHERE symbol = ? AND ts_ms BETWEEN ? AND ? ORDER BY ts_ms"
        live, rebuilt = query(db, sql, (symbol, lo, hi)), query(copy, sql, (symbol, lo, hi))
        assert len(live) == len(rebuilt) == (hi - lo) // 1000 + 1
        out += [(table, rl[1], c, x, y) for rl, rr in zip(live, rebuilt) for c, x, y in zip(cols, rl, rr)
                if not same_value(x, y)]
    return out


@pytest.mark.timeout(90)
def test_backfilled_aggtrades_are_used_from_when_they_land_and_counted(tmp_path):
    db = tmp_path / "cqt.db"
    now = now_ms()
    start = now // 1000 * 1000 - HISTORY_S * 1000
    gap_from, gap_to = now - GAP_BEFORE_S * 1000, now + GAP_AFTER_S * 1000
    gens = [RawGenerator(start, HISTORY_S + 60, seed=23, coinglass_interval="1m", asset=a, usdt=a == "BTC")
            for a in ("BTC", "ETH")]
    conn = open_db(db)
    held = []
    for gen in gens:
        hist = gen.rows(start, now - 100, history=True, recv_cap=now)
        held += [r for r in hist["binance_agg_trades"] if r[0] == "BTCUSDT" and r[2] >= gap_from]
        hist["binance_agg_trades"] = [r for r in hist["binance_agg_trades"]
                                      if r[0] != "BTCUSDT" or r[2] < gap_from]
        insert_rows(conn, hist)
    conn.close()
    writer = GapWriter(db, gens, now - 100, gap_from, gap_to, held)
    writer.start()
    env = cqt_env(tmp_path, CQT_COINGLASS_INTERVAL="1m", CQT_HEARTBEAT_S="1", CQT_AGGREGATE_LATE_SCAN_S="1",
                  CQT_SYMBOLS="BTC,ETH")
    log = tmp_path / "aggregate.log"
    proc = start_bin("cqt-aggregate", env=env, log_path=log)
    try:
        # every second of the gap is written before the backfill lands
        last_gap_bar = -(-gap_to // 1000) * 1000
        wait_for(lambda: (query(db, "SELECT MAX(ts_ms) FROM market_1s WHERE symbol = 'BTC'")[0][0] or 0)
                 >= last_gap_bar, 30, what="the service to write the gap's seconds")
        assert writer.error is None, writer.error
        writer.release.set()
        wait_for(lambda: writer.landed_ms is not None, 5, what="the backfill block")
        landed = writer.landed_ms
        time.sleep(AFTER_S)
        writer.stop.set()
        writer.join(10)
        assert writer.error is None and proc.poll() is None, log.read_text()
        last_data = writer.last
        wait_for(lambda: query(db, "SELECT MIN(n) FROM (SELECT MAX(ts_ms) AS n FROM market_1s GROUP BY symbol)")[0][0]
                 >= last_data // 1000 * 1000 + 1000, 15, what="the service to write the last second with data")
        # let the periodic scan see the whole late window once more, then stop
        time.sleep(1.5)
    finally:
        writer.stop.set()
        rc = stop_proc(proc)
    text = log.read_text()
    assert rc == 0 and "Traceback" not in text, text
    block = writer.block
    assert len(block) > 300, len(block)          # ~93 s of aggTrades at 10/s

    # -- counted: every row of the block, in its own second ----------------------------------------
    expect: dict[int, int] = {}
    for r in block:
        sec = -(-r[2] // 1000) * 1000
        expect[sec] = expect.get(sec, 0) + 1
    got = dict(query(db, "SELECT ts_ms, late_rows FROM aggregate_late WHERE symbol = 'BTC' "
                         "AND source = 'binance_agg_trades'"))
    assert got == expect, (f"{sum(got.values())} late rows counted in {len(got)} seconds, "
                           f"expected {len(block)} in {len(expect)}")
    assert query(db, "SELECT symbol, source, COUNT(*) FROM aggregate_late WHERE symbol != 'BTC' "
                     "OR source != 'binance_agg_trades' GROUP BY symbol, source") == []
    hb = json.loads(query(db, "SELECT detail FROM heartbeats WHERE service = 'cqt-aggregate' AND state != 'stopped' "
                              "ORDER BY ts_ms DESC LIMIT 1")[0][0])
    assert hb["late_seen"] == {"binance_agg_trades": len(block)}, hb
    assert hb["late"]["binance_agg_trades_pending"] == len(block), hb
    assert hb["symbols"]["BTC"]["late_seen"] == len(block) and hb["symbols"]["ETH"]["late_seen"] == 0, hb
    logged = [tuple(map(int, m)) for m in re.findall(
        r"late data of BTC: (\d+) rows .* --rebuild --from (\d+) --to (\d+) --symbol BTC", text)]
    assert "late data of ETH" not in text
    assert logged and sum(n for n, _, _ in logged) == len(block), text
    assert min(f for _, f, _ in logged) == min(expect) and max(t for _, _, t in logged) >= max(expect), logged

    # -- live equals rebuild for every row computed after the block landed -----------------------
    a, b = query(db, "SELECT MIN(ts_ms), MAX(ts_ms) FROM market_1s WHERE symbol = 'BTC'")[0]
    copy = tmp_path / "rebuilt.db"
    src, dst = sqlite3.connect(db), sqlite3.connect(copy)
    src.backup(dst)
    src.close(), dst.close()
    r = run_bin("cqt-aggregate", "--rebuild", "--from", str(a), "--to", str(b), "--db", str(copy), "--json",
                env=cqt_env(tmp_path, CQT_COINGLASS_INTERVAL="1m", CQT_DB=str(copy), CQT_SYMBOLS="BTC,ETH"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["late_rows_corrected"] == len(block)
    after = landed // 1000 * 1000 + 1000           # computed at >= its time + grace (2 s) > landed
    assert b - after >= (AFTER_S - 2) * 1000
    bad = _diff(db, copy, after, b)
    assert not bad, f"{len(bad)} values computed after the backfill landed differ from a rebuild, first {bad[:5]}"
    # the live rows written before the block landed stay what was known live, and the block mattered
    before = _diff(db, copy, gap_from // 1000 * 1000, after - 1000)
    assert {c for _, _, c, _, _ in before} >= {"bn_ret_1s", "bn_ret_60s", "binance_last"}, before[:5]
    # not vacuous: the rows after the landing have Binance features whose look-back covers the gap
    assert all(v is not None for (v,) in query(db, "SELECT bn_ret_60s FROM predictions WHERE symbol = 'BTC' "
                                                   "AND ts_ms BETWEEN ? AND ?", (after, b)))
    # ETH: nothing late, so every row written live is what a rebuild gives
    ea, eb = query(db, "SELECT MIN(ts_ms), MAX(ts_ms) FROM market_1s WHERE symbol = 'ETH'")[0]
    assert eb - ea >= (HISTORY_S - 30) * 1000
    bad = _diff(db, copy, ea, eb, "ETH")
    assert not bad, f"{len(bad)} ETH values differ from a rebuild, first {bad[:5]}"
