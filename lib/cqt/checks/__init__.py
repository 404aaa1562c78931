"""Pipeline checks: one module per check, one shared result type, Unix exit codes.

    altdata_check       cqt.checks.altdata    raw streams: lag, fill, skew, stuck book, gaps, rejects
    feature_check       cqt.checks.feature    market_1s / predictions: coverage, nulls, ranges; export labels
    feature_leak_check  cqt.checks.leak       time rule, label horizon, recomputation at every t0
    coinglass_check     cqt.checks.coinglass  enabled, key, calls per endpoint, errors

Each module has `evaluate(ctx) -> list[Metric]` (the check itself, on a read-only
connection) and a click `main` (the program). `cqt.checks.base.run_check` wraps an
evaluate function with the exit-code rules; `cqt.checks.runner` runs all four in
one process and records each result in `check_runs`.
"""
from __future__ import annotations

# Order is the runner's order (the seed's order).
CHECKS: tuple[tuple[str, str], ...] = (
    ("altdata_check", "cqt.checks.altdata"),
    ("feature_check", "cqt.checks.feature"),
    ("feature_leak_check", "cqt.checks.leak"),
    ("coinglass_check", "cqt.checks.coinglass"),
)
RUNNER_NAME = "run_pipeline_checks"
