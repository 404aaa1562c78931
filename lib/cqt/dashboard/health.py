"""The /healthz decision: is the pipeline working right now, from what the database holds?

200 only when the database is readable, every stream altdata_check judges (per configured
symbol) has data within its lag threshold (CQT_CHECK_<STREAM>_LAG_MAX_S), and the newest
run_pipeline_checks result in check_runs is at most CQT_HEALTHZ_CHECK_MAX_AGE_S old with exit 0;
otherwise 503, each reason in words. Stored results only: a check is never run here, and every
read is one indexed statement (a few milliseconds on a 24 h database).
"""
from __future__ import annotations

import sqlite3
from typing import Any

from .. import bookkeeping, db
from ..checks.thresholds import Thresholds
from ..config import Settings
from ..timeutil import fmt_ms, now_ms
from . import queries

OK, FAIL = "ok", "fail"


def _secs(v: float) -> str:
    return f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def stream_reasons(r: queries.Reader, settings: Settings, as_of_ms: int,
                   streams: dict[str, float | None]) -> list[str]:
    th = Thresholds(settings)
    reasons = []
    for ref in queries.stream_refs(settings):
        _, age = queries.stream_age_s(r, ref, as_of_ms)
        streams[ref.name] = age
        limit = th(ref.lag_env)
        if age is None:
            reasons.append(f"{ref.words}: no data (limit {_secs(limit)} s)")
        elif age > limit:
            reasons.append(f"{ref.words}: no data for {_secs(age)} s (limit {_secs(limit)} s)")
    return reasons


def check_reasons(r: queries.Reader, settings: Settings, as_of_ms: int,
                  checks: dict[str, Any]) -> list[str]:
    max_age = settings.get_float("CQT_HEALTHZ_CHECK_MAX_AGE_S")
    for name, run in queries.latest_checks(r, as_of_ms).items():
        checks[name] = None if run is None else {
            "exit_code": run.exit_code, "ts_ms": run.ts_ms, "at": fmt_ms(run.ts_ms),
            "age_s": round((as_of_ms - run.ts_ms) / 1000, 3), "status": run.summary.get("status")}
    gate = checks.get(bookkeeping.RUNNER)
    if gate is None:
        return [f"{bookkeeping.RUNNER}: no result in check_runs"]
    reasons = []
    if gate["age_s"] > max_age:
        reasons.append(f"{bookkeeping.RUNNER}: newest result is {_secs(gate['age_s'])} s old "
                       f"(limit {_secs(max_age)} s, CQT_HEALTHZ_CHECK_MAX_AGE_S)")
    if gate["exit_code"] != 0:
        failing = [n for n, c in checks.items() if n != bookkeeping.RUNNER and c and c["exit_code"] != 0]
        detail = f": {', '.join(failing)} failing" if failing else ""
        reasons.append(f"{bookkeeping.RUNNER}: exit {gate['exit_code']} at {gate['at']}{detail}")
    return reasons


def decide(settings: Settings, as_of_ms: int | None = None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of /healthz."""
    as_of_ms = now_ms() if as_of_ms is None else int(as_of_ms)
    path = settings.db
    body: dict[str, Any] = {"status": FAIL, "reasons": [], "streams": {}, "checks": {},
                            "db": {"path": str(path), "readable": False, **queries.file_sizes(path)},
                            "as_of": fmt_ms(as_of_ms)}
    reasons: list[str] = body["reasons"]
    try:
        with queries.reader(path) as r:
            body["db"]["schema"] = r.scalar("PRAGMA user_version")
            body["db"]["readable"] = True
            reasons += stream_reasons(r, settings, as_of_ms, body["streams"])
            reasons += check_reasons(r, settings, as_of_ms, body["checks"])
    except db.DatabaseMissing:
        reasons.append(f"database missing: {path}")
    except sqlite3.Error as exc:
        if queries.interrupted(exc):
            reasons.append(f"database too slow: {path}: no answer within {queries.STATEMENT_DEADLINE_S:g} s")
        else:
            reasons.append(f"database unreadable: {path}: {' '.join(str(exc).split())}")
    if not reasons:
        body["status"] = OK
    return (200 if body["status"] == OK else 503), body
