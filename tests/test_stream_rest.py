"""cqt.rest.RestClient against a real cqt-sim: 429/418/5xx, timeouts, refusals, capture."""
from __future__ import annotations

import logging
import socket
import time

import pytest

from cqt.capture import CaptureWriter, iter_capture
from cqt.rest import RestClient
from simproc import start_sim

KEY = "cg-test-key-4f2a9c81d7"


@pytest.mark.timeout(60)
def test_rest_client_honours_limits_and_never_raises(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    cap = tmp_path / "rest.jsonl"
    with start_sim(tmp_path, "--seed", "3", "--binance-ban-seconds", "1") as sim:
        capture = CaptureWriter(cap, secrets=(KEY,))
        rc = RestClient(sim.urls["CQT_BINANCE_REST_URL"], name="binance_rest", timeout_s=0.5, capture=capture)
        r = rc.get("/fapi/v1/time")
        assert r.ok and "serverTime" in r.json() and r.elapsed_ms >= 0

        sim.fault("http_error", path="/fapi/v1/time", status=429, count=1, retry_after=1)
        r = rc.get("/fapi/v1/time")
        assert r.status == 429 and r.error.startswith("429") and not r.ok
        assert 0.5 < rc.rate.wait_s() <= 1.0
        t0 = time.monotonic()
        r = rc.get("/fapi/v1/time")                      # waits out Retry-After, then succeeds
        assert r.ok and time.monotonic() - t0 >= 0.8 and r.waited_s >= 0.8
        r2 = rc.get("/fapi/v1/time", wait=False)
        assert r2.ok

        sim.fault("http_error", path="/fapi/v1/time", status=418, count=1, retry_after=1)
        r = rc.get("/fapi/v1/time")
        assert r.status == 418 and rc.rate.banned and rc.rate.wait_s() >= 100   # >= Binance's 2-minute minimum
        r = rc.get("/fapi/v1/time", wait=False)          # no request while banned
        assert r.status is None and r.error.startswith("blocked")
        assert any("BANNED (418)" in m for m in caplog.messages)
        rc.rate.blocked_until = rc.rate.banned_until = 0.0   # the test does not wait two minutes

        sim.fault("http_error", path="/fapi/v1/time", status=503, count=2)
        assert rc.get("/fapi/v1/time").status == 503
        assert 0 <= rc.rate.wait_s() <= 1.0                 # first 5xx: jitter in [0, 1 s]
        r = rc.get("/fapi/v1/time")
        assert r.status == 503
        assert rc.get("/fapi/v1/time").ok and rc.rate.consecutive_errors == 0

        sim.fault("slow", path="/fapi/v1/time", seconds=2, count=1)
        r = rc.get("/fapi/v1/time")
        assert r.status is None and r.error == "timeout"
        rc.rate.blocked_until = 0.0

        cg = RestClient(sim.urls["CQT_COINGLASS_URL"], name="coinglass", timeout_s=5, capture=capture,
                        headers={"CG-API-KEY": KEY})
        r = cg.get("/api/futures/open-interest/aggregated-history", {"symbol": "BTC", "interval": "1h", "limit": 3})
        assert r.status == 200, r.text
        cg.close()
        rc.close()
        capture.close()

    with socket.socket() as s:                           # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = RestClient(f"http://127.0.0.1:{port}", name="binance_rest", timeout_s=1)
    r = dead.get("/fapi/v1/time")
    assert r.status is None and r.error == "connection refused" and 0 <= dead.rate.wait_s() <= 1.0

    text = cap.read_text()
    assert KEY not in text and KEY not in "\n".join(caplog.messages)
    recs = list(iter_capture(cap))
    assert {r["source"] for r in recs} == {"binance_rest", "coinglass"}
    assert {r["status"] for r in recs} >= {200, 429, 418, 503}
    assert all(set(r) >= {"recv_ts_ms", "source", "path", "params", "status", "raw"} for r in recs)
