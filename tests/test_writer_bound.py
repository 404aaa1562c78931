"""BatchWriter's bound on queued rows: a producer faster than the database waits, memory
stays bounded, nothing is lost, and nothing that must not wait ever does."""
from __future__ import annotations

import threading

import pytest

from cqt.writer import MAX_QUEUED_ROWS, BatchWriter

SQL = "INSERT OR IGNORE INTO rejects (ts_ms, source, reason, raw) VALUES (?, 'capture', ?, NULL)"


def _rows(start: int, n: int) -> list[tuple]:
    return [(start + i, f"r{start + i}") for i in range(n)]


@pytest.fixture
def held_writer(tmp_path):
    """A writer whose thread is held inside a transaction until `gate` is set."""
    w = BatchWriter(tmp_path / "w.db", max_queued_rows=100, max_rows=1000, max_delay_s=0.01)
    gate, inside = threading.Event(), threading.Event()

    def hold(conn):
        inside.set()
        assert gate.wait(30)
    w.call(hold)
    assert inside.wait(10)
    yield w, gate
    gate.set()
    w.close()


def test_a_producer_waits_while_the_queue_is_full_and_goes_on_once_rows_are_committed(held_writer):
    w, gate = held_writer
    w.put_many(SQL, _rows(0, 60))                      # 61 rows queued (the held call counts one)
    done = threading.Event()

    def produce():
        w.put_many(SQL, _rows(100, 60))                # 121 > 100: must wait
        done.set()
    t = threading.Thread(target=produce, daemon=True)
    t.start()
    assert not done.wait(0.3)                          # still waiting: the writer holds everything
    assert w.put(SQL, (999, "event"), block=False)    # a log event never waits
    gate.set()
    assert done.wait(30)
    assert w.flush(30)
    import sqlite3
    conn = sqlite3.connect(w.path)
    assert conn.execute("SELECT COUNT(*) FROM rejects").fetchone()[0] == 121
    conn.close()


def test_one_item_larger_than_the_bound_goes_through_an_empty_queue(tmp_path):
    w = BatchWriter(tmp_path / "w.db", max_queued_rows=10)
    w.put_many(SQL, _rows(0, 500))                     # alone in the queue: accepted, not a deadlock
    assert w.flush(30)
    assert w.stats()["committed_rows"] >= 500
    w.close()


def test_a_waiting_producer_is_released_when_storage_fails(held_writer):
    w, gate = held_writer
    w.put_many(SQL, _rows(0, 90))
    err: list[BaseException] = []

    def produce():
        try:
            w.put_many(SQL, _rows(100, 50))
        except RuntimeError as exc:
            err.append(exc)
    t = threading.Thread(target=produce, daemon=True)
    t.start()
    assert not t.join(0.3) and t.is_alive()
    w.fatal = OSError("disk is full")                  # what the writer thread sets on a storage failure
    w._release_all()                                   # noqa: SLF001 - and how it wakes everyone
    t.join(10)
    assert not t.is_alive() and err and "writer stopped" in str(err[0])


def test_a_transaction_never_waits_for_more_rows_than_the_bound_lets_in(tmp_path):
    w = BatchWriter(tmp_path / "w.db", max_queued_rows=100, max_rows=1000)
    assert w._batch_rows == 50                          # noqa: SLF001
    w.close()
    unbounded = BatchWriter(tmp_path / "u.db", max_queued_rows=None, max_rows=1000)
    assert unbounded._batch_rows == 1000                # noqa: SLF001
    unbounded.close()
    assert 1000 <= MAX_QUEUED_ROWS <= 100_000
