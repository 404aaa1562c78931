"""Warnings and errors for the run report: from the systemd journal when cqt logs there,
else from the `events` table. Both paths produce the same `LogEntry` items, and one
function (`top_messages`) groups and ranks them, so a recorded journal export
(`journalctl -o json > file`) gives the same kind of top-5 as the live journal.

Secrets (`Settings.secrets`, plus anything shaped like `key=…`/`token: …`) are masked
before a message leaves this module.
"""
from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

from .redact import redact

LEVELS = ("WARNING", "ERROR", "CRITICAL")
# syslog priority -> level (journal PRIORITY field)
PRIORITY_LEVEL = {0: "CRITICAL", 1: "CRITICAL", 2: "CRITICAL", 3: "ERROR", 4: "WARNING"}
_PREFIX_RE = re.compile(r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.\-]+: ")
_SECRETISH_RE = re.compile(r"(?i)\b(api[_-]?key|apikey|secret|token|password|passwd|cg-api-key)"
                           r"(\s*[=:]\s*)([^\s,;&\"'()\[\]{}]+)")
_NUMBER_RE = re.compile(r"(?<![A-Za-z])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
MAX_MESSAGE = 160


@dataclass(frozen=True)
class LogEntry:
    ts_ms: int
    service: str
    level: str            # WARNING | ERROR | CRITICAL
    message: str
    count: int = 1


@dataclass(frozen=True)
class TopMessage:
    count: int
    level: str
    service: str
    message: str          # the most recent example of the group (redacted, shortened)
    first_ts_ms: int
    last_ts_ms: int


def scrub(message: str, secrets: Iterable[str] = ()) -> str:
    text = redact(message, tuple(secrets))
    return _SECRETISH_RE.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)


def _journal_text(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) for b in value):   # non-UTF-8 message: a byte array
        return bytes(value).decode("utf-8", "replace")
    return None


def _load(line: str | bytes) -> dict | None:
    try:
        obj = json.loads(line)
    except (ValueError, TypeError):
        return None
    return obj if isinstance(obj, dict) else None


def parse_journal_line(line: str | bytes) -> LogEntry | None:
    """One line of `journalctl -o json` -> LogEntry (warnings and worse only), or None."""
    obj = _load(line)
    return None if obj is None else parse_journal_obj(obj)


def parse_journal_obj(obj: dict) -> LogEntry | None:
    """The level is the `LEVEL logger:` prefix cqt writes (journald stores stderr lines at
    PRIORITY 6 unless they carry a syslog prefix), else PRIORITY (systemd's own messages)."""
    text = _journal_text(obj.get("MESSAGE"))
    if not text or not text.strip():
        return None
    first = text.strip().splitlines()[0]
    m = _PREFIX_RE.match(first)
    level = None
    if m:
        level = m.group(1)
        first = first[m.end():]
    if level is None:
        try:
            level = PRIORITY_LEVEL.get(int(obj.get("PRIORITY", 6)))
        except (TypeError, ValueError):
            level = None
    if level not in LEVELS:
        return None
    # systemd's messages about a unit ("Main process exited…") carry it in UNIT, not _SYSTEMD_UNIT
    unit = next((u for u in (obj.get("UNIT"), obj.get("_SYSTEMD_UNIT")) if isinstance(u, str) and u.startswith("cqt-")),
                obj.get("_SYSTEMD_UNIT") or "")
    service = unit.removesuffix(".service") if unit else (obj.get("SYSLOG_IDENTIFIER") or "?")
    try:
        ts_ms = int(obj.get("__REALTIME_TIMESTAMP", 0)) // 1000
    except (TypeError, ValueError):
        ts_ms = 0
    return LogEntry(ts_ms=ts_ms, service=str(service), level=level, message=first.strip())


def parse_journal(lines: Iterable[str | bytes]) -> Iterator[LogEntry]:
    for line in lines:
        if line and line.strip():
            e = parse_journal_line(line)
            if e is not None:
                yield e


def entries_from_events(conn: sqlite3.Connection, since_ms: int, until_ms: int) -> list[LogEntry]:
    """Warnings/errors from the events table whose hour bucket overlaps [since, until]."""
    rows = conn.execute(
        "SELECT last_ts_ms, service, level, message, count FROM events "
        "WHERE last_ts_ms >= ? AND ts_ms <= ? ORDER BY ts_ms", (since_ms, until_ms)).fetchall()
    return [LogEntry(int(r[0]), r[1], r[2].upper(), r[3], int(r[4])) for r in rows if r[2].upper() in LEVELS]


