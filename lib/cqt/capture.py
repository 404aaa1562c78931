"""Capture files: every received WebSocket frame and REST answer, one JSON object a line.

Format (shared with `bin/cqt-sim --replay` and `bin/cqt replay`):

    {"recv_ts_ms": 1700000000123, "source": "upbit" | "binance_ws", "raw": "<exact frame text>"}
    {"recv_ts_ms": …, "source": "binance_rest" | "upbit_rest" | "coinglass",
     "path": "/fapi/v1/openInterest", "params": {…}, "status": 200, "raw": "<exact body>"}

A name ending in `.gz` is written gzip-compressed. The file is rotated daily (UTC): when
the first record of a new day arrives, the current file is closed and renamed to
`<name>.<YYYY-MM-DD>` before the suffixes (`cap.jsonl.gz` -> `cap.2026-11-24.jsonl.gz`,
the day its records came from) and a new `<name>` is started. A restart appends to
`<name>` (gzip: a new member, which every gzip reader handles) unless it is from an
earlier day, which is rotated first.

The path passes the output guard first (`cqt.outputs`, `OutputRefused`): an existing
file is appended to only if it is a capture; a database, its side files or a device never.

Request headers are never written (the Coinglass key travels in a header), and values
listed in `secrets` are masked wherever they appear. A binary frame that is not UTF-8
is written with `raw` decoded leniently plus `raw_b64` holding the exact bytes.

Every record reaches the file at most about a second after it was written (`FLUSH_EVERY_S`):
a busy capture is flushed by the writes themselves, an idle one (e.g. during a 418 ban) by
the writer's own flusher thread. So a `kill -9` loses at most about a second of capture;
the reader tolerates the truncated tail such a kill leaves.
"""
from __future__ import annotations

import base64
import gzip
import logging
import os
import threading
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import orjson

from .outputs import guard_output, is_capture_record
from .timeutil import now_ms

log = logging.getLogger("cqt.capture")

WS_SOURCES = ("upbit", "binance_ws")
REST_SOURCES = ("binance_rest", "upbit_rest", "coinglass")
FLUSH_EVERY_S = 1.0


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d")


def rotated_name(path: Path, day: str) -> Path:
    """`cap.jsonl.gz`, '2026-11-24' -> `cap.2026-11-24.jsonl.gz`."""
    name = path.name
    stem, dot, rest = name.partition(".")
    new = f"{stem}.{day}.{rest}" if dot else f"{name}.{day}"
    return path.with_name(new)


