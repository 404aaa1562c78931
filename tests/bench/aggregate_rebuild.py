"""Benchmark cqt-aggregate: a 24-hour --rebuild, and the live service's CPU.

    .venv/bin/python tests/bench/aggregate_rebuild.py [--db /tmp/cqt-bench-24h.db] [--hours 24]
                                                      [--rebuild-only | --live-only] [--live-s 60]

1. Builds (once; reused when the file exists) the synthetic database with
   `bin/cqt synth --hours H --db PATH` (the collectors' generator, cqt-sim's market model),
   then times `bin/cqt-aggregate --rebuild --from <first second> --to <last second>` as a
   subprocess: wall time, peak RSS (getrusage of the child), rows written.
   Targets: 24 h (86 400 rows of both tables) < 60 s, peak RSS < 1 GB.
2. Live: a fresh database with `--history-s` of history (default 65 min: the whole late
   window of CQT_AGGREGATE_LATE_WINDOW_S is recounted in steady state; tests/fixtures_raw.py)
   and a writer thread inserting raw rows in real time at busy-market rates (Binance
   aggTrades 50/s, Upbit trades 5/s, order book 10/s, ...); the service runs; its CPU time
   is measured over `--live-s` seconds once it has caught up. That includes the per-step
   check of the cached span and the recount of the late window every 30 s. With
   `--late-block N`, half-way through N Binance aggTrades land in the last 10 minutes of
   already written seconds (a gap backfill): the reload and the late counting are in the
   figure, and the heartbeat must report N late rows. Target: < 5 % of one core.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "lib"), str(ROOT / "tests")]

from cqt.db import open_db  # noqa: E402
from cqt.timeutil import now_ms  # noqa: E402
from fixtures_raw import RawGenerator, insert_rows  # noqa: E402
from helpers import cqt_env, query, start_bin, stop_proc, wait_for  # noqa: E402


def build(db: Path, hours: float, env: dict) -> None:
    t = time.monotonic()
    r = subprocess.run([str(ROOT / "bin" / "cqt"), "synth", "--hours", str(hours), "--db", str(db)], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"synth failed: {r.stderr[-2000:]}")
    print(f"built {db} with bin/cqt synth --hours {hours} in {time.monotonic() - t:.0f} s "
          f"({db.stat().st_size / 1e6:.0f} MB)")


def bench_rebuild(db: Path, env: dict) -> dict:
    lo, hi = query(db, "SELECT MIN(ts_ms), MAX(ts_ms) FROM market_1s")[0]     # the span synth derived
    if lo is None:
        lo, hi = query(db, "SELECT MIN(trade_ts_ms), MAX(trade_ts_ms) FROM upbit_trades")[0]
        lo, hi = -(-lo // 1000) * 1000, hi // 1000 * 1000
    counts = {t: query(db, f"SELECT COUNT(*) FROM {t}")[0][0]
              for t in ("upbit_trades", "upbit_orderbook", "binance_agg_trades", "binance_mark_price")}
    cmd = [str(ROOT / "bin" / "cqt-aggregate"), "--rebuild", "--from", str(lo), "--to", str(hi), "--db", str(db),
           "--json"]
    # a fresh measuring process, so getrusage(RUSAGE_CHILDREN) sees only the rebuild
    probe = ("import json, resource, subprocess, sys, time; t = time.monotonic(); "
             "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
             "print(json.dumps({'rc': r.returncode, 'out': r.stdout, 'err': r.stderr[-2000:], "
             "'wall': time.monotonic() - t, 'rss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    m = json.loads(subprocess.run([sys.executable, "-c", probe, *cmd], env=env, capture_output=True, text=True).stdout)
    if m["rc"] != 0:
        sys.exit(f"rebuild failed: {m['err']}")
    wall, rss_mb = m["wall"], m["rss_kb"] / 1024
    out = json.loads(m["out"])
    res = {"command": " ".join(cmd), "seconds": out["seconds"], "wall_s": round(wall, 1),
           "rebuild_elapsed_s": out["elapsed_s"], "peak_rss_mb": round(rss_mb), "raw_rows": counts,
           "rows_per_s": round(out["seconds"] / wall)}
    print(json.dumps(res, indent=1))
    return res


def bench_live(seconds: int, env_base: dict, tmp: Path, history_s: int = 3900, late_block: int = 0) -> dict:
    import psutil

    db = tmp / "live.db"
    now = now_ms()
    start = now // 1000 * 1000 - history_s * 1000
    rates = {"binance_agg_trades": 50.0, "upbit_trades": 5.0, "upbit_orderbook": 10.0, "book_ticker": 10.0}
    gen = RawGenerator(start, history_s + seconds + 300, seed=5, rates=rates, coinglass_interval="1m")
    conn = open_db(db)
    insert_rows(conn, gen.rows(start, now - 100, history=True, recv_cap=now))
    stop = threading.Event()
    state = {"last": now - 100}

    def feed() -> None:
        c = open_db(db)
        while not stop.wait(0.1):
            upto = now_ms() - 100
            insert_rows(c, gen.rows(state["last"], upto))
            state["last"] = upto
        c.close()

    th = threading.Thread(target=feed, daemon=True)
    th.start()
    env = {**env_base, "CQT_DB": str(db), "CQT_COINGLASS_INTERVAL": "1m", "CQT_HEARTBEAT_S": "1"}
    proc = start_bin("cqt-aggregate", env=env, log_path=tmp / "live.log")
    try:
        wait_for(lambda: (query(db, "SELECT MAX(ts_ms) FROM market_1s")[0][0] or 0) >= now_ms() - 4000, 60,
                 what="catch-up")
        p = psutil.Process(proc.pid)
        procs = [p] + p.children(recursive=True)
        c0 = sum(x.cpu_times().user + x.cpu_times().system for x in procs)
        t0 = time.monotonic()
        if late_block:
            time.sleep(seconds / 2)
            t_now = now_ms()
            rng = random.Random(1)
            ts = sorted(rng.randrange(t_now - 600_000, t_now - 10_000) for _ in range(late_block))
            c = open_db(db)
            c.execute("BEGIN IMMEDIATE")
            c.executemany("INSERT INTO binance_agg_trades VALUES ('BTCUSDT', ?, ?, 60000.5, 0.01, 'buy', ?, ?, ?, ?)",
                          [(9_000_000_000 + i, t, i, i, t, t_now) for i, t in enumerate(ts)])
            c.execute("COMMIT")
            c.close()
            time.sleep(seconds - (time.monotonic() - t0))
        else:
            time.sleep(seconds)
        c1 = sum(x.cpu_times().user + x.cpu_times().system for x in procs)
        wall = time.monotonic() - t0
        rss = max(x.memory_info().rss for x in procs) / 1e6
        lag = now_ms() - query(db, "SELECT MAX(ts_ms) FROM market_1s")[0][0]
        time.sleep(1.5)         # one more heartbeat
        hb = json.loads(query(db, "SELECT detail FROM heartbeats WHERE service = 'cqt-aggregate' "
                                  "ORDER BY ts_ms DESC LIMIT 1")[0][0])
    finally:
        stop.set()
        stop_proc(proc)
    res = {"live_s": round(wall), "history_s": history_s, "cpu_s": round(c1 - c0, 2),
           "cpu_percent_of_core": round(100 * (c1 - c0) / wall, 2), "rss_mb": round(rss), "lag_ms_at_end": lag,
           "step_ms_p50": hb.get("step_ms_p50"), "step_ms_max": hb.get("step_ms_max"),
           "late_seen": hb.get("late_seen"), "cache_reloads": hb.get("cache_reloads"), "rates_per_s": rates}
    if late_block and (hb.get("late_seen") or {}).get("binance_agg_trades") != late_block:
        print(f"WARNING: {late_block} late aggTrades landed, the heartbeat reports {hb.get('late_seen')}")
    print(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="/tmp/cqt-bench-24h.db")
    ap.add_argument("--hours", type=float, default=24)
    ap.add_argument("--rebuild-only", action="store_true")
    ap.add_argument("--live-only", action="store_true")
    ap.add_argument("--live-s", type=int, default=60)
    ap.add_argument("--history-s", type=int, default=3900, help="history before the live part (default 65 min)")
    ap.add_argument("--late-block", type=int, default=0, metavar="N",
                    help="half-way, N aggTrades land in already written seconds (a gap backfill)")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cqt-bench-agg-"))
    env = cqt_env(tmp)
    try:
        if not a.live_only:
            db = Path(a.db)
            if not db.exists():
                build(db, a.hours, {**env, "CQT_DB": str(db)})
            bench_rebuild(db, {**env, "CQT_DB": str(db)})
        if not a.rebuild_only:
            bench_live(a.live_s, env, tmp, a.history_s, a.late_block)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
