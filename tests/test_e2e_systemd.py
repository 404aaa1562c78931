"""The real unit files under a service manager: install.sh --systemd --root, then
docker-systemctl-replacement (`systemctl3.py`, a test dependency) starts cqt.target.

CI has no systemd as PID 1. systemctl3 reads the installed unit files and runs them:
Type=notify (it waits for READY=1 on a notify socket), User=/Group= (really switched: the
units are rendered for the current user), EnvironmentFile=, WorkingDirectory=, KillMode=,
TimeoutStopSec=, and the unit's output into a per-unit journal file that its journalctl3
reads. Its documented limits, and how this test deals with them:
  - it restarts failed units only inside its own `init` loop: the test runs that loop as the
    supervisor for the kill -9 step (Restart=, RestartSec= and the StartLimit* of the units);
  - it ignores RestartPreventExitStatus=, WatchdogSec= and every sandboxing setting: those
    are covered by tests/test_systemd_units.py (systemd-analyze verify/security, the
    MemoryDenyWriteExecute emulation);
  - it prefixes WorkingDirectory=/EnvironmentFile= with --root unless they already start
    with it: the prefix is installed *inside* the root (--prefix ROOT/opt/cqt), so the same
    rendered paths work for ExecStart= (run as written) and for those.

Run alone: .venv/bin/pytest -q -m systemd
"""
from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import ROOT, start_bin, stop_proc, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.systemd, pytest.mark.slow, pytest.mark.timeout(240)]

SERVICES = ("cqt-collect-upbit.service", "cqt-collect-binance.service", "cqt-poll-binance.service",
            "cqt-poll-coinglass.service", "cqt-aggregate.service")
RAW_TABLES = ("upbit_trades", "upbit_orderbook", "upbit_ticker", "binance_agg_trades", "binance_mark_price",
              "binance_book_ticker", "binance_liquidations", "binance_open_interest", "binance_ratios",
              "binance_premium_index", "binance_funding_rate", "coinglass_open_interest", "coinglass_funding",
              "coinglass_liquidations", "coinglass_long_short")
DERIVED = ("market_1s", "predictions", "coinglass_call_status")
KEY = "e2e-test-key"
RESTART_SEC = 5.0            # the units' RestartSec=
TIMEOUT_STOP_SEC = 20.0      # the units' TimeoutStopSec=
COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "data", "reports", ".env", "__pycache__", ".pytest_cache", "tmp")


def systemctl3() -> list[str]:
    """systemctl3 through tests/systemctl_shim.py (READY=1 is enough: see there)."""
    try:
        import systemctl2.systemctl3  # noqa: F401
    except ImportError:
        pytest.skip("docker-systemctl-replacement is not installed in .venv (requirements.txt)")
    return [str(ROOT / ".venv" / "bin" / "python"), str(ROOT / "tests" / "systemctl_shim.py")]


def journalctl3() -> Path:
    for name in ("journalctl3.py", "journalctl3"):
        p = ROOT / ".venv" / "bin" / name
        if p.exists():
            return p
    pytest.skip("journalctl3 of docker-systemctl-replacement not found in .venv/bin")


