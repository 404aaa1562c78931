"""The life of a collector process, the same for every venue.

* `run_stream_collector(svc, venue, capture_path)` — a WebSocket collector
  (`bin/cqt-collect-upbit`, `bin/cqt-collect-binance`), top to bottom: the capture file
  and REST client, the stream loop over the venue's endpoints, the gap book and the
  backfill worker, the venue's gap hook, the heartbeat detail, resume (stored positions,
  open gaps, the first-start backfill), then the main loop until SIGTERM and a clean
  stop. The venue (`cqt.venues.base.StreamVenue`) supplies endpoints and hooks only.
* `run_rest_poller(...)` — a REST poller (`bin/cqt-poll-binance`, `bin/cqt-poll-coinglass`):
  capture, client, the venue's poller over `cqt.poll`, exit code.
* `config_or_exit`, `capture_target_or_exit` — what every program checks before its
  service starts (exit 78 / exit 2, one line on stderr).
* `markets_or_exit` — a WebSocket collector's symbols against the venue's market list
  before the service starts: a symbol the venue does not trade is one line on stderr and
  exit 78; a list that cannot be fetched (the venue briefly unreachable) is not a reason
  to stay down: the collector starts, and its first log line after start says the check
  was skipped (`run_stream_collector(..., unchecked=)`).
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Any, Callable, Iterable

from .backfill import Backfiller, GapBook
from .capture import CaptureWriter
from .config import ConfigError
from .db import connect
from .exitcodes import CONFIG
from .outputs import OutputRefused, guard_output
from .rest import RestClient, location_refused_message
from .runtime import run_service
from .stream import StreamLoop
from .timeutil import now_ms

log = logging.getLogger("cqt.collectors")


# ---------------------------------------------------------------------- before the start
def config_or_exit(build: Callable[[], Any], prog: str = "cqt") -> Any:
    """Build a config object; a bad setting is one line on stderr and exit 78."""
    try:
        return build()
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        sys.exit(CONFIG)


def capture_target_or_exit(service: str, settings, capture_path: str | None) -> str | None:
    """The `--capture` file, checked before the service starts: never the database, its side
    files, a device or a foreign file (one line on stderr and exit 2, as for every output)."""
    if not capture_path:
        return None
    try:
        return str(guard_output(capture_path, "capture", db_path=settings.db))
    except OutputRefused as exc:
        print(f"{service}: {exc}", file=sys.stderr)
        sys.exit(exc.code)


MARKET_LIST_MAX_NAMED = 10       # problems named on the one line; the rest counted


def markets_or_exit(service: str, rest_base: str, path: str, problems_of: Callable[[Any], list[str]], *,
                    venue: str, fix: str, timeout_s: float, ca_bundle: str | None = None) -> str | None:
    """Check the collector's symbols against the venue's market list (one GET of `path`).

    `problems_of(decoded answer)` is the venue's pure reader: one short phrase per symbol the
    venue does not trade, ValueError for an answer it cannot read. Problems: one line on
    stderr, `<service>: <problems> on <venue>; <fix>`, and exit 78. Returns None when every
    symbol is listed, or — no answer, an error status, an unreadable body — the warning the
    service logs once when it starts (it runs without the check)."""
    client = RestClient(rest_base, name="market_list", timeout_s=timeout_s, ca_bundle=ca_bundle)
    quiet = logging.getLogger("cqt.rest")
    was_disabled, quiet.disabled = quiet.disabled, True     # logging is not set up yet: the warning says it
    try:
        r = client.get(path, wait=False)
    finally:
        quiet.disabled = was_disabled
        client.close()
    if not r.ok:
        why = location_refused_message(venue) if r.status == 451 else (r.error or f"http {r.status}")
        return f"market list not checked: GET {path} failed ({why}); starting with the configured symbols"
    try:
        problems = problems_of(r.json())
    except ValueError as exc:
        return f"market list not checked: GET {path} answered something unreadable ({exc}); " \
               "starting with the configured symbols"
    if problems:
        print(f"{service}: {join_problems(problems)} on {venue}; {fix}", file=sys.stderr)
        sys.exit(CONFIG)
    return None


def join_problems(problems: Iterable[str], most: int = MARKET_LIST_MAX_NAMED) -> str:
    """'a; b; c' — past `most`, the rest as 'and N more'."""
    items = list(problems)
    text = "; ".join(items[:most])
    return text + (f"; and {len(items) - most} more" if len(items) > most else "")


def symbol_fix(settings, override: str, legacy: str | None = None, option: str = "--symbols") -> str:
    """What to change for a symbol the venue does not trade: the command-line option, the
    override variable or the base assets, whichever the symbol list came from."""
    source = settings.source
    if source.get(override) == "command line":
        return f"change {option}"
    for name in (override, legacy):
        if name and source.get(name, "default") != "default":
            return f"change {name} (or unset it to derive every symbol from CQT_SYMBOLS)"
    return f"change CQT_SYMBOLS, or name the venue's market for that asset in {override}"


# ---------------------------------------------------------------------- WebSocket collectors
def run_stream_collector(svc, venue, capture_path: str | None, unchecked: str | None = None) -> int:
    """The whole run of a WebSocket collector (see the module docstring). `unchecked`: why
    the market list check was skipped (`markets_or_exit`), logged once as a warning."""
    if unchecked:
        log.warning("%s", unchecked)
    settings = svc.settings
    capture = CaptureWriter(capture_path, secrets=settings.secrets, db_path=settings.db) if capture_path else None
    rest = RestClient(venue.rest_base, name=venue.rest_name, timeout_s=venue.rest_timeout_s, capture=capture,
                      sleep=svc.stopping.wait, max_wait_s=7 * 86400.0,   # a ban is waited out, not a failure
                      ca_bundle=settings.ca_bundle,
                      location_backoff_s=settings.get_float("CQT_REST_LOCATION_BACKOFF_S"))
    loop = StreamLoop(svc, venue.endpoints(), None, venue.loop_settings, service=venue.service, capture=capture)
    backfiller = Backfiller(svc, "backfill")
    handler = loop.handler = venue.gap_handler(svc, loop, rest, GapBook(svc.writer), backfiller)
    head = venue.heartbeat_head()
    svc.set_detail(lambda: {**head, **loop.snapshot(), "backfill": handler.snapshot(),
                            "rest": rest.rate.snapshot(),
                            **({"capture_records": capture.records} if capture else {})})

    # resume: stored positions, open gaps, or a first-start backfill
    positions = read_positions(settings.db, venue.service)
    venue.complete_positions(settings.db, positions)
    loop.seed(positions)
    handler.resume(load_open_gaps(settings.db, venue.source), positions, now_ms())
    venue.started(loop, positions)

    loop.start()
    backfiller.start()
    svc.ready(", ".join(f"{c.ep.name} connecting" for c in loop.conns))
    last_state = None
    try:
        # keep the systemd watchdog fed while every receive thread cycles, mirror the
        # connection state into the heartbeat, run the venue's due-time checks
        while not svc.stopping.is_set():
            if loop.healthy():
                svc.alive()
            state, line = loop.status_line()
            if (state, line) != last_state:
                svc.set_state(state, line)
                last_state = (state, line)
            handler.periodic()
            svc.stopping.wait(0.5)
    finally:
        t0 = time.monotonic()
        loop.stop(timeout=2.5)
        backfiller.stop(timeout=max(0.1, 3.0 - (time.monotonic() - t0)))
        rest.close()
        if capture is not None:
            capture.close()
    return 0


def read_positions(db_path, service: str) -> dict[str, tuple[int | None, int | None]]:
    """resume_state rows of `service`: stream -> (last_id, last_ts_ms)."""
    conn = connect(db_path, readonly=True)
    try:
        rows = conn.execute("SELECT stream, last_id, last_ts_ms FROM resume_state WHERE service = ?",
                            (service,)).fetchall()
    finally:
        conn.close()
    return {s: (i, t) for s, i, t in rows}


def load_open_gaps(db_path, source: str) -> list:
    """The `open` gaps rows of `source` a previous run left (cqt.backfill.GapBook.load_open)."""
    conn = connect(db_path, readonly=True)
    try:
        return GapBook.load_open(conn, source)
    finally:
        conn.close()


# ---------------------------------------------------------------------- REST pollers
def run_rest_poller(service: str, source: str, settings, cfg, base_url: str, make_poller,
                    capture_path: str | None, headers: dict | None = None) -> None:
    """The whole life of a REST poller process: capture, client, poller over cqt.poll, exit code.
    `make_poller(svc, cfg, client)` returns an object with `run() -> int` and `detail() -> dict`."""
    holder: dict = {}
    capture_path = capture_target_or_exit(service, settings, capture_path)
    ca_bundle = config_or_exit(lambda: settings.ca_bundle, service)

    def main_loop(svc) -> int:
        capture = CaptureWriter(capture_path, secrets=settings.secrets, db_path=settings.db) \
            if capture_path else None
        client = RestClient(base_url, name=source, timeout_s=cfg.timeout_s, capture=capture,
                            headers=headers or {}, secrets=settings.secrets, sleep=svc.sleep,
                            ca_bundle=ca_bundle,
                            location_backoff_s=settings.get_float("CQT_REST_LOCATION_BACKOFF_S"))
        try:
            poller = holder["p"] = make_poller(svc, cfg, client)
            return poller.run()
        finally:
            client.close()
            if capture is not None:
                capture.close()

    sys.exit(run_service(service, main_loop, settings,
                         detail=lambda: holder["p"].detail() if "p" in holder else {}))
