"""The settings registry: every environment variable any program reads, declared once.

Built from the per-component tables in `tables/`. Settings.get_* take a declared variable's
default and bounds from here; the README's variable tables and `.env.example` are generated
from it (cqt.config.docs), and a test fails when code reads a name that is not declared.
"""
from __future__ import annotations

from .tables import SECTIONS, TABLES
from .var import RegistryError, Var


def _build() -> tuple[tuple[Var, ...], dict[str, Var], tuple[Var, ...]]:
    every: list[Var] = []
    by_name: dict[str, Var] = {}
    for component, table in TABLES.items():
        for var in table:
            if var.component != component:
                raise RegistryError(f"{var.name}: declared in the {component} table as {var.component!r}")
            if var.name in by_name:
                raise RegistryError(f"{var.name}: declared twice ({by_name[var.name].component}, {component})")
            by_name[var.name] = var
            every.append(var)
    shown = {c for _title, _key, comps in SECTIONS for c in comps}
    if shown != set(TABLES):
        raise RegistryError(f"components without a docs section (or sections without a table): {shown ^ set(TABLES)}")
    return tuple(every), by_name, tuple(v for v in every if v.is_pattern)


REGISTRY, BY_NAME, PATTERNS = _build()
COMPONENTS: tuple[str, ...] = tuple(TABLES)


def lookup(name: str) -> Var | None:
    """The declaration of `name`: its own, else the family (<PARTS>) it belongs to; None if undeclared."""
    var = BY_NAME.get(name)
    if var is not None:
        return var
    return next((p for p in PATTERNS if p.regex().match(name)), None)


def component(name: str) -> tuple[Var, ...]:
    """One component's declarations, in table order (KeyError for an unknown component)."""
    return TABLES[name]


def is_declared(name: str) -> bool:
    return lookup(name) is not None
