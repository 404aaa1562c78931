"""What every block of the report is computed from: the report time, the collection start,
the collectors' running spans (from heartbeats) and the warnings/errors of a window."""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from .. import journal
from ..bookkeeping import COLLECTORS, CheckRun, check_at_or_after, first_heartbeat, heartbeat_times, newest_heartbeat
from ..config import Settings

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000


@dataclass
class Segments:
    service: str
    spans: list[tuple[int, int]]      # continuous running [first, last] heartbeat

    @property
    def longest(self) -> tuple[int, int] | None:
        return max(self.spans, key=lambda s: (s[1] - s[0], -s[0])) if self.spans else None


def heartbeat_spans(ts: Sequence[int], max_gap_ms: float) -> list[tuple[int, int]]:
    """Split heartbeat times into continuous spans: a gap longer than max_gap_ms breaks one."""
    spans: list[tuple[int, int]] = []
    start = prev = None
    for t in ts:
        if start is None:
            start = prev = t
        elif t - prev > max_gap_ms:
            spans.append((start, prev))
            start = prev = t
        else:
            prev = t
    if start is not None:
        spans.append((start, prev))
    return spans


def intersect(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        lo, hi = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if lo <= hi:
            out.append((lo, hi))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def overlap_ms(spans: Iterable[tuple[int, int]], lo: int, hi: int) -> int:
    return sum(max(0, min(b, hi) - max(a, lo)) for a, b in spans)


@dataclass
class Context:
    conn: sqlite3.Connection
    settings: Settings
    as_of_ms: int
    start_ms: int | None                 # collection start (first collector heartbeat)
    data_end_ms: int | None              # newest heartbeat at or before as_of
    segments: dict[str, Segments] = field(default_factory=dict)
    all_running: list[tuple[int, int]] = field(default_factory=list)
    journal_lines: list[str] | None = None
    journal_mode: str = "auto"
    hb_gap_ms: float = 30_000
    _entries: dict[tuple[int, int], tuple[list, str]] = field(default_factory=dict)
    entries: dict[tuple[int, int], tuple[list, str]] = field(default_factory=dict)   # top_errors' cache


def build_context(conn: sqlite3.Connection, settings: Settings, as_of_ms: int, start_ms: int | None = None,
                  journal_lines: list[str] | None = None, journal_mode: str = "auto") -> Context:
    if start_ms is None:
        start_ms = first_heartbeat(conn, COLLECTORS, as_of_ms)
    data_end = newest_heartbeat(conn, as_of_ms)
    gap = 3 * settings.heartbeat_s * 1000
    ctx = Context(conn, settings, as_of_ms, start_ms, data_end, journal_lines=journal_lines,
                  journal_mode=journal_mode, hb_gap_ms=gap)
    lo = start_ms if start_ms is not None else 0
    running: list[tuple[int, int]] | None = None
    for svc in COLLECTORS:
        ts = heartbeat_times(conn, svc, lo, as_of_ms)
        if not ts:
            continue
        seg = Segments(svc, heartbeat_spans(ts, gap))
        ctx.segments[svc] = seg
        running = seg.spans if running is None else intersect(running, seg.spans)
    ctx.all_running = running or []
    return ctx


def longest_all(ctx: Context) -> tuple[int, int] | None:
    spans = ctx.all_running
    return max(spans, key=lambda s: (s[1] - s[0], -s[0])) if spans else None


def milestone_runs(ctx: Context, name: str, milestones) -> list[tuple[str, CheckRun | None, bool]]:
    """(label, run or None, reached) per milestone; unreached milestones keep ⏳."""
    out = []
    for i, (label, offset) in enumerate(milestones):
        if ctx.start_ms is None or ctx.start_ms + offset > ctx.as_of_ms:
            out.append((label, None, False))
            continue
        nxt = ctx.start_ms + milestones[i + 1][1] if i + 1 < len(milestones) else None
        out.append((label, check_at_or_after(ctx.conn, name, ctx.start_ms + offset, ctx.as_of_ms, nxt), True))
    return out


def top_errors(ctx: Context, since_ms: int, until_ms: int) -> tuple[list[journal.TopMessage], str, int]:
    """The five commonest warnings/errors of the window, their source and the total count."""
    key = (since_ms, until_ms)
    if key not in ctx.entries:          # the top-errors block and the run log ask for the same window
        ctx.entries[key] = journal.collect(ctx.conn, since_ms, until_ms, ctx.journal_mode, ctx.journal_lines)
    entries, source = ctx.entries[key]
    total = sum(e.count for e in entries)
    return journal.top_messages(entries, 5, ctx.settings.secrets), source, total
