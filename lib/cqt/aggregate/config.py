"""cqt-aggregate's settings (docs/aggregate.md), read once into an AggregateConfig."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..featureparams import FeatureParams, params_from_settings
from .bars import SECOND_MS

SERVICE = "cqt-aggregate"
DEFAULT_MAX_REBUILD_S = 400 * 86_400
#: a bar is written this long after its second ends (the collectors' commit delay); the leak check
#: reads the same value to rebuild the view of what the database held when a row was written
DEFAULT_GRACE_S = 2.0
DEFAULT_CHUNK_S = 3600


def grace_ms_from(settings: Any) -> int:
    """CQT_AGGREGATE_GRACE_S in ms (0 .. 3600 s; ConfigError otherwise)."""
    return int(round(settings.get_float("CQT_AGGREGATE_GRACE_S", DEFAULT_GRACE_S, minimum=0.0, maximum=3600) * 1000))


def chunk_s_from(settings: Any) -> int:
    """CQT_AGGREGATE_CHUNK_S: seconds per rebuild chunk (1 .. 86 400)."""
    return settings.get_int("CQT_AGGREGATE_CHUNK_S", DEFAULT_CHUNK_S, minimum=1, maximum=86_400)


@dataclass(frozen=True)
class AggregateConfig:
    params: FeatureParams
    grace_ms: int = int(DEFAULT_GRACE_S * 1000)
    max_catchup_ms: int = 6 * 3600 * SECOND_MS
    chunk_s: int = DEFAULT_CHUNK_S            # rebuild chunk; live catch-up writes at most catchup_step_s per step
    catchup_step_s: int = 600
    late_window_ms: int = 3600 * SECOND_MS
    late_scan_ms: int = 30 * SECOND_MS
    start_wait_ms: int = 120 * SECOND_MS
    late_log_ms: int = 10 * SECOND_MS
    max_rebuild_s: int = DEFAULT_MAX_REBUILD_S   # --rebuild refuses a longer span (after clamping to the data)


def config_from_settings(settings: Any) -> AggregateConfig:
    """All cqt-aggregate variables (docs/aggregate.md); raises ConfigError on a bad value."""
    day = 86_400
    return AggregateConfig(
        params=params_from_settings(settings),
        grace_ms=grace_ms_from(settings),
        max_catchup_ms=settings.get_int("CQT_AGGREGATE_MAX_CATCHUP_S", 6 * 3600, minimum=1, maximum=30 * day) * SECOND_MS,
        chunk_s=chunk_s_from(settings),
        catchup_step_s=settings.get_int("CQT_AGGREGATE_CATCHUP_STEP_S", 600, minimum=1, maximum=day),
        late_window_ms=settings.get_int("CQT_AGGREGATE_LATE_WINDOW_S", 3600, minimum=1, maximum=7 * day) * SECOND_MS,
        late_scan_ms=int(settings.get_float("CQT_AGGREGATE_LATE_SCAN_S", 30.0, minimum=0.1, maximum=3600) * SECOND_MS),
        start_wait_ms=int(settings.get_float("CQT_AGGREGATE_START_WAIT_S", 120.0, minimum=0.0, maximum=day) * SECOND_MS),
        max_rebuild_s=settings.get_int("CQT_AGGREGATE_MAX_REBUILD_S", DEFAULT_MAX_REBUILD_S, minimum=1,
                                       maximum=3650 * day),
    )
