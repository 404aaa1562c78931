"""Benchmark: the pipeline checks runner (all four checks), --window 600, on a 24 h synthetic database.
Target: < 8 s wall time for the whole process (the leak check recomputes every second of a
600 s window, ~3 s, and the integrity check reads the file, ~1 s, on the 24 h database).

    .venv/bin/python tests/bench/checks_runner.py                  # builds the database with `bin/cqt synth --hours 24`
    .venv/bin/python tests/bench/checks_runner.py --db PATH        # or takes one
    .venv/bin/python tests/bench/checks_runner.py --db PATH --repeat 5

The runner runs as a real process, exactly as the operator types it
(`bash checks/run_pipeline_checks.sh --window 600 --as-of T --db PATH --json`; T = the newest
`predictions` row); wall time and peak RSS (psutil, process and children, sampled every 10 ms)
are printed per run, with each check's own time from the JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
END = "2026-11-20T00:00:00Z"


def env_for(db: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CQT_", "COINGLASS_"))}
    env.update(CQT_ENV_FILE="/dev/null", CQT_DB=str(db), COINGLASS_ENABLED="true",
               COINGLASS_API_KEY="bench-key-0123456789abcdef")
    return env


def build(db: Path) -> float:
    t0 = time.monotonic()
    subprocess.run([str(ROOT / "bin" / "cqt"), "synth", "--hours", "24", "--db", str(db), "--end", END, "--seed", "1"],
                   env=env_for(db), check=True, cwd=str(ROOT))
    return time.monotonic() - t0


def run_once(db: Path, as_of: int) -> dict:
    cmd = ["bash", str(ROOT / "checks" / "run_pipeline_checks.sh"), "--window", "600", "--as-of", str(as_of),
           "--db", str(db), "--json"]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env_for(db), cwd=str(ROOT))
    proc = psutil.Process(p.pid)
    peak = 0
    while p.poll() is None:
        try:
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.01)
    out, err = p.communicate()
    wall = time.monotonic() - t0
    d = json.loads(out)
    return {"wall_s": wall, "peak_rss_mb": peak / 2**20, "exit": p.returncode, "summary": d["summary"],
            "checks": {c["check"]: c["elapsed_ms"] for c in d["checks"]}, "failed": {c["check"]: c["failed"]
                                                                              for c in d["checks"] if c["failed"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", type=Path, help="an existing database (default: build one with cqt synth)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = None
    db = args.db
    if db is None:
        tmp = tempfile.TemporaryDirectory(prefix="cqt-bench-checks-")
        db = Path(tmp.name) / "cqt.db"
        print(f"building a 24 h synthetic database: bin/cqt synth --hours 24 --end {END} ...", flush=True)
        print(f"  built in {build(db):.1f} s", flush=True)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    as_of, rows = conn.execute("SELECT MAX(ts_ms), COUNT(*) FROM predictions").fetchone()
    size = db.stat().st_size / 2**20
    conn.close()
    print(f"database {db}: {size:.0f} MB, {rows} predictions rows; as-of {as_of}")
    runs = []
    for i in range(args.repeat):
        r = run_once(db, as_of)
        runs.append(r)
        print(f"run {i + 1}: wall {r['wall_s']:.2f} s, peak RSS {r['peak_rss_mb']:.0f} MB, exit {r['exit']}, "
              f"checks ms {r['checks']}")
        if r["failed"]:
            print(f"  failed metrics: {r['failed']}")
    walls = [r["wall_s"] for r in runs]
    print(f"wall time: median {statistics.median(walls):.2f} s, min {min(walls):.2f} s, max {max(walls):.2f} s "
          f"(target < 8 s); {runs[-1]['summary']}")
    if tmp is not None:
        tmp.cleanup()
    sys.exit(0 if statistics.median(walls) < 8 else 1)


if __name__ == "__main__":
    main()
