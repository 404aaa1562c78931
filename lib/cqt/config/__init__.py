"""Configuration: the settings registry and the Settings built from it.

- var.py       the Var record (name, default, kind, bounds, component, help)
- tables/      one table of Vars per component: every environment variable, declared once
- registry.py  the tables joined: lookup(name), the families (<PARTS>), the sections of the docs
- values.py    ConfigError and the value checks (.env parser, URLs, paths, numbers, booleans)
- settings.py  Settings / load_settings: core variables typed eagerly, the rest through get_*
- docs.py      the README's variable tables and .env.example, generated from the registry

The foundation: imports nothing else of cqt.
"""
from __future__ import annotations

from .registry import BY_NAME, COMPONENTS, PATTERNS, REGISTRY, is_declared, lookup
from .settings import Settings, load_settings
from .tables.core import VARIABLES
from .values import (
                     DAY_S,
                     ENV_FILE_MAX_BYTES,
                     LOG_LEVELS,
                     MAX_EXACT_INT,
                     NAME_MAX_BYTES,
                     PATH_MAX_BYTES,
                     ROOT,
                     TEN_YEARS_S,
                     ConfigError,
                     check_path,
                     default_maximum,
                     env_file_path,
                     is_placeholder,
                     parse_bool,
                     parse_env_file,
)
from .var import RegistryError, Var

__all__ = [
    "BY_NAME", "COMPONENTS", "DAY_S", "ENV_FILE_MAX_BYTES", "LOG_LEVELS", "MAX_EXACT_INT",
    "NAME_MAX_BYTES", "PATH_MAX_BYTES", "PATTERNS", "REGISTRY", "ROOT", "TEN_YEARS_S", "VARIABLES", "ConfigError",
    "RegistryError", "Settings", "Var", "check_path", "default_maximum", "env_file_path", "is_declared",
    "is_placeholder", "load_settings", "lookup", "parse_bool", "parse_env_file",
]
