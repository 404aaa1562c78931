"""Crafted databases for the check tests: every raw stream, REST series, Coinglass calls,
bookkeeping and derived rows, healthy by construction, written straight into SQLite.

    path = make_healthy_db(tmp_path / "cqt.db")          # AS_OF - SPAN_S .. AS_OF, BTC
    path = make_healthy_db(tmp_path / "cqt.db", assets=("BTC", "ETH", "SOL"))   # three assets
    breakers below turn one thing unhealthy (delete a stream's tail, plant rejects, ...)

Each asset has its own venue symbols (<asset>USDT, KRW-<asset>, Coinglass coin <asset>), its
own price level and its own Coinglass calls (`<path>?coin=<asset>`); KRW-USDT, the frame
counters (ingest_stats, symbol '' = the whole service) and the service runs exist once.
Run a check on a multi-asset database with `run(..., **symbols_env(assets))`.

Rows are deterministic (seeded). Derived rows (market_1s / predictions) are plausible
values, not computed by cqt.features: feature_check judges shape, not arithmetic.
"""
from __future__ import annotations

import bisect
import math
import random
import shutil
import sqlite3
from pathlib import Path

from cqt import db as cdb
from cqt.timeutil import parse_time_ms
from cqt.venues.coinglass import call_endpoint

AS_OF = parse_time_ms("2026-01-10T12:00:00Z")
SPAN_S = 1200
SYMBOL = "BTCUSDT"
PRICE_USD = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0}   # any other asset: 10 USD
CG_PATHS = (
    "/api/futures/open-interest/aggregated-history",
    "/api/futures/funding-rate/history",
    "/api/futures/liquidation/aggregated-history",
    "/api/futures/global-long-short-account-ratio/history",
)
RATIO_KINDS = ("open_interest_hist", "global_long_short", "top_long_short_position", "taker_buy_sell")
COLLECTORS = ("cqt-collect-binance", "cqt-collect-upbit", "cqt-poll-binance", "cqt-poll-coinglass")


STATS_SQL = "INSERT OR IGNORE INTO ingest_stats (service, source, symbol, ts_ms, frames, rows, rejects) " \
            "VALUES (?,?,?,?,?,?,?)"


def whole_service_stats(start_ms: int, end_ms: int, ws_frames: tuple[int, int]) -> list[tuple]:
    """ingest_stats rows of the four collectors every 10 s, not split by symbol (symbol '');
    `ws_frames`: frames per heartbeat of Binance and Upbit."""
    rows = []
    for t in _every(start_ms, end_ms, 10_000, 0):
        rows += [("cqt-collect-binance", "binance_ws", "", t, ws_frames[0], ws_frames[0], 0),
                 ("cqt-collect-upbit", "upbit", "", t, ws_frames[1], ws_frames[1], 0),
                 ("cqt-poll-binance", "binance_rest", "", t, 2, 2, 0),
                 ("cqt-poll-coinglass", "coinglass", "", t, 1, 1, 0)]
    return rows


def _every(start_ms: int, end_ms: int, step_ms: int, offset_ms: int = 0):
    t = start_ms - start_ms % step_ms + offset_ms
    while t <= end_ms:
        if t > start_ms:
            yield t
        t += step_ms


def symbols_env(assets) -> dict[str, str]:
    """The settings naming `assets` (CQT_SYMBOLS)."""
    return {"CQT_SYMBOLS": ",".join(assets)}


def _asset_seed(seed: int, asset: str) -> int:
    """BTC keeps `seed` (the one-asset databases stay what they were); others their own."""
    return seed if asset == "BTC" else seed * 1_000_003 + sum(map(ord, asset))


