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
