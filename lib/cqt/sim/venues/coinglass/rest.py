"""Coinglass API v4: REST answers (pure, from the model), error shapes and the plan rules.

Bars carry their OPEN time; a bar covers [time, time + interval).  The newest bar
returned may still be forming: its values are computed up to "now" and change
until the interval closes; older bars are final.  Envelope
``{"code":"0","msg":"success","data":[...]}``; numbers are strings or JSON
numbers per endpoint exactly as in the official examples. Every served asset answers:
aggregated endpoints per coin (`symbol=ETH`), pair endpoints for Binance's `ETHUSDT`;
anything else has no data (an empty list). Handlers get the `cqt.sim.market.Market`;
the endpoint functions its ``model`` (m) and the asset's `Leg`.
"""
from __future__ import annotations

import json

PREFIXES = ("/api/",)

INTERVALS = {"1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
             "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
             "12h": 43_200_000, "1d": 86_400_000, "1w": 604_800_000}
_WEEK_OFFSET = 4 * 86_400_000       # weekly bars open on Monday 00:00 UTC

# Smallest interval each plan may ask for (docs: Hobbyist >= 4h, Startup >= 30m, Standard+ all).
PLANS = {"hobbyist": "4h", "startup": "30m", "standard": "1m", "professional": "1m"}
PLAN_LIMITS = {"hobbyist": 30, "startup": 80, "standard": 300, "professional": 1200}

# `--coinglass-errors real`: the shapes public client code reports from the real API (the
# default `legacy` keeps the sim's older HTTP 401 answers, which name the interval).
PLAN_REFUSAL_STATUS, PLAN_REFUSAL_REAL = 200, ("401", "Upgrade plan")         # names no interval
BAD_KEY_STATUS, BAD_KEY_REAL = 400, ("400", "Invalid API key provided")


def plan_allows(plan: str, interval: str) -> bool:
    if interval not in INTERVALS:
        return True                  # the endpoint itself answers the bad interval
    return INTERVALS[interval] >= INTERVALS[PLANS[plan]]


def envelope(data) -> str:
    return json.dumps({"code": "0", "msg": "success", "data": data}, separators=(",", ":"))


def error_body(code: str, msg: str) -> str:
    return json.dumps({"code": code, "msg": msg}, separators=(",", ":"))


class CoinglassError(Exception):
    def __init__(self, status: int, msg: str):
        super().__init__(msg)
        self.status, self.msg = status, msg


def _int(p: dict, name: str):
    v = p.get(name)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise CoinglassError(400, f"{name} must be a number") from None


def _bars(p: dict, now: int) -> tuple[int, list[int]]:
    iv = p.get("interval")
    if not iv:
        raise CoinglassError(400, "interval is required")
    if iv not in INTERVALS:
        raise CoinglassError(400, f"interval {iv} is not supported")
    bar_ms = INTERVALS[iv]
    off = _WEEK_OFFSET if iv == "1w" else 0
    limit = _int(p, "limit") or 1000
    limit = max(1, min(1000, limit))
    start, end = _int(p, "start_time"), _int(p, "end_time")

    def floor(t):
        return t - (t - off) % bar_ms

    newest = floor(now)
    hi = min(newest, floor(end)) if end is not None else newest
    if start is not None:
        t = floor(start)
        if t < start:
            t += bar_ms
        opens = []
        while t <= hi and len(opens) < limit:
            opens.append(t)
            t += bar_ms
    else:
        opens = list(range(hi - (limit - 1) * bar_ms, hi + 1, bar_ms))
    return bar_ms, opens


def _ohlc(fn, t_open: int, bar_ms: int, now: int) -> tuple[float, float, float, float]:
    """OHLC of fn over [t_open, min(t_open + bar_ms, now)] on a 12-step grid (plus "now"
    for a forming bar)."""
    t_end = min(t_open + bar_ms, now)
    g = bar_ms // 12
    vals = [fn(t) for t in range(t_open, t_end, g)]
    vals.append(fn(t_end))
    return vals[0], max(vals), min(vals), vals[-1]


