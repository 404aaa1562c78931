"""Collectors, stream loop, replay and the sim's control API under hostile input.

* Upbit trades the WebSocket skipped while connected are found by reconciliation.
* A connect that cannot succeed never resets the backoff and is not logged 16 times a second.
* `cqt replay` turns any malformed record into a reject and stores the good lines around it.
* cqt-sim's control API bounds every fault parameter and stays responsive.
"""
from __future__ import annotations

import pytest

from helpers import query, wait_for
from simproc import start_sim
from test_collect_support import (
    collector_env,
    collectors,
    count,
    no_traceback,
    range_ids,
    read_log,
    sent_ranges,
    stop,
    wait_rows,
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


class _DirectWriter:
    """Runs writer calls at once on a real SQLite connection (the BatchWriter's thread does the same)."""

    def __init__(self, conn):
        self.conn = conn

    def call(self, fn):
        fn(self.conn)
        self.conn.commit()


class _TicksRest:
    """/v1/trades/ticks over a list of (sid, ts) trades, newest first, 500 a page, `cursor` = sid."""
    name = "upbit_rest"

    def __init__(self, trades, recv_ts_ms):
        self.trades = sorted(trades, key=lambda t: -t[1])
        self.recv_ts_ms = recv_ts_ms
        self.calls = 0

    def get(self, path, params):
        import json

        from cqt.rest import RestResponse
        self.calls += 1
        rows = self.trades
        if "cursor" in params:
            i = next(i for i, t in enumerate(rows) if t[0] == params["cursor"])
            rows = rows[i + 1:]
        page = [{"market": params["market"], "timestamp": ts, "trade_price": 100.0, "trade_volume": 1.0,
                 "ask_bid": "BID", "sequential_id": sid} for sid, ts in rows[:params["count"]]]
        return RestResponse(200, {}, json.dumps(page), 1, self.recv_ts_ms, path, dict(params))


def _reconcile_setup(tmp_path, stored, on_rest, *, max_pages=20):
    import threading

    from cqt.backfill import GapBook
    from cqt.db import open_db
    from cqt.venues.common import insert_sql
    from cqt.venues.upbit.backfill import UpbitReconcile, UpbitTradeFill
    conn = open_db(tmp_path / "r.db")
    conn.executemany(insert_sql("upbit_trades"), [("KRW-BTC", sid, ts, 100.0, 1.0, "buy", ts) for sid, ts in stored])
    conn.commit()
    svc = _FakeService()
    svc.writer = _DirectWriter(conn)
    svc.stopping = threading.Event()
    filler = UpbitTradeFill(svc, on_rest, GapBook(svc.writer))
    submitted = []

    class _Worker:
        def submit(self, fn, gap):
            submitted.append((fn, gap))
    clock = _Clock(0.0)
    live = {"first": None, "newest": None, "connected": True}
    rec = UpbitReconcile(filler, _Worker(), ("KRW-BTC",), interval_s=180.0, settle_ms=10_000,
                         connected=lambda: live["connected"], stream_times=lambda code: (live["first"], live["newest"]),
                         clock=clock, max_pages=max_pages, handover_s=0.0)
    return conn, rec, clock, live, submitted


def test_reconcile_inserts_only_settled_missing_trades_and_counts_them(tmp_path):
    """Trades newer than the settle margin are left to the stream; older missing ones are
    inserted once, with one gaps row saying how many; a run with nothing missing adds none."""
    from cqt.timeutil import now_ms
    base = now_ms() - 600_000
    everything = [(sid, base + sid * 1000) for sid in range(1, 301)]
    stored = [t for t in everything if t[0] % 7]            # every 7th trade never arrived
    rest = _TicksRest(everything, base + 400_000)
    conn, rec, clock, live, submitted = _reconcile_setup(tmp_path, stored, rest)
    live.update(first=base + 1000, newest=base + 300_000)   # the stream saw trades 1..300
    rec.tick()
    assert not submitted                                    # not due yet
    clock.t += 180.0
    live["connected"] = False
    rec.tick()
    assert not submitted                                    # disconnected: the reconnect backfill's window
    clock.t += 180.0
    live["connected"] = True
    rec.tick()
    assert len(submitted) == 1
    fn, gap = submitted.pop()
    fn(gap)
    horizon = base + 300_000 - 10_000                       # newest the stream saw, minus the settle margin
    want = {sid for sid, ts in everything if sid % 7 == 0 and ts <= horizon}
    have = {sid for (sid,) in conn.execute("SELECT sequential_id FROM upbit_trades")}
    assert want <= have
    assert not {sid for sid, ts in everything if sid % 7 == 0 and ts > horizon} & have   # left to the stream
    rows = conn.execute("SELECT stream, status, filled_rows, reason, from_ts_ms, to_ts_ms FROM gaps").fetchall()
    assert rows == [("KRW-BTC@trade", "filled", len(want), f"reconcile: missing={len(want)} filled={len(want)}",
                     min(base + s * 1000 for s in want), max(base + s * 1000 for s in want))]
    # the next run starts where this one ended and finds the one left to the stream then
    live["newest"] = base + 300_000 + 10_000
    clock.t += 180.0
    rec.tick()
    fn, gap = submitted.pop()
    assert gap.from_ts_ms == horizon
    fn(gap)
    assert conn.execute("SELECT reason FROM gaps WHERE id = 2").fetchone() == ("reconcile: missing=1 filled=1",)
    # nothing missing since: no new row
    live["newest"] += 20_000
    clock.t += 180.0
    rec.tick()
    fn, gap = submitted.pop()
    fn(gap)
    assert conn.execute("SELECT COUNT(*) FROM gaps").fetchone()[0] == 2
    assert rec.snapshot() == {"runs": 3, "missing": len(want) + 1, "filled": len(want) + 1, "unchecked": 0}


def test_reconcile_that_cannot_page_back_far_enough_records_the_unchecked_span(tmp_path):
    from cqt.timeutil import now_ms
    base = now_ms() - 3_000_000
    everything = [(sid, base + sid * 1000) for sid in range(1, 2001)]       # 2000 trades since the last point
    rest = _TicksRest(everything, base + 2_100_000)
    conn, rec, clock, live, submitted = _reconcile_setup(tmp_path, everything, rest, max_pages=2)
    live.update(first=base + 1000, newest=base + 2_000_000 + 10_000)
    clock.t += 180.0
    rec.tick()
    fn, gap = submitted.pop()
    fn(gap)
    assert rest.calls == 2                                  # bounded: max_pages requests
    rows = conn.execute("SELECT status, filled_rows, reason, from_ts_ms, to_ts_ms FROM gaps").fetchall()
    oldest_seen = everything[-1000][1]
    assert rows == [("unfillable", 0, "reconcile: not checked, more than 2 pages of trades since the previous run",
                     base + 1000, oldest_seen)]


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


# ------------------------------------------------------------------ replay: any malformed record is a reject
def _agg_frame(agg_id: int, t_ms: int) -> str:
    import json
    return json.dumps({"e": "aggTrade", "E": t_ms, "a": agg_id, "s": "BTCUSDT", "p": "90000.5", "q": "0.010",
                       "f": 2 * agg_id, "l": 2 * agg_id + 1, "T": t_ms - 2, "m": True}, separators=(",", ":"))


T0 = 1_700_000_000_000
BAD_RECORDS = [   # (line, reason of its reject)
    ({"recv_ts_ms": T0, "source": "upbit", "raw": 5}, "capture record: raw is a number, not a string"),
    ({"recv_ts_ms": T0, "source": "binance_ws", "raw": [1, 2]}, "capture record: raw is a list, not a string"),
    ({"recv_ts_ms": T0, "source": "binance_ws", "raw": {"e": "aggTrade"}},
     "capture record: raw is an object, not a string"),
    ({"recv_ts_ms": T0, "source": "upbit"}, "capture record lacks raw"),
    ({"source": "upbit", "raw": "x"}, "capture record lacks recv_ts_ms"),
    ({"recv_ts_ms": str(T0), "source": "upbit", "raw": "x"}, "capture record: recv_ts_ms is a string, not an integer"),
    ({"recv_ts_ms": 5, "source": "upbit", "raw": "x"}, "capture record: recv_ts_ms outside 2009-01-01..2100-01-01"),
    ({"recv_ts_ms": T0, "source": 7, "raw": "x"}, "capture record: source is a number, not a string"),
    ({"recv_ts_ms": T0, "source": "upbit", "raw": "x", "raw_b64": 5},
     "capture record: raw_b64 is a number, not a string"),
    ({"recv_ts_ms": T0, "source": "upbit_rest", "path": ["/v1/trades/ticks"], "status": 200, "raw": "[]"},
     "capture record: path is a list, not a string"),
    ({"recv_ts_ms": T0, "source": "upbit_rest", "path": "/v1/trades/ticks", "status": "200", "raw": "[]"},
     "capture record: status is a string, not an integer"),
    ({"recv_ts_ms": T0, "source": "coinglass", "path": "/x", "status": 200, "params": "interval=1h", "raw": "{}"},
     "capture record: params is a string, not an object"),
    ([1, 2, 3], "capture line is a list, not a record object"),
    ("{bad json", "capture line is not JSON (cut or damaged)"),
    (b'\xff\xfe{"recv_ts_ms":1}', "capture line is not UTF-8"),
]


def _bad_capture(path) -> tuple[list[int], list[str]]:
    """Good aggTrade lines around every kind of bad line, ending with a cut line."""
    import json
    out, good, reasons = [], [], []
    agg_id = 100
    for bad, reason in BAD_RECORDS:
        for _ in range(2):
            agg_id += 1
            good.append(agg_id)
            out.append(json.dumps({"recv_ts_ms": T0 + agg_id, "source": "binance_ws",
                                   "raw": _agg_frame(agg_id, T0 + agg_id)}).encode())
        out.append(bad if isinstance(bad, bytes) else bad.encode() if isinstance(bad, str) else
                   json.dumps(bad).encode())
        reasons.append(reason)
    agg_id += 1
    good.append(agg_id)
    out.append(json.dumps({"recv_ts_ms": T0 + agg_id, "source": "binance_ws",
                           "raw": _agg_frame(agg_id, T0 + agg_id)}).encode())
    cut = json.dumps({"recv_ts_ms": T0 + 999, "source": "binance_ws", "raw": _agg_frame(999, T0 + 999)}).encode()
    path.write_bytes(b"\n".join(out) + b"\n" + cut[:len(cut) // 2])      # a kill -9 cut the last line
    reasons.append("capture line is not JSON (cut or damaged)")
    return good, reasons


@pytest.mark.timeout(60)
@pytest.mark.parametrize("processes", ["0", "2"])
def test_replay_rejects_every_malformed_record_and_stores_the_lines_around_it(tmp_path, processes):
    import json
    from collections import Counter

    from helpers import cqt_env, run_bin
    cap = tmp_path / "bad.jsonl"
    good, reasons = _bad_capture(cap)
    db = tmp_path / "out.db"
    r = run_bin("cqt", "replay", str(cap), "--db", str(db), "--json", "--processes", processes,
                env=cqt_env(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    summary = json.loads(r.stdout)
    assert summary["bad_lines"] == len(reasons) and summary["rows"] == len(good)
    assert [a for (a,) in query(db, "SELECT agg_id FROM binance_agg_trades ORDER BY agg_id")] == good
    stored = dict(((s, reason), n) for s, reason, n in query(db, "SELECT source, reason, SUM(count) FROM "
                                                               "reject_counts GROUP BY source, reason"))
    assert stored == {("capture", reason): n for reason, n in Counter(reasons).items()}
    assert query(db, "SELECT COUNT(*) FROM rejects WHERE source='capture'")[0][0] == len(reasons)


_SAMPLE_RAWS = [
    _agg_frame(7, T0),
    '{"stream":"btcusdt@aggTrade","data":' + _agg_frame(8, T0) + "}",
    '{"type":"trade","code":"KRW-BTC","timestamp":1700000000000,"trade_timestamp":1700000000000,'
    '"trade_price":1.0,"trade_volume":1.0,"ask_bid":"BID","sequential_id":1}',
    '[{"market":"KRW-BTC","timestamp":1700000000000,"trade_price":1,"trade_volume":1,"ask_bid":"ASK",'
    '"sequential_id":2}]',
    '{"code":"0","data":[{"time":1700000000000,"open":"1","high":"1","low":"1","close":"1"}]}',
    "PING", "", "{}", "[]", "null",
]


def _record_lines():
    import json

    from hypothesis import strategies as st
    scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) |
               st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                                        max_size=3), max_leaves=6)
    record = st.fixed_dictionaries({}, optional={
        "recv_ts_ms": st.integers(T0 - 10**4, T0 + 10**4) | st.integers(-2**64, 2**64) | values,
        "source": st.sampled_from(["upbit", "binance_ws", "binance_rest", "upbit_rest", "coinglass", "x"]) | values,
        "raw": st.sampled_from(_SAMPLE_RAWS) | st.text(max_size=40) | values,
        "raw_b64": st.sampled_from(["", "UElORw==", "!!"]) | values,
        "path": st.sampled_from(["/fapi/v1/aggTrades", "/v1/trades/ticks", "/v1/ticker",
                                 "/api/futures/open-interest/aggregated-history", "/fapi/v1/time"]) | values,
        "status": st.sampled_from([200, 429, None]) | values,
        "params": st.fixed_dictionaries({}, optional={"symbol": st.sampled_from(["BTCUSDT", 5]),
                                                      "period": st.sampled_from(["5m", "bad"]),
                                                      "interval": st.sampled_from(["1h", []])}) | values,
    })
    as_line = record.map(lambda d: json.dumps(d, allow_nan=False).encode())
    return as_line | as_line.flatmap(lambda b: st.integers(0, len(b)).map(lambda k: b[:k])) | st.binary(max_size=80)


@pytest.mark.timeout(120)
def test_replay_record_reader_never_raises_on_any_line():
    """Arbitrary capture lines -> rows, a reject with a reason, or a skip; never an exception."""
    from hypothesis import HealthCheck, given, settings, strategies as st

    from cqt.replay.processor import RecordProcessor, ReplayStats

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(_record_lines(), min_size=1, max_size=6))
    def check(lines):
        out = []
        stats = ReplayStats()
        proc = RecordProcessor(lambda kind, payload: out.append((kind, payload)), stats, ("s3cr3tkey",))
        proc.lines(lines)
        proc.flush()
        assert stats.records + stats.bad_lines == sum(1 for line in lines if line.strip())
        assert stats.rejects + stats.bad_lines == sum(1 for kind, _ in out if kind == "reject")
        for kind, payload in out:
            if kind == "reject":
                source, reason, raw, ts = payload
                assert isinstance(source, str) and isinstance(reason, str) and reason
                assert raw is None or isinstance(raw, (str, bytes))
                assert ts is None or (type(ts) is int and 1_230_768_000_000 <= ts < 4_102_444_800_000)
            elif kind == "rows":
                for _sql, params in payload:
                    for row in params:
                        for v in row:
                            assert v is None or isinstance(v, (str, float)) or (
                                type(v) is int and -2**63 <= v < 2**63), row
    check()


# ------------------------------------------------------------------ cqt-sim control API bounds
def _json_values():
    from hypothesis import strategies as st
    scalars = (st.none() | st.booleans() | st.integers(-2**80, 2**80) | st.floats() |
               st.text(max_size=12) | st.sampled_from([1e9, 1e300, -1, 0, 0.5, 1000, 4999, 5000, 599]))
    return st.recursive(scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c,
                                                                                        max_size=3), max_leaves=8)