def fill_raw(conn: sqlite3.Connection, start_ms: int, end_ms: int, seed: int = 1, asset: str = "BTC",
             shared: bool = True) -> None:
    """Every raw stream and REST series of one asset; with `shared` also KRW-USDT, the frame
    counters and the service runs (once per database)."""
    rnd = random.Random(_asset_seed(seed, asset))
    px = PRICE_USD.get(asset, 10.0)
    usdt = 1_400.0
    symbol, code = f"{asset}USDT", f"KRW-{asset}"
    tick = 1000.0 if px >= 10_000 else 1.0       # Upbit's KRW tick at that price
    ndig, half = (1, 0.1) if px >= 10_000 else (4, px * 2e-6)   # Binance price digits, half spread
    agg, book, mark, up_tr, up_ob = [], [], [], [], []
    agg_id, upd = 1_000_000, 5_000_000
    seq = 10_000
    path: list[tuple[int, float]] = []          # (time, price): the book quotes the price of its moment
    for t in _every(start_ms, end_ms, 500, 137):
        px *= math.exp(rnd.gauss(0, 2e-4))
        agg_id += 1
        path.append((t, px))
        agg.append((symbol, agg_id, t, round(px, ndig), 0.01 + rnd.random(), rnd.choice(("buy", "sell")),
                    agg_id * 3, agg_id * 3 + 1, t + 5, t + 60))
    times = [t for t, _ in path]
    for t in _every(start_ms, end_ms, 200, 51):
        upd += 1
        i = bisect.bisect_right(times, t) - 1
        bpx = path[i][1] if i >= 0 else path[0][1]
        book.append((symbol, upd, t, round(bpx - half, ndig), 1.0, round(bpx + half, ndig), 2.0, t + 40))
    for t in _every(start_ms, end_ms, 1000, 3):
        mark.append((symbol, t, px, px * 0.9999, 0.0001, end_ms + 3_600_000, t + 30))
    krw = px * usdt * 1.02
    for t in _every(start_ms, end_ms, 700, 211):
        seq += 1
        up_tr.append((code, seq, t, round(krw * math.exp(rnd.gauss(0, 1e-4)), 0), 0.002, "buy", t + 80))
    for t in _every(start_ms, end_ms, 20_000, 999):
        seq += 1
        if shared:
            up_tr.append(("KRW-USDT", seq, t, usdt, 100.0, "sell", t + 80))
    for t in _every(start_ms, end_ms, 500, 333):
        up_ob.append((code, t, krw - tick, krw + tick, 0.5, 0.4, 5.0, 6.0, 15, t + 70))
    liq = [(symbol, t, t - 2, "sell", px, px, 0.5, 0.5, "FILLED", t + 50)
           for t in _every(start_ms, end_ms, 120_000, 17)]
    oi = [(symbol, t, 80_000.0 + i, t + 120) for i, t in enumerate(_every(start_ms, end_ms, 10_000, 400))]
    prem = [(symbol, t, px, px * 0.9999, 0.0001, 0.0001, end_ms + 3_600_000, t + 100)
            for t in _every(start_ms, end_ms, 60_000, 800)]
    ratios = []
    for kind in RATIO_KINDS:
        for t in _every(start_ms - 3_600_000, end_ms - 300_000, 300_000):
            ratios.append((symbol, kind, "5m", t, 1.1, 0.52, 0.48, t + 305_000))
    funding = [(symbol, t, 0.0001, px, t + 5_000) for t in _every(start_ms - 86_400_000, end_ms, 8 * 3_600_000)]

    q = conn.executemany
    q("INSERT INTO binance_agg_trades VALUES (?,?,?,?,?,?,?,?,?,?)", agg)
    q("INSERT INTO binance_book_ticker VALUES (?,?,?,?,?,?,?,?)", book)
    q("INSERT INTO binance_mark_price VALUES (?,?,?,?,?,?,?)", mark)
    q("INSERT INTO binance_liquidations VALUES (?,?,?,?,?,?,?,?,?,?)", liq)
    q("INSERT INTO upbit_trades VALUES (?,?,?,?,?,?,?)", up_tr)
    q("INSERT INTO upbit_orderbook VALUES (?,?,?,?,?,?,?,?,?,?)", up_ob)
    q("INSERT INTO binance_open_interest VALUES (?,?,?,?)", oi)
    q("INSERT INTO binance_premium_index VALUES (?,?,?,?,?,?,?,?)", prem)
    q("INSERT INTO binance_ratios VALUES (?,?,?,?,?,?,?,?)", ratios)
    q("INSERT INTO binance_funding_rate VALUES (?,?,?,?,?)", funding)

    calls = [(t + i * 250, call_endpoint(path, asset), 200, 1, 120, 2, None)
             for t in _every(start_ms, end_ms, 60_000, 5_000) for i, path in enumerate(CG_PATHS)]
    q("INSERT INTO coinglass_call_status (ts_ms, endpoint, http_status, ok, latency_ms, rows, error) "
      "VALUES (?,?,?,?,?,?,?)", calls)
    if shared:
        q(STATS_SQL, whole_service_stats(start_ms, end_ms, (80, 40)))
        q("INSERT INTO service_runs (service, pid, start_ts_ms) VALUES (?,?,?)",
          [(s, 100 + i, start_ms) for i, s in enumerate(COLLECTORS)])


