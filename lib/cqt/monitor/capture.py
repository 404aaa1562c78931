"""The tail of a job's output: stdout and stderr still go where they went, and the newest
characters are also kept in a bounded buffer (the body of the job's last healthchecks ping)."""
from __future__ import annotations

import logging
import sys
import threading
from typing import TextIO


class OutputTail:
    """The newest `limit_bytes` of what was written through `tee(stream)`, in one buffer."""

    def __init__(self, limit_bytes: int):
        self.limit_bytes = limit_bytes
        self._parts: list[str] = []
        self._chars = 0
        self._lock = threading.Lock()

    def add(self, text: str) -> None:
        with self._lock:
            self._parts.append(text)
            self._chars += len(text)
            # A character is at least one byte, so `limit_bytes` characters always hold the byte tail.
            if self._chars > 2 * self.limit_bytes:
                joined = "".join(self._parts)[-self.limit_bytes:]
                self._parts, self._chars = [joined], len(joined)

    def text(self) -> str:
        with self._lock:
            return "".join(self._parts)

    def tail_bytes(self, text: str | None = None) -> bytes:
        """The last `limit_bytes` bytes (UTF-8) of `text` (default: everything kept), never
        starting in the middle of a character."""
        data = (self.text() if text is None else text).encode("utf-8", "replace")[-self.limit_bytes:]
        start = 0
        while start < len(data) and start < 4 and 0x80 <= data[start] < 0xC0:
            start += 1
        return data[start:]


class TeeStream:
    """A text stream writing to `target` and into `tail`. It offers no `.buffer`, so click
    writes text through it instead of around it to the binary stream underneath."""

    def __init__(self, target: TextIO, tail: OutputTail):
        self.target = target
        self.tail = tail

    def write(self, text: str) -> int:
        n = self.target.write(text)
        self.tail.add(text)
        return n if n is not None else len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()

    def fileno(self) -> int:
        return self.target.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:
        return getattr(self.target, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:
        return getattr(self.target, "errors", None) or "strict"

    @property
    def closed(self) -> bool:
        return getattr(self.target, "closed", False)


class CapturedOutput:
    """While active, sys.stdout, sys.stderr and the root logger's handlers on them write
    through a TeeStream into one OutputTail (the logging handlers hold the stream they were
    given, so they are pointed at the tee too, and back afterwards)."""

    def __init__(self, limit_bytes: int):
        self.tail = OutputTail(limit_bytes)
        self._saved: tuple[TextIO, TextIO] | None = None
        self._handlers: list[tuple[logging.StreamHandler, TextIO]] = []

    def __enter__(self) -> "CapturedOutput":
        out, err = sys.stdout, sys.stderr
        self._saved = (out, err)
        tees = {id(out): TeeStream(out, self.tail), id(err): TeeStream(err, self.tail)}
        sys.stdout, sys.stderr = tees[id(out)], tees[id(err)]
        for h in logging.getLogger().handlers:
            stream = getattr(h, "stream", None)
            if isinstance(h, logging.StreamHandler) and id(stream) in tees:
                self._handlers.append((h, stream))
                h.setStream(tees[id(stream)])
        return self

    def __exit__(self, *exc) -> None:
        for h, stream in self._handlers:
            h.setStream(stream)
        self._handlers.clear()
        if self._saved is not None:
            for s in (sys.stdout, sys.stderr):
                try:
                    s.flush()
                except (OSError, ValueError):
                    pass
            sys.stdout, sys.stderr = self._saved
            self._saved = None
