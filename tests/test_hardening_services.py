"""Services never run on as zombies, secrets are masked before any cut, one instance per
program and database."""
import logging
import os
import signal
import socket
import sqlite3
import string
import subprocess
import textwrap
import time

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from cqt import exitcodes, redact as credact, sinks, writer
from cqt.config import load_settings
from cqt.instance import InstanceLock, lock_path
from cqt.runtime import Service
from helpers import PY, cqt_env, python_env, query, start_bin, stop_proc, wait_for

SQL = "INSERT OR IGNORE INTO binance_agg_trades VALUES (?,?,?,?,?,?,?,?,?,?)"
KEY = "cg_9b1f0e7d3c5a24681357"


def trade(i, agg_id=None):
    return ("BTCUSDT", i if agg_id is None else agg_id, 1, 1.0, 1.0, "buy", 0, 0, None, 1)


def leaked_pieces(text, key, piece=credact.FRAGMENT_MIN):
    """Substrings of `key` at least `piece` long (the whole key if shorter) found in `text`."""
    n = min(piece, len(key))
    return [key[i:i + n] for i in range(len(key) - n + 1) if key[i:i + n] in text]


# ------------------------------------------------------------------------------ masking, then cutting
def test_reject_with_key_across_the_cut_stores_no_piece_of_it(tmp_path):
    w = writer.BatchWriter(tmp_path / "cqt.db")
    rejects = sinks.RejectLog(w, secrets=(KEY,), max_raw_bytes=4096)
    events = sinks.EventLog(w, "svc", secrets=(KEY,))
    # The key starts 10 characters before the 4 096-character cut (and the 500 of events).
    rejects.record("binance_ws", "bad_frame", "x" * 4086 + KEY + "tail")
    events.record("WARNING", "y" * 490 + KEY)
    assert w.close()
    raw = query(tmp_path / "cqt.db", "SELECT raw FROM rejects")[0][0]
    message = query(tmp_path / "cqt.db", "SELECT message FROM events")[0][0]
    assert len(raw) <= 4096 and raw.startswith("x" * 4086)
    assert leaked_pieces(raw, KEY) == [] and leaked_pieces(message, KEY) == []
    assert KEY[:8].encode() not in b"".join(p.read_bytes() for p in tmp_path.glob("cqt.db*"))


def test_text_cut_upstream_has_the_key_prefix_masked():
    assert credact.redact("failed: https://x/?key=" + KEY[:12], [KEY]) == "failed: https://x/?key=***"
    assert credact.redact(KEY[-9:] + " rest", [KEY]) == "*** rest"
    assert credact.redact("ab " + KEY[:7], [KEY]) == "ab " + KEY[:7]       # 7 characters prove nothing
    assert credact.redact("pw=abc1 abc1", ["abc1"], limit=6) == "pw=***"   # short secrets: whole only


KEY_ALPHABET = string.ascii_letters + string.digits + "_-"


@hsettings(max_examples=150, deadline=None)
@given(key=st.text(KEY_ALPHABET, min_size=4, max_size=48),
       before=st.text(KEY_ALPHABET + " =&?/\n", max_size=300),
       after=st.text(KEY_ALPHABET + " =&?/\n", max_size=300),
       upstream_cut=st.integers(min_value=0, max_value=48),
       limit=st.one_of(st.none(), st.integers(min_value=0, max_value=700)))
def test_redact_never_leaves_a_piece_of_the_key(key, before, after, upstream_cut, limit):
    text = before + key + after
    cut_early = (before + key)[: len(before) + upstream_cut]   # the caller cut inside the key
    for sample in (text, cut_early, text * 3):
        out = credact.redact(sample, [key], limit=limit)
        assert leaked_pieces(out, key) == []
        if limit is not None:
            assert len(out) <= limit
            # A long text is masked by growing heads: the result is the whole text's, cut.
            assert out == credact.redact(sample, [key])[:limit]


