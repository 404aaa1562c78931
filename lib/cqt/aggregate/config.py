"""cqt-aggregate's settings (docs/aggregate.md), read once into an AggregateConfig."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import lookup
from ..featureparams import FeatureParams, params_from_settings
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
    params: FeatureParams
    grace_ms: int = int(round(DEFAULT_GRACE_S * 1000))
    max_catchup_ms: int = int(_declared("CQT_AGGREGATE_MAX_CATCHUP_S")) * SECOND_MS
    chunk_s: int = DEFAULT_CHUNK_S            # rebuild chunk; live catch-up writes at most catchup_step_s per step
    catchup_step_s: int = int(_declared("CQT_AGGREGATE_CATCHUP_STEP_S"))
    late_window_ms: int = int(_declared("CQT_AGGREGATE_LATE_WINDOW_S")) * SECOND_MS
    late_scan_ms: int = int(_declared("CQT_AGGREGATE_LATE_SCAN_S") * SECOND_MS)
    start_wait_ms: int = int(_declared("CQT_AGGREGATE_START_WAIT_S") * SECOND_MS)
    late_log_ms: int = 10 * SECOND_MS
    max_rebuild_s: int = DEFAULT_MAX_REBUILD_S   # --rebuild refuses a longer span (after clamping to the data)


def config_from_settings(settings: Any) -> AggregateConfig:
    """All cqt-aggregate variables (docs/aggregate.md; defaults and bounds declared in the settings
    registry); raises ConfigError on a bad value."""
    return AggregateConfig(
        params=params_from_settings(settings),
        grace_ms=grace_ms_from(settings),
        max_catchup_ms=settings.get_int("CQT_AGGREGATE_MAX_CATCHUP_S") * SECOND_MS,
        chunk_s=chunk_s_from(settings),
        catchup_step_s=settings.get_int("CQT_AGGREGATE_CATCHUP_STEP_S"),
        late_window_ms=settings.get_int("CQT_AGGREGATE_LATE_WINDOW_S") * SECOND_MS,
        late_scan_ms=int(settings.get_float("CQT_AGGREGATE_LATE_SCAN_S") * SECOND_MS),
        start_wait_ms=int(settings.get_float("CQT_AGGREGATE_START_WAIT_S") * SECOND_MS),
        max_rebuild_s=settings.get_int("CQT_AGGREGATE_MAX_REBUILD_S"),
    )
