"""Settings: one frozen object built from the process environment, falling back to `.env`.

The environment wins over `.env`, so systemd's `EnvironmentFile=` (which sets the
environment) and a hand-run program (which reads `.env`) see the same values.
`.env` holds plain `KEY=value` lines only: systemd and dotenv parsers disagree on
quotes, `export` and `${VAR}`, so those are rejected instead of guessed at.

Every variable is declared once in VARIABLES (name, default, kind, help, bounds); the
README table and `.env.example` are checked against it by the tests.

Bounds: a number must be finite and inside [minimum, maximum]; a number read with
Settings.get_int/get_float and no `maximum` gets default_maximum() (ten years in the
variable's unit for *_S / *_MS, else 2**53). URLs must parse with a host and a port in
1..65535; paths must be encodable, without NUL, inside PATH_MAX / NAME_MAX; no value holds a
control character. Every violation is a ConfigError naming the variable (exit 78).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[2]

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


@dataclass(frozen=True)
class Var:
    name: str
    default: str
    kind: str          # path | url_ws | url_http | str | list | bool | int | float | level | secret | interval
    help: str
    minimum: float | None = None
    maximum: float | None = None


# The documented variables. Others (check thresholds, test knobs) are read through
# Settings.get_* with their defaults declared next to the code that uses them, and
# listed in the README.
VARIABLES: tuple[Var, ...] = (
    Var("CQT_DB", "data/cqt.db", "path", "SQLite database file (relative paths are under the toolkit root)"),
    Var("CQT_UPBIT_WS_URL", "wss://api.upbit.com/websocket/v1", "url_ws", "Upbit quotation WebSocket"),
    Var("CQT_UPBIT_REST_URL", "https://api.upbit.com", "url_http", "Upbit REST base (trade backfill)"),
    Var("CQT_BINANCE_WS_URL", "wss://fstream.binance.com", "url_ws",
        "Binance USD-M futures WebSocket base; the collector appends the /market and /public routes"),
    Var("CQT_BINANCE_REST_URL", "https://fapi.binance.com", "url_http", "Binance USD-M futures REST base"),
    Var("CQT_COINGLASS_URL", "https://open-api-v4.coinglass.com", "url_http", "Coinglass API v4 base"),
    Var("CQT_UPBIT_CODES", "KRW-BTC,KRW-USDT", "list", "Upbit market codes to collect (comma-separated)"),
    Var("CQT_BINANCE_SYMBOL", "BTCUSDT", "str", "Binance USD-M futures symbol"),
    Var("COINGLASS_ENABLED", "false", "bool", "collect from Coinglass (must be exactly 'true' for the run plan)"),
    Var("COINGLASS_API_KEY", "", "secret", "Coinglass API key (never printed)"),
    Var("CQT_COINGLASS_INTERVAL", "1h", "interval", "Coinglass bar interval (your plan must allow it)"),
    Var("CQT_COINGLASS_DELAY_S", "60", "int", "seconds after a Coinglass bar closes before features may use it", 0, DAY_S),
    Var("CQT_REPORT", "reports/step-alt-5.md", "path", "the run report cqt-report fills in"),
    Var("CQT_DATASET_DIR", "data/datasets", "path", "where cqt-nightly writes Parquet datasets"),
    Var("CQT_LOG_LEVEL", "INFO", "level", "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    Var("CQT_BACKFILL_S", "900", "int", "on a first start with an empty database, backfill this many seconds", 0,
        30 * DAY_S),
    Var("CQT_BOOKTICKER_MIN_MS", "100", "int", "store at most one Binance bookTicker per this many ms per symbol", 0,
        60_000),
    Var("CQT_LABEL_MAX_DELAY_S", "5", "int", "export: accept a label bar up to this many seconds after t0+horizon", 0,
        3600),
    Var("CQT_KEEP_DAYS", "14", "int", "nightly retention: raw rows older than this (and already exported) are deleted", 1,
        3650),
    Var("CQT_HEARTBEAT_S", "10", "float", "seconds between heartbeat rows of each service", 0.1, 3600),
)
_BY_NAME = {v.name: v for v in VARIABLES}

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
        raise ConfigError("CQT_ENV_FILE", f"{_shown(str(path))} is not a usable path") from None
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
            raise ConfigError(where, f"invalid variable name {_shown(key)}")
        if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
            raise ConfigError(key, f"quotes are not allowed in .env ({where}); write KEY=value without quotes")
        if "${" in value or "$(" in value:
            raise ConfigError(key, f"variable expansion is not allowed in .env ({where})")
        values[key] = value.strip()
    return values


def _check_url(name: str, value: str, schemes: tuple[str, ...]) -> str:
    bad = f"{_shown(value)} is not a {'/'.join(schemes)} URL"
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
        raise ConfigError(name, f"{_shown(value)} cannot be encoded as a file name") from None
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


def _check_number(name: str, value: str, kind: str, minimum: float | None,
                  maximum: float | None = None) -> float | int:
    text = value.strip()
    try:
        num: float | int = int(text) if kind == "int" else float(text)
    except ValueError:   # also digit strings too long to convert
        raise ConfigError(name, f"{_shown(value)} is not {'an integer' if kind == 'int' else 'a number'}") from None
    if not math.isfinite(num):
        raise ConfigError(name, f"{_shown(value)} is not a finite number")
    if maximum is None:
        maximum = default_maximum(name, kind)
    if minimum is not None and num < minimum:
        raise ConfigError(name, f"{_shown(value)} is below the minimum {_plain(minimum)}")
    if num > maximum:
        raise ConfigError(name, f"{_shown(value)} is above the maximum {_plain(maximum)}")
    return num


def _plain(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _shown(value: str, limit: int = 40) -> str:
    """A value for an error line: repr'd (no control characters) and cut, so the line stays one short line."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise ConfigError(name, f"{value!r} is not a boolean (use true or false)")


