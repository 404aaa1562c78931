"""The click options every program shares, declared once so they are named, typed and bounded alike.

Each is a decorator usable bare (`@db_option`) or with a program's own wording
(`@db_option(help="...")`). Parameter names: db, as_json, window, as_of, from_ms, to_ms, out, last_ms.
"""
from __future__ import annotations

from typing import Any, Callable

import click

from .clicktypes import DURATION, TIME

DEFAULT_WINDOW_S = 600
MAX_WINDOW_S = 31 * 86_400       # a month: beyond it a window is a typo, not a question (exit 2)

F = Callable[..., Any]


def _option(*decls: str, **defaults: Any) -> Callable[..., Any]:
    """A shared option: `@it` or `@it(help=..., default=...)` (keywords override the shared ones)."""

    def make(fn: F | None = None, **overrides: Any):
        kwargs = {**defaults, **overrides}

        def apply(f: F) -> F:
            return click.option(*decls, **kwargs)(f)

        return apply(fn) if fn is not None else apply

    return make


db_option = _option("--db", type=click.Path(dir_okay=False), default=None,
                    help="Database file (default: CQT_DB).")

json_option = _option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")

as_of_option = _option("--as-of", "as_of", type=TIME, default=None,
                       help="End of the window: ISO-8601 (UTC if no zone) or epoch ms. Default: now.")

window_option = _option("--window", type=click.IntRange(min=1, max=MAX_WINDOW_S), default=DEFAULT_WINDOW_S,
                        show_default=True, metavar="SECONDS",
                        help=f"Length of the window ending at --as-of (1 .. {MAX_WINDOW_S}, 31 days).")

out_option = _option("--out", type=click.Path(dir_okay=False), default=None, help="File to write.")

capture_option = _option("--capture", "capture_path", type=click.Path(dir_okay=False), default=None,
                         help="Also record every frame and REST answer here (JSON Lines; .gz compresses; "
                              "rotated daily; keys masked).")

last_option = _option("--last", "last_ms", type=DURATION, default=None,
                      help="Range length, e.g. 90s, 30m, 1h, 24h, 7d.")

from_option = _option("--from", "from_ms", type=TIME, default=None,
                      help="Start: ISO-8601 (UTC if no zone) or epoch ms; inclusive.")
to_option = _option("--to", "to_ms", type=TIME, default=None,
                    help="End: ISO-8601 (UTC if no zone) or epoch ms; inclusive.")


def from_to_options(fn: F | None = None, *, from_help: str | None = None, to_help: str | None = None,
                    metavar: str | None = None):
    """--from/--to (epoch ms as from_ms/to_ms); `from_help`/`to_help` word them for one program."""

    def apply(f: F) -> F:
        extra = {"metavar": metavar} if metavar else {}
        f = to_option(**({"help": to_help} if to_help else {}), **extra)(f)
        return from_option(**({"help": from_help} if from_help else {}), **extra)(f)

    return apply(fn) if fn is not None else apply
