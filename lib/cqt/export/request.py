"""What an export is asked (ExportRequest, with the limits from the settings) and what it made
(ExportResult), and the error that says why no file was written."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import BY_NAME, Settings
from ..timeutil import fmt_ms
from .labelling import STALE_SOURCES
from .threshold import Threshold

DEFAULT_HORIZON_S = int(BY_NAME["CQT_EXPORT_HORIZON_S"].default)


def nightly_export_name(asset: str, span: str) -> str:
    """The nightly file of one asset: `btc_24h.parquet`, `eth_1h.parquet`, `btc_20260222.parquet`."""
    return f"{asset.lower()}_{span}.parquet"


class ExportError(Exception):
    """An export that did not produce a file; `code` is the exit code."""

    def __init__(self, code: int, message: str):
        self.code = code
        super().__init__(message)


@dataclass
class ExportRequest:
    output: Path
    horizon_sec: int = DEFAULT_HORIZON_S
    from_ms: int | None = None
    to_ms: int | None = None
    last_ms: int | None = None
    threshold: Threshold = field(default_factory=Threshold)
    max_delay_s: int = 5
    allow_missing: tuple[str, ...] = ()      # feature columns that may be NULL; ("all",) for every one
    stale_limits_s: dict[str, float] = field(default_factory=lambda: {s[0]: s[3] for s in STALE_SOURCES})
    record: bool = True
    symbols: tuple[str, ...] = ("BTC",)      # the assets to export, in file order (base assets)
    configured: tuple[str, ...] = ("BTC",)   # CQT_SYMBOLS: an asset outside it must be in the database


@dataclass
class AssetResult:
    """One asset's share of an export: its candidates, rows, drops, labels and volatility."""
    symbol: str
    rows: int
    candidates: int
    drops: dict[str, int]
    drop_details: dict[str, dict[str, int]]
    labels: dict[str, int]
    volatility: dict[str, float | None]
    models: list[str]

    def summary(self, from_ms: int, to_ms: int) -> dict[str, Any]:
        return {"rows": self.rows, "candidates": self.candidates, "drops": dict(self.drops),
                "drops_total": sum(self.drops.values()), "label_ts_violation": self.drops["label_ts_violation"],
                "labels": dict(self.labels), "label_pct": label_pct(self.labels, self.rows),
                "volatility": dict(self.volatility), "from_ts_ms": from_ms, "to_ts_ms": to_ms}


def label_pct(labels: dict[str, int], rows: int) -> dict[str, float]:
    total = max(rows, 1)
    return {k: round(100.0 * v / total, 2) for k, v in labels.items()}


@dataclass
class ExportResult:
    output: Path
    size_bytes: int
    rows: int
    candidates: int
    drops: dict[str, int]
    drop_details: dict[str, dict[str, int]]
    labels: dict[str, int]
    volatility: dict[str, float | None]
    from_ms: int
    to_ms: int
    horizon_sec: int
    threshold: Threshold
    elapsed_s: float
    code_version: str
    recorded: bool = False
    symbols: tuple[str, ...] = ("BTC",)                              # the assets whose rows the file holds
    per_symbol: dict[str, AssetResult] = field(default_factory=dict)  # every asset asked for

    def summary(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "size_bytes": self.size_bytes,
            "rows": self.rows,
            "candidates": self.candidates,
            "drops": dict(self.drops),
            "drops_total": sum(self.drops.values()),
            "label_ts_violation": self.drops["label_ts_violation"],
            "drop_details": self.drop_details,
            "labels": dict(self.labels),
            "label_pct": label_pct(self.labels, self.rows),
            "volatility": dict(self.volatility),
            "from_ts_ms": self.from_ms,
            "to_ts_ms": self.to_ms,
            "from": fmt_ms(self.from_ms),
            "to": fmt_ms(self.to_ms),
            "horizon_sec": self.horizon_sec,
            "threshold": self.threshold.spec,
            "elapsed_s": round(self.elapsed_s, 3),
            "code_version": self.code_version,
            "recorded": self.recorded,
            "symbols": list(self.symbols),
            "per_symbol": {a: r.summary(self.from_ms, self.to_ms) for a, r in self.per_symbol.items()},
        }


def settings_request(settings: Settings, output: Path, **kw: Any) -> ExportRequest:
    """An ExportRequest with the limits from the settings (CQT_LABEL_MAX_DELAY_S, CQT_EXPORT_MAX_AGE_*)."""
    limits = {name: settings.get_float(var) for name, _col, var, _default in STALE_SOURCES}
    # Defaults an operator (or the nightly unit) can set once in .env instead of on every command line.
    if kw.get("allow_missing") is None:
        kw["allow_missing"] = split_columns(settings.get_str("CQT_EXPORT_ALLOW_MISSING"))
    if kw.get("horizon_sec") is None:
        kw["horizon_sec"] = settings.get_int("CQT_EXPORT_HORIZON_S")
    if kw.get("symbols") is None:
        kw["symbols"] = tuple(settings.assets)
    return ExportRequest(output=output, max_delay_s=settings.label_max_delay_s, stale_limits_s=limits,
                         configured=tuple(settings.assets), **kw)


def split_columns(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())
