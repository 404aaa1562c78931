"""Synthetic raw market data for tests: every raw table, plausible values, realistic rates.

    from fixtures_raw import make_raw_db, RawGenerator, insert_rows
    info = make_raw_db(tmp_path / "cqt.db", start_ms, seconds=3600, seed=1)   # ~2-3 s for an hour
    make_raw_db(path, start_ms, 600, seed=1, assets=("BTC", "ETH", "SOL"))    # three assets

`make_raw_db(path, start_ms, seconds, seed, *, rates=None, coinglass_interval="1h",
history=True, assets=("BTC",))` creates (migrates) the database at `path` and fills
[start_ms, start_ms + seconds*1000) with what the four collectors would have stored, for
each asset (KRW-<asset>, <asset>USDT, Coinglass coin <asset> and its calls in
coinglass_call_status as `<path>?coin=<asset>`; KRW-USDT once, with the first asset):

| table                    | rate / shape (defaults, `rates=` overrides by key)                          |
|--------------------------|------------------------------------------------------------------------------|
| upbit_trades KRW-<asset> | Poisson 3/s ("upbit_trades"); price = USD price x KRW/USDT x (1+premium), KRW tick |
| upbit_trades KRW-USDT    | Poisson 0.2/s ("usdt_trades")                                                 |
| upbit_orderbook KRW-<a>  | Poisson 5/s ("upbit_orderbook"); bid/ask around the price, level-size sums    |
| upbit_ticker KRW-<asset> | 1/s ("upbit_ticker")                                                          |
| binance_agg_trades       | Poisson 10/s ("binance_agg_trades"); ids strictly increasing                  |
| binance_mark_price       | every second (markPrice@1s): mark, index, funding                             |
| binance_book_ticker      | Poisson 10/s ("book_ticker")                                                  |
| binance_liquidations     | Poisson 1/120 s ("liquidations")                                              |
| binance_open_interest    | every 10 s (ts = answer time, recv a few ms later)                            |
| binance_ratios           | 4 kinds, period 5m, ts = period start, polled 5-15 s after the period end     |
| binance_premium_index    | every 60 s                                                                   |
| binance_funding_rate     | at 00/08/16 UTC                                                               |
| coinglass_* (4 tables)   | bars of `coinglass_interval`, received 20-50 s after close; + call status rows |

With `history=True` the polled series (ratios, Coinglass) also hold the history a
collector backfills on its first poll (30 min of ratios, 2 bars of Coinglass before
start), so features with long look-backs have data from the start.

Stream rows get recv_ts_ms = event time + 20..80 ms. Everything is deterministic for a
seed, and each asset's rows for a seed are the same whatever other assets are generated
beside it (each asset has its own random stream: `asset_seed(seed, asset)`), so a database
of BTC alone and one of BTC, ETH and SOL hold the same BTC rows.
`RawGenerator(start_ms, seconds, seed, asset="BTC").rows(a_ms, b_ms)` yields the same kind
of rows for any sub-interval (the live-equals-rebuild test feeds it in real time) and
`insert_rows(conn, rows)` writes such a dict with INSERT OR IGNORE.
"""
from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from cqt.db import open_db
from cqt.venues.coinglass import call_endpoint

DEFAULT_RATES = {
    "upbit_trades": 3.0, "usdt_trades": 0.2, "upbit_orderbook": 5.0, "upbit_ticker": 1.0,
    "binance_agg_trades": 10.0, "book_ticker": 10.0, "liquidations": 1 / 120,
}
INTERVAL_MS = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
               "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000}
RATIO_PERIOD_MS = 300_000
RATIO_KINDS = ("global_long_short", "top_long_short_position", "taker_buy_sell", "open_interest_hist")

