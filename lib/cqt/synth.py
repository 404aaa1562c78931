"""`bin/cqt synth --hours H --db PATH [--symbols LIST] [--seed N] [--end T] [--force]`: a realistic
database, fast.

`--db` is required (never CQT_DB), and a database that holds collected data is refused
unless `--force`: synthetic trades mixed into a live database cannot be told apart later.

Drives cqt-sim's `MarketModel` directly (no sockets) over [end − H, end] for the assets of
`--symbols` (default BTC; CQT_SYMBOLS is set to them for the pollers) and writes what the
four collectors would have written over that span, through the same code:

* WebSocket tables — every frame of `MarketModel.ws_frames` (Upbit KRW-<A>/KRW-USDT
  trades, order books, tickers; Binance <A>USDT aggTrade, markPrice@1s, bookTicker, forceOrder)
  goes through the collectors' parsers (`cqt.venues.upbit.parse.parse_upbit_frame` /
  `parse_binance_frame`); bookTicker is thinned like live (the last frame of each
  CQT_BOOKTICKER_MIN_MS slot per symbol); recv_ts_ms = event time + a small random
  latency (Binance ~15–60 ms, Upbit ~25–90 ms);
* REST series — the pollers' own job functions (`cqt.collectors.binance_rest`,
  `cqt.collectors.coinglass`: same requests, first-start backfill, re-fetch and upsert,
  closed Coinglass bars only) run at their live polling slots against the model's REST
  answers, on a virtual clock; every Coinglass call is a `coinglass_call_status` row;
* bookkeeping — heartbeats every CQT_HEARTBEAT_S for `cqt-collect-upbit`,
  `cqt-collect-binance`, `cqt-poll-binance`, `cqt-poll-coinglass` (state running,
  detail with totals), `ingest_stats` per heartbeat (per venue symbol for the WebSocket
  frames, as the collectors count them), one `service_runs` row per service
  (pid 0 marks a synthetic run);
* derived tables — `cqt.aggregate.rebuilds.rebuild(db, from, to, settings)` fills `market_1s` and
  `predictions` when that module is installed (otherwise they stay empty: said in the
  summary).

Deterministic: the same --hours, --end and --seed give the same rows, and a re-run
stores nothing twice (natural keys; Coinglass call ids derived from time and endpoint).
"""
from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import sys
import threading
import time
from collections import defaultdict
from typing import Any, Callable

import click

from . import exitcodes
from .config import ConfigError, Settings
from .db import connect
from .options import db_option, json_option
from .rest import RateLimitState, RestResponse
from .sinks import RejectLog
from .timerule import RAW_TABLES
from .timeutil import fmt_ms, now_ms, parse_time_ms
from .venues.binance.parse import parse_binance_frame
from .venues.binance.poll import BinanceRestConfig, BinanceRestPoller
from .venues.coinglass import COIN_MARK
from .venues.coinglass.parse import COINGLASS_ENDPOINTS
from .venues.coinglass.poll import CoinglassConfig, CoinglassPoller
from .venues.common import Reject, insert_sql
from .venues.upbit.parse import parse_upbit_frame
from .writer import BatchWriter

SERVICES = {  # service -> ingest source
    "cqt-collect-upbit": "upbit",
    "cqt-collect-binance": "binance_ws",
    "cqt-poll-binance": "binance_rest",
    "cqt-poll-coinglass": "coinglass",
}
CHUNK_MS = 60_000
FLUSH_EVERY_CHUNKS = 5
SYNTH_PID = 0

TABLES = ("upbit_trades", "upbit_orderbook", "upbit_ticker", "binance_agg_trades", "binance_mark_price",
          "binance_book_ticker", "binance_liquidations", "binance_open_interest", "binance_ratios",
          "binance_premium_index", "binance_funding_rate", "coinglass_open_interest", "coinglass_funding",
          "coinglass_liquidations", "coinglass_long_short", "coinglass_call_status", "heartbeats",
          "service_runs", "ingest_stats", "rejects", "market_1s", "predictions")


class Latency:
    """Receive latency in ms: a floor plus an exponential tail (deterministic)."""

    def __init__(self, rng: random.Random, floor_ms: float, mean_extra_ms: float, cap_ms: float):
        self.rnd = rng.random
        self.floor = floor_ms
        self.mean = mean_extra_ms
        self.cap = cap_ms

    def __call__(self) -> int:
        x = self.floor - self.mean * math.log(1.0 - self.rnd())
        return int(x if x < self.cap else self.cap)


