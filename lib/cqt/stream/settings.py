"""LoopSettings: the WebSocket loop's knobs, read from the CQT_* variables (docs/collectors.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoopSettings:
    """Knobs of the loop; `from_settings` reads the CQT_* variables (see docs/collectors.md)."""
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 60.0
    backoff_reset_s: float = 60.0
    max_age_s: float = 23 * 3600.0
    connect_timeout_s: float = 10.0
    recv_timeout_s: float = 0.5
    rollover_overlap_s: float = 5.0
    flush_rows: int = 1000
    flush_s: float = 0.05
    connect_interval_s: float = 1.0      # at most one new connection per this long, all endpoints together
    ca_bundle: str | None = None         # CA file for wss:// (Settings.ca_bundle); None: the system's
    location_backoff_s: float = 3600.0   # after a 451 handshake (restricted location)

    @classmethod
    def from_settings(cls, settings: Any) -> "LoopSettings":
        g = settings.get_float
        return cls(
            backoff_base_s=g("CQT_BACKOFF_BASE_S", 1.0, 0.001),
            backoff_cap_s=g("CQT_BACKOFF_CAP_S", 60.0, 0.001),
            backoff_reset_s=g("CQT_BACKOFF_RESET_S", 60.0, 0.0),
            max_age_s=g("CQT_WS_MAX_AGE_S", 23 * 3600.0, 1.0),
            connect_timeout_s=g("CQT_WS_CONNECT_TIMEOUT_S", 10.0, 0.1),
            recv_timeout_s=min(1.0, g("CQT_WS_RECV_TIMEOUT_S", 0.5, 0.01)),
            connect_interval_s=g("CQT_WS_CONNECT_INTERVAL_S"),
            ca_bundle=settings.ca_bundle,
            location_backoff_s=g("CQT_REST_LOCATION_BACKOFF_S"),
        )