def _fault_specs():
    from hypothesis import strategies as st

    from cqt.sim import faults
    v = _json_values()
    return st.fixed_dictionaries({"kind": st.sampled_from(faults.KINDS) | v}, optional={
        "at": v, "source": st.sampled_from(["upbit", "binance", "x"]) | v, "seconds": v, "ids": v, "count": v,
        "kinds": st.lists(st.sampled_from(faults.MALFORMED_KINDS + ("bogus",)), max_size=4) | v,
        "per_frame": v, "close_code": v, "status": v, "retry_after": v, "delay": v, "rest": v,
        "path": st.sampled_from(["*", "/fapi/*", "/v1/trades/ticks"]) | v, "body": st.sampled_from(
            ["default", "truncated", "non_json", "empty"]) | v, "stream": v})


@pytest.mark.timeout(120)
def test_sim_fault_parser_returns_a_bounded_fault_or_a_400_error():
    """Any request body: a fault whose every number is inside its bounds, or FaultError
    naming the field; never another exception."""
    import json
    import math

    from hypothesis import HealthCheck, given, settings, strategies as st

    from cqt.sim import faults

    bodies = (_fault_specs().map(lambda d: json.dumps(d).encode()) | _json_values().map(
        lambda d: json.dumps(d).encode()) | st.binary(max_size=60))

    @settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(bodies)
    def check(body):
        try:
            f = faults.parse_request(body)
        except faults.FaultError as e:
            assert str(e)
            assert e.field is None or isinstance(e.field, str)
            return
        assert f["kind"] in faults.KINDS
        for key, (lo, hi) in faults.BOUNDS.items():
            if key in f:
                x = f[key]
                assert type(x) in (int, float) and math.isfinite(x) and lo <= x <= hi, (key, x)
        assert faults.validate(f) == f                      # normalised specs validate to themselves
        json.dumps(f)
    check()