# ------------------------------------------------------------------------------ the writer
def test_writer_commits_the_good_rows_and_drops_only_the_one_it_cannot_bind(tmp_path, caplog):
    failures = []
    w = writer.BatchWriter(tmp_path / "cqt.db", on_fatal=failures.append, secrets=(KEY,))
    w.put_many(SQL, [trade(i) for i in range(10)])
    w.put(SQL, (KEY, 2 ** 64, 1, 1.0, 1.0, "buy", 0, 0, None, 1))          # beyond SQLite's 64 bits
    w.put_many(SQL, [trade(i) for i in range(100, 105)] + [trade(0, agg_id=2 ** 70)])
    with caplog.at_level(logging.ERROR, logger="cqt.db"):
        assert w.flush(10)
        w.put(SQL, trade(500))                       # writes go on while the service stops
        assert w.close()
    assert [type(e) for e in failures] == [OverflowError]
    assert w.failure is failures[0] and w.fatal is None
    assert w.stats()["dropped_rows"] == 2 and w.stats()["committed_rows"] == 16
    assert query(tmp_path / "cqt.db", "SELECT COUNT(*) FROM binance_agg_trades")[0][0] == 16
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 2 and all("OverflowError" in ln for ln in lines)
    assert KEY not in caplog.text and "'***', 18446744073709551616" in lines[0]


def test_writer_thread_death_is_fatal_and_reported(tmp_path):
    failures = []
    w = writer.BatchWriter(tmp_path / "cqt.db", on_fatal=failures.append)

    def broken(batch, nrows):
        raise MemoryError("injected")

    w._commit = broken          # a failure outside any statement: the thread itself goes down
    w.put(SQL, trade(1))
    wait_for(lambda: failures, 10, interval=0.02, what="on_fatal called")
    assert isinstance(w.fatal, MemoryError)
    assert w.healthy(stall_s=60)[0] is False
    with pytest.raises(RuntimeError, match="writer stopped"):
        w.put(SQL, trade(2))
    w.close(timeout=1)


# ------------------------------------------------------------------------------ watchdog verdict
class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def service(tmp_path, monkeypatch):
    for k in list(os.environ):
        if k.startswith(("CQT_", "COINGLASS_")) or k in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
            monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("CQT_ENV_FILE", str(tmp_path / "none.env"))
    clock = FakeClock()
    root = logging.getLogger()
    handlers = list(root.handlers)
    svc = Service("test-service", load_settings(db=str(tmp_path / "cqt.db")), clock=clock)
    svc.notifier.watchdog_s = 10.0
    yield svc, clock
    svc.finish(0)
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)


