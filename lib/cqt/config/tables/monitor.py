"""Monitoring hooks: healthchecks.io pings and Prometheus textfile metrics (off unless set)."""
from __future__ import annotations

from functools import partial

from ..var import Var

_V = partial(Var, component="monitor")

TABLE: tuple[Var, ...] = (
    _V("CQT_HC_URL_CHECKS", "", "str",
       "healthchecks.io ping URL of the check runner: `/start`, then `/<exit code>` with the output's last "
       "100 000 bytes, paired by `?rid=`; a secret (logged masked)", default_doc="(off)"),
    _V("CQT_HC_URL_NIGHTLY", "", "str", "healthchecks.io ping URL of the nightly job (the same protocol)",
       default_doc="(off)"),
    _V("CQT_HC_TIMEOUT_S", "10", "float",
       "each ping gives up after this; a failed ping is one warning and never changes a job's exit code",
       0.1, 120.0),
    _V("CQT_TEXTFILE_DIR", "", "str",
       "directory for the Prometheus textfile metrics cqt_checks.prom, cqt_aggregate.prom, cqt_nightly.prom "
       "(node_exporter's --collector.textfile.directory; relative: under the toolkit root)",
       default_doc="(off)"),
)
