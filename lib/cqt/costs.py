"""What a trade costs: the taker fees the label study, training set and backtest assume.

One place for the numbers so the label threshold's cost and the backtest's fee agree.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config.settings import Settings


@dataclass(frozen=True)
class TakerFees:
    binance_bps: float
    upbit_bps: float

    @classmethod
    def from_settings(cls, settings: Settings) -> TakerFees:
        return cls(binance_bps=settings.get_float("CQT_BINANCE_TAKER_FEE_BPS"),
                   upbit_bps=settings.get_float("CQT_UPBIT_TAKER_FEE_BPS"))

    def venue_bps(self, venue: str) -> float:
        """One leg on one venue (`upbit` or `binance`)."""
        return {"upbit": self.upbit_bps, "binance": self.binance_bps}[venue]