def test_watchdog_withheld_while_the_writer_is_stuck_or_dead(service, tmp_path):
    svc, clock = service
    assert svc.watchdog_verdict() == (True, "")
    clock.t += 3600                               # idle writer, loop alive: pings go on
    svc.alive()
    assert svc.watchdog_verdict() == (True, "")

    # Another connection holds the write lock: rows queue up and nothing commits.
    blocker = sqlite3.connect(tmp_path / "cqt.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        svc.writer.put(SQL, trade(1))
        wait_for(lambda: svc.writer.pending() and svc.writer.stats()["queue_depth"] == 0, 5, interval=0.02,
                 what="row taken by the writer")
        clock.t += 5
        svc.alive()
        assert svc.watchdog_verdict() == (True, "")          # within one period: still fine
        clock.t += 6
        svc.alive()
        ok, why = svc.watchdog_verdict()
        assert not ok and "no progress for 11 s" in why
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert svc.writer.flush(15)
    clock.t += 1
    svc.alive()
    assert svc.watchdog_verdict() == (True, "")

    svc.writer.close()                                        # the writer thread is gone
    ok, why = svc.watchdog_verdict()
    assert not ok and "writer thread is not running" in why


def test_watchdog_withheld_when_a_worker_thread_died(service):
    svc, _clock = service
    svc.spawn("worker", lambda: 1 / 0)
    wait_for(lambda: svc.exit_code is not None, 5, interval=0.02, what="worker failure noticed")
    assert svc.exit_code == exitcodes.FAIL and "worker thread failed: ZeroDivisionError" in svc.stop_reason
    assert svc.stopping.is_set()
    ok, why = svc.watchdog_verdict()
    assert not ok and "worker thread is not running" in why


def test_a_failed_writer_never_reports_exit_0(service):
    svc, _clock = service
    svc.writer.on_fatal = None                    # even if nobody was told
    svc.writer.put(SQL, trade(0, agg_id=2 ** 64))
    svc.writer.flush(10)
    assert svc.exit_code is None and svc.writer.failure is not None
    assert svc.final_code(exitcodes.OK) == exitcodes.FAIL
    assert "OverflowError" in svc.stop_reason


# ------------------------------------------------------------------------------ real services
PROG = '''
import os, sys, time
from pathlib import Path
from cqt.runtime import run_service

ctl = Path(sys.argv[1])
mode = os.environ.get("TEST_MODE", "loop")
SQL = "INSERT OR IGNORE INTO binance_agg_trades VALUES (?,?,?,?,?,?,?,?,?,?)"


def main_loop(svc):
    svc.ready("test loop")
    (ctl / "ready").write_text(str(os.getpid()))
    i = 0
    if mode == "worker":
        svc.spawn("worker", lambda: {}["missing"])
    while True:
        if mode != "deaf" and svc.stopping.is_set():
            return 0
        svc.alive()
        svc.writer.put_many(SQL, [("BTCUSDT", i + k, 1, 1.0, 1.0, "buy", 0, 0, None, 1) for k in range(50)])
        i += 50
        if mode in ("poison", "deaf") and i == 500:
            svc.writer.put(SQL, ("BTCUSDT", 2 ** 64, 1, 1.0, 1.0, "buy", 0, 0, None, 1))
        time.sleep(0.01)


sys.exit(run_service(os.environ.get("TEST_NAME", "test-service"), main_loop))
'''


def _prog(tmp_path):
    path = tmp_path / "prog.py"
    if not path.exists():
        path.write_text(textwrap.dedent(PROG))
    return path


def _start(tmp_path, tag="a", **extra):
    ctl = tmp_path / f"ctl-{tag}"
    ctl.mkdir(exist_ok=True)
    env = cqt_env(tmp_path, **extra)
    env["PYTHONPATH"] = python_env()["PYTHONPATH"]
    log = tmp_path / f"err-{tag}.log"
    p = subprocess.Popen([PY, str(_prog(tmp_path)), str(ctl)], env=env, stderr=open(log, "ab"),
                         stdout=subprocess.DEVNULL, start_new_session=True)
    return p, ctl, log


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["poison", "deaf"])
def test_service_stops_with_exit_1_when_the_writer_cannot_store(tmp_path, mode):
    """'deaf': a main loop that never looks at `stopping` is ended by the deadline all the same."""
    p, ctl, log = _start(tmp_path, TEST_MODE=mode)
    try:
        rc = p.wait(30)
    finally:
        stop_proc(p)
    err = log.read_text()
    assert rc == exitcodes.FAIL, err
    errors = [ln for ln in err.splitlines() if ln.startswith("ERROR")]
    assert any("cannot store 1 row(s), dropped: OverflowError" in ln for ln in errors), err
    assert any(ln.startswith("ERROR runtime: stopping: database writer failed: OverflowError") for ln in errors), err
    db = tmp_path / "cqt.db"
    assert query(db, "SELECT COUNT(*) FROM binance_agg_trades")[0][0] >= 500      # what was good is stored
    run = query(db, "SELECT exit_code, reason FROM service_runs WHERE service='test-service'")
    assert run[0][0] == 1 and "OverflowError" in run[0][1]
    assert query(db, "SELECT state FROM heartbeats WHERE service='test-service'") == [("stopped",)]


@pytest.mark.timeout(60)
def test_service_stops_with_exit_1_when_a_worker_thread_dies(tmp_path):
    p, ctl, log = _start(tmp_path, TEST_MODE="worker")
    try:
        rc = p.wait(30)
    finally:
        stop_proc(p)
    err = log.read_text()
    assert rc == exitcodes.FAIL, err
    assert "ERROR runtime: stopping: worker thread failed: KeyError: 'missing' exit_code=1" in err


@pytest.mark.timeout(60)
def test_sigterm_after_the_writer_failed_is_not_exit_0(tmp_path):
    p, ctl, log = _start(tmp_path, TEST_MODE="deaf")
    try:
        wait_for(lambda: "stopping: database writer failed" in log.read_text(), 20, interval=0.05,
                 what="writer failure")
        p.send_signal(signal.SIGTERM)
        rc = p.wait(15)
    finally:
        stop_proc(p)
    assert rc == exitcodes.FAIL, log.read_text()


