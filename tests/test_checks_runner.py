"""run_pipeline_checks: the operator's gate — exit codes combine, check_runs filled, compact table."""
from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner
from freezegun import freeze_time

from cqt.checks import feature, runner
from cqt.timeutil import fmt_ms
from fixtures_checks import AS_OF, COINGLASS_OK_ENV, LEAK_ENV, make_pipeline_db
from helpers import CHECKS, ROOT, cqt_env, query

pytestmark = pytest.mark.timeout(120)
ENV = {**LEAK_ENV, **COINGLASS_OK_ENV, "CQT_CHECK_LEAK_SAMPLES": "10"}


@pytest.fixture(scope="module")
def db_template(tmp_path_factory):
    """Built once; each test gets a copy as `db` (conftest.py)."""
    return make_pipeline_db(tmp_path_factory.mktemp("runner") / "pipeline.db")


def gate(tmp_path, *args, **env):
    """The seed's command line, verbatim: bash run_pipeline_checks.sh ...; echo EXIT_CODE=$?"""
    cmd = f"bash {CHECKS / 'run_pipeline_checks.sh'} {' '.join(args)}; echo \"EXIT_CODE=$?\""
    return subprocess.run(["bash", "-c", cmd], env=cqt_env(tmp_path, **env), capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT))


def test_healthy_gate_exit_0_and_recorded(db, tmp_path):
    p = gate(tmp_path, "--window", "600", "--as-of", "2026-01-10T12:00:00Z", CQT_DB=str(db), **ENV)
    out = p.stdout.splitlines()
    assert out[-1] == "EXIT_CODE=0", p.stdout + p.stderr
    assert out[0].split() == ["check", "status", "exit", "ms", "detail"]
    assert [ln.split()[0] for ln in out[1:5]] == ["altdata_check", "feature_check", "feature_leak_check",
                                                  "coinglass_check"]
    assert all(ln.split()[1:3] == ["PASS", "0"] for ln in out[1:5])
    assert out[-2].startswith("run_pipeline_checks: PASS exit=0 (all 4 checks passed) window=600s")
    rows = query(db, "SELECT check_name, window_s, as_of_ts_ms, exit_code, summary_json FROM check_runs ORDER BY id")
    assert [r[0] for r in rows] == ["altdata_check", "feature_check", "feature_leak_check", "coinglass_check",
                                    "run_pipeline_checks"]
    assert {(r[1], r[2], r[3]) for r in rows} == {(600, AS_OF, 0)}
    s = json.loads(rows[0][4])
    assert s["status"] == "PASS" and s["failed"] == [] and s["metrics"] > 30
    assert json.loads(rows[-1][4])["checks"] == {"altdata_check": 0, "feature_check": 0, "feature_leak_check": 0,
                                                  "coinglass_check": 0}


def test_one_failing_check_names_what_is_wrong(db, tmp_path):
    env = {**ENV, "COINGLASS_API_KEY": ""}
    p = gate(tmp_path, "--window", "600", "--as-of", str(AS_OF), "--db", str(db), **env)
    assert p.stdout.splitlines()[-1] == "EXIT_CODE=1"
    assert "coinglass_check     FAIL              1" in p.stdout
    assert ("  coinglass_check: coinglass.key 0 ==1 FAIL  (COINGLASS_API_KEY is missing: put your key in .env)"
            in p.stdout)
    rows = dict(query(db, "SELECT check_name, exit_code FROM check_runs"))
    assert rows == {"altdata_check": 0, "feature_check": 0, "feature_leak_check": 0, "coinglass_check": 1,
                    "run_pipeline_checks": 1}
    failed = json.loads(query(db, "SELECT summary_json FROM check_runs WHERE check_name = 'coinglass_check'")[0][0])
    assert [m["name"] for m in failed["failed"]] == ["coinglass.key"]


def test_missing_database_and_misconfiguration(db, tmp_path):
    missing = tmp_path / "absent" / "cqt.db"
    p = gate(tmp_path, "--as-of", str(AS_OF), CQT_DB=str(missing), **ENV)
    assert p.stdout.splitlines()[-1] == "EXIT_CODE=3"
    assert "database not found" in p.stdout and "not recorded" in p.stderr and not missing.exists()
    # a bad threshold of one check: that check is misconfigured (78), the others still run
    p = gate(tmp_path, "--as-of", str(AS_OF), CQT_DB=str(db), **ENV, CQT_CHECK_COINGLASS_ERROR_RATIO_MAX="abc")
    assert p.stdout.splitlines()[-1] == "EXIT_CODE=78"
    assert dict(query(db, "SELECT check_name, exit_code FROM check_runs")) == {
        "altdata_check": 0, "feature_check": 0, "feature_leak_check": 0, "coinglass_check": 78,
        "run_pipeline_checks": 78}
    assert gate(tmp_path, "--windw", "600", CQT_DB=str(db)).stdout.splitlines()[-1] == "EXIT_CODE=2"


def invoke(args, env=None):
    return CliRunner().invoke(runner.main, args, env={"CQT_ENV_FILE": "/dev/null", **(env or ENV)})


def test_exit_codes_combine_highest_wins(db, monkeypatch):
    def broken(ctx):
        raise KeyError("column_that_moved")

    monkeypatch.setattr(feature, "evaluate", broken)
    r = invoke(["--db", str(db), "--as-of", str(AS_OF), "--json"], {**ENV, "COINGLASS_ENABLED": "false"})
    assert r.exit_code == 3, r.output
    d = json.loads(r.stdout)
    by = {c["check"]: c for c in d["checks"]}
    assert {k: v["exit_code"] for k, v in by.items()} == {"altdata_check": 0, "feature_check": 3,
                                                          "feature_leak_check": 0, "coinglass_check": 1}
    assert by["feature_check"]["error"].startswith("unexpected error in feature_check: KeyError: 'column_that_moved'")
    assert d["status"] == "NOT EVALUATED" and d["recorded"] is True
    assert dict(query(db, "SELECT check_name, exit_code FROM check_runs"))["run_pipeline_checks"] == 3


def test_default_as_of_is_now_and_one_window_for_all(db):
    with freeze_time(fmt_ms(AS_OF + 1_000)):
        r = invoke(["--db", str(db), "--window", "300"])
    assert r.exit_code == 0, r.output
    assert query(db, "SELECT DISTINCT as_of_ts_ms, window_s FROM check_runs") == [(AS_OF + 1_000, 300)]