def manager_env() -> dict[str, str]:
    """systemctl3 hands its own environment to the services: keep it as bare as systemd's."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": pwd.getpwuid(os.getuid()).pw_dir}


class Manager:
    def __init__(self, root: Path):
        self.root = root
        self.exe = systemctl3()

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([*self.exe, f"--root={self.root}", *args], capture_output=True, text=True,
                           timeout=timeout, env=manager_env(), cwd=str(self.root))
        if check:
            assert p.returncode == 0, f"systemctl {' '.join(args)} -> {p.returncode}\n{p.stdout}\n{p.stderr}"
        return p

    def state(self, unit: str) -> str:
        return self("is-active", unit, check=False).stdout.strip()

    def main_pid(self, unit: str) -> int | None:
        out = self("show", "-p", "MainPID", unit, check=False).stdout.strip()
        val = out.partition("=")[2]
        return int(val) if val.isdigit() and int(val) > 0 else None

    def journal(self, unit: str) -> str:
        p = subprocess.run([str(journalctl3()), "-u", unit, "--root", str(self.root), "--no-pager"],
                           capture_output=True,
                           text=True, timeout=30, env=manager_env())
        assert p.returncode == 0, p.stderr
        return p.stdout


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rows(db: Path, table: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def agg_ids(db: Path) -> list[int]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [r[0] for r in conn.execute("SELECT agg_id FROM binance_agg_trades ORDER BY agg_id")]
    finally:
        conn.close()


def checked(step: str, t0: float) -> None:
    print(f"[{time.monotonic() - t0:6.1f} s] {step}", flush=True)


def test_cqt_target_under_a_service_manager(tmp_path):
    t0 = time.monotonic()
    manager_root = tmp_path / "root"
    prefix = manager_root / "opt" / "cqt"
    prefix.mkdir(parents=True)
    (prefix / ".venv").symlink_to(ROOT / ".venv")      # offline and fast: the checkout's venv
    checkout = tmp_path / "checkout"
    shutil.copytree(ROOT, checkout, ignore=COPY_IGNORE, symlinks=True)
    (checkout / ".venv").symlink_to(ROOT / ".venv")
    me = pwd.getpwuid(os.getuid()).pw_name
    manager = Manager(manager_root)
    sim = None
    supervisor = None
    problems: list[str] = []
    try:
        # -- install.sh --systemd --root: units rendered for this user, no system change ------
        p = subprocess.run([str(checkout / "install.sh"), "--no-deps", "--systemd", "--root", str(manager_root),
                            "--prefix", str(prefix), "--user", me], capture_output=True, text=True, timeout=60,
                           env=manager_env())
        assert p.returncode == 0, p.stdout + p.stderr
        unit_dir = manager_root / "etc/systemd/system"
        assert f"User={me}\n" in (unit_dir / "cqt-collect-binance.service").read_text()
        assert f"Group={grp.getgrgid(os.getgid()).gr_name}\n" in (unit_dir / "cqt-collect-binance.service").read_text()
        checked("installed", t0)

        # -- cqt-sim, and the install's .env pointed at it ------------------------------------
        ports = tmp_path / "sim.json"
        sim = start_bin("cqt-sim", "--port", "0", "--seed", "11", "--ports-file", str(ports), "--history", "3600",
                        "--coinglass-key", KEY, "--coinglass-limit", "120", env=manager_env(),
                        log_path=tmp_path / "sim.log")
        endpoints = wait_for(lambda: ports.exists() and json.loads(ports.read_text()), 30, what="cqt-sim ports file")
        env_file = prefix / ".env"
        settings = {k: v for k, v in endpoints.items() if k.startswith("CQT_")}
        settings.update({
            "COINGLASS_ENABLED": "true", "COINGLASS_API_KEY": KEY,
            # polling intervals shortened for the test (the defaults suit production)
            "CQT_POLL_OI_S": "2", "CQT_POLL_RATIOS_S": "5", "CQT_POLL_PREMIUM_S": "5", "CQT_POLL_FUNDING_S": "30",
            "CQT_POLL_COINGLASS_S": "4", "CQT_COINGLASS_RATE_PER_MIN": "120", "CQT_HEARTBEAT_S": "2",
            # a 3-minute test cannot have the 5 minutes of open-interest polls oi_chg_300s needs
            "CQT_CHECK_NULL_RATE_MAX_PREDICTIONS_OI_CHG_300S": "1",
            # ... nor a 120 s label horizon on ~60 s of live data: the nightly export uses these defaults
            "CQT_EXPORT_HORIZON_S": "10", "CQT_EXPORT_ALLOW_MISSING": "oi_chg_300s",
        })
        extra = "".join(f"{k}={v}\n" for k, v in settings.items())
        env_file.write_text(env_file.read_text() + "\n# e2e test\n" + extra)
        db = prefix / "data" / "cqt.db"
        checked("cqt-sim up", t0)

        # -- systemctl start cqt.target -> every unit active -----------------------------------
        started = time.monotonic()
        manager("start", "cqt.target", timeout=150)
        states = {u: manager.state(u) for u in SERVICES}
        assert all(s == "active" for s in states.values()), states
        assert manager.state("cqt.target") == "active"
        checked(f"cqt.target started ({time.monotonic() - started:.0f} s)", t0)

        # The supervisor: systemctl3's init loop restarts failed units (Restart=, RestartSec=).
        supervisor = subprocess.Popen([*manager.exe, f"--root={manager_root}", "-c", "InitLoopSleep=1",
                                       "init", *SERVICES], stdout=open(tmp_path / "supervisor.log", "wb"),
                                      stderr=subprocess.STDOUT, env=manager_env(), cwd=str(manager_root),
                                      start_new_session=True)

        # -- after ~60 s: rows everywhere --------------------------------------------------------
        def sent_frames(stream: str) -> int:
            with urllib.request.urlopen(f"{endpoints['control']}/stats?ids=0&stream={stream}", timeout=5) as r:
                return sum(s["frames"] for s in json.loads(r.read())["streams"].values())

        def all_tables():
            empty = [t for t in RAW_TABLES + DERIVED if rows(db, t) == 0]
            # forceOrder is silent while nobody is liquidated: liquidations are due once the sim sent one
            if empty == ["binance_liquidations"] and sent_frames("btcusdt@forceOrder") == 0:
                return True
            return not empty
        wait_for(lambda: time.monotonic() - started >= 60, 61, interval=1, what="60 s of collection")
        try:
            wait_for(all_tables, 30, interval=1, what="rows in every table")
        finally:
            print({t: rows(db, t) for t in RAW_TABLES + DERIVED})
        checked("rows in every raw table, market_1s, predictions, coinglass_call_status", t0)

        # -- the operator's gate --------------------------------------------------------------
        run_env = {**manager_env(), "CQT_ENV_FILE": str(env_file)}
        p = subprocess.run([str(prefix / "checks" / "run_pipeline_checks.sh"), "--window", "45"], capture_output=True,
                           text=True, timeout=60, env=run_env)
        print(p.stdout, p.stderr)
        if p.returncode != 0:      # recorded; the scenario goes on so every later step is exercised too
            problems.append(f"run_pipeline_checks.sh --window 45: EXIT_CODE={p.returncode}\n{p.stdout}{p.stderr}")
        checked(f"run_pipeline_checks.sh --window 45: EXIT_CODE={p.returncode}", t0)

        # -- kill -9 a collector: running again within RestartSec + a few s, no lost agg ids ---
        unit = "cqt-collect-binance.service"
        old_pid = manager.main_pid(unit)
        assert alive(old_pid)
        before_ids = agg_ids(db)
        os.kill(old_pid, signal.SIGKILL)
        killed = time.monotonic()
        new_pid = wait_for(lambda: (pid := manager.main_pid(unit)) and pid != old_pid and alive(pid) and pid,
                           RESTART_SEC + 10, interval=0.25, what=f"{unit} restarted after kill -9")
        restart_s = time.monotonic() - killed
        wait_for(lambda: manager.state(unit) == "active", 20, interval=0.5, what=f"{unit} active again")
        checked(f"kill -9 {old_pid}: running again as {new_pid} after {restart_s:.1f} s", t0)
        # Every id the sim sent on the WebSocket (also while the collector was dead) is stored:
        # the collector resumed from its stored position and backfilled the rest over REST.
        with urllib.request.urlopen(endpoints["control"] + "/stats?stream=btcusdt@aggTrade", timeout=5) as r:
            sent = next(iter(json.loads(r.read())["streams"].values()))
        wait_for(lambda: agg_ids(db)[-1] >= sent["last_id"], 30, interval=1, what="aggTrades caught up after restart")
        # the restarted collector stores new trades (the market may be quiet for a moment: wait, bounded)
        wait_for(lambda: len(agg_ids(db)) > len(before_ids), 30, interval=1, what="new aggTrades after restart")
        ids = agg_ids(db)
        assert ids[-1] - ids[0] + 1 == len(ids), f"agg ids have holes: {len(ids)} rows for {ids[0]}..{ids[-1]}"
        assert ids[0] <= sent["first_id"] and sent["skipped"] == [], sent
        assert len(before_ids) < len(ids)
        checked("no lost agg ids", t0)

        # -- the nightly job through its unit (oneshot) ----------------------------------------
        manager("start", "cqt-nightly.service", timeout=120, check=False)
        journal = manager.journal("cqt-nightly.service")
        print(journal[-3000:])
        parquet = prefix / "data" / "datasets" / "btc_1h.parquet"
        if parquet.exists():
            import pyarrow.parquet as pq
            parquet_rows = pq.read_metadata(parquet).num_rows
        else:
            parquet_rows = 0
        if parquet_rows == 0:
            problems.append(
                f"cqt-nightly wrote no rows to {parquet.name}:\n{journal[-2000:]}")
        report = prefix / "reports" / "step-alt-5.md"
        assert report.exists(), journal[-2000:]
        text = report.read_text()
        template = (ROOT / "lib" / "cqt" / "templates" / "step-alt-5.md").read_text()
        assert text != template and "btc_1h.parquet" in text
        checked(f"cqt-nightly: {parquet.name} rows={parquet_rows}, report filled", t0)

        # -- stop: the supervisor first (it would stop everything on its own SIGTERM) --------------
        os.killpg(supervisor.pid, signal.SIGKILL)
        supervisor.wait(10)
        stopping = time.monotonic()
        manager("stop", "cqt.target", timeout=TIMEOUT_STOP_SEC * len(SERVICES) + 10)
        stop_s = time.monotonic() - stopping
        pids = {u: manager.main_pid(u) for u in SERVICES}
        states = {u: manager.state(u) for u in SERVICES}
        assert all(s in ("inactive", "unknown") for s in states.values()), states
        assert stop_s < TIMEOUT_STOP_SEC, f"stop took {stop_s:.1f} s"
        assert not any(alive(p) for p in pids.values() if p), pids
        checked(f"cqt.target stopped in {stop_s:.1f} s", t0)
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            # every process that was stopped (not the one killed -9) recorded a clean exit
            runs = conn.execute("SELECT service, pid, exit_code, reason FROM service_runs "
                                "WHERE stop_ts_ms IS NOT NULL ORDER BY start_ts_ms").fetchall()
            last = {svc: (pid, code, reason) for svc, pid, code, reason in runs}
        finally:
            conn.close()
        for u in SERVICES:
            name = u.removesuffix(".service")
            assert name in last and last[name][1] == 0, (name, last.get(name))
        assert last["cqt-collect-binance"][0] == new_pid
        checked("integrity_check ok, exit statuses 0", t0)

        # -- the units' journal through journalctl3 ----------------------------------------------
        text = manager.journal("cqt-collect-binance.service")
        assert "ready" in text and "stopping on SIGTERM" in text, text[-2000:]
        assert KEY not in text
        assert not problems, "\n\n".join(problems)
    finally:
        if supervisor is not None and supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait(10)
        if (manager_root / "etc/systemd/system").exists():
            manager("stop", "cqt.target", timeout=150, check=False)
            for u in SERVICES:                     # belt and braces: nothing may outlive the test
                pid = manager.main_pid(u)
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        if sim is not None:
            stop_proc(sim)
