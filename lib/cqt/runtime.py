"""Service runtime shared by every long-running cqt program.

- logging (`cqt.logsetup`): one event per line on stderr, level first (journald adds time
  and unit); WARNING and above also go to the `events` table (rate-limited);
- signals: SIGTERM/SIGINT stop the main loop, the writer is flushed, STOPPING=1, exit 0;
- sd_notify: READY=1 when start-up is done, WATCHDOG=1 while the main loop is alive,
  STATUS= with a short human line;
- heartbeats: a row every CQT_HEARTBEAT_S seconds with state and counters, and the
  counters since the previous one in `ingest_stats`, one row per (source, symbol) —
  symbol '' for what is not counted per symbol;
- failure: if the writer or a thread the service depends on fails, the service stops
  (ERROR line with the cause, exit 74 for storage, 1 otherwise) and the watchdog stops
  pinging while the writer makes no progress;
- one instance per program and database (`cqt.instance`): an flock on `<db>.<program>.lock`,
  which the kernel releases however the process ends; a second instance exits 75 with one line.

Timers use the monotonic clock; wall-clock time is only for timestamps.
"""
from __future__ import annotations

import errno
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
from .db import SchemaTooNew, is_fatal_io
from .instance import AlreadyRunning, InstanceLock
from .logsetup import EventHandler, setup_logging
from .redact import redact
from .sinks import EventLog, RejectLog
from .timeutil import now_ms
from .writer import BatchWriter

log = logging.getLogger("cqt.runtime")

