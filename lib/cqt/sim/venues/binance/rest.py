"""Binance USD-M futures REST: answers (pure, from the model), request weights, error shapes.

Answers follow the real service: prices and quantities as JSON strings, times as
integer ms, errors as ``{"code": -XXXX, "msg": "..."}`` with HTTP 400 (an unknown symbol:
-1121 "Invalid symbol."). Handlers get the `cqt.sim.market.Market`; the endpoint functions
its ``model`` and, per symbol, the model's `Leg`.
"""
from __future__ import annotations

import calendar
import json
import re
import time

from ...blocks import FUNDING_MS
from .frames import fixed
from .history import HistoryLimits, invalid_param_msg, window_times

PREFIXES = ("/fapi/", "/futures/data/")
NO_LIMITS = HistoryLimits()          # today's answers: no age refusals, oldest rows first


# ------------------------------------------------------------------ REST helpers
class BinanceError(Exception):
    def __init__(self, code: int, msg: str, status: int = 400):
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


def _dump(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _err(code: int, msg: str, status: int = 400) -> tuple[int, str]:
    return status, _dump({"code": code, "msg": msg})


def _mandatory(p: dict, name: str) -> str:
    v = p.get(name)
    if v is None or v == "":
        raise BinanceError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
    return v


def _int(p: dict, name: str, default=None):
    v = p.get(name)
    if v is None or v == "":
        return default
    if not re.fullmatch(r"-?[0-9]{1,20}", v):
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(v)


def _leg(m, p: dict):
    """The served symbol named by `symbol` (upper case, like the real API)."""
    leg = m.by_symbol.get(_mandatory(p, "symbol"))
    if leg is None:
        raise BinanceError(-1121, "Invalid symbol.")
    return leg


def _legs(m, p: dict) -> list:
    """One symbol when `symbol` is given, else every served symbol."""
    return [_leg(m, p)] if p.get("symbol") else list(m.served)


def _limit(p: dict, default: int, maximum: int) -> int:
    n = _int(p, "limit", default)
    if n < 1 or n > maximum:
        raise BinanceError(-1130, "Data sent for parameter 'limit' is not valid.")
    return n


def _agg_rest(tr, pdec: int, qdec: int) -> dict:
    a, pc, qm, f, last_id, T, m, _e = tr
    q = fixed(qm, qdec)
    return {"a": a, "p": fixed(pc, pdec), "q": q, "nq": q, "f": f, "l": last_id, "T": T, "m": m}


def _latest_mark(m, sym: str, now: int):
    k = (now - 1) // 1000
    for kk in (k, k - 1):
        b = m.block(kk)
        if b is not None and b.bn_mark[sym][0] < now:
            return b.bn_mark[sym]
    b = m.block(max(m.k0, k))
    return b.bn_mark[sym]


# ------------------------------------------------------------------ endpoints
def time_(m, p: dict, now: int):
    return 200, _dump({"serverTime": now})


def ping(m, p: dict, now: int):
    return 200, "{}"


_RATE_LIMITS = [
    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
]


def _symbol_info(leg) -> dict:
    spec = leg.spec
    if spec.name == "BTC":               # the original entry, byte for byte
        filters = [{"filterType": "PRICE_FILTER", "minPrice": "261.10", "maxPrice": "809484", "tickSize": "0.10"},
                   {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"}]
        precision = (2, 3)
    else:
        tick = fixed(spec.tick_u, spec.pdec)
        step = fixed(1, spec.qdec)
        filters = [{"filterType": "PRICE_FILTER", "minPrice": fixed(max(spec.tick_u, int(spec.price * 0.003
                                                                                           * 10 ** spec.pdec)),
                                                                    spec.pdec),
                    "maxPrice": fixed(int(spec.price * 10 * 10 ** spec.pdec), spec.pdec), "tickSize": tick},
                   {"filterType": "LOT_SIZE", "minQty": step,
                    "maxQty": fixed(max(1, int(2e6 / spec.price / spec.step)), spec.qdec), "stepSize": step},
                   {"filterType": "MIN_NOTIONAL", "notional": "5"}]
        precision = (spec.pdec, spec.qdec)
    sym = leg.symbol
    return {"symbol": sym, "pair": sym, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
            "onboardDate": 1569398400000, "status": "TRADING", "baseAsset": spec.name, "quoteAsset": "USDT",
            "marginAsset": "USDT", "pricePrecision": precision[0], "quantityPrecision": precision[1],
            "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN", "filters": filters}


def _quarterly(leg, now: int) -> dict:
    """The asset's current-quarter delivery contract (BTCUSDT_260626): listed, not a perpetual."""
    g = time.gmtime(now / 1000)
    month = ((g.tm_mon - 1) // 3 + 1) * 3
    return dict(_symbol_info(leg), symbol=f"{leg.symbol}_{g.tm_year % 100:02d}{month:02d}26",
                contractType="CURRENT_QUARTER", deliveryDate=calendar.timegm((g.tm_year, month, 26, 8, 0, 0)) * 1000)


def exchange_info(m, p: dict, now: int):
    symbols = [_symbol_info(leg) for leg in m.served]
    if len(m.served) > 1:
        # the real list also holds delivery contracts (same base asset, not perpetual)
        symbols += [_quarterly(leg, now) for leg in m.served if leg.asset in ("BTC", "ETH")]
    return 200, _dump({
        "timezone": "UTC", "serverTime": now, "futuresType": "U_MARGINED", "rateLimits": _RATE_LIMITS,
        "exchangeFilters": [], "assets": [], "symbols": symbols})


def agg_trades(m, p: dict, now: int, hist: HistoryLimits = NO_LIMITS):
    leg = _leg(m, p)
    sym = leg.symbol
    decs = (leg.spec.pdec, leg.spec.qdec)
    limit = _limit(p, 500, 1000)
    from_id = _int(p, "fromId")
    start = _int(p, "startTime")
    end = _int(p, "endTime")
    if start is not None and end is not None:
        if start > end:
            raise BinanceError(-1023, "Start time is greater than end time.")
        if end - start > 3_600_000:
            raise BinanceError(-1127, "More than 1 hours between startTime and endTime.")
    if hist.agg_too_old(start, now):
        raise BinanceError(-1130, invalid_param_msg("startTime"))
    out = []
    if from_id is not None:
        for tr in leg.agg_trades_from(from_id, now):
            if not out and hist.agg_too_old(tr[5], now):      # the first trade asked for is too old
                raise BinanceError(-1130, invalid_param_msg("fromId"))
            if (start is not None and tr[5] < start) or (end is not None and tr[5] > end):
                continue
            out.append(tr)
            if len(out) >= limit:
                break
    elif start is not None:
        hi = end if end is not None else start + 3_600_000
        for tr in leg.agg_trades_between(start, hi, now):
            out.append(tr)
            if len(out) >= limit:
                break
    else:
        hi = end if end is not None else now
        lo = hi - 3_600_000
        # newest `limit` trades at or before hi, walking back a second at a time
        k = min(hi, now - 1) // 1000
        acc = []
        floor_k = max(m.k0, m.retain_start_ms(now) // 1000, lo // 1000)
        while k >= floor_k and len(acc) < limit:
            b = m.block(k)
            blk = [tr for tr in b.bn_trades[sym] if tr[5] <= hi and tr[7] < now and tr[5] >= lo]
            acc[:0] = blk
            k -= 1
        out = acc[-limit:]
    return 200, _dump([_agg_rest(tr, *decs) for tr in out])


def open_interest(m, p: dict, now: int):
    leg = _leg(m, p)
    t = now - now % 10          # the real value refreshes in steps, not every ms
    return 200, _dump({"openInterest": f"{leg.series.open_interest(t):.{leg.spec.qdec}f}", "symbol": leg.symbol,
                       "time": t})


PERIODS = {"5m": 300_000, "15m": 900_000, "30m": 1_800_000, "1h": 3_600_000, "2h": 7_200_000,
           "4h": 14_400_000, "6h": 21_600_000, "12h": 43_200_000, "1d": 86_400_000}
_THIRTY_DAYS = 30 * 86_400_000


def _period_times(m, p: dict, now: int, hist: HistoryLimits = NO_LIMITS):
    """The symbol's leg and the row timestamps of a /futures/data endpoint: period
    boundaries <= now (the row stamped t covers the period that ends at t), last 30 days."""
    leg = _leg(m, p)
    period = _mandatory(p, "period")
    if period not in PERIODS:
        raise BinanceError(-1120, "Invalid interval.")
    P = PERIODS[period]
    limit = _limit(p, 30, 500)
    start = _int(p, "startTime")
    end = _int(p, "endTime")
    if start is not None and end is not None and start > end:
        raise BinanceError(-1023, "Start time is greater than end time.")
    latest = now - now % P
    earliest = now - _THIRTY_DAYS
    hi = min(latest, end - end % P) if end is not None else latest
    if hist.futures_start_too_old(start, now):
        raise BinanceError(-1130, invalid_param_msg("startTime"))
    if start is not None:
        t = max(start, earliest)
        times = window_times(-(-t // P) * P, hi, P, limit, hist.futures_data_window)
    else:
        times = [t for t in range(hi - (limit - 1) * P, hi + 1, P) if t >= earliest]
    return leg, P, times


def _supply(leg, t: int) -> float:
    if leg.asset == "BTC":
        return 19_850_000.0 + (t - 1_767_225_600_000) / 600_000 * 3.125
    return leg.spec.oi_usd / leg.spec.price * 45.0         # a circulating supply of its size


def open_interest_hist(m, p: dict, now: int, hist: HistoryLimits = NO_LIMITS):
    leg, _P, times = _period_times(m, p, now, hist)
    rows = []
    for t in times:
        oi = leg.series.open_interest(t)
        rows.append({"symbol": leg.symbol, "sumOpenInterest": f"{oi:.8f}",
                     "sumOpenInterestValue": f"{oi * leg.price_at(t):.8f}",
                     "CMCCirculatingSupply": f"{_supply(leg, t):.3f}", "timestamp": t})
    return 200, _dump(rows)


def _ratio_rows(leg, times, fn) -> list:
    rows = []
    for t in times:
        la = round(fn(t), 4)
        sa = round(1 - la, 4)
        rows.append({"symbol": leg.symbol, "longShortRatio": f"{la / sa:.4f}", "longAccount": f"{la:.4f}",
                     "shortAccount": f"{sa:.4f}", "timestamp": t})
    return rows


def global_ls_ratio(m, p: dict, now: int, hist: HistoryLimits = NO_LIMITS):
    leg, _P, times = _period_times(m, p, now, hist)
    return 200, _dump(_ratio_rows(leg, times, leg.series.long_account))


def top_ls_position_ratio(m, p: dict, now: int, hist: HistoryLimits = NO_LIMITS):
    leg, _P, times = _period_times(m, p, now, hist)
    return 200, _dump(_ratio_rows(leg, times, leg.series.top_long_position))


def taker_ls_ratio(m, p: dict, now: int, hist: HistoryLimits = NO_LIMITS):
    leg, P, times = _period_times(m, p, now, hist)
    rows = []
    for t in times:
        buy, sell = leg.taker_volume(t - P, t)
        rows.append({"buySellRatio": f"{buy / sell if sell else 0.0:.4f}", "buyVol": f"{buy:.4f}",
                     "sellVol": f"{sell:.4f}", "timestamp": t})
    return 200, _dump(rows)


def _premium_row(m, leg, now: int) -> dict:
    e, mark, index, settle, rate, next_t = _latest_mark(m, leg.symbol, now)
    return {"symbol": leg.symbol, "markPrice": f"{mark:.8f}", "indexPrice": f"{index:.8f}",
            "estimatedSettlePrice": f"{settle:.8f}", "lastFundingRate": f"{rate:.8f}",
            "interestRate": "0.00010000", "nextFundingTime": next_t, "time": e}


def premium_index(m, p: dict, now: int):
    if p.get("symbol"):
        return 200, _dump(_premium_row(m, _leg(m, p), now))
    return 200, _dump([_premium_row(m, leg, now) for leg in m.served])


def funding_rate(m, p: dict, now: int):
    legs = _legs(m, p)
    limit = _limit(p, 100, 1000)
    start = _int(p, "startTime")
    end = _int(p, "endTime")
    if start is not None and end is not None and start > end:
        raise BinanceError(-1023, "Start time is greater than end time.")
    hi = min(now, end) if end is not None else now
    hi = hi - hi % FUNDING_MS
    if start is not None:
        t = -(-start // FUNDING_MS) * FUNDING_MS
        times = []
        while t <= hi and len(times) < limit:
            times.append(t)
            t += FUNDING_MS
    else:
        times = list(range(hi - (limit - 1) * FUNDING_MS, hi + 1, FUNDING_MS))
    rows = [{"symbol": leg.symbol, "fundingRate": f"{leg.series.funding(t - 1):.8f}", "fundingTime": t,
             "markPrice": f"{leg.price_at(t):.8f}", "rateType": "Regular"} for t in times for leg in legs]
    return 200, _dump(rows[:limit] if start is not None else rows[-limit:])


def _book_row(m, leg, now: int) -> dict | None:
    k = (now - 1) // 1000
    sym, pdec, qdec = leg.symbol, leg.spec.pdec, leg.spec.qdec
    while k >= m.k0:
        for bt in reversed(m.block(k).bn_books[sym]):
            if bt[0] < now:
                e, T, u, bc, bq, ac, aq = bt
                return {"symbol": sym, "bidPrice": fixed(bc, pdec), "bidQty": fixed(bq, qdec),
                        "askPrice": fixed(ac, pdec), "askQty": fixed(aq, qdec), "time": T}
        k -= 1
    return None


def book_ticker(m, p: dict, now: int):
    if p.get("symbol"):
        row = _book_row(m, _leg(m, p), now)
        return 200, _dump(row) if row is not None else "{}"
    rows = [r for r in (_book_row(m, leg, now) for leg in m.served) if r is not None]
    return 200, _dump(rows)


_HISTORY_AWARE = {"agg_trades", "open_interest_hist", "global_ls_ratio", "top_ls_position_ratio", "taker_ls_ratio"}


def _wrap(fn):
    def handler(market, p, now):
        try:
            if fn.__name__ in _HISTORY_AWARE:
                return fn(market.model, p, now, getattr(market, "binance_history", NO_LIMITS))
            return fn(market.model, p, now)
        except BinanceError as e:
            return _err(e.code, e.msg, e.status)
    handler.__name__ = fn.__name__
    return handler


REST = {path: _wrap(fn) for path, fn in {
    "/fapi/v1/time": time_,
    "/fapi/v1/ping": ping,
    "/fapi/v1/exchangeInfo": exchange_info,
    "/fapi/v1/aggTrades": agg_trades,
    "/fapi/v1/openInterest": open_interest,
    "/futures/data/openInterestHist": open_interest_hist,
    "/futures/data/globalLongShortAccountRatio": global_ls_ratio,
    "/futures/data/topLongShortPositionRatio": top_ls_position_ratio,
    "/futures/data/takerlongshortRatio": taker_ls_ratio,
    "/fapi/v1/premiumIndex": premium_index,
    "/fapi/v1/fundingRate": funding_rate,
    "/fapi/v1/ticker/bookTicker": book_ticker,
}.items()}


def weight(path: str, params: dict) -> int:
    """Request weight per the official docs (IP limits)."""
    if path == "/fapi/v1/aggTrades":
        return 20
    if path == "/fapi/v1/premiumIndex":
        return 1 if params.get("symbol") else 10
    if path == "/fapi/v1/ticker/bookTicker":
        return 2 if params.get("symbol") else 5
    if path.startswith("/futures/data/"):
        return 0
    return 1


def owns(path: str) -> bool:
    return path.startswith(PREFIXES)


def not_found(path: str) -> tuple[int, str]:
    return 404, _dump({"code": -5000, "msg": f"Path {path}, Method GET is invalid"})
