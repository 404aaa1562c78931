"""One second of the market: the dynamics behind cqt-sim's model.

`gen_block(m, k, state)` makes everything that happens in second k (Binance aggregate
trades, book tickers, mark price, a liquidation; Upbit trades with their ticker values
and order-book snapshots) from ``Random(seed, k)`` and the state left by second k - 1,
so a second is the same whatever order the caller asks in. Block contents are plain
tuples (integer cents and thousandths for Binance); the venues format them.
"""
from __future__ import annotations

import math
import random

# ------------------------------------------------------------------ market facts
UPBIT_CODES = ("KRW-BTC", "KRW-USDT")
UP_TICK = {"KRW-BTC": 1000, "KRW-USDT": 1}       # KRW price step per code
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
_UP_RATE = {"KRW-BTC": 2.2, "KRW-USDT": 0.45}
# chance per 100 ms slot: the real KRW-BTC book publishes several times a second even when
# quiet (altdata_check holds its fill to >= 0.9 of seconds), KRW-USDT far less often
_UP_OB_P = {"KRW-BTC": 0.5, "KRW-USDT": 0.07}
_UP_OB_PHASE = {"KRW-BTC": 6, "KRW-USDT": 38}    # the real books publish on a 100 ms grid
_THETA = 1 / (5 * 86400)                # mean reversion of log price per second
_XBAR = math.log(80000.0)
_XLO, _XHI = math.log(62000.0), math.log(98000.0)
_SQRT_TENTH = math.sqrt(0.1)

# indices of the per-code Upbit state list
(_N, _LAST, _DAY, _OPEN, _HIGH, _LOW, _PCLOSE, _AVOL, _APRICE, _AASK, _ABID,
 _YVOL, _YPRICE, _H52, _L52, _IDIO, _LTMS) = range(17)


class State:
    __slots__ = ("x", "regime", "burst_left", "burst_mult", "prev_path", "agg_id",
                 "trade_id", "bt_u", "last_e", "last_bt_e", "up")

    def copy(self) -> "State":
        s = State()
        s.x, s.regime, s.burst_left, s.burst_mult = self.x, self.regime, self.burst_left, self.burst_mult
        s.prev_path = list(self.prev_path)
        s.agg_id, s.trade_id, s.bt_u = self.agg_id, self.trade_id, self.bt_u
        s.last_e, s.last_bt_e = self.last_e, self.last_bt_e
        s.up = {c: list(v) for c, v in self.up.items()}
        return s


class Block:
    """Everything the model produces in one second [t0, t0 + 1000)."""
    __slots__ = ("k", "t0", "bn_trades", "bn_books", "bn_mark", "bn_force", "up_trades",
                 "up_books", "frames")

    def __init__(self, k: int):
        self.k = k
        self.t0 = k * 1000
        self.frames: dict[str, list] = {}




def initial_state(m, srng: random.Random) -> State:
    """The state at the model's start (m: the MarketModel, for its slow series)."""
    s = State()
    s.x = m.x_init
    s.regime = 1
    s.burst_left = 0
    s.burst_mult = 1.0
    s.prev_path = [m.x_init] * 10
    s.agg_id = 2_100_000_000 + srng.randrange(10_000_000)
    s.trade_id = 5_900_000_000 + srng.randrange(10_000_000)
    s.bt_u = 8_100_000_000_000 + srng.randrange(10_000_000_000)
    s.last_e = 0
    s.last_bt_e = 0
    s.up = {}
    t = m.start_ms
    fx = m.fx(t)
    day_frac = (t % DAY_MS) / DAY_MS
    for code in UPBIT_CODES:
        tick = UP_TICK[code]
        f = fx if code == "KRW-USDT" else m.p0 * fx * (1 + m.premium(t))
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



def gen_block(m, k: int, st: State) -> tuple[Block, tuple]:
    """Generate block k from state st (mutated to the state of block k + 1); m is the
    MarketModel (its seed and slow series). Returns the block and its one-line summary
    (close, taker buy, taker sell, long and short liquidations, first aggTrade id)."""
    r = random.Random(m.seed_base | (k & 0xFFFFFFFFFF))
    rnd = r.random
    gauss = r.gauss
    t0 = k * 1000
    b = Block(k)
    # regime, bursts, jumps
    if rnd() < _REGIME_SWITCH_P:
        st.regime = (st.regime + (1 if rnd() < 0.5 else 2)) % 3
    act = _ACT[st.regime] * m.activity(t0)
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
    index = mark / (1 + m.basis(t0))
    settle = index * (1 + 2e-5 * gauss(0, 1))
    b.bn_mark = (t0 + int(rnd() * 4), mark, index, settle, m.funding(t0),
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
    fx = m.fx(t0)
    prem = m.premium(t0)
    up_trades = {}
    up_books = {}
    for code in UPBIT_CODES:
        u = st.up[code]
        u[_IDIO] = 0.97 * u[_IDIO] + (1.5e-4 if code == "KRW-USDT" else 2.5e-5) * gauss(0, 1)
    usdt_f = fx * math.exp(st.up["KRW-USDT"][_IDIO])
    btc_mult = usdt_f * (1 + prem) * math.exp(st.up["KRW-BTC"][_IDIO])
    for code in UPBIT_CODES:
        u = st.up[code]
        tick = UP_TICK[code]
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

