"""The report's marker blocks (pure text edits) and the one file edit: only when the text
changes, atomically, after the output guard.

    <!-- cqt:begin NAME -->
    …generated…
    <!-- cqt:end NAME -->

Everything outside the blocks is the operator's and stays byte for byte.
"""
from __future__ import annotations

import re
from pathlib import Path

from .. import exitcodes, outputs

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "step-alt-5.md"
RUN_LOG_PREFIX = "run-log:"
BLOCK_RE = outputs.REPORT_BLOCK_RE
MARKDOWN_SUFFIXES = (".md", ".markdown")


def find_blocks(text: str) -> dict[str, str]:
    return {m.group("name"): m.group("body") for m in BLOCK_RE.finditer(text)}


def replace_blocks(text: str, bodies: dict[str, str]) -> tuple[str, list[str]]:
    """Replace the body of each named block; return the new text and the names not found."""
    seen: set[str] = set()

    def sub(m: re.Match) -> str:
        name = m.group("name")
        if name not in bodies:
            return m.group(0)
        seen.add(name)
        body = bodies[name]
        if body and not body.endswith("\n"):
            body += "\n"
        return f"<!-- cqt:begin {name} -->\n{body}<!-- cqt:end {name} -->"

    out = BLOCK_RE.sub(sub, text)
    return out, [n for n in bodies if n not in seen]


def upsert_dated_block(text: str, name: str, body: str) -> str:
    """Replace block `name` if present, else append it at the end of the file."""
    new, missing = replace_blocks(text, {name: body})
    if not missing:
        return new
    if body and not body.endswith("\n"):
        body += "\n"
    sep = "" if text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return f"{text}{sep}<!-- cqt:begin {name} -->\n{body}<!-- cqt:end {name} -->\n"


def insert_block_after(text: str, name: str, body: str, after: str) -> str:
    """Add block `name` right after the end marker of block `after` (a block the template gained
    since the file was made); the text is unchanged when `after` is not there."""
    end = f"<!-- cqt:end {after} -->"
    at = text.find(end)
    if at < 0:
        return text
    if body and not body.endswith("\n"):
        body += "\n"
    cut = at + len(end)
    return f"{text[:cut]}\n\n<!-- cqt:begin {name} -->\n{body}<!-- cqt:end {name} -->{text[cut:]}"


def write_if_changed(path: Path, text: str) -> bool:
    """Write only when the content changes (cqt.outputs.write_atomic). Returns True if written."""
    data = text.encode("utf-8", errors="surrogateescape")
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    outputs.write_atomic(path, data)
    return True


def report_target(path: Path, db: Path) -> Path:
    """The real path to fill, after the output guard. An existing Markdown file without cqt
    blocks is the operator's own text: refused with exit 1 (as before, but now nothing is
    appended to it); anything else that is not a report, the database or a device: exit 2."""
    try:
        return outputs.guard_output(path, "report", db_path=db)
    except outputs.OutputRefused as exc:
        if exc.foreign and path.suffix.lower() in MARKDOWN_SUFFIXES:
            raise outputs.OutputRefused(path, "it has none of the cqt blocks "
                                              "(move it away to start from the template)",
                                        code=exitcodes.FAIL, foreign=True) from None
        raise
