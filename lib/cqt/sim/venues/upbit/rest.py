"""Upbit quotation REST: answers (pure, from the market) and their error shapes.

Errors are ``{"error":{"name":<int>,"message":…}}``; unknown codes are 404 "Code not
found". Handlers get the `cqt.sim.market.Market` (``m.model`` is the dynamics;
``m.last_frames`` the latest formatted frames, for the ticker and order book).
"""
from __future__ import annotations

import json
import re

from ...blocks import DAY_MS
from .frames import utc_parts

PREFIXES = ("/v1/",)

# ------------------------------------------------------------------ REST
class UpbitError(Exception):
    def __init__(self, status: int, message: str, name=None):
        super().__init__(message)
        self.status, self.message, self.name = status, message, name if name is not None else status


def _dump(obj) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


_MISSING = "Missing request parameter error. Check the required parameters!"
_TYPE = "Type mismatch error. Check the parameters type!"


def _market(m, p: dict, name: str = "market") -> str:
    v = p.get(name)
    if not v:
        raise UpbitError(400, _MISSING)
    code = v.upper()
    if code not in m.model.upbit_codes:
        raise UpbitError(404, "Code not found")
    return code


def _int(p: dict, name: str, default=None):
    v = p.get(name)
    if v is None or v == "":
        return default
    if not re.fullmatch(r"-?\d+", v):
        raise UpbitError(400, _TYPE)
    return int(v)


