#!/usr/bin/env python3
"""Benchmark `bin/cqt synth`: wall time, peak RSS and rows of a synthetic database.

    .venv/bin/python tests/bench/synth_speed.py --hours 24 [--keep PATH]

Runs the real program in a subprocess on a fresh database in a temporary directory (or
PATH with --keep, e.g. to feed the aggregate / export benchmarks) and prints one JSON
object: hours, wall_s, raw_s (raw tables), derived (market_1s/predictions), peak_rss_mb,
db_mb, rows per table, frames, rest_calls. Not collected by pytest.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--end", default="2026-11-20T00:00:00Z")
    ap.add_argument("--keep", help="write the database here instead of a temporary directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(args.keep) if args.keep else Path(tmp) / "synth.db"
        for suffix in ("", "-wal", "-shm"):
            Path(str(db) + suffix).unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CQT_", "COINGLASS_"))}
        env["CQT_ENV_FILE"] = os.devnull
        t0 = time.monotonic()
        r = subprocess.run([str(ROOT / "bin" / "cqt"), "synth", "--hours", str(args.hours), "--db", str(db),
                            "--seed", str(args.seed), "--end", args.end, "--json"],
                           env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return r.returncode
        summary = json.loads(r.stdout)
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        out = {"hours": args.hours, "wall_s": round(wall, 1), "raw_s": summary["raw_s"],
               "derived": summary["derived"], "peak_rss_mb": round(peak_kb / 1024, 1),
               "db_mb": round(db.stat().st_size / 2**20, 1), "frames": summary["frames"],
               "rest_calls": summary["rest_calls"], "rows": summary["rows"]}
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
