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


@pytest.mark.timeout(30)
def test_rest_failures_log_once_per_state_change(caplog):
    """Per-call failures are DEBUG; a WARNING when calls start failing and one (with the
    count) when they recover; a 418 ban stays an ERROR."""
    import http.server
    import threading

    statuses = [200, 503, 503, 429, 500, 200, 200, 503, 200, 418, 200]

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            st = statuses.pop(0)
            body = b"{}"
            self.send_response(st)
            if st in (429, 418):
                self.send_header("Retry-After", "1")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    caplog.set_level(logging.DEBUG, logger="cqt.rest")
    rc = RestClient(f"http://127.0.0.1:{srv.server_address[1]}", name="binance_rest", timeout_s=2)
    try:
        got = []
        for _ in range(11):
            rc.rate.blocked_until = rc.rate.banned_until = 0.0      # the test does not wait out backoffs
            got.append(rc.get("/x").status)
            if _ == 4:
                assert rc.consecutive_failures == 4
    finally:
        rc.close()
        srv.shutdown()
        srv.server_close()
    assert got == [200, 503, 503, 429, 500, 200, 200, 503, 200, 418, 200]
    recs = [r for r in caplog.records if r.name == "cqt.rest"]
    warn = [r.getMessage() for r in recs if r.levelno == logging.WARNING]
    assert len(warn) == 5, warn          # failing, recovered (4), failing, recovered (1), recovered after 418 (1)
    assert warn[0].startswith("requests failing") and "status=503" in warn[0]
    assert warn[1].startswith("requests recovered") and "failed_calls=4" in warn[1]
    assert warn[3].startswith("requests recovered") and "failed_calls=1" in warn[3]
    assert [r for r in recs if r.levelno == logging.ERROR and "BANNED (418)" in r.getMessage()]
    assert len([r for r in recs if r.levelno == logging.DEBUG and r.getMessage().startswith("request failed")]) == 3
    assert rc.consecutive_failures == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("name", ["idle.jsonl", "idle.jsonl.gz"])
def test_idle_capture_reaches_the_file_within_a_second(tmp_path, name):
    """The last records before a quiet spell (e.g. a 418 ban) are flushed by the writer's
    own flusher, not only when a later record arrives."""
    import threading

    from cqt import capture as capmod
    path = tmp_path / name
    w = CaptureWriter(path, rotate=False)
    try:
        w.rest("binance_rest", "/fapi/v1/time", {}, 200, '{"serverTime":1}', 1_700_000_000_000)
        time.sleep(0.05)
        w.rest("binance_rest", "/fapi/v1/time", {}, 418, '{"code":-1003}', 1_700_000_000_100)   # then silence
        deadline = time.monotonic() + capmod.FLUSH_EVERY_S + 1.0
        seen = []
        while time.monotonic() < deadline:
            seen = list(iter_capture(path))         # the file as another process sees it
            if len(seen) == 2:
                break
            time.sleep(0.05)
        assert [r["status"] for r in seen] == [200, 418]
        assert time.monotonic() - deadline < 0
        # nothing flushed twice for nothing: the flusher sleeps while the file is clean
        n = len(path.read_bytes())
        time.sleep(capmod.FLUSH_EVERY_S * 1.2)
        assert len(path.read_bytes()) == n
    finally:
        w.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("capture-flush:") and t.is_alive()
                and name in t.name]
    assert [r["status"] for r in iter_capture(path)] == [200, 418]