JournalRunner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(cmd: list[str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def journal_available(runner: JournalRunner = _run) -> bool:
    """True when journalctl exists and holds at least one entry of a cqt unit."""
    if runner is _run and shutil.which("journalctl") is None:
        return False
    try:
        r = runner(["journalctl", "-u", "cqt-*", "-n", "1", "-o", "json", "-q", "--no-pager"])
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and bool(r.stdout.strip())


def entries_from_journal(since_ms: int, until_ms: int, runner: JournalRunner = _run) -> list[LogEntry] | None:
    """Warnings and worse of the cqt-* units in [since, until]; None when the journal cannot be read.

    Two queries, merged by cursor: `-p warning` (entries whose PRIORITY says so: systemd's
    messages about the units, syslog-prefixed lines) and `--grep` for cqt's `LEVEL logger:`
    prefix (its stderr lines are stored at PRIORITY 6, which `-p warning` alone would drop)."""
    base = ["journalctl", "-u", "cqt-*", "-o", "json", "-q", "--no-pager",
            "--since", f"@{since_ms // 1000}", "--until", f"@{until_ms // 1000 + 1}"]
    queries = [base + ["-p", "warning"], base + ["--grep", "^(WARNING|ERROR|CRITICAL) "]]
    seen: set[str] = set()
    out: list[LogEntry] = []
    ok = False
    for cmd in queries:
        try:
            r = runner(cmd)
        except (OSError, subprocess.SubprocessError):
            continue
        if r.returncode != 0 and not r.stdout.strip():
            continue
        ok = True
        for line in r.stdout.splitlines():
            obj = _load(line) if line.strip() else None
            if obj is None:
                continue
            cursor = str(obj.get("__CURSOR") or line)
            if cursor in seen:
                continue
            seen.add(cursor)
            e = parse_journal_obj(obj)
            if e is not None and since_ms <= e.ts_ms <= until_ms:
                out.append(e)
    return out if ok else None


def signature(message: str) -> str:
    """Group key: numbers replaced, so 'retry in 8 s' and 'retry in 16 s' are one line of the top 5."""
    return _NUMBER_RE.sub("#", message)


def top_messages(entries: Iterable[LogEntry], n: int = 5, secrets: Iterable[str] = ()) -> list[TopMessage]:
    """Group by (level, service, message with numbers masked); rank by count, then severity."""
    secrets = tuple(secrets)
    groups: dict[tuple[str, str, str], list] = {}
    for e in entries:
        msg = scrub(e.message, secrets)
        key = (e.level, e.service, signature(msg))
        g = groups.get(key)
        if g is None:
            groups[key] = [e.count, e.ts_ms, e.ts_ms, msg]
        else:
            g[0] += e.count
            g[1] = min(g[1], e.ts_ms)
            if (e.ts_ms, msg) >= (g[2], g[3]):
                g[2], g[3] = e.ts_ms, msg
    sev = {lvl: i for i, lvl in enumerate(reversed(LEVELS))}
    ranked = sorted(groups.items(), key=lambda kv: (-kv[1][0], sev.get(kv[0][0], 9), kv[0][1], kv[0][2]))
    out = []
    for (level, service, _sig), (count, first, last, msg) in ranked[:n]:
        short = msg if len(msg) <= MAX_MESSAGE else msg[: MAX_MESSAGE - 1] + "…"
        out.append(TopMessage(count, level, service, short, first, last))
    return out


def collect(conn: sqlite3.Connection, since_ms: int, until_ms: int, mode: str = "auto",
            journal_lines: Iterable[str] | None = None,
            runner: JournalRunner = _run) -> tuple[list[LogEntry], str]:
    """Entries and where they came from. mode: auto | journal | events. `journal_lines` (a recorded
    `journalctl -o json` export) wins over everything."""
    if journal_lines is not None:
        return [e for e in parse_journal(journal_lines) if since_ms <= e.ts_ms <= until_ms], "journal-file"
    if mode in ("auto", "journal") and (mode == "journal" or journal_available(runner)):
        got = entries_from_journal(since_ms, until_ms, runner)
        if got is not None:
            return got, "journal"
    return entries_from_events(conn, since_ms, until_ms), "events"
