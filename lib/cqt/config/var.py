"""One declared environment variable: the record every table in `tables/` is made of."""
from __future__ import annotations

import re
from dataclasses import dataclass

# The kinds a variable can have. Numbers are read by get_int/get_float, `bool` by get_bool,
# `path` by get_path, everything else by get_str; load_settings converts the core table eagerly.
KINDS = ("path", "url_ws", "url_http", "str", "list", "bool", "int", "float", "level", "secret", "interval")
NAME_RE = re.compile(r"^(?:CQT|COINGLASS)_[A-Z0-9_]+$")
_PLACEHOLDER = re.compile(r"<[A-Z]+>")


class RegistryError(Exception):
    """A programming error: code reads a variable against its declaration (or an undeclared one)."""


@dataclass(frozen=True)
class Var:
    name: str                 # may hold <UPPER> parts: a family of variables (one column, one job)
    default: str | None       # as written in .env; None: computed by the code that reads it
    kind: str
    help: str                 # one line: what it means (README "meaning" column)
    minimum: float | None = None
    maximum: float | None = None   # None: default_maximum() (ten years for *_S / *_MS, else 2**53)
    component: str = ""
    default_doc: str = ""     # how the docs show a computed or empty default, e.g. "plan limit, else 30"
    note: str = ""            # words after the default in the docs, e.g. "23 h"
    example: str | None = None     # written as an active line into .env.example; None: commented out
    in_env_file: bool = True  # False: meaningless inside .env (CQT_ENV_FILE itself)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise RegistryError(f"{self.name}: unknown kind {self.kind!r}")
        if not NAME_RE.match(_PLACEHOLDER.sub("X", self.name)):
            raise RegistryError(f"{self.name}: not a CQT_* / COINGLASS_* name")
        if self.default is None and not self.default_doc:
            raise RegistryError(f"{self.name}: a computed default needs default_doc")

    @property
    def is_pattern(self) -> bool:
        return "<" in self.name

    def regex(self) -> re.Pattern[str]:
        """The names this declaration covers (itself, or every filling of its <PARTS>)."""
        parts = _PLACEHOLDER.split(self.name)
        return re.compile("^" + "[A-Z0-9_]+".join(re.escape(p) for p in parts) + "$")
