#!/usr/bin/env python3
"""Ingest benchmarks for the WebSocket collectors (not collected by pytest).

    .venv/bin/python tests/bench/ingest.py                 # all parts
    .venv/bin/python tests/bench/ingest.py --part raw      # websocket-client ceiling only
    .venv/bin/python tests/bench/ingest.py --part collect --seconds 60
    .venv/bin/python tests/bench/ingest.py --part collect --symbols 10 --seconds 30 --rounds 3
    .venv/bin/python tests/bench/ingest.py --part replay --frames 1000000
    .venv/bin/python tests/bench/ingest.py --part cryptofeed --cryptofeed-python /tmp/cfvenv/bin/python
    .venv/bin/python tests/bench/ingest.py --part compare --rounds 3   # replay vs cryptofeed, alternating

Parts:
  raw        cqt-sim --flood -> one websocket-client connection, recv_data() in a loop, for
             --raw-seconds with skip_utf8_validation=True and False: frames/s and the ratio.
  collect    `--rounds` times, alternately: the bare ceiling (one plain websocket-client
             connection, skip_utf8_validation=True like the collector, subscribed to the
             aggTrade streams of the --symbols first assets of SYMBOLS, recv_data() in a loop
             for --raw-seconds) and cqt-sim --flood [--symbols LIST] -> bin/cqt-collect-binance
             (CQT_SYMBOLS=LIST) -> SQLite for --seconds: stored aggTrade rows/s (after a
             warm-up) and its ratio to the ceiling of the same round, missing aggTrade ids per
             symbol (holes in the stored id range), p50/p99 of (commit time - recv_ts_ms), where
             the commit time is when a poller on a read-only connection first sees the row
             (polled every 50 ms, so the figure errs high by up to 50 ms), CPU of the
             collector (user+sys / wall) and its peak RSS (VmHWM).
  replay     a capture of --frames combined-stream aggTrade frames -> `bin/cqt replay` into
             a fresh database, timed as a whole process: frames/s.
  cryptofeed the same frames through cryptofeed's BinanceFutures.message_handler (no
             storage), in a venv that has cryptofeed (`--cryptofeed-python`); skipped when
             that interpreter is missing.
  compare    replay and cryptofeed alternately, `--rounds` times, with the ratio of each
             round (the machine's load changes between runs; a ratio within a round is fair).
Prints one JSON object with every figure (and the machine's CPU count / load).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "lib"), str(ROOT / "tests")]

from simproc import start_sim  # noqa: E402

SYMBOLS = ("BTC", "ETH", "SOL", "BNB", "XRP", "DOGE", "ADA", "AVAX", "LINK", "DOT", "LTC", "TRX")
FLOOD = "1000000"


def sim_args(assets: tuple[str, ...]) -> list[str]:
    return ["--flood", FLOOD] + (["--symbols", ",".join(assets)] if len(assets) > 1 else [])


def agg_streams(assets: tuple[str, ...]) -> str:
    return "/".join(f"{a.lower()}usdt@aggTrade" for a in assets)


def bare_rate(url: str, seconds: float, skip: bool = True) -> int:
    """Frames/s one plain websocket-client connection receives (recv_data in a loop)."""
    import websocket
    ws = websocket.create_connection(url, timeout=5, skip_utf8_validation=skip, enable_multithread=False)
    try:
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:        # warm-up
            ws.recv_data()
        n = 0
        t0 = time.monotonic()
        t_end = t0 + seconds
        while True:
            ws.recv_data()
            n += 1
            if not n & 255 and time.monotonic() >= t_end:
                break
        return round(n / (time.monotonic() - t0))
    finally:
        ws.close()


def raw_ceiling(tmp: Path, seconds: float, assets: tuple[str, ...] = ("BTC",)) -> dict:
    out = {}
    with start_sim(tmp / "raw", *sim_args(assets)) as sim:
        url = sim.urls["CQT_BINANCE_WS_URL"] + "/market/stream?streams=" + agg_streams(assets)
        for skip in (True, False):
            out["skip_utf8_validation" if skip else "utf8_validation"] = bare_rate(url, seconds, skip)
    out["ratio"] = round(out["skip_utf8_validation"] / out["utf8_validation"], 2)
    return out


def collect(tmp: Path, seconds: float, warmup: float = 5.0, assets: tuple[str, ...] = ("BTC",)) -> dict:
    import psutil

    from helpers import cqt_env
    work = tmp / "collect"
    work.mkdir(parents=True, exist_ok=True)
    db = work / "cqt.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)       # a fresh database every run
    symbols = [f"{a}USDT" for a in assets]
    with start_sim(work, *sim_args(assets)) as sim:
        env = cqt_env(work, **sim.env(), CQT_BACKFILL_S="0", CQT_LOG_LEVEL="WARNING", CQT_HEARTBEAT_S="5",
                      CQT_STALL_MARKPRICE_S="0", CQT_STALL_BOOKTICKER_S="0", CQT_SYMBOLS=",".join(assets))
        log = open(work / "collector.log", "wb")
        p = subprocess.Popen([str(ROOT / "bin" / "cqt-collect-binance")], env=env, stdout=subprocess.DEVNULL,
                             stderr=log, cwd=str(ROOT), start_new_session=True)
        lat: list[int] = []
        counts: list[tuple[float, int]] = []
        stop = threading.Event()

        def poll() -> None:
            while not db.exists() and not stop.is_set():
                time.sleep(0.05)
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            last = dict.fromkeys(symbols, 0)
            while not stop.is_set():
                n = 0
                try:
                    for sym in symbols:
                        rows = conn.execute("SELECT agg_id, recv_ts_ms FROM binance_agg_trades WHERE symbol=? "
                                            "AND agg_id > ? ORDER BY agg_id", (sym, last[sym])).fetchall()
                        now = int(time.time() * 1000)
                        if rows:
                            last[sym] = rows[-1][0]
                            lat.extend(now - r[1] for r in rows[:: max(1, len(rows) // 200)])
                    n = conn.execute("SELECT COUNT(*) FROM binance_agg_trades").fetchone()[0]
                except sqlite3.OperationalError:
                    time.sleep(0.05)
                    continue
                counts.append((time.monotonic(), n))
                time.sleep(0.05)
            conn.close()

        th = threading.Thread(target=poll, daemon=True)
        th.start()
        proc = psutil.Process(p.pid)
        time.sleep(1.0)
        child = next((c for c in proc.children(recursive=True)), None)   # bin script execs python
        target = child or proc
        time.sleep(warmup)
        c0 = target.cpu_times()
        n0_t, n0 = counts[-1] if counts else (time.monotonic(), 0)
        lat.clear()
        time.sleep(seconds)
        c1 = target.cpu_times()
        n1_t, n1 = counts[-1]
        try:
            with open(f"/proc/{target.pid}/status") as fh:
                hwm = next(int(line.split()[1]) for line in fh if line.startswith("VmHWM"))
        except (OSError, StopIteration):
            hwm = None
        stop.set()
        th.join(5)
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            rc = None
        log.close()
        hb = None
        missing = {}
        try:
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            row = conn.execute("SELECT detail FROM heartbeats WHERE service='cqt-collect-binance' "
                               "AND state != 'stopped' ORDER BY ts_ms DESC LIMIT 1").fetchone()
            hb = json.loads(row[0])["writer"] if row else None
            for sym, lo, hi, n in conn.execute("SELECT symbol, MIN(agg_id), MAX(agg_id), COUNT(*) "
                                               "FROM binance_agg_trades GROUP BY symbol"):
                missing[sym] = {"stored": n, "missing_ids": hi - lo + 1 - n}
            gaps = conn.execute("SELECT COUNT(*) FROM gaps WHERE source = 'binance_ws'").fetchone()[0]
            conn.close()
        except sqlite3.Error as exc:
            gaps = f"unreadable: {exc}"
    lat.sort()

    def pct(q: float) -> float | None:
        return lat[min(len(lat) - 1, int(q * len(lat)))] if lat else None
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {"seconds": seconds, "symbols": len(assets), "stored_msgs_per_s": round((n1 - n0) / (n1_t - n0_t)),
            "commit_minus_recv_ms_p50": pct(0.5), "commit_minus_recv_ms_p99": pct(0.99),
            "cpu_percent_of_one_core": round(100 * cpu / seconds), "peak_rss_mb": round(hwm / 1024, 1) if hwm else None,
            "symbols_without_rows": sorted(set(symbols) - set(missing)),
            "missing_ids_total": sum(m["missing_ids"] for m in missing.values()), "gaps_recorded": gaps,
            "per_symbol": missing, "writer_heartbeat": hb, "exit_code": rc}


def collect_rounds(tmp: Path, seconds: float, raw_seconds: float, rounds: int, assets: tuple[str, ...]) -> list:
    """The bare ceiling and the collector alternately, each round's ratio."""
    out = []
    for _ in range(rounds):
        with start_sim(tmp / "raw", *sim_args(assets)) as sim:
            url = sim.urls["CQT_BINANCE_WS_URL"] + "/market/stream?streams=" + agg_streams(assets)
            ceiling = bare_rate(url, raw_seconds)
        col = collect(tmp, seconds, assets=assets)
        out.append({"bare_receive_per_s": ceiling, "collector": col,
                    "stored_vs_bare": round(col["stored_msgs_per_s"] / ceiling, 2)})
    return out