@pytest.mark.parametrize("spec,field", [
    ({"kind": "malformed", "count": 1e9}, "count"),
    ({"kind": "malformed", "count": 10**30}, "count"),
    ({"kind": "gap", "ids": 10**12}, "ids"),
    ({"kind": "gap", "ids": 0}, "ids"),
    ({"kind": "stall", "seconds": 1e9}, "seconds"),
    ({"kind": "refuse", "seconds": -1}, "seconds"),
    ({"kind": "drop", "at": 1e12}, "at"),
    ({"kind": "drop", "close_code": 70000}, "close_code"),
    ({"kind": "http_error", "path": "*", "status": 9999}, "status"),
    ({"kind": "malformed", "count": 2.5}, "count"),
    ({"kind": "malformed", "count": "10"}, "count"),
    ({"kind": "malformed", "kinds": {"nan": 1}}, "kinds"),
    ({"kind": "slow", "path": "*", "seconds": 99999}, "seconds"),
])
def test_sim_fault_out_of_bounds_names_the_field(spec, field):
    from cqt.sim import faults
    with pytest.raises(faults.FaultError) as exc:
        faults.validate(spec)
    assert exc.value.field == field and field in str(exc.value)


def test_malformed_queue_is_lazy():
    from cqt.sim.faults import MalformedQueue
    q = MalformedQueue()
    q.add(["nan", "zero_price"], 1_000_000)
    q.add(["not_json"], 2)
    assert len(q) == 1_000_002 and len(q.batches) == 2
    assert [q.pop() for _ in range(3)] == ["nan", "zero_price", "nan"]
    q.clear()
    assert not q and q.pop() is None


