"""cqt-report: fill the run report (reports/step-alt-5.md) from the database, in place.

Only the marked blocks change:

    <!-- cqt:begin NAME -->
    …generated…
    <!-- cqt:end NAME -->

Everything else in the file is the operator's and stays byte for byte. Blocks:
status, dod, checks-oneclick, checks-modules, export-1h, export-24h, operations,
top-errors, plots, and one `run-log:YYYY-MM-DD` block per UTC date appended at the end
(a re-run on the same date replaces that block). A missing file starts from the
template shipped in `cqt/templates/step-alt-5.md`.

Every value is derived from rows at or before the report's as-of time (default: now),
and the text depends only on the data, so two runs over the same data give the same
bytes; the file is written only when it changes, atomically (temp file + rename).
Before anything is written (report or plots) every target passes the output guard
(`cqt.outputs`): never the database, a device, or a file that is not a cqt report/plot.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import click

from . import exitcodes, journal, outputs
from .config import ConfigError, Settings
from .db import DatabaseMissing, SchemaTooNew, open_readonly, redact
from .clicktypes import TIME
from .timeutil import now_ms

TEMPLATE = Path(__file__).resolve().parent / "templates" / "step-alt-5.md"
COLLECTORS = ("cqt-collect-upbit", "cqt-collect-binance", "cqt-poll-binance", "cqt-poll-coinglass")
MODULES = ("altdata_check", "feature_check", "feature_leak_check", "coinglass_check")
RUNNER = "run_pipeline_checks"
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
# (label, offset from collection start). A milestone takes the first run at or after start +
# offset and before the next milestone: a run 5 days later is not "the 10-minute check".
ONECLICK_MILESTONES = (("10분 후", 10 * MIN), ("1시간 후", HOUR), ("24시간 후", DAY))
MODULE_MILESTONES = (("10분 후", 10 * MIN), ("24시간 후", DAY))
NO_RECORD = "기록 없음"
EXPORT_1H, EXPORT_24H = "btc_1h.parquet", "btc_24h.parquet"
WAIT = "⏳"
RUN_LOG_PREFIX = "run-log:"

BLOCK_RE = outputs.REPORT_BLOCK_RE


# ------------------------------------------------------------------------------ block editing (pure)
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


def write_atomic(path: Path, text: str) -> bool:
    """Write only when the content changes; temp file + fsync + rename (cqt.outputs). Returns True if written."""
    data = text.encode("utf-8", errors="surrogateescape")
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    outputs.write_atomic(path, data)
    return True


MARKDOWN_SUFFIXES = (".md", ".markdown")


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


# ------------------------------------------------------------------------------ formatting
def fmt_utc(ms: int | None, seconds: bool = False) -> str:
    if ms is None:
        return WAIT
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC" if seconds else "%Y-%m-%d %H:%M UTC")


def fmt_duration(ms: int) -> str:
    s = max(0, int(ms // 1000))
    d, rem = divmod(s, 86_400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    if s < 60:
        return f"{sec}초"
    if s < 3600:
        return f"{m}분" + (f" {sec}초" if sec else "")
    if s < 2 * 86_400:
        return f"{d * 24 + h}시간 {m}분"
    return f"{d}일 {h}시간 {m}분"


def fmt_offset(ms: int) -> str:
    return "시작 +" + fmt_duration(ms)


def human_size(n: int) -> str:
    from .dataset import human_size as hs
    return hs(n)


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def code_text(code: int | None) -> str:
    return {None: WAIT, 0: "✅ PASS", 1: "❌ FAIL", 2: "⚠️ 사용법 오류", 3: "⚠️ 평가 불가",
            74: "⚠️ I/O 오류", 78: "⚠️ 설정 오류"}.get(code, f"⚠️ 종료 코드 {code}")


# ------------------------------------------------------------------------------ data access
@dataclass
class CheckRun:
    ts_ms: int
    name: str
    exit_code: int
    summary: dict[str, Any]


def _json(text: str | None) -> Any:
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}


def check_at_or_after(conn: sqlite3.Connection, name: str, t_ms: int, as_of_ms: int,
                      before_ms: int | None = None) -> CheckRun | None:
    hi = as_of_ms if before_ms is None else min(as_of_ms, before_ms - 1)
    r = conn.execute("SELECT ts_ms, check_name, exit_code, summary_json FROM check_runs WHERE check_name = ? "
                     "AND ts_ms >= ? AND ts_ms <= ? ORDER BY ts_ms, id LIMIT 1", (name, t_ms, hi)).fetchone()
    return CheckRun(r[0], r[1], r[2], _json(r[3])) if r else None


def milestone_runs(ctx: "Context", name: str, milestones) -> list[tuple[str, CheckRun | None, bool]]:
    """(label, run or None, reached) per milestone; unreached milestones keep ⏳."""
    out = []
    for i, (label, offset) in enumerate(milestones):
        if ctx.start_ms is None or ctx.start_ms + offset > ctx.as_of_ms:
            out.append((label, None, False))
            continue
        nxt = ctx.start_ms + milestones[i + 1][1] if i + 1 < len(milestones) else None
        out.append((label, check_at_or_after(ctx.conn, name, ctx.start_ms + offset, ctx.as_of_ms, nxt), True))
    return out


def latest_check(conn: sqlite3.Connection, name: str, as_of_ms: int) -> CheckRun | None:
    r = conn.execute("SELECT ts_ms, check_name, exit_code, summary_json FROM check_runs WHERE check_name = ? "
                     "AND ts_ms <= ? ORDER BY ts_ms DESC, id DESC LIMIT 1", (name, as_of_ms)).fetchone()
    return CheckRun(r[0], r[1], r[2], _json(r[3])) if r else None


def failed_names(summary: Any) -> list[str]:
    """Failed metric names of a check's summary_json (`failed`: names or {"name": …} objects)."""
    out: list[str] = []
    failed = summary.get("failed") if isinstance(summary, dict) else None
    for x in failed if isinstance(failed, list) else []:
        name = x if isinstance(x, str) else (x.get("name") if isinstance(x, dict) else None)
        if isinstance(name, str) and name not in out:
            out.append(name)
    return out


