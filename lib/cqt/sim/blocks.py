"""One second of the market: the dynamics behind cqt-sim's model.

`gen_block(m, k, state)` makes everything that happens in second k (Binance aggregate
trades, book tickers, mark price, a liquidation per symbol; Upbit trades with their ticker
values and order-book snapshots per code) from ``Random(seed, k)`` and the state left by
second k - 1, so a second is the same whatever order the caller asks in. BTC is the
market: its path is drawn first, from the block's own random numbers, exactly as when it
was the only asset; every other asset (`cqt.sim.assets`) draws from its own generator
seeded by (seed, asset, k) and follows BTC's steps with a beta plus its own noise. Block
contents are plain tuples (integer price units and lot steps for Binance); the venues
format them.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .assets import MARKET, USDT_CODE, AssetSpec, asset_salt, upbit_tick

# ------------------------------------------------------------------ market facts
BTC_SPEC = AssetSpec(name=MARKET, price=80000.0, pdec=2, tick_u=10, qdec=3, rate=1.0, beta=1.0, idio=0.0,
                     oi_usd=82000.0 * 80000.0, salt=asset_salt(MARKET))
FUNDING_MS = 8 * 3600 * 1000
DAY_MS = 86_400_000

# ------------------------------------------------------------------ dynamics
_VOLS = (0.9e-4, 1.6e-4, 2.8e-4)        # 1 s log-return std per regime
_ACT = (0.8, 1.2, 2.1)                  # activity multiplier per regime
_REGIME_SWITCH_P = 1 / 1200
_BURST_P = 1 / 90
_JUMP_P = 1 / 2400
_JUMP_STD = 1.5e-3
_BN_RATE = 12.0                         # base aggTrades per second
_BN_BOOK_RATE = 3.0                     # extra bookTicker updates per second
_THETA = 1 / (5 * 86400)                # mean reversion of log price per second
_XBAR = math.log(80000.0)
_XLO, _XHI = math.log(62000.0), math.log(98000.0)
_SQRT_TENTH = math.sqrt(0.1)

# indices of the per-code Upbit state list
(_N, _LAST, _DAY, _OPEN, _HIGH, _LOW, _PCLOSE, _AVOL, _APRICE, _AASK, _ABID,
 _YVOL, _YPRICE, _H52, _L52, _IDIO, _LTMS) = range(17)


@dataclass(frozen=True)
class BinanceLeg:
    """How one asset's Binance numbers are drawn (BTC's reproduce the original model)."""
    ppt: float              # mid * ppt -> ticks
    tick_u: int             # a tick in price units
    q_scale: float          # median trade size in lot steps
    q_cap: int              # largest trade in lot steps (then a little less)
    q_cap_j: int
    book_q: int             # book ticker size scale in lot steps
    liq_q: float            # liquidation size scale
    off_k: float            # liquidation price offset: int(mid * 0.003 * off_k) * off_u
    off_u: int
    Q: int                  # lot steps per coin
    D: int                  # price units per USDT


def binance_leg(spec: AssetSpec) -> BinanceLeg:
    if spec.name == MARKET:
        return BinanceLeg(10.0, 10, 24.5, 80_000, 5000, 6000, 1.0, 1.0, 100, 1000, 100)
    ratio = spec.q_scale / 24.5
    return BinanceLeg(spec.ppt, spec.tick_u, spec.q_scale, max(10, int(80_000 * ratio)),
                      max(1, int(5000 * ratio)), max(1, int(6000 * ratio)), ratio, spec.ppt, spec.tick_u,
                      10 ** spec.qdec, 10 ** spec.pdec)


@dataclass(frozen=True)
class UpbitLeg:
    """How one Upbit code's trades and books are drawn."""
    code: str
    tick: float
    dec: int                # decimals of the tick (0: whole won)
    rate: float             # trades per second
    coin: bool              # follows a coin's path (else KRW-USDT: the FX rate)
    v_scale: float          # trade volume: v_scale * exp(v_exp * g) + v_min
    v_exp: float
    v_min: float
    size: float             # best bid/ask size scale
    ob_p: float             # chance of a book per 100 ms slot
    ob_phase: int           # ms offset of the books on their 100 ms grid
    ob_base: float          # resting book size scale
    daily_vol: float        # a day's volume (initial 24 h figures)


KRW_BTC = UpbitLeg("KRW-BTC", 1000, 0, 2.2, True, 0.0041, 1.4, 0.00005, 0.03, 0.5, 6, 0.35, 2000.0)
KRW_USDT = UpbitLeg(USDT_CODE, 1, 0, 0.45, False, 350.0, 1.3, 1.0, 900.0, 0.07, 38, 6000.0, 3.0e7)


