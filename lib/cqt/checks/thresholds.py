"""Every default threshold of every check, as the settings registry declares them.

Each entry is overridable by the environment variable it is named after (read
through `Settings.get_float`, so `.env` works too and a bad value is a one-line
config error, exit 78). The table itself is cqt.config.tables.checks; docs/checks.md
lists the same table and a test keeps the two in step.

Per-column null-rate limits of feature_check: `CQT_CHECK_NULL_RATE_MAX` is the
default for every column; NULL_RATE_DEFAULTS (from each column's record in
cqt.catalogue) relaxes it for columns that may legitimately be empty, and any column
can be set on its own with
`CQT_CHECK_NULL_RATE_MAX_<TABLE>_<COLUMN>` (e.g. CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_RV_300S).
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import catalogue
from ..config import Settings
from ..config.tables import checks as checks_table


@dataclass(frozen=True)
class Threshold:
    env: str
    default: float
    help: str
    minimum: float = 0.0


# Built from the settings registry (cqt.config.tables.checks), where each threshold is declared once.
THRESHOLDS: tuple[Threshold, ...] = tuple(
    Threshold(v.name, float(v.default), v.help, v.minimum or 0.0) for v in checks_table.THRESHOLDS)
BY_ENV = {t.env: t for t in THRESHOLDS}

# Null-rate limits that differ from CQT_CHECK_NULL_RATE_MAX, keyed "table.column": the
# catalogue's records say which and why (docs/checks.md "Null-rate overrides").
NULL_RATE_DEFAULTS: dict[str, float] = catalogue.null_rate_limits()

# Columns NULL by design (the catalogue says so), judged by a consistency rule instead.
NULL_BY_DESIGN: dict[str, str] = catalogue.null_by_design()


def null_rate_env(table: str, column: str) -> str:
    return f"CQT_CHECK_NULL_RATE_MAX_{table.upper()}_{column.upper()}"


class Thresholds:
    """Threshold values for one run, read from the settings' merged environment."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._cache: dict[str, float] = {}

    def __call__(self, env: str) -> float:
        if env not in self._cache:
            if env not in BY_ENV:   # a programming error: every threshold is declared in the registry
                raise KeyError(env)
            self._cache[env] = self.settings.get_float(env)
        return self._cache[env]

    def null_rate_max(self, table: str, column: str) -> float:
        env = null_rate_env(table, column)
        default = NULL_RATE_DEFAULTS.get(f"{table}.{column}")
        if default is None:
            default = self("CQT_CHECK_NULL_RATE_MAX")
        return self.settings.get_float(env, default)   # a family: its default is computed here

    def poll_interval_s(self, env: str) -> float:
        """A REST poller's interval (CQT_POLL_*): the same variable the poller reads."""
        return self.settings.get_float(env)

    def overridden(self) -> dict[str, str]:
        """CQT_CHECK_* variables set in this run's environment (for the JSON output)."""
        return {k: v for k, v in self.settings.raw.items() if k.startswith("CQT_CHECK_") and v != ""}