def module_codes(summary: Any) -> dict[str, int]:
    """Per-check exit codes of a runner summary_json (`checks`: {name: code} or [{check, exit_code}])."""
    checks = summary.get("checks") if isinstance(summary, dict) else None
    out: dict[str, int] = {}
    items = checks.items() if isinstance(checks, dict) else (
        ((c.get("check") or c.get("name"), c) for c in checks if isinstance(c, dict)) if isinstance(checks, list) else ())
    for name, v in items:
        code = v if isinstance(v, int) else (v.get("exit_code") if isinstance(v, dict) else None)
        if isinstance(name, str) and isinstance(code, int):
            out[name] = code
    return out


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


def build_context(conn: sqlite3.Connection, settings: Settings, as_of_ms: int, start_ms: int | None = None,
                  journal_lines: list[str] | None = None, journal_mode: str = "auto") -> Context:
    marks = ",".join("?" * len(COLLECTORS))
    if start_ms is None:
        start_ms = conn.execute(f"SELECT MIN(ts_ms) FROM heartbeats WHERE service IN ({marks}) AND ts_ms <= ?",
                                (*COLLECTORS, as_of_ms)).fetchone()[0]
    data_end = conn.execute("SELECT MAX(ts_ms) FROM heartbeats WHERE ts_ms <= ?", (as_of_ms,)).fetchone()[0]
    gap = 3 * settings.heartbeat_s * 1000
    ctx = Context(conn, settings, as_of_ms, start_ms, data_end, journal_lines=journal_lines,
                  journal_mode=journal_mode, hb_gap_ms=gap)
    lo = start_ms if start_ms is not None else 0
    running: list[tuple[int, int]] | None = None
    for svc in COLLECTORS:
        ts = [r[0] for r in conn.execute("SELECT ts_ms FROM heartbeats WHERE service = ? AND ts_ms >= ? AND ts_ms <= ? "
                                         "ORDER BY ts_ms", (svc, lo, as_of_ms))]
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


