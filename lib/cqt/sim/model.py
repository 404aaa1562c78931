"""Deterministic market model behind cqt-sim: the market's dynamics only.

One latent BTCUSDT path (random walk in 100 ms steps with volatility regimes,
bursts of activity and occasional jumps) is the market; every other asset served
(`assets`: ETHUSDT, SOLUSDT, …) follows its steps with a beta plus its own noise. Each
asset (a `Leg`) has:

* Binance USD-M <A>USDT: aggregate trades, book ticker, mark/index price and
  funding every second, occasional liquidations (forceOrder);
* Upbit KRW-<A> = <A>USDT x (KRW per USDT) x (1 + kimchi premium), lagging the
  futures by one second, with its own trades, order book and ticker; KRW-USDT
  trades near a configurable rate (always served);
* slow series (open interest, long/short ratios, funding, premium, FX) are
  smooth deterministic functions of time, so they exist before the model's
  start too (REST history, Coinglass bars).

Time is cut in one-second blocks (`blocks.gen_block`).  Block k's random numbers
come from ``Random(seed, k)`` and its start state from the block before, so every
block is the same whatever order or chunking the caller asks in.  Blocks are
generated forward once (a compact per-second history and a state checkpoint every
60 s are kept); any older block is regenerated from its checkpoint on demand.

The model knows no wire format: `cqt.sim.market.Market` formats its blocks the way
each venue sends them and answers REST from it.
"""
from __future__ import annotations

import bisect
import math
import random
from array import array
from collections import OrderedDict
from typing import Iterator

from .assets import MARKET, USDT_CODE, parse_assets, spec_for
from .blocks import (
    BTC_SPEC,
    DAY_MS,
    FUNDING_MS,
    KRW_BTC,
    KRW_USDT,
    Block,
    State,
    binance_leg,
    gen_block,
    initial_alt_state,
    initial_state,
    upbit_leg,
)

__all__ = ["CHECKPOINT_EVERY", "DAY_MS", "FUNDING_MS", "Block", "Leg", "MarketModel", "Series", "Smooth"]

CHECKPOINT_EVERY = 60


class Smooth:
    """A smooth deterministic function of time in [-1, 1]: a sum of sines with
    seeded periods and phases (random access, no state)."""

    def __init__(self, rng: random.Random, lo_s: float, hi_s: float, n: int = 6):
        self.terms = []
        for _ in range(n):
            period = math.exp(rng.uniform(math.log(lo_s), math.log(hi_s)))
            self.terms.append((rng.uniform(0.4, 1.0), 2 * math.pi / (period * 1000.0),
                               rng.uniform(0, 2 * math.pi)))
        self.norm = sum(a for a, _, _ in self.terms)

    def __call__(self, t_ms: float) -> float:
        sin = math.sin
        return sum(a * sin(w * t_ms + ph) for a, w, ph in self.terms) / self.norm


class Series:
    """One asset's slow series: smooth functions of time, so they exist before the model's
    start too (REST history, Coinglass bars). BTC's levels are the original model's."""

    def __init__(self, srng: random.Random, oi_coins: float, fund_amp: float = 0.00009, ls_mid: float = 0.62,
                 top_mid: float = 0.55):
        self.s_basis = Smooth(srng, 600, 86400)
        self.s_fund = Smooth(srng, 3600, 4 * 86400)
        self.s_oi = Smooth(srng, 7200, 5 * 86400)
        self.s_oi_fast = Smooth(srng, 60, 1800)
        self.s_ls = Smooth(srng, 3600, 3 * 86400)
        self.s_top = Smooth(srng, 3600, 3 * 86400)
        self.s_taker = Smooth(srng, 300, 86400)
        self.s_act = Smooth(srng, 1800, 86400)
        self.s_pre = Smooth(srng, 6 * 3600, 10 * 86400)
        self.s_liq = Smooth(srng, 600, 86400)
        self.oi_coins = oi_coins
        self.fund_amp = fund_amp
        self.ls_mid = ls_mid
        self.top_mid = top_mid

    def basis(self, t_ms: float) -> float:
        """(mark - index) / index."""
        return 0.0002 + 0.00015 * self.s_basis(t_ms)

    def funding(self, t_ms: float) -> float:
        """Current (predicted) funding rate per 8 h, rounded like Binance."""
        return round(0.0001 + self.fund_amp * self.s_fund(t_ms), 8)

    def open_interest(self, t_ms: float) -> float:
        """Binance open interest in coins."""
        return self.oi_coins * (1 + 0.06 * self.s_oi(t_ms) + 0.004 * self.s_oi_fast(t_ms))

    def long_account(self, t_ms: float) -> float:
        return self.ls_mid + 0.09 * self.s_ls(t_ms)

    def top_long_position(self, t_ms: float) -> float:
        return self.top_mid + 0.08 * self.s_top(t_ms)

    def activity(self, t_ms: float) -> float:
        return 1.0 + 0.25 * self.s_act(t_ms)


