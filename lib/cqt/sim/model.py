"""Deterministic market model behind cqt-sim (usable without sockets).

One latent BTCUSDT path (random walk in 100 ms steps with volatility regimes,
bursts of activity and occasional jumps) drives:

* Binance USD-M BTCUSDT: aggregate trades, book ticker, mark/index price and
  funding every second, occasional liquidations (forceOrder);
* Upbit KRW-BTC = BTCUSDT x (KRW per USDT) x (1 + kimchi premium), lagging the
  futures by one second, with its own trades, order book and ticker; KRW-USDT
  trades near a configurable rate;
* slow series (open interest, long/short ratios, funding, premium, FX) are
  smooth deterministic functions of time, so they exist before the model's
  start too (REST history, Coinglass bars).

Time is cut in one-second blocks.  Block k's random numbers come from
``Random(seed, k)`` and its start state from the block before, so every block
is the same whatever order or chunking the caller asks in.  Blocks are generated
forward once (a compact per-second history and a state checkpoint every 16 s
are kept); any older block is regenerated from its checkpoint on demand.

Public API: `MarketModel` (``ws_frames``, ``rest``), the stream-name constants.
"""
from __future__ import annotations

import bisect
import math
import random
import time
from array import array
from collections import OrderedDict
from typing import Iterator

# ------------------------------------------------------------------ names
SYMBOL = "BTCUSDT"
AGG = "btcusdt@aggTrade"
MARK1 = "btcusdt@markPrice@1s"
MARK3 = "btcusdt@markPrice"
BOOK = "btcusdt@bookTicker"
FORCE = "btcusdt@forceOrder"
BINANCE_STREAMS = (AGG, MARK1, BOOK, FORCE)
BINANCE_ALL_STREAMS = BINANCE_STREAMS + (MARK3,)

UPBIT_CODES = ("KRW-BTC", "KRW-USDT")
UPBIT_TYPES = ("trade", "orderbook", "ticker")
UPBIT_STREAMS = tuple(f"{c}@{t}" for c in UPBIT_CODES for t in UPBIT_TYPES)

VENUES = ("upbit", "binance")
FUNDING_MS = 8 * 3600 * 1000
DAY_MS = 86_400_000
CHECKPOINT_EVERY = 60

# ------------------------------------------------------------------ dynamics
_VOLS = (0.9e-4, 1.6e-4, 2.8e-4)        # 1 s log-return std per regime
_ACT = (0.8, 1.2, 2.1)                  # activity multiplier per regime
_REGIME_SWITCH_P = 1 / 1200
_BURST_P = 1 / 90
_JUMP_P = 1 / 2400
_JUMP_STD = 1.5e-3
_BN_RATE = 12.0                         # base aggTrades per second
_BN_BOOK_RATE = 3.0                     # extra bookTicker updates per second
_UP_RATE = {"KRW-BTC": 2.2, "KRW-USDT": 0.45}
# chance per 100 ms slot: the real KRW-BTC book publishes several times a second even when
# quiet (altdata_check holds its fill to >= 0.9 of seconds), KRW-USDT far less often
_UP_OB_P = {"KRW-BTC": 0.5, "KRW-USDT": 0.07}
_UP_OB_PHASE = {"KRW-BTC": 6, "KRW-USDT": 38}    # the real books publish on a 100 ms grid
_UP_TICK = {"KRW-BTC": 1000, "KRW-USDT": 1}
_UP_LEVELS = 30
_THETA = 1 / (5 * 86400)                # mean reversion of log price per second
_XBAR = math.log(80000.0)
_XLO, _XHI = math.log(62000.0), math.log(98000.0)
_SQRT_TENTH = math.sqrt(0.1)

# indices of the per-code Upbit state list
(_N, _LAST, _DAY, _OPEN, _HIGH, _LOW, _PCLOSE, _AVOL, _APRICE, _AASK, _ABID,
 _YVOL, _YPRICE, _H52, _L52, _IDIO, _LTMS) = range(17)


# ------------------------------------------------------------------ formatting helpers
_JD_CACHE: dict[float, str] = {}


def jdbl(x: float) -> str:
    """A double written the way Java's Double.toString does (Upbit's DEFAULT numbers):
    plain between 1e-3 and 1e7 ('3794000.0'), else '1.16539E8' / '5.0E-4'."""
    s = _JD_CACHE.get(x)
    if s is not None:
        return s
    ax = abs(x)
    if ax == 0:
        s = "0.0"
    elif 1e-3 <= ax < 1e7:
        s = repr(float(x))
    else:
        r = repr(float(ax))
        if "e" in r:
            mant, exp_s = r.split("e")
            exp = int(exp_s)
            digits = mant.replace(".", "")
        else:
            ip, fp = r.split(".")
            if ip != "0":
                exp = len(ip) - 1
                digits = ip + fp
            else:
                st = fp.lstrip("0")
                exp = -(len(fp) - len(st) + 1)
                digits = st
        digits = digits.rstrip("0") or "0"
        s = ("-" if x < 0 else "") + digits[0] + "." + (digits[1:] or "0") + "E" + str(exp)
    if len(_JD_CACHE) > 200_000:
        _JD_CACHE.clear()
    _JD_CACHE[x] = s
    return s


