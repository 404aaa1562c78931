"""Fill rates over the last hour and day per stream, computed beside the page, not in it.

altdata_check's fill over 24 h reads every row of a day (about 0.2 s for one Binance aggTrade
stream on the 24 h synthetic database, 0.5 s for one asset's streams): too slow for a panel that
redraws every few seconds. One thread per (database, settings) recomputes them in the
background (1 h every minute, 24 h every five minutes, one short read-only connection per
stream) and the panel shows the newest values with their time. The thread stops by itself when
no page has asked for ten minutes.
"""
from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass, field

from .. import db
from ..config import Settings
from ..timeutil import now_ms
from . import queries

REFRESH_S = {3600: 60.0, 86400: 300.0}    # window -> seconds between recomputations
IDLE_STOP_S = 600.0
DEADLINE_S = 30.0      # one stream's day of rows from a cold disk cache; no page waits for it


@dataclass
class LongFills:
    settings: Settings
    values: dict[tuple[str, int], float | None] = field(default_factory=dict)   # (stream, window) -> fill
    computed_ms: dict[int, int] = field(default_factory=dict)                    # window -> when
    asked: float = field(default_factory=time.monotonic)
    thread: threading.Thread | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, stream: str, window_s: int) -> tuple[float | None, int | None]:
        """(fill, when it was computed); (None, None) until the first computation is done."""
        with self.lock:
            self.asked = time.monotonic()
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self.run, name="cqt-dashboard-fill", daemon=True)
                self.thread.start()
            return self.values.get((stream, window_s)), self.computed_ms.get(window_s)

    def run(self) -> None:
        due = {w: 0.0 for w in REFRESH_S}
        while time.monotonic() - self.asked < IDLE_STOP_S:
            for window_s, every_s in REFRESH_S.items():
                if time.monotonic() >= due[window_s]:
                    self.compute(window_s)
                    due[window_s] = time.monotonic() + every_s
            time.sleep(1.0)

    def compute(self, window_s: int) -> None:
        as_of = now_ms()
        out: dict[tuple[str, int], float | None] = {}
        for ref in queries.stream_refs(self.settings):
            if ref.stream.fill is None:
                continue
            try:
                with queries.reader(self.settings.db, deadline_s=DEADLINE_S) as r:
                    m = queries.stream_metrics(r, self.settings, ref, as_of, window_s).get("fill")
                out[(ref.name, window_s)] = None if m is None else m.value
            except (db.DatabaseMissing, sqlite3.Error):
                out[(ref.name, window_s)] = None
        with self.lock:
            self.values.update(out)
            self.computed_ms[window_s] = as_of


_BY_KEY: dict[tuple, LongFills] = {}
_BY_KEY_LOCK = threading.Lock()


def long_fills(settings: Settings) -> LongFills:
    """The one LongFills of this database and these settings in this process."""
    key = (str(settings.db), tuple(settings.assets),
           tuple(sorted((k, v) for k, v in settings.raw.items() if k.startswith(("CQT_CHECK_", "CQT_POLL_")))))
    with _BY_KEY_LOCK:
        if key not in _BY_KEY:
            _BY_KEY[key] = LongFills(settings)
        return _BY_KEY[key]
