"""Benchmark: cqt-export of 24 h (86 400 rows, all features). Target < 10 s and < 1 GB peak RSS.

    .venv/bin/python tests/bench/export_24h.py                 # builds a 24 h database in a temp dir
    .venv/bin/python tests/bench/export_24h.py --db PATH       # or takes one (e.g. from `bin/cqt synth --hours 24`)
    .venv/bin/python tests/bench/export_24h.py --synth         # build it with `bin/cqt synth --hours 24`

The export runs as a real process (`bin/cqt-export`); wall time and peak RSS of that
process (psutil, sampled every 20 ms, including children) are printed.

This module also holds `build_synthetic_db`, the test suite's stand-in for a synthetic
database while `bin/cqt synth` is not available: market_1s and predictions from a random
walk with the sim model's volatility (1 s log-return std 2e-4), plus collector heartbeats.
"""
from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "lib"))

COLLECTORS = ("cqt-collect-upbit", "cqt-collect-binance", "cqt-poll-binance", "cqt-poll-coinglass")
SIGMA_1S = 2e-4


def build_synthetic_db(path: str | os.PathLike, hours: float = 1.0, end_ms: int = 1_771_804_800_000, seed: int = 7,
                       sigma_1s: float = SIGMA_1S, heartbeats: bool = True, warmup_s: int = 300,
                       symbol: str = "BTC") -> Path:
    """market_1s + predictions of one asset (`symbol`) for `hours` ending at `end_ms` (plus
    `warmup_s` of history before, so 300 s look-backs are defined from the first exported
    second). Called again with another symbol (and seed) it adds a second asset."""
    import numpy as np
    import pandas as pd

    from cqt.db import open_db

    rng = np.random.default_rng(seed)
    n = int(hours * 3600) + warmup_s
    ts = end_ms - (n - 1) * 1000 + np.arange(n, dtype=np.int64) * 1000
    # latent log price: Gaussian steps with a slowly varying volatility regime
    regime = 1.0 + 0.3 * np.sin(np.arange(n) / 5400.0)
    logp = math.log(95_000_000.0) + np.cumsum(rng.normal(0, sigma_1s, n) * regime)
    price = np.exp(logp)
    has_trade = rng.random(n) < 0.85
    has_trade[0] = True
    # close carries the last traded price forward
    idx_last = np.maximum.accumulate(np.where(has_trade, np.arange(n), 0))
    close = np.round(price[idx_last], -3)          # KRW tick 1 000
    close_age = (np.arange(n) - idx_last) * 1000 + rng.integers(0, 900, n)
    spread = 1000.0 * rng.integers(1, 4, n)
    best_bid = close - spread / 2
    best_ask = close + spread / 2
    mid = (best_bid + best_ask) / 2
    usdt = 1400.0 + np.cumsum(rng.normal(0, 0.02, n))
    prem = 0.015 + 0.005 * np.sin(np.arange(n) / 20_000.0)
    bn_last = price / (usdt * (1 + prem)) * np.exp(rng.normal(0, 5e-5, n))
    kimchi = close / (bn_last * usdt) - 1
    mark = bn_last * (1 + rng.normal(0, 2e-5, n))
    index = bn_last * (1 - 1e-4)
    funding = np.full(n, 1e-4)
    vol = np.where(has_trade, rng.exponential(0.05, n), 0.0)
    buy = vol * rng.random(n)
    sell = vol - buy
    imb = rng.uniform(-0.8, 0.8, n)

    def nz(a):
        return [None if (isinstance(v, float) and math.isnan(v)) else v for v in a]

    s_close = pd.Series(close)
    lr = np.log(s_close / s_close.shift(1))
    feats = {
        "ret_1s": lr, "ret_5s": np.log(s_close / s_close.shift(5)), "ret_30s": np.log(s_close / s_close.shift(30)),
        "ret_60s": np.log(s_close / s_close.shift(60)), "ret_300s": np.log(s_close / s_close.shift(300)),
        "rv_60s": lr.rolling(60, min_periods=60).std(), "rv_300s": lr.rolling(300, min_periods=300).std(),
        "flow_imb_10s": pd.Series((buy - sell)).rolling(10).sum() / pd.Series(vol).rolling(10).sum().replace(0, np.nan),
        "flow_imb_60s": pd.Series((buy - sell)).rolling(60).sum() / pd.Series(vol).rolling(60).sum().replace(0, np.nan),
        "book_imbalance": pd.Series(imb), "spread_bps": pd.Series(spread / mid * 1e4),
        "kimchi_premium": pd.Series(kimchi), "kimchi_chg_60s": pd.Series(kimchi) - pd.Series(kimchi).shift(60),
    }
    s_bn = pd.Series(bn_last)
    for k in (1, 5, 30, 60):
        feats[f"bn_ret_{k}s"] = np.log(s_bn / s_bn.shift(k))
    feats.update({
        "basis_bps": pd.Series((mark - index) / index * 1e4), "funding_rate": pd.Series(funding),
        "oi_chg_300s": pd.Series(rng.normal(0, 1e-3, n)), "ls_ratio": pd.Series(1.8 + rng.normal(0, 0.01, n)),
        "liq_notional_60s": pd.Series(np.where(rng.random(n) < 0.05, rng.exponential(50_000, n), 0.0)),
        "cg_oi_chg": pd.Series(np.full(n, 0.002)), "cg_funding": pd.Series(np.full(n, 0.0001)),
    })
    # flow imbalance: 0/0 (no volume in the look-back) is a real NULL; make it rare but present
    db = Path(path)
    conn = open_db(db)
    try:
        pred_cols = [r[1] for r in conn.execute("PRAGMA table_info(predictions)")]
        feat_names = [c for c in pred_cols if c not in ("symbol", "ts_ms", "horizon_sec", "model", "score")]
        cols = {name: (feats[name].to_numpy() if name in feats else np.zeros(n)) for name in feat_names}
        score = np.tanh(np.nan_to_num(cols.get("ret_30s", np.zeros(n))) * 500)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT OR REPLACE INTO market_1s (symbol, ts_ms, open, high, low, close, volume, trade_count, vwap, "
            "buy_volume, sell_volume, has_trade, close_age_ms, best_bid, best_ask, mid, spread_bps, book_imbalance, "
            "book_age_ms, "
            "binance_last, binance_age_ms, mark_price, index_price, funding_rate, mark_age_ms, usdt_krw, "
            "usdt_krw_age_ms, kimchi_premium) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            zip([symbol] * n, ts.tolist(), nz(np.where(has_trade, close, np.nan)),
                nz(np.where(has_trade, close, np.nan)), nz(np.where(has_trade, close, np.nan)), close.tolist(),
                vol.tolist(),
                has_trade.astype(int).tolist(), nz(np.where(has_trade, close, np.nan)), buy.tolist(), sell.tolist(),
                has_trade.astype(int).tolist(), close_age.tolist(), best_bid.tolist(), best_ask.tolist(), mid.tolist(),
                (spread / mid * 1e4).tolist(), imb.tolist(), rng.integers(0, 900, n).tolist(), bn_last.tolist(),
                rng.integers(0, 500, n).tolist(), mark.tolist(), index.tolist(), funding.tolist(),
                rng.integers(0, 1000, n).tolist(), usdt.tolist(), rng.integers(0, 30_000, n).tolist(),
                kimchi.tolist()))
        placeholders = ",".join("?" * (5 + len(feat_names)))
        conn.executemany(
            f"INSERT OR REPLACE INTO predictions (symbol, ts_ms, horizon_sec, model, score, {', '.join(feat_names)}) "
            f"VALUES ({placeholders})",
            zip([symbol] * n, ts.tolist(), [120] * n, ["baseline-v1"] * n, score.tolist(),
                *(nz(cols[c]) for c in feat_names)))
        if heartbeats:
            beats = range(int(ts[0]), int(ts[-1]) + 1, 10_000)
            hb = [(svc, int(t), "running", "{}") for svc in COLLECTORS for t in beats]
            conn.executemany("INSERT OR REPLACE INTO heartbeats (service, ts_ms, state, detail) VALUES (?,?,?,?)", hb)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return db