def latest_export(conn: sqlite3.Connection, basename: str, as_of_ms: int) -> dict[str, Any] | None:
    rows = conn.execute("SELECT id, ts_ms, output, size_bytes, rows, horizon_sec, threshold, from_ts_ms, to_ts_ms, "
                        "drops_json, labels_json, volatility, summary_json FROM export_runs WHERE ts_ms <= ? "
                        "AND (output = ? OR output LIKE ?) ORDER BY ts_ms DESC, id DESC",
                        (as_of_ms, basename, f"%/{basename}")).fetchall()
    for r in rows:
        if Path(r[2]).name == basename:
            keys = ("id", "ts_ms", "output", "size_bytes", "rows", "horizon_sec", "threshold", "from_ts_ms",
                    "to_ts_ms", "drops", "labels", "volatility", "summary")
            d = dict(zip(keys, r))
            d["drops"], d["labels"], d["summary"] = _json(d["drops"]), _json(d["labels"]), _json(d["summary"])
            return d
    return None


# ------------------------------------------------------------------------------ blocks
def block_checks_oneclick(ctx: Context) -> str:
    lines = ["| 시점 | EXIT_CODE | 결과 |", "|------|-----------|------|"]
    for label, run, reached in milestone_runs(ctx, RUNNER, ONECLICK_MILESTONES):
        if run is None:
            mark = NO_RECORD if reached else WAIT
            lines.append(f"| {label} | {mark} | {mark} |")
            continue
        result = code_text(run.exit_code)
        codes = module_codes(run.summary) or modules_near(ctx, run)
        bad = [f"{name} {code_text(code).split(' ', 1)[1]}" for name, code in codes.items() if code != 0]
        if run.exit_code != 0 and bad:
            result += " — " + ", ".join(bad)
        result += f" · {fmt_utc(run.ts_ms)} ({fmt_offset(run.ts_ms - ctx.start_ms)})"
        lines.append(f"| {label} | {run.exit_code} | {cell(result)} |")
    return "\n".join(lines) + "\n"


def modules_near(ctx: Context, run: CheckRun, within_ms: int = 5 * MIN) -> dict[str, int]:
    """Fallback when the runner's summary has no per-check codes: the module rows recorded
    closest to it (the runner records them in the same invocation)."""
    out = {}
    for name in MODULES:
        r = ctx.conn.execute("SELECT exit_code FROM check_runs WHERE check_name = ? AND ts_ms BETWEEN ? AND ? "
                             "ORDER BY ABS(ts_ms - ?) LIMIT 1",
                             (name, run.ts_ms - within_ms, min(run.ts_ms + within_ms, ctx.as_of_ms),
                              run.ts_ms)).fetchone()
        if r:
            out[name] = r[0]
    return out


def block_checks_modules(ctx: Context) -> str:
    lines = ["| 모듈 | 10분 후 | 24시간 후 | 비고 |", "|------|---------|----------|------|"]
    for name in MODULES:
        cells, notes = [], []
        for label, run, reached in milestone_runs(ctx, name, MODULE_MILESTONES):
            if run is None:
                cells.append(NO_RECORD if reached else WAIT)
                continue
            cells.append(f"{code_text(run.exit_code)} ({run.exit_code})")
            if run.exit_code != 0:
                failed = failed_names(run.summary)
                what = ", ".join(failed[:3]) + (f" 외 {len(failed) - 3}개" if len(failed) > 3 else "") if failed \
                    else str(run.summary.get("error") or run.summary.get("summary") or "")[:100]
                notes.append(f"{label}: {what}" if what else label)
        note = redact("; ".join(notes), ctx.settings.secrets)
        lines.append(f"| {name} | {cells[0]} | {cells[1]} | {cell(note)} |")
    return "\n".join(lines) + "\n"


def _labels_text(labels: dict[str, int], rows: int) -> str:
    total = max(rows, 1)
    return " / ".join(f"{labels.get(k, 0):,} ({100.0 * labels.get(k, 0) / total:.1f}%)" for k in ("UP", "DOWN", "NONE"))


