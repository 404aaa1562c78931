"""`bin/cqt replay FILE [--db PATH]`: push a capture through the live parsers and writer.

Every WebSocket frame goes through the same parser as live (`parse_ws_frame`), every
recorded REST answer with status 200 through the matching REST parser
(`parse_rest_body`: aggTrades, Upbit ticks, the pollers' endpoints, Coinglass), and
the rows through the same `BatchWriter` with the same idempotent statements — as fast
as the machine allows. "Now" for every sanity rule is the record's `recv_ts_ms`, so an
old capture replays cleanly; symbols and codes are taken as they come.

Binance aggTrade lines (most of a busy capture) take a fast path that yields exactly the
row the full path would (`cqt.venues.binance.parse.agg_trade_capture_row`); any line it
declines goes through the full path, so rejects are the same too. Revisable rows
(binance_ratios, Coinglass bars) are written with the pollers' revise-only upsert
(`Parsed.sql` = `store_sql`), so a re-fetched unchanged answer keeps its first recv_ts_ms.

A line that is not a well-formed record (not UTF-8, not JSON, not an object, a missing
or mistyped field, `raw` that is not a string, a cut last line) is a reject in the
`capture` source with a reason naming the fault; a parser that fails on a record in an
unexpected way makes it a `parser_error` reject. Either way the lines around it are
stored and the replay goes on. Text kept for a reject is masked before it is cut.

Differences from the live path, by design: bookTicker frames are not thinned (a capture
keeps every frame, and so does its replay); no gaps are detected or backfilled (there is
no network); Coinglass answers also get their `coinglass_call_status` row, with
`latency_ms` NULL (not recorded in captures).
"""
from __future__ import annotations

import itertools
import logging
import os
import sys
import time
from typing import Any, Callable

import base64
import binascii

import orjson

from .capture import iter_lines
from .redact import redact
from .options import db_option, json_option
from .stream import rows_per_statement
from .timeutil import MAX_TIME_MS, MIN_TIME_MS
from .venues.binance.parse import agg_trade_capture_row
from .venues.common import UPSERT_TABLES, Reject, insert_sql
from .venues.registry import REST_SOURCES, WS_SOURCES, parse_rest_body, venue_of

import click

log = logging.getLogger("cqt.replay")

CHUNK_ROWS = 20_000
PACK_ROWS = 2_000      # rows per multi-row INSERT here (live: 256); 20 000 parameters < SQLite's 32 766
BLOCK_BYTES = 1 << 20  # a parser process's unit of work in a plain capture (gzip: BLOCK_LINES)
BLOCK_LINES = 4_000
AGG_SQL = insert_sql("binance_agg_trades")
REJECT_TEXT = 4096      # characters of a bad line kept in `rejects` (masked first)
CALL_STATUS_SQL = ("INSERT INTO coinglass_call_status (ts_ms, endpoint, http_status, ok, latency_ms, rows, error) "
                   "VALUES (?, ?, ?, ?, NULL, ?, ?)")


def _pack(sql: str, rows: list) -> list[tuple[str, list]]:
    """Rows of one `INSERT OR IGNORE … VALUES (?,…)` -> multi-row statements: PACK_ROWS
    rows each, the rest in packs of 1024, 512 … rows (few statement shapes, so they stay
    in the statement cache). Same rows, same order; upserts pass through unchanged.
    (Not `cqt.stream.pack_rows`: its statement cache is keyed by the SQL alone, so it
    only serves one pack size per process.)"""
    if len(rows) < 2 or not sql.startswith("INSERT OR IGNORE") or " ON CONFLICT" in sql:
        return [(sql, rows)]
    out = []
    chain = itertools.chain.from_iterable
    i, n, k = 0, len(rows), PACK_ROWS
    while k >= 2:
        full = (n - i) // k * k
        if full:
            stmt = _multi(sql, k)
            out.append((stmt, [tuple(chain(rows[j:j + k])) for j in range(i, i + full, k)]))
            i += full
        k = 1024 if k > 1024 else k // 2
    if i < n:
        out.append((sql, rows[i:]))
    return out


_MULTI: dict[tuple[str, int], str] = {}


def _multi(sql: str, k: int) -> str:
    stmt = _MULTI.get((sql, k))
    if stmt is None:
        head, _, values = sql.partition(" VALUES ")
        stmt = _MULTI[(sql, k)] = f"{head} VALUES {','.join([values] * k)}"
    return stmt


