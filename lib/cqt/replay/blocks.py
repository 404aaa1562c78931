"""Replaying one file: forked parser processes take blocks of it round-robin (byte ranges of
a plain capture, line blocks of a gzip one) and take turns writing them, in exact file order."""
from __future__ import annotations

import gc
import logging
import os
import sqlite3
import time

from ..capture import iter_lines
from ..db import connect, is_busy
from .processor import RecordProcessor, ReplayStats

log = logging.getLogger("cqt.replay")

BLOCK_BYTES = 1 << 20  # a parser process's unit of work in a plain capture (gzip: BLOCK_LINES)
BLOCK_LINES = 4_000
# The parsers' writers never checkpoint (wal_autocheckpoint=0): their writes are the one serial
# chain of a replay, and a checkpoint in it (a copy of the WAL into the database and two syncs)
# stalls every parser. This process, otherwise idle, runs a PASSIVE checkpoint (it never blocks
# a writer) every CHECKPOINT_EVERY_S instead, so the WAL stays about that many seconds of writes.
CHECKPOINT_EVERY_S = 0.25


def apply(writer, rejects, kind: str, payload) -> None:
    if kind == "rows":
        for sql, params, nrows in payload:
            writer.put_many(sql, params, nrows=nrows)
    elif kind == "put":
        writer.put(*payload)
    elif kind == "reject":
        source, reason, raw, ts = payload
        rejects.record(source, reason, raw, ts)


def _is_gzip(path: str) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def _byte_block(fd: int, start: int, size: int) -> list[bytes]:
    """Lines that START in [start, start + size) of a plain capture (the last one read to
    its end). Blocks tile the file, so every line falls in exactly one block. One read of
    the block (and of the last line's rest), one split: no copy of the block in between."""
    if start:
        data = os.pread(fd, size + 1, start - 1)    # from the byte before: is `start` a line start?
        cut = data.find(b"\n")
        if cut < 0 or cut >= size:                  # no line starts in this block
            return []
    else:
        data = os.pread(fd, size, 0)
    lines = data.split(b"\n")
    if start:
        del lines[0]                                # the end of the previous block's last line
    if data and not data.endswith(b"\n"):
        rest = [lines[-1]]                          # the last line goes on past the block
        pos = start - (1 if start else 0) + len(data)
        while True:
            more = os.pread(fd, 1 << 16, pos)
            if not more:
                break
            pos += len(more)
            nl = more.find(b"\n")
            if nl >= 0:
                rest.append(more[:nl])
                break
            rest.append(more)
        lines[-1] = b"".join(rest)
    elif lines and not lines[-1]:
        lines.pop()
    return lines


def _blocks(path: str, index: int, nproc: int, nblocks: int):
    """(block number, lines) of parser `index`'s own blocks: b % nproc == index."""
    if nblocks >= 0:                       # plain file: byte ranges, read only one's own
        fd = os.open(path, os.O_RDONLY)
        try:
            for b in range(index, nblocks, nproc):
                yield b, _byte_block(fd, b * BLOCK_BYTES, BLOCK_BYTES)
        finally:
            os.close(fd)
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