@pytest.mark.timeout(60)
def test_watchdog_pings_stop_while_the_writer_is_blocked(tmp_path):
    sock_path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sock_path)
    srv.settimeout(0.2)
    p, ctl, log = _start(tmp_path, NOTIFY_SOCKET=sock_path, WATCHDOG_USEC="600000")

    def pings(seconds):
        n, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                n += "WATCHDOG=1" in srv.recv(4096).decode()
            except socket.timeout:
                pass
        return n

    blocker = None
    try:
        wait_for(lambda: (ctl / "ready").exists(), 20, what="service ready")
        assert pings(2) >= 3
        blocker = sqlite3.connect(tmp_path / "cqt.db", isolation_level=None, timeout=20)
        blocker.execute("BEGIN IMMEDIATE")             # the writer cannot commit: no progress
        pings(1.5)                                     # pings in flight, and one period of grace
        assert pings(2) == 0
        blocker.execute("ROLLBACK")
        wait_for(lambda: pings(0.5) > 0, 15, interval=0, what="pings resume")
        assert "writer made no progress" in log.read_text()
    finally:
        if blocker is not None:
            blocker.close()
        stop_proc(p)
        srv.close()


# ------------------------------------------------------------------------------ one instance
@pytest.mark.timeout(60)
def test_second_instance_on_the_same_database_exits_75_naming_the_holder(tmp_path):
    first, ctl, _log = _start(tmp_path, "first")
    procs = [first]
    try:
        wait_for(lambda: (ctl / "ready").exists(), 20, what="first instance ready")
        (tmp_path / "link.db").symlink_to(tmp_path / "cqt.db")
        for tag, db in (("second", tmp_path / "cqt.db"), ("via-link", tmp_path / "link.db")):
            p, _ctl, log = _start(tmp_path, tag, CQT_DB=str(db))
            procs.append(p)
            assert p.wait(30) == exitcodes.TEMPFAIL, log.read_text()
            lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
            assert len(lines) == 1, lines
            assert lines[0].startswith("ERROR runtime: test-service is already running on ")
            assert f"(pid {first.pid}; lock {tmp_path / 'cqt.db'}.test-service.lock)" in lines[0]
            assert not (tmp_path / f"ctl-{tag}" / "ready").exists()
        # Another program on the same database is not affected.
        other, octl, olog = _start(tmp_path, "other", TEST_NAME="test-other")
        procs.append(other)
        wait_for(lambda: (octl / "ready").exists(), 20, what="other program ready")
        # kill -9 leaves the lock file, but not the lock.
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        again, actl, alog = _start(tmp_path, "again")
        procs.append(again)
        wait_for(lambda: (actl / "ready").exists(), 20, what="restart after kill -9")
        assert (tmp_path / "cqt.db.test-service.lock").read_text().strip() == str(again.pid)
        assert stop_proc(again) == 0
    finally:
        for p in procs:
            stop_proc(p)


@pytest.mark.timeout(90)
def test_two_binance_collectors_on_one_database(tmp_path):
    """The real program: the second one stops at once with one line; the first runs on."""
    env = cqt_env(tmp_path, CQT_BINANCE_WS_URL="ws://127.0.0.1:9", CQT_BINANCE_REST_URL="http://127.0.0.1:9")
    first = start_bin("cqt-collect-binance", env=env, log_path=tmp_path / "first.log")
    second = None
    try:
        wait_for(lambda: "ready" in (tmp_path / "first.log").read_text(), 30, what="first collector ready")
        second = start_bin("cqt-collect-binance", env=env, log_path=tmp_path / "second.log")
        assert second.wait(30) == exitcodes.TEMPFAIL
        text = (tmp_path / "second.log").read_text()
        assert text.count("\n") == 1, text
        assert f"cqt-collect-binance is already running on {tmp_path / 'cqt.db'} (pid {first.pid};" in text
        assert first.poll() is None
    finally:
        if second is not None:
            stop_proc(second)
        assert stop_proc(first) == 0


def test_lock_is_per_program_and_released(tmp_path):
    db = tmp_path / "sub" / "cqt.db"
    a = InstanceLock("prog-a", db)
    try:
        with pytest.raises(Exception, match=r"prog-a is already running on .* \(pid %d;" % os.getpid()):
            InstanceLock("prog-a", db)
        InstanceLock("prog-b", db).release()
    finally:
        a.release()
    InstanceLock("prog-a", db).release()
    assert lock_path("prog-a", db) == f"{db}.prog-a.lock"
