"""Report and nightly job: cqt-report's journal source, the nightly checks step, retention's captures."""
from __future__ import annotations

from functools import partial

from ..var import Var

_V = partial(Var, component="nightly")

TABLE: tuple[Var, ...] = (
    _V("CQT_REPORT_JOURNAL", "auto", "str",
       "where the top 5 come from: `auto` (journal when cqt units log there, else `events`), `journal`, `events`"),
    _V("CQT_NIGHTLY_CHECKS_CMD", "", "str", "command line for the checks step; `--window N --db DB` are appended",
       default_doc="(the runner)"),
    _V("CQT_NIGHTLY_CHECK_TIMEOUT_S", "900", "float", "the checks step is stopped (and counts as FAIL) after this",
       1.0),
    _V("CQT_CAPTURE_DIR", "data/captures", "path", "rotated capture files for retention"),
)