def _convert(var: Var, raw: str) -> Any:
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
        return _check_url(var.name, raw, ("ws", "wss"))
    if k == "url_http":
        return _check_url(var.name, raw, ("http", "https"))
    if k == "list":
        items = tuple(x.strip() for x in raw.split(",") if x.strip())
        if not items:
            raise ConfigError(var.name, "must list at least one value")
        return items
    if k == "bool":
        return parse_bool(var.name, raw)
    if k in ("int", "float"):
        return _check_number(var.name, raw, k, var.minimum, var.maximum)
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


@dataclass(frozen=True)
class Settings:
    db: Path
    upbit_ws_url: str
    upbit_rest_url: str
    binance_ws_url: str
    binance_rest_url: str
    coinglass_url: str
    upbit_codes: tuple[str, ...]
    binance_symbol: str
    coinglass_enabled: bool
    coinglass_api_key: str = field(repr=False)
    coinglass_interval: str
    coinglass_delay_s: int
    report: Path
    dataset_dir: Path
    log_level: str
    backfill_s: int
    bookticker_min_ms: int
    label_max_delay_s: int
    keep_days: int
    heartbeat_s: float
    env_file: Path
    raw: Mapping[str, str] = field(repr=False)   # merged environment (.env < process env)
    source: Mapping[str, str] = field(repr=False)  # where each documented value came from

    # -- further variables, validated the same way ---------------------------------
    def get_str(self, name: str, default: str) -> str:
        v = self.raw.get(name, "")
        return v if v != "" else default

    # Without `maximum`, default_maximum() applies: no setting is unbounded or non-finite.
    def get_int(self, name: str, default: int, minimum: int | None = None, *, maximum: int | None = None) -> int:
        v = self.raw.get(name, "")
        return default if v == "" else int(_check_number(name, v, "int", minimum, maximum))

    def get_float(self, name: str, default: float, minimum: float | None = None, *,
                  maximum: float | None = None) -> float:
        v = self.raw.get(name, "")
        return default if v == "" else float(_check_number(name, v, "float", minimum, maximum))

    def get_bool(self, name: str, default: bool) -> bool:
        v = self.raw.get(name, "")
        return default if v == "" else parse_bool(name, v)

    def get_path(self, name: str, default: str) -> Path:
        """A path variable, absolute (relative ones under the toolkit root); ConfigError if unusable."""
        return check_path(name, self.get_str(name, default))

    def resolve_path(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else ROOT / p

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in logs, the database or reports."""
        key = self.coinglass_api_key
        return (key,) if key and len(key) >= 4 else ()

    @property
    def coinglass_key_state(self) -> str:
        """present | missing | placeholder (never the value)."""
        if not self.coinglass_api_key:
            return "missing"
        return "placeholder" if is_placeholder(self.coinglass_api_key) else "present"


def load_settings(environ: Mapping[str, str] | None = None, **overrides: str) -> Settings:
    """Build Settings from `environ` (default os.environ) over the `.env` file.

    `overrides` (e.g. db="/tmp/x.db" from a --db option) win over both.
    Raises ConfigError naming the variable on any bad value.
    """
    environ = dict(os.environ if environ is None else environ)
    env_path = env_file_path(environ)
    merged: dict[str, str] = {}
    source: dict[str, str] = {}
    for k, v in parse_env_file(env_path).items():
        merged[k], source[k] = v, ".env"
    for k, v in environ.items():
        merged[k], source[k] = v, "environment"
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = merged.get(var.name, "")
        if raw.strip() == "" and var.kind != "secret":
            raw = var.default
            source.setdefault(var.name, "default")
        values[var.name] = _convert(var, raw)
    for key, val in overrides.items():
        if val is not None:
            name = "CQT_" + key.upper()
            values[name] = _convert(_BY_NAME[name], str(val))
            source[name] = "command line"
    return Settings(
        db=check_path("CQT_DB", values["CQT_DB"]),
        upbit_ws_url=values["CQT_UPBIT_WS_URL"],
        upbit_rest_url=values["CQT_UPBIT_REST_URL"],
        binance_ws_url=values["CQT_BINANCE_WS_URL"],
        binance_rest_url=values["CQT_BINANCE_REST_URL"],
        coinglass_url=values["CQT_COINGLASS_URL"],
        upbit_codes=tuple(c.upper() for c in values["CQT_UPBIT_CODES"]),
        binance_symbol=values["CQT_BINANCE_SYMBOL"].upper(),
        coinglass_enabled=values["COINGLASS_ENABLED"],
        coinglass_api_key=values["COINGLASS_API_KEY"].strip(),
        coinglass_interval=values["CQT_COINGLASS_INTERVAL"],
        coinglass_delay_s=values["CQT_COINGLASS_DELAY_S"],
        report=check_path("CQT_REPORT", values["CQT_REPORT"]),
        dataset_dir=check_path("CQT_DATASET_DIR", values["CQT_DATASET_DIR"]),
        log_level=values["CQT_LOG_LEVEL"],
        backfill_s=values["CQT_BACKFILL_S"],
        bookticker_min_ms=values["CQT_BOOKTICKER_MIN_MS"],
        label_max_delay_s=values["CQT_LABEL_MAX_DELAY_S"],
        keep_days=values["CQT_KEEP_DAYS"],
        heartbeat_s=float(values["CQT_HEARTBEAT_S"]),
        env_file=env_path,
        raw=merged,
        source=source,
    )