# The column lists of the raw tables, in insert order (SQL below binds one "?" per column).
COLUMNS = {
    "upbit_trades": "code, sequential_id, trade_ts_ms, price, volume, side, recv_ts_ms",
    "upbit_orderbook": ("code, ts_ms, best_bid, best_ask, best_bid_size, best_ask_size, total_bid_size, "
                        "total_ask_size, levels, recv_ts_ms"),
    "upbit_ticker": ("code, ts_ms, trade_ts_ms, trade_price, prev_closing_price, acc_trade_volume_24h, "
                     "acc_trade_price_24h, recv_ts_ms"),
    "binance_agg_trades": ("symbol, agg_id, trade_ts_ms, price, qty, side, first_trade_id, last_trade_id, "
                           "event_ts_ms, recv_ts_ms"),
    "binance_mark_price": "symbol, event_ts_ms, mark_price, index_price, funding_rate, next_funding_ts_ms, recv_ts_ms",
    "binance_book_ticker": "symbol, update_id, event_ts_ms, bid_price, bid_qty, ask_price, ask_qty, recv_ts_ms",
    "binance_liquidations": ("symbol, event_ts_ms, trade_ts_ms, side, price, avg_price, qty, filled_qty, status, "
                             "recv_ts_ms"),
    "binance_open_interest": "symbol, ts_ms, open_interest, recv_ts_ms",
    "binance_ratios": "symbol, kind, period, ts_ms, value, value2, value3, recv_ts_ms",
    "binance_premium_index": ("symbol, ts_ms, mark_price, index_price, last_funding_rate, interest_rate, "
                              "next_funding_ts_ms, recv_ts_ms"),
    "binance_funding_rate": "symbol, funding_ts_ms, funding_rate, mark_price, recv_ts_ms",
    "coinglass_open_interest": "symbol, interval, open_ts_ms, avail_ts_ms, open, high, low, close, recv_ts_ms",
    "coinglass_funding": "exchange, symbol, interval, open_ts_ms, avail_ts_ms, open, high, low, close, recv_ts_ms",
    "coinglass_liquidations": ("symbol, exchanges, interval, open_ts_ms, avail_ts_ms, long_liq_usd, short_liq_usd, "
                               "recv_ts_ms"),
    "coinglass_long_short": ("exchange, symbol, interval, open_ts_ms, avail_ts_ms, long_percent, short_percent, "
                             "long_short_ratio, recv_ts_ms"),
    "coinglass_call_status": "ts_ms, endpoint, http_status, ok, latency_ms, rows, error",
}
PLAIN_INSERT = ("coinglass_call_status",)   # no OR IGNORE: every call is its own row


def _insert(table: str, columns: str) -> str:
    verb = "INSERT" if table in PLAIN_INSERT else "INSERT OR IGNORE"
    return f"{verb} INTO {table} ({columns}) VALUES ({','.join('?' * len(columns.split(', ')))})"


SQL = {t: _insert(t, c) for t, c in COLUMNS.items()}

CG_ENDPOINTS = {
    "coinglass_open_interest": "/api/futures/open-interest/aggregated-history",
    "coinglass_funding": "/api/futures/funding-rate/history",
    "coinglass_liquidations": "/api/futures/liquidation/aggregated-history",
    "coinglass_long_short": "/api/futures/global-long-short-account-ratio/history",
}


def _i(a: np.ndarray) -> list[int]:
    return [int(x) for x in a]


#: USD price level of the assets the tests use (any other asset: 10 USD)
PRICE_USD = {"BTC": 60_000.0, "ETH": 3_000.0, "SOL": 150.0}


def asset_seed(seed: int, asset: str) -> int:
    """The random stream of one asset: BTC keeps `seed` itself (the single-asset databases of
    every test stay what they were); other assets get their own, fixed by their name."""
    return seed if asset == "BTC" else seed * 1_000_003 + int.from_bytes(asset.encode(), "big") % 999_983