def trades_ticks(m, p: dict, now: int):
    """GET /v1/trades/ticks: market, to (HHmmss | HH:mm:ss, UTC), count (<= 500),
    cursor (sequential_id), days_ago (1..7); newest first."""
    code = _market(m, p)
    count = _int(p, "count", 1)
    count = max(1, min(500, count))
    days_ago = _int(p, "days_ago")
    if days_ago is not None and not 1 <= days_ago <= 7:
        raise UpbitError(400, "days_ago must be between 1 and 7")
    day0 = now - now % DAY_MS - (days_ago or 0) * DAY_MS
    before = now if days_ago is None else day0 + DAY_MS
    to = p.get("to")
    if to:
        mt = re.fullmatch(r"(\d{2}):?(\d{2}):?(\d{2})", to)
        if not mt:
            raise UpbitError(400, _TYPE)
        h, mi, s = (int(x) for x in mt.groups())
        before = min(before, day0 + (h * 3600 + mi * 60 + s) * 1000 + 1000)   # inclusive of that second
    cursor = _int(p, "cursor")
    after_sid = None
    if cursor is not None:
        t_c = m.model.upbit_find_sid(code, cursor, now)
        if t_c is not None:
            after_sid = cursor
            before = min(before, t_c + 1)
        else:
            before = min(before, cursor // 1000)
    out = []
    for tr in m.model.upbit_trades_before(code, before, now, after_sid):
        if days_ago is not None and tr[1] < day0:
            break
        out.append(tr)
        if len(out) >= count:
            break
    rows = []
    for _tms, ttms, price, vol, ab, sid, _bap, _bas, _bbp, _bbs, tk in out:
        d, t, _d8, _t6 = utc_parts(ttms)
        pcl = tk[3]
        rows.append({"market": code, "trade_date_utc": d, "trade_time_utc": t, "timestamp": ttms,
                     "trade_price": price, "trade_volume": vol, "prev_closing_price": pcl,
                     "change_price": round(price - pcl, 8), "ask_bid": ab, "sequential_id": sid})
    return 200, _dump(rows)


_KST_MS = 9 * 3600 * 1000


def _markets(m, p: dict) -> list[str]:
    """The `markets` parameter as codes, with Upbit's errors for a missing or unknown one."""
    v = p.get("markets")
    if not v:
        raise UpbitError(400, _MISSING)
    codes = [c.strip().upper() for c in v.split(",") if c.strip()]
    if not codes or any(c not in m.model.upbit_codes for c in codes):
        raise UpbitError(404, "Code not found")
    return codes


def ticker(m, p: dict, now: int):
    codes = _markets(m, p)
    last = m.last_frames("upbit", now, [f"{c}@ticker" for c in codes], max_back_s=3600)
    rows = []
    for c in codes:
        raw = last.get(f"{c}@ticker")
        if raw is None:
            continue
        t = json.loads(raw)
        kd, kt, kd8, kt6 = utc_parts(t["trade_timestamp"] + _KST_MS)
        rows.append({
            "market": c, "trade_date": t["trade_date"], "trade_time": t["trade_time"],
            "trade_date_kst": kd8, "trade_time_kst": kt6, "trade_timestamp": t["trade_timestamp"],
            "opening_price": t["opening_price"], "high_price": t["high_price"], "low_price": t["low_price"],
            "trade_price": t["trade_price"], "prev_closing_price": t["prev_closing_price"],
            "change": t["change"], "change_price": t["change_price"], "change_rate": t["change_rate"],
            "signed_change_price": t["signed_change_price"], "signed_change_rate": t["signed_change_rate"],
            "trade_volume": t["trade_volume"], "acc_trade_price": t["acc_trade_price"],
            "acc_trade_price_24h": t["acc_trade_price_24h"], "acc_trade_volume": t["acc_trade_volume"],
            "acc_trade_volume_24h": t["acc_trade_volume_24h"],
            "highest_52_week_price": t["highest_52_week_price"], "highest_52_week_date": t["highest_52_week_date"],
            "lowest_52_week_price": t["lowest_52_week_price"], "lowest_52_week_date": t["lowest_52_week_date"],
            "timestamp": t["timestamp"]})
    return 200, _dump(rows)


def orderbook(m, p: dict, now: int):
    codes = _markets(m, p)
    count = max(1, min(30, _int(p, "count", 30)))
    last = m.last_frames("upbit", now, [f"{c}@orderbook" for c in codes], max_back_s=600)
    rows = []
    for c in codes:
        raw = last.get(f"{c}@orderbook")
        if raw is None:
            continue
        ob = json.loads(raw)
        rows.append({"market": c, "timestamp": ob["timestamp"], "total_ask_size": ob["total_ask_size"],
                     "total_bid_size": ob["total_bid_size"],
                     "orderbook_units": [{"ask_price": u["ask_price"], "bid_price": u["bid_price"],
                                          "ask_size": u["ask_size"], "bid_size": u["bid_size"]}
                                         for u in ob["orderbook_units"][:count]], "level": 0})
    return 200, _dump(rows)


_NAMES = {"BTC": ("비트코인", "Bitcoin"), "ETH": ("이더리움", "Ethereum"), "SOL": ("솔라나", "Solana"),
          "XRP": ("엑스알피(리플)", "XRP"), "DOGE": ("도지코인", "Dogecoin"), "ADA": ("에이다", "Cardano"),
          "AVAX": ("아발란체", "Avalanche"), "LINK": ("체인링크", "Chainlink"), "DOT": ("폴카닷", "Polkadot"),
          "TRX": ("트론", "TRON"), "BNB": ("비앤비", "BNB"), "LTC": ("라이트코인", "Litecoin"),
          "USDT": ("테더", "Tether")}


def market_all(m, p: dict, now: int):
    """Every served KRW market (KRW-USDT always); `isDetails=true` adds the warning fields."""
    details = str(p.get("isDetails", "")).lower() == "true"
    rows = []
    for code in m.model.upbit_codes:
        asset = code[4:]
        ko, en = _NAMES.get(asset, (asset, asset.capitalize()))
        row = {"market": code, "korean_name": ko, "english_name": en}
        if details:
            row["market_event"] = {"warning": False, "caution": {
                "PRICE_FLUCTUATIONS": False, "TRADING_VOLUME_SOARING": False, "DEPOSIT_AMOUNT_SOARING": False,
                "GLOBAL_PRICE_DIFFERENCES": False, "CONCENTRATION_OF_SMALL_ACCOUNTS": False}}
        rows.append(row)
    return 200, _dump(sorted(rows, key=lambda r: r["market"]))


def _wrap(fn):
    def handler(m, p, now):
        try:
            return fn(m, p, now)
        except UpbitError as e:
            return e.status, _dump({"error": {"name": e.name, "message": e.message}})
    handler.__name__ = fn.__name__
    return handler


REST = {path: _wrap(fn) for path, fn in {
    "/v1/trades/ticks": trades_ticks,
    "/v1/ticker": ticker,
    "/v1/orderbook": orderbook,
    "/v1/market/all": market_all,
}.items()}

GROUPS = {"/v1/trades/ticks": "trade", "/v1/ticker": "ticker", "/v1/orderbook": "orderbook",
          "/v1/market/all": "market"}


def owns(path: str) -> bool:
    return path.startswith(PREFIXES)


def not_found(path: str) -> tuple[int, str]:
    return 404, _dump({"error": {"name": "not_found", "message": "no Route matched with those values"}})


def error_body(status: int) -> str:
    """The body of an injected HTTP error (a fault), as the real service words it."""
    msg = "Too many API requests." if status in (429, 418) else "Internal server error"
    return json.dumps({"error": {"name": status, "message": msg}}, separators=(",", ":"))
