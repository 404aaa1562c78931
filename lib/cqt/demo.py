"""`bin/cqt demo`: the whole pipeline against cqt-sim for a few minutes, no keys, no internet.

Starts cqt-sim (seeded, with an hour of history so the collectors backfill at once) serving
the assets of `--symbols` (default BTC,ETH), the four collectors, the aggregator, the
scheduler and the dashboard (on a free loopback port; `dashboard: URL` is printed) as
subprocesses pointed at it with CQT_SYMBOLS set to them, shows the rows arriving, then runs
the pipeline checks, an export and the report, and stops everything. Everything it writes
(database, dataset, report and plots, logs, the settings it used) goes under one directory.
Ctrl-C stops it in order at any moment (a second Ctrl-C kills what is left); nothing is left
running either way.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import click

from . import exitcodes
from .config import ROOT
from .export.request import nightly_export_name
from .timeutil import now_ms

COLLECTORS = ("cqt-collect-upbit", "cqt-collect-binance", "cqt-poll-binance", "cqt-poll-coinglass")
SERVICES = (*COLLECTORS, "cqt-aggregate", "cqt-scheduler")
DASHBOARD = "cqt-dashboard"
DASHBOARD_WAIT_S = 60.0
BACKFILL_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0          # per process group: SIGTERM, then SIGKILL (the runtime exits in < 8 s)
STEP_TIMEOUT_S = 300.0
# The one Coinglass key this demo's cqt-sim accepts (no secret: the sim is a local stand-in).
DEMO_KEY = "cqt-sim-demo-key"
# Short polling intervals so a few minutes show every source (the defaults suit production).
DEMO_SETTINGS = {
    "CQT_POLL_OI_S": "5",
    "CQT_POLL_RATIOS_S": "20",
    "CQT_POLL_PREMIUM_S": "10",
    "CQT_POLL_FUNDING_S": "60",
    "CQT_POLL_COINGLASS_S": "10",
    "CQT_HEARTBEAT_S": "5",
    "CQT_BACKFILL_S": "900",
    "CQT_LOG_LEVEL": "INFO",
    "CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_OI_CHG_300S": "1",
}
# The export's label horizon: 30 s, so even a 1-minute run has labelled rows (production: 120 s).
DEMO_HORIZON_S = 30
# Features whose look-back is longer than a demo: oi_chg_300s needs 5 minutes of open-interest
# polls, which no REST endpoint can backfill, so it is NULL for most of a short run. The export
# may leave it empty, and feature_check does not count its NULLs (its documented override).
DEMO_ALLOW_MISSING = ("oi_chg_300s",)
# (label, tables) shown on the progress line.
GROUPS = (
    ("upbit", ("upbit_trades", "upbit_orderbook", "upbit_ticker")),
    ("binance", ("binance_agg_trades", "binance_mark_price", "binance_book_ticker", "binance_liquidations")),
    ("rest", ("binance_open_interest", "binance_ratios", "binance_premium_index", "binance_funding_rate")),
    ("coinglass", ("coinglass_open_interest", "coinglass_funding", "coinglass_liquidations", "coinglass_long_short")),
    ("calls", ("coinglass_call_status",)),
    ("market_1s", ("market_1s",)),
    ("predictions", ("predictions",)),
)
ALL_TABLES = tuple(t for _, tables in GROUPS for t in tables)


class Interrupted(Exception):
    """Ctrl-C or SIGTERM: stop in order."""


# ------------------------------------------------------------------------------ processes
@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path
    exit_reported: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid


@dataclass
class Stopper:
    """Signal handling: the first Ctrl-C/SIGTERM asks for an orderly stop, a second one hurries."""
    requested: threading.Event = field(default_factory=threading.Event)
    hurry: threading.Event = field(default_factory=threading.Event)
    signal_name: str = ""

    def install(self) -> None:
        def handler(signum, _frame):
            if self.requested.is_set():
                self.hurry.set()
            self.signal_name = self.signal_name or signal.Signals(signum).name
            self.requested.set()
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def sleep(self, seconds: float) -> None:
        if self.requested.wait(seconds):
            raise Interrupted(self.signal_name)


def child_env(base: dict[str, str], settings: dict[str, str]) -> dict[str, str]:
    """The demo's environment: nothing from the caller's cqt settings or systemd leaks in."""
    env = {k: v for k, v in base.items()
           if not (k.startswith("CQT_") or k.startswith("COINGLASS_"))
           and k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "PYTHONPATH")}
    env.update(settings)
    return env


def start(name: str, args: list[str], env: dict[str, str], logs: Path, cwd: Path) -> Proc:
    prog = ROOT / "bin" / name
    log = logs / f"{name}.log"
    with open(log, "ab") as out:
        # Own process group: the terminal's Ctrl-C reaches the demo only, which stops them in order.
        p = subprocess.Popen([str(prog), *args], env=env, cwd=str(cwd), stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, p, log)


def _killpg(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_all(procs: list[Proc], stopper: Stopper | None = None,
             timeout: float = STOP_TIMEOUT_S) -> dict[str, int | None]:
    """SIGTERM every process, wait (bounded), SIGKILL each group still there. name -> exit code."""
    for pr in procs:
        if pr.popen.poll() is None:
            try:
                pr.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for pr in procs:
        while pr.popen.poll() is None and time.monotonic() < deadline:
            if stopper is not None and stopper.hurry.is_set():
                break
            time.sleep(0.05)
    for pr in procs:
        # Anything left in the group (the process itself if it did not stop, or a stray child).
        _killpg(pr.popen, signal.SIGKILL)
        try:
            pr.popen.wait(5)
        except subprocess.TimeoutExpired:
            pass
    return {pr.name: pr.popen.returncode for pr in procs}


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def run_step(title: str, args: list[str], env: dict[str, str], cwd: Path, log: Path, stopper: Stopper,
             show: bool = True, timeout: float = STEP_TIMEOUT_S) -> tuple[int, str]:
    """Run one program to completion (output kept in log and returned); Ctrl-C ends it in order."""
    click.echo(f"\n== {title}: {' '.join([Path(args[0]).name, *args[1:]])}")
    with open(log, "wb") as out:
        p = subprocess.Popen(args, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=out,
                             stderr=subprocess.STDOUT, start_new_session=True)
    proc = Proc(title, p, log)
    deadline = time.monotonic() + timeout
    try:
        while p.poll() is None:
            if stopper.requested.is_set():
                raise Interrupted(stopper.signal_name)
            if time.monotonic() > deadline:
                click.echo(f"   {title}: still running after {timeout:.0f} s: stopped")
                stop_all([proc])
                return exitcodes.FAIL, log.read_text(errors="replace")
            time.sleep(0.1)
    finally:
        if p.poll() is None:
            stop_all([proc], stopper)
    text = log.read_text(errors="replace")
    if show:
        for line in text.rstrip().splitlines():
            click.echo(f"   {line}")
    return p.returncode, text


# ------------------------------------------------------------------------------ progress
def count_rows(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return {}
    counts: dict[str, int] = {}
    try:
        for t in ALL_TABLES:
            try:
                counts[t] = conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            except sqlite3.Error:       # not created yet, or busy: try again next time
                pass
    finally:
        conn.close()
    return counts


def progress_line(counts: dict[str, int], left_s: float, up: int, total: int) -> str:
    parts = [f"{int(left_s) // 60}:{int(left_s) % 60:02d} left"]
    for label, tables in GROUPS:
        parts.append(f"{label} {sum(counts.get(t, 0) for t in tables):,}")
    parts.append(f"running {up}/{total}")
    return " | ".join(parts)


def table_summary(counts: dict[str, int]) -> str:
    width = max(len(t) for t in ALL_TABLES)
    return "\n".join(f"   {t:<{width}} {counts.get(t, 0):>10,}" for t in ALL_TABLES)


# ------------------------------------------------------------------------------ the demo
def default_dir() -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    data = ROOT / "data"
    try:
        data.mkdir(exist_ok=True)
        if os.access(data, os.W_OK):
            return data / f"demo-{stamp}"
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"cqt-demo-{stamp}"


def wait_ports_file(sim: Proc, path: Path, stopper: Stopper, timeout: float = 60.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass        # written atomically, but be patient anyway
        if sim.popen.poll() is not None:
            raise click.ClickException(f"cqt-sim exited with {sim.popen.returncode}: {tail(sim.log, 5)}")
        stopper.sleep(0.1)
    raise click.ClickException(f"cqt-sim did not write {path} within {timeout:.0f} s: {tail(sim.log, 5)}")


def backfilled(db: Path, backfill_s: int, now: int, assets: tuple[str, ...] = ("BTC",)) -> bool:
    """The collectors' first-start backfill is complete for every asset: its Binance aggTrade
    ids contiguous and reaching back the backfill span, its Upbit trades reaching back likewise."""
    if not db.exists():
        return False
    since = now - (backfill_s - 60) * 1000
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
        try:
            for asset in assets:
                n, lo, hi, first = conn.execute("SELECT count(*), min(agg_id), max(agg_id), min(trade_ts_ms) "
                                                "FROM binance_agg_trades WHERE symbol = ?",
                                                (f"{asset}USDT",)).fetchone()
                (up_first,) = conn.execute("SELECT min(trade_ts_ms) FROM upbit_trades WHERE code = ?",
                                           (f"KRW-{asset}",)).fetchone()
                if not (n and hi - lo + 1 == n and first <= since and up_first is not None and up_first <= since):
                    return False
        finally:
            conn.close()
    except sqlite3.Error:
        return False
    return True


def wait_backfilled(db: Path, procs: list[Proc], stopper: Stopper, assets: tuple[str, ...],
                    timeout: float = BACKFILL_TIMEOUT_S) -> None:
    """Until the collectors' backfill is in, bounded: the aggregator then starts on complete history."""
    deadline = time.monotonic() + timeout
    backfill_s = int(DEMO_SETTINGS["CQT_BACKFILL_S"])
    while time.monotonic() < deadline:
        if backfilled(db, backfill_s, now_ms(), assets):
            return
        for pr in procs:
            if pr.popen.poll() is not None and not pr.exit_reported:
                pr.exit_reported = True
                click.echo(f"!! {pr.name} exited with {pr.popen.returncode}: {tail(pr.log)}")
        stopper.sleep(0.5)
    click.echo(f"!! the collectors' backfill is not complete after {timeout:.0f} s: starting the aggregator anyway "
               f"(see {procs[0].log.parent})")


