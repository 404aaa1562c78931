"""RecordProcessor: capture lines -> packed inserts, single rows and rejects, in file order
(the aggTrade fast path, the full parsers, REST answers, Coinglass call status). Pure apart
from its `emit` callback."""
from __future__ import annotations

import itertools
from typing import Any, Callable

from ..redact import redact
from ..timeutil import MAX_TIME_MS, MIN_TIME_MS
from ..venues.binance.parse import agg_trade_capture_row
from ..venues.binance.parse_typed import typed_capture_rows
from ..venues.coinglass import call_endpoint, coin_of_params
from ..venues.common import UPSERT_TABLES, Reject, insert_sql
from ..venues.registry import REST_SOURCES, WS_SOURCES, parse_rest_body, venue_of
from .records import BadRecord, read_record

CHUNK_ROWS = 20_000
PACK_ROWS = 2_000      # rows per multi-row INSERT here (live: 256); 20 000 parameters < SQLite's 32 766
AGG_SQL = insert_sql("binance_agg_trades")
REJECT_TEXT = 4096      # characters of a bad line kept in `rejects` (masked first)
CALL_STATUS_SQL = ("INSERT INTO coinglass_call_status (ts_ms, endpoint, http_status, ok, latency_ms, rows, error) "
                   "VALUES (?, ?, ?, ?, NULL, ?, ?)")


def _pack(sql: str, rows: list) -> list[tuple[str, list, int]]:
    """Rows of one `INSERT OR IGNORE … VALUES (?,…)` -> multi-row statements: PACK_ROWS
    rows each, the rest in packs of 1024, 512 … rows (few statement shapes, so they stay
    in the statement cache). Same rows, same order; upserts pass through unchanged. Each
    item: (statement, parameter tuples, the table rows they stand for).
    (Not `cqt.stream.pack_rows`: its statement cache is keyed by the SQL alone, so it
    only serves one pack size per process.)"""
    if len(rows) < 2 or not sql.startswith("INSERT OR IGNORE") or " ON CONFLICT" in sql:
        return [(sql, rows, len(rows))]
    out = []
    chain = itertools.chain.from_iterable
    i, n, k = 0, len(rows), PACK_ROWS
    while k >= 2:
        full = (n - i) // k * k
        if full:
            stmt = _multi(sql, k)
            out.append((stmt, [tuple(chain(rows[j:j + k])) for j in range(i, i + full, k)], full))
            i += full
        k = 1024 if k > 1024 else k // 2
    if i < n:
        out.append((sql, rows[i:], n - i))
    return out


_MULTI: dict[tuple[str, int], str] = {}


def _multi(sql: str, k: int) -> str:
    stmt = _MULTI.get((sql, k))
    if stmt is None:
        head, _, values = sql.partition(" VALUES ")
        stmt = _MULTI[(sql, k)] = f"{head} VALUES {','.join([values] * k)}"
    return stmt


class ReplayStats:
    COUNTS = ("records", "frames", "rest", "rows", "rejects", "skipped", "bad_lines")
    __slots__ = COUNTS + ("seconds", "dropped_rows", "write_failure")

    def __init__(self):
        self.records = self.frames = self.rest = self.rows = self.rejects = self.skipped = self.bad_lines = 0
        self.seconds = 0.0
        self.dropped_rows = 0                  # rows a parser's writer could not store
        self.write_failure: str | None = None  # the first such error

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.COUNTS}
        d["seconds"] = round(self.seconds, 3)
        d["records_per_s"] = int(self.records / self.seconds) if self.seconds > 0 else None
        return d


UPSERT_ORDERED = UPSERT_TABLES     # upserts: later answers must win, so file order is kept