def upbit_leg(spec: AssetSpec, krw_per_usdt: float) -> UpbitLeg:
    """An asset's KRW market: notional sizes like KRW-BTC's, fewer trades."""
    krw = spec.price * krw_per_usdt * 1.012
    tick = upbit_tick(krw)
    coins = 116_000_000.0 / krw            # a KRW-BTC coin's worth of this asset
    rate = min(2.0, 0.3 + 1.6 * spec.rate)
    return UpbitLeg(spec.code, tick, max(0, -int(math.floor(math.log10(tick) + 1e-9))), rate, True,
                    0.0041 * coins * 0.8, 1.4, 0.00005 * coins, 0.03 * coins, min(0.45, 0.12 + 0.4 * spec.rate),
                    (spec.salt % 90) + 5, 0.35 * coins, 2000.0 * coins * rate / 2.2)


def _round_tick(x: float, dec: int) -> float:
    return round(x, dec) if dec else float(x)


class AltState:
    """The state of one asset besides the market: its path, bursts, ids and Upbit code."""
    __slots__ = ("x", "burst_left", "burst_mult", "prev_path", "agg_id", "trade_id", "bt_u", "last_e",
                 "last_bt_e", "up")

    def copy(self) -> "AltState":
        s = AltState()
        s.x, s.burst_left, s.burst_mult = self.x, self.burst_left, self.burst_mult
        s.prev_path = list(self.prev_path)
        s.agg_id, s.trade_id, s.bt_u = self.agg_id, self.trade_id, self.bt_u
        s.last_e, s.last_bt_e = self.last_e, self.last_bt_e
        s.up = list(self.up)
        return s


class State:
    __slots__ = ("x", "regime", "burst_left", "burst_mult", "prev_path", "agg_id",
                 "trade_id", "bt_u", "last_e", "last_bt_e", "up", "alts")

    def copy(self) -> "State":
        s = State()
        s.x, s.regime, s.burst_left, s.burst_mult = self.x, self.regime, self.burst_left, self.burst_mult
        s.prev_path = list(self.prev_path)
        s.agg_id, s.trade_id, s.bt_u = self.agg_id, self.trade_id, self.bt_u
        s.last_e, s.last_bt_e = self.last_e, self.last_bt_e
        s.up = {c: list(v) for c, v in self.up.items()}
        s.alts = {a: v.copy() for a, v in self.alts.items()}
        return s


class Block:
    """Everything the model produces in one second [t0, t0 + 1000); the Binance parts keyed
    by symbol (BTCUSDT), the Upbit ones by code (KRW-BTC)."""
    __slots__ = ("k", "t0", "bn_trades", "bn_books", "bn_mark", "bn_force", "up_trades",
                 "up_books", "frames")

    def __init__(self, k: int):
        self.k = k
        self.t0 = k * 1000
        self.bn_trades: dict[str, list] = {}
        self.bn_books: dict[str, list] = {}
        self.bn_mark: dict[str, tuple] = {}
        self.bn_force: dict[str, tuple | None] = {}
        self.up_trades: dict[str, list] = {}
        self.up_books: dict[str, list] = {}
        self.frames: dict[str, list] = {}


def _upbit_state(leg: UpbitLeg, f: float, t: int, srng: random.Random) -> list:
    tick = leg.tick
    day_frac = (t % DAY_MS) / DAY_MS
    price = _round_tick(int(f / tick) * tick, leg.dec)
    daily_vol = leg.daily_vol
    pclose = _round_tick(round(f * (1 + srng.gauss(0, 0.012)) / tick) * tick, leg.dec)
    opn = _round_tick(round(f * (1 + srng.gauss(0, 0.006)) / tick) * tick, leg.dec)
    hi = max(opn, price, pclose) * (1 + abs(srng.gauss(0, 0.004)))
    lo = min(opn, price, pclose) * (1 - abs(srng.gauss(0, 0.004)))
    avol = daily_vol * day_frac * (1 + srng.gauss(0, 0.05))
    return [srng.randrange(1000), price, t // DAY_MS, opn, _round_tick(int(hi / tick) * tick, leg.dec),
            _round_tick(int(lo / tick) * tick, leg.dec), pclose, avol, avol * f, avol * 0.49, avol * 0.51,
            daily_vol * (1 + srng.gauss(0, 0.05)), daily_vol * f,
            _round_tick(int(f * 1.3 / tick) * tick, leg.dec), _round_tick(int(f * 0.62 / tick) * tick, leg.dec),
            0.0, 0]


