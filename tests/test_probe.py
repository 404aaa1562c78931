"""`cqt probe` against cqt-sim: all OK, and each fault or real-shaped refusal a FAIL naming its cause."""
from __future__ import annotations

import json

import pytest

from cqt.probe.explain import explain_error, explain_status
from cqt.probe.result import Item
from helpers import cqt_env, run_bin
from simproc import start_sim, start_tls_sim

KEY = "cg-live-key-7d1e5b93a04c"


def _probe(tmp_path, sim, *args: str, **env_extra: str):
    env = cqt_env(tmp_path, **sim.env(), COINGLASS_ENABLED="true", COINGLASS_API_KEY=KEY, **env_extra)
    r = run_bin("cqt", "probe", "--seconds", "1.5", *args, env=env, timeout=90)
    assert KEY not in r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r


def _items(r) -> list[dict]:
    return json.loads(r.stdout)["items"]


def _failed(r) -> dict[str, str]:
    """FAIL lines: name -> the rest of the line."""
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith("FAIL "):
            head, _, rest = line[5:].partition(": ")
            out[head] = rest
    return out


# ---------------------------------------------------------------------- pure parts
def test_explanations_name_cause_and_fix():
    cause, fix = explain_status("binance", 451)
    assert "restricted location" in cause and "permitted region" in fix
    cause, fix = explain_status("binance", 418, "120")
    assert "banned for 120 s" in cause
    cause, fix = explain_status("upbit", 429)
    assert "rate limited" in cause
    cause, fix = explain_error("binance", "tls certificate not trusted (set CQT_CA_BUNDLE to the issuing CA)")
    assert "CQT_CA_BUNDLE" in fix
    cause, fix = explain_error("upbit", "connection refused", ws=True)
    assert "CQT_UPBIT_WS_URL" in fix
    cause, fix = explain_error("coinglass", "timeout")
    assert "no answer in time" in cause and "CQT_COINGLASS_URL" in fix


def test_item_line_shows_counts_and_for_a_fail_cause_and_fix():
    ok = Item("binance", "rest /fapi/v1/openInterest BTCUSDT", True, frames=1, rows=1, latency_ms=3.2,
              note="weight used 2/min")
    assert ok.line() == ("OK   binance rest /fapi/v1/openInterest BTCUSDT: frames=1 rows=1 rejects=0 latency_ms=3 "
                         "(weight used 2/min)")
    bad = Item("upbit", "ws upbit", False, cause="connection refused", fix="check CQT_UPBIT_WS_URL")
    assert bad.line().endswith(": connection refused: check CQT_UPBIT_WS_URL")
    assert bad.as_dict()["status"] == "FAIL"