def _need(p: dict, *names):
    for n in names:
        if not p.get(n):
            raise CoinglassError(400, f"{n} is required")


def _num_str(v: float, nd: int) -> str:
    s = f"{v:.{nd}f}".rstrip("0").rstrip(".")
    return s if s not in ("", "-0") else "0"


_AGG_OI_MULT = 3.4           # all exchanges / Binance
_AGG_LIQ_MULT = 4.2
_AGG_TAKER_MULT = 3.0


def _coin(m, p: dict):
    """The served asset of an aggregated endpoint's `symbol` (a coin: BTC), or None."""
    sym = p["symbol"].upper()
    return m.legs[sym] if sym in m.assets else None


def _pair(m, p: dict):
    """The served asset of a pair endpoint (`exchange=Binance&symbol=BTCUSDT`), or None."""
    if p["exchange"].lower() != "binance":
        return None
    return m.by_symbol.get(p["symbol"].upper())


def oi_aggregated(m, p: dict, now: int):
    _need(p, "symbol")
    bar_ms, opens = _bars(p, now)
    leg = _coin(m, p)
    if leg is None:
        return envelope([])
    usd = p.get("unit", "usd") != "coin"

    def val(t):
        oi = leg.series.open_interest(t) * _AGG_OI_MULT
        return oi * leg.price_at(t) if usd else oi
    rows = []
    for t in opens:
        o, h, lo, c = _ohlc(val, t, bar_ms, now)
        rows.append({"time": t, "open": _num_str(o, 2), "high": _num_str(h, 2), "low": _num_str(lo, 2),
                     "close": _num_str(c, 2)})
    return envelope(rows)


def oi_pair(m, p: dict, now: int):
    _need(p, "exchange", "symbol")
    bar_ms, opens = _bars(p, now)
    leg = _pair(m, p)
    if leg is None:
        return envelope([])
    rows = []
    for t in opens:
        o, h, lo, c = _ohlc(lambda x: leg.series.open_interest(x) * leg.price_at(x), t, bar_ms, now)
        rows.append({"time": t, "open": _num_str(o, 2), "high": _num_str(h, 2), "low": _num_str(lo, 2),
                     "close": _num_str(c, 2)})
    return envelope(rows)


def funding_history(m, p: dict, now: int):
    _need(p, "exchange", "symbol")
    bar_ms, opens = _bars(p, now)
    leg = _pair(m, p)
    if leg is None:
        return envelope([])
    rows = []
    for t in opens:
        o, h, lo, c = _ohlc(lambda x: leg.series.funding(x) * 100, t, bar_ms, now)       # percent, like Coinglass
        rows.append({"time": t, "open": _num_str(o, 6), "high": _num_str(h, 6), "low": _num_str(lo, 6),
                     "close": _num_str(c, 6)})
    return envelope(rows)


def liq_aggregated(m, p: dict, now: int):
    _need(p, "exchange_list", "symbol")
    bar_ms, opens = _bars(p, now)
    leg = _coin(m, p)
    if leg is None:
        return envelope([])
    n_ex = len([e for e in p["exchange_list"].split(",") if e.strip()])
    mult = _AGG_LIQ_MULT * min(1.0, 0.45 + 0.2 * n_ex)
    rows = []
    for t in opens:
        lng, sht = leg.liquidations(t, min(t + bar_ms, now))
        rows.append({"time": t, "aggregated_long_liquidation_usd": round(lng * mult, 5),
                     "aggregated_short_liquidation_usd": round(sht * mult, 5)})
    return envelope(rows)


