"""Settings: one frozen object built from the process environment, falling back to `.env`.

The environment wins over `.env`, so systemd's `EnvironmentFile=` (which sets the
environment) and a hand-run program (which reads `.env`) see the same values.

The core table (tables/core.py) is converted eagerly into typed fields: a bad value there
fails every program. Every other variable is read where it is used, through get_int /
get_float / get_str / get_bool / get_path, which take its default and bounds from the
registry; a call site passes only the name. (A default passed by a caller must equal the
declared one: anything else is a RegistryError, a programming error the tests catch.)
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..symbols import base_asset_of_binance, base_asset_of_upbit, binance_symbol, upbit_code
from .registry import component as component_table, lookup
from .tables.core import VARIABLES
from .values import (
    ROOT,
    ConfigError,
    check_number,
    check_path,
    convert,
    env_file_path,
    is_placeholder,
    parse_bool,
    parse_env_file,
)
from .var import RegistryError, Var

_BY_NAME = {v.name: v for v in VARIABLES}
_NOT_GIVEN: Any = object()


def _declared_default(var: Var | None, name: str, given: Any, reader: str) -> Any:
    """The default of one read: the declared one (a caller's must agree), else the caller's own."""
    if var is None or var.default is None:
        if given is _NOT_GIVEN:
            why = "not declared in the settings registry" if var is None else "its default is computed by the caller"
            raise RegistryError(f"{name}: {why}; pass a default")
        return given
    declared: Any = var.default
    if reader == "int":
        declared = int(declared)
    elif reader == "float":
        declared = float(declared)
    elif reader == "bool":
        declared = parse_bool(name, declared)
    if given is not _NOT_GIVEN and given != declared and not (reader == "path" and str(given) == declared):
        raise RegistryError(f"{name}: read with default {given!r}, declared {var.default!r} "
                            f"(lib/cqt/config/tables/{var.component}.py)")
    return declared


@dataclass(frozen=True)
class Settings:
    db: Path
    upbit_ws_url: str
    upbit_rest_url: str
    binance_ws_url: str
    binance_rest_url: str
    coinglass_url: str
    assets: tuple[str, ...]            # CQT_SYMBOLS: base assets, the `symbol` of market_1s/predictions
    binance_symbols: tuple[str, ...]   # one USDⓈ-M perpetual per asset (plus any extra of an override)
    upbit_codes: tuple[str, ...]       # one KRW market per asset, KRW-USDT always last
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

    # -- every other variable: default and bounds from the registry ----------------------
    # Bounds passed by a caller are used only for a name the registry does not declare; a
    # declared variable always gets its declared ones (without a maximum: default_maximum()).
    def get_str(self, name: str, default: str = _NOT_GIVEN) -> str:
        default = _declared_default(lookup(name), name, default, "str")
        v = self.raw.get(name, "")
        return v if v != "" else default

    def get_int(self, name: str, default: int = _NOT_GIVEN, minimum: int | None = None, *,
                maximum: int | None = None) -> int:
        return int(self._number(name, "int", default, minimum, maximum))

    def get_float(self, name: str, default: float = _NOT_GIVEN, minimum: float | None = None, *,
                  maximum: float | None = None) -> float:
        return float(self._number(name, "float", default, minimum, maximum))

    def _number(self, name: str, kind: str, default: Any, minimum: float | None, maximum: float | None) -> Any:
        var = lookup(name)
        default = _declared_default(var, name, default, kind)
        if var is not None:
            minimum, maximum = var.minimum, var.maximum
        v = self.raw.get(name, "")
        return default if v == "" else check_number(name, v, kind, minimum, maximum)

    def get_bool(self, name: str, default: bool = _NOT_GIVEN) -> bool:
        default = _declared_default(lookup(name), name, default, "bool")
        v = self.raw.get(name, "")
        return default if v == "" else parse_bool(name, v)

    def get_path(self, name: str, default: str = _NOT_GIVEN) -> Path:
        """A path variable, absolute (relative ones under the toolkit root); ConfigError if unusable."""
        default = _declared_default(lookup(name), name, default, "path")
        v = self.raw.get(name, "")
        return check_path(name, v if v != "" else str(default))

    def get(self, name: str) -> Any:
        """A declared variable, typed by its kind (core ones as load_settings converted them)."""
        var = lookup(name)
        if var is None:
            raise RegistryError(f"{name}: not declared in the settings registry")
        if var.kind in ("int", "float"):
            return self._number(name, var.kind, _NOT_GIVEN, None, None)
        if var.kind == "bool":
            return self.get_bool(name)
        if var.kind == "path":
            return self.get_path(name)
        if name in _BY_NAME:
            raw = self.raw.get(name, "")
            return convert(var, raw if raw.strip() != "" or var.kind == "secret" else var.default)
        return self.get_str(name)

    def component(self, name: str) -> dict[str, Any]:
        """Every variable of one component (families and computed defaults left out), typed."""
        return {v.name: self.get(v.name) for v in component_table(name)
                if not v.is_pattern and v.default is not None}

    def resolve_path(self, p: str | Path) -> Path:
        p = Path(p)
        return p if p.is_absolute() else ROOT / p

    def binance_symbol_of(self, asset: str) -> str:
        """The Binance symbol collected for `asset` (``BTC`` -> ``BTCUSDT``)."""
        return _venue_symbol(asset, self.binance_symbols, base_asset_of_binance, binance_symbol)

    def upbit_code_of(self, asset: str) -> str:
        """The Upbit market collected for `asset` (``BTC`` -> ``KRW-BTC``)."""
        return _venue_symbol(asset, self.upbit_codes, base_asset_of_upbit, upbit_code)

    @property
    def usdt_code(self) -> str:
        """The Upbit KRW-USDT market: the FX rate of every kimchi premium."""
        return USDT_CODE

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in logs, the database or reports."""
        key = self.coinglass_api_key
        return (key,) if key and len(key) >= 4 else ()

    @property
    def ca_bundle(self) -> str | None:
        """The CA file to verify wss:// and https:// peers with: CQT_CA_BUNDLE, else the usual
        REQUESTS_CA_BUNDLE / SSL_CERT_FILE, else None (the system store). ConfigError if the
        named file cannot be read, so a typo fails at start and not as endless TLS errors."""
        for name in ("CQT_CA_BUNDLE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
            value = self.get_str(name) if name.startswith("CQT_") else self.raw.get(name, "")
            if value.strip():
                path = self.resolve_path(value.strip())
                if not os.access(path, os.R_OK) or not path.is_file():
                    raise ConfigError(name, f"{path} is not a readable certificate file")
                return str(path)
        return None

    @property
    def coinglass_key_state(self) -> str:
        """present | missing | placeholder (never the value)."""
        if not self.coinglass_api_key:
            return "missing"
        return "placeholder" if is_placeholder(self.coinglass_api_key) else "present"


#: most assets one host may configure: the REST budget and the check run stay bounded
MAX_ASSETS = 200
USDT_CODE = "KRW-USDT"
_ASSET_RE = re.compile(r"[A-Z0-9]{1,20}")
_BINANCE_RE = re.compile(r"[A-Z0-9]{2,30}")
_UPBIT_RE = re.compile(r"[A-Z]{2,5}-[A-Z0-9]{1,20}")


def _unique(name: str, items: tuple[str, ...], pattern: re.Pattern, what: str) -> tuple[str, ...]:
    out: list[str] = []
    for item in (i.upper() for i in items):
        if not pattern.fullmatch(item):
            raise ConfigError(name, f"{item!r} is not {what}")
        if item not in out:
            out.append(item)
    return tuple(out)


def _venue_symbol(asset: str, listed: tuple[str, ...], base_of, derive) -> str:
    asset = asset.strip().upper()
    return next((s for s in listed if base_of(s) == asset), derive(asset))


def resolve_symbols(values: Mapping[str, Any], symbols_set: bool) -> dict[str, tuple[str, ...]]:
    """The assets and each venue's symbols from CQT_SYMBOLS and the per-venue overrides.

    An override must cover every asset (else nothing would be aggregated for it): a
    ConfigError names the variable and the missing symbol. The legacy CQT_BINANCE_SYMBOL
    (one symbol, in every older `.env`) counts only while neither CQT_SYMBOLS
    (`symbols_set`) nor CQT_BINANCE_SYMBOLS is set, so adding CQT_SYMBOLS to an old
    file is enough.
    """
    binance_name = "CQT_BINANCE_SYMBOLS"
    binance = values.get("CQT_BINANCE_SYMBOLS")
    if binance is None and values.get("CQT_BINANCE_SYMBOL") is not None and not symbols_set:
        binance_name, binance = "CQT_BINANCE_SYMBOL", (values["CQT_BINANCE_SYMBOL"],)
    if binance is not None:
        binance = _unique(binance_name, binance, _BINANCE_RE, "a Binance symbol like BTCUSDT")
    if symbols_set or binance is None:
        assets = _unique("CQT_SYMBOLS", values["CQT_SYMBOLS"], _ASSET_RE, "a base asset like BTC")
    else:       # only a Binance list is set (an older `.env`): its assets are the ones collected
        assets = _unique(binance_name, tuple(base_asset_of_binance(b) for b in binance), _ASSET_RE,
                         "a Binance symbol like BTCUSDT")
    if len(assets) > MAX_ASSETS:
        raise ConfigError("CQT_SYMBOLS", f"{len(assets)} assets; at most {MAX_ASSETS}")
    if binance is None:
        binance = tuple(binance_symbol(a) for a in assets)
    upbit = values.get("CQT_UPBIT_CODES")
    if upbit is None:
        upbit = tuple(upbit_code(a) for a in assets)
    upbit = tuple(c for c in _unique("CQT_UPBIT_CODES", upbit, _UPBIT_RE, "an Upbit market like KRW-BTC")
                  if c != USDT_CODE) + (USDT_CODE,)
    for name, listed, base_of, derive in ((binance_name, binance, base_asset_of_binance, binance_symbol),
                                          ("CQT_UPBIT_CODES", upbit, base_asset_of_upbit, upbit_code)):
        bases = {base_of(s) for s in listed}
        missing = [a for a in assets if a not in bases]
        if missing:
            raise ConfigError(name, f"lists no market for {', '.join(missing)} of CQT_SYMBOLS: add "
                                    f"{', '.join(derive(a) for a in missing)} or unset {name} "
                                    "(then every symbol is derived from CQT_SYMBOLS)")
    return {"assets": assets, "binance_symbols": binance, "upbit_codes": upbit}


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
        values[var.name] = None if raw is None else convert(var, raw)
    for key, val in overrides.items():
        if val is not None:
            name = "CQT_" + key.upper()
            values[name] = convert(_BY_NAME[name], str(val))
            source[name] = "command line"
    return Settings(
        db=check_path("CQT_DB", values["CQT_DB"]),
        upbit_ws_url=values["CQT_UPBIT_WS_URL"],
        upbit_rest_url=values["CQT_UPBIT_REST_URL"],
        binance_ws_url=values["CQT_BINANCE_WS_URL"],
        binance_rest_url=values["CQT_BINANCE_REST_URL"],
        coinglass_url=values["CQT_COINGLASS_URL"],
        **resolve_symbols(values, source.get("CQT_SYMBOLS", "default") != "default"),
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
