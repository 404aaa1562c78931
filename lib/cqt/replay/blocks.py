"""Replaying one file: forked parser processes take blocks of it round-robin (byte ranges of
a plain capture, line blocks of a gzip one) while this process writes, in exact file order."""
from __future__ import annotations

import os
import time

from ..capture import iter_lines
from ..stream import rows_per_statement
from .processor import RecordProcessor, ReplayStats

BLOCK_BYTES = 1 << 20  # a parser process's unit of work in a plain capture (gzip: BLOCK_LINES)
BLOCK_LINES = 4_000


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
