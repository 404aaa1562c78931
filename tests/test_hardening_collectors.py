"""Collectors, stream loop, replay and the sim's control API under hostile input.

* Upbit trades the WebSocket skipped while connected are found by reconciliation.
* A connect that cannot succeed never resets the backoff and is not logged 16 times a second.
* `cqt replay` turns any malformed record into a reject and stores the good lines around it.
* cqt-sim's control API bounds every fault parameter and stays responsive.
"""
from __future__ import annotations

import time

import pytest

from helpers import query, wait_for
from simproc import start_sim
from test_collect_support import (
    collector_env, collectors, count, no_traceback, range_ids, read_log, sent_ranges, stop, wait_rows,
)

__all__ = ["collectors"]        # the fixture, used by name


# ------------------------------------------------------------------ Upbit reconciliation
@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_upbit_trades_skipped_while_connected_are_reconciled(tmp_path, collectors):
    """The sim's `gap` fault drops KRW-BTC trades from the WebSocket only (REST has them);
    the connection never breaks, so no reconnect backfill runs. Reconciliation stores every
    skipped trade and records a gaps row with the counts."""
    db = tmp_path / "cqt.db"
    with start_sim(tmp_path, "--seed", "19", "--history", "300", "--speed", "2") as sim:
        env = collector_env(tmp_path, sim, CQT_UPBIT_RECONCILE_S="1", CQT_UPBIT_RECONCILE_SETTLE_S="1")
        p, log = collectors("cqt-collect-upbit", env)
        wait_rows(db, "upbit_trades", 5, where="WHERE code='KRW-BTC'", timeout=30)
        sim.fault("gap", ids=6, source="upbit")

        def skipped() -> set[int]:
            st = sim.stats(stream="KRW-BTC@trade")["streams"].get("upbit:KRW-BTC@trade") or {}
            return range_ids(st.get("skipped", []))
        wait_for(lambda: len(skipped()) == 6, 30, what="6 trades skipped by the sim")
        lost = skipped()

        def stored() -> set[int]:
            return {r[0] for r in query(db, "SELECT sequential_id FROM upbit_trades WHERE code='KRW-BTC'")}
        wait_for(lambda: lost <= stored(), 30, what="skipped trades reconciled")
        wait_for(lambda: count(db, "SELECT COUNT(*) FROM gaps WHERE reason LIKE 'reconcile: missing=%'") >= 1,
                 10, what="reconcile gaps row")
        sent = range_ids(sent_ranges(sim, "upbit:KRW-BTC@trade"))
        assert p.poll() is None, read_log(log)[-3000:]
        rc, _took = stop(p)
        assert rc == 0

    text = read_log(log)
    no_traceback(text)
    # one connection the whole time: the reconnect backfill played no part
    assert text.count("stream: connected endpoint=upbit ") == 1, text[-3000:]
    assert not query(db, "SELECT * FROM gaps WHERE reason NOT LIKE 'reconcile%' AND stream LIKE '%@trade'")
    have = stored()
    assert lost <= have and sent <= have
    rows = query(db, "SELECT stream, status, filled_rows, reason, from_ts_ms, to_ts_ms FROM gaps "
                     "WHERE reason LIKE 'reconcile%'")
    assert {r[0] for r in rows} == {"KRW-BTC@trade"}, rows
    missing = sum(int(r[3].split("missing=")[1].split()[0]) for r in rows)
    filled = sum(r[2] for r in rows)
    assert missing == filled == len(lost), rows
    assert all(r[1] == "filled" and r[4] <= r[5] for r in rows), rows
    skipped_ts = [t for (t,) in query(db, "SELECT trade_ts_ms FROM upbit_trades WHERE code='KRW-BTC' AND "
                                          f"sequential_id IN ({','.join(map(str, lost))})")]
    assert min(r[4] for r in rows) <= min(skipped_ts) and max(skipped_ts) <= max(r[5] for r in rows)


# ------------------------------------------------------------------ stream: connects that cannot succeed
class _FakeWriter:
    def put_many(self, sql, rows, nrows=None):
        pass

    def call(self, fn):
        pass


class _FakeService:
    def __init__(self):
        import threading
        self.name = "test"
        self.writer = _FakeWriter()
        self.stopping = threading.Event()
        self.rejects = None

    def count(self, *a, **kw):
        pass


