"""Benchmark cqt-aggregate with many assets: the rebuild, and the live service's cost per second.

    .venv/bin/python tests/bench/aggregate_symbols.py [--assets 10] [--seconds 3600] [--live-steps 120]

1. A database of `--assets` assets (BTC, ETH, SOL, then A03, A04, ...) with `--seconds` of raw
   rows each at the fixture's rates (tests/fixtures_raw.py: Upbit trades 3/s, books 5/s,
   Binance aggTrades 10/s, mark price 1/s, ...; KRW-USDT once).
2. `rebuild` of every asset over the whole span (in process): wall time, rows, seconds of
   data per wall second.
3. The live service in process (cqt.aggregate.service.LiveAggregator, the same code the
   program runs) on an injected clock: after catching up, `--live-steps` steps of one
   second each, every step writing one row per asset; the step time is what the service
   spends per second of wall time (CPU share = step ms / 1000), measured with the real
   per-step cache check and the late-window scan every 30 steps. The rows are written
   through a synchronous writer (as svc.writer.call would, in its own thread).
Prints one JSON line with the figures.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "lib"), str(ROOT / "tests")]

from cqt.aggregate.config import AggregateConfig  # noqa: E402
from cqt.aggregate.rebuilds import rebuild  # noqa: E402
from cqt.aggregate.service import LiveAggregator  # noqa: E402
from cqt.featureparams import FeatureParams  # noqa: E402
from fixtures_raw import DirectWriter, make_raw_db  # noqa: E402

S = 1_700_000_000_000


def names(n: int) -> tuple[str, ...]:
    base = ("BTC", "ETH", "SOL")
    return base[:n] + tuple(f"A{i:02d}" for i in range(len(base), n))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", type=int, default=10)
    ap.add_argument("--seconds", type=int, default=3600)
    ap.add_argument("--live-steps", type=int, default=120)
    args = ap.parse_args()
    assets = names(args.assets)
    params = tuple(FeatureParams(asset=a) for a in assets)
    with tempfile.TemporaryDirectory(prefix="cqt-bench-symbols-") as tmp:
        db = Path(tmp) / "cqt.db"
        t = time.monotonic()
        info = make_raw_db(db, S, args.seconds, seed=3, assets=assets)
        built_s = time.monotonic() - t
        end = info["end_ms"]
        # the rebuild of every asset over all but the last 200 s (the live part writes those)
        live_from = end - 200_000
        t = time.monotonic()
        st = rebuild(db, S + 1000, live_from, params=params)
        rebuild_s = time.monotonic() - t
        # live: from live_from on, one second per step on an injected clock
        now = [live_from + 2_500]
        w = DirectWriter(db)
        agg = LiveAggregator(db, AggregateConfig(assets=params, start_wait_ms=0), w, clock=lambda: now[0])
        agg.step()                                   # resume every asset at live_from
        steps = []
        for i in range(args.live_steps):
            now[0] += 1000
            t = time.perf_counter()
            n = agg.step()
            if i % 30 == 29:
                agg.scan_late()
            steps.append((time.perf_counter() - t) * 1000)
            assert n == len(assets), n
        agg.close()
    steps.sort()
    out = {"assets": len(assets), "seconds_of_data": args.seconds,
           "raw_rows": sum(info["rows"].values()), "build_s": round(built_s, 1),
           "rebuild_s": round(rebuild_s, 2), "rebuild_rows": st.market_rows,
           "rebuild_rows_per_s": round(st.market_rows / rebuild_s),
           "live_step_ms_p50": round(statistics.median(steps), 2),
           "live_step_ms_p99": round(steps[int(len(steps) * 0.99) - 1], 2),
           "live_step_ms_per_asset_p50": round(statistics.median(steps) / len(assets), 2),
           "live_cpu_share_p50": round(statistics.median(steps) / 1000, 4)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
