"""Scheduler: per-job trigger overrides of cqt-scheduler (the jobs themselves are in cqt.schedule)."""
from __future__ import annotations

from functools import partial

from ..var import Var

_V = partial(Var, component="scheduler")

TABLE: tuple[Var, ...] = (
    _V("CQT_SCHEDULE_PIPELINE_CHECKS", "", "str",
       "cqt-scheduler only: `off`, another 5-field cron expression, or `@every <N>s` (tests, demos)",
       default_doc="(the definition)"),
    _V("CQT_SCHEDULE_NIGHTLY", "", "str", "same for the nightly job", default_doc="(the definition)"),
)
