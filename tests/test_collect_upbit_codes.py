"""Upbit with three codes, without a network: one subscription message names them all, the
first-start backfill, the reconnect backfill and the reconciliation run per code, and their
gaps rows carry the code."""
from __future__ import annotations

import json
import threading

from cqt.rest import RestResponse
from cqt.stream import Gap, LoopSettings
from cqt.timeutil import now_ms
from cqt.venues.upbit.collect import UpbitConfig, UpbitGapHandler, endpoint, subscription

CODES = ("KRW-BTC", "KRW-ETH", "KRW-USDT")


def _cfg(backfill_s: int = 900) -> UpbitConfig:
    return UpbitConfig(codes=CODES, ws_url="wss://upbit.example/websocket/v1", rest_base="https://upbit.example",
                       loop=LoopSettings(), stall_trade_s=300.0, stall_orderbook_s=30.0, gap_min_ms=3000,
                       ping_s=30.0, backfill_s=backfill_s, rest_timeout_s=5.0)


def test_one_subscription_message_names_every_code_for_each_type():
    msg = json.loads(subscription(CODES, ticket="t"))
    assert msg[0] == {"ticket": "t"} and msg[-1] == {"format": "DEFAULT"}
    assert [(m["type"], m["codes"]) for m in msg[1:-1]] == [(t, list(CODES)) for t in ("trade", "orderbook", "ticker")]
    ep = endpoint(_cfg())
    assert len(ep.subscribe) == 1                   # one request per connection: far under 5/s and 100/min
    assert set(ep.rules) == {f"{c}@{k}" for c in CODES for k in ("trade", "orderbook")}


class _Book:
    def __init__(self):
        self.opened: list[tuple[str, str, str]] = []

    def open(self, gap: Gap, status: str = "open") -> None:
        self.opened.append((gap.stream, gap.reason, status))


class _Worker:
    def __init__(self):
        self.jobs: list[tuple[object, Gap]] = []

    def submit(self, fn, gap):
        self.jobs.append((fn, gap))

    def snapshot(self):
        return {}


def test_first_start_backfills_each_code_with_nothing_stored_and_resumes_open_gaps():
    now = now_ms()
    book, worker, filler = _Book(), _Worker(), object()
    handler = UpbitGapHandler(_cfg(), book, worker, filler)
    left_open = Gap("upbit", "KRW-ETH@trade", "reconnect", now - 60_000, from_ts_ms=now - 90_000,
                    to_ts_ms=now - 60_000, row_id=7)
    positions = {"KRW-USDT@trade": (123, now - 5_000)}          # only KRW-USDT has something stored
    handler.resume([left_open], positions, now)
    assert [(g.stream, g.reason, g.from_ts_ms) for _, g in worker.jobs] == [
        ("KRW-ETH@trade", "reconnect", now - 90_000),            # the open gap, not a second initial job
        ("KRW-BTC@trade", "initial", now - 900_000)]
    assert all(fn is filler for fn, _ in worker.jobs)
    assert book.opened == [("KRW-BTC@trade", "initial", "open")]
    # a gap on one code is that code's job; an order book window is unfillable
    handler.on_gap(Gap("upbit", "KRW-USDT@trade", "reconnect", now, from_ts_ms=now - 4000, to_ts_ms=now))
    handler.on_gap(Gap("upbit", "KRW-ETH@orderbook", "reconnect", now, from_ts_ms=now - 9000, to_ts_ms=now))
    assert worker.jobs[-1][1].stream == "KRW-USDT@trade"
    assert book.opened[-2:] == [("KRW-USDT@trade", "reconnect", "open"),
                                ("KRW-ETH@orderbook", "reconnect", "unfillable")]


class _DirectWriter:
    def __init__(self, conn):
        self.conn = conn

    def call(self, fn):
        fn(self.conn)
        self.conn.commit()


class _Svc:
    def __init__(self, conn):
        self.writer = _DirectWriter(conn)
        self.stopping = threading.Event()
        self.counted: list[tuple[str, str, int]] = []

    def count(self, source, frames=0, rows=0, rejects=0, *, symbol=""):
        self.counted.append((source, symbol, rows))


