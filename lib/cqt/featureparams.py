"""What the feature values depend on besides the data, and how far back each source is read.

    params = params_for(settings, "ETH")         # FeatureParams (frozen) of one asset, from the settings
    lookback_ms(source, params)                  # raw rows older than this before t_from never matter
    max_lookback_ms(params)                      # the longest of them

The features are computed per asset (the `symbol` of market_1s/predictions): a
FeatureParams names one asset and the venue symbols its raw rows are read by — Upbit
KRW-<asset>, Binance <asset>USDT, the Coinglass coin <asset> and pair <asset>USDT — and
KRW-USDT, the FX rate every asset shares. Sources are the per-second stream summaries
and the polled series of cqt.rawread; each feature's own look-back is in cqt.catalogue.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .catalogue import BN_RET_WINDOWS, KIMCHI_CHG_S, LIQ_WINDOW_S, OI_CHG_S, WINDOW_S
from .config import ConfigError
from .symbols import binance_symbol as binance_symbol_of_asset, coinglass_coin, upbit_code as upbit_code_of_asset
from .timerule import PERIOD_MS

SECOND_MS = 1000
MODEL = "baseline-v1"
USDT_CODE = "KRW-USDT"
_ASSET = re.compile(r"[A-Z0-9]{1,20}")


@dataclass(frozen=True)
class FeatureParams:
    """Everything the feature values of one asset depend on besides the data. Build it
    from the settings with `params_for(settings, asset)`, so every caller computes the
    same thing. The venue symbols left empty are derived from `asset` (cqt.symbols):
    FeatureParams(asset="ETH") reads KRW-ETH, ETHUSDT and the Coinglass coin ETH."""
    asset: str = "BTC"           # market_1s.symbol / predictions.symbol
    upbit_code: str = ""         # KRW-<asset>
    usdt_code: str = USDT_CODE   # shared by every asset
    binance_symbol: str = ""     # <asset>USDT
    horizon_sec: int = 120
    model: str = MODEL
    carry_s: int = 600           # Upbit close, Upbit book, Binance last, mark price
    usdt_carry_s: int = 3600     # KRW-USDT last trade (a sparse market)
    oi_carry_s: int = 300        # Binance open interest (polled every ~10 s)
    ls_period: str = "5m"        # binance_ratios period used for ls_ratio
    cg_symbol: str = ""          # coinglass_open_interest.symbol (the coin: <asset>)
    cg_exchange: str = "Binance"  # coinglass_funding.exchange
    cg_interval: str = "1h"      # CQT_COINGLASS_INTERVAL
    cg_delay_s: int = 60         # CQT_COINGLASS_DELAY_S

    def __post_init__(self) -> None:
        if not _ASSET.fullmatch(self.asset):
            raise ValueError(f"asset: {self.asset!r} is not a base asset like BTC")
        for name, derive in (("upbit_code", upbit_code_of_asset), ("binance_symbol", binance_symbol_of_asset),
                             ("cg_symbol", coinglass_coin)):
            if not getattr(self, name):
                object.__setattr__(self, name, derive(self.asset))
        for name in ("ls_period", "cg_interval"):
            if getattr(self, name) not in PERIOD_MS:
                raise ValueError(f"{name}: unknown period {getattr(self, name)!r}")
        for name in ("carry_s", "usdt_carry_s", "oi_carry_s", "horizon_sec"):
            if int(getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0")

    @property
    def cg_symbol_pair(self) -> str:
        """coinglass_funding.symbol: the pair the Coinglass collector asks for (the Binance symbol)."""
        return self.binance_symbol

    def carry_ms(self, source: str) -> int:
        """How long a value of `source` may be carried forward, measured from its
        observation time (a value observed at o is used at t only while t - o < carry)."""
        if source == "ls":      # available at period end: up to ~2 periods old before the next
            return 3 * PERIOD_MS[self.ls_period]
        if source in ("cg_oi", "cg_funding"):   # bar close + delay, then one interval to the next
            return 2 * PERIOD_MS[self.cg_interval] + self.cg_delay_s * SECOND_MS
        secs = {"upbit": self.carry_s, "book": self.carry_s, "binance": self.carry_s, "mark": self.carry_s,
                "usdt": self.usdt_carry_s, "oi": self.oi_carry_s, "liq": 0}[source]
        return secs * SECOND_MS


def coinglass_coin_for(settings: Any, asset: str) -> str:
    """The Coinglass coin read for `asset`: the asset itself (what the Coinglass collector
    writes), or CQT_AGGREGATE_CG_SYMBOL when it is set — honoured only while CQT_SYMBOLS
    names one asset (one coin cannot stand for several assets): else a ConfigError."""
    override = settings.get_str("CQT_AGGREGATE_CG_SYMBOL", "")
    if not override:
        return coinglass_coin(asset)
    if len(settings.assets) != 1:
        raise ConfigError("CQT_AGGREGATE_CG_SYMBOL",
                          f"{override!r} applies only when CQT_SYMBOLS names one asset; it names "
                          f"{', '.join(settings.assets)}: unset it (each asset then reads its own Coinglass coin)")
    return override


def params_for(settings: Any, asset: str) -> FeatureParams:
    """FeatureParams of `asset` from cqt Settings (documented variables in docs/aggregate.md):
    Binance symbol `settings.binance_symbol_of(asset)`, Upbit market `settings.upbit_code_of(asset)`,
    KRW-USDT `settings.usdt_code`, the Coinglass coin of `coinglass_coin_for`.
    Raises cqt.config.ConfigError on a bad value."""
    asset = asset.strip().upper()
    if not _ASSET.fullmatch(asset):
        raise ConfigError("CQT_SYMBOLS", f"{asset!r} is not a base asset like BTC")
    ls_period = settings.get_str("CQT_AGGREGATE_LS_PERIOD")
    if ls_period not in PERIOD_MS:
        raise ConfigError("CQT_AGGREGATE_LS_PERIOD", f"{ls_period!r} is not one of {', '.join(PERIOD_MS)}")
    return FeatureParams(
        asset=asset, upbit_code=settings.upbit_code_of(asset), usdt_code=settings.usdt_code,
        binance_symbol=settings.binance_symbol_of(asset),
        # defaults and bounds (at most a day each) declared in the settings registry
        horizon_sec=settings.get_int("CQT_AGGREGATE_HORIZON_S"),
        carry_s=settings.get_int("CQT_AGGREGATE_CARRY_S"),
        usdt_carry_s=settings.get_int("CQT_AGGREGATE_USDT_CARRY_S"),
        oi_carry_s=settings.get_int("CQT_AGGREGATE_OI_CARRY_S"),
        ls_period=ls_period,
        cg_symbol=coinglass_coin_for(settings, asset),
        cg_exchange=settings.get_str("CQT_AGGREGATE_CG_EXCHANGE"),
        cg_interval=settings.coinglass_interval,
        cg_delay_s=settings.coinglass_delay_s,
    )


def params_all(settings: Any) -> tuple[FeatureParams, ...]:
    """FeatureParams of every configured asset (settings.assets), in their order."""
    return tuple(params_for(settings, a) for a in settings.assets)


def params_from_settings(settings: Any) -> FeatureParams:
    """FeatureParams of the first configured asset (code that computes one asset only;
    prefer `params_for`)."""
    return params_for(settings, settings.assets[0])


def as_params(p: Any) -> FeatureParams:
    """FeatureParams from FeatureParams, cqt Settings (its first asset) or None (the defaults: BTC)."""
    if p is None:
        return FeatureParams()
    if isinstance(p, FeatureParams):
        return p
    return params_from_settings(p)


STREAM_SOURCES = ("upbit", "usdt", "book", "binance", "mark", "liq")
POLLED_SOURCES = ("oi", "ls", "cg_oi", "cg_funding")
#: seconds before t_from a source's per-second values are needed (its longest window)
SOURCE_WINDOW_S = {"upbit": WINDOW_S, "usdt": KIMCHI_CHG_S, "binance": max(max(BN_RET_WINDOWS), LIQ_WINDOW_S,
                   KIMCHI_CHG_S), "book": 0, "mark": 0, "liq": LIQ_WINDOW_S, "oi": OI_CHG_S, "ls": 0,
                   "cg_oi": 0, "cg_funding": 0}


def lookback_ms(source: str, params: FeatureParams) -> int:
    """How far before t_from raw rows of `source` can matter (before the warm-up factor):
    its window, plus how long a value may be carried, plus one second for stream
    buckets (a bucket holds (b-1 s, b]). Rows older than that never change a result."""
    extra = SECOND_MS if source in STREAM_SOURCES else 0
    return SOURCE_WINDOW_S[source] * SECOND_MS + params.carry_ms(source) + extra


def max_lookback_ms(params: FeatureParams | None = None) -> int:
    """The longest raw-data look-back of any feature for these parameters."""
    p = as_params(params)
    return max(lookback_ms(s, p) for s in STREAM_SOURCES + POLLED_SOURCES)


#: the longest look-back with the default parameters (1 h Coinglass bars: 2 h + 60 s)
MAX_LOOKBACK_MS = max_lookback_ms(FeatureParams())
