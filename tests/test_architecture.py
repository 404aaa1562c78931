"""The house rules of lib/cqt, read from the source (no imports of cqt, so a broken module
cannot hide a rule): no import circle (imports inside functions count), no private name
imported across modules, no oversized module, the foundation knows no commands or venues,
the sim shares no client code."""
from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parent.parent / "lib"
PKG = LIB / "cqt"

MAX_LINES = 600
# Modules over MAX_LINES: each has one job that does not split sensibly (one line why).
LONG_MODULES: dict[str, str] = {}

FOUNDATION = ("cqt.config", "cqt.db", "cqt.writer", "cqt.sinks", "cqt.redact", "cqt.runtime", "cqt.logsetup",
              "cqt.instance", "cqt.timeutil", "cqt.exitcodes")
NOT_FOR_FOUNDATION = ("cqt.venues", "cqt.checks", "cqt.export", "cqt.report", "cqt.nightly", "cqt.aggregate",
                      "cqt.sim", "cqt.collector", "cqt.dashboard")
CLIENT = ("cqt.venues", "cqt.collector", "cqt.stream", "cqt.poll", "cqt.rest", "cqt.backfill", "cqt.replay")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(LIB).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of `from <node.module> import ...` written in `module`."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module):
        base.pop()                   # a plain module's relative imports start at its package
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _runtime_nodes(tree: ast.AST):
    """Every node, leaving out `if TYPE_CHECKING:` blocks (never executed)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            stack.extend(node.orelse)
            continue
        yield node
        stack.extend(ast.iter_child_nodes(node))


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported cqt module, name imported from it or None, line) for every import in `module`,
    at any depth (inside functions too). `from pkg import sub` imports the module pkg.sub;
    `from pkg import name` and `import pkg` import pkg, i.e. its __init__."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    out: list[tuple[str, str | None, int]] = []
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            out.extend((a.name, None, node.lineno) for a in node.names if _within(a.name, ("cqt",)))
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            if not _within(source, ("cqt",)):
                continue
            for a in node.names:
                sub = f"{source}.{a.name}"
                out.append((sub, None, node.lineno) if sub in MODULES else (source, a.name, node.lineno))
    return out


IMPORTS = {m: _imports(m) for m in MODULES}
GRAPH: dict[str, set[str]] = {m: {t for t, _n, _l in IMPORTS[m] if t in MODULES} for m in MODULES}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative (the graph is a few hundred modules deep at most)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.append(top)
                    if top == node:
                        break
                out.append(sorted(comp))
    return out


def _reachable(start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for t in GRAPH[todo.pop()]:
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_the_walk_sees_the_package():
    assert "cqt.config" in MODULES and "cqt.db" in MODULES and len(MODULES) > 50
    assert "cqt.config.registry" in GRAPH["cqt.config"]          # package __init__ -> submodule
    assert any(GRAPH.values()) and any(t == "cqt.exitcodes" for m in GRAPH for t in GRAPH[m])


def test_scc_finds_a_circle_and_a_self_loop():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"d"}, "e": {"a"}}
    comps = _strongly_connected(g)
    assert ["a", "b", "c"] in comps and ["e"] in comps


def test_no_import_circle():
    circles = [c for c in _strongly_connected(GRAPH) if len(c) > 1]
    loops = [m for m in GRAPH if m in GRAPH[m]]
    assert not circles and not loops, f"import circles: {circles}; modules importing themselves: {loops}"


def test_no_private_name_imported_across_modules():
    bad = [f"{MODULES[m].relative_to(LIB)}:{line}: from {t} import {n}"
           for m, imports in IMPORTS.items() for t, n, line in imports
           if n is not None and t != m and n.startswith("_") and not (n.startswith("__") and n.endswith("__"))]
    # a private module (cqt.x._y) imported by another package is as private as a name
    bad += [f"{MODULES[m].relative_to(LIB)}:{line}: import {t}"
            for m, imports in IMPORTS.items() for t, n, line in imports
            if n is None and t.rsplit(".", 1)[-1].startswith("_") and not t.rsplit(".", 1)[-1].startswith("__")
            and t.rsplit(".", 1)[0] != m.rsplit(".", 1)[0]]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_no_module_over_the_line_limit():
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in MODULES.items()}
    over = {m: n for m, n in sizes.items() if n > MAX_LINES and m not in LONG_MODULES}
    assert not over, f"modules over {MAX_LINES} lines (split them, or say why in LONG_MODULES): {over}"
    stale = {m for m in LONG_MODULES if m not in sizes or sizes[m] <= MAX_LINES}
    assert not stale, f"LONG_MODULES entries no longer needed: {stale}"


def test_the_foundation_knows_no_commands_or_venues():
    bad = {m: sorted(t for t in _reachable(m) if _within(t, NOT_FOR_FOUNDATION))
           for m in MODULES if _within(m, FOUNDATION)}
    bad = {m: ts for m, ts in bad.items() if ts}
    assert not bad, f"foundation modules reaching commands or venues: {bad}"


def test_the_sim_shares_no_client_code():
    bad = {m: sorted(t for t in _reachable(m) if _within(t, CLIENT)) for m in MODULES if _within(m, ("cqt.sim",))}
    bad = {m: ts for m, ts in bad.items() if ts}
    assert not bad, f"sim modules reaching client code: {bad}"


# The dashboard reads: checks (their metrics and thresholds), bookkeeping, the job table, and the
# foundation. It writes nothing, so it imports no writer, collector, venue, export or aggregate code.
DASHBOARD_MAY_IMPORT = ("cqt.dashboard", "cqt.checks", "cqt.bookkeeping", "cqt.schedule", "cqt.symbols",
                        "cqt.units", "cqt.options", "cqt.exitcodes", "cqt.config", "cqt.db", "cqt.timeutil",
                        "cqt.runtime")


def test_the_dashboard_imports_only_what_it_reads_with():
    bad = {m: sorted({t for t, _n, _l in IMPORTS[m] if not _within(t, DASHBOARD_MAY_IMPORT)})
           for m in MODULES if _within(m, ("cqt.dashboard",))}
    bad = {m: ts for m, ts in bad.items() if ts}
    assert not bad, f"dashboard modules importing beyond checks, bookkeeping and the foundation: {bad}"
