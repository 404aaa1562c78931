"""Coinglass's real error shapes (as public client code reports them) are classified like
the ones cqt-sim has always served: a plan refusal as HTTP 200 + {"code":"401","msg":"Upgrade
plan"} naming no interval, a bad key as HTTP 400 (or a body code "400") "Invalid API key
provided". Pure classification first, then one run of cqt-poll-coinglass against
`cqt-sim --coinglass-errors real` for each."""
from __future__ import annotations

import pytest

from cqt.checks.coinglass import explain
from cqt.config import load_settings
from cqt.rest import RestResponse
from cqt.venues.coinglass.poll import classify, error_kind, plan_advice
from cqt.venues.registry import rest_answer_outcome
from helpers import cqt_env, query, run_bin, start_bin, stop_proc, wait_for
from simproc import start_sim

NOW = 1_763_942_400_000
KEY = "cgTESTkey-4f1d9a7c2e8b-not-a-real-one"
PATH = "/api/futures/funding-rate/history"
PARAMS = {"exchange": "Binance", "symbol": "BTCUSDT", "interval": "1h"}
PLAN_BODY = '{"code":"401","msg":"Upgrade plan"}'
BAD_KEY_BODY = '{"code":"400","msg":"Invalid API key provided"}'


def _resp(status, body):
    return RestResponse(status, {}, body, 12, NOW, PATH, {}, None)


def _parsed(body):
    settings = load_settings({"CQT_ENV_FILE": "/dev/null"})
    return rest_answer_outcome("coinglass", PATH, PARAMS, body, NOW, None, settings, 200)


@pytest.mark.parametrize("status, code, msg, kind", [
    (200, "401", "Upgrade plan", "interval"),                     # real: names no interval
    (401, "401", "Upgrade plan: interval 1h is not available", "interval"),   # legacy sim
    (403, None, "permission denied for this endpoint", "endpoint"),
    (400, "400", "Invalid API key provided", "key"),              # real bad key, HTTP 400
    (200, "400", "Invalid API key provided", "key"),              # the same as a 200 body
    (401, "401", "Invalid API key", "key"),                       # legacy sim
    (200, "40001", "key expired", "key"),
    (400, "400", "symbol is required", None),
    (429, "429", "Upgrade plan for more requests", None),         # a rate limit stays a rate limit
    (503, None, "Invalid API key", None),
])
def test_error_kind(status, code, msg, kind):
    assert error_kind(status, code, msg, "1h") == kind


def test_http_400_invalid_key_is_a_key_rejection():
    ok, err, fail = classify(_resp(400, BAD_KEY_BODY), None, "1h")
    assert (ok, err, fail.reason) == (False, "400 key rejected", "400 key rejected")
    assert "COINGLASS_API_KEY" in fail.detail and not fail.disable
    _, err401, fail401 = classify(_resp(401, '{"code":"401","msg":"Invalid API key"}'), None, "1h")
    assert (fail.detail, fail.level, fail.retry_after_s, fail.exit_code) == \
        (fail401.detail, fail401.level, fail401.retry_after_s, fail401.exit_code)


def test_200_body_code_400_invalid_key_is_a_key_rejection():
    parsed = _parsed(BAD_KEY_BODY)
    assert parsed.reason == "api_error:400"
    _, err, fail = classify(_resp(200, BAD_KEY_BODY), parsed, "1h")
    assert err == "400 key rejected" and "COINGLASS_API_KEY" in fail.detail and not fail.disable


def test_200_body_code_401_upgrade_plan_stops_every_job_with_78():
    parsed = _parsed(PLAN_BODY)
    assert (parsed.reason, parsed.detail) == ("api_error:401", "Upgrade plan")
    ok, err, fail = classify(_resp(200, PLAN_BODY), parsed, "1h", "hobbyist")
    assert not ok and err == "interval not allowed by plan: Upgrade plan"
    assert fail.disable_all and fail.exit_code == 78
    assert "CQT_COINGLASS_INTERVAL" in fail.detail and "hobbyist plan (CQT_COINGLASS_PLAN) allows 4h and longer" \
        in fail.detail
    _, _, unknown = classify(_resp(200, PLAN_BODY), parsed, "1h")
    assert "Hobbyist 4h and longer" in unknown.detail and "Startup 30m" in unknown.detail