def liq_pair(m, p: dict, now: int):
    _need(p, "exchange", "symbol")
    bar_ms, opens = _bars(p, now)
    leg = _pair(m, p)
    if leg is None:
        return envelope([])
    rows = []
    for t in opens:
        lng, sht = leg.liquidations(t, min(t + bar_ms, now))
        rows.append({"time": t, "long_liquidation_usd": _num_str(lng, 5),
                     "short_liquidation_usd": _num_str(sht, 5)})
    return envelope(rows)


def _ratio_rows(fn, prefix: str, opens, bar_ms, now):
    rows = []
    for t in opens:
        lp = round(fn(min(t + bar_ms, now)) * 100, 2)
        sp = round(100 - lp, 2)
        rows.append({"time": t, f"{prefix}_long_percent": lp, f"{prefix}_short_percent": sp,
                     f"{prefix}_long_short_ratio": round(lp / sp, 2)})
    return rows


def _pair_ratio(m, p: dict, now: int, series: str, prefix: str):
    _need(p, "exchange", "symbol")
    bar_ms, opens = _bars(p, now)
    leg = _pair(m, p)
    if leg is None:
        return envelope([])
    return envelope(_ratio_rows(getattr(leg.series, series), prefix, opens, bar_ms, now))


def global_ls(m, p: dict, now: int):
    return _pair_ratio(m, p, now, "long_account", "global_account")


def top_position(m, p: dict, now: int):
    return _pair_ratio(m, p, now, "top_long_position", "top_position")


def taker_aggregated(m, p: dict, now: int):
    _need(p, "exchange_list", "symbol")
    bar_ms, opens = _bars(p, now)
    leg = _coin(m, p)
    if leg is None:
        return envelope([])
    rows = []
    for t in opens:
        t_end = min(t + bar_ms, now)
        buy, sell = leg.taker_volume(t, t_end)
        px = leg.price_at(t_end)
        rows.append({"time": t, "aggregated_buy_volume_usd": round(buy * px * _AGG_TAKER_MULT, 4),
                     "aggregated_sell_volume_usd": round(sell * px * _AGG_TAKER_MULT, 4)})
    return envelope(rows)


def taker_pair(m, p: dict, now: int):
    _need(p, "exchange", "symbol")
    bar_ms, opens = _bars(p, now)
    leg = _pair(m, p)
    if leg is None:
        return json.dumps({"code": "0", "data": []}, separators=(",", ":"))
    rows = []
    for t in opens:
        t_end = min(t + bar_ms, now)
        buy, sell = leg.taker_volume(t, t_end)
        px = leg.price_at(t_end)
        rows.append({"time": t, "taker_buy_volume_usd": _num_str(buy * px, 4),
                     "taker_sell_volume_usd": _num_str(sell * px, 4)})
    # the official example of this endpoint has no "msg"
    return json.dumps({"code": "0", "data": rows}, separators=(",", ":"))


def _wrap(fn):
    def handler(market, p, now):
        try:
            return 200, fn(market.model, p, now)
        except CoinglassError as e:
            return e.status, error_body(str(e.status), e.msg)
    handler.__name__ = fn.__name__
    return handler


REST = {path: _wrap(fn) for path, fn in {
    "/api/futures/open-interest/aggregated-history": oi_aggregated,
    "/api/futures/open-interest/history": oi_pair,
    "/api/futures/funding-rate/history": funding_history,
    "/api/futures/liquidation/aggregated-history": liq_aggregated,
    "/api/futures/liquidation/history": liq_pair,
    "/api/futures/global-long-short-account-ratio/history": global_ls,
    "/api/futures/top-long-short-position-ratio/history": top_position,
    "/api/futures/aggregated-taker-buy-sell-volume/history": taker_aggregated,
    "/api/futures/v2/taker-buy-sell-volume/history": taker_pair,
}.items()}


def owns(path: str) -> bool:
    return path.startswith(PREFIXES)


def not_found(path: str) -> tuple[int, str]:
    return 404, error_body("404", "The requested resource does not exist")