class CaptureWriter:
    """Append records to a capture file from any thread (one lock)."""

    def __init__(self, path: str | os.PathLike, *, secrets: tuple[str, ...] = (),
                 wall_ms: Callable[[], int] = now_ms, rotate: bool = True, compresslevel: int = 6,
                 db_path: str | os.PathLike | None = None):
        # Before anything is opened: never a database, a device or someone else's file (OutputRefused).
        self.path = guard_output(path, "capture", db_path=db_path)
        self.gz = self.path.name.endswith(".gz")
        self.secrets = tuple(s for s in secrets if s)
        self.wall_ms = wall_ms
        self.rotate = rotate
        self.compresslevel = compresslevel
        self._lock = threading.Lock()
        self._fh: Any = None
        self._day: str | None = None
        self._last_flush = time.monotonic()
        self._dirty = False                  # written since the last flush
        self._closed = False
        self._wake = threading.Event()       # set when a write left data unflushed
        self._stop = threading.Event()
        self.records = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rotate_stale()
        self._flusher = threading.Thread(target=self._flush_loop, name=f"capture-flush:{self.path.name}",
                                         daemon=True)
        self._flusher.start()

    # -- records ------------------------------------------------------------------------
    def ws(self, source: str, raw: str | bytes, recv_ts_ms: int) -> None:
        rec: dict[str, Any] = {"recv_ts_ms": recv_ts_ms, "source": source}
        self._put_raw(rec, raw)
        self._write(rec, recv_ts_ms)

    def rest(self, source: str, path: str, params: Mapping[str, Any] | None, status: int | None,
             raw: str | bytes, recv_ts_ms: int) -> None:
        rec: dict[str, Any] = {"recv_ts_ms": recv_ts_ms, "source": source, "path": path,
                               "params": {str(k): _plain(v) for k, v in (params or {}).items()},
                               "status": status}
        self._put_raw(rec, raw)
        self._write(rec, recv_ts_ms)

    def _put_raw(self, rec: dict, raw: str | bytes) -> None:
        if isinstance(raw, (bytes, bytearray, memoryview)):
            b = bytes(raw)
            try:
                rec["raw"] = b.decode("utf-8")
            except UnicodeDecodeError:
                rec["raw"] = b.decode("utf-8", "replace")
                rec["raw_b64"] = base64.b64encode(b).decode("ascii")
        else:
            rec["raw"] = raw

    def _write(self, rec: dict, ts_ms: int) -> None:
        try:
            line = orjson.dumps(rec)
        except TypeError:  # lone surrogates etc.: keep the record, lose exactness
            rec["raw"] = str(rec.get("raw", "")).encode("utf-8", "replace").decode("utf-8")
            line = orjson.dumps(rec, default=str)
        if self.secrets:
            text = line.decode("utf-8")
            for s in self.secrets:
                text = text.replace(s, "***")
            line = text.encode("utf-8")
        with self._lock:
            if self._closed:                 # written again after close(): reopen, flusher too
                self._closed = False
                self._stop.clear()
                self._flusher = threading.Thread(target=self._flush_loop, name=self._flusher.name, daemon=True)
                self._flusher.start()
            day = _day(ts_ms)
            if self._fh is None:
                self._open(day)
            elif self.rotate and day != self._day and day > (self._day or ""):
                self._close_locked()
                self._rotate_file(self._day)
                self._open(day)
            self._fh.write(line + b"\n")
            self.records += 1
            if time.monotonic() - self._last_flush >= FLUSH_EVERY_S:
                self._flush_locked()
            elif not self._dirty:
                self._dirty = True
                self._wake.set()

    def _flush_loop(self) -> None:
        """Flush data a write left behind at most FLUSH_EVERY_S after the previous flush,
        even when no further record arrives."""
        while True:
            self._wake.wait()
            with self._lock:
                if self._closed:
                    return
                self._wake.clear()
                delay = self._last_flush + FLUSH_EVERY_S - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return                       # closing: close() flushes
            with self._lock:
                if self._dirty and not self._closed:
                    self._flush_locked()

    # -- file handling ----------------------------------------------------------------------
    def _open(self, day: str) -> None:
        raw = open(self.path, "ab")
        self._fh = gzip.GzipFile(fileobj=raw, mode="ab", compresslevel=self.compresslevel) if self.gz else raw
        self._raw = raw
        self._day = day

    def _rotate_stale(self) -> None:
        """An existing capture from an earlier day is rotated before appending."""
        if not self.rotate or not self.path.exists() or self.path.stat().st_size == 0:
            return
        file_day = _day(int(self.path.stat().st_mtime * 1000))
        if file_day < _day(self.wall_ms()):
            self._rotate_file(file_day)

    def _rotate_file(self, day: str | None) -> None:
        if day is None or not self.path.exists():
            return
        target = rotated_name(self.path, day)
        n = 1
        while target.exists():
            target = rotated_name(self.path, f"{day}-{n}")
            n += 1
        os.replace(self.path, target)
        log.info("capture rotated to %s", target)

    def _flush_locked(self) -> None:
        self._dirty = False
        self._last_flush = time.monotonic()
        if self._fh is None:
            return
        try:
            if self.gz:
                self._fh.flush(zlib.Z_SYNC_FLUSH)
            self._raw.flush()
        except (OSError, ValueError) as exc:
            log.warning("capture flush failed: %s", exc)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _close_locked(self) -> None:
        if self._fh is None:
            return
        try:
            self._fh.close()
            if self.gz:
                self._raw.close()
        except OSError as exc:
            log.warning("capture close failed: %s", exc)
        self._fh = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._close_locked()
        self._stop.set()
        self._wake.set()
        if self._flusher is not threading.current_thread():
            self._flusher.join(timeout=2)


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return str(v)


