"""How the report writes times, durations, exit codes and table cells (Korean, UTC)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

WAIT = "⏳"                    # not reached yet
NO_RECORD = "기록 없음"          # reached, but nothing was recorded


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


def cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def code_text(code: int | None) -> str:
    return {None: WAIT, 0: "✅ PASS", 1: "❌ FAIL", 2: "⚠️ 사용법 오류", 3: "⚠️ 평가 불가",
            74: "⚠️ I/O 오류", 78: "⚠️ 설정 오류"}.get(code, f"⚠️ 종료 코드 {code}")


def labels_text(labels: dict[str, int], rows: int) -> str:
    """'UP (pct) / DOWN (pct) / NONE (pct)' of an export's label counts."""
    total = max(rows, 1)
    return " / ".join(f"{labels.get(k, 0):,} ({100.0 * labels.get(k, 0) / total:.1f}%)" for k in ("UP", "DOWN", "NONE"))