class ReplayStats:
    __slots__ = ("records", "frames", "rest", "rows", "rejects", "skipped", "bad_lines", "seconds")

    def __init__(self):
        self.records = self.frames = self.rest = self.rows = self.rejects = self.skipped = self.bad_lines = 0
        self.seconds = 0.0

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__slots__}
        d["seconds"] = round(self.seconds, 3)
        d["records_per_s"] = int(self.records / self.seconds) if self.seconds > 0 else None
        return d


UPSERT_ORDERED = UPSERT_TABLES     # upserts: later answers must win, so file order is kept


class BadRecord(Exception):
    """A capture line that is not a replayable record; `reason` says why."""

    def __init__(self, reason: str, recv_ts_ms: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.recv_ts_ms = recv_ts_ms


def _kind(v) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a fractional number", str: "a string", list: "a list",
            dict: "an object"}.get(type(v), type(v).__name__)


def read_record(line: bytes) -> dict:
    """One capture line -> a record whose every field has the type the replay relies on:
    recv_ts_ms an int in [2009, 2100), source a str, raw a str (or the bytes of raw_b64),
    and for REST records path a str, status an int or null, params an object or null.
    Raises BadRecord otherwise; never anything else."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            raise BadRecord("capture line is not UTF-8") from None
        raise BadRecord("capture line is not JSON (cut or damaged)") from None
    if type(rec) is not dict:
        raise BadRecord(f"capture line is {_kind(rec)}, not a record object")
    ts = rec.get("recv_ts_ms")
    if type(ts) is not int:
        raise BadRecord("capture record lacks recv_ts_ms" if ts is None else
                        f"capture record: recv_ts_ms is {_kind(ts)}, not an integer")
    if not MIN_TIME_MS <= ts < MAX_TIME_MS:
        raise BadRecord("capture record: recv_ts_ms outside 2009-01-01..2100-01-01")
    src = rec.get("source")
    if type(src) is not str:
        raise BadRecord("capture record lacks source" if src is None else
                        f"capture record: source is {_kind(src)}, not a string", ts)
    if "raw" not in rec:
        raise BadRecord("capture record lacks raw", ts)
    b64 = rec.get("raw_b64")
    if b64:
        if type(b64) is not str:
            raise BadRecord(f"capture record: raw_b64 is {_kind(b64)}, not a string", ts)
        try:
            rec["raw"] = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise BadRecord("capture record: raw_b64 is not base64", ts) from None
    elif type(rec["raw"]) is not str:
        raise BadRecord(f"capture record: raw is {_kind(rec['raw'])}, not a string", ts)
    if src in REST_SOURCES:
        if type(rec.get("path")) is not str:
            raise BadRecord(f"capture record: path is {_kind(rec.get('path'))}, not a string", ts)
        status = rec.get("status")
        if status is not None and type(status) is not int:
            raise BadRecord(f"capture record: status is {_kind(status)}, not an integer", ts)
        params = rec.get("params")
        if params is not None and type(params) is not dict:
            raise BadRecord(f"capture record: params is {_kind(params)}, not an object", ts)
    return rec


class RecordProcessor:
    """Parse capture lines; `emit(kind, payload)` gets, in file order:
    ("rows", [(sql, params), …]) packed inserts, ("put", (sql, params)) one row,
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
        frames, most of a busy capture, take the fast path (`agg_trade_capture_row`: the
        row the full path would store, without its per-frame objects); everything else,
        and every aggTrade line that path declines (malformed, a reject …), the full one."""
        fast = agg_trade_capture_row
        stats = self.stats
        agg = self.buf.get(AGG_SQL)
        if agg is None:
            agg = self.buf[AGG_SQL] = []
        n0 = len(agg)
        lo, hi = MIN_TIME_MS, MAX_TIME_MS
        for i, line in enumerate(lines, lineno + 1):
            try:
                row = fast(line)
            except Exception:  # noqa: BLE001 - the full path names whatever is wrong with the line
                row = None
            if row is not None and lo <= row[-1] < hi:       # row[-1]: recv_ts_ms, as read_record checks
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
        if self.nbuf >= CHUNK_ROWS:
            self.flush()

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
            self.emit("rows", [(sql, rows)])
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
        cg = src == "coinglass"
        if status != 200:
            if cg:
                self._call_status(ts, path, status, 0, 0, f"http {status}")
            return None
        try:
            p = parse_rest_body(src, path, rec.get("params"), raw, ts)
        except Reject as r:
            if cg:
                self._call_status(ts, path, status, 0, 0, r.reason)
            raise
        if cg:
            self._call_status(ts, path, status, 1, len(p.rows) if p else 0, None)
        return p

    def _call_status(self, *row) -> None:
        self.flush()                   # keep call-status rows in file order with the data
        self.emit("put", (CALL_STATUS_SQL, row))


def apply(writer, rejects, kind: str, payload) -> None:
    if kind == "rows":
        for sql, params in payload:
            writer.put_many(sql, params, nrows=len(params) * rows_per_statement(sql))
    elif kind == "put":
        writer.put(*payload)
    elif kind == "reject":
        source, reason, raw, ts = payload
        rejects.record(source, reason, raw, ts)


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _byte_block(fh, start: int, size: int) -> list[bytes]:
    """Lines that START in [start, start + size) of a plain capture (the last one read to
    its end). Blocks tile the file, so every line falls in exactly one block."""
    if start:
        fh.seek(start - 1)
        data = fh.read(size + 1)
        if data[:1] == b"\n":
            data = data[1:]
        else:
            cut = data.find(b"\n")
            if cut < 0 or cut >= size:      # no line starts in this block
                return []
            data = data[cut + 1:]
    else:
        fh.seek(0)
        data = fh.read(size)
    if data and not data.endswith(b"\n"):
        rest = [data]
        while True:
            more = fh.read(1 << 16)
            if not more:
                break
            nl = more.find(b"\n")
            if nl >= 0:
                rest.append(more[:nl + 1])
                break
            rest.append(more)
        data = b"".join(rest)
    lines = data.split(b"\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines


def _blocks(path: str, index: int, nproc: int, nblocks: int):
    """(block number, lines) of parser `index`'s own blocks: b % nproc == index."""
    if nblocks >= 0:                       # plain file: byte ranges, read only one's own
        with open(path, "rb") as fh:
            for b in range(index, nblocks, nproc):
                yield b, _byte_block(fh, b * BLOCK_BYTES, BLOCK_BYTES)
        return
    buf: list[bytes] = []                  # gzip: every parser decompresses, keeps its own
    b = 0
    for n, line in enumerate(iter_lines(path)):
        if n // BLOCK_LINES != b:
            if b % nproc == index:
                yield b, buf
            buf = []
            b = n // BLOCK_LINES
        if b % nproc == index:
            buf.append(line)
    if b % nproc == index:
        yield b, buf