def px2(cents: int) -> str:
    """Binance price from integer cents: '67123.40'."""
    return f"{cents // 100}.{cents % 100:02d}"


def qty3(milli: int) -> str:
    """Binance quantity from integer thousandths: '0.014'."""
    return f"{milli // 1000}.{milli % 1000:03d}"


_DT_CACHE: dict[int, tuple] = {}


def utc_parts(ms: int) -> tuple[str, str, str, str]:
    """('2024-03-13', '10:59:31', '20240313', '105931') for epoch ms (UTC)."""
    sec = ms // 1000
    p = _DT_CACHE.get(sec)
    if p is None:
        g = time.gmtime(sec)
        d = f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d}"
        t = f"{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}"
        p = (d, t, d.replace("-", ""), t.replace(":", ""))
        if len(_DT_CACHE) > 50_000:
            _DT_CACHE.clear()
        _DT_CACHE[sec] = p
    return p


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


class _State:
    __slots__ = ("x", "regime", "burst_left", "burst_mult", "prev_path", "agg_id",
                 "trade_id", "bt_u", "last_e", "last_bt_e", "up")

    def copy(self) -> "_State":
        s = _State()
        s.x, s.regime, s.burst_left, s.burst_mult = self.x, self.regime, self.burst_left, self.burst_mult
        s.prev_path = list(self.prev_path)
        s.agg_id, s.trade_id, s.bt_u = self.agg_id, self.trade_id, self.bt_u
        s.last_e, s.last_bt_e = self.last_e, self.last_bt_e
        s.up = {c: list(v) for c, v in self.up.items()}
        return s


class _Block:
    """Everything the model produces in one second [t0, t0 + 1000)."""
    __slots__ = ("k", "t0", "bn_trades", "bn_books", "bn_mark", "bn_force", "up_trades",
                 "up_books", "frames")

    def __init__(self, k: int):
        self.k = k
        self.t0 = k * 1000
        self.frames: dict[str, list] = {}


