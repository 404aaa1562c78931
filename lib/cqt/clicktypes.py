"""click parameter types shared by every CLI, so options are named and parsed alike."""
from __future__ import annotations

import click

from .timeutil import parse_duration_ms, parse_time_ms


class TimeParam(click.ParamType):
    """A time option: ISO-8601 (UTC when no zone is given) or epoch milliseconds -> epoch ms.

    Times outside 2009-01-01 ... 2100-01-01 UTC are a usage error (exit 2), like any unparsable value.
    """

    name = "TIME"

    def convert(self, value, param, ctx):
        if value is None:
            return value
        try:
            return parse_time_ms(value)
        except (ValueError, TypeError) as exc:
            self.fail(str(exc), param, ctx)


class DurationParam(click.ParamType):
    """A length of time: '90s', '30m', '1h', '7d' -> milliseconds (1 s ... the span of accepted times)."""

    name = "DURATION"

    def convert(self, value, param, ctx):
        if value is None or isinstance(value, int):
            return value
        try:
            return parse_duration_ms(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


TIME = TimeParam()
DURATION = DurationParam()
