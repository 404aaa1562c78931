"""The dashboard (cqt-dashboard) and its /healthz answer."""
from __future__ import annotations

from functools import partial

from ..var import Var

_V = partial(Var, component="dashboard")

TABLE: tuple[Var, ...] = (
    _V("CQT_DASHBOARD_PORT", "8501", "int", "port of the dashboard and its /healthz", 1, 65535),
    _V("CQT_DASHBOARD_ADDRESS", "127.0.0.1", "str",
       "address the dashboard listens on; the page has no login: keep it on loopback (SSH tunnel, or a "
       "reverse proxy with authentication)"),
    _V("CQT_HEALTHZ_CHECK_MAX_AGE_S", "900", "float",
       "/healthz is 200 only if the newest run_pipeline_checks result is at most this old (and exit 0)", 1.0),
)
