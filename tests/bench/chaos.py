#!/usr/bin/env python3
"""Chaos run (not collected by pytest): kill -9 cqt-collect-binance at random moments.

    .venv/bin/python tests/bench/chaos.py                      # 50 kills over ~10 minutes
    .venv/bin/python tests/bench/chaos.py --kills 10 --min-s 1 --max-s 5

Against one cqt-sim, `--kills` times: start bin/cqt-collect-binance, let it run a random
uniform(--min-s, --max-s) seconds, SIGKILL it, run `PRAGMA integrity_check` on the
database, restart it. At the end one last run waits until no gap is open and stops with
SIGTERM; then the stored aggTrade ids must equal the ids the sim produced between the
first and the last id it sent on the WebSocket (0 missing, 0 duplicate, 0 extra).
Prints one JSON object; exit 0 when every check held.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "lib"), str(ROOT / "tests")]

from helpers import cqt_env  # noqa: E402
from simproc import start_sim  # noqa: E402


def ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--min-s", type=float, default=4.0)
    ap.add_argument("--max-s", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default=None)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    work = Path(a.workdir or tempfile.mkdtemp(prefix="cqt-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    db = work / "cqt.db"
    t_start = time.monotonic()
    integrity: list[str] = []
    with start_sim(work, "--seed", str(a.seed), "--history", "3600") as sim:
        env = cqt_env(work, **sim.env(), CQT_BACKFILL_S="0", CQT_HEARTBEAT_S="2", CQT_LOG_LEVEL="INFO")
        log = open(work / "collector.log", "ab")

        def start() -> subprocess.Popen:
            return subprocess.Popen([str(ROOT / "bin" / "cqt-collect-binance")], env=env, stdout=subprocess.DEVNULL,
                                    stderr=log, cwd=str(ROOT), start_new_session=True)

        for k in range(a.kills):
            p = start()
            time.sleep(rng.uniform(a.min_s, a.max_s))
            if p.poll() is not None:
                print(json.dumps({"error": f"collector exited on its own with {p.returncode} before kill {k + 1}"}))
                return 1
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
            with ro(db) as conn:
                integrity.append(conn.execute("PRAGMA integrity_check").fetchone()[0])
        p = start()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(1.0)
            with ro(db) as conn:
                open_gaps = conn.execute("SELECT COUNT(*) FROM gaps WHERE status = 'open'").fetchone()[0]
                restarts = conn.execute("SELECT COUNT(*) FROM service_runs").fetchone()[0]
            if open_gaps == 0 and restarts >= a.kills + 1:
                break
        time.sleep(2.0)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(10)
        log.close()
        time.sleep(1.0)
        sent = sim.stats(ids=True)["streams"]["binance:btcusdt@aggTrade"]["ranges"]
    with ro(db) as conn:
        stored = [r[0] for r in conn.execute("SELECT agg_id FROM binance_agg_trades ORDER BY agg_id")]
        gaps = conn.execute("SELECT status, reason, COUNT(*), SUM(filled_rows) FROM gaps "
                            "GROUP BY status, reason").fetchall()
        final_integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    lo, hi = sent[0][0], sent[-1][1]
    expected = set(range(lo, hi + 1))
    s = set(stored)
    res = {
        "kills": a.kills, "minutes": round((time.monotonic() - t_start) / 60, 1),
        "integrity_ok_after_each_kill": sum(1 for x in integrity if x == "ok"), "final_integrity": final_integrity,
        "sent_first_id": lo, "sent_last_id": hi, "ids_sent_on_ws": sum(b - a + 1 for a, b in sent),
        "stored": len(stored), "missing": len(expected - s), "extra": len(s - expected),
        "duplicates": len(stored) - len(s), "gaps": [list(g) for g in gaps], "last_exit_code": rc,
        "workdir": str(work),
    }
    ok = (res["integrity_ok_after_each_kill"] == a.kills and final_integrity == "ok" and not res["missing"]
          and not res["extra"] and not res["duplicates"] and rc == 0)
    res["ok"] = ok
    print(json.dumps(res, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