class Counters:
    """Frames/rows/rejects per (service, venue symbol, heartbeat bucket) for ingest_stats
    (symbol '' = counted for the whole service)."""

    def __init__(self, start_ms: int, hb_ms: int, end_ms: int | None = None):
        self.start = start_ms
        self.hb = hb_ms
        # a frame received after the last heartbeat (latency past the end) counts in that one
        self.last = max(1, (end_ms - start_ms) // hb_ms) if end_ms is not None else None
        self.data: dict[tuple[str, str], dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
        self.totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])

    def bucket(self, ts: int) -> int:
        """Heartbeat k (at start + k*hb) reports what arrived in (start+(k-1)hb, start+k*hb]."""
        k = max(1, -(-(ts - self.start) // self.hb))
        return k if self.last is None or k < self.last else self.last

    def add(self, service: str, ts: int, frames: int = 0, rows: int = 0, rejects: int = 0,
            symbol: str = "") -> None:
        c = self.data[(service, symbol)][self.bucket(ts)]
        c[0] += frames
        c[1] += rows
        c[2] += rejects


class _SynthService:
    """What the pollers' job functions use of a Service, on a virtual clock."""

    def __init__(self, name: str, settings: Settings, writer: BatchWriter, rejects: RejectLog,
                 counters: Counters, clock: Callable[[], int]):
        self.name = name
        self.settings = settings
        self.writer = writer
        self.rejects = rejects
        self.counters = counters
        self.clock = clock
        self.stopping = threading.Event()

    def count(self, source: str, frames: int = 0, rows: int = 0, rejects: int = 0, *, symbol: str = "") -> None:
        self.counters.add(self.name, self.clock(), frames, rows, rejects, symbol)

    def sleep(self, seconds: float) -> bool:
        return False


class ModelRestClient:
    """RestClient stand-in answering from the model at the virtual time (no sockets)."""

    def __init__(self, market, name: str, clock: Callable[[], int], latency: Latency):
        self.market = market
        self.name = name
        self.clock = clock
        self.latency = latency
        self.rate = RateLimitState(name)
        self.calls = 0

    def get(self, path: str, params=None, *, wait: bool = True, timeout_s: float | None = None,
            headers=None) -> RestResponse:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        now = self.clock()
        lat = self.latency()
        status, body = self.market.rest(path, params, now)
        self.calls += 1
        return RestResponse(status, {}, body, lat, now + lat, path, params,
                            None if 200 <= status < 300 else f"http {status}")

    def close(self) -> None:
        pass


class Synth:
    def __init__(self, settings: Settings, db_path, start_ms: int, end_ms: int, seed: int,
                 out: Callable[[str], None] = print, assets: tuple[str, ...] = ("BTC",)):
        from .sim.market import Market
        from .sim.model import MarketModel

        self.settings = settings
        self.db_path = db_path
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.seed = seed
        self.out = out
        # The model starts exactly at start_ms; everything before is its smooth pre-history.
        self.assets = tuple(assets)
        self.market = Market(MarketModel(seed, end_ms, history_s=(end_ms - start_ms) // 1000, assets=self.assets))
        model = self.market.model
        self.venue_symbols = {"cqt-collect-upbit": list(model.upbit_codes),
                              "cqt-collect-binance": list(model.binance_symbols),
                              "cqt-poll-binance": list(model.binance_symbols),
                              "cqt-poll-coinglass": list(model.assets)}
        self.hb_ms = max(100, int(settings.heartbeat_s * 1000))
        self.counters = Counters(start_ms, self.hb_ms, end_ms)
        self.writer = BatchWriter(db_path, service="cqt-synth", max_rows=50_000, max_delay_s=0.5,
                                  checkpoint_every_s=3600)
        self.rejects = RejectLog(self.writer, secrets=settings.secrets)
        self.book_min_ms = settings.bookticker_min_ms
        base = random.Random(seed * 1_000_003 + 4242)
        self.lat_binance = Latency(random.Random(base.random()), 15, 12, 400)
        self.lat_upbit = Latency(random.Random(base.random()), 25, 18, 500)
        self.lat_rest = Latency(random.Random(base.random()), 40, 30, 2000)
        self.jitter_rng = random.Random(base.random())
        self.vnow = start_ms
        self.frames = 0
        self.book_pending: dict[str, tuple] = {}        # bookTicker stream -> (slot, row) not yet stored

    # ------------------------------------------------------------------ WebSocket tables
    def ws_chunk(self, venue: str, a: int, b: int) -> None:
        if venue == "upbit":
            parse, service, lat = parse_upbit_frame, "cqt-collect-upbit", self.lat_upbit
        else:
            parse, service, lat = parse_binance_frame, "cqt-collect-binance", self.lat_binance
        buckets: dict[str, list] = defaultdict(list)
        data = self.counters.data
        by_stream: dict[str, dict] = {}                  # stream -> its symbol's counters
        bucket = self.counters.bucket
        book_min = self.book_min_ms
        pending = self.book_pending                      # a slot may straddle two chunks
        books = buckets["binance_book_ticker"]
        n = 0
        for ts, stream, raw in self.market.ws_frames(venue, a, b):
            recv = ts + lat()
            counts = by_stream.get(stream)
            if counts is None:
                sym = stream.split("@", 1)[0]
                counts = by_stream[stream] = data[(service, sym if venue == "upbit" else sym.upper())]
            c = counts[bucket(recv)]
            c[0] += 1
            n += 1
            try:
                p = parse(raw, recv)
            except Reject as rej:
                self.rejects.record(rej.source, rej.reason, raw, recv)
                c[2] += 1
                continue
            if not p.table:
                continue
            if p.table == "binance_book_ticker" and book_min > 0:
                # The last bookTicker of each CQT_BOOKTICKER_MIN_MS slot, like the live collector;
                # the row counts when its slot is complete (as live, where it is written then).
                slot = p.event_ts_ms // book_min
                book_slot, book_row = pending.get(stream, (None, None))
                if slot != book_slot and book_row is not None:
                    books.append(book_row)
                    c[1] += 1
                pending[stream] = (slot, p.rows[0])
                continue
            buckets[p.table].extend(p.rows)
            c[1] += len(p.rows)
        if venue == "binance":
            for stream, (book_slot, book_row) in list(pending.items()):
                if book_row is not None and (b >= self.end_ms or book_slot < b // book_min):
                    books.append(book_row)               # its slot ended with this chunk
                    sym = stream.split("@", 1)[0].upper()
                    data[(service, sym)][bucket(book_row[-1])][1] += 1
                    del pending[stream]
        self.frames += n
        for table, rows in buckets.items():
            if rows:
                self.writer.put_many(insert_sql(table), rows)

    # ------------------------------------------------------------------ REST pollers
    def build_pollers(self) -> list[tuple[str, Any]]:
        clock = lambda: self.vnow  # noqa: E731
        mono = lambda: self.vnow / 1000.0  # noqa: E731  (rate limits count virtual time too)
        bsvc = _SynthService("cqt-poll-binance", self.settings, self.writer, self.rejects, self.counters, clock)
        bclient = ModelRestClient(self.market, "binance_rest", clock, self.lat_rest)
        bpoll = BinanceRestPoller(bsvc, BinanceRestConfig.from_settings(self.settings), bclient, clock=clock,
                                  mono=mono)
        csvc = _SynthService("cqt-poll-coinglass", self.settings, self.writer, self.rejects, self.counters, clock)
        cclient = ModelRestClient(self.market, "coinglass", clock, self.lat_rest)
        cpoll = SynthCoinglassPoller(csvc, CoinglassConfig.from_settings(self.settings, require_key=False),
                                     cclient, clock=clock, mono=mono)
        self.rest_clients = (bclient, cclient)
        return [("cqt-poll-binance", bpoll), ("cqt-poll-coinglass", cpoll)]

    def poll_schedule(self, pollers) -> list[tuple[int, int, str, Callable]]:
        """(time, order, job name, fn) of every poll in [start, end): a first run of each job
        at start (staggered like PollLoop), then its aligned, jittered slots."""
        events = []
        order = 0
        for _service, poller in pollers:
            jobs = poller.loop.jobs
            for i, job in enumerate(jobs):
                spec = job.spec
                iv = int(max(0.2, spec.interval_s) * 1000)
                phase = int(spec.phase_s * 1000) % iv
                jit = int(min(1.0, 0.05 * spec.interval_s) * 1000)
                t_first = self.start_ms + 500 * i // max(1, len(jobs))
                events.append((t_first, order, spec.name, spec.fn))
                order += 1
                k = (self.start_ms - phase) // iv + 1
                slot = k * iv + phase
                if slot - t_first < iv // 2:       # never two runs closer than half an interval
                    slot += iv
                while slot < self.end_ms:
                    t = slot + (self.jitter_rng.randrange(jit + 1) if jit else 0)
                    if t < self.end_ms:
                        events.append((t, order, spec.name, spec.fn))
                        order += 1
                    slot += iv
        events.sort(key=lambda e: (e[0], e[1]))
        return events

    def run_polls(self, events, a: int, b: int, idx: int) -> int:
        from .poll import PollError
        while idx < len(events) and events[idx][0] < b:
            t, _o, name, fn = events[idx]
            self.vnow = t
            try:
                fn()
            except PollError as exc:
                self.poll_errors[name] = self.poll_errors.get(name, 0) + 1
                self.poll_last_error[name] = str(exc)
            idx += 1
        return idx

    # ------------------------------------------------------------------ bookkeeping
    def heartbeats(self, a: int, b: int) -> None:
        """Heartbeats with ts in (a, b] for every service, with ingest_stats deltas."""
        hb_rows = []
        stat_rows = []
        k_a = (a - self.start_ms) // self.hb_ms + 1
        k_b = (b - self.start_ms) // self.hb_ms
        data = self.counters.data
        for service, source in SERVICES.items():
            keys = sorted(sym for (svc, sym) in data if svc == service)
            tot = self.counters.totals[service]
            for k in range(k_a, k_b + 1):
                ts = self.start_ms + k * self.hb_ms
                for sym in keys:
                    c = data[(service, sym)].pop(k, None)
                    if c is not None:
                        tot[0] += c[0]
                        tot[1] += c[1]
                        tot[2] += c[2]
                        stat_rows.append((service, source, sym, ts, c[0], c[1], c[2]))
                detail = {"pid": SYNTH_PID, "status": "synthetic history", "synthetic": True,
                          "seed": self.seed, "uptime_s": (ts - self.start_ms) // 1000,
                          "symbols": self.venue_symbols[service],
                          "writer": {"queue_depth": 0, "oldest_age_ms": 0},
                          "totals": {source: {"frames": tot[0], "rows": tot[1], "rejects": tot[2]}}}
                hb_rows.append((service, ts, "running", json.dumps(detail, separators=(",", ":"))))
        if hb_rows:
            self.writer.put_many("INSERT OR REPLACE INTO heartbeats (service, ts_ms, state, detail) "
                                 "VALUES (?, ?, ?, ?)", hb_rows)
        if stat_rows:
            self.writer.put_many("INSERT OR REPLACE INTO ingest_stats (service, source, symbol, ts_ms, frames, "
                                 "rows, rejects) VALUES (?, ?, ?, ?, ?, ?, ?)", stat_rows)

    def service_runs(self) -> None:
        reason = f"synthetic history (cqt synth seed={self.seed})"
        rows = [(s, SYNTH_PID, self.start_ms, self.end_ms, 0, reason) for s in SERVICES]
        self.writer.put_many("INSERT OR REPLACE INTO service_runs (service, pid, start_ts_ms, stop_ts_ms, "
                             "exit_code, reason) VALUES (?, ?, ?, ?, ?, ?)", rows)

    # ------------------------------------------------------------------ the whole run
    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        self.poll_errors: dict[str, int] = {}
        self.poll_last_error: dict[str, str] = {}
        pollers = self.build_pollers()
        events = self.poll_schedule(pollers)
        idx = 0
        self.service_runs()
        a = self.start_ms
        n_chunks = 0
        total = self.end_ms - self.start_ms
        last_report = time.monotonic()
        while a < self.end_ms:
            b = min(self.end_ms, a + CHUNK_MS)
            self.ws_chunk("binance", a, b)
            self.ws_chunk("upbit", a, b)
            idx = self.run_polls(events, a, b, idx)
            self.heartbeats(a, b)
            a = b
            n_chunks += 1
            if n_chunks % FLUSH_EVERY_CHUNKS == 0:
                self.writer.flush(timeout=None)      # bounded memory: never more than a few chunks queued
                if self.writer.fatal:
                    raise RuntimeError(f"database write failed: {self.writer.fatal}")
            if time.monotonic() - last_report > 15:
                last_report = time.monotonic()
                self.out(f"synth: {100 * (a - self.start_ms) / total:5.1f} % ({fmt_ms(a)}) "
                         f"frames={self.frames} elapsed_s={time.monotonic() - t0:.0f}")
        if not self.writer.close(timeout=600):
            raise RuntimeError("database writer did not finish")
        if self.writer.fatal:
            raise RuntimeError(f"database write failed: {self.writer.fatal}")
        raw_s = time.monotonic() - t0
        derived = self.derive()
        return {"raw_s": raw_s, "derived": derived, "total_s": time.monotonic() - t0,
                "frames": self.frames, "rest_calls": sum(c.calls for c in self.rest_clients),
                "poll_errors": dict(self.poll_errors), "poll_last_error": dict(self.poll_last_error)}

    def derive(self) -> str:
        """market_1s + predictions through the aggregate's rebuild, if it is installed."""
        try:
            from .aggregate.rebuilds import rebuild
        except ImportError as exc:
            return f"skipped: cqt.aggregate.rebuilds.rebuild is not available ({exc})"
        t = time.monotonic()
        rebuild(self.db_path, self.start_ms + 1000, self.end_ms, self.settings)
        return f"rebuilt in {time.monotonic() - t:.1f} s"


class SynthCoinglassPoller(CoinglassPoller):
    """The live Coinglass poller, but coinglass_call_status ids are derived from the call
    time, the endpoint and the coin, so a re-run replaces its own rows instead of adding new
    ones (and two coins' calls in the same millisecond keep their own rows)."""

    SQL = ("INSERT OR REPLACE INTO coinglass_call_status (id, ts_ms, endpoint, http_status, ok, latency_ms, "
           "rows, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
    ORDER = {ep.path: i for i, ep in enumerate(COINGLASS_ENDPOINTS.values())}
    COINS_PER_MS = 1024              # coin slots in an id (CQT_SYMBOLS is far shorter)

    def call_id(self, ts: int, endpoint: str) -> int:
        path, _, coin = endpoint.partition(COIN_MARK)
        coins = self.cfg.coins
        slot = coins.index(coin) if coin in coins else self.COINS_PER_MS - 1
        return (ts * 8 + self.ORDER.get(path, 7)) * self.COINS_PER_MS + slot

    def record_call(self, r, endpoint, ok, rows, error):
        ts = r.recv_ts_ms - r.elapsed_ms
        self.svc.writer.put(self.SQL, (self.call_id(ts, endpoint), ts, endpoint, r.status, 1 if ok else 0,
                                       r.elapsed_ms, rows, error))
        self.calls["total"] += 1
        self.calls["ok" if ok else "failed"] += 1


def table_counts(db_path) -> dict[str, int]:
    conn = connect(db_path, readonly=True)
    try:
        out = {}
        for t in TABLES:
            try:
                out[t] = conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
            except Exception:  # noqa: BLE001 - a table another migration has not created
                out[t] = -1
        return out
    finally:
        conn.close()


def collected_data(db_path) -> str | None:
    """Why the database at `db_path` holds collected (not synthetic) data, or None.

    Signals: a run of a collector by a real process (service_runs with pid != 0; synth
    writes pid 0), or raw rows in a database synth never wrote to (no synthetic runs at all:
    a replay, an import, a collector from before service_runs existed)."""
    if not os.path.exists(db_path):
        return None
    conn = connect(db_path, readonly=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "service_runs" in tables:
            marks = ",".join("?" * len(SERVICES))
            r = conn.execute(f"SELECT service, pid, start_ts_ms FROM service_runs WHERE service IN ({marks}) "
                             "AND pid != ? ORDER BY start_ts_ms DESC LIMIT 1", (*SERVICES, SYNTH_PID)).fetchone()
            if r is not None:
                return f"{r[0]} ran there as pid {r[1]} (started {fmt_ms(r[2])})"
            if conn.execute("SELECT 1 FROM service_runs WHERE pid = ? LIMIT 1", (SYNTH_PID,)).fetchone():
                return None
        for table in RAW_TABLES:
            if table in tables and conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                return f"{table} has rows that cqt synth did not write"
        return None
    finally:
        conn.close()


def _usage_exit(message: str) -> None:
    print(f"cqt synth: {message}", file=sys.stderr)
    sys.exit(exitcodes.USAGE)


@click.command(name="synth", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--hours", type=float, required=True, help="Length of the synthetic history in hours (e.g. 24, 0.25).")
@db_option(help="SQLite database to build or extend (required; CQT_DB is not used, so a live database "
                "is never the default).")
@click.option("--symbols", default="BTC", show_default=True, metavar="LIST",
              help="Comma-separated base assets (BTC,ETH,SOL): <A>USDT on Binance, KRW-<A> on Upbit (and "
                   "KRW-USDT), coin <A> on Coinglass; the pollers run with CQT_SYMBOLS set to them.")
@click.option("--seed", type=int, default=1, show_default=True, help="Market model seed.")
@click.option("--end", "end", default=None, help="When the history ends: ISO-8601 or epoch ms (default: now).")
@click.option("--force", is_flag=True, help="Write into a database that holds collected data anyway.")
@json_option(help="Print the summary as JSON.")
def synth(hours: float, db: str | None, symbols: str, seed: int, end: str | None, force: bool,
          as_json: bool) -> None:
    """Build a synthetic database from cqt-sim's market model: raw tables of all four
    collectors, REST series at their polling slots, Coinglass call status, heartbeats,
    service runs and ingest stats; then market_1s and predictions (cqt.aggregate).

    Same --hours/--end/--seed give the same rows; a re-run adds nothing. A database that
    holds collected data (a real collector ran there) is refused (exit 2) unless --force."""
    from .runtime import load_settings_or_exit
    from .sim.assets import parse_assets
    if not db:
        _usage_exit("--db is required (a new or synthetic database; CQT_DB is not used)")
    try:
        assets = parse_assets(symbols)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--symbols") from None
    # the pollers' symbols are the listed ones, whatever the environment says
    environ = {k: v for k, v in os.environ.items() if k not in ("CQT_BINANCE_SYMBOLS", "CQT_UPBIT_CODES")}
    settings = load_settings_or_exit(environ=environ, db=db, symbols=",".join(assets))
    if not 0 < hours <= 24 * 31:
        raise click.BadParameter("must be > 0 and at most 744 (31 days)", param_hint="--hours")
    try:
        end_ms = parse_time_ms(end) if end else now_ms()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--end") from None
    end_ms -= end_ms % 1000
    start_ms = end_ms - int(round(hours * 3600)) * 1000
    if not force:
        try:
            why = collected_data(settings.db)
        except sqlite3.Error as exc:
            print(f"cqt synth: cannot read {settings.db}: {exc}", file=sys.stderr)
            sys.exit(exitcodes.NOEVAL)
        if why:
            _usage_exit(f"refusing to write into {settings.db}: it holds collected data ({why}); "
                        "use a new --db, or --force to add synthetic rows anyway")
    try:
        s = Synth(settings, settings.db, start_ms, end_ms, seed,
                  out=lambda m: print(m, file=sys.stderr, flush=True), assets=assets)
        res = s.run()
    except ConfigError as exc:
        print(f"cqt synth: {exc}", file=sys.stderr)
        sys.exit(exitcodes.CONFIG)
    except RuntimeError as exc:
        print(f"cqt synth: {exc}", file=sys.stderr)
        sys.exit(exitcodes.IOERR)
    counts = table_counts(settings.db)
    summary = {"db": str(settings.db), "from": fmt_ms(start_ms), "to": fmt_ms(end_ms), "seed": seed,
               "hours": hours, "symbols": list(assets), "frames": res["frames"], "rest_calls": res["rest_calls"],
               "raw_s": round(res["raw_s"], 1), "total_s": round(res["total_s"], 1),
               "derived": res["derived"], "rows": counts, "poll_errors": res["poll_errors"]}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    print(f"cqt synth: {hours:g} h  {summary['from']} .. {summary['to']}  seed={seed}  "
          f"symbols={','.join(assets)}  db={settings.db}")
    print(f"  {res['frames']} WebSocket frames, {res['rest_calls']} REST calls; raw tables in "
          f"{res['raw_s']:.1f} s; market_1s/predictions: {res['derived']}; total {res['total_s']:.1f} s")
    if res["poll_errors"]:
        print(f"  poll errors: {res['poll_errors']} (last: {res['poll_last_error']})")
    width = max(len(t) for t in counts)
    for t, n in counts.items():
        print(f"  {t:<{width}}  {n if n >= 0 else 'n/a (table missing)':>10}")