def write_env_file(path: Path, settings: dict[str, str]) -> None:
    lines = ["# Settings of this demo run (cqt-sim endpoints and demo key). Use them by hand with:",
             f"#   CQT_ENV_FILE={path} bin/cqt status"]
    lines += [f"{k}={v}" for k, v in settings.items() if k != "CQT_ENV_FILE"]
    old = os.umask(0o077)
    try:
        path.write_text("\n".join(lines) + "\n")
    finally:
        os.umask(old)


def collect(services: list[Proc], db: Path, duration_s: float, stopper: Stopper, tty: bool) -> dict[str, int]:
    """Show progress until the time is up; report services that exit."""
    start = time.monotonic()
    every = 1.0 if tty else 15.0
    last_print = -every
    counts: dict[str, int] = {}
    while True:
        elapsed = time.monotonic() - start
        left = max(0.0, duration_s - elapsed)
        for pr in services:
            code = pr.popen.poll()
            if code is not None and not pr.exit_reported:
                pr.exit_reported = True
                if tty:
                    click.echo()
                click.echo(f"!! {pr.name} exited with {code}: {tail(pr.log)}")
        if elapsed - last_print >= every or left <= 0:
            counts = count_rows(db)
            up = sum(pr.popen.poll() is None for pr in services)
            line = progress_line(counts, left, up, len(services))
            if tty:
                # one line, rewritten in place (\033[K clears what a longer line left behind)
                click.echo("\r" + line[:terminal_width()] + "\033[K", nl=False)
            else:
                click.echo(line)
            last_print = elapsed
        if left <= 0:
            break
        stopper.sleep(min(0.5, left))
    if tty:
        click.echo()
    return counts