def _measure(cmd: list[str], env: dict[str, str]) -> tuple[int, float, int, str]:
    import psutil

    t = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = psutil.Process(p.pid)
    peak = 0
    while p.poll() is None:
        try:
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    out = p.stdout.read()
    return p.returncode, time.monotonic() - t, peak, out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", help="an existing 24 h database (default: build one)")
    ap.add_argument("--synth", action="store_true", help="build the database with `bin/cqt synth --hours 24`")
    ap.add_argument("--hours", type=float, default=24.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cqt-bench-export-"))
    db = Path(args.db) if args.db else tmp / "cqt.db"
    if not args.db:
        t = time.monotonic()
        if args.synth:
            subprocess.run([str(ROOT / "bin" / "cqt"), "synth", "--hours", str(args.hours), "--db", str(db)],
                           check=True)
        else:
            build_synthetic_db(db, hours=args.hours)
        print(f"built {args.hours:g} h database in {time.monotonic() - t:.1f} s: {db}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CQT_")}
    env["CQT_ENV_FILE"] = "/dev/null"
    out = tmp / "btc_24h.parquet"
    cmd = [str(ROOT / "bin" / "cqt-export"), "--db", str(db), "--output", str(out), "--horizon", "120",
           "--last", f"{int(args.hours)}h" if args.hours == int(args.hours) else f"{int(args.hours * 3600)}s"]
    rc, wall, peak, text = _measure(cmd, env)
    print(text.rstrip())
    print(f"command: {' '.join(cmd)}")
    print(f"exit={rc} wall={wall:.2f} s peak_rss={peak / 2**20:.0f} MiB  (target < 10 s, < 1024 MiB)")
    return 0 if rc == 0 and wall < 10 and peak < 2**30 else 1


if __name__ == "__main__":
    sys.exit(main())
