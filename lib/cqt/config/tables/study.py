"""Label study, training set and backtest: the trading costs they assume."""
from __future__ import annotations

from functools import partial

from ..var import Var

_V = partial(Var, component="study")

TABLE: tuple[Var, ...] = (
    # Published regular-tier taker rates (docs/costs.md says where from); a VIP tier or a BNB
    # discount is lower: set your own.
    _V("CQT_BINANCE_TAKER_FEE_BPS", "5", "float",
       "Binance USDⓈ-M taker fee per leg, in basis points (regular tier 0.0500 %)", 0.0, 1000.0),
    _V("CQT_UPBIT_TAKER_FEE_BPS", "5", "float",
       "Upbit KRW-market fee per leg, in basis points (0.05 %, maker and taker alike)", 0.0, 1000.0),
)
