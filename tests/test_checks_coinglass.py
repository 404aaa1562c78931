"""coinglass_check: enabled, key, calls per endpoint, explanations; the key is never printed."""
from __future__ import annotations

import json

import pytest

from cqt.checks.coinglass import enabled_endpoints, explain
from cqt.venues.coinglass import call_endpoint
from fixtures_checks import AS_OF, CG_PATHS, COINGLASS_OK_ENV, execute, failed_names, make_healthy_db, metric, run
from helpers import cqt_env, run_bin

pytestmark = pytest.mark.timeout(60)
KEY = COINGLASS_OK_ENV["COINGLASS_API_KEY"]
BTC_EPS = tuple(call_endpoint(p, "BTC") for p in CG_PATHS)   # what the poller records


@pytest.fixture(scope="module")
def db_template(tmp_path_factory):
    """Built once; each test gets a copy as `db` (conftest.py)."""
    return make_healthy_db(tmp_path_factory.mktemp("cg") / "healthy.db", derived=False)


def test_endpoints_are_the_pollers_paths():
    assert sorted(p for _, p in enabled_endpoints()) == sorted(CG_PATHS)


def test_healthy(db):
    res = run("coinglass_check", db, **COINGLASS_OK_ENV)
    assert res.exit_code == 0, res.text()
    assert metric(res, "coinglass.BTC.open_interest.ok_calls").value == 10
    assert metric(res, "coinglass.BTC.funding.last_ok_age_s").value == pytest.approx(54.75, abs=0.1)
    assert KEY not in res.text() and KEY not in res.to_json()


@pytest.mark.parametrize("env, reason", [
    ({}, "COINGLASS_ENABLED is not set (default false)"),
    ({"COINGLASS_ENABLED": "false"}, "COINGLASS_ENABLED is 'false'"),
    ({"COINGLASS_ENABLED": "True"}, "it must be exactly 'true'"),
    ({"COINGLASS_ENABLED": "1"}, "it must be exactly 'true'"),
])
def test_enabled_must_be_exactly_true(db, env, reason):
    res = run("coinglass_check", db, COINGLASS_API_KEY=KEY, **env)
    assert failed_names(res) == ["coinglass.enabled"]
    assert reason in metric(res, "coinglass.enabled").reason


@pytest.mark.parametrize("key, state",
                         [("", "missing"), ("your_api_key_here", "placeholder"), ("<REAL_KEY>", "placeholder")])
def test_key_missing_or_placeholder(db, tmp_path, key, state):
    res = run("coinglass_check", db, COINGLASS_ENABLED="true", COINGLASS_API_KEY=key)
    assert failed_names(res) == ["coinglass.key"]
    assert f"COINGLASS_API_KEY is {'a ' if state == 'placeholder' else ''}{state}" in metric(res,
                                                                                             "coinglass.key").reason
    if key:
        assert key not in res.text()


def test_key_rejected_is_explained(db):
    execute(db, "UPDATE coinglass_call_status SET ok = 0, http_status = 401, rows = 0, error = '401 key rejected' "
                "WHERE endpoint = ? AND ts_ms > ?", (BTC_EPS[1], AS_OF - 600_000))
    res = run("coinglass_check", db, **COINGLASS_OK_ENV)
    assert set(failed_names(res)) == {"coinglass.BTC.funding.ok_calls", "coinglass.BTC.funding.last_ok_age_s",
                                      "coinglass.error_ratio"}
    ok = metric(res, "coinglass.BTC.funding.ok_calls")
    assert ok.value == 0 and "401 from Coinglass: key rejected" in ok.reason
    assert "10 of 40 calls failed: 401 from Coinglass: key rejected" in metric(res, "coinglass.error_ratio").reason
    # the newest success is the last call before the window: older than the 600 s limit
    age = metric(res, "coinglass.BTC.funding.last_ok_age_s")
    assert 600 < age.value < 700 and age.reason.startswith("last success 2026-01-10T11:49")


