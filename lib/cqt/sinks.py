"""Throttled sinks into the database: bad input (`rejects`, `reject_counts`) and warnings (`events`)."""
from __future__ import annotations

from typing import Callable, Iterable

from .redact import redact
from .timeutil import now_ms
from .writer import BatchWriter


def hour_floor(ms: int) -> int:
    return ms - ms % 3_600_000


class RejectLog:
    """Record bad input: every reject counted in `reject_counts`; the first
    `keep_per_hour` raw payloads per (source, reason, hour) kept in `rejects`, with the
    venue symbol the payload names when the caller could tell (else NULL)."""

    SQL_RAW = "INSERT INTO rejects (ts_ms, source, reason, raw, symbol) VALUES (?, ?, ?, ?, ?)"
    SQL_COUNT = ("INSERT INTO reject_counts (source, reason, hour_ms, count, last_ts_ms) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT(source, reason, hour_ms) DO UPDATE SET count = count + excluded.count, "
                 "last_ts_ms = MAX(last_ts_ms, excluded.last_ts_ms)")

    def __init__(self, writer: BatchWriter, secrets: Iterable[str] = (), keep_per_hour: int = 20,
                 max_raw_bytes: int = 4096, clock: Callable[[], int] = now_ms):
        self.writer = writer
        self.secrets = tuple(secrets)
        self.keep_per_hour = keep_per_hour
        self.max_raw_bytes = max_raw_bytes
        self.clock = clock
        self._kept: dict[tuple[str, str, int], int] = {}
        self.total = 0

    def record(self, source: str, reason: str, raw: str | bytes | None, ts_ms: int | None = None,
               symbol: str | None = None) -> None:
        ts = self.clock() if ts_ms is None else ts_ms
        hour = hour_floor(ts)
        self.total += 1
        key = (source, reason, hour)
        kept = self._kept.get(key, 0)
        if kept < self.keep_per_hour:
            if len(self._kept) > 10_000:
                self._kept = {k: v for k, v in self._kept.items() if k[2] == hour}
            self._kept[key] = kept + 1
            if isinstance(raw, bytes):
                raw = raw.decode("utf-8", "replace")
            text = None if raw is None else redact(raw, self.secrets, limit=self.max_raw_bytes)
            self.writer.put(self.SQL_RAW, (ts, source, reason, text, symbol))
        self.writer.put(self.SQL_COUNT, (source, reason, hour, 1, ts))


class EventLog:
    """Warnings and errors into `events`, one row per (service, level, message, hour)."""

    SQL = ("INSERT INTO events (ts_ms, last_ts_ms, hour_ms, service, level, message, count) "
           "VALUES (?, ?, ?, ?, ?, ?, 1) ON CONFLICT(service, level, message, hour_ms) "
           "DO UPDATE SET count = count + 1, last_ts_ms = excluded.last_ts_ms")
    MAX_DISTINCT_PER_HOUR = 500

    def __init__(self, writer: BatchWriter, service: str, secrets: Iterable[str] = (),
                 clock: Callable[[], int] = now_ms):
        self.writer = writer
        self.service = service
        self.secrets = tuple(secrets)
        self.clock = clock
        self._hour = 0
        self._seen: set[tuple[str, str]] = set()

    def record(self, level: str, message: str) -> None:
        ts = self.clock()
        hour = hour_floor(ts)
        if hour != self._hour:
            self._hour, self._seen = hour, set()
        message = redact(message, self.secrets, limit=500)
        key = (level, message)
        if key not in self._seen:
            if len(self._seen) >= self.MAX_DISTINCT_PER_HOUR:
                message = "(more distinct messages this hour than kept; see journalctl)"
                key = (level, message)
            self._seen.add(key)
        self.writer.put(self.SQL, (ts, ts, hour, self.service, level, message), block=False)