def initial_state(m, srng: random.Random) -> State:
    """The market's state at the model's start (m: the MarketModel, for its slow series)."""
    btc = m.legs[MARKET]
    s = State()
    s.x = btc.x_init
    s.regime = 1
    s.burst_left = 0
    s.burst_mult = 1.0
    s.prev_path = [btc.x_init] * 10
    s.agg_id = 2_100_000_000 + srng.randrange(10_000_000)
    s.trade_id = 5_900_000_000 + srng.randrange(10_000_000)
    s.bt_u = 8_100_000_000_000 + srng.randrange(10_000_000_000)
    s.last_e = 0
    s.last_bt_e = 0
    s.up = {}
    s.alts = {}
    t = m.start_ms
    fx = m.fx(t)
    for leg in (KRW_BTC, KRW_USDT):
        f = fx if not leg.coin else btc.p0 * fx * (1 + m.premium(t))
        s.up[leg.code] = _upbit_state(leg, f, t, srng)
    return s


def initial_alt_state(m, leg, srng: random.Random) -> AltState:
    """The state of asset `leg` (a model Leg) at the model's start."""
    s = AltState()
    s.x = leg.x_init
    s.burst_left = 0
    s.burst_mult = 1.0
    s.prev_path = [leg.x_init] * 10
    s.agg_id = 100_000_000 + srng.randrange(1_900_000_000)
    s.trade_id = 300_000_000 + srng.randrange(3_000_000_000)
    s.bt_u = 1_000_000_000_000 + srng.randrange(7_000_000_000_000)
    s.last_e = 0
    s.last_bt_e = 0
    t = m.start_ms
    s.up = _upbit_state(leg.up, leg.p0 * m.fx(t) * (1 + m.premium(t) + leg.prem_off), t, srng)
    return s