class _Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("error", [ValueError("Port out of range 0-65535"),
                                   OverflowError("timestamp out of range for platform time_t"),
                                   ConnectionRefusedError(111, "Connection refused")])
def test_failed_connects_grow_the_backoff_and_are_logged_once_a_minute(caplog, error):
    """A URL whose port is 99999, an infinite connect timeout or a refused port: every
    connect fails. The backoff must climb to its cap with jitter (a failed connect is no
    uptime), and the log gets one line when the failure starts plus one a minute."""
    import logging
    import random
    from cqt.stream import Endpoint, LoopSettings, StreamLoop

    random.seed(19)
    clock = _Clock()
    attempts: list[float] = []

    def connect(url, **kw):
        attempts.append(clock.t)
        raise error

    loop = None

    def wait(seconds: float) -> bool:
        clock.t += seconds
        if len(attempts) >= 60:
            loop.stop_event.set()
        return loop.stop_event.is_set()

    cfg = LoopSettings(backoff_base_s=1.0, backoff_cap_s=60.0, backoff_reset_s=0.0)
    loop = StreamLoop(_FakeService(), [Endpoint("upbit", "ws://127.0.0.1:99999/x", "upbit", parse=None)], None,
                      cfg, clock=clock, connect=connect, wait=wait)
    c = loop.conns[0]
    with caplog.at_level(logging.INFO, logger="cqt.stream"):
        loop._run(c)
    assert len(attempts) >= 60
    assert c.connects == 0 and c.failures == len(attempts)
    assert c.backoff.attempt >= 59, c.backoff.attempt           # never reset, even with reset_s = 0
    ceilings = [c.backoff.ceiling(n) for n in range(1, c.backoff.attempt + 1)]
    assert ceilings[:7] == [1, 2, 4, 8, 16, 32, 60] and set(ceilings[6:]) == {60}
    delays = c.delays
    assert all(0 <= d <= 60 for d in delays) and len(set(delays)) == len(delays)    # jittered
    assert sum(delays[10:]) / len(delays[10:]) > 15             # full jitter over a 60 s ceiling
    records = caplog.records
    assert not [r for r in records if r.levelno >= logging.ERROR], [r.getMessage() for r in records]
    assert not [r for r in records if r.exc_info]
    failed = [r.getMessage() for r in records if "connect failed" in r.getMessage()]
    elapsed = clock.t - 1000.0
    assert 1 <= len(failed) <= 2 + elapsed / 60, (len(failed), elapsed)
    assert len(failed) < len(attempts) / 2
    assert any("more times in the last" in m for m in failed), failed


def test_backoff_resets_only_after_a_connection_that_was_up(caplog):
    """Once a connection really came up and stayed up, the next failure starts at attempt 1."""
    from cqt.stream import Endpoint, LoopSettings, StreamLoop

    clock = _Clock()
    calls = {"n": 0}
    loop = None

    class _Socket:
        def send(self, msg):
            pass

        def settimeout(self, t):
            pass

        def recv_data(self):
            clock.t += 100.0                    # up for 100 s, then the peer goes away
            raise ConnectionResetError(104, "Connection reset by peer")

        def close(self, timeout=None):
            pass

        def shutdown(self):
            pass

    def connect(url, **kw):
        calls["n"] += 1
        if calls["n"] == 6:
            return _Socket()
        raise ConnectionRefusedError(111, "Connection refused")

    def wait(seconds: float) -> bool:
        clock.t += seconds
        if calls["n"] >= 9:
            loop.stop_event.set()
        return loop.stop_event.is_set()

    cfg = LoopSettings(backoff_base_s=1.0, backoff_cap_s=60.0, backoff_reset_s=60.0)
    loop = StreamLoop(_FakeService(), [Endpoint("upbit", "ws://127.0.0.1:1/x", "upbit", parse=None)], None, cfg,
                      clock=clock, connect=connect, wait=wait)
    import logging
    import re
    with caplog.at_level(logging.INFO, logger="cqt.stream"):
        loop._run(loop.conns[0])
    seen = [int(m) for r in caplog.records for m in re.findall(r"reconnect endpoint=upbit attempt=(\d+)",
                                                                r.getMessage())]
    # attempts 1..5 failed, the 6th connected for 100 s (>= reset), then the count starts again
    assert seen[:5] == [1, 2, 3, 4, 5] and seen[5] == 1 and seen[6:8] == [2, 3], seen
