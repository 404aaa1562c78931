"""Logging for journald: one event a line on stderr, level first, secrets masked before any cut.

Under journald each line carries its syslog priority ("<N>" prefix), so `journalctl -p warning`
finds it. WARNING and above can also go to the `events` table (EventHandler).
"""
from __future__ import annotations

import logging
import os
import sys

from .redact import redact
from .sinks import EventLog

MAX_LOG_CHARS = 20_000      # one log line at most (secrets are masked before the cut)

_SYSLOG_PRIORITY = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


def _stderr_is_journal() -> bool:
    """True when stderr is connected to journald (systemd sets JOURNAL_STREAM=dev:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(2)
        return st.st_dev == dev and st.st_ino == ino
    except (ValueError, OSError):
        return False


class _Formatter(logging.Formatter):
    def __init__(self, secrets: tuple[str, ...] = ()):
        super().__init__()
        self.secrets = secrets
        # Under journald a "<N>" prefix sets the line's priority, so `journalctl -p warning` finds it.
        self.priority_prefix = _stderr_is_journal()

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info and record.levelno >= logging.ERROR:
            # Tracebacks only where they help: at debug level show the whole thing.
            if logging.getLogger().isEnabledFor(logging.DEBUG):
                msg += "\n" + self.formatException(record.exc_info)
            else:
                exc = record.exc_info[1]
                msg += f" ({type(exc).__name__}: {exc})"
        msg = redact(msg, self.secrets, limit=MAX_LOG_CHARS).replace("\n", "\n    ")
        line = f"{record.levelname} {record.name.removeprefix('cqt.')}: {msg}"
        return f"<{_SYSLOG_PRIORITY.get(record.levelname, 6)}>{line}" if self.priority_prefix else line


class EventHandler(logging.Handler):
    """WARNING and above into the events table."""

    def __init__(self, sink: EventLog):
        super().__init__(level=logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.record(record.levelname, record.getMessage())
        except Exception:  # noqa: BLE001 - logging must never raise
            pass


def setup_logging(service: str, level: str = "INFO", secrets: tuple[str, ...] = ()) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(secrets))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level, logging.INFO))
    # Third-party chatter (urllib3 retries, websocket traces) only at DEBUG.
    for name in ("urllib3", "websocket", "aiohttp.access", "apscheduler.executors.default"):
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)