STOP_DEADLINE_S = 4.5


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
                 writer_kwargs: dict | None = None, clock: Callable[[], float] = time.monotonic):
        self.name = name
        self.clock = clock
        self.settings = settings
        self.stopping = threading.Event()
        self.notifier = Notifier()
        self.detail_fn = detail
        self.state = "starting"
        self.status_text = "starting"
        self.exit_code: int | None = None
        self.stop_reason = ""
        self._alive_at = clock()
        # (source, symbol) -> [frames, rows, rejects] since the last heartbeat; symbol '' = not per symbol
        self._counters: dict[tuple[str, str], list[int]] = {}
        self._totals: dict[str, list[int]] = {}                    # source -> since start
        self._symbol_totals: dict[tuple[str, str], list[int]] = {}  # (source, symbol) -> since start
        self._count_lock = threading.Lock()
        self._fail_lock = threading.Lock()
        self._failed = False
        self.started_ms = now_ms()
        self.writer = BatchWriter(settings.db, service=name, on_fatal=self._on_fatal,
                                  **{"secrets": settings.secrets, "clock": clock, **(writer_kwargs or {})})
        self.rejects = RejectLog(self.writer, secrets=settings.secrets)
        self.events = EventLog(self.writer, name, secrets=settings.secrets)
        logging.getLogger().addHandler(EventHandler(self.events))
        self._threads: list[threading.Thread] = []
        self._deadline: threading.Timer | None = None
        self._owns_process = False
        self._watchdog_withheld = ""

    # -- called by the main loop -----------------------------------------------------
    def alive(self) -> None:
        """The main loop is making progress (not: data is flowing)."""
        self._alive_at = self.clock()

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

    def count(self, source: str, frames: int = 0, rows: int = 0, rejects: int = 0, *, symbol: str = "") -> None:
        """Add to the counters of `source` and, when given, its venue `symbol` (ingest_stats)."""
        key = (source, symbol or "")
        with self._count_lock:
            accs = [self._counters.setdefault(key, [0, 0, 0]), self._totals.setdefault(source, [0, 0, 0])]
            if symbol:
                accs.append(self._symbol_totals.setdefault(key, [0, 0, 0]))
            for acc in accs:
                acc[0] += frames
                acc[1] += rows
                acc[2] += rejects

    def totals(self) -> dict[str, dict[str, int]]:
        with self._count_lock:
            return {s: {"frames": v[0], "rows": v[1], "rejects": v[2]} for s, v in self._totals.items()}

    def symbol_totals(self) -> dict[str, dict[str, dict[str, int]]]:
        """source -> venue symbol -> counters since start, for what was counted per symbol."""
        out: dict[str, dict[str, dict[str, int]]] = {}
        with self._count_lock:
            for (source, sym), v in self._symbol_totals.items():
                out.setdefault(source, {})[sym] = {"frames": v[0], "rows": v[1], "rejects": v[2]}
        return out

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
        """The writer cannot store (storage: 74) or dropped what it could not store (1)."""
        storage = is_fatal_io(exc) or isinstance(exc, OSError)
        what = "database write failed" if storage else "database writer failed"
        self.fail(exitcodes.IOERR if storage else exitcodes.FAIL, f"{what}: {type(exc).__name__}: {exc}")

    def fail(self, code: int, reason: str) -> None:
        """Stop the service because something it depends on failed: one ERROR line, exit `code`
        (the first failure wins), and a deadline so a main loop that does not notice still ends."""
        reason = redact(reason, self.settings.secrets, limit=500)
        with self._fail_lock:
            if self._failed:
                return
            self._failed = True
        log.error("stopping: %s exit_code=%d", reason, code)
        # Together, after the line: whoever sees the exit code also sees the service stopping.
        self.stop_reason = reason
        self.exit_code = code
        self.stopping.set()
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        # Only a Service that runs the process (install_signals) may end it.
        if self._owns_process and self._deadline is None and not self._finished:
            self._deadline = threading.Timer(STOP_DEADLINE_S, self._deadline_exit)
            self._deadline.daemon = True
            self._deadline.start()

    def spawn(self, name: str, target: Callable[[], Any]) -> threading.Thread:
        """Start a daemon thread the service depends on: if it raises (or returns while the
        service is not stopping) the service stops with exit 1 instead of running on without it."""
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: BLE001 - a dead worker must never be silent
                if not self.stopping.is_set():
                    self.fail(exitcodes.FAIL, f"{name} thread failed: {type(exc).__name__}: {exc}")
                return
            if not self.stopping.is_set():
                self.fail(exitcodes.FAIL, f"{name} thread ended unexpectedly")

        t = threading.Thread(target=guarded, name=name, daemon=True)
        t.start()
        self._threads.append(t)
        return t

    def _heartbeat_once(self, state: str | None = None) -> None:
        ts = now_ms()
        with self._count_lock:
            deltas, self._counters = self._counters, {}
        detail: dict[str, Any] = {"pid": os.getpid(), "status": self.status_text,
                                  "uptime_s": (ts - self.started_ms) // 1000}
        detail["writer"] = self.writer.stats()
        detail["totals"] = self.totals()
        by_symbol = self.symbol_totals()
        if by_symbol:
            detail["symbol_totals"] = by_symbol
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
                    "INSERT OR REPLACE INTO ingest_stats (service, source, symbol, ts_ms, frames, rows, rejects) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(self.name, src, sym, ts, v[0], v[1], v[2]) for (src, sym), v in deltas.items()])
        except RuntimeError:
            pass  # writer is in a fatal state; the service is exiting

    def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_s
        while not self.stopping.wait(interval):
            self._heartbeat_once()

    def watchdog_verdict(self) -> tuple[bool, str]:
        """(True, "") when a WATCHDOG=1 ping is deserved: the main loop reported progress within
        half the watchdog period, the writer is alive and moving (committed within one period,
        or has nothing queued), and every thread the service depends on runs."""
        period = self.notifier.watchdog_s
        idle = self.clock() - self._alive_at
        if idle > period / 2:
            return False, f"main loop has not reported progress for {idle:.0f} s"
        ok, why = self.writer.healthy(stall_s=period)
        if not ok:
            return False, why
        for t in self._threads:
            if not t.is_alive() and t is not threading.current_thread():
                return False, f"{t.name} thread is not running"
        return True, ""

    def _watchdog_loop(self) -> None:
        half = self.notifier.watchdog_s / 2
        while not self.stopping.wait(half):
            ok, why = self.watchdog_verdict()
            if ok:
                self.notifier.send("WATCHDOG=1")
                self._watchdog_withheld = ""
            elif why.split(" for ")[0] != self._watchdog_withheld.split(" for ")[0]:
                self._watchdog_withheld = why
                log.warning("%s; withholding watchdog ping", why)

    def start_threads(self) -> None:
        self.spawn("heartbeat", self._heartbeat_loop)
        if self.notifier.enabled and self.notifier.watchdog_s > 0:
            self.spawn("watchdog", self._watchdog_loop)

    def install_signals(self) -> None:
        self._owns_process = True

        def handler(signum: int, _frame: Any) -> None:
            if self.stopping.is_set():
                return
            self.stop_reason = self.stop_reason or f"signal {signal.Signals(signum).name}"
            log.info("stopping on %s", signal.Signals(signum).name)
            self.stopping.set()
            self.notifier.send("STOPPING=1")
            # Hard deadline: whatever the main loop is doing, commit and leave in time.
            self._arm_deadline()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _deadline_exit(self) -> None:
        log.warning("main loop did not stop in %.1f s; flushing and exiting", STOP_DEADLINE_S)
        code = self.final_code(exitcodes.OK)
        self.finish(code)
        log.info("stopped exit_code=%d reason=%s", code, (self.stop_reason or "done").replace(" ", "_"))
        os._exit(code)

    def final_code(self, code: int) -> int:
        """The exit code to report: a failure recorded by the writer or a worker wins over
        what the main loop returned, so a service whose writer died never exits 0."""
        if self.exit_code is None and (self.writer.fatal is not None or self.writer.failure is not None):
            self._on_fatal(self.writer.fatal or self.writer.failure)
        return code if self.exit_code is None else self.exit_code

    _finished = False

    def record_run(self, stop: bool = False, exit_code: int | None = None) -> None:
        if not stop:
            self.writer.put("INSERT OR REPLACE INTO service_runs (service, pid, start_ts_ms) VALUES (?, ?, ?)",
                            (self.name, os.getpid(), self.started_ms))
        else:
            self.writer.put("UPDATE service_runs SET stop_ts_ms = ?, exit_code = ?, reason = ? "
                            "WHERE service = ? AND pid = ? AND start_ts_ms = ?",
                            (now_ms(), exit_code, self.stop_reason or "exited", self.name, os.getpid(),
                             self.started_ms))

    def finish(self, code: int) -> None:
        if self._finished:
            return
        self._finished = True
        self.stopping.set()
        if self._deadline is not None and self._deadline is not threading.current_thread():
            self._deadline.cancel()
        try:
            self._heartbeat_once(state="stopped")
            self.record_run(stop=True, exit_code=code)
        except RuntimeError:
            pass
        self.writer.close(timeout=3.0)
        self.notifier.send("STOPPING=1")
        self.notifier.close()


def lock_or_exit_code(name: str, settings: Settings) -> InstanceLock | int:
    try:
        return InstanceLock(name, settings.db)
    except AlreadyRunning as exc:
        log.error("%s", exc)
        return exitcodes.TEMPFAIL
    except ValueError as exc:        # e.g. a NUL byte in the path
        log.error("CQT_DB is not a usable path: %s", exc)
        return exitcodes.CONFIG
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            log.error("CQT_DB is not a usable path: %s", exc.strerror)
            return exitcodes.CONFIG
        log.error("cannot create the instance lock next to the database %s: %s", settings.db, exc)
        return exitcodes.IOERR


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
    lock = lock_or_exit_code(name, settings)
    if isinstance(lock, int):
        return lock
    try:
        return _run_locked(name, main_fn, settings, detail, writer_kwargs)
    finally:
        lock.release()


def _run_locked(name: str, main_fn: Callable[[Service], int | None], settings: Settings,
                detail: Callable[[], dict] | None, writer_kwargs: dict | None) -> int:
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
        svc.stop_reason = svc.stop_reason if svc.exit_code is not None else str(exc)
        code = exitcodes.CONFIG
    except Exception as exc:  # noqa: BLE001 - last resort: say why, exit non-zero, systemd restarts
        log.error("unexpected error, exiting: %s", exc, exc_info=True)
        if svc.exit_code is None:   # else the failure that stopped the service is the reason
            svc.stop_reason = f"unexpected error: {type(exc).__name__}: {exc}"
        code = exitcodes.FAIL
    code = svc.final_code(code)
    svc.finish(code)
    log.info("stopped exit_code=%d reason=%s", code, (svc.stop_reason or "done").replace(" ", "_"))
    return code