def block_export(ctx: Context, basename: str, with_volatility: bool) -> str:
    e = latest_export(ctx.conn, basename, ctx.as_of_ms)
    head = ["| 항목 | 결과 |", "|------|------|"]
    keys = ["파일 크기", "총 row 수", "label_ts 위반 drop 수", "라벨 분포 (UP/DOWN/NONE)"]
    if with_volatility:
        keys.append("해당 기간 변동성 (대략)")
    if e is None:
        return "\n".join(head + [f"| {k} | {WAIT} |" for k in keys]) + "\n"
    size = f"{human_size(e['size_bytes'])} ({e['size_bytes']:,} bytes)"
    if not Path(e["output"]).is_file():
        size += " · ⚠️ 파일 없음"
    candidates = e["summary"].get("candidates")
    rows = f"{e['rows']:,}" + (f" (후보 {candidates:,})" if isinstance(candidates, int) else "")
    drops = e["drops"]
    other = ", ".join(f"{k} {v:,}" for k, v in sorted(drops.items()) if k != "label_ts_violation" and v)
    viol = f"{drops.get('label_ts_violation', 0):,}" + (f" (기타 drop: {other})" if other else " (기타 drop 없음)")
    out = head + [f"| 파일 크기 | {cell(size)} |", f"| 총 row 수 | {rows} |", f"| label_ts 위반 drop 수 | {cell(viol)} |",
                  f"| 라벨 분포 (UP/DOWN/NONE) | {_labels_text(e['labels'], e['rows'])} |"]
    if with_volatility:
        vol = e["summary"].get("volatility") or {}
        if vol.get("sigma_1s") is not None:
            v = (f"연환산 {vol['annualized'] * 100:.1f}% · {e['horizon_sec']}초 {vol['per_horizon'] * 100:.3f}% "
                 f"(1초 σ {vol['sigma_1s']:.3g})")
        elif e["volatility"] is not None:
            v = f"연환산 {e['volatility'] * 100:.1f}%"
        else:
            v = "알 수 없음 (1초 수익률 부족)"
        out.append(f"| 해당 기간 변동성 (대략) | {v} |")
    out.append(f"| 기간 · 설정 | {fmt_utc(e['from_ts_ms'])} → {fmt_utc(e['to_ts_ms'])} · horizon {e['horizon_sec']}초 · "
               f"{cell(e['threshold'])} · 생성 {fmt_utc(e['ts_ms'])} |")
    return "\n".join(out) + "\n"


def stop_rows(ctx: Context) -> list[tuple]:
    return ctx.conn.execute(
        "SELECT service, pid, start_ts_ms, stop_ts_ms, exit_code, reason FROM service_runs WHERE start_ts_ms <= ? "
        "ORDER BY start_ts_ms, service", (ctx.as_of_ms,)).fetchall()


def stop_reasons(ctx: Context) -> list[str]:
    runs = stop_rows(ctx)
    lo = ctx.start_ms or 0
    groups: dict[tuple, list[int]] = {}
    for svc, _pid, start, stop, code, reason in runs:
        if stop is not None and lo <= stop <= ctx.as_of_ms:
            groups.setdefault((svc, code, reason or "exited"), []).append(stop)
    # a run without a stop record followed by a later run of the same service: killed or crashed hard
    by_svc: dict[str, list[tuple]] = {}
    for r in runs:
        by_svc.setdefault(r[0], []).append(r)
    for svc, rs in by_svc.items():
        for a, b in zip(rs, rs[1:]):
            if a[3] is None and b[2] >= lo:
                groups.setdefault((svc, None, "기록 없이 종료 (kill -9·OOM·전원 차단 등)"), []).append(b[2])
    out = []
    for (svc, code, reason), stops in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0][0], str(kv[0][1]))):
        code_txt = "" if code is None else f"exit {code} — "
        last_err = ""
        if code not in (None, 0):
            r = ctx.conn.execute("SELECT message FROM events WHERE service = ? AND level IN ('ERROR', 'CRITICAL') "
                                 "AND last_ts_ms BETWEEN ? AND ? ORDER BY last_ts_ms DESC LIMIT 1",
                                 (svc, max(stops) - 2 * MIN, max(stops))).fetchone()
            if r:
                last_err = f"; 마지막 오류: {r[0][:120]}"
        text = f"{svc}: {code_txt}{reason} ({len(stops)}회, 마지막 {fmt_utc(max(stops))}){last_err}"
        out.append(journal.scrub(text, ctx.settings.secrets))
    return out