# ---------------------------------------------------------------------- against the sim
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_every_item_ok_over_tls(tmp_path):
    with start_tls_sim(tmp_path, "--seed", "3") as sim:
        r = _probe(tmp_path, sim, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    items = _items(r)
    assert all(it["status"] == "OK" for it in items), [it for it in items if it["status"] != "OK"]
    names = {(it["source"], it["name"]) for it in items}
    for want in [("upbit", "ws upbit KRW-BTC@trade"), ("upbit", "rest /v1/trades/ticks KRW-BTC"),
                 ("binance", "ws market BTCUSDT@aggTrade"), ("binance", "ws public BTCUSDT@bookTicker"),
                 ("binance", "rest /fapi/v1/exchangeInfo"),
                 ("binance", "rest /futures/data/takerlongshortRatio BTCUSDT"),
                 ("coinglass", "rest /api/futures/liquidation/aggregated-history BTC 1h")]:
        assert want in names, sorted(names)
    trades = next(it for it in items if it["name"] == "ws market BTCUSDT@aggTrade")
    assert trades["frames"] > 0 and trades["rows"] > 0 and trades["rejects"] == 0


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_restricted_location_fails_binance_and_an_allowed_interval_passes(tmp_path):
    with start_sim(tmp_path, "--binance-restricted-location", "--coinglass-errors", "real",
                   "--coinglass-plan", "hobbyist") as sim:
        r = _probe(tmp_path, sim, "--source", "binance", "--source", "coinglass",
                   CQT_COINGLASS_PLAN="hobbyist", CQT_COINGLASS_INTERVAL="4h")
    assert r.returncode == 1, r.stdout + r.stderr
    failed = _failed(r)
    assert "restricted location" in failed["binance ws market"]
    assert "restricted location" in failed["binance rest /fapi/v1/exchangeInfo"]
    assert "not sent (after http 451)" in failed["binance rest /fapi/v1/openInterest BTCUSDT"]
    assert not [k for k in failed if k.startswith("coinglass")], failed
    assert "OK   coinglass rest /api/futures/liquidation/aggregated-history BTC 4h" in r.stdout


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_plan_refusal_names_the_interval_to_set(tmp_path):
    with start_sim(tmp_path, "--coinglass-errors", "real", "--coinglass-plan", "hobbyist") as sim:
        r = _probe(tmp_path, sim, "--source", "coinglass")
    assert r.returncode == 1, r.stdout + r.stderr
    line = _failed(r)["coinglass rest /api/futures/liquidation/aggregated-history BTC 1h"]
    assert "1h refused by the plan" in line and "CQT_COINGLASS_INTERVAL" in line


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_bad_key_ban_and_rate_limit_are_named(tmp_path):
    with start_sim(tmp_path, "--coinglass-errors", "real", "--coinglass-key", "another-key-3a9f") as sim:
        sim.fault("http_error", path="/fapi/v1/openInterest", status=418, retry_after=120, count=1)
        sim.fault("http_error", path="/v1/trades/ticks", status=429, count=1)
        r = _probe(tmp_path, sim)
    assert r.returncode == 1, r.stdout + r.stderr
    failed = _failed(r)
    key_line = failed["coinglass rest /api/futures/open-interest/aggregated-history BTC 1h"]
    assert "400 key rejected" in key_line and "COINGLASS_API_KEY" in key_line
    assert "banned for 120 s" in failed["binance rest /fapi/v1/openInterest BTCUSDT"]
    assert "not sent (after http 418)" in failed["binance rest /fapi/v1/premiumIndex BTCUSDT"]
    assert "rate limited" in failed["upbit rest /v1/trades/ticks KRW-BTC"]
    assert "ws market BTCUSDT@aggTrade" not in " ".join(failed)      # the streams were fine


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_untrusted_certificate_unknown_symbol_and_bad_frames(tmp_path):
    with start_tls_sim(tmp_path) as sim:
        env = {k: v for k, v in sim.env().items() if k != "CQT_CA_BUNDLE"}
        r = run_bin("cqt", "probe", "--seconds", "1", "--source", "upbit",
                    env={**cqt_env(tmp_path, **env), "REQUESTS_CA_BUNDLE": "", "SSL_CERT_FILE": ""}, timeout=90)
    assert r.returncode == 1, r.stdout + r.stderr
    failed = _failed(r)
    assert "CQT_CA_BUNDLE" in failed["upbit ws upbit"] and "CQT_CA_BUNDLE" in failed["upbit rest /v1/market/all"]
    with start_sim(tmp_path, "--seed", "4") as sim:
        sim.fault("malformed", count=20, source="binance", kinds=["wrong_types"])
        r = _probe(tmp_path, sim, "--source", "binance", CQT_SYMBOLS="BTC,DOGE")
    assert r.returncode == 1, r.stdout + r.stderr
    failed = _failed(r)
    assert "DOGEUSDT" in failed["binance rest /fapi/v1/exchangeInfo"]
    assert "no frames" in failed["binance ws market DOGEUSDT@aggTrade"]
    assert "parser refused" in failed["binance ws market"] or "parser refused" in failed["binance ws public"]


@pytest.mark.timeout(60)
def test_bad_settings_exit_78(tmp_path):
    r = run_bin("cqt", "probe", "--source", "coinglass", env=cqt_env(tmp_path, COINGLASS_ENABLED="false"))
    assert r.returncode == 78, r.stdout + r.stderr
    assert "COINGLASS_ENABLED" in r.stderr
    r = run_bin("cqt", "probe", env=cqt_env(tmp_path, CQT_REST_TIMEOUT_S="abc"))
    assert r.returncode == 78 and "CQT_REST_TIMEOUT_S" in r.stderr