# ------------------------------------------------------------------ Binance, one symbol
def _binance(r, b: Block, sym: str, bl: BinanceLeg, series, t0: int, path, prev_path, x0: float, sub: float,
             act: float, bm: float, jump: float, st) -> tuple:
    """Trades, book tickers, mark price and a liquidation of one symbol for second t0 (st:
    its state, ids advanced). Returns its summary (close, taker buy, taker sell, long and
    short liquidations, first aggTrade id)."""
    rnd = r.random
    gauss = r.gauss
    log = math.log
    exp = math.exp
    mids = [exp(v) for v in path]
    ppt, tu = bl.ppt, bl.tick_u
    lam = _BN_RATE * act * bm * (1 + 200 * abs(jump))
    inv = 1.0 / lam
    trades = []
    buy_q = sell_q = 0
    last_e = st.last_e
    agg_id = st.agg_id
    trade_id = st.trade_id
    q_scale, q_cap, q_cap_j = bl.q_scale, bl.q_cap, bl.q_cap_j
    t = -log(1.0 - rnd()) * inv
    while t < 0.99:
        T = t0 + int(t * 1000)
        j = (T - t0) // 100
        bid_c = int(mids[j] * ppt) * tu
        dx = (path[j] - (path[j - 1] if j else prev_path[9])) / sub
        pbuy = 0.5 + 0.12 * dx
        pbuy = 0.15 if pbuy < 0.15 else (0.85 if pbuy > 0.85 else pbuy)
        buy = rnd() < pbuy
        if bm == 1.0 or rnd() < 0.7:
            pc = bid_c + tu if buy else bid_c
        else:
            extra = tu * int(-log(1.0 - rnd()) * 1.25)
            pc = bid_c + tu + extra if buy else bid_c - extra
        qm = int(q_scale * exp(1.55 * gauss())) + 1
        if qm > q_cap:
            qm = q_cap - int(rnd() * q_cap_j)
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
    b.bn_trades[sym] = trades

    # ---- book ticker: after some trades, plus quiet updates
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
    book_q = bl.book_q
    for T in bt_times:
        bid_c = int(mids[(T - t0) // 100] * ppt) * tu
        u += 1 + int(rnd() * 40)
        e = T + 1 + int(rnd() * 4)
        if e < last_bt:
            e = last_bt
        last_bt = e
        books.append((e, T, u, bid_c, 1 + int(book_q * rnd() ** 3),
                      bid_c + (tu if rnd() < 0.93 else 2 * tu), 1 + int(book_q * rnd() ** 3)))
    st.bt_u = u
    st.last_bt_e = last_bt
    b.bn_books[sym] = books

    # ---- mark price / index / funding, every second
    mark = math.exp(x0)
    index = mark / (1 + series.basis(t0))
    settle = index * (1 + 2e-5 * gauss(0, 1))
    b.bn_mark[sym] = (t0 + int(rnd() * 4), mark, index, settle, series.funding(t0),
                      (t0 // FUNDING_MS + 1) * FUNDING_MS)

    # ---- liquidation (at most one per second per symbol, like the real snapshot stream)
    liq_long = liq_short = 0.0
    p_liq = 0.006 * act * act * bm + (0.5 if abs(jump) > 1e-3 else 0.0)
    b.bn_force[sym] = None
    if rnd() < p_liq:
        T = t0 + int(rnd() * 990)
        mid = mids[(T - t0) // 100]
        down = path[9] < x0
        side = "SELL" if (rnd() < (0.75 if down else 0.25)) else "BUY"
        qm = int(r.lognormvariate(4.0, 1.3) * bl.liq_q) + 1
        ap_c = int(mid * ppt) * tu
        off = int(mid * 0.003 * bl.off_k) * bl.off_u
        p_c = ap_c - off if side == "SELL" else ap_c + off
        b.bn_force[sym] = (T + int(rnd() * 3), T, side, qm, p_c, ap_c)
        notional = qm / bl.Q * ap_c / bl.D
        if side == "SELL":
            liq_long = notional
        else:
            liq_short = notional
    return mids[9], buy_q / bl.Q, sell_q / bl.Q, liq_long, liq_short, trades[0][0] if trades else st.agg_id


# ------------------------------------------------------------------ Upbit, one code
def _upbit(r, b: Block, leg: UpbitLeg, u: list, t0: int, prev_path, mult: float, act: float, bm: float) -> None:
    """Trades (with their ticker values) and order books of one Upbit code for second t0.
    A coin's fair price is exp(prev_path) x mult (one second behind the futures); KRW-USDT's
    is mult."""
    rnd = r.random
    gauss = r.gauss
    log = math.log
    exp = math.exp
    tick, dec, coin = leg.tick, leg.dec, leg.coin
    lam = leg.rate * ((act * (1 + 0.35 * (bm - 1))) if coin else (0.7 + 0.3 * act))
    out = []
    inv = 1.0 / lam
    t = -log(1.0 - rnd()) * inv
    while t < 0.9:
        ttms = t0 + int(t * 1000)
        j = (ttms - t0) // 100
        f = exp(prev_path[j]) * mult if coin else mult
        bid = _round_tick(int(f / tick) * tick, dec)
        sp = 1 if rnd() < 0.7 else (2 if rnd() < 0.7 else 3)
        ask = _round_tick(bid + sp * tick, dec)
        is_bid = rnd() < 0.5
        price = ask if is_bid else bid
        vol = round(leg.v_scale * exp(leg.v_exp * gauss()) + leg.v_min, 8)
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
        szb = leg.size
        out.append((tms, ttms, price, vol, "BID" if is_bid else "ASK", sid,
                    ask, round(szb * (0.02 + 3 * rnd() ** 3), 8),
                    bid, round(szb * (0.02 + 3 * rnd() ** 3), 8),
                    (u[_OPEN], u[_HIGH], u[_LOW], u[_PCLOSE], u[_AVOL], u[_APRICE],
                     u[_AASK], u[_ABID], u[_AVOL] + u[_YVOL] * rest_of_day,
                     u[_APRICE] + u[_YPRICE] * rest_of_day, u[_H52], u[_L52])))
        t -= log(1.0 - rnd()) * inv
    b.up_trades[leg.code] = out
    obs = []
    p_ob = leg.ob_p * (min(max(act, 0.6), 1.6) if coin else 1.0)
    phase = leg.ob_phase
    for s in range(10):
        if rnd() < p_ob:
            f = exp(prev_path[s]) * mult if coin else mult
            bid = int(f / tick) * tick
            sp = 1 if rnd() < 0.75 else 2
            obs.append((t0 + s * 100 + phase, _round_tick(bid, dec) if dec else bid,
                        _round_tick(bid + sp * tick, dec) if dec else bid + sp * tick,
                        (rnd(), rnd(), rnd(), rnd(), rnd(), rnd())))
    b.up_books[leg.code] = obs


# ------------------------------------------------------------------ the block
def gen_block(m, k: int, st: State) -> tuple[Block, dict]:
    """Generate block k from state st (mutated to the state of block k + 1); m is the
    MarketModel (its seed, legs and slow series). Returns the block and each symbol's
    one-line summary {symbol: (close, taker buy, taker sell, long and short liquidations,
    first aggTrade id)}."""
    r = random.Random(m.seed_base | (k & 0xFFFFFFFFFF))
    rnd = r.random
    gauss = r.gauss
    t0 = k * 1000
    b = Block(k)
    # regime, bursts, jumps
    if rnd() < _REGIME_SWITCH_P:
        st.regime = (st.regime + (1 if rnd() < 0.5 else 2)) % 3
    btc = m.legs[MARKET]
    act = _ACT[st.regime] * btc.series.activity(t0)
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
    summary = {btc.symbol: _binance(r, b, btc.symbol, btc.bn, btc.series, t0, path, prev_path, x0, sub, act, bm,
                                    jump, st)}

    # ---- Upbit: KRW-USDT fair, KRW-BTC fair (lags the futures by one second)
    fx = m.fx(t0)
    prem = m.premium(t0)
    for code in (KRW_BTC.code, USDT_CODE):
        u = st.up[code]
        u[_IDIO] = 0.97 * u[_IDIO] + (1.5e-4 if code == USDT_CODE else 2.5e-5) * gauss(0, 1)
    usdt_f = fx * math.exp(st.up[USDT_CODE][_IDIO])
    btc_mult = usdt_f * (1 + prem) * math.exp(st.up[KRW_BTC.code][_IDIO])
    _upbit(r, b, KRW_BTC, st.up[KRW_BTC.code], t0, prev_path, btc_mult, act, bm)
    _upbit(r, b, KRW_USDT, st.up[USDT_CODE], t0, prev_path, usdt_f, act, bm)
    st.prev_path = path

    # ---- every other asset: BTC's steps x beta plus its own noise, its own random numbers
    steps = [path[0] - x0] + [path[j] - path[j - 1] for j in range(1, 10)]
    for leg in m.alt_legs:
        summary[leg.symbol] = _gen_alt(m, k, st.alts[leg.asset], leg, t0, steps, sub, act, bm, jump,
                                       usdt_f, prem, b)
    return b, summary


def _gen_alt(m, k: int, st: AltState, leg, t0: int, steps, btc_sub: float, btc_act: float, btc_bm: float,
             btc_jump: float, usdt_f: float, prem: float, b: Block) -> tuple:
    spec = leg.spec
    r = random.Random(((m.seed_base | (k & 0xFFFFFFFFFF)) << 32) | spec.salt)
    rnd = r.random
    gauss = r.gauss
    if st.burst_left > 0:
        st.burst_left -= 1
        own = st.burst_mult
    elif rnd() < _BURST_P * 0.6:
        st.burst_left = 1 + int(rnd() * 8)
        st.burst_mult = own = 2.0 + 4.0 * rnd()
    else:
        own = 1.0
    bm = max(own, 1.0 + 0.6 * (btc_bm - 1.0))
    act = spec.rate * (btc_act * (0.7 + 0.3 * leg.series.activity(t0)))
    # the idiosyncratic part scales with the market's volatility regime
    isub = spec.idio * (btc_sub / (_VOLS[1] * _SQRT_TENTH)) ** 0.5 * (1 + 0.08 * (own - 1)) * _SQRT_TENTH
    beta = spec.beta
    sub = math.sqrt((beta * btc_sub) ** 2 + isub ** 2)
    x = x0 = st.x
    d10 = -_THETA * (x - leg.x_bar) / 10
    jump = beta * btc_jump
    jump_at = -1
    if rnd() < _JUMP_P * 0.7:
        jump_at = int(rnd() * 10)
        jump += gauss(0, _JUMP_STD * 1.3)
    path = [0.0] * 10
    for j in range(10):
        x += d10 + beta * steps[j] + isub * gauss(0, 1)
        if j == jump_at:
            x += jump - beta * btc_jump
        path[j] = x
    st.x = x
    summary = _binance(r, b, leg.symbol, leg.bn, leg.series, t0, path, st.prev_path, x0, sub, act, bm, jump, st)
    u = st.up
    u[_IDIO] = 0.97 * u[_IDIO] + 3.5e-5 * gauss(0, 1)
    mult = usdt_f * (1 + prem + leg.prem_off) * math.exp(u[_IDIO])
    _upbit(r, b, leg.up, u, t0, st.prev_path, mult, act / spec.rate, bm)
    st.prev_path = path
    return summary
