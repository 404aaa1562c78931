"""Files that cqt programs write: one check before writing, one way to write.

`guard_output(path, kind, db_path=...)` is called by every program before it writes a
file (datasets, reports, plots, captures, and later trainsets, labels, backtests, ship
manifests). It refuses, with `OutputRefused` (exit 2, one line), a target that

* is the configured database, resolves to the same inode, or is its `-wal`/`-shm`/`-journal`;
* is any SQLite database (16-byte header "SQLite format 3\\0") or such a database's side file;
* exists and is not a regular file (a device such as /dev/null, a directory, a fifo, a
  socket, a symlink to one of them, a symlink to nothing);
* exists, is not empty, and is not a previous output of the same kind: a Parquet file with
  `cqt` key-value metadata, a Markdown report with cqt's marker blocks, a PNG whose
  `Software` text chunk is `cqt`, a capture file (JSON Lines of records, maybe gzip).

Symlinks are resolved: the returned path is the real target, which the writer then
replaces. Nothing is written before the check passes.

`write_atomic(path, data)` / `write_atomic(path, write=fn)` writes a temp file beside the
target (`.NAME.tmp-PID`), fsyncs it, renames it over the target and fsyncs the directory,
so a reader sees the old file or the complete new one. On any failure (a full disk
included) the temp file is removed; temp files of killed writers (their pid is gone) are
removed by the next write of the same target.

This module knows no command and no other cqt module (the writers import it).
"""
from __future__ import annotations

import os
import re
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import exitcodes

SQLITE_HEADER = b"SQLite format 3\x00"
SQLITE_SIDE_SUFFIXES = ("-wal", "-shm", "-journal")
_WAL_MAGICS = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")
_JOURNAL_MAGIC = b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7"

# Markers the writers put into their files, so a later run recognises its own output.
PARQUET_METADATA_KEY = b"cqt"                  # schema key-value metadata: a JSON object
PNG_SOFTWARE = "cqt"                            # PNG tEXt chunk "Software"
REPORT_BLOCK_RE = re.compile(
    r"<!-- cqt:begin (?P<name>[\w:.\-]+) -->\n(?P<body>.*?)<!-- cqt:end (?P=name) -->", re.S)
CAPTURE_LINE_START = b'{"recv_ts_ms":'          # every capture record is written with this key first

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_READ_LIMIT = 16 << 20                          # bytes read at most to recognise a file


class OutputRefused(Exception):
    """A target the program must not write; `str()` is the one line to print, `code` the exit code."""

    def __init__(self, path: str | os.PathLike, reason: str, *, code: int = exitcodes.USAGE,
                 foreign: bool = False):
        self.path = Path(path)
        self.reason = reason
        self.code = code
        self.foreign = foreign          # an ordinary file, just not one of ours
        shown = os.fsdecode(path).replace("\n", "\\n")
        super().__init__(f"refusing to write {shown}: {reason}; nothing written")


@dataclass(frozen=True)
class OutputKind:
    """What a program writes: `recognize(path)` is True for a non-empty previous output."""

    name: str
    what: str                                   # for the message: "it exists and is not <what>"
    recognize: Callable[[Path], bool]


# ------------------------------------------------------------------------------ recognisers
def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def is_sqlite_file(path: str | os.PathLike) -> bool:
    try:
        return _head(Path(path), 16) == SQLITE_HEADER
    except OSError:
        return False


def is_cqt_parquet(path: Path) -> bool:
    """A Parquet file whose schema metadata has the `cqt` key. A file that starts with the
    Parquet magic but has no readable footer (cut or damaged) also counts: there is nothing
    readable in it to lose, and replacing it is what the next export is for."""
    if _head(path, 4) != b"PAR1":
        return False
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(str(path)).metadata or {}
    except Exception:  # noqa: BLE001 - pyarrow raises several types for a damaged footer
        return True
    return PARQUET_METADATA_KEY in meta


def is_cqt_report(path: Path) -> bool:
    data = _head(path, _READ_LIMIT)
    return REPORT_BLOCK_RE.search(data.decode("utf-8", errors="replace")) is not None


def png_text_chunks(path: Path) -> dict[str, str]:
    """The tEXt chunks before the image data of a PNG file ({} if it is not a PNG)."""
    out: dict[str, str] = {}
    with open(path, "rb") as fh:
        if fh.read(8) != _PNG_SIGNATURE:
            return out
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return out
            length, ctype = int.from_bytes(head[:4], "big"), head[4:]
            if ctype in (b"IDAT", b"IEND") or length > _READ_LIMIT:
                return out
            body = fh.read(length)
            fh.seek(4, os.SEEK_CUR)             # crc
            if ctype == b"tEXt" and b"\0" in body:
                key, _, value = body.partition(b"\0")
                out[key.decode("latin-1")] = value.decode("latin-1")


def is_cqt_png(path: Path) -> bool:
    return png_text_chunks(path).get("Software", "").split(" ")[0] == PNG_SOFTWARE


def is_capture_record(rec: object) -> bool:
    """The shape every capture line has (shared with the capture reader)."""
    return (type(rec) is dict and type(rec.get("recv_ts_ms")) is int and "raw" in rec
            and type(rec.get("source")) is str)