def latest_collector_states(ctx: Context) -> dict[str, str]:
    """Each collector's newest heartbeat state at the report time ('stopped' after a clean exit)."""
    marks = ",".join("?" * len(COLLECTORS))
    return dict(ctx.conn.execute(
        f"SELECT h.service, h.state FROM heartbeats h JOIN (SELECT service, MAX(ts_ms) AS m FROM heartbeats "
        f"WHERE service IN ({marks}) AND ts_ms <= ? GROUP BY service) l ON h.service = l.service AND h.ts_ms = l.m",
        (*COLLECTORS, ctx.as_of_ms)).fetchall())


def block_operations(ctx: Context) -> str:
    if ctx.start_ms is None:
        return "\n".join(["- 시작 시각: ⏳", "- 종료/중단 시각: ⏳", "- 연속 구동 시간: ⏳", "- 중단 원인 (있을 경우): ⏳"]) + "\n"
    lines = [f"- 시작 시각: {fmt_utc(ctx.start_ms, True)} (수집기 첫 하트비트)"]
    stops = [r for r in stop_rows(ctx) if r[3] is not None and ctx.start_ms <= r[3] <= ctx.as_of_ms]
    last_hb = max((s.spans[-1][1] for s in ctx.segments.values() if s.spans), default=None)
    running_now = (last_hb is not None and ctx.as_of_ms - last_hb <= ctx.hb_gap_ms
                   and any(state != "stopped" for state in latest_collector_states(ctx).values()))
    if stops:
        last = max(stops, key=lambda r: (r[3], r[0]))
        code = "" if last[4] is None else f", exit {last[4]}"
        stop_txt = f"{fmt_utc(last[3], True)} ({last[0]}{code})"
        if running_now:
            stop_txt += " — 현재 구동 중"
    elif running_now:
        stop_txt = f"없음 — 구동 중 (마지막 하트비트 {fmt_utc(last_hb, True)})"
    else:
        stop_txt = f"기록 없음 — 마지막 하트비트 {fmt_utc(last_hb, True)} 이후 하트비트 없음"
    lines.append(f"- 종료/중단 시각: {stop_txt}")
    best = longest_all(ctx)
    if best is None:
        lines.append("- 연속 구동 시간: 0초 (수집기가 동시에 구동된 구간 없음)")
    else:
        lines.append(f"- 연속 구동 시간: {fmt_duration(best[1] - best[0])} ({fmt_utc(best[0])} → {fmt_utc(best[1])}, "
                     f"수집기 {len(ctx.segments)}개 동시 구동 기준; 하트비트 간격 > {ctx.hb_gap_ms / 1000:g}초면 끊김)")
        for svc in COLLECTORS:
            seg = ctx.segments.get(svc)
            if seg is None:
                lines.append(f"  - {svc}: 하트비트 없음")
                continue
            lo, hi = seg.longest
            breaks = len(seg.spans) - 1
            lines.append(f"  - {svc}: 최장 {fmt_duration(hi - lo)}" + (f", 끊김 {breaks}회" if breaks else ""))
    reasons = stop_reasons(ctx)
    if reasons:
        lines.append("- 중단 원인 (있을 경우):")
        lines += [f"  - {cell(r)}" for r in reasons[:8]]
        if len(reasons) > 8:
            lines.append(f"  - 외 {len(reasons) - 8}건")
    else:
        lines.append("- 중단 원인 (있을 경우): 없음")
    return "\n".join(lines) + "\n"


SOURCE_TEXT = {"events": "events 테이블", "journal": "journalctl", "journal-file": "journal JSON 파일"}


def top_errors(ctx: Context, since_ms: int, until_ms: int) -> tuple[list[journal.TopMessage], str, int]:
    key = (since_ms, until_ms)
    if key not in ctx._entries:         # the top-errors block and the run log ask for the same window
        ctx._entries[key] = journal.collect(ctx.conn, since_ms, until_ms, ctx.journal_mode, ctx.journal_lines)
    entries, source = ctx._entries[key]
    total = sum(e.count for e in entries)
    return journal.top_messages(entries, 5, ctx.settings.secrets), source, total