class _Parser:
    """One parser process's side of the ring: parse a block, wait for its turn, write the
    block's rows through this process's own BatchWriter, pass the turn on."""

    def __init__(self, db_path: str, secrets: tuple[str, ...], turn_in, turn_out, results, opener=None):
        from ..writer import BatchWriter
        self.turn_in, self.turn_out, self.results = turn_in, turn_out, results
        self.stats = ReplayStats()
        self.rows: list = []
        self.side: list = []
        self.proc = RecordProcessor(self._emit, self.stats, secrets)
        # The parent opened (and migrated) the database; this writer only inserts.
        self.writer = BatchWriter(db_path, service="cqt-replay", migrate_schema=False, max_rows=1 << 30,
                                  max_delay_s=60.0, queue_max=1024, secrets=secrets,
                                  wal_autocheckpoint=None if opener else 0, opener=opener,
                                  max_queued_rows=None)     # a block at a time, then a flush

    def _emit(self, kind: str, payload) -> None:
        if kind == "rows":
            self.rows.append(payload)
        else:                           # rejects, Coinglass call status: the parent writes them, in order
            self.side.append((kind, payload))

    def block(self, b: int, lines: list[bytes]) -> bool:
        """Parse and store block `b`; False when the storage failed (the parent is told)."""
        self.proc.lines(lines)
        self.proc.flush()
        turn = self.turn_in.recv()      # every block before b is committed
        if turn != b:
            raise RuntimeError(f"turn {turn} arrived where block {b} was due")
        writer = self.writer
        for items in self.rows:
            for sql, params, nrows in items:
                writer.put_many(sql, params, nrows=nrows)
        writer.flush(timeout=None)      # one transaction for the block; busy is retried forever
        if writer.fatal is not None:
            self.results.send(("fatal", b, f"{type(writer.fatal).__name__}: {writer.fatal}"))
            return False
        self.results.send(("block", b, self.side))
        try:
            self.turn_out.send(b + 1)
        except OSError:                 # the next parser has finished: it had no block after b
            pass
        self.rows, self.side = [], []
        return True

    def done(self) -> None:
        self.writer.close(timeout=600)
        w = self.writer
        self.results.send(("done", 0, {"stats": self.stats.as_dict(), "dropped_rows": w.dropped_rows,
                                       "failure": f"{type(w.failure).__name__}: {w.failure}" if w.failure else None,
                                       "fatal": f"{type(w.fatal).__name__}: {w.fatal}" if w.fatal else None}))


