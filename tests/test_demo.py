"""`bin/cqt demo`: a short run against cqt-sim with its default two assets (BTC,ETH) leaves
market_1s rows for each, a dataset and a filled report, and nothing running; Ctrl-C (SIGINT)
stops everything in order."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import BIN, ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not (k.startswith("CQT_") or k.startswith("COINGLASS_") or k in ("NOTIFY_SOCKET", "WATCHDOG_USEC"))}


def processes_using(path: Path) -> list[str]:
    """Live processes whose command line or environment mentions path (the demo gives every
    child its directory: the sim on the command line, the services through CQT_DB etc.)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (d / "environ").read_bytes().decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (str(path) in cmd or str(path) in env) and state != "Z":
            found.append(f"{d.name}: {cmd}")
    return found


def kill_leftovers(path: Path) -> None:
    """Teardown: whatever happened in the test, nothing the demo started survives it."""
    for entry in processes_using(path):
        try:
            os.kill(int(entry.split(":", 1)[0]), signal.SIGKILL)
        except OSError:
            pass


def child_pids(demo_dir: Path) -> list[int]:
    """PIDs the children wrote into the database (service_runs) - all must be gone."""
    import sqlite3
    db = demo_dir / "cqt.db"
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in conn.execute("SELECT pid FROM service_runs")]
    except sqlite3.OperationalError:       # created, not migrated yet: nobody has registered
        return []
    finally:
        conn.close()


def alive(pid: int) -> bool:
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


@pytest.mark.timeout(150)
def test_demo_leaves_a_dataset_and_a_report_and_nothing_running(tmp_path):
    out = tmp_path / "demo"
    t = time.monotonic()
    try:
        p = subprocess.run([str(BIN / "cqt"), "demo", "--seconds", "60", "--dir", str(out)], capture_output=True,
                           text=True, timeout=140, env=clean_env(), cwd=str(tmp_path))
        leftovers = processes_using(out)
    finally:
        kill_leftovers(out)              # even when the demo timed out
    elapsed = time.monotonic() - t
    print(p.stdout[-6000:], p.stderr[-3000:], f"elapsed {elapsed:.0f} s")
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    import pyarrow.parquet as pq
    datasets = {a: out / "datasets" / f"{a.lower()}_1h.parquet" for a in ("BTC", "ETH")}   # one file per asset
    for asset, dataset in datasets.items():
        assert pq.read_metadata(dataset).num_rows > 0, asset
        assert set(pq.read_table(dataset, columns=["symbol"]).column("symbol").to_pylist()) == {asset}
    report = out / "reports" / "step-alt-5.md"
    template = (ROOT / "lib" / "cqt" / "templates" / "step-alt-5.md").read_text()
    assert report.exists() and report.read_text() != template
    assert list((out / "reports").glob("*.png")), "no plots next to the report"
    for line in [f"dataset:  {d}" for d in datasets.values()] + ["report:   " + str(report), "EXIT_CODE=0"]:
        assert line in p.stdout
    # the dashboard ran beside the services on a loopback port, and /healthz agreed with the checks
    assert re.search(r"^dashboard: http://127\.0\.0\.1:\d+/ ", p.stdout, re.M), p.stdout[-3000:]
    assert re.search(r"^   /healthz: 200 ok$", p.stdout, re.M), p.stdout[-3000:]
    assert (out / "logs" / "cqt-collect-binance.log").stat().st_size > 0
    # the default assets (BTC,ETH): the sim served both and every stage ran per asset
    import sqlite3
    conn = sqlite3.connect(f"file:{out / 'cqt.db'}?mode=ro", uri=True, timeout=10)
    try:
        per_asset = dict(conn.execute("SELECT symbol, COUNT(*) FROM market_1s GROUP BY symbol").fetchall())
        trades = {r[0] for r in conn.execute("SELECT DISTINCT symbol FROM binance_agg_trades")}
        codes = {r[0] for r in conn.execute("SELECT DISTINCT code FROM upbit_trades")}
    finally:
        conn.close()
    assert set(per_asset) == {"BTC", "ETH"} and min(per_asset.values()) >= 30, per_asset
    assert trades == {"BTCUSDT", "ETHUSDT"} and codes == {"KRW-BTC", "KRW-ETH", "KRW-USDT"}
    assert (out / "demo.env").stat().st_mode & 0o077 == 0          # holds the (demo) key: 0600
    pids = child_pids(out)
    assert len(pids) >= 6 and not [x for x in pids if alive(x)]
    assert "cqt-dashboard=0" in p.stdout      # stopped by SIGTERM: exit 0
    assert not leftovers, leftovers


@pytest.mark.timeout(60)
def test_demo_ctrl_c_stops_everything_in_order(tmp_path):
    out = tmp_path / "demo"
    p = subprocess.Popen([str(BIN / "cqt"), "demo", "--minutes", "3", "--dir", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, env=clean_env(), cwd=str(tmp_path),
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(child_pids(out)) < 4:
            time.sleep(0.5)
        assert len(child_pids(out)) >= 4, "the collectors did not start"
        os.killpg(p.pid, signal.SIGINT)          # what the terminal's Ctrl-C does
        text, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        leftovers = processes_using(out)
        kill_leftovers(out)
    print(text[-3000:])
    assert not leftovers, leftovers
    assert p.returncode == 130, text[-3000:]
    assert "interrupted (SIGINT)" in text
    assert not [x for x in child_pids(out) if alive(x)]
    assert not processes_using(out), processes_using(out)