class RecordProcessor:
    """Parse capture lines; `emit(kind, payload)` gets, in file order:
    ("rows", [(sql, params, nrows), …]) packed inserts, ("put", (sql, params)) one row,
    ("reject", (source, reason, raw, ts_ms)). Pure apart from `emit`; raises nothing for
    any line (a bad one is a reject). `secrets` are masked in reject text before the cut."""

    def __init__(self, emit: Callable[[str, Any], None], stats: ReplayStats, secrets: tuple[str, ...] = ()):
        self.emit = emit
        self.stats = stats
        self.secrets = secrets
        self.ws_parsers = {s: venue_of(s).parse_frame for s in WS_SOURCES}
        self.buf: dict[str, list] = {}
        self.nbuf = 0

    def flush(self) -> None:
        if self.nbuf:
            self.emit("rows", [item for sql, rows in self.buf.items() for item in _pack(sql, rows)])
            self.stats.rows += self.nbuf
            self.buf, self.nbuf = {}, 0

    def lines(self, lines: list[bytes], lineno: int = 0) -> None:
        """Lines in file order (`lineno`: the first one's number - 1). Binance aggTrade
        frames, most of a busy capture, are decoded typed (`typed_capture_rows`: the row the
        full path would store, without its per-frame objects); a line that declines takes the
        untyped fast path (`agg_trade_capture_row`), and a line that declines too (another
        source or event, malformed, a reject …) the full one."""
        stats = self.stats
        agg = self.buf.get(AGG_SQL)
        if agg is None:
            agg = self.buf[AGG_SQL] = []
        rows, declined = typed_capture_rows(lines, MIN_TIME_MS, MAX_TIME_MS)
        if not declined:
            agg.extend(rows)
            n = len(rows)
            stats.records += n
            stats.frames += n
            self.nbuf += n
        else:
            self._mixed(lines, rows, agg, lineno)
        if self.nbuf >= CHUNK_ROWS:
            self.flush()

    def _mixed(self, lines: list[bytes], rows: list, agg: list, lineno: int) -> None:
        """A block where some lines declined the typed path: line by line, in file order."""
        fast = agg_trade_capture_row
        stats = self.stats
        n0 = len(agg)
        lo, hi = MIN_TIME_MS, MAX_TIME_MS
        for i, (line, row) in enumerate(zip(lines, rows), lineno + 1):
            if row is None:
                try:
                    row = fast(line)
                except Exception:  # noqa: BLE001 - the full path names whatever is wrong with the line
                    row = None
                if row is not None and not lo <= row[-1] < hi:   # row[-1]: recv_ts_ms, as read_record checks
                    row = None
            if row is not None:
                agg.append(row)
                continue
            k = len(agg) - n0
            if k:   # count the fast rows so far before the full path may flush the buffer
                stats.records += k
                stats.frames += k
                self.nbuf += k
            self.line(line, i)
            agg = self.buf.get(AGG_SQL)
            if agg is None:
                agg = self.buf[AGG_SQL] = []
            n0 = len(agg)
        k = len(agg) - n0
        stats.records += k
        stats.frames += k
        self.nbuf += k

    def line(self, line: bytes, lineno: int) -> None:
        if not line.strip():
            return
        try:
            rec = read_record(line)
        except BadRecord as err:
            self.stats.bad_lines += 1
            self.emit("reject", ("capture", err.reason, self._text(line), err.recv_ts_ms))
            return
        self.record(rec)

    def _text(self, raw) -> str:
        """Reject text: decoded leniently, keys masked, then cut."""
        if isinstance(raw, (bytes, bytearray)):
            raw = bytes(raw[:REJECT_TEXT * 4 + 4096]).decode("utf-8", "replace")
        elif not isinstance(raw, str):
            raw = repr(raw)
        return redact(raw, self.secrets, REJECT_TEXT)

    def record(self, rec: dict) -> None:
        stats = self.stats
        stats.records += 1
        src = rec["source"]
        raw = rec["raw"]
        ts = rec["recv_ts_ms"]
        parser = self.ws_parsers.get(src)
        try:
            if parser is not None:
                stats.frames += 1
                p = parser(raw, ts)
            elif src in REST_SOURCES:
                stats.rest += 1
                p = self._rest(rec, src, raw, ts)
                if p is None:
                    stats.skipped += 1
                    return
            else:
                stats.skipped += 1
                return
        except Reject as r:
            stats.rejects += 1
            self.emit("reject", (r.source or src, r.reason, raw, ts))
            return
        except ValueError as exc:      # e.g. a REST record whose params name an unknown period
            stats.rejects += 1
            self.emit("reject", (src, "bad_capture_record", self._text(f"{exc}: {raw}"), ts))
            return
        except Exception as exc:  # noqa: BLE001 - one odd record must not end the replay of the rest
            stats.rejects += 1
            self.emit("reject", (src, f"parser_error:{type(exc).__name__}", self._text(raw), ts))
            return
        rows = p.rows
        if not rows:
            return
        sql = p.sql
        if p.table in UPSERT_ORDERED:
            self.flush()               # upserts: later answers must win, so keep file order
            self.emit("rows", [(sql, rows, len(rows))])
            stats.rows += len(rows)
            return
        lst = self.buf.get(sql)
        if lst is None:
            self.buf[sql] = lst = []
        lst.extend(rows)
        self.nbuf += len(rows)
        if self.nbuf >= CHUNK_ROWS:
            self.flush()

    def _rest(self, rec: dict, src: str, raw, ts: int):
        status = rec.get("status")
        path = str(rec.get("path") or "")
        # a Coinglass call-status row names the coin, as the live poller writes it
        call = call_endpoint(path, coin_of_params(rec.get("params"))) if src == "coinglass" else None
        if status != 200:
            if call:
                self._call_status(ts, call, status, 0, 0, f"http {status}")
            return None
        try:
            p = parse_rest_body(src, path, rec.get("params"), raw, ts)
        except Reject as r:
            if call:
                self._call_status(ts, call, status, 0, 0, r.reason)
            raise
        if call:
            self._call_status(ts, call, status, 1, len(p.rows) if p else 0, None)
        return p

    def _call_status(self, *row) -> None:
        self.flush()                   # keep call-status rows in file order with the data
        self.emit("put", (CALL_STATUS_SQL, row))