def _child(path: str, conn, index: int, nproc: int, nblocks: int, secrets: tuple[str, ...] = ()) -> None:
    """Parser process `index` of `nproc`: sends ("block", b, items) for each of its own
    blocks, in order, then ("done", stats). `nblocks` < 0: a gzip capture (line blocks)."""
    stats = ReplayStats()
    out: list = []
    proc = RecordProcessor(lambda k, p: out.append((k, p)), stats, secrets)
    try:
        for b, lines in _blocks(path, index, nproc, nblocks):
            proc.lines(lines)
            proc.flush()
            conn.send(("block", b, out))
            out = []
        conn.send(("done", 0, stats.as_dict()))
    except BaseException as exc:  # noqa: BLE001 - report to the parent, which exits non-zero
        try:
            conn.send(("error", 0, f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        conn.close()


def replay_file(path: str, writer, rejects, *, processes: int = 2) -> ReplayStats:
    """Replay one capture into `writer` (a BatchWriter); rejects into `rejects` (a RejectLog).

    With `processes` >= 1, forked children parse blocks of the file round-robin (byte
    ranges of a plain capture, so each reads only its own; line blocks of a gzip one)
    while this process only writes, in exact file order (the GIL would otherwise
    serialise parsing with the writer thread's inserts). `processes=0` does everything
    in-process."""
    t0 = time.monotonic()
    stats = ReplayStats()
    secrets = tuple(getattr(rejects, "secrets", ()) or ())
    if processes <= 0:
        proc = RecordProcessor(lambda k, p: apply(writer, rejects, k, p), stats, secrets)
        buf: list[bytes] = []
        for line in iter_lines(path):
            buf.append(line)
            if len(buf) >= BLOCK_LINES:
                proc.lines(buf)
                buf = []
        proc.lines(buf)
        proc.flush()
        stats.seconds = time.monotonic() - t0
        return stats
    import multiprocessing as mp
    nblocks = -1 if _is_gzip(path) else -(-os.path.getsize(path) // BLOCK_BYTES)
    ctx = mp.get_context("fork")
    pipes, procs = [], []
    for i in range(processes):
        r, w = ctx.Pipe(duplex=False)
        pr = ctx.Process(target=_child, args=(path, w, i, processes, nblocks, secrets), name=f"replay-parser-{i}",
                         daemon=True)
        pr.start()
        w.close()
        pipes.append(r)
        procs.append(pr)
    try:
        b = 0
        done: set[int] = set()
        while len(done) < processes:     # blocks in file order; a parser says "done" after its last
            i = b % processes
            kind, bn, payload = _recv(pipes[i])
            if kind == "error":
                raise RuntimeError(payload)
            if kind == "done":
                _merge(stats, payload)
                done.add(i)
                if nblocks >= 0 and b < nblocks:
                    raise RuntimeError(f"parser {i} ended before block {b}")
                for j in range(processes):   # every later block's parser must be done too
                    if j not in done:
                        kind, _, payload = _recv(pipes[j])
                        if kind == "error":
                            raise RuntimeError(payload)
                        if kind != "done":
                            raise RuntimeError(f"parser {j} sent block {_} after the end")
                        _merge(stats, payload)
                        done.add(j)
                break
            if bn != b:
                raise RuntimeError(f"block {bn} arrived where block {b} was due")
            for k, p in payload:
                apply(writer, rejects, k, p)
            b += 1
        for pr in procs:
            pr.join(5)
    finally:
        for pr in procs:
            if pr.is_alive():
                pr.kill()
        for conn in pipes:
            conn.close()
    stats.seconds = time.monotonic() - t0
    return stats


def _recv(conn):
    try:
        return conn.recv()
    except EOFError:
        raise RuntimeError("a parser process ended without finishing") from None


def _merge(stats: ReplayStats, d: dict) -> None:
    for k in ("records", "frames", "rest", "rows", "rejects", "skipped", "bad_lines"):
        setattr(stats, k, getattr(stats, k) + d.get(k, 0))


@click.command("replay", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@db_option(help="SQLite database to write (default: CQT_DB).")
@json_option(help="Print the summary as JSON.")
@click.option("--processes", type=click.IntRange(0, 16), default=2, show_default=True,
              help="Parser processes (0 = parse in this process; file order is kept either way).")
def replay(file: str, db: str | None, as_json: bool, processes: int) -> None:
    """Push a capture FILE (JSON Lines, .gz too) through the parsers into the database.

    Same parsers, statements and writer as the live collectors; "now" for every sanity
    rule is each record's recv_ts_ms. Exit 0 when the file was replayed (rejects are
    counted in the summary and stored in `rejects`), 74 when the database cannot be written.
    """
    import json

    from . import exitcodes
    from .db import SchemaTooNew
    from .sinks import RejectLog
    from .writer import BatchWriter
    from .runtime import load_settings_or_exit, setup_logging

    settings = load_settings_or_exit(db=db)
    setup_logging("cqt-replay", settings.log_level, settings.secrets)
    try:
        writer = BatchWriter(settings.db, service="cqt-replay", max_rows=CHUNK_ROWS * 2, max_delay_s=0.5,
                             queue_max=64)
    except SchemaTooNew as exc:
        print(f"cqt replay: {exc}", file=sys.stderr)
        sys.exit(exitcodes.CONFIG)
    except Exception as exc:  # noqa: BLE001 - unwritable path, not a database …
        print(f"cqt replay: cannot open database {settings.db}: {exc}", file=sys.stderr)
        sys.exit(exitcodes.IOERR)
    rejects = RejectLog(writer, secrets=settings.secrets)
    t0 = time.monotonic()
    try:
        stats = replay_file(file, writer, rejects, processes=processes)
    except (OSError, RuntimeError) as exc:
        writer.close()
        print(f"cqt replay: cannot replay {file}: {exc}", file=sys.stderr)
        sys.exit(exitcodes.IOERR)
    ok = writer.close(timeout=600)
    stats.seconds = time.monotonic() - t0
    if writer.fatal is not None or not ok:
        print(f"cqt replay: database write failed: {writer.fatal or 'flush timed out'}", file=sys.stderr)
        sys.exit(exitcodes.IOERR)
    if writer.failure is not None:
        # A row the database refused (not a storage fault): the rest is stored, but not all.
        print(f"cqt replay: some rows could not be stored: {writer.failure}", file=sys.stderr)
        sys.exit(exitcodes.FAIL)
    d = stats.as_dict()
    if as_json:
        print(json.dumps(d))
    else:
        print(f"replayed {stats.records} records ({stats.frames} frames, {stats.rest} REST answers) into "
              f"{settings.db}: rows={stats.rows} rejects={stats.rejects} skipped={stats.skipped} "
              f"bad_lines={stats.bad_lines} seconds={d['seconds']} records_per_s={d['records_per_s']}")
    sys.exit(exitcodes.OK)