class _Ticks:
    """/v1/trades/ticks for several markets: each market's own trades, newest first."""
    name = "upbit_rest"

    def __init__(self, trades: dict[str, list[tuple[int, int]]]):
        self.trades = {code: sorted(t, key=lambda x: -x[1]) for code, t in trades.items()}
        self.asked: list[str] = []

    def get(self, path, params):
        code = params["market"]
        self.asked.append(code)
        rows = self.trades.get(code, [])
        if "cursor" in params:
            i = next(i for i, t in enumerate(rows) if t[0] == params["cursor"])
            rows = rows[i + 1:]
        page = [{"market": code, "timestamp": ts, "trade_price": 100.0, "trade_volume": 1.0, "ask_bid": "ASK",
                 "sequential_id": sid} for sid, ts in rows[:params["count"]]]
        return RestResponse(200, {}, json.dumps(page), 1, now_ms(), path, dict(params))


def test_reconnect_backfill_and_reconciliation_run_per_code(tmp_path):
    from cqt.backfill import GapBook
    from cqt.db import open_db
    from cqt.venues.upbit.backfill import UpbitReconcile, UpbitTradeFill
    base = now_ms() - 600_000
    trades = {code: [(k * 1000 + sid, base + sid * 1000) for sid in range(1, 121)]
              for k, code in enumerate(CODES, 1)}
    conn = open_db(tmp_path / "u.db")
    svc = _Svc(conn)
    rest = _Ticks(trades)
    book = GapBook(svc.writer)
    filler = UpbitTradeFill(svc, rest, book)

    # a reconnect window on each code: each filled from its own market's trades
    for code in CODES:
        gap = Gap("upbit", f"{code}@trade", "reconnect", now_ms(), from_ts_ms=base + 30_000, to_ts_ms=base + 60_000)
        book.open(gap)
        filler(gap)
    stored = {code: {sid for (sid,) in conn.execute("SELECT sequential_id FROM upbit_trades WHERE code = ?",
                                                    (code,))} for code in CODES}
    for code in CODES:
        assert {sid for sid, ts in trades[code] if ts >= base + 30_000} <= stored[code]
        assert all(sid // 1000 == CODES.index(code) + 1 for sid in stored[code])
    assert conn.execute("SELECT stream, symbol, status FROM gaps ORDER BY id").fetchall() == [
        (f"{c}@trade", c, "filled") for c in CODES]
    assert {sym for _, sym, _ in svc.counted} == set(CODES)

    # reconciliation: KRW-ETH lost two trades while connected; the run for each code finds its own
    eth = "KRW-ETH"
    lost = {2050, 2070}                                 # KRW-ETH's ids are 2001..2120
    conn.execute(f"DELETE FROM upbit_trades WHERE code = ? AND sequential_id IN ({','.join('?' * len(lost))})",
                 (eth, *lost))
    conn.commit()
    worker = _Worker()
    clock = [0.0]
    rec = UpbitReconcile(filler, worker, CODES, interval_s=10.0, settle_ms=1_000, connected=lambda: True,
                         stream_times=lambda code: (base + 40_000, base + 121_000), clock=lambda: clock[0],
                         handover_s=0.0)
    clock[0] += 10.0
    rec.tick()
    assert [g.stream for _, g in worker.jobs] == [f"{c}@trade" for c in CODES]
    for fn, gap in worker.jobs:
        fn(gap)
    rows = conn.execute("SELECT stream, symbol, status, filled_rows, reason FROM gaps WHERE reason LIKE "
                        "'reconcile%'").fetchall()
    assert rows == [(f"{eth}@trade", eth, "filled", 2, "reconcile: missing=2 filled=2")]
    assert lost <= {sid for (sid,) in conn.execute("SELECT sequential_id FROM upbit_trades WHERE code = ?", (eth,))}
    assert rec.snapshot()["runs"] == 3
