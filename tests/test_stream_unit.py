"""Pure pieces of the WebSocket/REST plumbing: backoff, packing, rate limits, capture files."""
from __future__ import annotations

import gzip
import json
import random
import sqlite3

import pytest

from cqt.capture import CaptureWriter, iter_capture, rotated_name
from cqt.rest import RateLimitState
from cqt.stream import Backoff, pack_rows, rows_per_statement
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
    # 309 rows, k=64: 4 x 64, then 32, 16, 4 and one single row
    packs = pack_rows(sql, rows, k=64)
    assert [len(params) * rows_per_statement(stmt) for stmt, params in packs] == [256, 32, 16, 4, 1]
    upsert = insert_sql("binance_ratios", True)
    assert pack_rows(upsert, rows) == [(upsert, rows)]          # upserts pass through unchanged
    assert pack_rows(sql, rows[:1]) == [(sql, rows[:1])]
    assert pack_rows(sql, []) == [(sql, [])]


@pytest.mark.parametrize("n", [2, 3, 999, 1000, 1001, 1999, 2000, 2500])
def test_pack_rows_covers_every_row_in_order_within_the_parameter_limit(n):
    from cqt.stream.buffer import MAX_PARAMS
    sql = insert_sql("binance_agg_trades")
    width = sql.partition(" VALUES ")[2].count("?")
    rows = [tuple(range(i * width, (i + 1) * width)) for i in range(n)]
    packs = pack_rows(sql, rows)
    flat = []
    for stmt, params in packs:
        k = rows_per_statement(stmt)
        for p in params:
            assert len(p) == k * width <= MAX_PARAMS
            flat.extend(tuple(p[j:j + width]) for j in range(0, len(p), width))
    assert flat == rows
    assert len(packs) <= 12                                     # a few statement shapes, not one per row
    assert packs[-1][0] != sql or len(packs[-1][1]) == 1        # at most one row left single
    wide = "INSERT OR IGNORE INTO t (a) VALUES (" + ",".join(["?"] * 100) + ")"
    assert all(rows_per_statement(st) * 100 <= MAX_PARAMS for st, _ in pack_rows(wide, [(0,) * 100] * n))


class _ChunkedSocket:
    """A socket whose recv returns the next 1 … bufsize bytes (a seeded random split) and,
    once everything is read, times out."""

    def __init__(self, data: bytes, seed: int):
        self.data = data
        self.pos = 0
        self.rng = random.Random(seed)
        self.calls = 0

    def gettimeout(self):
        return 0.01

    def recv(self, bufsize):
        import socket
        self.calls += 1
        if self.pos >= len(self.data):
            raise socket.timeout("timed out")
        n = min(bufsize, self.rng.choice([1, 2, 3, 7, 100, 4096, len(self.data)]))
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def _frames_bytes(payloads) -> bytes:
    import websocket
    return b"".join(websocket.ABNF.create_frame(p, websocket.ABNF.OPCODE_TEXT).format() for p in payloads)


@pytest.mark.parametrize("seed", range(6))
def test_buffered_reads_give_the_same_frames_and_the_same_timeout(seed):
    import websocket

    from cqt.stream.connection import BufferedRecv, buffer_reads
    payloads = ["x" * n for n in (0, 1, 125, 126, 300, 65535, 65536, 70000)] + [
        '{"stream":"btcusdt@aggTrade","data":{"a":%d}}' % i for i in range(50)]
    data = _frames_bytes(payloads)
    got = {}
    for buffered in (False, True):
        ws = websocket.WebSocket(skip_utf8_validation=True)
        ws.sock = sock = _ChunkedSocket(data, seed)
        ws.connected = True
        if buffered:
            buffer_reads(ws)
            buffer_reads(ws)                                    # twice: wrapped once
            assert isinstance(ws.frame_buffer.recv, BufferedRecv)
            assert not isinstance(ws.frame_buffer.recv.raw, BufferedRecv)
        frames = [ws.recv_data() for _ in payloads]
        with pytest.raises(websocket.WebSocketTimeoutException):
            ws.recv_data()                                      # empty buffer: the socket's timeout shows
        got[buffered] = (frames, sock.calls)
        ws.sock = None
    assert got[True][0] == got[False][0] == [(websocket.ABNF.OPCODE_TEXT, p.encode()) for p in payloads]
    assert got[True][1] <= got[False][1]                        # never more system calls


def test_buffer_reads_leaves_a_test_double_alone():
    from cqt.stream.connection import buffer_reads

    class _Double:
        pass
    d = _Double()
    buffer_reads(d)
    assert not hasattr(d, "frame_buffer")


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