def _first_line(path: Path) -> bytes:
    """The first line of a plain or gzip file (at most _READ_LIMIT bytes; may lack its newline)."""
    with open(path, "rb") as fh:
        gz = fh.read(2) == b"\x1f\x8b"
        fh.seek(0)
        if not gz:
            data = b""
            while b"\n" not in data and len(data) < _READ_LIMIT:
                chunk = fh.read(1 << 16)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\n", 1)[0]
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        data = b""
        while b"\n" not in data and len(data) < _READ_LIMIT:
            chunk = fh.read(1 << 16)
            if not chunk:
                break
            try:
                data += d.decompress(chunk, _READ_LIMIT)
            except zlib.error:
                break                           # a torn tail: judge what came before it
        return data.split(b"\n", 1)[0]


def is_capture_file(path: Path) -> bool:
    """A capture: its first record parses as one. A first line cut by a kill (no newline yet)
    counts when it starts like a record."""
    import orjson

    line = _first_line(path)
    if not line:
        return True                             # a gzip header alone: killed before the first record
    if not line.startswith(CAPTURE_LINE_START):
        return False
    try:
        return is_capture_record(orjson.loads(line))
    except orjson.JSONDecodeError:
        return True                             # started like a record, cut short


KINDS: dict[str, OutputKind] = {}


def register_kind(kind: OutputKind) -> OutputKind:
    """Make `kind` known by name to guard_output (new programs add theirs here)."""
    KINDS[kind.name] = kind
    return kind


PARQUET = register_kind(OutputKind("parquet", "a cqt Parquet file (with 'cqt' metadata)", is_cqt_parquet))
REPORT = register_kind(OutputKind("report", "a cqt report (no '<!-- cqt:begin … -->' blocks)", is_cqt_report))
PNG = register_kind(OutputKind("png", "a plot written by cqt (PNG with Software=cqt)", is_cqt_png))
CAPTURE = register_kind(OutputKind("capture", "a cqt capture file (JSON Lines records)", is_capture_file))


# ------------------------------------------------------------------------------ the check
def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a fifo"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _sqlite_side_of(target: Path) -> Path | None:
    """The database whose -wal/-shm/-journal `target` is (by name, or by a WAL/journal header)."""
    name = target.name
    for suffix in SQLITE_SIDE_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            base = target.with_name(name[: -len(suffix)])
            if is_sqlite_file(base):
                return base
    try:
        head = _head(target, 8)
    except OSError:
        return None
    if head[:4] in _WAL_MAGICS or head == _JOURNAL_MAGIC:
        return target
    return None


def guard_output(path: str | os.PathLike, kind: str | OutputKind, *,
                 db_path: str | os.PathLike | None = None) -> Path:
    """The real path to write `path` to, or OutputRefused. Reads at most the file's head; writes nothing."""
    k = KINDS[kind] if isinstance(kind, str) else kind
    given = Path(os.path.abspath(Path(path).expanduser()))
    if os.path.lexists(given) and not os.path.exists(given):
        raise OutputRefused(path, "it is a symlink to nothing (or to a place this user cannot see)")
    target = Path(os.path.realpath(given))
    if db_path is not None:
        db = Path(os.path.realpath(Path(db_path).expanduser()))
        for suffix in ("", *SQLITE_SIDE_SUFFIXES):
            side = Path(f"{db}{suffix}")
            if target == side or _same_file(target, side):
                what = "the database" if not suffix else f"the database's {suffix} file"
                raise OutputRefused(path, f"it is {what} ({db})")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return target
    except OSError as exc:
        raise OutputRefused(path, f"cannot check it: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise OutputRefused(path, f"it exists and is {_file_type(st.st_mode)}")
    try:
        if is_sqlite_file(target):
            raise OutputRefused(path, "it is a SQLite database")
        side = _sqlite_side_of(target)
        if side is not None:
            raise OutputRefused(path, f"it is a SQLite side file (of {side})")
        if st.st_size == 0:
            return target                       # nothing in it to lose
        if not k.recognize(target):
            raise OutputRefused(path, f"it exists and is not {k.what}", foreign=True)
    except OSError as exc:
        raise OutputRefused(path, f"cannot read it to check what it is: {exc.strerror or exc}") from None
    return target


# ------------------------------------------------------------------------------ the write
def temp_path(path: Path) -> Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (a temp file's writer, say)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _unlink_quietly(p: Path) -> None:
    try:
        p.unlink()
    except OSError:
        pass


def clean_stale_temps(path: Path) -> list[Path]:
    """Remove temp files of `path` left by writers that were killed (their pid is gone), and the
    pid-less `.NAME.tmp` an older plot writer used."""
    removed = []
    legacy = path.parent / f".{path.name}.tmp"
    if legacy.is_file():
        _unlink_quietly(legacy)
        removed.append(legacy)
    for p in path.parent.glob(f".{glob_escape(path.name)}.tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            _unlink_quietly(p)
            removed.append(p)
    return removed


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, data: bytes | None = None, *,
                 write: Callable[[Path], None] | None = None, keep_mode: bool = True) -> int:
    """Replace `path` with `data` (or with what `write(temp_path)` puts there) atomically.

    Returns the new file's size. Raises what the write raised (OSError for a full disk);
    the temp file never survives a failure, and `path` is then untouched."""
    if (data is None) == (write is None):
        raise TypeError("write_atomic needs exactly one of data= or write=")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    tmp = temp_path(path)
    _unlink_quietly(tmp)
    mode = None
    if keep_mode:
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            pass
    try:
        if write is None:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            write(tmp)
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)
    return path.stat().st_size
