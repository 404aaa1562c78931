"""The one result type every check returns, its text and JSON forms, and the exit-code rules.

Exit codes (docs/checks.md): 0 PASS, 1 FAIL (a metric missed its threshold),
2 usage error (click), 3 could not evaluate (database missing/unreadable, schema
too old or too new, an unexpected error inside the check), 78 misconfigured.
An unexpected exception is never exit 1: that would read as a data failure.
"""
from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass, field
from typing import Any

from .. import exitcodes
from ..timeutil import fmt_ms

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"

_OPS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}


def fmt_num(v: Any) -> str:
    """Compact, stable number text: ints as ints, floats to 4 significant digits."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v == int(v) and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.4g}"
    return str(v)


@dataclass
class Metric:
    """One measured number against one threshold: `name value threshold PASS|FAIL`."""

    name: str
    value: float | int | None
    op: str | None = None          # <=, >=, <, >, == ; None for a SKIP
    threshold: float | None = None
    status: str = PASS
    reason: str = ""               # why it failed / was skipped, or a short detail

    @classmethod
    def judge(cls, name: str, value: float | int | None, op: str, threshold: float,
              reason: str = "", none_reason: str = "no data") -> "Metric":
        """PASS when `value op threshold` holds; a missing value (None) is a FAIL."""
        if value is None:
            return cls(name, None, op, threshold, FAIL, reason or none_reason)
        ok = _OPS[op](value, threshold)
        return cls(name, value, op, threshold, PASS if ok else FAIL, reason)

    @classmethod
    def skip(cls, name: str, reason: str) -> "Metric":
        return cls(name, None, None, None, SKIP, reason)

    @property
    def limit_text(self) -> str:
        return "-" if self.op is None else f"{self.op}{fmt_num(self.threshold)}"

    def line(self) -> str:
        text = f"{self.name} {fmt_num(self.value)} {self.limit_text} {self.status}"
        return f"{text}  ({self.reason})" if self.reason and self.status != PASS else text

    def to_dict(self) -> dict[str, Any]:
        value = self.value
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            value = str(value)
        return {"name": self.name, "value": value, "op": self.op, "threshold": self.threshold,
                "status": self.status, "reason": self.reason or None}


@dataclass
class CheckResult:
    check: str
    window_s: int
    as_of_ms: int
    metrics: list[Metric] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None       # set when the check could not evaluate
    error_code: int | None = None  # NOEVAL (3) or CONFIG (78) when error is set
    elapsed_ms: int = 0

    @property
    def failed(self) -> list[Metric]:
        return [m for m in self.metrics if m.status == FAIL]

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return self.error_code if self.error_code is not None else exitcodes.NOEVAL
        return exitcodes.FAIL if self.failed else exitcodes.OK

    @property
    def status(self) -> str:
        code = self.exit_code
        if code == exitcodes.OK:
            return PASS
        if code == exitcodes.FAIL:
            return FAIL
        return "MISCONFIGURED" if code == exitcodes.CONFIG else "NOT EVALUATED"

    def summary(self, max_named: int = 4) -> str:
        where = f"window={self.window_s}s as_of={fmt_ms(self.as_of_ms)}"
        if self.error is not None:
            return f"{self.check}: {self.status} (exit {self.exit_code}): {self.error} {where}"
        failed = self.failed
        skipped = sum(1 for m in self.metrics if m.status == SKIP)
        skip_txt = f", {skipped} skipped" if skipped else ""
        if not failed:
            return f"{self.check}: PASS ({len(self.metrics)} metrics{skip_txt}) {where}"
        named = ", ".join(f"{m.name}={fmt_num(m.value)} (limit {m.limit_text})" for m in failed[:max_named])
        more = f", +{len(failed) - max_named} more" if len(failed) > max_named else ""
        return (f"{self.check}: FAIL ({len(failed)} of {len(self.metrics)} metrics failed{skip_txt}: "
                f"{named}{more}) {where}")

    def text(self) -> str:
        lines = [m.line() for m in self.metrics]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(self.summary())
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "status": self.status,
            "exit_code": self.exit_code,
            "window_s": self.window_s,
            "as_of_ms": self.as_of_ms,
            "as_of": fmt_ms(self.as_of_ms),
            "summary": self.summary(),
            "error": self.error,
            "failed": [m.name for m in self.failed],
            "metrics": [m.to_dict() for m in self.metrics],
            "notes": self.notes,
            "elapsed_ms": self.elapsed_ms,
        }

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), **kw)


def combine_exit_codes(codes: list[int]) -> int:
    """The runner's rule: 0 only if every check passed, else the highest code."""
    return max(codes) if codes else exitcodes.OK
