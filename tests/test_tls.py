"""TLS: which CA the collectors trust (CQT_CA_BUNDLE, then REQUESTS_CA_BUNDLE, then SSL_CERT_FILE),
that the configured one wins over the environment in requests, and that an untrusted
certificate is named as such. The end-to-end collector tests run over TLS themselves
(they import `start_tls_sim as start_sim`)."""
from __future__ import annotations

import ssl
import urllib.error
import urllib.request

import pytest
import websocket

from cqt.config import ConfigError, load_settings
from cqt.rest import RestClient
from helpers import cqt_env, run_bin
from simproc import make_test_certificates, start_tls_sim

SYSTEM_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def _settings(tmp_path, **env):
    return load_settings({"CQT_ENV_FILE": str(tmp_path / "none.env"), **env})


def test_ca_bundle_order_and_a_missing_file_is_a_setting_error(tmp_path):
    a, b, c = (tmp_path / n for n in ("a.pem", "b.pem", "c.pem"))
    for f in (a, b, c):
        f.write_text("x")
    assert _settings(tmp_path).ca_bundle is None
    assert _settings(tmp_path, SSL_CERT_FILE=str(c)).ca_bundle == str(c)
    assert _settings(tmp_path, SSL_CERT_FILE=str(c), REQUESTS_CA_BUNDLE=str(b)).ca_bundle == str(b)
    assert _settings(tmp_path, SSL_CERT_FILE=str(c), REQUESTS_CA_BUNDLE=str(b),
                     CQT_CA_BUNDLE=str(a)).ca_bundle == str(a)
    with pytest.raises(ConfigError, match="CQT_CA_BUNDLE.*not a readable certificate file"):
        _ = _settings(tmp_path, CQT_CA_BUNDLE=str(tmp_path / "missing.pem")).ca_bundle


def test_collectors_exit_78_naming_an_unreadable_bundle(tmp_path):
    env = cqt_env(tmp_path, CQT_CA_BUNDLE=str(tmp_path / "missing.pem"))
    for prog in ("cqt-collect-binance", "cqt-collect-upbit", "cqt-poll-binance"):
        r = run_bin(prog, env=env, timeout=60)
        assert r.returncode == 78, (prog, r.stderr[-2000:])
        assert "CQT_CA_BUNDLE" in r.stderr and "missing.pem" in r.stderr


@pytest.fixture(scope="module")
def tls_sim(tmp_path_factory):
    with start_tls_sim(tmp_path_factory.mktemp("tls-sim"), "--seed", "3", "--history", "30") as sim:
        yield sim


def test_sim_serves_tls_with_the_test_ca_only(tls_sim):
    urls = tls_sim.env()
    assert urls["CQT_UPBIT_REST_URL"].startswith("https://") and urls["CQT_BINANCE_WS_URL"].startswith("wss://")
    with urllib.request.urlopen(urls["CQT_UPBIT_REST_URL"] + "/v1/market/all", timeout=10,
                                context=tls_sim.ssl_context()) as r:
        assert r.status == 200
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):   # unknown to the system store
        urllib.request.urlopen(urls["CQT_UPBIT_REST_URL"] + "/v1/market/all", timeout=10,
                               context=ssl.create_default_context(cafile=SYSTEM_BUNDLE))
    ws = websocket.create_connection(urls["CQT_BINANCE_WS_URL"] + "/public/ws/btcusdt@bookTicker", timeout=10,
                                     sslopt={"ca_certs": urls["CQT_CA_BUNDLE"]})
    try:
        assert ws.recv()
    finally:
        ws.close()


def test_configured_bundle_beats_requests_environment_and_untrusted_is_named(tls_sim, monkeypatch):
    """requests lets REQUESTS_CA_BUNDLE override a Session's `verify`; RestClient passes its
    bundle with every request, so the configured CA is the one used."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", SYSTEM_BUNDLE)
    monkeypatch.setenv("CURL_CA_BUNDLE", SYSTEM_BUNDLE)
    base = tls_sim.env()["CQT_UPBIT_REST_URL"]
    with RestClient(base, name="upbit_rest", ca_bundle=tls_sim.env()["CQT_CA_BUNDLE"]) as trusted:
        r = trusted.get("/v1/market/all", wait=False)
        assert r.status == 200, r.error
    with RestClient(base, name="upbit_rest") as untrusted:
        r = untrusted.get("/v1/market/all", wait=False)
        assert r.status is None
        assert "certificate not trusted" in r.error and "CQT_CA_BUNDLE" in r.error


def test_certificates_are_made_once_per_directory(tmp_path):
    first = [p.read_bytes() for p in make_test_certificates(tmp_path)]
    assert [p.read_bytes() for p in make_test_certificates(tmp_path)] == first
