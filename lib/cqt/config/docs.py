"""The README's variable tables and `.env.example`, generated from the registry.

README.md carries one marked block per section of "Configuration":

    <!-- cqt:vars core -->
    | variable | default | meaning |
    ...
    <!-- /cqt:vars -->

Only the text between the markers is rewritten. `bin/cqt env docs --write` (or `python -m cqt.config.docs --write`)
rewrites both files; `--check` (and tests/test_settings_registry.py) fails when they drift.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

from .registry import component
from .tables import SECTIONS
from .values import ROOT
from .var import Var

README = ROOT / "README.md"
ENV_EXAMPLE = ROOT / ".env.example"
_BLOCK_RE = re.compile(r"(<!-- cqt:vars (?P<key>[a-z]+) -->\n)(?P<body>.*?)(<!-- /cqt:vars -->)", re.S)
ENV_HEADER = """\
# cqt settings: plain KEY=value lines only (no quotes, no 'export', no ${VAR}).
# The process environment wins over this file (systemd's EnvironmentFile= sets it).
# Every variable with its default and meaning: README "Configuration".
# A line "# NAME=value" shows a default: remove the "# " to change it.
"""


def _number(x: float, sep: str) -> str:
    if float(x).is_integer():
        return f"{int(x):,}".replace(",", sep)
    return f"{x:g}"


def _bounds(var: Var, ascii_only: bool) -> str:
    if var.kind not in ("int", "float"):
        return ""
    sep = "" if ascii_only else " "
    lo = None if var.minimum is None else _number(var.minimum, sep)
    if var.maximum is not None:
        hi = _number(var.maximum, sep)
        return f"{lo} .. {hi}" if ascii_only else f"{lo} … {hi}"
    if lo is not None:
        return f">= {lo}" if ascii_only else f"≥ {lo}"
    return ""


def _escape(text: str) -> str:
    """Table-safe Markdown: `|` and `<` escaped outside code spans."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("|", "\\|").replace("<", "\\<")
    return "`".join(parts)


def default_cell(var: Var) -> str:
    """The README's default column: the value, then (note; bounds; what .env.example sets)."""
    if var.default is None:
        head = var.default_doc
    elif var.default == "":
        head = var.default_doc or "empty"
    else:
        head = f"`{var.default}`"
    extra = [p for p in (var.note, _bounds(var, ascii_only=False)) if p]
    if var.example is not None and var.example != var.default:
        extra.append("`.env.example`: " + ("a placeholder" if var.kind == "secret" else f"`{var.example}`"))
    return head + (f" ({'; '.join(extra)})" if extra else "")


def render_table(components: tuple[str, ...]) -> str:
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for comp in components:
        for var in component(comp):
            lines.append(f"| `{var.name}` | {default_cell(var)} | {_escape(var.help)} |")
    return "\n".join(lines) + "\n"


def render_readme(text: str) -> str:
    """`text` (the README) with every marked block regenerated; ValueError for a missing or unknown block."""
    keys = {key: comps for _title, key, comps in SECTIONS}
    found: list[str] = []

    def block(m: re.Match[str]) -> str:
        key = m.group("key")
        if key not in keys:
            raise ValueError(f"README: unknown variable block {key!r} (known: {', '.join(keys)})")
        found.append(key)
        return m.group(1) + render_table(keys[key]) + m.group(4)

    out = _BLOCK_RE.sub(block, text)
    missing = [k for k in keys if k not in found]
    if missing or len(found) != len(set(found)):
        raise ValueError(f"README: variable blocks missing or repeated: {missing or found}")
    return out


def render_env_example() -> str:
    """`.env.example`: the core values an install starts from as lines, every other variable commented out."""
    out = [ENV_HEADER]
    for title, _key, comps in SECTIONS:
        out.append(f"\n# --- {title} ---\n")
        for comp in comps:
            for var in component(comp):
                if not var.in_env_file:
                    continue
                about = var.help.replace("`", "")
                bounds = _bounds(var, ascii_only=True)
                if var.default is None or var.is_pattern:
                    about += f" (default: {var.default_doc.replace('`', '')})"
                if bounds:
                    about += f" [{bounds}]"
                if var.is_pattern:      # not a line to uncomment: one per column, job, ...
                    out.append(f"# {var.name}: {about}\n")
                    continue
                out.append(f"# {about}\n")
                if var.example is not None:
                    out.append(f"{var.name}={var.example}\n")
                else:
                    out.append(f"# {var.name}={var.default or ''}\n")
    return "".join(out)


def _write(path: Path, text: str) -> None:
    # Not cqt.outputs.write_atomic: the config package is the foundation and imports nothing else of cqt
    # (cqt.outputs imports cqt.exitcodes), so it keeps its own temp file + rename.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def drift(root: Path = ROOT) -> list[str]:
    """The generated files that differ from the registry (paths relative to `root`)."""
    stale = []
    readme, example = root / README.name, root / ENV_EXAMPLE.name
    if render_readme(readme.read_text(encoding="utf-8")) != readme.read_text(encoding="utf-8"):
        stale.append(README.name)
    if not example.exists() or example.read_text(encoding="utf-8") != render_env_example():
        stale.append(ENV_EXAMPLE.name)
    return stale


def write(root: Path = ROOT) -> list[str]:
    """Regenerate the README's variable tables and .env.example; returns what changed."""
    changed = drift(root)
    readme = root / README.name
    if README.name in changed:
        _write(readme, render_readme(readme.read_text(encoding="utf-8")))
    if ENV_EXAMPLE.name in changed:
        _write(root / ENV_EXAMPLE.name, render_env_example())
    return changed


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in (["--write"], ["--check"]):
        print("usage: python -m cqt.config.docs --write | --check", file=sys.stderr)
        return 2
    if args == ["--write"]:
        changed = write()
        print("rewrote: " + ", ".join(changed) if changed else "up to date")
        return 0
    stale = drift()
    if stale:
        print(f"out of date with the settings registry: {', '.join(stale)} "
              "(run: bin/cqt env docs --write)", file=sys.stderr)
        return 1
    print("up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
