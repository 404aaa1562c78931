"""The per-component tables of the settings registry, in the order the docs show them.

SECTIONS: (README heading, marker key, components shown under it). A new component is a
module here with a TABLE, listed in TABLES and placed in a section.
"""
from __future__ import annotations

from ..var import Var
from . import (
    aggregate,
    checks,
    collectors,
    core,
    dashboard,
    export,
    monitor,
    nightly,
    pollers,
    restlimits,
    scheduler,
    study,
)

TABLES: dict[str, tuple[Var, ...]] = {
    "core": core.TABLE,
    "collectors": collectors.TABLE,
    "pollers": pollers.TABLE,
    "restlimits": restlimits.TABLE,
    "aggregate": aggregate.TABLE,
    "checks": checks.TABLE,
    "scheduler": scheduler.TABLE,
    "export": export.TABLE,
    "nightly": nightly.TABLE,
    "study": study.TABLE,
    "dashboard": dashboard.TABLE,
    "monitor": monitor.TABLE,
}

SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Core", "core", ("core",)),
    ("Collectors (WebSocket)", "collectors", ("collectors",)),
    ("Pollers (REST)", "pollers", ("pollers", "restlimits")),
    ("Aggregation", "aggregate", ("aggregate",)),
    ("Checks", "checks", ("checks", "scheduler")),
    ("Export", "export", ("export",)),
    ("Report and nightly job", "nightly", ("nightly",)),
    ("Label study, training set and backtest", "study", ("study",)),
    ("Dashboard and monitoring", "dashboard", ("dashboard", "monitor")),
)