def terminal_width() -> int:
    return max(40, shutil.get_terminal_size((150, 20)).columns - 1)


def free_port(address: str) -> int:
    """A port nothing listens on now (the demo's dashboard must not collide with a real one)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is an answer too."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def start_dashboard(env: dict[str, str], logs: Path, cwd: Path, stopper: Stopper) -> tuple[Proc, str]:
    """cqt-dashboard on a free loopback port; waits (bounded) until it answers, prints its URL."""
    address = "127.0.0.1"
    port = free_port(address)
    proc = start(DASHBOARD, ["--port", str(port), "--address", address], env, logs, cwd)
    url = f"http://{address}:{port}/"
    deadline = time.monotonic() + DASHBOARD_WAIT_S
    while time.monotonic() < deadline and proc.popen.poll() is None:
        try:
            if http_get(url + "_stcore/health", timeout=2)[0] == 200:
                break
        except OSError:
            pass
        stopper.sleep(0.3)
    else:
        click.echo(f"!! {DASHBOARD} is not answering on {url}: {tail(proc.log)}")
    click.echo(f"dashboard: {url}  (health: {url}healthz)")
    return proc, url


def healthz_line(url: str) -> str:
    """What /healthz says now, in one line."""
    try:
        code, body = http_get(url + "healthz")
    except OSError as exc:
        return f"/healthz: no answer ({exc})"
    try:
        answer = json.loads(body)
    except ValueError:
        return f"/healthz: {code} (not JSON)"
    reasons = "; ".join(answer.get("reasons") or [])
    return f"/healthz: {code} {answer.get('status')}" + (f" ({reasons})" if reasons else "")


def check_window(collected_s: float) -> int:
    """The checks judge the last N seconds: the demo's own span minus the start-up minute."""
    return int(max(30, min(600, collected_s - 45)))


