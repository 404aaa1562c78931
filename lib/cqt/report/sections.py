"""The report's blocks about checks, exports, the definition of done and the status line,
and the one function that renders every block but the plots and the run log."""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from ..bookkeeping import (
    EXPORT_1H,
    EXPORT_24H,
    MODULES,
    RUNNER,
    CheckRun,
    latest_check,
    latest_export,
    nearest_check_code,
)
from ..export.request import nightly_export_name
from ..redact import redact
from ..units import fmt_bytes
from .context import DAY, HOUR, MIN, Context, longest_all, milestone_runs
from .operations import block_operations, block_top_errors
from .text import NO_RECORD, WAIT, cell, code_text, fmt_duration, fmt_offset, fmt_utc, labels_text

# (label, offset from collection start). A milestone takes the first run at or after start +
# offset and before the next milestone: a run 5 days later is not "the 10-minute check".
ONECLICK_MILESTONES = (("10분 후", 10 * MIN), ("1시간 후", HOUR), ("24시간 후", DAY))
MODULE_MILESTONES = (("10분 후", 10 * MIN), ("24시간 후", DAY))


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
        ((c.get("check") or c.get("name"), c) for c in checks if isinstance(c, dict))
        if isinstance(checks, list) else ())
    for name, v in items:
        code = v if isinstance(v, int) else (v.get("exit_code") if isinstance(v, dict) else None)
        if isinstance(name, str) and isinstance(code, int):
            out[name] = code
    return out


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
        code = nearest_check_code(ctx.conn, name, run.ts_ms, run.ts_ms - within_ms,
                                  min(run.ts_ms + within_ms, ctx.as_of_ms))
        if code is not None:
            out[name] = code
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


def block_export(ctx: Context, basename: str, with_volatility: bool) -> str:
    e = latest_export(ctx.conn, basename, ctx.as_of_ms)
    head = ["| 항목 | 결과 |", "|------|------|"]
    keys = ["파일 크기", "총 row 수", "label_ts 위반 drop 수", "라벨 분포 (UP/DOWN/NONE)"]
    if with_volatility:
        keys.append("해당 기간 변동성 (대략)")
    if e is None:
        return "\n".join(head + [f"| {k} | {WAIT} |" for k in keys]) + "\n"
    size = f"{fmt_bytes(e['size_bytes'])} ({e['size_bytes']:,} bytes)"
    if not Path(e["output"]).is_file():
        size += " · ⚠️ 파일 없음"
    candidates = e["summary"].get("candidates")
    rows = f"{e['rows']:,}" + (f" (후보 {candidates:,})" if isinstance(candidates, int) else "")
    drops = e["drops"]
    other = ", ".join(f"{k} {v:,}" for k, v in sorted(drops.items()) if k != "label_ts_violation" and v)
    viol = f"{drops.get('label_ts_violation', 0):,}" + (f" (기타 drop: {other})" if other else " (기타 drop 없음)")
    out = head + [f"| 파일 크기 | {cell(size)} |", f"| 총 row 수 | {rows} |",
                  f"| label_ts 위반 drop 수 | {cell(viol)} |",
                  f"| 라벨 분포 (UP/DOWN/NONE) | {labels_text(e['labels'], e['rows'])} |"]
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
    out.append(f"| 기간 · 설정 | {fmt_utc(e['from_ts_ms'])} → {fmt_utc(e['to_ts_ms'])} · "
               f"horizon {e['horizon_sec']}초 · "
               f"{cell(e['threshold'])} · 생성 {fmt_utc(e['ts_ms'])} |")
    return "\n".join(out) + "\n"


def market_fill(ctx: Context, asset: str, lo_ms: int, hi_ms: int) -> tuple[float, float]:
    """(coverage, trade fill) of `asset`'s market_1s over [lo, hi]: rows per second, and seconds
    with a real Upbit trade per second (one index range of that asset)."""
    n, traded = ctx.conn.execute("SELECT COUNT(*), COALESCE(SUM(has_trade), 0) FROM market_1s "
                                 "WHERE symbol = ? AND ts_ms >= ? AND ts_ms <= ?", (asset, lo_ms, hi_ms)).fetchone()
    seconds = max(1, (hi_ms - lo_ms) // 1000 + 1)
    return min(1.0, n / seconds), min(1.0, traded / seconds)


def block_export_symbols(ctx: Context) -> str:
    """One row per configured asset: its newest nightly 24 h export (rows, labels, drops) and the
    fill of its market_1s over that export's range (else the 24 h ending at the newest data)."""
    lines = ["| 자산 | 파일 | 총 row 수 | 라벨 분포 (UP/DOWN/NONE) | market_1s 커버리지 · 체결 초 "
             "| drop (label_ts 위반) |",
             "|------|------|-----------|--------------------------|------------------------------"
             "|----------------------|"]
    for asset in ctx.settings.assets:
        name = nightly_export_name(asset, "24h")
        e = latest_export(ctx.conn, name, ctx.as_of_ms)
        if e is not None:
            lo, hi = e["from_ts_ms"], e["to_ts_ms"]
        elif ctx.data_end_ms is not None:
            lo, hi = ctx.data_end_ms - DAY + 1000, ctx.data_end_ms
        else:
            lines.append(f"| {asset} | `{name}` | {WAIT} | {WAIT} | {WAIT} | {WAIT} |")
            continue
        cov, traded = market_fill(ctx, asset, lo, hi)
        fill = f"{cov * 100:.1f}% · {traded * 100:.1f}%"
        if e is None:
            lines.append(f"| {asset} | `{name}` | {WAIT} | {WAIT} | {fill} | {WAIT} |")
            continue
        drops = e["drops"]
        dropped = f"{sum(drops.values()):,} ({drops.get('label_ts_violation', 0):,})"
        missing = "" if Path(e["output"]).is_file() else " · ⚠️ 파일 없음"
        lines.append(f"| {asset} | `{name}`{missing} | {e['rows']:,} | {labels_text(e['labels'], e['rows'])} | "
                     f"{fill} | {dropped} |")
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
        n3 = f"{fmt_bytes(e['size_bytes'])}, {e['rows']:,} rows ({fmt_utc(e['ts_ms'])})"
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


SECTION_BLOCKS = ("checks-oneclick", "checks-modules", "export-1h", "export-24h", "operations", "top-errors")


def render_blocks(ctx: Context) -> dict[str, str]:
    bodies = {
        "status": block_status(ctx),
        "checks-oneclick": block_checks_oneclick(ctx),
        "checks-modules": block_checks_modules(ctx),
        "export-1h": block_export(ctx, EXPORT_1H, with_volatility=False),
        "export-24h": block_export(ctx, EXPORT_24H, with_volatility=True),
        "export-symbols": block_export_symbols(ctx),
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