def test_no_calls_recorded(db):
    execute(db, "DELETE FROM coinglass_call_status WHERE ts_ms > ?", (AS_OF - 900_000,))
    res = run("coinglass_check", db, **COINGLASS_OK_ENV)
    ok = metric(res, "coinglass.BTC.open_interest.ok_calls")
    assert ok.status == "FAIL" and ok.reason == "no calls recorded in 600 s: is cqt-poll-coinglass running?"
    assert metric(res, "coinglass.error_ratio").reason == ok.reason
    age = metric(res, "coinglass.BTC.open_interest.last_ok_age_s")
    assert age.status == "FAIL" and age.value > 900


def test_one_endpoint_silent_and_error_mix(db):
    execute(db, "DELETE FROM coinglass_call_status WHERE endpoint = ?", (BTC_EPS[2],))
    execute(db, "INSERT INTO coinglass_call_status (ts_ms, endpoint, http_status, ok, rows, error) VALUES "
                "(?, ?, 429, 0, 0, '429 rate limited'), (?, ?, NULL, 0, 0, 'timeout')",
            (AS_OF - 100_000, BTC_EPS[0], AS_OF - 90_000, BTC_EPS[0]))
    res = run("coinglass_check", db, **COINGLASS_OK_ENV)
    assert set(failed_names(res)) == {"coinglass.BTC.liquidations.ok_calls", "coinglass.BTC.liquidations.last_ok_age_s"}
    assert "no calls to /api/futures/liquidation/aggregated-history" in metric(res,
                                                                               "coinglass.BTC.liquidations.ok_calls").reason
    er = metric(res, "coinglass.error_ratio")
    assert er.value == pytest.approx(2 / 32, abs=1e-4)
    res = run("coinglass_check", db, CQT_CHECK_COINGLASS_ERROR_RATIO_MAX="0.05", **COINGLASS_OK_ENV)
    assert "429 from Coinglass: rate limit" in metric(res, "coinglass.error_ratio").reason
    assert "no answer from Coinglass: timeout" in metric(res, "coinglass.error_ratio").reason


def test_one_coin_configured_reads_the_bare_paths_of_older_rows(db):
    """Rows written before the poller named the coin have the bare path: with one coin
    configured they count for it; with several they belong to none."""
    execute(db, "UPDATE coinglass_call_status SET endpoint = substr(endpoint, 1, instr(endpoint, '?') - 1) "
                "WHERE endpoint LIKE ?", (CG_PATHS[1] + "%",))
    res = run("coinglass_check", db, **COINGLASS_OK_ENV)
    assert res.exit_code == 0, res.text()
    assert metric(res, "coinglass.BTC.funding.ok_calls").value == 10
    res = run("coinglass_check", db, CQT_SYMBOLS="BTC,ETH", **COINGLASS_OK_ENV)
    assert metric(res, "coinglass.BTC.funding.ok_calls").status == "FAIL"
    assert "no calls to /api/futures/funding-rate/history for BTC" in metric(res,
                                                                             "coinglass.BTC.funding.ok_calls").reason
    assert metric(res, "coinglass.BTC.open_interest.ok_calls").status == "PASS"


def test_explain():
    assert explain(401, None) == "401 from Coinglass: key rejected"
    assert explain(403, "x").startswith("403 from Coinglass: the plan does not allow")
    assert explain(503, None) == "503 from Coinglass: server error"
    assert explain(200, "bad answer: not json") == "Coinglass answered with an error (bad answer: not json)"


def test_program(db, tmp_path):
    env = cqt_env(tmp_path, CQT_DB=str(db), **COINGLASS_OK_ENV)
    p = run_bin("coinglass_check", "--window", "600", "--as-of", str(AS_OF), "--json", env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout)["status"] == "PASS" and KEY not in p.stdout + p.stderr
    env = cqt_env(tmp_path, CQT_DB=str(db), COINGLASS_ENABLED="true")
    p = run_bin("coinglass_check", "--as-of", str(AS_OF), env=env)
    assert p.returncode == 1 and "coinglass.key 0 ==1 FAIL  (COINGLASS_API_KEY is missing" in p.stdout