class Leg:
    """One asset of the model: its symbols (BTCUSDT, KRW-BTC), facts, slow series, the
    compact per-second history of what was generated, and its trade queries."""

    def __init__(self, model: "MarketModel", asset: str, srng: random.Random | None = None):
        self.model = model
        self.asset = asset
        market = asset == MARKET
        self.spec = BTC_SPEC if market else spec_for(asset, model.seed)
        self.symbol = self.spec.symbol
        self.code = self.spec.code
        if market:                      # the model's own generator, in its original order
            self.series = Series(srng, 82000.0)
            self.x_init = srng.uniform(math.log(66000.0), math.log(94000.0))
            self.x_bar = math.log(80000.0)
            self.prem_off = 0.0
            self.up = KRW_BTC
            self.pre_taker = 2.0
            self.pre_liq = 1.0
        else:
            own = random.Random(f"{model.seed}:{asset}:series")
            price = self.spec.price
            self.series = Series(own, self.spec.oi_usd / price, 0.00013, own.uniform(0.55, 0.72),
                                 own.uniform(0.48, 0.62))
            self.x_bar = math.log(price)
            self.x_init = self.x_bar + own.gauss(0, 0.06)
            self.prem_off = own.uniform(-0.002, 0.004)
            self.up = upbit_leg(self.spec, model.usdt_krw)
            self.init_rng = own
            # pre-history volumes scale with the asset's trade rate and size (BTC: 2 coins/s)
            self.pre_taker = 2.0 * self.spec.rate * self.spec.q_scale * self.spec.step / 0.0245
            self.pre_liq = self.spec.rate * self.spec.q_scale * self.spec.step * price / (0.0245 * 80000.0)
        self.p0 = math.exp(self.x_init)
        self.bn = binance_leg(self.spec)
        self._close = array("d")
        self._cbuy = array("d")
        self._csell = array("d")
        self._cliq_long = array("d")
        self._cliq_short = array("d")
        self._a0 = array("q")

    def record(self, summary: tuple) -> None:
        close, bq, sq, ll, ls, a0 = summary
        n = len(self._close)
        self._close.append(close)
        self._cbuy.append((self._cbuy[n - 1] if n else 0.0) + bq)
        self._csell.append((self._csell[n - 1] if n else 0.0) + sq)
        self._cliq_long.append((self._cliq_long[n - 1] if n else 0.0) + ll)
        self._cliq_short.append((self._cliq_short[n - 1] if n else 0.0) + ls)
        self._a0.append(a0)

    # -------------------------------------------------------------- per-second history
    def price_at(self, t_ms: int) -> float:
        """Fair price at t (last full second before t; smooth pre-history)."""
        m = self.model
        if t_ms <= m.start_ms:
            s_pre = self.series.s_pre
            return self.p0 * math.exp(0.05 * (s_pre(t_ms) - s_pre(m.start_ms)))
        i = (t_ms - 1 - m.start_ms) // 1000
        m.ensure_index(i)
        return self._close[i]

    def _cum(self, arr: array, t_ms: int) -> float:
        """Cumulative value of a per-second series over blocks that ended by t."""
        n = (t_ms - self.model.start_ms) // 1000
        if n <= 0:
            return 0.0
        self.model.ensure_index(n - 1)
        return arr[n - 1]

    def taker_volume(self, t_a: int, t_b: int) -> tuple[float, float]:
        """Binance taker (buy, sell) volume in coins over [t_a, t_b)."""
        s = self.series
        start = self.model.start_ms
        buy = sell = 0.0
        if t_a < start:                      # synthetic before the model started
            pre_b = min(t_b, start)
            secs = (pre_b - t_a) / 1000.0
            rate = self.pre_taker * (1 + 0.15 * s.s_act((t_a + pre_b) / 2))
            share = 0.5 + 0.06 * s.s_taker((t_a + pre_b) / 2)
            buy += secs * rate * share
            sell += secs * rate * (1 - share)
            t_a = pre_b
        if t_b > t_a:
            buy += self._cum(self._cbuy, t_b) - self._cum(self._cbuy, t_a)
            sell += self._cum(self._csell, t_b) - self._cum(self._csell, t_a)
        return buy, sell

    def liquidations(self, t_a: int, t_b: int) -> tuple[float, float]:
        """Binance forceOrder notional (long, short) in USDT over [t_a, t_b)."""
        s = self.series
        start = self.model.start_ms
        lng = sht = 0.0
        if t_a < start:
            pre_b = min(t_b, start)
            secs = (pre_b - t_a) / 1000.0
            mid = (t_a + pre_b) / 2
            rate = (45.0 * (1 + 0.8 * s.s_liq(mid)) + 5) * self.pre_liq
            share = 0.5 + 0.3 * s.s_taker(mid + 1e7)
            lng += secs * rate * share
            sht += secs * rate * (1 - share)
            t_a = pre_b
        if t_b > t_a:
            lng += self._cum(self._cliq_long, t_b) - self._cum(self._cliq_long, t_a)
            sht += self._cum(self._cliq_short, t_b) - self._cum(self._cliq_short, t_a)
        return lng, sht

    # -------------------------------------------------------------- trades for REST backfill
    def agg_trades_between(self, t_a: int, t_b: int, now_ms: int) -> Iterator[tuple]:
        """Binance aggregate trades with t_a <= T <= t_b that happened (E < now), ascending."""
        m = self.model
        t_a = max(t_a, m.retain_start_ms(now_ms))
        t_b = min(t_b, now_ms - 1)
        if t_b < t_a:
            return
        sym = self.symbol
        for k in range(t_a // 1000, t_b // 1000 + 1):
            b = m.block(k)
            if b is None:
                continue
            for tr in b.bn_trades[sym]:
                if t_a <= tr[5] <= t_b and tr[7] < now_ms:
                    yield tr

    def agg_trades_from(self, from_id: int, now_ms: int) -> Iterator[tuple]:
        """Binance aggregate trades with a >= from_id that happened, ascending."""
        m = self.model
        m.ensure(now_ms)
        k_first = max(m.k0, (m.retain_start_ms(now_ms)) // 1000)
        i = bisect.bisect_right(self._a0, from_id) - 1
        k = max(k_first, m.k0 + max(i, 0))
        k_end = (now_ms - 1) // 1000
        sym = self.symbol
        while k <= k_end:
            for tr in m.block(k).bn_trades[sym]:
                if tr[7] >= now_ms:
                    return
                if tr[0] >= from_id:
                    yield tr
            k += 1


# ------------------------------------------------------------------ the model
class MarketModel:
    """Deterministic market for one seed and clock origin.

    seed       any int; the same seed + origin + assets give the same frames byte for byte.
    origin_ms  the model clock's origin ("now" when the sim starts; `--start`).
    history_s  the model starts this many seconds before origin; REST serves it.
    speed      model seconds per wall second (used by the server's clock only).
    retain_s   how far back REST serves trades (default history + 2 h).
    usdt_krw   centre of the KRW-per-USDT rate (kept within about +/-1.5 %).
    assets     base assets served ("BTC", "ETH", …); BTC's path is always generated (it is
               the market), and served only when listed. BTC alone is the original model.
    cache_blocks  blocks kept formatted in memory, shared by the assets (at least 60).
    """

    def __init__(self, seed: int, origin_ms: int, history_s: int = 3600, speed: float = 1.0,
                 retain_s: int | None = None, usdt_krw: float = 1415.0, cache_blocks: int = 600,
                 assets=(MARKET,)):
        self.seed = int(seed)
        self.origin_ms = int(origin_ms)
        self.history_s = int(history_s)
        self.speed = float(speed)
        self.retain_ms = int((retain_s if retain_s is not None else self.history_s + 7200) * 1000)
        self.usdt_krw = float(usdt_krw)
        self.assets = parse_assets(",".join(assets)) if not isinstance(assets, str) else parse_assets(assets)
        self.k0 = (self.origin_ms - self.history_s * 1000) // 1000
        self.start_ms = self.k0 * 1000
        self.seed_base = (self.seed & 0xFFFFFFFF) << 40
        srng = random.Random(self.seed * 7919 + 17)
        self.s_fx = Smooth(srng, 1800, 4 * 86400)
        self.s_fx_fast = Smooth(srng, 60, 1800)
        self.s_prem = Smooth(srng, 3600, 3 * 86400)
        self.s_prem_fast = Smooth(srng, 120, 3600)
        self.legs: dict[str, Leg] = {MARKET: Leg(self, MARKET, srng)}
        for a in self.assets:
            if a != MARKET:
                self.legs[a] = Leg(self, a)
        self.alt_legs = [self.legs[a] for a in self.assets if a != MARKET]
        self.served = [self.legs[a] for a in self.assets]
        self.by_symbol = {leg.symbol: leg for leg in self.served}
        self.by_code = {leg.code: leg for leg in self.served}
        self.binance_symbols = tuple(leg.symbol for leg in self.served)
        self.upbit_codes = tuple(leg.code for leg in self.served) + (USDT_CODE,)
        self.upbit_legs = {leg.code: leg.up for leg in self.served}
        self.upbit_legs[USDT_CODE] = KRW_USDT
        self._n = 0                              # seconds generated
        self._checkpoints: dict[int, State] = {}
        self._cache: OrderedDict[int, Block] = OrderedDict()
        n = len(self.assets)
        self._cache_max = max(8, int(cache_blocks) if n == 1 else max(min(60, cache_blocks), cache_blocks // n))
        self._next_k = self.k0
        self._state = initial_state(self, srng)
        for leg in self.alt_legs:
            self._state.alts[leg.asset] = initial_alt_state(self, leg, leg.init_rng)

    # -------------------------------------------------------------- market-wide slow series
    def fx(self, t_ms: float) -> float:
        """KRW per USDT (Upbit KRW-USDT fair price)."""
        return self.usdt_krw * (1 + 0.012 * self.s_fx(t_ms) + 0.002 * self.s_fx_fast(t_ms))

    def premium(self, t_ms: float) -> float:
        """Kimchi premium of KRW-BTC over BTCUSDT x KRW-USDT (0.2 % .. 3 %)."""
        p = 0.012 + 0.009 * self.s_prem(t_ms) + 0.0015 * self.s_prem_fast(t_ms)
        return min(0.03, max(0.002, p))

    def leg(self, name: str) -> Leg | None:
        """The served asset named by a base asset, Binance symbol or Upbit code."""
        return self.legs.get(name) if name in self.assets else (self.by_symbol.get(name) or self.by_code.get(name))

    # -------------------------------------------------------------- block store
    def _advance(self) -> Block:
        """Generate the next block in sequence, record its history and checkpoint."""
        k = self._next_k
        if (k - self.k0) % CHECKPOINT_EVERY == 0:
            self._checkpoints[k] = self._state.copy()
        b, summary = gen_block(self, k, self._state)
        legs = self.legs
        for leg in legs.values():
            leg.record(summary[leg.symbol])
        self._n += 1
        self._next_k = k + 1
        self._put_cache(b)
        return b

    def _put_cache(self, b: Block) -> None:
        c = self._cache
        c[b.k] = b
        c.move_to_end(b.k)
        while len(c) > self._cache_max:
            c.popitem(last=False)

    def ensure_index(self, i: int) -> None:
        while self._n <= i:
            self._advance()

    def ensure(self, t_ms: int) -> None:
        """Generate every block that starts before t_ms."""
        k_last = (t_ms - 1) // 1000
        while self._next_k <= k_last:
            self._advance()

    def block(self, k: int) -> Block | None:
        """Block k (None before the model's start)."""
        if k < self.k0:
            return None
        b = self._cache.get(k)
        if b is not None:
            self._cache.move_to_end(k)
            return b
        if k >= self._next_k:
            while self._next_k <= k:
                b = self._advance()
            return b
        ck = k - (k - self.k0) % CHECKPOINT_EVERY
        st = self._checkpoints[ck].copy()
        for kk in range(ck, k + 1):
            bb, _ = gen_block(self, kk, st)
            if kk == k or kk not in self._cache:
                self._put_cache(bb)
            if kk == k:
                b = bb
        return b

    # -------------------------------------------------------------- trades for REST backfill
    def retain_start_ms(self, now_ms: int) -> int:
        return max(self.start_ms, now_ms - self.retain_ms)

    def upbit_trades_before(self, code: str, before_ms: int, now_ms: int,
                            after_sid: int | None = None) -> Iterator[tuple]:
        """Upbit trades of `code`, newest first, with trade time < before_ms, that
        happened (message time < now).  With after_sid: only trades older than that
        trade (the REST cursor)."""
        lo = self.retain_start_ms(now_ms)
        k = (min(before_ms, now_ms) - 1) // 1000
        skipping = after_sid is not None
        while k >= max(self.k0, lo // 1000):
            b = self.block(k)
            for tr in reversed(b.up_trades[code]):
                if skipping:
                    if tr[5] == after_sid:
                        skipping = False
                    continue
                if tr[1] < before_ms and tr[0] < now_ms and tr[1] >= lo:
                    yield tr
            k -= 1

    def upbit_find_sid(self, code: str, sid: int, now_ms: int) -> int | None:
        """The trade time of the trade with this sequential_id, if retained."""
        approx = sid // 1000
        for k in range(approx // 1000, approx // 1000 + 2):
            if k < self.k0 or k * 1000 >= now_ms:
                continue
            for tr in self.block(k).up_trades[code]:
                if tr[5] == sid:
                    return tr[1]
        return None
