"""The assets cqt-sim serves (`--symbols BTC,ETH,SOL`): each one's price level, activity,
tick and lot sizes, and how it moves with the market.

BTC is the market: its dynamics are the model's original ones (`blocks.gen_block`) and
every other asset follows it with a beta plus its own noise, so returns are positively
correlated but not identical, as on the real market. Well-known assets have realistic
levels (ETH ~3 500 USDT, SOL ~200); any other name gets a level, sizes and activity
derived from the seed and the name, so the same seed and list give the same market.
"""
from __future__ import annotations

import math
import random
import re
import zlib
from dataclasses import dataclass

MARKET = "BTC"                     # the asset whose path is the shared market factor
USDT_CODE = "KRW-USDT"             # Upbit's USDT market, always served
_ASSET_RE = re.compile(r"^[A-Z0-9]{2,15}$")

# name -> (price USDT, Binance tick, lot step, trade rate vs BTC, beta to BTC, idiosyncratic
#          1 s volatility, open interest in USD)
KNOWN = {
    "ETH": (3500.0, 0.01, 0.001, 0.8, 1.15, 1.3e-4, 7.0e9),
    "SOL": (200.0, 0.01, 1.0, 0.6, 1.3, 1.9e-4, 2.2e9),
    "BNB": (650.0, 0.01, 0.01, 0.3, 0.8, 1.1e-4, 6.0e8),
    "XRP": (2.3, 0.0001, 0.1, 0.5, 1.2, 2.0e-4, 1.5e9),
    "DOGE": (0.35, 0.00001, 1.0, 0.45, 1.4, 2.3e-4, 1.1e9),
    "ADA": (0.9, 0.0001, 1.0, 0.3, 1.3, 2.1e-4, 5.0e8),
    "AVAX": (35.0, 0.001, 1.0, 0.25, 1.35, 2.2e-4, 3.5e8),
    "LINK": (22.0, 0.001, 0.01, 0.25, 1.25, 2.0e-4, 4.0e8),
    "DOT": (7.0, 0.001, 0.1, 0.2, 1.2, 2.0e-4, 2.5e8),
    "LTC": (100.0, 0.01, 0.001, 0.2, 1.0, 1.6e-4, 3.0e8),
    "TRX": (0.25, 0.00001, 1.0, 0.15, 0.6, 1.2e-4, 2.0e8),
}


def upbit_tick(krw: float) -> float:
    """Upbit's KRW price unit for a price level (its published table)."""
    for floor, tick in ((2_000_000, 1000), (1_000_000, 500), (500_000, 100), (100_000, 50), (10_000, 10),
                        (1_000, 1), (100, 0.1), (10, 0.01), (1, 0.001)):
        if krw >= floor:
            return tick
    return 0.0001


def _decimals(step: float) -> int:
    return max(0, -int(math.floor(math.log10(step) + 1e-9)))


@dataclass(frozen=True)
class AssetSpec:
    """One asset's market facts. Binance prices are integers in units of 10**-pdec (tick_u
    units a tick), quantities integers in lot steps of 10**-qdec."""
    name: str
    price: float            # centre of the USDT price
    pdec: int               # Binance price decimals
    tick_u: int             # Binance tick in price units
    qdec: int               # Binance quantity decimals (lot step 10**-qdec)
    rate: float             # aggTrade rate relative to BTC
    beta: float             # log-return loading on BTC's
    idio: float             # idiosyncratic 1 s log-return std
    oi_usd: float           # open interest level (USD)
    salt: int               # seeds the asset's own random numbers

    @property
    def symbol(self) -> str:
        return f"{self.name}USDT"

    @property
    def code(self) -> str:
        return f"KRW-{self.name}"

    @property
    def ppt(self) -> float:
        """Price units per USDT divided by the tick: mid * ppt -> ticks."""
        return 10.0 ** self.pdec / self.tick_u

    @property
    def tick(self) -> float:
        return self.tick_u / 10.0 ** self.pdec

    @property
    def step(self) -> float:
        return 10.0 ** -self.qdec

    @property
    def q_scale(self) -> float:
        """Median trade size in lot steps (BTC: 24.5 thousandths)."""
        return max(1.0, 2000.0 * min(1.0, 0.35 + 0.65 * self.rate) / self.price / self.step)


def asset_salt(name: str) -> int:
    return zlib.crc32(name.encode()) & 0xFFFFFFFF


def spec_for(name: str, seed: int) -> AssetSpec:
    """The market facts of an asset other than BTC (known level, or derived from seed + name)."""
    salt = asset_salt(name)
    if name in KNOWN:
        price, tick, step, rate, beta, idio, oi = KNOWN[name]
    else:
        r = random.Random(f"{seed}:{name}")
        price = math.exp(r.uniform(math.log(0.05), math.log(500.0)))
        tick = 10.0 ** (math.floor(math.log10(price)) - 4)
        step = min(1.0, max(0.001, 10.0 ** math.floor(math.log10(100.0 / price))))
        rate = r.uniform(0.08, 0.3)
        beta = r.uniform(0.7, 1.5)
        idio = r.uniform(1.5e-4, 3.0e-4)
        oi = math.exp(r.uniform(math.log(3e7), math.log(4e8)))
    pdec = _decimals(tick)
    return AssetSpec(name=name, price=price, pdec=pdec, tick_u=max(1, round(tick * 10 ** pdec)),
                     qdec=_decimals(step), rate=rate, beta=beta, idio=idio, oi_usd=oi, salt=salt)


def parse_assets(text: str) -> tuple[str, ...]:
    """'btc, eth,SOL' -> ('BTC', 'ETH', 'SOL'); ValueError naming a bad entry. USDT is not an
    asset here (KRW-USDT is always served)."""
    out: list[str] = []
    for item in (text or "").split(","):
        a = item.strip().upper()
        if not a:
            continue
        if not _ASSET_RE.match(a) or a == "USDT":
            raise ValueError(f"{item.strip()!r} is not a base asset like BTC or ETH")
        if a not in out:
            out.append(a)
    if not out:
        raise ValueError("no asset given")
    return tuple(out)


def asset_of(symbol: str) -> str:
    """'ETH', 'ETHUSDT', 'ethusdt', 'KRW-ETH' -> 'ETH'; 'KRW-USDT' and 'USDT' -> 'USDT'."""
    s = symbol.strip().upper()
    if s.startswith("KRW-"):
        return s[4:]
    if s.endswith("USDT") and len(s) > 4:
        return s[:-4]
    return s
