"""End to end: cqt-sim (with history) + all four collectors + cqt-aggregate for ~90 s, then the
operator's gate; then a stopped Binance collector and a removed Coinglass key are named.

Marked e2e (several processes, ~2.5 min): run alone with `pytest -m e2e tests/test_checks_e2e.py`.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from helpers import CHECKS, ROOT, cqt_env, query, run_bin, start_bin, stop_proc, wait_for

KEY = "cgE2Ekey-7d3a91f0c4b2-not-a-real-one"
COLLECT_S = float(os.environ.get("CQT_E2E_COLLECT_S", "90"))   # how long everything runs before the gate
COLLECTORS = ("cqt-collect-upbit", "cqt-collect-binance", "cqt-poll-binance", "cqt-poll-coinglass")


def _prerequisites() -> str | None:
    try:
        import simproc  # noqa: F401
        from cqt import aggregate, features  # noqa: F401
        from cqt.sim import cli  # noqa: F401
        from cqt.venues import binance, coinglass, upbit  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - another engineer's part is not there yet
        return f"pipeline not complete yet: {type(exc).__name__}: {exc}"
    return None


def _env(tmp_path, sim, **extra):
    return cqt_env(tmp_path, **sim.env(), CQT_HEARTBEAT_S="1", CQT_POLL_OI_S="2", CQT_POLL_RATIOS_S="2",
                   CQT_POLL_PREMIUM_S="2", CQT_POLL_FUNDING_S="4", CQT_POLL_COINGLASS_S="2",
                   CQT_COINGLASS_INTERVAL="1m", CQT_COINGLASS_RATE_PER_MIN="300", CQT_POLL_TIMEOUT_S="2",
                   COINGLASS_ENABLED="true", COINGLASS_API_KEY=KEY, CQT_BACKFILL_S="900", **extra)


def _gate(env, *args):
    cmd = f"bash {CHECKS / 'run_pipeline_checks.sh'} {' '.join(args)}; echo \"EXIT_CODE=$?\""
    return subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=120, cwd=str(ROOT))


@pytest.mark.e2e
@pytest.mark.timeout(300)
def test_pipeline_gate_end_to_end(tmp_path):
    why = _prerequisites()
    if why:
        pytest.skip(why)
    from simproc import start_sim

    db = tmp_path / "cqt.db"
    sim = start_sim(tmp_path, "--seed", "11", "--history", "3600", "--coinglass-key", KEY, "--coinglass-limit", "1000")
    env = _env(tmp_path, sim)
    t_start = time.monotonic()
    procs = {name: start_bin(name, env=env, log_path=tmp_path / f"{name}.log")
             for name in (*COLLECTORS, "cqt-aggregate")}

    def logs() -> str:
        return "\n".join(f"--- {n}\n" + (tmp_path / f"{n}.log").read_text(errors="replace")[-3000:] for n in procs)

    try:
        wait_for(lambda: query(db, "SELECT COUNT(*) FROM predictions")[0][0] >= 60, 120, what="60 s of predictions")
        time.sleep(max(0.0, COLLECT_S - (time.monotonic() - t_start)))   # ~90 s of collection in all
        for name, p in procs.items():
            assert p.poll() is None, f"{name} exited {p.returncode}\n{logs()}"

        p = _gate(env, "--window", "60")
        assert p.stdout.splitlines()[-1] == "EXIT_CODE=0", p.stdout + p.stderr + logs()
        assert query(db, "SELECT COUNT(*) FROM check_runs WHERE exit_code = 0")[0][0] == 5

        # -- the Binance collector stops: after 30 s its streams' lag is named
        assert stop_proc(procs.pop("cqt-collect-binance"), timeout=8) == 0
        time.sleep(30)
        r = run_bin("altdata_check", "--window", "60", env=env)
        assert r.returncode == 1, r.stdout
        assert "binance.BTCUSDT.aggTrade.lag_s" in r.stdout.splitlines()[-1]
        lag_line = next(ln for ln in r.stdout.splitlines() if ln.startswith("binance.BTCUSDT.aggTrade.lag_s "))
        assert lag_line.split()[3] == "FAIL" and float(lag_line.split()[1]) >= 25

        # -- the Coinglass key is removed: coinglass_check says so
        no_key = {**env, "COINGLASS_API_KEY": ""}
        r = run_bin("coinglass_check", "--window", "60", env=no_key)
        assert r.returncode == 1 and "coinglass.key 0 ==1 FAIL  (COINGLASS_API_KEY is missing" in r.stdout, r.stdout
        assert KEY not in r.stdout + r.stderr
    finally:
        for p in procs.values():
            stop_proc(p, timeout=8)
        sim.stop()
