"""cqt-aggregate's settings (docs/aggregate.md), read once into an AggregateConfig: the
feature parameters of every asset it writes (CQT_SYMBOLS, cqt.featureparams.params_for)
and the service's own variables."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import ConfigError, lookup
from ..featureparams import FeatureParams, params_for
from .bars import SECOND_MS

SERVICE = "cqt-aggregate"


def _declared(name: str) -> float:
    """The registry's default of a CQT_AGGREGATE_* variable (lib/cqt/config/tables/aggregate.py)."""
    var = lookup(name)
    assert var is not None and var.default is not None, name
    return float(var.default)


#: a bar is written this long after its second ends (the collectors' commit delay)
#: (feature_leak_check reads the same variable to see what the database held when a row was written)
DEFAULT_GRACE_S = _declared("CQT_AGGREGATE_GRACE_S")
DEFAULT_CHUNK_S = int(_declared("CQT_AGGREGATE_CHUNK_S"))
DEFAULT_MAX_REBUILD_S = int(_declared("CQT_AGGREGATE_MAX_REBUILD_S"))


def grace_ms_from(settings: Any) -> int:
    """CQT_AGGREGATE_GRACE_S in ms (default and bounds: the registry; ConfigError when out of them)."""
    return int(round(settings.get_float("CQT_AGGREGATE_GRACE_S") * 1000))


def chunk_s_from(settings: Any) -> int:
    """CQT_AGGREGATE_CHUNK_S: seconds per rebuild chunk."""
    return settings.get_int("CQT_AGGREGATE_CHUNK_S")


@dataclass(frozen=True)
class AggregateConfig:
    #: one FeatureParams per asset written (market_1s.symbol), in CQT_SYMBOLS order
    assets: tuple[FeatureParams, ...]
    grace_ms: int = int(round(DEFAULT_GRACE_S * 1000))
    max_catchup_ms: int = int(_declared("CQT_AGGREGATE_MAX_CATCHUP_S")) * SECOND_MS
    chunk_s: int = DEFAULT_CHUNK_S            # rebuild chunk; live catch-up writes at most catchup_step_s per step
    catchup_step_s: int = int(_declared("CQT_AGGREGATE_CATCHUP_STEP_S"))
    late_window_ms: int = int(_declared("CQT_AGGREGATE_LATE_WINDOW_S")) * SECOND_MS
    late_scan_ms: int = int(_declared("CQT_AGGREGATE_LATE_SCAN_S") * SECOND_MS)
    start_wait_ms: int = int(_declared("CQT_AGGREGATE_START_WAIT_S") * SECOND_MS)
    late_log_ms: int = 10 * SECOND_MS
    max_rebuild_s: int = DEFAULT_MAX_REBUILD_S   # --rebuild refuses a longer span (after clamping to the data)

    def __post_init__(self) -> None:
        if isinstance(self.assets, FeatureParams):      # one asset given as such
            object.__setattr__(self, "assets", (self.assets,))
        names = [p.asset for p in self.assets]
        if not names:
            raise ValueError("AggregateConfig: no asset")
        if len(set(names)) != len(names):
            raise ValueError(f"AggregateConfig: an asset twice in {', '.join(names)}")

    @property
    def symbols(self) -> tuple[str, ...]:
        """The assets written, in order (the `symbol` of market_1s and predictions)."""
        return tuple(p.asset for p in self.assets)


def assets_from_settings(settings: Any, symbol: str | None = None) -> tuple[FeatureParams, ...]:
    """FeatureParams of every asset of CQT_SYMBOLS, or of `symbol` alone (which must be one of them:
    else a ConfigError naming CQT_SYMBOLS)."""
    if symbol is None:
        return tuple(params_for(settings, a) for a in settings.assets)
    asset = symbol.strip().upper()
    if asset not in settings.assets:
        raise ConfigError("CQT_SYMBOLS", f"{symbol!r} is not one of the configured assets "
                                         f"({', '.join(settings.assets)})")
    return (params_for(settings, asset),)


def config_from_settings(settings: Any, symbol: str | None = None) -> AggregateConfig:
    """All cqt-aggregate variables (docs/aggregate.md; defaults and bounds declared in the settings
    registry), for every configured asset or `symbol` alone; raises ConfigError on a bad value."""
    return AggregateConfig(
        assets=assets_from_settings(settings, symbol),
        grace_ms=grace_ms_from(settings),
        max_catchup_ms=settings.get_int("CQT_AGGREGATE_MAX_CATCHUP_S") * SECOND_MS,
        chunk_s=chunk_s_from(settings),
        catchup_step_s=settings.get_int("CQT_AGGREGATE_CATCHUP_STEP_S"),
        late_window_ms=settings.get_int("CQT_AGGREGATE_LATE_WINDOW_S") * SECOND_MS,
        late_scan_ms=int(settings.get_float("CQT_AGGREGATE_LATE_SCAN_S") * SECOND_MS),
        start_wait_ms=int(settings.get_float("CQT_AGGREGATE_START_WAIT_S") * SECOND_MS),
        max_rebuild_s=settings.get_int("CQT_AGGREGATE_MAX_REBUILD_S"),
    )
