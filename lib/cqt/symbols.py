"""Venue symbols, derived from a base asset and back, in one place.

An asset is named by its base (``BTC``). Each venue spells it its own way: Binance
USDⓈ-M futures ``BTCUSDT``, Upbit ``KRW-BTC``, Coinglass's aggregated endpoints
``BTC``. Collectors, the aggregator and the checks all derive these here, so they
cannot disagree. Pure: no settings, no venues.
"""
from __future__ import annotations

#: quote assets a Binance symbol may end with; longest match first where one is a
#: suffix of another (USDT before USD)
BINANCE_QUOTES: tuple[str, ...] = ("USDT", "USDC", "BUSD", "FDUSD", "USD")
BINANCE_QUOTE = "USDT"
UPBIT_QUOTE = "KRW"


def _asset(asset: str) -> str:
    return asset.strip().upper()


def binance_symbol(asset: str) -> str:
    """``BTC`` -> ``BTCUSDT`` (the USDT-margined perpetual)."""
    return _asset(asset) + BINANCE_QUOTE


def upbit_code(asset: str) -> str:
    """``BTC`` -> ``KRW-BTC`` (the KRW market)."""
    return f"{UPBIT_QUOTE}-{_asset(asset)}"


def coinglass_coin(asset: str) -> str:
    """``BTC`` -> ``BTC`` (Coinglass names aggregated series by the coin)."""
    return _asset(asset)


def base_asset_of_binance(symbol: str) -> str:
    """``BTCUSDT`` -> ``BTC``: the symbol without its quote asset (any of
    BINANCE_QUOTES); a symbol that ends with none of them is returned as it is."""
    sym = symbol.strip().upper()
    for quote in BINANCE_QUOTES:
        if sym.endswith(quote) and len(sym) > len(quote):
            return sym[: -len(quote)]
    return sym


def base_asset_of_upbit(code: str) -> str:
    """``KRW-BTC`` -> ``BTC``; a code without a market prefix is returned as it is."""
    code = code.strip().upper()
    return code.split("-", 1)[1] if "-" in code else code


def coinglass_coin_of_binance(symbol: str) -> str:
    """The Coinglass coin of a Binance symbol (``BTCUSDT`` -> ``BTC``): what the
    Coinglass collector writes and the aggregator reads by default."""
    return coinglass_coin(base_asset_of_binance(symbol))