def block_top_errors(ctx: Context) -> str:
    if ctx.start_ms is None or ctx.data_end_ms is None:
        return "```\n⏳ 운영 환경에서 실행 후 기록\n```\n"
    until = ctx.data_end_ms
    since = max(ctx.start_ms, until - DAY)
    top, source, total = top_errors(ctx, since, until)
    lines = ["```", f"기간: {fmt_utc(since)} → {fmt_utc(until)} · 출처: {SOURCE_TEXT.get(source, source)} · "
                    f"경고/오류 {total:,}건"]
    if not top:
        lines.append("경고/오류 없음")
    for i, t in enumerate(top, 1):
        lines.append(f"{i}. {t.count:>6,}회  {t.level:<8} {t.service:<22} {t.message}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def block_dod(ctx: Context, filled: bool, remaining: int) -> str:
    best = longest_all(ctx)
    dur = 0 if best is None else best[1] - best[0]
    ok24 = dur >= DAY
    run = latest_check(ctx.conn, RUNNER, ctx.as_of_ms)
    ok_checks = run is not None and run.exit_code == 0
    e = latest_export(ctx.conn, EXPORT_24H, ctx.as_of_ms)
    ok_export = (e is not None and e["rows"] > 0 and e["size_bytes"] > 0 and Path(e["output"]).is_file()
                 and Path(e["output"]).stat().st_size > 0)

    def box(ok: bool) -> str:
        return "[x]" if ok else "[ ]"

    n1 = f"최장 연속 {fmt_duration(dur)}" if ctx.start_ms is not None else "수집 전"
    n2 = (f"마지막 실행 EXIT_CODE={run.exit_code} ({fmt_utc(run.ts_ms)})" if run else "실행 기록 없음")
    if e is None:
        n3 = "생성 기록 없음"
    elif not Path(e["output"]).is_file():
        n3 = f"기록은 있으나 파일 없음: {e['output']}"
    else:
        n3 = f"{human_size(e['size_bytes'])}, {e['rows']:,} rows ({fmt_utc(e['ts_ms'])})"
    n4 = "모든 표 채움" if filled else f"미기록 항목 {remaining}개"
    return "\n".join([
        f"- {box(ok24)} 봇 24h 연속 구동 (또는 최소 장시간 구동 + 중단 원인 분석) — {n1}",
        f"- {box(ok_checks)} `bash checks/run_pipeline_checks.sh --window 600` → `EXIT_CODE=0` — {n2}",
        f"- {box(ok_export)} `./data/datasets/btc_24h.parquet` 생성 성공 (유효 크기, 0바이트 아님) — {n3}",
        f"- {box(filled)} 본 문서(`step-alt-5.md`) 결과 기록 완료 — {n4}",
    ]) + "\n"


def block_status(ctx: Context) -> str:
    if ctx.start_ms is None:
        return "> **상태**: 📋 수집 전 — 수집기 하트비트 없음 (`bin/cqt-report`가 자동 갱신)\n"
    best = longest_all(ctx)
    dur = 0 if best is None else best[1] - best[0]
    last_hb = max((s.spans[-1][1] for s in ctx.segments.values() if s.spans), default=ctx.start_ms)
    running = ctx.as_of_ms - last_hb <= ctx.hb_gap_ms
    if dur >= DAY:
        state = "✅ 24시간 연속 구동 달성"
    elif running:
        state = "🔄 수집 중"
    else:
        state = "⏹ 수집 중단"
    return (f"> **상태**: {state} — 수집 시작 후 {fmt_duration(ctx.data_end_ms - ctx.start_ms)} · "
            f"데이터 기준 {fmt_utc(ctx.data_end_ms, True)} (`bin/cqt-report`가 자동 갱신)\n")


def block_plots(plots: Sequence[Any], report_dir: Path) -> str:
    if not plots:
        return "그래프를 만들 데이터 없음\n"
    lines = []
    for p in plots:
        rel = os.path.relpath(p.path, report_dir)
        lines.append(f"![{p.title}]({rel})")
        lines.append("")
    return "\n".join(lines[:-1]) + "\n"


def block_run_log(ctx: Context, date: str) -> str:
    until = ctx.data_end_ms
    since = max(ctx.start_ms or until, until - DAY)
    lines = [f"### {date} (UTC) — {fmt_utc(since)} → {fmt_utc(until)}", ""]
    runs = ctx.conn.execute("SELECT exit_code, COUNT(*) FROM check_runs WHERE check_name = ? AND ts_ms > ? "
                            "AND ts_ms <= ? GROUP BY exit_code ORDER BY exit_code", (RUNNER, since, until)).fetchall()
    if runs:
        last = latest_check(ctx.conn, RUNNER, until)
        parts = " · ".join(f"{code_text(c).split(' ', 1)[-1]} {n}" for c, n in runs)
        lines.append(f"- 점검(`run_pipeline_checks`): {sum(n for _, n in runs)}회 — {parts}; 마지막 EXIT_CODE="
                     f"{last.exit_code} ({fmt_utc(last.ts_ms)})")
    else:
        lines.append("- 점검(`run_pipeline_checks`): 실행 기록 없음")
    exports = []
    for name in (EXPORT_1H, EXPORT_24H):
        e = latest_export(ctx.conn, name, ctx.as_of_ms)
        if e is not None and e["ts_ms"] > since:
            exports.append(f"{name} {e['rows']:,} rows, {human_size(e['size_bytes'])} "
                           f"(UP/DOWN/NONE {_labels_text(e['labels'], e['rows'])})")
    lines.append("- Export: " + ("; ".join(exports) if exports else "없음"))
    span = max(until - since, 1)
    up = [f"{svc} {100.0 * overlap_ms(ctx.segments[svc].spans, since, until) / span:.1f}%"
          for svc in COLLECTORS if svc in ctx.segments]
    lines.append("- 수집기 가동률 (하트비트 기준): " + (" · ".join(up) if up else "하트비트 없음"))
    stops = ctx.conn.execute("SELECT COUNT(*) FROM service_runs WHERE stop_ts_ms > ? AND stop_ts_ms <= ?",
                             (since, until)).fetchone()[0]
    lines.append(f"- 프로세스 종료: {stops}회")
    top, source, total = top_errors(ctx, since, until)
    head = f"; 최다: {top[0].count:,}회 {top[0].level} {top[0].service} — {top[0].message}" if top else ""
    lines.append(f"- 경고/오류: {total:,}건 ({SOURCE_TEXT.get(source, source)}){cell(head)}")
    return "\n".join(lines) + "\n"


SECTION_BLOCKS = ("checks-oneclick", "checks-modules", "export-1h", "export-24h", "operations", "top-errors")


def render_blocks(ctx: Context) -> dict[str, str]:
    bodies = {
        "status": block_status(ctx),
        "checks-oneclick": block_checks_oneclick(ctx),
        "checks-modules": block_checks_modules(ctx),
        "export-1h": block_export(ctx, EXPORT_1H, with_volatility=False),
        "export-24h": block_export(ctx, EXPORT_24H, with_volatility=True),
        "operations": block_operations(ctx),
        "top-errors": block_top_errors(ctx),
    }
    remaining = sum(bodies[k].count(WAIT) + bodies[k].count(NO_RECORD) for k in SECTION_BLOCKS)
    bodies["dod"] = block_dod(ctx, remaining == 0, remaining)
    return bodies


def run_log_date(ctx: Context) -> str | None:
    if ctx.data_end_ms is None:
        return None
    return datetime.fromtimestamp(ctx.data_end_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


# ------------------------------------------------------------------------------ the update
@dataclass
class ReportOutcome:
    path: Path
    written: bool
    blocks: list[str]
    missing_blocks: list[str]
    run_log_date: str | None
    plots: list[Path]
    as_of_ms: int


def journal_mode_setting(settings: Settings) -> str:
    """CQT_REPORT_JOURNAL: auto (journal when cqt units log there, else events) | journal | events."""
    mode = settings.get_str("CQT_REPORT_JOURNAL", "auto").strip().lower()
    if mode not in ("auto", "journal", "events"):
        raise ConfigError("CQT_REPORT_JOURNAL", f"{mode!r} is not one of auto, journal, events")
    return mode


def update_report(settings: Settings, out: Path | None = None, as_of_ms: int | None = None, plots: bool = True,
                  start_ms: int | None = None, journal_lines: list[str] | None = None,
                  journal_mode: str | None = None) -> ReportOutcome:
    """Fill the report from the database. Raises OutputRefused (before anything is written),
    DatabaseMissing/SchemaTooNew/sqlite3.Error/OSError/ConfigError."""
    journal_mode = journal_mode or journal_mode_setting(settings)
    as_of = now_ms() if as_of_ms is None else as_of_ms
    conn = open_readonly(settings.db)
    try:
        path = report_target(Path(out) if out is not None else settings.report, settings.db)
        ctx = build_context(conn, settings, as_of, start_ms, journal_lines, journal_mode)
        bodies = render_blocks(ctx)
        made: list[Any] = []
        if plots:
            from . import plots as plotmod
            made = plotmod.make_plots(conn, settings, path.parent, path.stem, ctx)
            bodies["plots"] = block_plots(made, path.parent)
        date = run_log_date(ctx)
        log_body = block_run_log(ctx, date) if date else None
    finally:
        conn.close()
    # bytes, not read_text(): universal newlines would turn the operator's \r\n into \n
    text = (path if path.exists() else TEMPLATE).read_bytes().decode("utf-8", errors="surrogateescape")
    new, missing = replace_blocks(text, bodies)
    if date and log_body:
        new = upsert_dated_block(new, RUN_LOG_PREFIX + date, log_body)
    written = write_atomic(path, new)
    return ReportOutcome(path, written, sorted(bodies), missing, date, [p.path for p in made], as_of)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--db", type=click.Path(dir_okay=False), help="Database file (default CQT_DB).")
@click.option("--out", type=click.Path(dir_okay=False), help="Report file (default CQT_REPORT).")
@click.option("--as-of", "as_of", type=TIME, help="Report time (ISO-8601 or epoch ms; default now).")
@click.option("--start", "start", type=TIME,
              help="Collection start (default: the first collector heartbeat).")
@click.option("--no-plots", is_flag=True, help="Do not (re)draw the PNG plots.")
@click.option("--journal-json", type=click.Path(exists=True, dir_okay=False),
              help="Take warnings/errors from a recorded `journalctl -o json` export instead.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as one JSON object.")
def main(db, out, as_of, start, no_plots, journal_json, as_json):
    """Fill the run report's tables from the database (in place, idempotent).

    Exit codes: 0 report up to date, 3 database missing or unreadable, 74 cannot write
    the report, 78 bad setting, 1 the report file (Markdown) has none of the cqt blocks
    (nothing is written), 2 --out (or a plot beside it) is the database, a device or an
    existing file that is not a cqt report / cqt plot.
    """
    from .runtime import load_settings_or_exit

    settings = load_settings_or_exit(db=db)
    try:
        mode = journal_mode_setting(settings)
    except ConfigError as exc:
        click.echo(f"cqt-report: {exc}", err=True)
        sys.exit(exitcodes.CONFIG)
    lines = Path(journal_json).read_text(encoding="utf-8", errors="replace").splitlines() if journal_json else None
    target = Path(out).expanduser().absolute() if out else settings.report
    code = exitcodes.OK
    try:
        res = update_report(settings, target, as_of, not no_plots, start, lines, mode)
    except outputs.OutputRefused as exc:
        click.echo(f"cqt-report: {exc}", err=True)
        sys.exit(exc.code)
    except (DatabaseMissing, SchemaTooNew) as exc:
        click.echo(f"cqt-report: {exc}", err=True)
        sys.exit(exitcodes.NOEVAL)
    except sqlite3.Error as exc:
        click.echo(f"cqt-report: cannot read database {settings.db}: {exc}", err=True)
        sys.exit(exitcodes.NOEVAL)
    except OSError as exc:
        click.echo(f"cqt-report: cannot write {target}: {exc}", err=True)
        sys.exit(exitcodes.IOERR)
    if len(res.missing_blocks) == len(res.blocks):
        click.echo(f"cqt-report: {res.path} has none of the cqt blocks; nothing filled "
                   "(move it away to start from the template)", err=True)
        code = exitcodes.FAIL
    elif res.missing_blocks:
        click.echo(f"cqt-report: warning: blocks not found in {res.path}: {', '.join(res.missing_blocks)}", err=True)
    if as_json:
        click.echo(json.dumps({"report": str(res.path), "written": res.written, "missing_blocks": res.missing_blocks,
                               "run_log_date": res.run_log_date, "plots": [str(p) for p in res.plots],
                               "exit_code": code}, sort_keys=True))
    else:
        state = "updated" if res.written else "unchanged"
        click.echo(f"report: {state} {res.path} run_log={res.run_log_date or '-'} plots={len(res.plots)}")
    sys.exit(code)
