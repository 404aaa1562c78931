#!/usr/bin/env python3
"""Soak run (not collected by pytest): the whole pipeline against cqt-sim under a fault schedule.

    .venv/bin/python tests/bench/soak.py --hours 1.05 --out /tmp/soak-table.md
    .venv/bin/python tests/bench/soak.py --hours 0.1 --seed 3 --workdir /tmp/soak-trial

Starts cqt-sim on 127.0.0.1 and every service (the four collectors, cqt-aggregate,
cqt-scheduler) with the demo's short intervals, the database on a tmpfs this script mounts
(so a full disk can be staged). It acts as systemd: a service whose process exited is
started again after RestartSec (5 s), except after exit 78, and every restart is counted.
A seeded RNG drives the faults: WebSocket drops, stalls, refused connections, Binance
serverShutdown, Binance aggTrade id gaps, Upbit trade skips (the sim's `gap` fault), 429/5xx
storms on each REST API, kill -9 of a random service, and once per hour a full-disk episode
(a filler file fills the tmpfs for --disk-full-s seconds; services must exit 74).

After --hours the faults stop; after a settle period it waits (bounded by --drain-s) until
every trade id the market model produced between the first and the last id the sim sent on
each WebSocket trade stream is stored, then stops everything and reports, per hour and in
total: services up, restarts, exit codes, faults, gaps opened/filled, ids missing/duplicate,
RSS/fds/threads per service, database and WAL size. Markdown to stdout and --out.
Needs root (mount). Exit 0 when nothing is missing or duplicated and no gap is left open.
Everything it started is killed and the tmpfs unmounted whatever happens.
"""
from __future__ import annotations

import argparse
import bisect
import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "lib")]

from cqt import demo  # noqa: E402
from cqt.sim.model import MarketModel  # noqa: E402

RESTART_SEC = 5.0                   # systemd RestartSec of every cqt unit
NO_RESTART_CODES = (78,)            # RestartPreventExitStatus
SAMPLE_S = 30.0
MIN_AGE_S = 60.0                    # resources are sampled from processes at least this old
HISTORY_S = 3600
TRADE_STREAMS = {"binance:btcusdt@aggTrade": ("binance_agg_trades", "agg_id", "symbol", "BTCUSDT"),
                 "upbit:KRW-BTC@trade": ("upbit_trades", "sequential_id", "code", "KRW-BTC"),
                 "upbit:KRW-USDT@trade": ("upbit_trades", "sequential_id", "code", "KRW-USDT")}
REST_PATHS = ("/fapi/*", "/futures/data/*", "/v1/*", "/api/*")
# (kind, weight) of the random faults; a full-disk episode is added once per hour.
FAULT_WEIGHTS = (("ws_drop", 3), ("stall", 2), ("refuse", 1), ("server_shutdown", 1), ("binance_gap", 3),
                 ("upbit_gap", 3), ("rest_storm", 3), ("kill9", 2))


# ------------------------------------------------------------------------------ accounting (pure)
@dataclass
class StreamAccount:
    stream: str
    lo: int
    hi: int
    expected: int
    sent_ws: int
    skipped: int
    stored: int
    missing: int
    duplicate: int
    extra: int
    missing_ts: list[int]
    missing_sample: list[str]


def in_ranges(ranges: list[list[int]], x: int) -> bool:
    i = bisect.bisect_right(ranges, [x, float("inf")]) - 1
    return i >= 0 and ranges[i][0] <= x <= ranges[i][1]


def count_in(ranges: list[list[int]], lo: int, hi: int) -> int:
    return sum(max(0, min(b, hi) - max(a, lo) + 1) for a, b in ranges)


def account(stream: str, produced: dict[int, int], lo: int, hi: int, sent: list[list[int]],
            skipped: list[list[int]], stored: list[int]) -> StreamAccount:
    """Ids the model produced in [lo, hi] (id -> trade time) against the stored ones."""
    expected = {i for i in produced if lo <= i <= hi}
    have = set(stored)
    missing = sorted(expected - have)
    sample = []
    for i in missing[:20]:
        how = "sent on WS" if in_ranges(sent, i) else ("held back" if in_ranges(skipped, i) else "not sent")
        sample.append(f"{i} ({how}, {time.strftime('%H:%M:%S', time.gmtime(produced[i] / 1000))})")
    return StreamAccount(stream, lo, hi, len(expected), count_in(sent, lo, hi), count_in(skipped, lo, hi), len(stored),
                         len(missing), len(stored) - len(have), len(have - expected), [produced[i] for i in missing],
                         sample)


