"""SQLite layer: WAL, migrations, schema-too-new refusal, the batched writer under contention."""
import contextlib
import multiprocessing as mp
import sqlite3
import subprocess
import sys
import time

import pytest

from cqt import db as cdb, sinks, writer
from helpers import PY, ROOT, cqt_env, python_env, run_bin, wait_for

SQL = "INSERT OR IGNORE INTO binance_agg_trades VALUES (?,?,?,?,?,?,?,?,?,?)"


def test_wal_and_pragmas(tmp_path):
    conn = cdb.open_db(tmp_path / "a.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    ro = cdb.connect(tmp_path / "a.db", readonly=True)
    with pytest.raises(sqlite3.OperationalError):
        ro.execute("INSERT INTO heartbeats VALUES ('x', 1, 's', NULL)")


def test_migrations_idempotent(tmp_path):
    conn = cdb.open_db(tmp_path / "a.db")
    v = cdb.schema_version(conn)
    assert v == cdb.latest_version() >= 2
    before = conn.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall()
    assert cdb.migrate(conn) == v
    conn2 = cdb.open_db(tmp_path / "a.db")
    assert conn2.execute("SELECT sql FROM sqlite_master ORDER BY name").fetchall() == before


def test_newer_schema_refused_and_untouched(tmp_path):
    path = tmp_path / "a.db"
    conn = cdb.open_db(path)
    conn.execute(f"PRAGMA user_version={cdb.latest_version() + 5}")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(cdb.SchemaTooNew):
        cdb.open_db(path)
    assert path.read_bytes() == before
    # a service exits 78 (systemd does not loop); a check/status exits 3
    env = cqt_env(tmp_path, CQT_DB=str(path))
    env["PYTHONPATH"] = python_env()["PYTHONPATH"]
    r = subprocess.run([PY, str(ROOT / "tests" / "progs" / "runtime_prog.py"), str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 78, r.stderr
    assert "newer" in r.stderr
    r = run_bin("cqt", "status", env=cqt_env(tmp_path, CQT_DB=str(path)))
    assert r.returncode == 3


def test_missing_db_readonly(tmp_path):
    with pytest.raises(cdb.DatabaseMissing):
        cdb.connect(tmp_path / "nope.db", readonly=True)


def _writer_proc(path, offset, n):
    sys.path.insert(0, str(ROOT / "lib"))
    from cqt.writer import BatchWriter
    w = BatchWriter(path, service=f"p{offset}")
    for start in range(offset, offset + n, 250):
        ids = range(start, min(start + 250, offset + n))
        w.put_many(SQL, [("BTCUSDT", i, i, 1.0, 1.0, "buy", i, i, None, i) for i in ids])
    assert w.close(timeout=120)
    assert w.fatal is None


@pytest.mark.timeout(180)
def test_four_processes_200k_rows(tmp_path):
    path = str(tmp_path / "c.db")
    cdb.open_db(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer_proc, args=(path, k * 50_000, 50_000)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(150)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    conn = cdb.connect(path, readonly=True)
    got = conn.execute("SELECT COUNT(*), MIN(agg_id), MAX(agg_id) FROM binance_agg_trades").fetchone()
    assert got == (200_000, 0, 199_999)


def test_flush_and_close_commit_everything(tmp_path):
    w = writer.BatchWriter(tmp_path / "f.db", max_delay_s=5.0, max_rows=10**9)
    w.put_many(SQL, [("BTCUSDT", i, i, 1.0, 1.0, "buy", i, i, None, i) for i in range(1234)])
    w.put("INSERT INTO heartbeats VALUES (?,?,?,?)", ("x", 1, "running", None))
    assert w.close(timeout=10)
    conn = cdb.connect(tmp_path / "f.db", readonly=True)
    assert conn.execute("SELECT COUNT(*) FROM binance_agg_trades").fetchone()[0] == 1234
    assert conn.execute("SELECT COUNT(*) FROM heartbeats").fetchone()[0] == 1


def test_busy_is_retried_not_raised(tmp_path):
    path = tmp_path / "b.db"
    cdb.open_db(path).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")          # hold the write lock past busy_timeout
    w = writer.BatchWriter(path, migrate_schema=False)
    w._conn.execute("PRAGMA busy_timeout=100")  # make the wait short for the test
    w.put("INSERT INTO heartbeats VALUES (?,?,?,?)", ("x", 1, "running", None))
    assert not w.flush(timeout=1.5)             # still waiting, not failed
    blocker.execute("COMMIT")
    assert w.flush(timeout=10)
    assert w.fatal is None
    w.close()


def test_disk_full_is_fatal_clean(tmp_path):
    path = tmp_path / "d.db"
    conn = cdb.open_db(path)
    page = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.close()
    fatal = []
    w = writer.BatchWriter(path, migrate_schema=False, on_fatal=fatal.append)
    w._conn.execute(f"PRAGMA max_page_count={page + 2}")   # the database cannot grow: like a full disk
    w.put_many(SQL, [("BTCUSDT", i, i, 1.0, 1.0, "buy", i, i, None, i) for i in range(50_000)])
    w.flush(timeout=10)
    assert fatal and "full" in str(fatal[0])
    assert w.fatal is not None
    w.close()
    assert cdb.connect(path, readonly=True).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_reject_and_event_throttling(tmp_path):
    w = writer.BatchWriter(tmp_path / "r.db")
    rl = sinks.RejectLog(w, secrets=("sekrit-key-1",), keep_per_hour=5, clock=lambda: 3_600_000 * 10 + 5)
    for i in range(10_000):
        rl.record("binance_ws", "not_json", f"garbage {i} sekrit-key-1")
    ev = sinks.EventLog(w, "svc", clock=lambda: 3_600_000 * 10 + 5)
    for _ in range(10_000):
        ev.record("ERROR", "connection refused")
    assert w.close(timeout=20)
    conn = cdb.connect(tmp_path / "r.db", readonly=True)
    assert conn.execute("SELECT COUNT(*) FROM rejects").fetchone()[0] == 5
    assert conn.execute("SELECT SUM(count) FROM reject_counts").fetchone()[0] == 10_000
    assert conn.execute("SELECT COUNT(*) FROM rejects WHERE raw LIKE '%sekrit%'").fetchone()[0] == 0
    assert conn.execute("SELECT COUNT(*), SUM(count) FROM events").fetchone() == (1, 10_000)


SMALL_WAL = 256 * 1024


@contextlib.contextmanager
def wal_grown_past_the_limit(path, monkeypatch, checkpoint):
    """A writer with a 256 KiB WAL limit writes 50 000 rows while a reader holds a snapshot
    (so SQLite's own checkpoints cannot reset the WAL); then the reader lets go and the
    writer's periodic checkpoint (`checkpoint`) has had three turns. Yields the WAL size
    reached while the reader held on; the writer stays open inside the block."""
    monkeypatch.setattr(cdb, "WAL_LIMIT_BYTES", SMALL_WAL)          # journal_size_limit at connect
    calls = []

    def counted(conn, p, limit=SMALL_WAL):
        calls.append(1)
        checkpoint(conn, p, limit)

    monkeypatch.setattr(writer, "checkpoint", counted)
    w = writer.BatchWriter(path, checkpoint_every_s=3600)
    try:
        reader = sqlite3.connect(path, isolation_level=None)
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT COUNT(*) FROM binance_agg_trades").fetchone()    # holds its snapshot
            for k in range(10):
                w.put_many(SQL, [("BTCUSDT", i, i, 1.0, 1.0, "buy", i, i, None, i)
                                 for i in range(k * 5000, (k + 1) * 5000)])
            assert w.flush(30)
            held = cdb.wal_size(path)
            reader.execute("COMMIT")
        finally:
            reader.close()
        w.checkpoint_every_s = 0.0          # from now on every pass of the writer's loop checkpoints
        wait_for(lambda: len(calls) >= 3, 30, interval=0.05, what="three writer checkpoints")
        yield held
    finally:
        w.close()


def test_wal_bounded_by_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "w.db"
    with wal_grown_past_the_limit(path, monkeypatch, cdb.checkpoint) as held:
        assert held > 8 * SMALL_WAL, held         # not vacuous: the WAL outgrew the limit many times
        # measured while the writer is open (closing the last connection removes the WAL anyway)
        assert cdb.wal_size(path) <= cdb.WAL_LIMIT_BYTES


def test_wal_grows_without_the_checkpoint(tmp_path, monkeypatch):
    """The same with the writer's checkpoint a no-op: the WAL stays as large as it grew,
    so the test above fails when the bound is not enforced."""
    path = tmp_path / "w.db"
    with wal_grown_past_the_limit(path, monkeypatch, lambda conn, p, limit: None) as held:
        assert held > 8 * SMALL_WAL, held
        assert cdb.wal_size(path) > 8 * cdb.WAL_LIMIT_BYTES


def test_row_counts_follow_declared_nrows(tmp_path):
    """Packed multi-row statements: the writer's counters count table rows, not tuples."""
    w = writer.BatchWriter(tmp_path / "n.db")
    packed = "INSERT OR IGNORE INTO binance_agg_trades VALUES (?,?,?,?,?,?,?,?,?,?),(?,?,?,?,?,?,?,?,?,?)"
    params = [("BTCUSDT", 2 * i, 1, 1.0, 1.0, "buy", 0, 0, None, 1,
               "BTCUSDT", 2 * i + 1, 1, 1.0, 1.0, "buy", 0, 0, None, 1) for i in range(50)]
    w.put_many(packed, params, nrows=100)
    assert w.flush(10)
    assert w.stats()["committed_rows"] == 100
    w.close()


def _open_fresh(path, barrier):
    sys.path.insert(0, str(ROOT / "lib"))
    from cqt.writer import BatchWriter
    barrier.wait(10)
    w = BatchWriter(path, service="opener")       # connect + WAL + migrations, as every service starts
    w.put("INSERT INTO heartbeats VALUES (?,?,?,?)", ("opener", time.time_ns(), "running", None))
    assert w.close(timeout=30) and w.fatal is None


@pytest.mark.timeout(120)
def test_many_services_starting_on_a_fresh_database(tmp_path):
    """All services start at once on a new file (systemctl start cqt.target): none may fail with 'locked'."""
    ctx = mp.get_context("spawn")
    for round_ in range(3):
        path = str(tmp_path / f"fresh{round_}.db")
        barrier = ctx.Barrier(8)
        procs = [ctx.Process(target=_open_fresh, args=(path, barrier)) for _ in range(8)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 8
        conn = cdb.connect(path, readonly=True)
        assert conn.execute("SELECT COUNT(*) FROM heartbeats").fetchone()[0] == 8
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