@click.command("demo")
@click.option("--minutes", type=click.FloatRange(min=0.25), default=3.0, show_default=True,
              help="How long to collect before checking, exporting and reporting.")
@click.option("--dir", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where everything goes (default: a new data/demo-YYYYmmdd-HHMMSS, or under /tmp when "
                   "data/ is not writable). Must be new or empty.")
@click.option("--seed", type=int, default=7, show_default=True, help="cqt-sim's market model seed.")
@click.option("--symbols", default="BTC,ETH", show_default=True, metavar="LIST",
              help="Comma-separated base assets: cqt-sim serves them and the services run with CQT_SYMBOLS "
                   "set to them.")
@click.option("--seconds", type=click.FloatRange(min=10), default=None, hidden=True,
              help="Collect this many seconds instead of --minutes (tests).")
def demo(minutes: float, out_dir: Path | None, seed: int, symbols: str, seconds: float | None) -> None:
    """Run the whole pipeline against cqt-sim for a few minutes (no keys, no internet).

    cqt-sim, the four collectors, the aggregator, the scheduler and the dashboard (on a free
    loopback port, its URL printed) run as subprocesses; then the pipeline checks, an export and
    the report. Ctrl-C stops everything in order.
    Exit 0 when every step succeeded, 1 when one failed, 130 when interrupted.
    """
    from .sim.assets import parse_assets
    try:
        assets = parse_assets(symbols)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--symbols") from None
    duration = seconds if seconds is not None else minutes * 60
    out = (out_dir or default_dir()).absolute()
    if out.exists() and any(out.iterdir()):
        raise click.UsageError(f"--dir {out} is not empty: choose a new or empty directory")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    db = out / "cqt.db"
    report = out / "reports" / "step-alt-5.md"
    datasets = out / "datasets"
    datasets.mkdir()
    env_file = out / "demo.env"
    tty = sys.stdout.isatty()

    stopper = Stopper()
    stopper.install()
    procs: list[Proc] = []
    sim: Proc | None = None
    code = exitcodes.OK
    click.echo(f"cqt demo: {duration / 60:.1f} min against cqt-sim (seed {seed}, {','.join(assets)}); "
               f"everything goes to {out}")
    try:
        base = child_env(dict(os.environ), {"CQT_ENV_FILE": str(env_file), "MPLCONFIGDIR": str(out / ".cache")})
        ports = out / "sim-ports.json"
        sim = start("cqt-sim", ["--host", "127.0.0.1", "--port", "0", "--seed", str(seed), "--ports-file",
                                str(ports), "--history", "3600", "--coinglass-key", DEMO_KEY,
                                "--symbols", ",".join(assets)], base, logs, out)
        endpoints = wait_ports_file(sim, ports, stopper)
        settings = {k: v for k, v in endpoints.items() if k.startswith("CQT_")}
        settings.update({"CQT_DB": str(db), "CQT_REPORT": str(report), "CQT_DATASET_DIR": str(datasets),
                         "COINGLASS_ENABLED": "true", "COINGLASS_API_KEY": DEMO_KEY, "CQT_SYMBOLS": ",".join(assets),
                         **DEMO_SETTINGS})
        write_env_file(env_file, settings)
        env = {**base, **settings}
        click.echo(f"cqt-sim: {endpoints.get('CQT_BINANCE_REST_URL', '?')} (log: {sim.log})")
        for name in COLLECTORS:
            procs.append(start(name, [], env, logs, out))
        click.echo(f"started {', '.join(COLLECTORS)}; waiting for their backfill of the last "
                   f"{int(DEMO_SETTINGS['CQT_BACKFILL_S']) // 60} min")
        # The aggregator starts on complete history (seconds it writes before a backfill lands
        # would keep what was known then: the leak check would rightly flag them).
        wait_backfilled(db, procs, stopper, assets)
        for name in SERVICES[len(COLLECTORS):]:
            procs.append(start(name, [], env, logs, out))
        click.echo(f"started {', '.join(SERVICES[len(COLLECTORS):])} (logs: {logs})")
        dashboard, dashboard_url = start_dashboard(env, logs, out, stopper)
        procs.append(dashboard)
        t0 = time.monotonic()
        counts = collect(procs, db, duration, stopper, tty)
        collected_s = time.monotonic() - t0

        click.echo("\nrows per table:\n" + table_summary(counts))
        window = check_window(collected_s)
        checks_rc, _ = run_step("pipeline checks", [str(ROOT / "checks" / "run_pipeline_checks.sh"),
                                                    "--window", str(window)], env, out, logs / "checks.log", stopper)
        click.echo(f"   EXIT_CODE={checks_rc}")
        # One file per asset, named like the nightly's 1-hour exports, so the report's "1시간 Export"
        # table (BTC) and its per-asset table are filled.
        datasets_written, export_rc = [], 0
        for asset in assets:
            dataset = datasets / nightly_export_name(asset, "1h")
            rc, _ = run_step(f"export {asset}", [str(ROOT / "bin" / "cqt-export"), "--output", str(dataset),
                                                 "--symbol", asset, "--last", "1h", "--horizon", str(DEMO_HORIZON_S),
                                                 "--allow-missing", ",".join(DEMO_ALLOW_MISSING)],
                             env, out, logs / f"export-{asset.lower()}.log", stopper)
            datasets_written.append((asset, dataset))
            export_rc = max(export_rc, rc)
        click.echo(f"\n== dashboard {dashboard_url}\n   {healthz_line(dashboard_url)}")
        # Stop the services first, so the report shows this run's stop time and reasons.
        click.echo("\n== stopping the services")
        codes = stop_all(procs, stopper)
        procs = []
        click.echo("   " + "  ".join(f"{n}={c}" for n, c in codes.items()))
        report_rc, _ = run_step("report", [str(ROOT / "bin" / "cqt-report")], env, out, logs / "report.log", stopper)

        code = int(max(checks_rc != 0, export_rc != 0, report_rc != 0, any(c not in (0, None) for c in codes.values())))
        click.echo("\n== done")
        shown = [("dataset: ", path, f"export-{asset.lower()}.log") for asset, path in datasets_written]
        for label, path, log_name in shown + [("report:  ", report, "report.log")]:
            click.echo(f"   {label} {path if path.exists() else f'(not written: see {logs / log_name})'}")
        click.echo(f"   database: {db}")
        click.echo(f"   logs:     {logs}")
        click.echo(f"   look around: CQT_ENV_FILE={env_file} {ROOT}/bin/cqt status")
        click.echo(f"   checks {'PASS' if checks_rc == 0 else 'exit ' + str(checks_rc)}, "
                   f"export {'ok' if export_rc == 0 else 'exit ' + str(export_rc)}, "
                   f"report {'ok' if report_rc == 0 else 'exit ' + str(report_rc)}")
    except Interrupted:
        if tty:
            click.echo()
        click.echo(f"\ninterrupted ({stopper.signal_name}): stopping everything (Ctrl-C again to kill)")
        code = 130
    except click.ClickException:
        code = exitcodes.FAIL
        raise
    finally:
        leftovers = [*procs, *([sim] if sim else [])]
        if leftovers:
            codes = stop_all(leftovers, stopper)
            if code == 130:
                click.echo("   stopped: " + "  ".join(f"{n}={c}" for n, c in codes.items()))
                click.echo(f"   what was collected is in {out}")
    sys.exit(code)