# ------------------------------------------------------------------ the model
class MarketModel:
    """Deterministic market for one seed and clock origin.

    seed       any int; the same seed + origin give the same frames byte for byte.
    origin_ms  the model clock's origin ("now" when the sim starts; `--start`).
    history_s  the model starts this many seconds before origin; REST serves it.
    speed      model seconds per wall second (used by the server's clock only).
    retain_s   how far back REST serves trades (default history + 2 h).
    usdt_krw   centre of the KRW-per-USDT rate (kept within about +/-1.5 %).
    """

    def __init__(self, seed: int, origin_ms: int, history_s: int = 3600, speed: float = 1.0,
                 retain_s: int | None = None, usdt_krw: float = 1415.0, cache_blocks: int = 600):
        self.seed = int(seed)
        self.origin_ms = int(origin_ms)
        self.history_s = int(history_s)
        self.speed = float(speed)
        self.retain_ms = int((retain_s if retain_s is not None else self.history_s + 7200) * 1000)
        self.usdt_krw = float(usdt_krw)
        self.k0 = (self.origin_ms - self.history_s * 1000) // 1000
        self.start_ms = self.k0 * 1000
        self._seed_base = (self.seed & 0xFFFFFFFF) << 40
        srng = random.Random(self.seed * 7919 + 17)
        self.s_fx = Smooth(srng, 1800, 4 * 86400)
        self.s_fx_fast = Smooth(srng, 60, 1800)
        self.s_prem = Smooth(srng, 3600, 3 * 86400)
        self.s_prem_fast = Smooth(srng, 120, 3600)
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
        self.x_init = srng.uniform(math.log(66000.0), math.log(94000.0))
        self.p0 = math.exp(self.x_init)
        # compact per-second history of everything generated so far
        self._close = array("d")
        self._cbuy = array("d")
        self._csell = array("d")
        self._cliq_long = array("d")
        self._cliq_short = array("d")
        self._a0 = array("q")
        self._checkpoints: dict[int, _State] = {}
        self._cache: OrderedDict[int, _Block] = OrderedDict()
        self._cache_max = max(8, int(cache_blocks))
        self._ob_tables: OrderedDict[tuple, tuple] = OrderedDict()
        self._price_str: dict[int, str] = {}
        self._next_k = self.k0
        self._state = self._initial_state(srng)

    # -------------------------------------------------------------- slow series
    def fx(self, t_ms: float) -> float:
        """KRW per USDT (Upbit KRW-USDT fair price)."""
        return self.usdt_krw * (1 + 0.012 * self.s_fx(t_ms) + 0.002 * self.s_fx_fast(t_ms))

    def premium(self, t_ms: float) -> float:
        """Kimchi premium of KRW-BTC over BTCUSDT x KRW-USDT (0.2 % .. 3 %)."""
        p = 0.012 + 0.009 * self.s_prem(t_ms) + 0.0015 * self.s_prem_fast(t_ms)
        return min(0.03, max(0.002, p))

    def basis(self, t_ms: float) -> float:
        """(mark - index) / index."""
        return 0.0002 + 0.00015 * self.s_basis(t_ms)

    def funding(self, t_ms: float) -> float:
        """Current (predicted) funding rate per 8 h, rounded like Binance."""
        return round(0.0001 + 0.00009 * self.s_fund(t_ms), 8)

    def open_interest(self, t_ms: float) -> float:
        """Binance BTCUSDT open interest in BTC."""
        return 82000.0 * (1 + 0.06 * self.s_oi(t_ms) + 0.004 * self.s_oi_fast(t_ms))

    def long_account(self, t_ms: float) -> float:
        return 0.62 + 0.09 * self.s_ls(t_ms)

    def top_long_position(self, t_ms: float) -> float:
        return 0.55 + 0.08 * self.s_top(t_ms)

    def activity(self, t_ms: float) -> float:
        return 1.0 + 0.25 * self.s_act(t_ms)

    # -------------------------------------------------------------- per-second history
    def price_at(self, t_ms: int) -> float:
        """BTCUSDT fair price at t (last full second before t; smooth pre-history)."""
        if t_ms <= self.start_ms:
            return self.p0 * math.exp(0.05 * (self.s_pre(t_ms) - self.s_pre(self.start_ms)))
        i = (t_ms - 1 - self.start_ms) // 1000
        self._ensure_index(i)
        return self._close[i]

    def _cum(self, arr: array, t_ms: int) -> float:
        """Cumulative value of a per-second series over blocks that ended by t."""
        n = (t_ms - self.start_ms) // 1000
        if n <= 0:
            return 0.0
        self._ensure_index(n - 1)
        return arr[n - 1]

    def taker_volume(self, t_a: int, t_b: int) -> tuple[float, float]:
        """Binance taker (buy, sell) volume in BTC over [t_a, t_b)."""
        buy = sell = 0.0
        if t_a < self.start_ms:                      # synthetic before the model started
            pre_b = min(t_b, self.start_ms)
            secs = (pre_b - t_a) / 1000.0
            rate = 2.0 * (1 + 0.15 * self.s_act((t_a + pre_b) / 2))
            share = 0.5 + 0.06 * self.s_taker((t_a + pre_b) / 2)
            buy += secs * rate * share
            sell += secs * rate * (1 - share)
            t_a = pre_b
        if t_b > t_a:
            buy += self._cum(self._cbuy, t_b) - self._cum(self._cbuy, t_a)
            sell += self._cum(self._csell, t_b) - self._cum(self._csell, t_a)
        return buy, sell

    def liquidations(self, t_a: int, t_b: int) -> tuple[float, float]:
        """Binance forceOrder notional (long, short) in USDT over [t_a, t_b)."""
        lng = sht = 0.0
        if t_a < self.start_ms:
            pre_b = min(t_b, self.start_ms)
            secs = (pre_b - t_a) / 1000.0
            mid = (t_a + pre_b) / 2
            rate = 45.0 * (1 + 0.8 * self.s_liq(mid)) + 5
            share = 0.5 + 0.3 * self.s_taker(mid + 1e7)
            lng += secs * rate * share
            sht += secs * rate * (1 - share)
            t_a = pre_b
        if t_b > t_a:
            lng += self._cum(self._cliq_long, t_b) - self._cum(self._cliq_long, t_a)
            sht += self._cum(self._cliq_short, t_b) - self._cum(self._cliq_short, t_a)
        return lng, sht

    # -------------------------------------------------------------- generation
    def _initial_state(self, srng: random.Random) -> _State:
        s = _State()
        s.x = self.x_init
        s.regime = 1
        s.burst_left = 0
        s.burst_mult = 1.0
        s.prev_path = [self.x_init] * 10
        s.agg_id = 2_100_000_000 + srng.randrange(10_000_000)
        s.trade_id = 5_900_000_000 + srng.randrange(10_000_000)
        s.bt_u = 8_100_000_000_000 + srng.randrange(10_000_000_000)
        s.last_e = 0
        s.last_bt_e = 0
        s.up = {}
        t = self.start_ms
        fx = self.fx(t)
        day_frac = (t % DAY_MS) / DAY_MS
        for code in UPBIT_CODES:
            tick = _UP_TICK[code]
            f = fx if code == "KRW-USDT" else self.p0 * fx * (1 + self.premium(t))
            price = float(int(f / tick) * tick)
            daily_vol = 2000.0 if code == "KRW-BTC" else 3.0e7
            pclose = float(round(f * (1 + srng.gauss(0, 0.012)) / tick) * tick)
            opn = float(round(f * (1 + srng.gauss(0, 0.006)) / tick) * tick)
            hi = max(opn, price, pclose) * (1 + abs(srng.gauss(0, 0.004)))
            lo = min(opn, price, pclose) * (1 - abs(srng.gauss(0, 0.004)))
            avol = daily_vol * day_frac * (1 + srng.gauss(0, 0.05))
            s.up[code] = [
                srng.randrange(1000), price, t // DAY_MS, opn, float(int(hi / tick) * tick),
                float(int(lo / tick) * tick), pclose, avol, avol * f, avol * 0.49, avol * 0.51,
                daily_vol * (1 + srng.gauss(0, 0.05)), daily_vol * f, float(int(f * 1.3 / tick) * tick),
                float(int(f * 0.62 / tick) * tick), 0.0, 0,
            ]
        return s

    def _gen_block(self, k: int, st: _State) -> tuple[_Block, tuple]:
        """Generate block k from state st (mutated to the state of block k + 1)."""
        r = random.Random(self._seed_base | (k & 0xFFFFFFFFFF))
        rnd = r.random
        gauss = r.gauss
        t0 = k * 1000
        b = _Block(k)
        # regime, bursts, jumps
        if rnd() < _REGIME_SWITCH_P:
            st.regime = (st.regime + (1 if rnd() < 0.5 else 2)) % 3
        act = _ACT[st.regime] * self.activity(t0)
        if st.burst_left > 0:
            st.burst_left -= 1
            bm = st.burst_mult
        elif rnd() < _BURST_P:
            st.burst_left = 1 + int(rnd() * 8)
            st.burst_mult = bm = 2.5 + 4.5 * rnd()
        else:
            bm = 1.0
        sig = _VOLS[st.regime] * (1 + 0.08 * (bm - 1))
        sub = sig * _SQRT_TENTH
        x = x0 = st.x
        drift = -_THETA * (x - _XBAR)
        if x > _XHI:
            drift -= 2e-5
        elif x < _XLO:
            drift += 2e-5
        d10 = drift / 10
        jump_at, jump = -1, 0.0
        if rnd() < _JUMP_P:
            jump_at = int(rnd() * 10)
            jump = gauss(0, _JUMP_STD)
        path = [0.0] * 10
        for j in range(10):
            x += d10 + sub * gauss(0, 1)
            if j == jump_at:
                x += jump
            path[j] = x
        st.x = x
        prev_path = st.prev_path
        mids = [math.exp(v) for v in path]

        # ---- Binance aggregate trades
        log = math.log
        exp = math.exp
        lam = _BN_RATE * act * bm * (1 + 200 * abs(jump))
        inv = 1.0 / lam
        trades = []
        buy_q = sell_q = 0
        last_e = st.last_e
        agg_id = st.agg_id
        trade_id = st.trade_id
        t = -log(1.0 - rnd()) * inv
        while t < 0.99:
            T = t0 + int(t * 1000)
            j = (T - t0) // 100
            bid_c = int(mids[j] * 10) * 10
            dx = (path[j] - (path[j - 1] if j else prev_path[9])) / sub
            pbuy = 0.5 + 0.12 * dx
            pbuy = 0.15 if pbuy < 0.15 else (0.85 if pbuy > 0.85 else pbuy)
            buy = rnd() < pbuy
            if bm == 1.0 or rnd() < 0.7:
                pc = bid_c + 10 if buy else bid_c
            else:
                extra = 10 * int(-log(1.0 - rnd()) * 1.25)
                pc = bid_c + 10 + extra if buy else bid_c - extra
            qm = int(24.5 * exp(1.55 * gauss())) + 1
            if qm > 80_000:
                qm = 80_000 - int(rnd() * 5000)
            nf = 1 + int(-log(1.0 - rnd()) * 2.2)
            e = T + 1 + int(rnd() * 8)
            if e < last_e:
                e = last_e
            last_e = e
            trades.append((agg_id, pc, qm, trade_id, trade_id + nf - 1, T, not buy, e))
            agg_id += 1
            trade_id += nf
            if buy:
                buy_q += qm
            else:
                sell_q += qm
            t -= log(1.0 - rnd()) * inv
        st.agg_id = agg_id
        st.trade_id = trade_id
        st.last_e = last_e
        b.bn_trades = trades

        # ---- Binance book ticker: after some trades, plus quiet updates
        bt_times = [tr[5] for tr in trades if rnd() < 0.4]
        inv = 1.0 / (_BN_BOOK_RATE * act)
        t = -log(1.0 - rnd()) * inv
        while t < 0.99:
            bt_times.append(t0 + int(t * 1000))
            t -= log(1.0 - rnd()) * inv
        bt_times.sort()
        books = []
        last_bt = st.last_bt_e
        u = st.bt_u
        for T in bt_times:
            bid_c = int(mids[(T - t0) // 100] * 10) * 10
            u += 1 + int(rnd() * 40)
            e = T + 1 + int(rnd() * 4)
            if e < last_bt:
                e = last_bt
            last_bt = e
            books.append((e, T, u, bid_c, 1 + int(6000 * rnd() ** 3),
                          bid_c + (10 if rnd() < 0.93 else 20), 1 + int(6000 * rnd() ** 3)))
        st.bt_u = u
        st.last_bt_e = last_bt
        b.bn_books = books

        # ---- mark price / index / funding, every second
        mark = math.exp(x0)
        index = mark / (1 + self.basis(t0))
        settle = index * (1 + 2e-5 * gauss(0, 1))
        b.bn_mark = (t0 + int(rnd() * 4), mark, index, settle, self.funding(t0),
                     (t0 // FUNDING_MS + 1) * FUNDING_MS)

        # ---- liquidation (at most one per second per symbol, like the real snapshot stream)
        liq_long = liq_short = 0.0
        p_liq = 0.006 * act * act * bm + (0.5 if abs(jump) > 1e-3 else 0.0)
        b.bn_force = None
        if rnd() < p_liq:
            T = t0 + int(rnd() * 990)
            mid = mids[(T - t0) // 100]
            down = path[9] < x0
            side = "SELL" if (rnd() < (0.75 if down else 0.25)) else "BUY"
            qm = int(r.lognormvariate(4.0, 1.3)) + 1
            ap_c = int(mid * 10) * 10
            off = int(mid * 0.003) * 100
            p_c = ap_c - off if side == "SELL" else ap_c + off
            b.bn_force = (T + int(rnd() * 3), T, side, qm, p_c, ap_c)
            notional = qm / 1000 * ap_c / 100
            if side == "SELL":
                liq_long = notional
            else:
                liq_short = notional

        # ---- Upbit: KRW-USDT fair, KRW-BTC fair (lags the futures by one second)
        fx = self.fx(t0)
        prem = self.premium(t0)
        up_trades = {}
        up_books = {}
        for code in UPBIT_CODES:
            u = st.up[code]
            u[_IDIO] = 0.97 * u[_IDIO] + (1.5e-4 if code == "KRW-USDT" else 2.5e-5) * gauss(0, 1)
        usdt_f = fx * math.exp(st.up["KRW-USDT"][_IDIO])
        btc_mult = usdt_f * (1 + prem) * math.exp(st.up["KRW-BTC"][_IDIO])
        for code in UPBIT_CODES:
            u = st.up[code]
            tick = _UP_TICK[code]
            is_btc = code == "KRW-BTC"
            lam = _UP_RATE[code] * ((act * (1 + 0.35 * (bm - 1))) if is_btc else (0.7 + 0.3 * act))
            out = []
            inv = 1.0 / lam
            t = -log(1.0 - rnd()) * inv
            while t < 0.9:
                ttms = t0 + int(t * 1000)
                j = (ttms - t0) // 100
                f = math.exp(prev_path[j]) * btc_mult if is_btc else usdt_f
                bid = float(int(f / tick) * tick)
                sp = 1 if rnd() < 0.7 else (2 if rnd() < 0.7 else 3)
                ask = bid + sp * tick
                is_bid = rnd() < 0.5
                price = ask if is_bid else bid
                if is_btc:
                    vol = round(0.0041 * exp(1.4 * gauss()) + 0.00005, 8)
                else:
                    vol = round(350.0 * exp(1.3 * gauss()) + 1.0, 8)
                tms = ttms + 5 + int(rnd() * 90)
                if tms < u[_LTMS]:
                    tms = u[_LTMS]
                u[_LTMS] = tms
                n = u[_N]
                u[_N] = n + 1
                sid = (ttms - int(rnd() * 250)) * 1000 + n % 1000
                day = ttms // DAY_MS
                if day != u[_DAY]:
                    u[_YVOL], u[_YPRICE] = u[_AVOL], u[_APRICE]
                    u[_PCLOSE] = u[_LAST]
                    u[_OPEN] = u[_HIGH] = u[_LOW] = price
                    u[_AVOL] = u[_APRICE] = u[_AASK] = u[_ABID] = 0.0
                    u[_DAY] = day
                if price > u[_HIGH]:
                    u[_HIGH] = price
                if price < u[_LOW]:
                    u[_LOW] = price
                if price > u[_H52]:
                    u[_H52] = price
                if price < u[_L52]:
                    u[_L52] = price
                u[_AVOL] += vol
                u[_APRICE] += vol * price
                if is_bid:
                    u[_ABID] += vol
                else:
                    u[_AASK] += vol
                u[_LAST] = price
                rest_of_day = 1 - (ttms % DAY_MS) / DAY_MS
                szb = 0.03 if is_btc else 900.0
                out.append((tms, ttms, price, vol, "BID" if is_bid else "ASK", sid,
                            ask, round(szb * (0.02 + 3 * rnd() ** 3), 8),
                            bid, round(szb * (0.02 + 3 * rnd() ** 3), 8),
                            (u[_OPEN], u[_HIGH], u[_LOW], u[_PCLOSE], u[_AVOL], u[_APRICE],
                             u[_AASK], u[_ABID], u[_AVOL] + u[_YVOL] * rest_of_day,
                             u[_APRICE] + u[_YPRICE] * rest_of_day, u[_H52], u[_L52])))
                t -= log(1.0 - rnd()) * inv
            up_trades[code] = out
            obs = []
            p_ob = _UP_OB_P[code] * (min(max(act, 0.6), 1.6) if is_btc else 1.0)
            phase = _UP_OB_PHASE[code]
            for s in range(10):
                if rnd() < p_ob:
                    f = math.exp(prev_path[s]) * btc_mult if is_btc else usdt_f
                    bid = int(f / tick) * tick
                    sp = 1 if rnd() < 0.75 else 2
                    obs.append((t0 + s * 100 + phase, bid, bid + sp * tick,
                                (rnd(), rnd(), rnd(), rnd(), rnd(), rnd())))
            up_books[code] = obs
        b.up_trades = up_trades
        b.up_books = up_books
        st.prev_path = path
        summary = (mids[9], buy_q / 1000.0, sell_q / 1000.0, liq_long, liq_short,
                   trades[0][0] if trades else st.agg_id)
        return b, summary

    def _advance(self) -> _Block:
        """Generate the next block in sequence, record its history and checkpoint."""
        k = self._next_k
        if (k - self.k0) % CHECKPOINT_EVERY == 0:
            self._checkpoints[k] = self._state.copy()
        b, (close, bq, sq, ll, ls, a0) = self._gen_block(k, self._state)
        n = len(self._close)
        self._close.append(close)
        self._cbuy.append((self._cbuy[n - 1] if n else 0.0) + bq)
        self._csell.append((self._csell[n - 1] if n else 0.0) + sq)
        self._cliq_long.append((self._cliq_long[n - 1] if n else 0.0) + ll)
        self._cliq_short.append((self._cliq_short[n - 1] if n else 0.0) + ls)
        self._a0.append(a0)
        self._next_k = k + 1
        self._put_cache(b)
        return b

    def _put_cache(self, b: _Block) -> None:
        c = self._cache
        c[b.k] = b
        c.move_to_end(b.k)
        while len(c) > self._cache_max:
            c.popitem(last=False)

    def _ensure_index(self, i: int) -> None:
        while len(self._close) <= i:
            self._advance()

    def ensure(self, t_ms: int) -> None:
        """Generate every block that starts before t_ms."""
        k_last = (t_ms - 1) // 1000
        while self._next_k <= k_last:
            self._advance()

    def block(self, k: int) -> _Block | None:
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
            bb, _ = self._gen_block(kk, st)
            if kk == k or kk not in self._cache:
                self._put_cache(bb)
            if kk == k:
                b = bb
        return b

    # -------------------------------------------------------------- WebSocket frames
    def ws_frames(self, venue: str, t_from_ms: int, t_to_ms: int,
                  streams=None) -> Iterator[tuple[int, str, str]]:
        """(event_ts_ms, stream, raw_text) in time order for t_from <= ts < t_to.

        venue "binance": bare event JSON as the raw `/ws/` path sends it, streams
        btcusdt@aggTrade, btcusdt@markPrice@1s, btcusdt@bookTicker, btcusdt@forceOrder
        (add "btcusdt@markPrice" via `streams` for the 3 s variant).
        venue "upbit": DEFAULT-format JSON, streams "<code>@trade|orderbook|ticker"
        for KRW-BTC and KRW-USDT.
        """
        for ts, stream, raw, _id in self.ws_frames_ids(venue, t_from_ms, t_to_ms, streams):
            yield ts, stream, raw

    def ws_frames_ids(self, venue: str, t_from_ms: int, t_to_ms: int, streams=None):
        """Like ws_frames, with a fourth item: the trade id (Binance `a`, Upbit
        `sequential_id`) for trade frames, else None."""
        if venue not in VENUES:
            raise ValueError(f"unknown venue {venue!r}")
        if streams is None:
            want = set(BINANCE_STREAMS if venue == "binance" else UPBIT_STREAMS)
        else:
            want = set(streams)
        k_a = max(self.k0, t_from_ms // 1000)
        k_b = (t_to_ms - 1) // 1000
        for k in range(k_a, k_b + 1):
            frames = self.block_frames(self.block(k), venue)
            edge = k == k_a or k == k_b
            for fr in frames:
                if fr[1] in want and (not edge or t_from_ms <= fr[0] < t_to_ms):
                    yield fr

    def block_frames(self, b: _Block, venue: str) -> list:
        """Formatted frames of a block for a venue: [(ts, stream, raw, id)], sorted."""
        fr = b.frames.get(venue)
        if fr is None:
            fr = self._format_binance(b) if venue == "binance" else self._format_upbit(b)
            b.frames[venue] = fr
        return fr

    def _format_binance(self, b: _Block) -> list:
        items = []
        for seq, (a, pc, qm, f, l, T, m, e) in enumerate(b.bn_trades):
            items.append((e, 1, seq, AGG,
                          f'{{"e":"aggTrade","E":{e},"a":{a},"s":"BTCUSDT","p":"{pc // 100}.{pc % 100:02d}",'
                          f'"q":"{qm // 1000}.{qm % 1000:03d}","f":{f},"l":{l},"T":{T},'
                          f'"m":{"true" if m else "false"}}}', a))
        for seq, (e, T, u, bc, bq, ac, aq) in enumerate(b.bn_books):
            items.append((e, 2, seq, BOOK,
                          f'{{"e":"bookTicker","u":{u},"s":"BTCUSDT","b":"{bc // 100}.{bc % 100:02d}",'
                          f'"B":"{bq // 1000}.{bq % 1000:03d}","a":"{ac // 100}.{ac % 100:02d}",'
                          f'"A":"{aq // 1000}.{aq % 1000:03d}","T":{T},"E":{e}}}', None))
        e, mark, index, settle, rate, next_t = b.bn_mark
        raw = (f'{{"e":"markPriceUpdate","E":{e},"s":"BTCUSDT","p":"{mark:.8f}","i":"{index:.8f}",'
               f'"P":"{settle:.8f}","r":"{rate:.8f}","T":{next_t}}}')
        items.append((e, 0, 0, MARK1, raw, None))
        if b.k % 3 == 0:
            items.append((e, 0, 1, MARK3, raw, None))
        if b.bn_force is not None:
            e, T, side, qm, pc, ac = b.bn_force
            q = qty3(qm)
            items.append((e, 3, 0, FORCE,
                          f'{{"e":"forceOrder","E":{e},"o":{{"s":"BTCUSDT","S":"{side}","o":"LIMIT",'
                          f'"f":"IOC","q":"{q}","p":"{px2(pc)}","ap":"{px2(ac)}","X":"FILLED",'
                          f'"l":"{q}","z":"{q}","T":{T}}}}}', None))
        items.sort()
        return [(it[0], it[3], it[4], it[5]) for it in items]

    def _ob_table(self, code: str, bucket: int) -> tuple:
        """Resting sizes by price level for a 10-minute bucket: (ask sizes, ask texts,
        bid sizes, bid texts), 1024 slots each, indexed by price // tick."""
        key = (code, bucket)
        t = self._ob_tables.get(key)
        if t is None:
            r = random.Random((self.seed * 1_000_003 + bucket) * 7 + UPBIT_CODES.index(code))
            base = 0.35 if code == "KRW-BTC" else 6000.0
            ask = [round(base * (0.02 + 3.0 * r.random() ** 3), 8) for _ in range(1024)]
            bid = [round(base * (0.02 + 3.0 * r.random() ** 3), 8) for _ in range(1024)]
            t = (ask, [f"{v:.8f}" for v in ask], bid, [f"{v:.8f}" for v in bid])
            self._ob_tables[key] = t
            if len(self._ob_tables) > 8:
                self._ob_tables.popitem(last=False)
        return t

    def upbit_book(self, code: str, ts: int, bid0: int, ask0: int, noise) -> tuple[str, float, float]:
        """One Upbit order book, 30 levels best first: (units JSON text, total ask size,
        total bid size). Deep levels rest (sizes by price level per 10 minutes); the top
        three change with every frame."""
        tick = _UP_TICK[code]
        ask_f, ask_s, bid_f, bid_s = self._ob_table(code, ts // 600_000)
        ai, bi = ask0 // tick, bid0 // tick
        pstr = self._price_str
        mk = self._pstr
        units = []
        tas = tbs = 0.0
        for i in range(_UP_LEVELS):
            ia = (ai + i) & 1023
            ib = (bi - i) & 1023
            ap = ask0 + i * tick
            bp = bid0 - i * tick
            if i < 3:
                asz = round(ask_f[ia] * (0.3 + 1.4 * noise[i]), 8) or 1e-8
                bsz = round(bid_f[ib] * (0.3 + 1.4 * noise[3 + i]), 8) or 1e-8
                astr = f"{asz:.8f}"
                bstr = f"{bsz:.8f}"
            else:
                asz = ask_f[ia]
                bsz = bid_f[ib]
                astr = ask_s[ia]
                bstr = bid_s[ib]
            tas += asz
            tbs += bsz
            units.append(f'{{"ask_price":{pstr.get(ap) or mk(ap)},"bid_price":{pstr.get(bp) or mk(bp)},'
                         f'"ask_size":{astr},"bid_size":{bstr}}}')
        return ",".join(units), tas, tbs

    def _pstr(self, p: int) -> str:
        if len(self._price_str) > 100_000:
            self._price_str.clear()
        s = self._price_str[p] = jdbl(float(p))
        return s

    def _format_upbit(self, b: _Block) -> list:
        items = []
        for ci, code in enumerate(UPBIT_CODES):
            s_trade, s_tick, s_ob = f"{code}@trade", f"{code}@ticker", f"{code}@orderbook"
            for seq, tr in enumerate(b.up_trades[code]):
                tms, ttms, price, vol, ab, sid, bap, bas, bbp, bbs, tk = tr
                (opn, hi, lo, pcl, avol, aprice, aask, abid, vol24, price24, h52, l52) = tk
                d, tt, d8, t6 = utc_parts(ttms)
                diff = price - pcl
                change = "RISE" if diff > 0 else ("FALL" if diff < 0 else "EVEN")
                cp = abs(diff)
                jp = jdbl(price)
                jv = jdbl(vol)
                items.append((tms, ci * 10 + 1, seq, s_trade,
                              f'{{"type":"trade","code":"{code}","timestamp":{tms},"trade_date":"{d}",'
                              f'"trade_time":"{tt}","trade_timestamp":{ttms},"trade_price":{jp},'
                              f'"trade_volume":{jv},"ask_bid":"{ab}","prev_closing_price":{pcl:.8f},'
                              f'"change":"{change}","change_price":{cp:.8f},"sequential_id":{sid},'
                              f'"best_ask_price":{jdbl(bap)},"best_ask_size":{bas:.8f},'
                              f'"best_bid_price":{jdbl(bbp)},"best_bid_size":{bbs:.8f},'
                              f'"stream_type":"REALTIME"}}', sid))
                rate = cp / pcl if pcl else 0.0
                sgn = -1 if diff < 0 else 1
                items.append((tms + 1, ci * 10 + 2, seq, s_tick,
                              f'{{"type":"ticker","code":"{code}","opening_price":{opn:.8f},'
                              f'"high_price":{hi:.8f},"low_price":{lo:.8f},"trade_price":{jp},'
                              f'"prev_closing_price":{pcl:.8f},"change":"{change}",'
                              f'"change_price":{cp:.8f},"signed_change_price":{sgn * cp:.8f},'
                              f'"change_rate":{rate:.10f},"signed_change_rate":{sgn * rate:.10f},'
                              f'"trade_volume":{jv},"acc_trade_volume":{avol:.8f},'
                              f'"acc_trade_volume_24h":{vol24:.8f},"acc_trade_price":{aprice:.8f},'
                              f'"acc_trade_price_24h":{price24:.8f},"trade_date":"{d8}",'
                              f'"trade_time":"{t6}","trade_timestamp":{ttms},"ask_bid":"{ab}",'
                              f'"acc_ask_volume":{aask:.8f},"acc_bid_volume":{abid:.8f},'
                              f'"highest_52_week_price":{h52:.8f},"highest_52_week_date":"{self._h52_date}",'
                              f'"lowest_52_week_price":{l52:.8f},"lowest_52_week_date":"{self._l52_date}",'
                              f'"market_state":"ACTIVE","is_trading_suspended":false,'
                              f'"delisting_date":null,"market_warning":"NONE","timestamp":{tms + 1},'
                              f'"stream_type":"REALTIME"}}', None))
            for seq, (tms, bid0, ask0, noise) in enumerate(b.up_books[code]):
                units, tas, tbs = self.upbit_book(code, tms, bid0, ask0, noise)
                items.append((tms, ci * 10 + 3, seq, s_ob,
                              f'{{"type":"orderbook","code":"{code}","timestamp":{tms},'
                              f'"total_ask_size":{tas:.8f},"total_bid_size":{tbs:.8f},'
                              f'"orderbook_units":[{units}],"stream_type":"REALTIME","level":0}}', None))
        items.sort()
        return [(it[0], it[3], it[4], it[5]) for it in items]

    @property
    def _h52_date(self) -> str:
        return utc_parts(self.start_ms - 41 * DAY_MS)[0]

    @property
    def _l52_date(self) -> str:
        return utc_parts(self.start_ms - 297 * DAY_MS)[0]

    def last_frames(self, venue: str, t_ms: int, streams, max_back_s: int = 600) -> dict[str, str]:
        """The latest frame (ts < t_ms) of each of `streams`, looking back at most
        max_back_s seconds: what an Upbit SNAPSHOT is made from."""
        want = set(streams)
        found: dict[str, str] = {}
        k = (t_ms - 1) // 1000
        stop = max(self.k0, k - max_back_s)
        while k >= stop and len(found) < len(want):
            frames = self.block_frames(self.block(k), venue)
            for ts, stream, raw, _id in reversed(frames):
                if ts < t_ms and stream in want and stream not in found:
                    found[stream] = raw
            k -= 1
        return found

    # -------------------------------------------------------------- trades for REST backfill
    def retain_start_ms(self, now_ms: int) -> int:
        return max(self.start_ms, now_ms - self.retain_ms)

    def agg_trades_between(self, t_a: int, t_b: int, now_ms: int) -> Iterator[tuple]:
        """Binance aggregate trades with t_a <= T <= t_b that happened (E < now), ascending."""
        t_a = max(t_a, self.retain_start_ms(now_ms))
        t_b = min(t_b, now_ms - 1)
        if t_b < t_a:
            return
        for k in range(t_a // 1000, t_b // 1000 + 1):
            b = self.block(k)
            if b is None:
                continue
            for tr in b.bn_trades:
                if t_a <= tr[5] <= t_b and tr[7] < now_ms:
                    yield tr

    def agg_trades_from(self, from_id: int, now_ms: int) -> Iterator[tuple]:
        """Binance aggregate trades with a >= from_id that happened, ascending."""
        self.ensure(now_ms)
        k_first = max(self.k0, (self.retain_start_ms(now_ms)) // 1000)
        i = bisect.bisect_right(self._a0, from_id) - 1
        k = max(k_first, self.k0 + max(i, 0))
        k_end = (now_ms - 1) // 1000
        while k <= k_end:
            for tr in self.block(k).bn_trades:
                if tr[7] >= now_ms:
                    return
                if tr[0] >= from_id:
                    yield tr
            k += 1

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

    # -------------------------------------------------------------- REST
    def rest(self, path: str, params: dict, now_ms: int) -> tuple[int, str]:
        """The pure answer of a REST endpoint at model time now_ms: (status, body).
        Limits, faults and authentication are the server's business."""
        from . import binance, coinglass, upbit
        for mod in (binance, upbit, coinglass):
            h = mod.REST.get(path)
            if h is not None:
                return h(self, {k: str(v) for k, v in params.items()}, int(now_ms))
        for mod in (binance, upbit, coinglass):
            if mod.owns(path):
                return mod.not_found(path)
        return 404, '{"error":"not found"}'
