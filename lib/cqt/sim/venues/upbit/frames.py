"""Upbit WebSocket frames, formatted from the model's blocks, and the other formats.

DEFAULT-format JSON as the real service sends it (numbers written the way Java's
Double.toString does); SIMPLE renames keys, the *_LIST formats wrap a frame in an
array; a SNAPSHOT is the latest frame of a stream marked as such.
"""
from __future__ import annotations

import json
import random
import time
from collections import OrderedDict

from ...assets import USDT_CODE, asset_salt
from ...blocks import DAY_MS, Block

TYPES = ("trade", "orderbook", "ticker")
STREAMS = tuple(f"{c}@{t}" for c in ("KRW-BTC", USDT_CODE) for t in TYPES)     # BTC alone
TRADE_STREAM = "KRW-BTC@trade"
LEVELS = 30                                    # order-book levels per frame

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


def _code_salt(code: str) -> int:
    """Seeds a code's resting book (KRW-BTC 0 and KRW-USDT 1, as when they were the only ones)."""
    return {"KRW-BTC": 0, USDT_CODE: 1}.get(code, 2 + asset_salt(code) % 1_000_000)


class Frames:
    """Formats blocks of one model; keeps the resting book sizes (10-minute buckets,
    seeded) and price texts it has made. Streams `<code>@trade|orderbook|ticker` for every
    served code (KRW-<asset>, and KRW-USDT)."""

    def __init__(self, model):
        self.model = model
        self.codes = model.upbit_codes
        self.legs = model.upbit_legs
        self.streams = tuple(f"{c}@{t}" for c in self.codes for t in TYPES)
        self.all_streams = self.streams
        self.trade_stream = f"{self.codes[0]}@trade"       # default target of gap and malformed
        self.trade_streams = {c: f"{c}@trade" for c in self.codes}
        self._tables: OrderedDict[tuple, tuple] = OrderedDict()
        self._price_str: dict[float, str] = {}

    def ob_table(self, code: str, bucket: int) -> tuple:
        """Resting sizes by price level for a 10-minute bucket: (ask sizes, ask texts,
        bid sizes, bid texts), 1024 slots each, indexed by price // tick."""
        key = (code, bucket)
        t = self._tables.get(key)
        if t is None:
            r = random.Random((self.model.seed * 1_000_003 + bucket) * 7 + _code_salt(code))
            base = self.legs[code].ob_base
            ask = [round(base * (0.02 + 3.0 * r.random() ** 3), 8) for _ in range(1024)]
            bid = [round(base * (0.02 + 3.0 * r.random() ** 3), 8) for _ in range(1024)]
            t = (ask, [f"{v:.8f}" for v in ask], bid, [f"{v:.8f}" for v in bid])
            self._tables[key] = t
            if len(self._tables) > 4 * len(self.codes):
                self._tables.popitem(last=False)
        return t

    def book(self, code: str, ts: int, bid0: int, ask0: int, noise) -> tuple[str, float, float]:
        """One Upbit order book, 30 levels best first: (units JSON text, total ask size,
        total bid size). Deep levels rest (sizes by price level per 10 minutes); the top
        three change with every frame."""
        leg = self.legs[code]
        tick, dec = leg.tick, leg.dec
        ask_f, ask_s, bid_f, bid_s = self.ob_table(code, ts // 600_000)
        ai, bi = int(round(ask0 / tick)), int(round(bid0 / tick))
        pstr = self._price_str
        mk = self._pstr
        units = []
        tas = tbs = 0.0
        for i in range(LEVELS):
            ia = (ai + i) & 1023
            ib = (bi - i) & 1023
            ap = ask0 + i * tick
            bp = bid0 - i * tick
            if dec:
                ap, bp = round(ap, dec), round(bp, dec)
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

    def format(self, b: Block) -> list:
        """[(ts, stream, raw, sequential_id or None)] of a block, sorted."""
        items = []
        for ci, code in enumerate(self.codes):
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
                units, tas, tbs = self.book(code, tms, bid0, ask0, noise)
                items.append((tms, ci * 10 + 3, seq, s_ob,
                              f'{{"type":"orderbook","code":"{code}","timestamp":{tms},'
                              f'"total_ask_size":{tas:.8f},"total_bid_size":{tbs:.8f},'
                              f'"orderbook_units":[{units}],"stream_type":"REALTIME","level":0}}', None))
        items.sort()
        return [(it[0], it[3], it[4], it[5]) for it in items]

    @property
    def _h52_date(self) -> str:
        return utc_parts(self.model.start_ms - 41 * DAY_MS)[0]

    @property
    def _l52_date(self) -> str:
        return utc_parts(self.model.start_ms - 297 * DAY_MS)[0]


SIMPLE_KEYS = {
    "type": "ty", "code": "cd", "timestamp": "tms", "stream_type": "st",
    # trade
    "trade_date": "td", "trade_time": "ttm", "trade_timestamp": "ttms", "trade_price": "tp",
    "trade_volume": "tv", "ask_bid": "ab", "prev_closing_price": "pcp", "change": "c",
    "change_price": "cp", "sequential_id": "sid", "best_ask_price": "bap", "best_ask_size": "bas",
    "best_bid_price": "bbp", "best_bid_size": "bbs",
    # orderbook
    "total_ask_size": "tas", "total_bid_size": "tbs", "orderbook_units": "obu", "ask_price": "ap",
    "bid_price": "bp", "ask_size": "as", "bid_size": "bs", "level": "lv",
    # ticker
    "opening_price": "op", "high_price": "hp", "low_price": "lp", "signed_change_price": "scp",
    "change_rate": "cr", "signed_change_rate": "scr", "acc_trade_volume": "atv",
    "acc_trade_volume_24h": "atv24h", "acc_trade_price": "atp", "acc_trade_price_24h": "atp24h",
    "acc_ask_volume": "aav", "acc_bid_volume": "abv", "highest_52_week_price": "h52wp",
    "highest_52_week_date": "h52wdt", "lowest_52_week_price": "l52wp", "lowest_52_week_date": "l52wdt",
    "market_state": "ms", "is_trading_suspended": "its", "delisting_date": "dd",
    "market_warning": "mw",
}


def _simple(obj):
    if isinstance(obj, dict):
        return {SIMPLE_KEYS.get(k, k): _simple(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_simple(v) for v in obj]
    return obj


def to_format(raw: str, fmt: str) -> str:
    """A DEFAULT frame in another format (SIMPLE renames keys; *_LIST wraps in an array)."""
    if fmt == "DEFAULT":
        return raw
    if fmt == "JSON_LIST":
        return "[" + raw + "]"
    s = json.dumps(_simple(json.loads(raw)), separators=(",", ":"), ensure_ascii=False)
    return "[" + s + "]" if fmt == "SIMPLE_LIST" else s


def as_snapshot(raw: str) -> str:
    return raw.replace('"stream_type":"REALTIME"', '"stream_type":"SNAPSHOT"')