@pytest.mark.timeout(90)
def test_sim_refuses_a_billion_malformed_frames_and_still_stops_on_sigterm(tmp_path):
    """Over a real socket: the absurd count is a 400 naming `count`; the largest allowed
    one is queued without building it; the sim keeps answering and stops on SIGTERM."""
    import json
    import signal
    import subprocess
    import urllib.error
    import urllib.request

    from simproc import ws_connect

    def post(sim, body: bytes):
        req = urllib.request.Request(sim.control + "/fault", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    with start_sim(tmp_path, "--seed", "5", "--history", "60") as sim:
        status, ans = post(sim, b'{"kind":"malformed","count":1e9}')
        assert status == 400 and ans["ok"] is False and ans["field"] == "count", ans
        for body, field in ((b'{"kind":"gap","ids":1e15}', "ids"), (b'{"kind":"stall","seconds":Infinity}', "seconds"),
                            (b'{"kind":"drop","at":NaN}', "at"), (b'\xff\xfe', None), (b"[1,2", None)):
            status, ans = post(sim, body)
            assert status == 400 and ans["field"] == field, (body, ans)
        ws = ws_connect(sim.urls["CQT_UPBIT_WS_URL"])
        try:
            ws.send(json.dumps([{"ticket": "t"}, {"type": "trade", "codes": ["KRW-BTC"]}, {"format": "DEFAULT"}]))
            status, ans = post(sim, json.dumps({"kind": "malformed", "count": 1_000_000, "source": "upbit",
                                                "per_frame": 1000}).encode())
            assert status == 200 and ans["ok"], ans
            pending = sim.stats(ids=False)["faults"]["pending"]["malformed"]
            assert pending["upbit"] <= 1_000_000
        finally:
            ws.close()
        assert sim.stats(ids=False)["mode"] == "model"
        sim.proc.send_signal(signal.SIGTERM)
        try:
            rc = sim.proc.wait(15)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, sim.log()[-2000:]