class RawGenerator:
    """A market model of one asset over [start_ms - margin, start_ms + seconds]: one latent
    USD price path (1-second random walk), KRW per USDT and the kimchi premium moving
    slowly; every venue derives its prices from it. `rows(a, b)` samples the events with
    time in [a, b). `usdt=False`: no KRW-USDT trades (another asset's generator writes them)."""

    def __init__(self, start_ms: int, seconds: int, seed: int = 1, *, rates: dict[str, float] | None = None,
                 coinglass_interval: str = "1h", asset: str = "BTC", usdt_code: str = "KRW-USDT",
                 usdt: bool = True, margin_s: int = 4 * 3600):
        self.start_ms, self.seconds = int(start_ms), int(seconds)
        self.rates = {**DEFAULT_RATES, **(rates or {})}
        self.cg_interval = coinglass_interval
        self.cg_ms = INTERVAL_MS[coinglass_interval]
        self.asset = asset
        self.symbol, self.upbit_code, self.coin = f"{asset}USDT", f"KRW-{asset}", asset
        self.usdt_code, self.usdt = usdt_code, usdt
        self.rng = np.random.default_rng(asset_seed(seed, asset))
        self.t0 = self.start_ms - margin_s * 1000
        n = margin_s + self.seconds + 2
        r = self.rng.standard_normal(n) * 1.5e-4
        self.level = PRICE_USD.get(asset, 10.0)
        self.tick_krw = 1000.0 if self.level >= 10_000 else 1.0    # Upbit's KRW tick at that price
        self.usd = self.level * np.exp(np.cumsum(r))
        self.usdkrw = 1380.0 * np.exp(np.cumsum(self.rng.standard_normal(n) * 2e-6))
        self.prem = 0.02 + 0.003 * np.sin(np.arange(n) / 1800.0) + np.cumsum(self.rng.standard_normal(n) * 2e-6)
        self.oi = 80_000.0 * np.exp(np.cumsum(self.rng.standard_normal(n) * 5e-5))
        self._agg_id = 3_000_000_000
        self._trade_id = 6_000_000_000
        self._update_id = 900_000_000_000

    # -- latent path at millisecond times (linear between seconds) ---------------------------
    def _at(self, arr: np.ndarray, ts: np.ndarray) -> np.ndarray:
        x = (np.asarray(ts, dtype=np.float64) - self.t0) / 1000.0
        return np.interp(x, np.arange(len(arr), dtype=np.float64), arr)

    def usd_price(self, ts): return self._at(self.usd, ts)
    def krw_price(self, ts): return self._at(self.usd, ts) * self._at(self.usdkrw, ts) * (1 + self._at(self.prem, ts))

    def _times(self, rate: float, a: int, b: int) -> np.ndarray:
        n = self.rng.poisson(rate * (b - a) / 1000.0)
        return np.sort(self.rng.integers(a, b, n)) if n else np.zeros(0, dtype=np.int64)

    def _lat(self, n: int, lo: int = 20, hi: int = 80) -> np.ndarray:
        return self.rng.integers(lo, hi, n)

    # -- rows ------------------------------------------------------------------------------------
    def rows(self, a: int, b: int, *, history: bool = False, recv_cap: int | None = None) -> dict[str, list[tuple]]:
        """Rows for events in [a, b). Polled series are emitted at their polling slots in
        [a, b); `history` adds the backfill a collector does on its first poll at `a`.
        `recv_cap`: no recv_ts_ms later than this (a database "as of" that time)."""
        out: dict[str, list[tuple]] = {k: [] for k in SQL}
        rg = self.rng
        cap = (lambda x: x) if recv_cap is None else (lambda x: np.minimum(x, recv_cap))

        # Upbit KRW-<asset> trades
        ts = self._times(self.rates["upbit_trades"], a, b)
        if len(ts):
            px = np.round(self.krw_price(ts) * (1 + rg.normal(0, 2e-5, len(ts))) / self.tick_krw) * self.tick_krw
            vol = np.round(rg.lognormal(-4.5, 1.0, len(ts)), 8)
            side = np.where(rg.random(len(ts)) < 0.5, "buy", "sell")
            seq = ts * 1000 + np.arange(len(ts)) % 1000
            recv = cap(ts + self._lat(len(ts)))
            out["upbit_trades"] += list(zip([self.upbit_code] * len(ts), _i(seq), _i(ts), px.tolist(), vol.tolist(),
                                            side.tolist(), _i(recv)))
        # Upbit KRW-USDT trades (drawn either way: the asset's other rows do not depend on `usdt`)
        ts = self._times(self.rates["usdt_trades"], a, b)
        if len(ts):
            px = np.round(self._at(self.usdkrw, ts) * (1 + self._at(self.prem, ts) * 0.9) * 2) / 2
            vol = np.round(rg.lognormal(4, 1.2, len(ts)), 4)
            side = np.where(rg.random(len(ts)) < 0.5, "buy", "sell")
            recv = cap(ts + self._lat(len(ts)))
        if len(ts) and self.usdt:
            out["upbit_trades"] += list(zip([self.usdt_code] * len(ts), _i(ts * 1000 + 7), _i(ts), px.tolist(),
                                            vol.tolist(), side.tolist(), _i(recv)))
        # Upbit order book
        ts = np.unique(self._times(self.rates["upbit_orderbook"], a, b))
        if len(ts):
            mid = self.krw_price(ts)
            bid = np.floor(mid / self.tick_krw) * self.tick_krw
            ask = bid + self.tick_krw * rg.integers(1, 3, len(ts))
            bs, as_ = np.round(rg.lognormal(-1, 0.8, len(ts)), 8), np.round(rg.lognormal(-1, 0.8, len(ts)), 8)
            tbs = np.round(bs + rg.lognormal(1.5, 0.4, len(ts)), 8)
            tas = np.round(as_ + rg.lognormal(1.5, 0.4, len(ts)), 8)
            recv = cap(ts + self._lat(len(ts)))
            out["upbit_orderbook"] += list(zip([self.upbit_code] * len(ts), _i(ts), bid.tolist(), ask.tolist(),
                                               bs.tolist(),
                                               as_.tolist(), tbs.tolist(), tas.tolist(), [15] * len(ts), _i(recv)))
        # Upbit ticker
        ts = np.unique(self._times(self.rates["upbit_ticker"], a, b))
        if len(ts):
            px = np.round(self.krw_price(ts) / self.tick_krw) * self.tick_krw
            recv = cap(ts + self._lat(len(ts)))
            out["upbit_ticker"] += list(zip([self.upbit_code] * len(ts), _i(ts), _i(ts - 50), px.tolist(),
                                            (px * 0.99).tolist(), [1234.5] * len(ts), (px * 1234.5).tolist(), _i(recv)))
        # Binance aggTrades
        ts = self._times(self.rates["binance_agg_trades"], a, b)
        if len(ts):
            n = len(ts)
            px = np.round(self.usd_price(ts) * (1 + rg.normal(0, 1e-5, n)), 1)
            qty = np.round(rg.lognormal(-4, 1.2, n) + 0.001, 3)
            ids = self._agg_id + np.arange(n)
            self._agg_id += n
            k = rg.integers(1, 4, n)
            first = self._trade_id + np.concatenate(([0], np.cumsum(k)[:-1]))
            self._trade_id += int(k.sum())
            ev = ts + rg.integers(0, 5, n)
            recv = cap(ev + self._lat(n, 5, 50))
            side = np.where(rg.random(n) < 0.5, "buy", "sell")
            out["binance_agg_trades"] += list(zip([self.symbol] * n, _i(ids), _i(ts), px.tolist(), qty.tolist(),
                                                  side.tolist(), _i(first), _i(first + k - 1), _i(ev), _i(recv)))
        # mark price every second (event a few ms after the second)
        secs = np.arange(-(-a // 1000) * 1000, b, 1000, dtype=np.int64)
        if len(secs):
            ev = secs + rg.integers(0, 8, len(secs))
            ev = ev[ev < b]
            if len(ev):
                idx = self.usd_price(ev)
                mark = np.round(idx * (1 + 2e-4 + rg.normal(0, 3e-5, len(ev))), 2)
                fr = np.round(1e-4 + 2e-5 * np.sin(ev / 3.6e6), 8)
                nxt = (ev // 28_800_000 + 1) * 28_800_000
                recv = cap(ev + self._lat(len(ev)))
                out["binance_mark_price"] += list(zip([self.symbol] * len(ev), _i(ev), mark.tolist(),
                                                      np.round(idx, 2).tolist(),
                                                      fr.tolist(), _i(nxt), _i(recv)))
        # book ticker
        ts = self._times(self.rates["book_ticker"], a, b)
        if len(ts):
            n = len(ts)
            px = self.usd_price(ts)
            bid = np.round(px - 0.05, 1)
            uid = self._update_id + np.cumsum(rg.integers(1, 50, n))
            self._update_id = int(uid[-1])
            recv = cap(ts + self._lat(n, 5, 40))
            out["binance_book_ticker"] += list(zip([self.symbol] * n, _i(uid), _i(ts), bid.tolist(),
                                                   np.round(rg.lognormal(0, 1, n), 3).tolist(), (bid + 0.1).tolist(),
                                                   np.round(rg.lognormal(0, 1, n), 3).tolist(), _i(recv)))
        # liquidations
        ts = np.unique(self._times(self.rates["liquidations"], a, b))
        if len(ts):
            n = len(ts)
            px = np.round(self.usd_price(ts), 1)
            q = np.round(rg.lognormal(-2, 1, n) + 0.001, 3)
            side = np.where(rg.random(n) < 0.5, "buy", "sell")
            recv = cap(ts + self._lat(n))
            out["binance_liquidations"] += list(zip([self.symbol] * n, _i(ts), _i(ts - 3), side.tolist(), px.tolist(),
                                                    px.tolist(),
                                                    q.tolist(), q.tolist(), ["FILLED"] * n, _i(recv)))
        # open interest every 10 s
        for slot in range(-(-a // 10_000) * 10_000, b, 10_000):
            oi = round(float(self._at(self.oi, [slot])[0]), 3)
            out["binance_open_interest"].append((self.symbol, slot, oi, int(cap(slot + 40 + int(rg.integers(0, 60))))))
        # premium index every 60 s, funding history at 00/08/16 UTC
        for slot in range(-(-a // 60_000) * 60_000, b, 60_000):
            p = float(self.usd_price([slot])[0])
            out["binance_premium_index"].append((self.symbol, slot, round(p * 1.0002, 2), round(p, 2), 1e-4, 1e-4,
                                                 (slot // 28_800_000 + 1) * 28_800_000, int(cap(slot + 60))))
        for slot in range(-(-a // 28_800_000) * 28_800_000, b, 28_800_000):
            out["binance_funding_rate"].append((self.symbol, slot, 1e-4, round(float(self.usd_price([slot])[0]), 2),
                                                int(cap(slot + 30_000))))
        # ratios: period p (ts = period start) polled 5-15 s after its end
        # (jitter is a function of the slot, so chunked generation never loses or repeats one)
        first_p = (a - (7 if history else 2) * RATIO_PERIOD_MS) // RATIO_PERIOD_MS * RATIO_PERIOD_MS
        for p in range(first_p, b, RATIO_PERIOD_MS):
            poll = p + RATIO_PERIOD_MS + 5_000 + (p // RATIO_PERIOD_MS * 7919) % 10_000
            if history and poll < a:
                poll = a + 5_000          # backfilled on the first poll
            if not a <= poll < b:
                continue
            price = float(self.usd_price([p])[0])
            longs = 0.55 + 0.1 * math.sin(p / 7.2e6) + float(rg.normal(0, 0.005))
            oi = float(self._at(self.oi, [p])[0])
            buyv, sellv = float(rg.lognormal(4, 0.3)), float(rg.lognormal(4, 0.3))
            vals = {
                "global_long_short": (longs / (1 - longs), longs, 1 - longs),
                "top_long_short_position": (longs * 1.1 / (1 - longs), longs, 1 - longs),
                "taker_buy_sell": (buyv / sellv, buyv, sellv),
                "open_interest_hist": (oi, oi * price, None),
            }
            for kind in RATIO_KINDS:
                v = vals[kind]
                out["binance_ratios"].append((self.symbol, kind, "5m", p, round(v[0], 6), round(v[1], 6),
                                              None if v[2] is None else round(v[2], 6), int(cap(poll))))
        # Coinglass bars of the interval, fetched 20-50 s after close
        step = self.cg_ms
        first_o = (a - (3 if history else 2) * step) // step * step
        for o in range(first_o, b, step):
            close_t = o + step
            fetch = close_t + 20_000 + (o // step * 7919) % 30_000
            if history and fetch < a:
                fetch = a + 10_000
            if not a <= fetch < b:
                continue
            oi0, oi1 = float(self._at(self.oi, [o])[0]) * 95_000, float(self._at(self.oi, [close_t])[0]) * 95_000
            recv = int(cap(fetch))
            out["coinglass_open_interest"].append((self.coin, self.cg_interval, o, close_t, round(oi0, 2),
                                                    round(max(oi0, oi1) * 1.001, 2),
                                                   round(min(oi0, oi1) * 0.999, 2), round(oi1, 2), recv))
            f0, f1 = 1e-4 + 1e-5 * math.sin(o / 1e7), 1e-4 + 1e-5 * math.sin(close_t / 1e7)
            out["coinglass_funding"].append(("Binance", self.symbol, self.cg_interval, o, close_t, round(f0, 8),
                                             round(max(f0, f1), 8),
                                             round(min(f0, f1), 8), round(f1, 8), recv))
            out["coinglass_liquidations"].append((self.coin, "Binance,OKX,Bybit", self.cg_interval, o, close_t,
                                                  round(float(rg.lognormal(12, 1)), 2),
                                                  round(float(rg.lognormal(12, 1)), 2), recv))
            lp = 50 + float(rg.normal(0, 3))
            out["coinglass_long_short"].append(("Binance", self.symbol, self.cg_interval, o, close_t, round(lp, 2),
                                                round(100 - lp, 2),
                                                round(lp / (100 - lp), 4), recv))
            for ep in CG_ENDPOINTS.values():   # the poller's call log: `<path>?coin=<COIN>`
                out["coinglass_call_status"].append((recv, call_endpoint(ep, self.coin), 200, 1, 120, 2, None))
        return out


def insert_rows(conn: sqlite3.Connection, rows: dict[str, list[tuple]]) -> int:
    """INSERT OR IGNORE every table's rows in one transaction; returns rows offered."""
    n = 0
    conn.execute("BEGIN IMMEDIATE")
    try:
        for table, rs in rows.items():
            if rs:
                conn.executemany(SQL[table], rs)
                n += len(rs)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return n


def make_raw_db(path: str | Path, start_ms: int, seconds: int, seed: int = 1, *,
                rates: dict[str, float] | None = None, coinglass_interval: str = "1h",
                history: bool = True, chunk_s: int = 3600, assets: tuple[str, ...] = ("BTC",),
                usdt: bool = True) -> dict[str, Any]:
    """Create/migrate the database at `path` and fill [start_ms, start_ms + seconds*1000)
    with synthetic raw rows of each asset (see the module docstring); KRW-USDT with the first
    asset (`usdt=False`: none). Returns {"start_ms", "end_ms", "rows": {table: n},
    "generator": the first asset's RawGenerator, "generators": {asset: RawGenerator}}."""
    start_ms = int(start_ms)
    end_ms = start_ms + int(seconds) * 1000
    gens = {a: RawGenerator(start_ms, seconds, seed, rates=rates, coinglass_interval=coinglass_interval, asset=a,
                            usdt=usdt and i == 0) for i, a in enumerate(assets)}
    conn = open_db(path)
    counts: dict[str, int] = {}
    try:
        for gen in gens.values():
            a = start_ms
            first = True
            while a < end_ms:
                b = min(end_ms, a + chunk_s * 1000)
                rows = gen.rows(a, b, history=history and first, recv_cap=end_ms)
                insert_rows(conn, rows)
                for k, v in rows.items():
                    counts[k] = counts.get(k, 0) + len(v)
                a, first = b, False
    finally:
        conn.close()
    return {"start_ms": start_ms, "end_ms": end_ms, "rows": counts, "generator": gens[assets[0]],
            "generators": gens}


def at(ms: int):
    """Epoch ms -> an aware UTC datetime (for freezegun)."""
    from datetime import datetime, timezone
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


class DirectWriter:
    """What svc.writer.call does, synchronously: fn(conn) inside one write transaction."""

    def __init__(self, path):
        from cqt.db import open_db
        self.conn = open_db(path)

    def __call__(self, fn):
        self.conn.execute("BEGIN IMMEDIATE")
        fn(self.conn)
        self.conn.execute("COMMIT")


def same_value(a, b) -> bool:
    """Live-vs-rebuild equality: NULL only equals NULL; floats within 1e-12."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)
    return a == b
