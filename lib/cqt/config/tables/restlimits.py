"""REST answers that stop requests for long: shared by the collectors' backfills and the pollers."""
from __future__ import annotations

from functools import partial

from ..var import Var

_V = partial(Var, component="restlimits")

TABLE: tuple[Var, ...] = (
    _V("CQT_REST_LOCATION_BACKOFF_S", "3600", "float",
       "after an HTTP 451 (the venue refuses this host's location) no request to that service, and no WebSocket "
       "connect to it, for this long", 1.0, note="1 h"),
)
