"""One probed item and how it is shown."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Item:
    source: str                  # 'upbit' | 'binance' | 'coinglass'
    name: str                    # 'ws market BTCUSDT@aggTrade', 'rest /fapi/v1/openInterest BTCUSDT'
    ok: bool
    frames: int = 0              # WebSocket frames or REST answers seen
    rows: int = 0                # rows the real parser made of them
    rejects: int = 0             # frames or answers the parser refused
    latency_ms: float | None = None
    cause: str = ""              # FAIL: what went wrong, in words
    fix: str = ""                # FAIL: what to change
    note: str = ""               # OK: anything worth knowing (plan, budget used)
    reject_reasons: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        head = f"{'OK  ' if self.ok else 'FAIL'} {self.source} {self.name}"
        parts = [f"frames={self.frames}", f"rows={self.rows}", f"rejects={self.rejects}"]
        if self.latency_ms is not None:
            parts.append(f"latency_ms={self.latency_ms:.0f}")
        text = f"{head}: {' '.join(parts)}"
        if self.reject_reasons:
            text += " reject_reasons=" + ",".join(f"{k}:{v}" for k, v in sorted(self.reject_reasons.items()))
        if not self.ok:
            text += f": {self.cause}" + (f": {self.fix}" if self.fix else "")
        elif self.note:
            text += f" ({self.note})"
        return text

    def as_dict(self) -> dict:
        out = asdict(self)
        out["status"] = "OK" if self.ok else "FAIL"
        if self.latency_ms is not None:
            out["latency_ms"] = round(self.latency_ms, 1)
        return out