def test_plan_advice():
    assert plan_advice("startup", "5m") == "the startup plan (CQT_COINGLASS_PLAN) allows 30m and longer"
    assert plan_advice(None, "1h").startswith("plan limits: Hobbyist 4h and longer")
    # refused although the configured plan allows it: the key's plan is another one
    assert "the key's plan is not standard; plan limits: Hobbyist" in plan_advice("standard", "1h")


def test_explain_names_the_new_shapes():
    assert explain(400, "400 key rejected") == "400 from Coinglass: key rejected (400 key rejected)"
    assert explain(200, "interval not allowed by plan: Upgrade plan").startswith(
        "200 from Coinglass: the plan does not allow this interval")


def _env(tmp_path, sim, key):
    return cqt_env(tmp_path, **dict(sim.env(), CQT_HEARTBEAT_S="1", CQT_POLL_COINGLASS_S="2",
                                    CQT_COINGLASS_INTERVAL="1h", CQT_COINGLASS_RATE_PER_MIN="300",
                                    CQT_POLL_TIMEOUT_S="4", COINGLASS_ENABLED="true", COINGLASS_API_KEY=key,
                                    CQT_BACKFILL_S="600"))


@pytest.mark.e2e
@pytest.mark.timeout(40)
def test_real_bad_key_is_rejected_loudly_not_backed_off(tmp_path):
    sim = start_sim(tmp_path, "--history", "600", "--coinglass-key", KEY, "--coinglass-errors", "real")
    log = tmp_path / "poll.log"
    wrong = "cgWRONGkey-0a1b2c3d4e5f-not-the-sims"
    proc = start_bin("cqt-poll-coinglass", env=_env(tmp_path, sim, wrong), log_path=log)
    db = tmp_path / "cqt.db"
    try:
        wait_for(lambda: db.exists() and query(db, "SELECT COUNT(*) FROM coinglass_call_status")[0][0] >= 4, 15,
                 what="calls recorded")
        assert proc.poll() is None                   # a key may be re-enabled: no exit
    finally:
        code = stop_proc(proc)
        sim.stop()
    assert code == 0
    rows = query(db, "SELECT http_status, ok, error FROM coinglass_call_status")
    assert rows and all(r == (400, 0, "400 key rejected") for r in rows), rows
    text = log.read_text()
    assert "400 key rejected" in text and "check COINGLASS_API_KEY" in text and "ERROR" in text
    assert wrong not in text and wrong[:12] not in text


@pytest.mark.e2e
@pytest.mark.timeout(40)
def test_real_plan_refusal_stops_with_78_naming_the_variable(tmp_path):
    sim = start_sim(tmp_path, "--history", "600", "--coinglass-plan", "hobbyist", "--coinglass-errors", "real")
    try:
        r = run_bin("cqt-poll-coinglass", env=_env(tmp_path, sim, KEY), timeout=25)
    finally:
        sim.stop()
    assert r.returncode == 78, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("ERROR poll: stopped polling")]
    assert len(errors) == 1, r.stderr
    assert "interval 1h (Upgrade plan)" in errors[0] and "CQT_COINGLASS_INTERVAL" in errors[0] \
        and "Hobbyist 4h" in errors[0], r.stderr
    rows = query(tmp_path / "cqt.db", "SELECT http_status, ok, error FROM coinglass_call_status")
    assert 1 <= len(rows) <= 2
    assert all(r == (200, 0, "interval not allowed by plan: Upgrade plan") for r in rows), rows
    assert KEY not in r.stderr