def make_capture(path: Path, frames: int) -> None:
    t0 = 1_790_000_000_000
    with open(path, "w") as fh:
        for i in range(frames):
            e = t0 + i // 50
            raw = ('{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":%d,"a":%d,"s":"BTCUSDT","p":"%.1f",'
                   '"q":"0.%03d","f":%d,"l":%d,"T":%d,"m":%s}}'
                   % (e, 5_000_000_000 + i, 90_000 + (i % 2000) / 10, 1 + i % 999, 9_000_000_000 + 2 * i,
                      9_000_000_001 + 2 * i, e - 3, "true" if i & 1 else "false"))
            fh.write(json.dumps({"recv_ts_ms": e + 40, "source": "binance_ws", "raw": raw}) + "\n")


def replay(tmp: Path, frames: int) -> dict:
    from helpers import cqt_env
    cap = tmp / f"agg_{frames}.jsonl"
    if not cap.exists():
        make_capture(cap, frames)
    db = tmp / "replay.db"
    for suffix in ("", "-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    env = cqt_env(tmp, CQT_DB=str(db))
    t0 = time.monotonic()
    r = subprocess.run([str(ROOT / "bin" / "cqt"), "replay", str(cap), "--db", str(db), "--json"], env=env,
                       capture_output=True, text=True, cwd=str(ROOT))
    wall = time.monotonic() - t0
    if r.returncode != 0:
        return {"error": r.stderr[-500:]}
    rows = sqlite3.connect(db).execute("SELECT COUNT(*) FROM binance_agg_trades").fetchone()[0]
    return {"frames": frames, "process_seconds": round(wall, 2), "frames_per_s": round(frames / wall),
            "rows_stored": rows, "capture_mb": round(cap.stat().st_size / 2**20)}


CF_SCRIPT = r"""
import asyncio, json, sys, time
from cryptofeed.exchanges import BinanceFutures
from cryptofeed.defines import TRADES
from cryptofeed.symbols import Symbols
# no network here: give it the one symbol instead of GET /fapi/v1/exchangeInfo
info = {"symbols": [{"symbol": "BTCUSDT", "baseAsset": "BTC", "quoteAsset": "USDT", "contractType": "PERPETUAL",
                     "status": "TRADING", "filters": [{"tickSize": "0.10"}]}]}
Symbols.set(BinanceFutures.id, *BinanceFutures._parse_symbol_data(info))
lines = open(sys.argv[1]).read().splitlines()
frames = [json.loads(l)["raw"] for l in lines]
n = 0
async def cb(t, ts):
    global n
    n += 1
feed = BinanceFutures(symbols=["BTC-USDT-PERP"], channels=[TRADES], callbacks={TRADES: cb})
class Conn:  # what message_handler reads from the connection
    uuid = "bench"
    conn_id = "bench"
async def main():
    h = feed.message_handler
    conn = Conn()
    for f in frames[:1000]:
        await h(f, conn, 1.0)
    t0 = time.perf_counter()
    for f in frames:
        await h(f, conn, 1.0)
    return time.perf_counter() - t0
dt = asyncio.run(main())
print(json.dumps({"frames": len(frames), "seconds": round(dt, 2), "frames_per_s": round(len(frames) / dt),
                  "trades": n}))
"""


def cryptofeed(tmp: Path, frames: int, python: str) -> dict:
    if not Path(python).exists():
        return {"skipped": f"no interpreter at {python}"}
    cap = tmp / f"agg_{frames}.jsonl"
    if not cap.exists():
        make_capture(cap, frames)
    script = tmp / "cf_bench.py"
    script.write_text(CF_SCRIPT)
    r = subprocess.run([python, str(script), str(cap)], capture_output=True, text=True)
    if r.returncode != 0:
        return {"error": r.stderr[-800:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["all", "raw", "collect", "replay", "cryptofeed", "compare"], default="all")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of --part compare and --part collect")
    ap.add_argument("--symbols", type=int, default=1, choices=range(1, len(SYMBOLS) + 1), metavar="N",
                    help=f"--part collect / raw: the first N of {','.join(SYMBOLS)}")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--raw-seconds", type=float, default=10.0)
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--cryptofeed-python", default="/tmp/cfvenv/bin/python")
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    tmp = Path(a.workdir or tempfile.mkdtemp(prefix="cqt-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    res: dict = {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()}
    if a.part == "compare":
        res["rounds"] = []
        for _ in range(a.rounds):
            cf = cryptofeed(tmp, a.frames, a.cryptofeed_python)
            rp = replay(tmp, a.frames)
            rnd = {"cryptofeed_frames_per_s": cf.get("frames_per_s"), "replay": rp}
            if cf.get("frames_per_s") and rp.get("frames_per_s"):
                rnd["replay_vs_cryptofeed"] = round(rp["frames_per_s"] / cf["frames_per_s"], 2)
            res["rounds"].append(rnd)
    assets = SYMBOLS[:a.symbols]
    if a.part in ("all", "raw"):
        res["raw_websocket_client"] = raw_ceiling(tmp, a.raw_seconds, assets)
    if a.part == "collect":
        res["collect_rounds"] = collect_rounds(tmp, a.seconds, a.raw_seconds, a.rounds, assets)
    if a.part == "all":
        res["collector"] = collect(tmp, a.seconds, assets=assets)
    if a.part in ("all", "replay"):
        res["replay"] = replay(tmp, a.frames)
    if a.part in ("all", "cryptofeed"):
        res["cryptofeed_2_4_1"] = cryptofeed(tmp, a.frames, a.cryptofeed_python)
        if "frames_per_s" in res.get("cryptofeed_2_4_1", {}) and "frames_per_s" in res.get("replay", {}):
            ratio = res["replay"]["frames_per_s"] / res["cryptofeed_2_4_1"]["frames_per_s"]
            res["replay_vs_cryptofeed"] = round(ratio, 2)
    res["loadavg_after"] = os.getloadavg()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
