"""Collector programs: one process per source, each a thin program over a shared loop.

WebSocket collectors (`upbit`, `binance`) run over `cqt.stream.StreamLoop` with REST
backfill (`backfill`); REST pollers (`binance_rest`, `coinglass`) run over `cqt.poll`.
`replay` pushes a capture file through the same parsers into a database.

This module keeps the pieces both WebSocket collectors share; heavy imports stay inside
the functions so the REST pollers, which live in the same package, do not pay for them.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable

log = logging.getLogger("cqt.collectors")


def config_or_exit(build: Callable[[], Any]) -> Any:
    """Build a config object; a bad setting is one line on stderr and exit 78."""
    from ..config import ConfigError
    from ..exitcodes import CONFIG
    try:
        return build()
    except ConfigError as exc:
        print(f"cqt: {exc}", file=sys.stderr)
        sys.exit(CONFIG)


def capture_target_or_exit(service: str, settings, capture_path: str | None) -> str | None:
    """The `--capture` file, checked before the service starts: never the database, its side
    files, a device or a foreign file (one line on stderr and exit 2, as for every output)."""
    if not capture_path:
        return None
    from ..outputs import OutputRefused, guard_output
    try:
        return str(guard_output(capture_path, "capture", db_path=settings.db))
    except OutputRefused as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        sys.exit(exc.code)


def read_positions(db_path, service: str) -> dict[str, tuple[int | None, int | None]]:
    """resume_state rows of `service`: stream -> (last_id, last_ts_ms)."""
    from ..db import connect
    conn = connect(db_path, readonly=True)
    try:
        rows = conn.execute("SELECT stream, last_id, last_ts_ms FROM resume_state WHERE service = ?",
                            (service,)).fetchall()
    finally:
        conn.close()
    return {s: (i, t) for s, i, t in rows}


def run_ws_collector(svc: Any, loop: Any, backfiller: Any, *, capture: Any = None, rest: Any = None,
                     on_stop: Callable[[], None] | None = None,
                     periodic: Callable[[], None] | None = None) -> int:
    """Main loop shared by the WebSocket collectors: start the receive threads and the
    backfill worker, keep the systemd watchdog fed while every receive thread cycles,
    mirror the connection state into the heartbeat, call `periodic` (due-time checks such
    as reconciliation) every half second, and on stop flush everything."""
    import time
    loop.start()
    backfiller.start()
    svc.ready(", ".join(f"{c.ep.name} connecting" for c in loop.conns))
    last_state = None
    try:
        while not svc.stopping.is_set():
            if loop.healthy():
                svc.alive()
            state, line = loop.status_line()
            if (state, line) != last_state:
                svc.set_state(state, line)
                last_state = (state, line)
            if periodic is not None:
                periodic()
            svc.stopping.wait(0.5)
    finally:
        t0 = time.monotonic()
        loop.stop(timeout=2.5)
        backfiller.stop(timeout=max(0.1, 3.0 - (time.monotonic() - t0)))
        if on_stop is not None:
            on_stop()
        if rest is not None:
            rest.close()
        if capture is not None:
            capture.close()
    return 0


def open_capture_and_rest(svc, base_url: str, name: str, timeout_s: float, capture_path: str | None):
    """The capture file (if asked for) and the REST client a WebSocket collector backfills with."""
    from ..capture import CaptureWriter
    from ..rest import RestClient
    capture = CaptureWriter(capture_path, secrets=svc.settings.secrets, db_path=svc.settings.db) \
        if capture_path else None
    rest = RestClient(base_url, name=name, timeout_s=timeout_s, capture=capture,
                      sleep=svc.stopping.wait, max_wait_s=7 * 86400.0)   # a ban is waited out, not a failure
    return capture, rest


def report_in_heartbeat(svc, head: dict, loop, handler, rest, capture) -> None:
    """Heartbeat detail of a WebSocket collector: its loop, backfill, REST limits and capture."""
    svc.set_detail(lambda: {**head, **loop.snapshot(), "backfill": handler.snapshot(),
                            "rest": rest.rate.snapshot(),
                            **({"capture_records": capture.records} if capture else {})})


def run_rest_poller(service: str, source: str, settings, cfg, base_url: str, make_poller,
                    capture_path: str | None, headers: dict | None = None) -> None:
    """The whole life of a REST poller process: capture, client, poller over cqt.poll, exit code."""
    from ..capture import CaptureWriter
    from ..rest import RestClient
    from ..runtime import run_service
    holder: dict = {}
    capture_path = capture_target_or_exit(service, settings, capture_path)

    def main_loop(svc) -> int:
        capture = CaptureWriter(capture_path, secrets=settings.secrets, db_path=settings.db) \
            if capture_path else None
        client = RestClient(base_url, name=source, timeout_s=cfg.timeout_s, capture=capture,
                            headers=headers or {}, secrets=settings.secrets, sleep=svc.sleep)
        try:
            poller = holder["p"] = make_poller(svc, cfg, client)
            return poller.run()
        finally:
            client.close()
            if capture is not None:
                capture.close()

    sys.exit(run_service(service, main_loop, settings,
                         detail=lambda: holder["p"].detail() if "p" in holder else {}))