def fill_derived(conn: sqlite3.Connection, start_ms: int, end_ms: int, seed: int = 2, asset: str = "BTC") -> None:
    """One plausible market_1s and predictions row of `asset` per second in (start, end]."""
    rnd = random.Random(_asset_seed(seed, asset))
    usd = PRICE_USD.get(asset, 10.0)
    close = round(usd * 1_400.0 * 1.024, 0)
    tick = 1000.0 if usd >= 10_000 else 1.0
    m_rows, p_rows = [], []
    for t in _every(start_ms, end_ms, 1000):
        traded = rnd.random() < 0.7
        prev = close
        if traded:
            close = round(close * math.exp(rnd.gauss(0, 1e-4)), 0)
            o, h, ln, v = prev, max(prev, close), min(prev, close), close
        else:
            o = h = ln = v = None
        bid, ask = close - tick, close + tick
        m_rows.append((asset, t, o, h, ln, close, 0.01 if traded else 0.0, 2 if traded else 0, v,
                       0.006 if traded else 0.0, 0.004 if traded else 0.0, int(traded), 300,
                       bid, ask, close, 2 * tick / close * 1e4, 0.1, 120, usd, 80, usd, usd * 0.99983, 0.0001, 400,
                       1_400.0, 5_000, close / (usd * 1_400.0) - 1))
        r = rnd.gauss(0, 1e-4)
        p_rows.append((asset, t, 120, "baseline", r * 10, r, r, r, r, r, 1e-4, 1e-4, 0.1, -0.2, 0.1, 2.3,
                       0.024, 1e-4, r, r, r, r, 1.6, 0.0001, 0.001, 1.1, 0.0, 0.002, 0.01))
    conn.executemany(f"INSERT INTO market_1s VALUES ({','.join('?' * 28)})", m_rows)
    conn.executemany(f"INSERT INTO predictions VALUES ({','.join('?' * 29)})", p_rows)


def make_healthy_db(path: Path, as_of_ms: int = AS_OF, span_s: int = SPAN_S, derived: bool = True,
                    assets: tuple[str, ...] = ("BTC",)) -> Path:
    """Every asset of `assets` healthy over (as_of - span, as_of]; KRW-USDT and the bookkeeping once."""
    path = Path(path)
    conn = cdb.open_db(path)
    try:
        conn.execute("BEGIN")
        for i, asset in enumerate(assets):
            fill_raw(conn, as_of_ms - span_s * 1000, as_of_ms, asset=asset, shared=i == 0)
            if derived:
                fill_derived(conn, as_of_ms - span_s * 1000, as_of_ms, asset=asset)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return path


