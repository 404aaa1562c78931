"""The report's blocks about operations: start and stop, continuous running time, why
processes stopped, the top warnings/errors, and the dated run log of one day."""
from __future__ import annotations

from .. import journal
from ..bookkeeping import (
    COLLECTORS,
    EXPORT_1H,
    EXPORT_24H,
    RUNNER,
    exit_code_counts,
    last_error,
    latest_check,
    latest_export,
    latest_heartbeats,
    service_runs_until,
    stops_between,
)
from ..export.request import nightly_export_name
from ..units import fmt_bytes
from .context import DAY, MIN, Context, longest_all, overlap_ms, top_errors
from .text import cell, code_text, fmt_duration, fmt_utc, labels_text

SOURCE_TEXT = {"events": "events 테이블", "journal": "journalctl", "journal-file": "journal JSON 파일"}


def stop_reasons(ctx: Context) -> list[str]:
    runs = service_runs_until(ctx.conn, ctx.as_of_ms)
    lo = ctx.start_ms or 0
    groups: dict[tuple, list[int]] = {}
    for svc, _pid, _start, stop, code, reason in runs:
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
            msg = last_error(ctx.conn, svc, max(stops) - 2 * MIN, max(stops))
            if msg is not None:
                last_err = f"; 마지막 오류: {msg[:120]}"
        text = f"{svc}: {code_txt}{reason} ({len(stops)}회, 마지막 {fmt_utc(max(stops))}){last_err}"
        out.append(journal.scrub(text, ctx.settings.secrets))
    return out


def latest_collector_states(ctx: Context) -> dict[str, str]:
    """Each collector's newest heartbeat state at the report time ('stopped' after a clean exit)."""
    return {svc: state for svc, _ts, state, _detail in latest_heartbeats(ctx.conn, COLLECTORS, ctx.as_of_ms)}


def block_operations(ctx: Context) -> str:
    if ctx.start_ms is None:
        return "\n".join(["- 시작 시각: ⏳", "- 종료/중단 시각: ⏳", "- 연속 구동 시간: ⏳",
                          "- 중단 원인 (있을 경우): ⏳"]) + "\n"
    lines = [f"- 시작 시각: {fmt_utc(ctx.start_ms, True)} (수집기 첫 하트비트)"]
    stops = [r for r in service_runs_until(ctx.conn, ctx.as_of_ms)
             if r[3] is not None and ctx.start_ms <= r[3] <= ctx.as_of_ms]
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


def block_run_log(ctx: Context, date: str) -> str:
    until = ctx.data_end_ms
    since = max(ctx.start_ms or until, until - DAY)
    lines = [f"### {date} (UTC) — {fmt_utc(since)} → {fmt_utc(until)}", ""]
    runs = exit_code_counts(ctx.conn, RUNNER, since, until)
    if runs:
        last = latest_check(ctx.conn, RUNNER, until)
        parts = " · ".join(f"{code_text(c).split(' ', 1)[-1]} {n}" for c, n in runs)
        lines.append(f"- 점검(`run_pipeline_checks`): {sum(n for _, n in runs)}회 — {parts}; 마지막 EXIT_CODE="
                     f"{last.exit_code} ({fmt_utc(last.ts_ms)})")
    else:
        lines.append("- 점검(`run_pipeline_checks`): 실행 기록 없음")
    exports = []
    names = [nightly_export_name(a, span) for a in ctx.settings.assets for span in ("1h", "24h")]
    for name in names or (EXPORT_1H, EXPORT_24H):
        e = latest_export(ctx.conn, name, ctx.as_of_ms)
        if e is not None and e["ts_ms"] > since:
            exports.append(f"{name} {e['rows']:,} rows, {fmt_bytes(e['size_bytes'])} "
                           f"(UP/DOWN/NONE {labels_text(e['labels'], e['rows'])})")
    lines.append("- Export: " + ("; ".join(exports) if exports else "없음"))
    span = max(until - since, 1)
    up = [f"{svc} {100.0 * overlap_ms(ctx.segments[svc].spans, since, until) / span:.1f}%"
          for svc in COLLECTORS if svc in ctx.segments]
    lines.append("- 수집기 가동률 (하트비트 기준): " + (" · ".join(up) if up else "하트비트 없음"))
    stops = stops_between(ctx.conn, since, until)
    lines.append(f"- 프로세스 종료: {stops}회")
    top, source, total = top_errors(ctx, since, until)
    head = f"; 최다: {top[0].count:,}회 {top[0].level} {top[0].service} — {top[0].message}" if top else ""
    lines.append(f"- 경고/오류: {total:,}건 ({SOURCE_TEXT.get(source, source)}){cell(head)}")
    return "\n".join(lines) + "\n"