def _child(path: str, db_path: str, index: int, nproc: int, nblocks: int, secrets: tuple[str, ...],
           turn_in, turn_out, results, opener=None) -> None:
    """Parser process `index` of `nproc`: its own blocks (b % nproc == index), in order, each
    written in its turn; sends ("block", b, rejects and single rows) for each, then ("done",
    0, summary), or ("fatal" | "error", b, text). `nblocks` < 0: a gzip capture (line blocks)."""
    # This process's objects are few and live briefly (a block's rows, freed once written): a
    # collection every 100 000 allocations, not 700, keeps it from walking every row tuple.
    gc.set_threshold(100_000, 10, 10)
    try:
        parser = _Parser(db_path, secrets, turn_in, turn_out, results, opener)
        for b, lines in _blocks(path, index, nproc, nblocks):
            if not parser.block(b, lines):
                return
        parser.done()
    except BaseException as exc:  # noqa: BLE001 - report to the parent, which exits non-zero
        try:
            results.send(("error", 0, f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
    finally:
        results.close()


def replay_file(path: str, writer, rejects, *, processes: int = 2, opener=None) -> ReplayStats:
    """Replay one capture into `writer`'s database; rejects into `rejects` (a RejectLog).

    With `processes` >= 1, forked parser processes take blocks of the file round-robin (byte
    ranges of a plain capture, so each reads only its own; line blocks of a gzip one). Each
    parses its next block while the others work, then, in its turn, stores that block's rows
    through its own BatchWriter in one transaction and hands the turn on: rows are committed
    in exact file order, and no row crosses a process boundary. Rejects and single rows
    (Coinglass call status) come back to this process, which writes them, in file order,
    through `writer` and `rejects` (so the RejectLog's keep-per-hour rule sees them in order).
    `processes=0` does everything in-process through `writer`. `opener(path)`: how the
    parsers connect to `writer`'s database (None: like every cqt writer, in WAL; the parsers
    then leave the checkpoints to this process, see CHECKPOINT_EVERY_S).

    A storage failure in a parser raises RuntimeError (the command exits 74); a row the
    database refused is in `stats.write_failure` (the rest is stored; exit 1)."""
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
    writer.flush()                          # nothing of ours in flight while forking
    nblocks = -1 if _is_gzip(path) else -(-os.path.getsize(path) // BLOCK_BYTES)
    ctx = mp.get_context("fork")
    turns = [ctx.Pipe(duplex=False) for _ in range(processes)]    # turns[i]: (parser i reads, i-1 writes)
    turns[0][1].send(0)                     # block 0 may be written at once
    results, procs = [], []
    for i in range(processes):
        r, w = ctx.Pipe(duplex=False)
        pr = ctx.Process(target=_child, name=f"replay-parser-{i}", daemon=True,
                         args=(path, str(writer.path), i, processes, nblocks, secrets,
                               turns[i][0], turns[(i + 1) % processes][1], w, opener))
        pr.start()
        w.close()
        results.append(r)
        procs.append(pr)
    for t_in, t_out in turns:
        t_in.close()
        t_out.close()
    ckpt = connect(writer.path) if opener is None else None
    try:
        _collect(results, procs, writer, rejects, stats, nblocks,
                 (lambda: _checkpoint(ckpt)) if ckpt is not None else (lambda: None))
        for pr in procs:
            pr.join(5)
    finally:
        for pr in procs:
            if pr.is_alive():
                pr.kill()
        for conn in results:
            conn.close()
        if ckpt is not None:
            ckpt.close()
    stats.seconds = time.monotonic() - t0
    return stats


def _checkpoint(conn) -> None:
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:      # busy, or storage: the parsers' writers report storage faults
        if not is_busy(exc):
            log.warning("wal checkpoint failed: %s", exc)


def _collect(results, procs, writer, rejects, stats: ReplayStats, nblocks: int, checkpoint) -> None:
    """The parent's loop: every parser's messages; each block's rejects and single rows
    written in block order; a WAL checkpoint every CHECKPOINT_EVERY_S; the parsers'
    summaries merged. Raises RuntimeError when a parser fails or ends early."""
    from multiprocessing.connection import wait
    pending: dict[int, list] = {}
    due = 0
    live = dict(enumerate(results))
    next_ckpt = time.monotonic() + CHECKPOINT_EVERY_S
    while live:
        ready = wait(list(live.values()) + [procs[i].sentinel for i in live], timeout=CHECKPOINT_EVERY_S)
        if time.monotonic() >= next_ckpt:
            checkpoint()
            next_ckpt = time.monotonic() + CHECKPOINT_EVERY_S
        for i, conn in list(live.items()):
            if conn not in ready and procs[i].sentinel not in ready:
                continue
            if not conn.poll():
                if procs[i].exitcode is not None:
                    raise RuntimeError("a parser process ended without finishing")
                continue
            try:
                kind, b, payload = conn.recv()
            except EOFError:
                raise RuntimeError("a parser process ended without finishing") from None
            if kind == "error":
                raise RuntimeError(payload)
            if kind == "fatal":
                raise RuntimeError(f"database write failed: {payload}")
            if kind == "block":
                pending[b] = payload
                while due in pending:
                    for k, p in pending.pop(due):
                        apply(writer, rejects, k, p)
                    due += 1
            elif kind == "done":
                _merge(stats, payload)
                del live[i]
    if pending or (nblocks >= 0 and due != nblocks):
        raise RuntimeError(f"blocks missing: {due} of {nblocks if nblocks >= 0 else 'all'} written")


def _merge(stats: ReplayStats, summary: dict) -> None:
    d = summary["stats"]
    for k in ReplayStats.COUNTS:
        setattr(stats, k, getattr(stats, k) + d.get(k, 0))
    stats.dropped_rows += summary["dropped_rows"]
    if summary["fatal"]:
        raise RuntimeError(f"database write failed: {summary['fatal']}")
    if summary["failure"] and stats.write_failure is None:
        stats.write_failure = summary["failure"]
