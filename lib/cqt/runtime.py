"""Service runtime shared by every long-running cqt program.

- logging: one event per line on stderr, level first (journald adds time and unit);
  WARNING and above also go to the `events` table (rate-limited);
- signals: SIGTERM/SIGINT stop the main loop, the writer is flushed, STOPPING=1, exit 0;
- sd_notify: READY=1 when start-up is done, WATCHDOG=1 while the main loop is alive,
  STATUS= with a short human line;
- heartbeats: a row every CQT_HEARTBEAT_S seconds with state and counters.

Timers use the monotonic clock; wall-clock time is only for timestamps.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable

from . import exitcodes
from .config import ConfigError, Settings, load_settings
from .db import BatchWriter, EventLog, RejectLog, SchemaTooNew, redact
from .timeutil import now_ms

log = logging.getLogger("cqt.runtime")

STOP_DEADLINE_S = 4.5


# ------------------------------------------------------------------------------ logging
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
        msg = redact(msg, self.secrets).replace("\n", "\n    ")
        line = f"{record.levelname} {record.name.removeprefix('cqt.')}: {msg}"
        return f"<{_SYSLOG_PRIORITY.get(record.levelname, 6)}>{line}" if self.priority_prefix else line


class _EventHandler(logging.Handler):
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


# ------------------------------------------------------------------------------ sd_notify
class Notifier:
    """Minimal sd_notify over the AF_UNIX datagram socket named by NOTIFY_SOCKET."""

    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        self.addr = ("\0" + addr[1:]) if addr.startswith("@") else addr
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_s = int(usec) / 1e6 if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0.0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.addr)

    def send(self, *lines: str) -> None:
        if not self.addr:
            return
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto("\n".join(lines).encode(), self.addr)
            except OSError as exc:
                log.debug("sd_notify failed: %s", exc)

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None


# ------------------------------------------------------------------------------ service
class Service:
    """The pieces a long-running program needs; see docs/internals.md."""

    def __init__(self, name: str, settings: Settings, *, detail: Callable[[], dict] | None = None,
                 writer_kwargs: dict | None = None):
        self.name = name
        self.settings = settings
        self.stopping = threading.Event()
        self.notifier = Notifier()
        self.detail_fn = detail
        self.state = "starting"
        self.status_text = "starting"
        self.exit_code: int | None = None
        self.stop_reason = ""
        self._alive_at = time.monotonic()
        self._counters: dict[str, list[int]] = {}    # source -> [frames, rows, rejects] since last heartbeat
        self._totals: dict[str, list[int]] = {}
        self._count_lock = threading.Lock()
        self.started_ms = now_ms()
        self.writer = BatchWriter(settings.db, service=name, on_fatal=self._on_fatal, **(writer_kwargs or {}))
        self.rejects = RejectLog(self.writer, secrets=settings.secrets)
        self.events = EventLog(self.writer, name, secrets=settings.secrets)
        logging.getLogger().addHandler(_EventHandler(self.events))
        self._threads: list[threading.Thread] = []

    # -- called by the main loop -----------------------------------------------------
    def alive(self) -> None:
        """The main loop is making progress (not: data is flowing)."""
        self._alive_at = time.monotonic()

    def ready(self, status: str = "running") -> None:
        self.state = "running"
        self.status_text = status
        # MAINPID is what systemd knows already; tools that emulate it (the e2e test) wait for it.
        self.notifier.send("READY=1", f"MAINPID={os.getpid()}", f"STATUS={status}")
        log.info("ready status=%s", status.replace(" ", "_"))

    def set_state(self, state: str, status: str | None = None) -> None:
        changed = status is not None and status != self.status_text
        self.state = state
        if status is not None:
            self.status_text = status
        if changed:
            self.notifier.send(f"STATUS={status}")

    def set_detail(self, fn: Callable[[], dict]) -> None:
        """Extra heartbeat detail, for objects the main loop creates after start-up."""
        self.detail_fn = fn

    def count(self, source: str, frames: int = 0, rows: int = 0, rejects: int = 0) -> None:
        with self._count_lock:
            c = self._counters.setdefault(source, [0, 0, 0])
            t = self._totals.setdefault(source, [0, 0, 0])
            c[0] += frames; c[1] += rows; c[2] += rejects
            t[0] += frames; t[1] += rows; t[2] += rejects

    def totals(self) -> dict[str, dict[str, int]]:
        with self._count_lock:
            return {s: {"frames": v[0], "rows": v[1], "rejects": v[2]} for s, v in self._totals.items()}

    def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True if asked to stop. Keeps the loop 'alive' meanwhile."""
        end = time.monotonic() + seconds
        while True:
            self.alive()
            left = end - time.monotonic()
            if left <= 0:
                return self.stopping.is_set()
            if self.stopping.wait(min(left, 1.0)):
                return True

    # -- internals ----------------------------------------------------------------------
    def _on_fatal(self, exc: BaseException) -> None:
        self.exit_code = exitcodes.IOERR
        self.stop_reason = f"database write failed: {exc}"
        self.stopping.set()

    def _heartbeat_once(self, state: str | None = None) -> None:
        ts = now_ms()
        with self._count_lock:
            deltas, self._counters = self._counters, {}
        detail: dict[str, Any] = {"pid": os.getpid(), "status": self.status_text, "uptime_s": (ts - self.started_ms) // 1000}
        detail["writer"] = self.writer.stats()
        detail["totals"] = self.totals()
        if self.detail_fn:
            try:
                detail.update(self.detail_fn())
            except Exception as exc:  # noqa: BLE001 - a broken detail must not stop heartbeats
                detail["detail_error"] = str(exc)
        try:
            self.writer.put("INSERT OR REPLACE INTO heartbeats (service, ts_ms, state, detail) VALUES (?, ?, ?, ?)",
                            (self.name, ts, state or self.state, json.dumps(detail, default=str)))
            if deltas:
                self.writer.put_many(
                    "INSERT OR REPLACE INTO ingest_stats (service, source, ts_ms, frames, rows, rejects) VALUES (?, ?, ?, ?, ?, ?)",
                    [(self.name, src, ts, v[0], v[1], v[2]) for src, v in deltas.items()])
        except RuntimeError:
            pass  # writer is in a fatal state; the service is exiting

    def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_s
        while not self.stopping.wait(interval):
            self._heartbeat_once()

    def _watchdog_loop(self) -> None:
        half = self.notifier.watchdog_s / 2
        while not self.stopping.wait(half):
            if time.monotonic() - self._alive_at <= half:
                self.notifier.send("WATCHDOG=1")
            else:
                log.warning("main loop has not reported progress for %.0f s; withholding watchdog ping",
                            time.monotonic() - self._alive_at)

    def start_threads(self) -> None:
        for target, name in ((self._heartbeat_loop, "heartbeat"), (self._watchdog_loop, "watchdog")):
            if name == "watchdog" and not (self.notifier.enabled and self.notifier.watchdog_s > 0):
                continue
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def install_signals(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self.stopping.is_set():
                return
            self.stop_reason = self.stop_reason or f"signal {signal.Signals(signum).name}"
            log.info("stopping on %s", signal.Signals(signum).name)
            self.stopping.set()
            self.notifier.send("STOPPING=1")
            # Hard deadline: whatever the main loop is doing, commit and leave in time.
            t = threading.Timer(STOP_DEADLINE_S, self._deadline_exit)
            t.daemon = True
            t.start()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _deadline_exit(self) -> None:
        log.warning("main loop did not stop in %.1f s; flushing and exiting", STOP_DEADLINE_S)
        self.finish(exitcodes.OK if self.exit_code is None else self.exit_code)
        os._exit(exitcodes.OK if self.exit_code is None else self.exit_code)

    _finished = False

    def record_run(self, stop: bool = False, exit_code: int | None = None) -> None:
        if not stop:
            self.writer.put("INSERT OR REPLACE INTO service_runs (service, pid, start_ts_ms) VALUES (?, ?, ?)",
                            (self.name, os.getpid(), self.started_ms))
        else:
            self.writer.put("UPDATE service_runs SET stop_ts_ms = ?, exit_code = ?, reason = ? "
                            "WHERE service = ? AND pid = ? AND start_ts_ms = ?",
                            (now_ms(), exit_code, self.stop_reason or "exited", self.name, os.getpid(), self.started_ms))

    def finish(self, code: int) -> None:
        if self._finished:
            return
        self._finished = True
        self.stopping.set()
        try:
            self._heartbeat_once(state="stopped")
            self.record_run(stop=True, exit_code=code)
        except RuntimeError:
            pass
        self.writer.close(timeout=3.0)
        self.notifier.send("STOPPING=1")
        self.notifier.close()


def load_settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        print(f"cqt: {exc}", file=sys.stderr)
        sys.exit(exitcodes.CONFIG)


def run_service(name: str, main_fn: Callable[[Service], int | None], settings: Settings | None = None,
                *, detail: Callable[[], dict] | None = None, writer_kwargs: dict | None = None) -> int:
    """Run a long-running program: returns the process exit code (never raises)."""
    settings = settings or load_settings_or_exit()
    setup_logging(name, settings.log_level, settings.secrets)
    try:
        svc = Service(name, settings, detail=detail, writer_kwargs=writer_kwargs)
    except SchemaTooNew as exc:
        log.error("%s", exc)
        return exitcodes.CONFIG
    except Exception as exc:  # noqa: BLE001 - e.g. unwritable database path
        log.error("cannot open database %s: %s", settings.db, exc)
        return exitcodes.IOERR
    svc.install_signals()
    svc.record_run()
    svc.start_threads()
    code: int
    try:
        rc = main_fn(svc)
        code = exitcodes.OK if rc is None else int(rc)
    except ConfigError as exc:
        log.error("%s", exc)
        svc.stop_reason = str(exc)
        code = exitcodes.CONFIG
    except Exception as exc:  # noqa: BLE001 - last resort: say why, exit non-zero, systemd restarts
        log.error("unexpected error, exiting: %s", exc, exc_info=True)
        svc.stop_reason = f"unexpected error: {type(exc).__name__}: {exc}"
        code = exitcodes.FAIL
    if svc.exit_code is not None:
        code = svc.exit_code
    svc.finish(code)
    log.info("stopped exit_code=%d reason=%s", code, (svc.stop_reason or "done").replace(" ", "_"))
    return code