def bucket_of(offset_s: float, bucket_s: float, n_buckets: int) -> int:
    """Report row of an offset from the start; before the start is the first, after the end the last."""
    return min(n_buckets - 1, max(0, int(offset_s // bucket_s)))


def gaps_per_bucket(gaps, t0_ms: int, bucket_s: float, n_buckets: int) -> list[tuple[int, int]]:
    """(opened, filled) per row, from gaps rows (…, status, reason, detected_ts_ms, filled_ts_ms, …)."""
    opened, filled = [0] * n_buckets, [0] * n_buckets
    for g in gaps:
        opened[bucket_of((g[4] - t0_ms) / 1000, bucket_s, n_buckets)] += 1
        if g[5] is not None and g[2] in ("filled", "partial"):
            filled[bucket_of((g[5] - t0_ms) / 1000, bucket_s, n_buckets)] += 1
    return list(zip(opened, filled))


def would_hit_start_limit(restarts: list[float], burst: int = 5, interval_s: float = 300.0) -> bool:
    """systemd StartLimitBurst/StartLimitIntervalSec: more than `burst` starts within the interval."""
    return any(restarts[i + burst] - restarts[i] <= interval_s for i in range(len(restarts) - burst))


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "/") for c in r) + " |" for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ fault plan
def fault_plan(rng: random.Random, duration_s: float, bucket_s: float, mean_gap_s: float,
               services: tuple[str, ...]) -> list[tuple[float, str, dict]]:
    """(offset_s, kind, params) for the whole run, sorted: the same seed gives the same plan."""
    kinds = [k for k, _ in FAULT_WEIGHTS]
    weights = [w for _, w in FAULT_WEIGHTS]
    plan: list[tuple[float, str, dict]] = []
    t = 90.0                                  # the pipeline starts in peace
    while True:
        t += rng.expovariate(1.0 / mean_gap_s)
        if t >= duration_s - 30:
            break
        kind = rng.choices(kinds, weights)[0]
        src = rng.choice(("upbit", "binance", None))
        if kind == "ws_drop":
            p = {"kind": "drop", "close_code": rng.choice((None, 1001, 1011))}
        elif kind == "stall":
            p = {"kind": "stall", "seconds": round(rng.uniform(5, 45), 1)}
        elif kind == "refuse":
            p = {"kind": "refuse", "seconds": round(rng.uniform(3, 30), 1)}
        elif kind == "server_shutdown":
            p = {"kind": "server_shutdown"}
            src = "binance"
        elif kind == "binance_gap":
            p = {"kind": "gap", "ids": rng.randint(1, 300), "stream": "btcusdt@aggTrade"}
            src = "binance"
        elif kind == "upbit_gap":
            code = rng.choice(("KRW-BTC", "KRW-BTC", "KRW-USDT"))
            p = {"kind": "gap", "ids": rng.randint(1, 40), "stream": f"{code}@trade"}
            src = "upbit"
        elif kind == "rest_storm":
            p = {"kind": "http_error", "path": rng.choice(REST_PATHS), "status": rng.choice((429, 429, 500, 502, 503)),
                 "count": rng.randint(3, 30), "retry_after": rng.randint(1, 5)}
            src = None
        else:
            p = {"service": rng.choice(services)}
        if src and kind != "kill9" and kind != "rest_storm":
            p["source"] = src
        plan.append((round(t, 1), kind, {k: v for k, v in p.items() if v is not None}))
    b = 0
    while b * bucket_s < duration_s - 120:
        span = min(bucket_s, duration_s - b * bucket_s)
        plan.append((round(b * bucket_s + rng.uniform(0.35, 0.65) * span, 1), "disk_full", {}))
        b += 1
    return sorted(plan, key=lambda e: e[0])


# ------------------------------------------------------------------------------ sim control
class Sim:
    def __init__(self, control: str):
        self.control = control

    def call(self, method: str, path: str, body=None, timeout: float = 15.0) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.control + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            return json.loads(e.read() or b"{}")

    def fault(self, spec: dict) -> dict:
        return self.call("POST", "/fault", spec)

    def stream(self, key: str) -> dict:
        return self.call("GET", f"/stats?ids=1&stream={key.split(':', 1)[1]}", timeout=30)["streams"].get(key, {})


# ------------------------------------------------------------------------------ supervisor
@dataclass
class Service:
    name: str
    proc: demo.Proc | None = None
    restarts: list[float] = field(default_factory=list)    # offsets (s) of restarts
    exits: list[tuple[float, int]] = field(default_factory=list)
    restart_due: float | None = None
    lib: str = ""


class Supervisor:
    """What systemd does for the units: restart an exited service after RestartSec."""

    def __init__(self, env: dict, logs: Path, cwd: Path):
        self.env, self.logs, self.cwd = env, logs, cwd
        self.services: dict[str, Service] = {}
        self.t0 = time.monotonic()          # restarts and exits are kept as offsets from this

    def start(self, name: str) -> None:
        svc = self.services.setdefault(name, Service(name))
        svc.proc = demo.start(name, [], self.env, self.logs, self.cwd)
        svc.restart_due = None

    def tick(self, now: float) -> None:
        for svc in self.services.values():
            p = svc.proc
            if p is not None and p.popen.poll() is not None:
                code = p.popen.returncode
                svc.exits.append((now - self.t0, code))
                svc.proc = None
                demo._killpg(p.popen, signal.SIGKILL)       # a stray child of the dead one
                if code not in NO_RESTART_CODES:
                    svc.restart_due = now + RESTART_SEC
                # one line per episode: a service failing again every RestartSec is only counted
                if len(svc.exits) < 2 or svc.exits[-2][1] != code or svc.exits[-1][0] - svc.exits[-2][0] > 60:
                    log(f"{svc.name} exited with {code}: {demo.tail(p.log, 1)}")
            if svc.proc is None and svc.restart_due is not None and now >= svc.restart_due:
                svc.restarts.append(now - self.t0)
                self.start(svc.name)

    def kill9(self, name: str) -> bool:
        svc = self.services.get(name)
        if svc is None or svc.proc is None or svc.proc.popen.poll() is not None:
            return False
        demo._killpg(svc.proc.popen, signal.SIGKILL)
        return True

    def running(self) -> list[demo.Proc]:
        return [s.proc for s in self.services.values() if s.proc is not None and s.proc.popen.poll() is None]


# ------------------------------------------------------------------------------ tmpfs and disk full
def mount_tmpfs(path: Path, size_mb: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs", str(path)],
                   check=True, timeout=30)


def umount(path: Path) -> None:
    for args in (["umount", str(path)], ["umount", "-l", str(path)]):
        for _ in range(5):
            if subprocess.run(args, timeout=30, capture_output=True).returncode == 0:
                return
            time.sleep(1)


def fill_disk(filler: Path) -> int:
    """Write until ENOSPC; the bytes written."""
    n = 0
    chunk = b"\0" * (4 << 20)
    with open(filler, "wb", buffering=0) as fh:
        for size in (4 << 20, 4096, 512):
            while True:
                try:
                    n += fh.write(chunk[:size])
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    return n


# ------------------------------------------------------------------------------ measurements
T0_WALL_MS = int(time.time() * 1000)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {msg}", file=sys.stderr, flush=True)


def ro(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=20)


def sample_resources(sup: Supervisor) -> dict[str, tuple[float, int, int]]:
    import psutil
    out = {}
    for svc in sup.services.values():
        if svc.proc is None:
            continue
        try:
            p = psutil.Process(svc.proc.pid)
            if time.time() - p.create_time() < MIN_AGE_S:
                continue            # still starting (or not yet exec'd python): not its steady state
            out[svc.name] = (p.memory_info().rss / 2**20, p.num_fds(), p.num_threads())
            if not svc.lib:
                env = Path(f"/proc/{svc.proc.pid}/environ").read_bytes().split(b"\0")
                svc.lib = next((e[len(b"PYTHONPATH="):].decode() for e in env if e.startswith(b"PYTHONPATH=")), "")
        except (psutil.Error, OSError):
            pass
    return out


def file_mb(path: Path) -> float:
    try:
        return path.stat().st_size / 2**20
    except OSError:
        return 0.0


class ExpectedIds:
    """Every trade id the sim's market model produced, per trade stream, with its trade time."""

    def __init__(self, seed: int, origin_ms: int):
        self.model = MarketModel(seed, origin_ms, HISTORY_S)
        self.k = self.model.k0
        self.ids: dict[str, dict[int, int]] = {k: {} for k in TRADE_STREAMS}

    def advance(self, to_ms: int) -> None:
        # in order, so each block is generated once (an old block is regenerated from a checkpoint)
        while self.k <= to_ms // 1000:
            b = self.model.block(self.k)
            for tr in b.bn_trades:
                self.ids["binance:btcusdt@aggTrade"][tr[0]] = tr[5]
            for code in ("KRW-BTC", "KRW-USDT"):
                d = self.ids[f"upbit:{code}@trade"]
                for tr in b.up_trades[code]:
                    d[tr[5]] = tr[1]
            self.k += 1


def stored_ids(db: Path, key: str, lo: int, hi: int) -> list[int]:
    table, col, kcol, kval = TRADE_STREAMS[key]
    with ro(db) as conn:
        return [r[0] for r in conn.execute(f"SELECT {col} FROM {table} WHERE {kcol} = ? AND {col} BETWEEN ? AND ?",
                                           (kval, lo, hi))]


def accounts(db: Path, sim: Sim, expected: ExpectedIds,
             windows: dict[str, tuple[int, int]]) -> dict[str, StreamAccount]:
    out = {}
    for key, (lo, hi) in windows.items():
        st = sim.stream(key)
        out[key] = account(key, expected.ids[key], lo, hi, st.get("ranges", []), st.get("skipped", []),
                           stored_ids(db, key, lo, hi))
    return out


def open_gaps(db: Path) -> int:
    try:
        with ro(db) as conn:
            return conn.execute("SELECT count(*) FROM gaps WHERE status = 'open'").fetchone()[0]
    except sqlite3.Error:
        return -1


# ------------------------------------------------------------------------------ the run
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, required=True)
    ap.add_argument("--out", default=None, help="also write the Markdown report here")
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--workdir", default=None, help="default: a new /tmp/cqt-soak-*")
    ap.add_argument("--bucket-min", type=float, default=60.0, help="report row length (minutes)")
    ap.add_argument("--mean-fault-gap-s", type=float, default=40.0)
    ap.add_argument("--disk-full-s", type=float, default=60.0)
    ap.add_argument("--tmpfs-mb", type=int, default=768, help="size of the database's tmpfs (the filler fills it)")
    ap.add_argument("--settle-s", type=float, default=150.0)
    ap.add_argument("--drain-s", type=float, default=900.0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (it mounts a tmpfs for the full-disk episode)", file=sys.stderr)
        return 2
    duration = a.hours * 3600
    bucket_s = a.bucket_min * 60
    work = Path(a.workdir or tempfile.mkdtemp(prefix="cqt-soak-")).absolute()
    logs, dbdir = work / "logs", work / "db"
    logs.mkdir(parents=True, exist_ok=True)
    db, filler = dbdir / "cqt.db", dbdir / "filler"
    rng = random.Random(a.seed)
    plan = fault_plan(rng, duration, bucket_s, a.mean_fault_gap_s, demo.SERVICES)
    (work / "fault-plan.json").write_text(json.dumps(plan, indent=0))
    stopper = demo.Stopper()
    stopper.install()
    mounted = False
    sim_proc: demo.Proc | None = None
    sup: Supervisor | None = None
    faults = Counter()
    fault_log: list[tuple[float, str]] = []         # (offset_s, kind)
    disk_full_at: list[float] = []
    samples: list[tuple[float, dict, float, float, float]] = []     # (offset, res, db MB, wal MB, load)
    up_samples: list[tuple[float, int]] = []
    result: dict = {}
    t_start = time.monotonic()
    global T0_WALL_MS
    try:
        mount_tmpfs(dbdir, a.tmpfs_mb)
        mounted = True
        base = demo.child_env(dict(os.environ), {"CQT_ENV_FILE": str(work / "soak.env"),
                                                 "MPLCONFIGDIR": str(work / ".cache")})
        ports = work / "sim-ports.json"
        sim_proc = demo.start("cqt-sim", ["--host", "127.0.0.1", "--port", "0", "--seed", str(a.seed), "--ports-file",
                                          str(ports), "--history", str(HISTORY_S), "--coinglass-key", demo.DEMO_KEY],
                              base, logs, work)
        endpoints = demo.wait_ports_file(sim_proc, ports, stopper, timeout=180)
        sim = Sim(endpoints["control"])
        settings = {k: v for k, v in endpoints.items() if k.startswith("CQT_")}
        settings.update({"CQT_DB": str(db), "CQT_REPORT": str(work / "reports" / "step-alt-5.md"),
                         "CQT_DATASET_DIR": str(work / "datasets"), "COINGLASS_ENABLED": "true",
                         "COINGLASS_API_KEY": demo.DEMO_KEY, **demo.DEMO_SETTINGS})
        demo.write_env_file(work / "soak.env", settings)
        sup = Supervisor({**base, **settings}, logs, work)
        for name in demo.COLLECTORS:
            sup.start(name)
        demo.wait_backfilled(db, sup.running(), stopper, timeout=240)
        for name in demo.SERVICES[len(demo.COLLECTORS):]:
            sup.start(name)
        model_info = sim.call("GET", "/stats?ids=0")["model"]
        t_start = sup.t0 = time.monotonic()
        T0_WALL_MS = int(time.time() * 1000)
        log(f"soak: {a.hours} h, seed {a.seed}, {len(plan)} faults planned; workdir {work}; code {ROOT}")
        next_sample = 0.0
        i = 0
        disk_full_until = None
        while True:
            now = time.monotonic()
            off = now - t_start
            if off >= duration and disk_full_until is None:
                break
            while i < len(plan) and plan[i][0] <= off and off < duration:
                _, kind, p = plan[i]
                i += 1
                if kind == "kill9":
                    ok = sup.kill9(p["service"])
                    log(f"kill -9 {p['service']}: {'done' if ok else 'not running'}")
                elif kind == "disk_full":
                    if disk_full_until is None:
                        n = fill_disk(filler)
                        disk_full_until = now + a.disk_full_s
                        disk_full_at.append(off)
                        log(f"disk full: filler of {n / 2**20:.0f} MB for {a.disk_full_s:.0f} s")
                else:
                    try:
                        ans = sim.fault(p)
                    except (OSError, ValueError) as e:     # a sim too busy to answer in time: skip this one
                        ans = {"error": repr(e)}
                    if not ans.get("ok"):
                        log(f"fault rejected: {p}: {ans}")
                        continue
                faults[kind] += 1
                fault_log.append((off, kind))
            if disk_full_until is not None and now >= disk_full_until:
                filler.unlink(missing_ok=True)
                disk_full_until = None
                log("disk full: filler removed")
            sup.tick(now)
            if off >= next_sample:
                next_sample = off + SAMPLE_S
                samples.append((off, sample_resources(sup), file_mb(db), file_mb(Path(str(db) + "-wal")),
                                os.getloadavg()[0]))
                up_samples.append((off, len(sup.running())))
            stopper.sleep(0.5)

        # ---- settle and drain: no faults any more; every id up to the snapshot stored
        sim.fault({"kind": "clear"})
        log(f"faults over: settling {a.settle_s:.0f} s")
        settle_end = time.monotonic() + a.settle_s
        while time.monotonic() < settle_end:
            sup.tick(time.monotonic())
            stopper.sleep(0.5)
        windows = {}
        for key in TRADE_STREAMS:
            st = sim.call("GET", f"/stats?ids=0&stream={key.split(':', 1)[1]}")["streams"].get(key, {})
            if st.get("first_id") is not None:
                windows[key] = (st["first_id"], st["last_id"])
        expected = ExpectedIds(model_info["seed"], model_info["origin_ms"])
        expected.advance(sim.call("GET", "/stats?ids=0")["model_time_ms"] + 3000)
        drain_end = time.monotonic() + a.drain_s
        drained_s = None
        t_drain = time.monotonic()
        while True:
            sup.tick(time.monotonic())
            acc = accounts(db, sim, expected, windows)
            gaps_open = open_gaps(db)
            missing = sum(x.missing for x in acc.values())
            if missing == 0 and gaps_open == 0:
                drained_s = time.monotonic() - t_drain
                break
            if time.monotonic() > drain_end:
                log(f"drain: still {missing} ids missing, {gaps_open} gaps open after {a.drain_s:.0f} s")
                break
            log(f"drain: {missing} ids missing, {gaps_open} gaps open")
            stopper.sleep(15)
        samples.append((time.monotonic() - t_start, sample_resources(sup), file_mb(db),
                        file_mb(Path(str(db) + "-wal")), os.getloadavg()[0]))
        up_samples.append((time.monotonic() - t_start, len(sup.running())))
        codes = demo.stop_all(sup.running())
        log(f"stopped: {codes}")
        acc = accounts(db, sim, expected, windows)
        result = collect_result(db, work, acc, sup, codes, drained_s)
    except demo.Interrupted:
        log(f"interrupted ({stopper.signal_name})")
        result = {"interrupted": True}
    finally:
        leftovers = [*(sup.running() if sup else []), *([sim_proc] if sim_proc else [])]
        if leftovers:
            demo.stop_all(leftovers)
        if mounted:
            filler.unlink(missing_ok=True)
            umount(dbdir)
    if result.get("interrupted") or not result:
        return 130
    text = render(a, work, plan, faults, fault_log, disk_full_at, samples, up_samples, sup, result,
                  duration, bucket_s)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    ok = result["missing"] == 0 and result["duplicate"] == 0 and result["gaps_open"] == 0
    return 0 if ok else 1


def collect_result(db: Path, work: Path, acc: dict, sup: Supervisor, codes: dict, drained_s) -> dict:
    with ro(db) as conn:
        gaps = conn.execute("SELECT source, stream, status, reason, detected_ts_ms, filled_ts_ms, filled_rows "
                            "FROM gaps").fetchall()
        integrity = conn.execute("PRAGMA quick_check").fetchone()[0]
        rows = {t: n for t, n in demo.count_rows(db).items()}
        keep = work / "cqt.db"                       # off the tmpfs, for a look afterwards
        out = sqlite3.connect(keep)
        conn.backup(out)
        out.close()
    return {"accounts": acc, "gaps": gaps, "integrity": integrity, "rows": rows, "stop_codes": codes,
            "drained_s": drained_s, "gaps_open": sum(1 for g in gaps if g[2] == "open"),
            "missing": sum(x.missing for x in acc.values()), "duplicate": sum(x.duplicate for x in acc.values()),
            "db_copy": str(keep)}


def render(a, work, plan, faults, fault_log, disk_full_at, samples, up_samples, sup, result, duration, bucket_s) -> str:
    n_buckets = max(1, int((duration - 1e-9) // bucket_s) + 1)
    hours = [f"{b * bucket_s / 3600:.2f}–{min(duration, (b + 1) * bucket_s) / 3600:.2f} h" for b in range(n_buckets)]

    def b_of(off: float) -> int:
        return bucket_of(off, bucket_s, n_buckets)
    t0 = T0_WALL_MS
    gaps_b = gaps_per_bucket(result["gaps"], t0, bucket_s, n_buckets)
    miss_b = [0] * n_buckets
    for acc in result["accounts"].values():
        for ts in acc.missing_ts:
            miss_b[b_of((ts - t0) / 1000)] += 1
    svc_names = list(sup.services)
    rows = []
    for b in range(n_buckets + 1):
        sel = (lambda off: True) if b == n_buckets else (lambda off, b=b: b_of(off) == b)
        ups = [u for off, u in up_samples if sel(off)]
        restarts = sum(1 for s in sup.services.values() for t in s.restarts if sel(t))
        exits = Counter(c for s in sup.services.values() for t, c in s.exits if sel(t))
        fl = Counter(k for off, k in fault_log if sel(off))
        sm = [s for s in samples if sel(s[0])]
        go, gf = (gaps_b[b] if b < n_buckets else tuple(map(sum, zip(*gaps_b))))
        rows.append([hours[b] if b < n_buckets else "**total**",
                     f"{ups[-1] if ups else 0}/{len(svc_names)} "
                     f"({100 * sum(ups) / max(1, len(ups) * len(svc_names)):.0f} %)",
                     str(restarts), " ".join(f"{c}×{n}" for c, n in sorted(exits.items())) or "–",
                     str(fl.get("kill9", 0)), str(fl.get("disk_full", 0)),
                     str(sum(n for k, n in fl.items() if k not in ("kill9", "disk_full"))),
                     str(go), str(gf),
                     str(sum(miss_b) if b == n_buckets else miss_b[b]),
                     f"{max((s[2] for s in sm), default=0):.0f}", f"{max((s[3] for s in sm), default=0):.1f}",
                     f"{max((s[4] for s in sm), default=0):.1f}"])
    out = [f"# cqt soak: {a.hours} h, seed {a.seed}", "",
           f"- command: `{' '.join([sys.executable, *sys.argv])}`",
           f"- code: {ROOT} at {git_rev()}; services' lib: {', '.join(sorted({s.lib for s in sup.services.values()}))}",
           f"- workdir: {work} (logs/, fault-plan.json, a copy of the database: {result['db_copy']})",
           f"- started {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0 / 1000))}; {len(plan)} faults planned, "
           f"{sum(faults.values())} applied: " + ", ".join(f"{k} {n}" for k, n in sorted(faults.items())),
           "- drain after the faults: "
           f"{'%.0f s' % result['drained_s'] if result['drained_s'] is not None else 'NOT complete'}; "
           f"quick_check: {result['integrity']}; stop exit codes: "
           + " ".join(f"{n.removeprefix('cqt-')}={c}" for n, c in result["stop_codes"].items()),
           "", "## Per hour", "",
           markdown_table(["hour", "services up (uptime)", "restarts", "exit codes", "kill -9", "disk full",
                           "sim faults", "gaps opened", "gaps filled", "ids missing", "db MB", "WAL MB", "load"], rows),
           "", "Gaps counted by detection / fill time; missing ids by trade time; db/WAL: largest sample.", "",
           "## Resources per service (largest sample per hour: RSS MB / open fds / threads)", ""]
    res_rows = []
    for name in svc_names:
        cells = []
        for b in range(n_buckets):
            sm = [s[1][name] for s in samples if b_of(s[0]) == b and name in s[1]]
            cells.append(f"{max(x[0] for x in sm):.0f} / {max(x[1] for x in sm)} / {max(x[2] for x in sm)}"
                         if sm else "–")
        first = next((s[1][name] for s in samples if name in s[1]), None)
        last = next((s[1][name] for s in reversed(samples) if name in s[1]), None)
        trend = f"{first[0]:.0f} → {last[0]:.0f} MB, {first[1]} → {last[1]} fds" if first and last else "–"
        limit = "yes" if would_hit_start_limit(sup.services[name].restarts) else "no"
        res_rows.append([name, *cells, trend, str(len(sup.services[name].restarts)), limit])
    out += [markdown_table(["service", *hours, "first → last sample", "restarts", "systemd StartLimitBurst hit"],
                           res_rows), "",
            "## Trade ids per stream (window: first to last id the sim sent on the WebSocket)", ""]
    id_rows = []
    for key, x in result["accounts"].items():
        id_rows.append([key, f"{x.lo}…{x.hi}", str(x.expected), str(x.sent_ws), str(x.skipped), str(x.stored),
                        str(x.missing), str(x.duplicate), str(x.extra)])
    out += [markdown_table(["stream", "ids", "produced (model)", "sent on WS", "held back (gap fault)", "stored",
                            "missing", "duplicate", "extra"], id_rows), ""]
    for key, x in result["accounts"].items():
        if x.missing:
            out.append(f"- {key}: missing ids (first 20) {x.missing_sample}")
    g = Counter((s, stream, st) for s, stream, st, _, _, _, _ in result["gaps"])
    out += ["## Gaps by stream and status (order books, mark price, book ticker have no REST history: unfillable)", "",
            markdown_table(["source", "stream", "status", "gaps"],
                           [[s, stream, st, str(n)] for (s, stream, st), n in sorted(g.items())]), "",
            "Rows per table at the end: " + ", ".join(f"{t} {n:,}" for t, n in result["rows"].items()), ""]
    return "\n".join(out)


def git_rev() -> str:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                       timeout=10)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10).stdout.strip()
    return r.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


if __name__ == "__main__":
    sys.exit(main())
