"""Pure pieces of the WebSocket/REST plumbing: backoff, packing, rate limits, capture files."""
from __future__ import annotations

import gzip
import json
import random
import sqlite3

import pytest

from cqt.capture import CaptureWriter, iter_capture, rotated_name
from cqt.rest import RateLimitState
from cqt.stream import Backoff, pack_rows
from cqt.venues.common import insert_sql


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_backoff_full_jitter_bounds_and_reset():
    random.seed(4)
    b = Backoff(base_s=1.0, cap_s=60.0, reset_s=60.0)
    seen = []
    for n in range(1, 40):
        attempt, delay, ceiling = b.next_delay()
        assert attempt == n
        assert ceiling == min(60.0, 2 ** (n - 1))
        assert 0.0 <= delay <= ceiling
        seen.append(delay)
    assert max(seen) > 30                      # it does reach the cap region
    b.connection_ended(uptime_s=10)            # not stable: keeps counting
    assert b.attempt == 39
    b.connection_ended(uptime_s=61)            # a stable minute resets
    assert b.attempt == 0
    assert b.next_delay()[2] == 1.0


def test_pack_rows_stores_the_same_rows_as_executemany(tmp_path):
    from cqt.db import open_db
    sql = insert_sql("binance_agg_trades")
    rows = [("BTCUSDT", i, 1700000000000 + i, 90000.0 + i, 0.1, "buy" if i % 2 else "sell", i, i, None, 1)
            for i in range(1, 300)]
    rows += rows[:10]                           # duplicates inside one batch are ignored, first wins
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    a.executemany(sql, rows)
    for stmt, params in pack_rows(sql, rows, k=64):
        b.executemany(stmt, params)
    q = "SELECT * FROM binance_agg_trades ORDER BY agg_id"
    assert a.execute(q).fetchall() == b.execute(q).fetchall()
    assert len(pack_rows(sql, rows, k=64)) == 2
    upsert = insert_sql("binance_ratios", True)
    assert pack_rows(upsert, rows) == [(upsert, rows)]          # upserts pass through unchanged
    assert pack_rows(sql, rows[:5]) == [(sql, rows[:5])]


def test_rate_limit_state_429_418_5xx_and_budgets():
    clock = FakeClock()
    wall = [1_700_000_010_000]                                   # 30 s into a minute
    rs = RateLimitState("binance_rest", clock=clock, wall_ms=lambda: wall[0], rng=random.Random(1))
    assert rs.wait_s() == 0
    assert rs.note_response(429, {"Retry-After": "7"}) == 7
    assert rs.wait_s() == pytest.approx(7)
    clock.t += 7
    assert rs.wait_s() == 0
    w = rs.note_response(418, {"Retry-After": "30"})             # shorter than Binance's minimum ban
    assert w == 120 and rs.banned and rs.wait_s() == pytest.approx(120)
    clock.t += 121
    assert not rs.banned
    ceilings = []
    for n in range(1, 10):                                       # 5xx: full jitter, growing ceiling
        d = rs.note_response(503, {})
        ceilings.append(min(60, 2 ** (n - 1)))
        assert 0 <= d <= ceilings[-1]
        clock.t += 100
    assert rs.note_response(200, {}) == 0 and rs.consecutive_errors == 0
    d = rs.note_no_answer("timeout")
    assert 0 <= d <= 1.0
    clock.t += 10
    w = rs.note_response(200, {"X-MBX-USED-WEIGHT-1m": "2200"})  # >= 90 % of 2400
    assert w == pytest.approx(30.5) and rs.used_weight_1m == 2200
    clock.t += 31
    wall[0] = 1_700_000_000_400
    assert rs.note_response(200, {"Remaining-Req": "group=trade; min=1800; sec=0"}) == pytest.approx(0.6)
    clock.t += 1
    assert rs.note_response(200, {"API-KEY-MAX-LIMIT": "30", "API-KEY-USE-LIMIT": "30"}) == pytest.approx(40.1)
    snap = rs.snapshot()
    assert snap["http_429"] == 1 and snap["http_418"] == 1 and snap["http_5xx"] == 9 and snap["no_answer"] == 1


def test_capture_round_trip_gzip_secrets_and_binary(tmp_path):
    path = tmp_path / "cap.jsonl.gz"
    w = CaptureWriter(path, secrets=("sekrit-key-123",), wall_ms=lambda: 1_700_000_000_000)
    w.ws("upbit", b'{"ty":"trade"}', 1_700_000_000_001)
    w.ws("upbit", b"\xff\xfe not utf-8", 1_700_000_000_002)
    w.rest("coinglass", "/api/futures/x", {"symbol": "BTC", "limit": 5}, 401,
           '{"code":"401","msg":"bad key sekrit-key-123"}', 1_700_000_000_003)
    w.close()
    text = gzip.decompress(path.read_bytes()).decode()
    assert "sekrit-key-123" not in text
    recs = list(iter_capture(path))
    assert [r["source"] for r in recs] == ["upbit", "upbit", "coinglass"]
    assert recs[0] == {"recv_ts_ms": 1_700_000_000_001, "source": "upbit", "raw": '{"ty":"trade"}'}
    assert recs[1]["raw"] == b"\xff\xfe not utf-8"               # exact bytes back
    assert recs[2]["params"] == {"symbol": "BTC", "limit": 5} and recs[2]["status"] == 401
    assert set(recs[2]) >= {"recv_ts_ms", "source", "path", "params", "status", "raw"}
    assert "headers" not in text


def test_capture_rotates_daily_and_appends_after_restart(tmp_path):
    day1, day2 = 1_700_000_000_000, 1_700_000_000_000 + 86_400_000
    path = tmp_path / "cap.jsonl"
    w = CaptureWriter(path, wall_ms=lambda: day1)
    w.ws("binance_ws", '{"a":1}', day1)
    w.close()
    w = CaptureWriter(path, wall_ms=lambda: day1)                # restart the same day: append
    w.ws("binance_ws", '{"a":2}', day1 + 1)
    w.ws("binance_ws", '{"a":3}', day2)                          # first record of a new UTC day
    w.close()
    old = rotated_name(path, "2023-11-14")
    assert old.name == "cap.2023-11-14.jsonl"
    assert [json.loads(r["raw"])["a"] for r in iter_capture(old)] == [1, 2]
    assert [json.loads(r["raw"])["a"] for r in iter_capture(path)] == [3]


def test_multi_member_gzip_capture_after_restart(tmp_path):
    path = tmp_path / "cap.jsonl.gz"
    for i in range(3):
        w = CaptureWriter(path, wall_ms=lambda: 1_700_000_000_000)
        w.ws("binance_ws", f'{{"a":{i}}}', 1_700_000_000_000 + i)
        w.close()
    assert [json.loads(r["raw"])["a"] for r in iter_capture(path)] == [0, 1, 2]


def test_resume_sql_matches_schema(tmp_path):
    from cqt.db import open_db
    from cqt.stream import RESUME_SQL
    conn = open_db(tmp_path / "x.db")
    conn.execute(RESUME_SQL, ("svc", "S@aggTrade", "S", 5, 6, 7))
    conn.execute(RESUME_SQL, ("svc", "S@aggTrade", "S", 8, 9, 10))
    assert conn.execute("SELECT symbol, last_id, last_ts_ms FROM resume_state").fetchall() == [("S", 8, 9)]
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO gaps (source, stream, detected_ts_ms, status) VALUES ('a', 'b', NULL, 'open')")
