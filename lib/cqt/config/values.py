"""Value checks shared by every setting: the `.env` parser, URLs, paths, numbers, booleans.

`.env` holds plain `KEY=value` lines only: systemd and dotenv parsers disagree on quotes,
`export` and `${VAR}`, so those are rejected instead of guessed at.

Bounds: a number must be finite and inside [minimum, maximum]; without a declared maximum
default_maximum() applies (ten years in the variable's unit for *_S / *_MS, else 2**53).
URLs must parse with a host and a port in 1..65535; paths must be encodable, without NUL,
inside PATH_MAX / NAME_MAX; no value holds a control character. Every violation is a
ConfigError naming the variable (exit 78).
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlparse

if TYPE_CHECKING:
    from .var import Var

ROOT = Path(__file__).resolve().parents[3]

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
DAY_S = 86_400
TEN_YEARS_S = 3650 * DAY_S
MAX_EXACT_INT = 2 ** 53
COINGLASS_INTERVALS = ("1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "1w")


class ConfigError(Exception):
    """A bad setting. Programs print `str(err)` on one line and exit 78 (EX_CONFIG)."""

    def __init__(self, var: str, message: str):
        self.var = var
        super().__init__(f"config error: {var}: {message}")


_PLACEHOLDER_RE = re.compile(
    r"^(?:<.*>|your[_\- ]?(?:api[_\- ]?)?key(?:[_\- ]?here)?|changeme|change[_\- ]me|todo|tbd|fixme|"
    r"x{3,}|placeholder|replace[_\- ]?me|dummy|none|null|secret|api[_\- ]?key|insert[_\- ]?key[_\- ]?here|\*+|\.{3,})$",
    re.IGNORECASE,
)


def is_placeholder(value: str) -> bool:
    """True for values like `your_key_here`, `<REAL_KEY>`, `changeme`, `xxx…`, `TODO`."""
    return bool(_PLACEHOLDER_RE.match(value.strip()))


def env_file_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    p = environ.get("CQT_ENV_FILE")
    return Path(p) if p else ROOT / ".env"


ENV_FILE_MAX_BYTES = 1 << 20
# Linux limits (PATH_MAX, NAME_MAX): a longer path can only fail later, as an I/O error.
PATH_MAX_BYTES = 4096
NAME_MAX_BYTES = 255


def parse_env_file(path: Path) -> dict[str, str]:
    """Parse plain `KEY=value` lines. Comments (#) and blank lines are skipped."""
    values: dict[str, str] = {}
    try:
        with open(path, "rb") as fh:    # at most the cap: CQT_ENV_FILE may name /dev/null or a device
            data = fh.read(ENV_FILE_MAX_BYTES + 1)
    except FileNotFoundError:
        return values
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    except ValueError:   # e.g. a NUL byte in CQT_ENV_FILE
        raise ConfigError("CQT_ENV_FILE", f"{shown(str(path))} is not a usable path") from None
    if len(data) > ENV_FILE_MAX_BYTES:
        raise ConfigError(str(path), f"is larger than {ENV_FILE_MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path.name} line {lineno}",
                          f"not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = f"{path.name} line {lineno}"
        if "\x00" in stripped:
            raise ConfigError(where, "contains a NUL byte")
        if stripped.startswith("export "):
            raise ConfigError(where, "'export' is not allowed in .env (write plain KEY=value)")
        if "=" not in stripped:
            raise ConfigError(where, "expected KEY=value")
        key, value = stripped.split("=", 1)
        key = key.strip()
        if not _KEY_RE.match(key):
            raise ConfigError(where, f"invalid variable name {shown(key)}")
        if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
            raise ConfigError(key, f"quotes are not allowed in .env ({where}); write KEY=value without quotes")
        if "${" in value or "$(" in value:
            raise ConfigError(key, f"variable expansion is not allowed in .env ({where})")
        values[key] = value.strip()
    return values


def check_url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    bad = f"{shown(value)} is not a {'/'.join(schemes)} URL"
    if any(c.isspace() for c in value):
        raise ConfigError(name, bad + " (it contains white space)")
    try:
        u = urlparse(value)
        port = u.port            # raises for a port that is not a number in 0..65535
        host = u.hostname
    except ValueError as exc:
        raise ConfigError(name, f"{bad} ({exc})") from None
    if u.scheme not in schemes or not host:
        raise ConfigError(name, bad)
    if port == 0:
        raise ConfigError(name, f"{bad} (port 0)")
    return value.rstrip("/")


def check_path(name: str, value: str) -> Path:
    """A path setting as an absolute Path (relative ones are under the toolkit root), or ConfigError."""
    if "\x00" in value:
        raise ConfigError(name, "contains a NUL byte")
    path = Path(value)
    path = path if path.is_absolute() else ROOT / path
    try:
        encoded = os.fsencode(str(path))
    except UnicodeError:
        raise ConfigError(name, f"{shown(value)} cannot be encoded as a file name") from None
    if len(encoded) >= PATH_MAX_BYTES:
        raise ConfigError(name, f"path is {len(encoded)} bytes long; the limit is {PATH_MAX_BYTES - 1}")
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    if longest > NAME_MAX_BYTES:
        raise ConfigError(name, f"a path component is {longest} bytes long; the limit is {NAME_MAX_BYTES}")
    return path


def default_maximum(name: str, kind: str) -> float:
    """The ceiling for a number setting declared without one, chosen by its unit suffix.

    Ten years in the variable's unit for `*_S` / `*_MS` (so sleeps, timeouts and ms arithmetic stay far
    inside what threading timers and a 64-bit SQLite integer take), else 2**53 (exact as a float).
    """
    if name.endswith("_MS"):
        return TEN_YEARS_S * 1000
    if name.endswith("_S"):
        return TEN_YEARS_S
    return MAX_EXACT_INT


def check_number(name: str, value: str, kind: str, minimum: float | None,
                  maximum: float | None = None) -> float | int:
    text = value.strip()
    try:
        num: float | int = int(text) if kind == "int" else float(text)
    except ValueError:   # also digit strings too long to convert
        raise ConfigError(name, f"{shown(value)} is not {'an integer' if kind == 'int' else 'a number'}") from None
    if not math.isfinite(num):
        raise ConfigError(name, f"{shown(value)} is not a finite number")
    if maximum is None:
        maximum = default_maximum(name, kind)
    if minimum is not None and num < minimum:
        raise ConfigError(name, f"{shown(value)} is below the minimum {plain(minimum)}")
    if num > maximum:
        raise ConfigError(name, f"{shown(value)} is above the maximum {plain(maximum)}")
    return num


def plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def shown(value: str, limit: int = 40) -> str:
    """A value for an error line: repr'd (no control characters) and cut, so the line stays one short line."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(name, f"{value!r} is not a boolean (use true or false)")


def convert(var: "Var", raw: str) -> Any:
    k = var.kind
    # White space around a value is stripped below (paths excepted), so only what is kept is checked.
    kept = raw if k == "path" else raw.strip()
    control = next((c for c in kept if (c < " " and (c != "\t" or k == "path")) or c == "\x7f"), None)
    if control is not None:
        what = "a NUL byte" if control == "\x00" else f"a control character (U+{ord(control):04X})"
        raise ConfigError(var.name, f"contains {what}")
    if k == "path":
        check_path(var.name, raw)
        return raw
    if k == "url_ws":
        return check_url(var.name, raw, ("ws", "wss"))
    if k == "url_http":
        return check_url(var.name, raw, ("http", "https"))
    if k == "list":
        items = tuple(x.strip() for x in raw.split(",") if x.strip())
        if not items:
            raise ConfigError(var.name, "must list at least one value")
        return items
    if k == "bool":
        return parse_bool(var.name, raw)
    if k in ("int", "float"):
        return check_number(var.name, raw, k, var.minimum, var.maximum)
    if k == "level":
        up = raw.strip().upper()
        if up not in LOG_LEVELS:
            raise ConfigError(var.name, f"{raw!r} is not one of {', '.join(LOG_LEVELS)}")
        return up
    if k == "interval":
        if raw not in COINGLASS_INTERVALS:
            raise ConfigError(var.name, f"{raw!r} is not one of {', '.join(COINGLASS_INTERVALS)}")
        return raw
    if k == "str":
        if not raw.strip():
            raise ConfigError(var.name, "must not be empty")
        return raw.strip()
    return raw  # secret
