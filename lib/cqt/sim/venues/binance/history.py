"""How far back the simulated Binance REST serves history, and which end of an oversized
`/futures/data/*` window it answers (cqt-sim --binance-agg-history-s,
--binance-futures-data-days, --binance-futures-data-window).

The real limits: aggTrades "only trade histories within the past 48 hours" (SDK docstring;
an older doc page says one year), `/futures/data/*` "latest 1 month" with an older startTime
answered -1130. The aggTrades refusal shape is not documented; the sim answers it like the
/futures/data one: HTTP 400 {"code":-1130,"msg":"Data sent for parameter '<name>' is not
valid."}.
"""
from __future__ import annotations

from dataclasses import dataclass

DAY_MS = 86_400_000
WINDOWS = ("oldest", "newest")


@dataclass(frozen=True)
class HistoryLimits:
    agg_history_s: int = 0            # 0 = aggTrades of any age the model retains
    futures_data_days: int = 0        # 0 = an old startTime is clamped to 30 days (no error)
    futures_data_window: str = "oldest"

    def agg_too_old(self, oldest_ts_ms: int | None, now_ms: int) -> bool:
        """True when a request reaches back to trades older than the history limit."""
        return (self.agg_history_s > 0 and oldest_ts_ms is not None
                and oldest_ts_ms < now_ms - self.agg_history_s * 1000)

    def futures_start_too_old(self, start_ms: int | None, now_ms: int) -> bool:
        return (self.futures_data_days > 0 and start_ms is not None
                and start_ms < now_ms - self.futures_data_days * DAY_MS)


def invalid_param_msg(name: str) -> str:
    return f"Data sent for parameter '{name}' is not valid."


def window_times(lo: int, hi: int, period_ms: int, limit: int, window: str) -> list[int]:
    """Period boundaries in [lo, hi] (lo already aligned), at most `limit`: the oldest or the
    newest end of the window."""
    times = list(range(lo, hi + 1, period_ms)) if hi >= lo else []
    return times[:limit] if window == "oldest" else times[-limit:]