def copy_db(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst


def execute(path: Path, sql: str, params=()) -> int:
    conn = sqlite3.connect(path)
    try:
        cur = conn.execute(sql, params)
        conn.commit()
        return cur.rowcount
    finally:
        conn.close()


# ------------------------------------------------------------------------------ running checks in-process
COINGLASS_OK_ENV = {"COINGLASS_ENABLED": "true", "COINGLASS_API_KEY": "cg-test-key-0123456789abcdef"}


def settings_for(path: Path, **env: str):
    from cqt.config import load_settings

    return load_settings({"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(path), **{k: str(v) for k, v in env.items()}})


def run(check: str, path: Path, as_of_ms: int = AS_OF, window_s: int = 600, assets: tuple[str, ...] = (), **env: str):
    """Run one check in-process (same code path as the program) and return its CheckResult;
    `assets`: what --symbol would judge (default every asset of CQT_SYMBOLS)."""
    import importlib

    from cqt.checks import CHECKS
    from cqt.checks.base import run_check

    module = dict(CHECKS)[check]
    evaluate = importlib.import_module(module).evaluate
    return run_check(check, evaluate, settings_for(path, **env), as_of_ms, window_s, assets=assets)


def metric(res, name: str):
    for m in res.metrics:
        if m.name == name:
            return m
    raise AssertionError(f"no metric {name!r} in {[m.name for m in res.metrics]}")


def failed_names(res) -> list[str]:
    return [m.name for m in res.failed]


# ------------------------------------------------------------------------------ a database for the leak check
LEAK_ENV = {"CQT_COINGLASS_INTERVAL": "5m"}   # 5 m Coinglass bars: several inside a 10 min window


def make_raw(path: Path, as_of_ms: int = AS_OF, span_s: int = SPAN_S, seed: int = 3,
             assets: tuple[str, ...] = ("BTC",)) -> Path:
    """Raw tables only, from the shared generator (tests/fixtures_raw.py)."""
    from fixtures_raw import make_raw_db

    make_raw_db(path, as_of_ms - span_s * 1000, span_s, seed=seed,
                coinglass_interval=LEAK_ENV["CQT_COINGLASS_INTERVAL"], assets=assets)
    return Path(path)


def store_features(path: Path, t_from_ms: int, t_to_ms: int, compute=None, asset: str = "BTC") -> None:
    """Fill `asset`'s market_1s/predictions for [t_from, t_to] with `compute` (default: THE feature
    function, cqt.features.compute_range, looked up at call time so a test can wrap it), like --rebuild."""
    from cqt import features
    from cqt.featureparams import params_for

    compute = compute or features.compute_range
    params = params_for(settings_for(path, **LEAK_ENV, CQT_SYMBOLS=asset), asset)
    conn = cdb.connect(path)
    try:
        res = compute(conn, t_from_ms, t_to_ms, params)
        mc, pc = features.MARKET_COLUMNS, features.PREDICTION_COLUMNS
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM market_1s WHERE symbol = ? AND ts_ms BETWEEN ? AND ?", (asset, t_from_ms, t_to_ms))
        conn.execute("DELETE FROM predictions WHERE symbol = ? AND ts_ms BETWEEN ? AND ?",
                     (asset, t_from_ms, t_to_ms))
        conn.executemany(f"INSERT INTO market_1s ({', '.join(mc)}) VALUES ({', '.join('?' * len(mc))})",
                         res.market_rows())
        conn.executemany(f"INSERT INTO predictions ({', '.join(pc)}) VALUES ({', '.join('?' * len(pc))})",
                         res.prediction_rows())
        conn.execute("COMMIT")
    finally:
        conn.close()


def add_bookkeeping(path: Path, as_of_ms: int = AS_OF, span_s: int = SPAN_S,
                    assets: tuple[str, ...] = ("BTC",)) -> None:
    """What the generator of fixtures_raw leaves out: frame counters per heartbeat, service
    runs, and the funding history a poller fetches on its first start (per asset)."""
    from fixtures_raw import PRICE_USD as RAW_PRICE_USD

    start = as_of_ms - span_s * 1000
    conn = sqlite3.connect(path)
    try:
        conn.executemany(STATS_SQL, whole_service_stats(start, as_of_ms, (250, 90)))
        conn.executemany("INSERT OR IGNORE INTO service_runs (service, pid, start_ts_ms) VALUES (?,?,?)",
                         [(s, 200 + i, start) for i, s in enumerate(COLLECTORS)])
        for asset in assets:
            conn.executemany("INSERT OR IGNORE INTO binance_funding_rate VALUES (?,?,?,?,?)",
                             [(f"{asset}USDT", t, 0.0001, RAW_PRICE_USD.get(asset, 10.0), t + 5_000)
                              for t in _every(as_of_ms - 86_400_000, as_of_ms, 8 * 3_600_000)])
        conn.commit()
    finally:
        conn.close()


def make_pipeline_db(path: Path, as_of_ms: int = AS_OF, span_s: int = SPAN_S, window_s: int = 600,
                     assets: tuple[str, ...] = ("BTC",)) -> Path:
    """A healthy pipeline for all four checks: raw (fixtures_raw) + bookkeeping + features
    computed by cqt.features for the window, for each asset. Pass LEAK_ENV and COINGLASS_OK_ENV
    (and symbols_env(assets) for several assets) to the checks."""
    make_raw(path, as_of_ms, span_s, assets=assets)
    add_bookkeeping(path, as_of_ms, span_s, assets)
    for asset in assets:
        store_features(path, as_of_ms - (window_s - 1) * 1000, as_of_ms, asset=asset)
    return Path(path)
