"""Service runtime: SIGTERM flushes and exits 0 fast; sd_notify READY/WATCHDOG; redaction."""
import os
import signal
import socket
import subprocess
import time

import pytest

from helpers import PY, ROOT, cqt_env, python_env, query, stop_proc, wait_for

PROG = str(ROOT / "tests" / "progs" / "runtime_prog.py")


def _start(tmp_path, **extra):
    ctl = tmp_path / "ctl"
    ctl.mkdir(exist_ok=True)
    env = cqt_env(tmp_path, **extra)
    env["PYTHONPATH"] = python_env()["PYTHONPATH"]
    p = subprocess.Popen([PY, PROG, str(ctl)], env=env, stderr=open(tmp_path / "err.log", "ab"),
                         start_new_session=True)
    return p, ctl


@pytest.mark.timeout(60)
def test_sigterm_commits_queued_rows_and_exits_0_fast(tmp_path):
    p, ctl = _start(tmp_path)
    try:
        wait_for(lambda: (ctl / "queued").exists() and int((ctl / "queued").read_text()) > 20_000, 30,
                 what="rows queued")
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        rc = p.wait(10)
        elapsed = time.monotonic() - t0
    finally:
        stop_proc(p)
    assert rc == 0, (tmp_path / "err.log").read_text()
    assert elapsed < 5
    queued = int((ctl / "queued").read_text())
    n = query(tmp_path / "cqt.db", "SELECT COUNT(*) FROM binance_agg_trades")[0][0]
    assert n == queued
    runs = query(tmp_path / "cqt.db", "SELECT exit_code, reason FROM service_runs WHERE service='test-service'")
    assert runs == [(0, "signal SIGTERM")]
    states = [r[0] for r in query(tmp_path / "cqt.db", "SELECT state FROM heartbeats ORDER BY ts_ms")]
    assert states[-1] == "stopped"


@pytest.mark.timeout(60)
def test_notify_ready_and_watchdog(tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sock_path)
    srv.settimeout(0.2)
    p, ctl = _start(tmp_path, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="600000", CQT_HEARTBEAT_S="0.5")
    got: list[tuple[float, str]] = []

    def drain(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                got.append((time.monotonic(), srv.recv(4096).decode()))
            except socket.timeout:
                pass

    try:
        drain(3)
        msgs = [m for _, m in got]
        assert any("READY=1" in m for m in msgs)
        assert sum("WATCHDOG=1" in m for m in msgs) >= 4       # every 0.3 s while alive
        # alive but no data: pings continue
        (ctl / "quiet").write_text("")
        got.clear()
        drain(2)
        assert sum("WATCHDOG=1" in m for _, m in got) >= 3
        # hung main loop: pings stop
        (ctl / "hang").write_text("")
        drain(0.8)                       # pings already in flight when the loop hung
        got.clear()
        drain(2)
        assert sum("WATCHDOG=1" in m for _, m in got) == 0
        (ctl / "hang").unlink()
        got.clear()
        drain(1.5)
        assert sum("WATCHDOG=1" in m for _, m in got) >= 2       # recovers when the loop does
        p.send_signal(signal.SIGTERM)
        p.wait(10)
        drain(0.5)
        assert any("STOPPING=1" in m for _, m in got)
    finally:
        stop_proc(p)
        srv.close()


@pytest.mark.timeout(60)
def test_secret_redacted_from_logs_events_and_rejects(tmp_path):
    key = "cg_9b1f0e7d3c5a2468"
    (tmp_path / "test.env").write_text(f"COINGLASS_ENABLED=true\nCOINGLASS_API_KEY={key}\n")
    p, ctl = _start(tmp_path, CQT_TEST_LOG_SECRET="1")
    try:
        wait_for(lambda: (ctl / "queued").exists(), 20, what="loop running")
    finally:
        stop_proc(p)
    err = (tmp_path / "err.log").read_text()
    assert "calling https://x/?key=*** failed" in err
    assert key not in err
    db = tmp_path / "cqt.db"
    for table in ("events", "rejects"):
        rows = query(db, f"SELECT * FROM {table}")
        assert rows and key not in repr(rows)
    raw = b"".join(f.read_bytes() for f in tmp_path.glob("cqt.db*"))
    assert key.encode() not in raw


@pytest.mark.timeout(60)
def test_priority_prefix_only_when_stderr_is_the_journal(tmp_path):
    """Under journald (JOURNAL_STREAM matches stderr) lines carry <N> so `journalctl -p warning` works."""
    log = tmp_path / "err.log"
    log.touch()
    st = os.stat(log)
    p, ctl = _start(tmp_path, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    try:
        wait_for(lambda: (ctl / "queued").exists(), 20, what="loop running")
    finally:
        stop_proc(p)
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    assert lines and all(ln.startswith("<") for ln in lines), lines[:3]
    assert any(ln.startswith("<6>INFO ") for ln in lines)