# ------------------------------------------------------------------------------ reading
class CaptureLineError(Exception):
    def __init__(self, lineno: int, reason: str, line: bytes):
        super().__init__(f"line {lineno}: {reason}")
        self.lineno = lineno
        self.reason = reason
        self.line = line


def _gzip_chunks(fh, path) -> Iterator[bytes]:
    """Decompressed data of a (possibly multi-member, possibly cut) gzip file. A kill -9
    leaves a member without its trailer and maybe a torn tail: everything decodable
    before that point is returned, then the iteration ends with a warning."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    while True:
        chunk = fh.read(1 << 16)
        if not chunk:
            tail = d.flush()
            if tail:
                yield tail
            return
        while chunk:
            saved = d.copy()
            try:
                out = d.decompress(chunk)
            except zlib.error:
                # salvage what precedes the damage, in small pieces, then stop
                d = saved
                yield from _salvage(d, chunk)
                log.warning("capture %s: damaged compressed data ignored after this point", path)
                return
            if out:
                yield out
            if d.eof:                       # next gzip member (a restart appended one)
                chunk = d.unused_data
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
            else:
                chunk = b""


def _salvage(d, chunk: bytes, step: int = 256) -> Iterator[bytes]:
    """Feed `chunk` in pieces of `step` (then 1) bytes until the damage; yield the output."""
    for i in range(0, len(chunk), step):
        piece = chunk[i:i + step]
        saved = d.copy()
        try:
            out = d.decompress(piece)
        except zlib.error:
            if step > 1:
                yield from _salvage(saved, piece, 1)
            return
        if out:
            yield out
        if d.eof:
            return


def iter_lines(path: str | os.PathLike) -> Iterator[bytes]:
    """Raw lines of a capture (gzip detected by its magic bytes). A truncated gzip tail
    (the writer was killed) ends the iteration quietly after the last complete line."""
    path = Path(path)
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        chunks = _gzip_chunks(fh, path) if gz else iter(lambda: fh.read(1 << 20), b"")
        pending = b""
        for chunk in chunks:
            pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop()
            yield from lines
        if pending.strip():
            yield pending  # last line without newline: maybe cut by a kill; the parser decides


def parse_line(line: bytes, lineno: int = 0) -> dict:
    """One capture line -> record dict (raw_b64 turned back into bytes); raises CaptureLineError."""
    try:
        rec = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise CaptureLineError(lineno, "capture line is not JSON", line) from None
    if not is_capture_record(rec):
        raise CaptureLineError(lineno, "capture line lacks recv_ts_ms/source/raw", line)
    b64 = rec.get("raw_b64")
    if b64:
        if not isinstance(b64, str):
            raise CaptureLineError(lineno, "capture line's raw_b64 is not a string", line)
        try:
            rec["raw"] = base64.b64decode(b64)
        except ValueError:
            pass
    return rec


def iter_capture(path: str | os.PathLike,
                 on_error: Callable[[CaptureLineError], None] | None = None) -> Iterator[dict]:
    """Records of a capture as dicts with at least recv_ts_ms, source, raw (str or bytes).

    Lines that are not a valid record are passed to `on_error` (or skipped with a warning).
    """
    for lineno, line in enumerate(iter_lines(path), 1):
        if not line.strip():
            continue
        try:
            yield parse_line(line, lineno)
        except CaptureLineError as err:
            if on_error is not None:
                on_error(err)
            else:
                log.warning("capture %s", err)
