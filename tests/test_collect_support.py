"""Helpers shared by the WebSocket collector tests (no tests in here).

Collectors run as real subprocesses (bin/cqt-collect-*) against a real cqt-sim on
127.0.0.1, with short thresholds so each fault test stays under a minute.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import cqt_env, query, start_bin, stop_proc, wait_for

# Short thresholds for tests; production defaults are in docs/collectors.md.
FAST = {
    "CQT_BACKFILL_S": "0",
    "CQT_HEARTBEAT_S": "1",
    "CQT_BACKOFF_BASE_S": "0.05",
    "CQT_BACKOFF_CAP_S": "0.5",
    "CQT_BACKOFF_RESET_S": "5",
    "CQT_STALL_MARKPRICE_S": "2.5",
    "CQT_STALL_AGGTRADE_S": "10",
    "CQT_STALL_BOOKTICKER_S": "10",
    "CQT_STALL_UPBIT_ORDERBOOK_S": "3",
    "CQT_STALL_UPBIT_TRADE_S": "60",
    "CQT_WS_CONNECT_TIMEOUT_S": "3",
    "CQT_WS_CONNECT_INTERVAL_S": "0.2",
    "CQT_REST_TIMEOUT_S": "5",
    "CQT_LOG_LEVEL": "INFO",
}


def collector_env(tmp_path: Path, sim, **extra) -> dict[str, str]:
    env = cqt_env(tmp_path, **sim.env())
    env.update(FAST)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def start_collector(name: str, env: dict, tmp_path: Path, *args: str):
    log = tmp_path / f"{name}.log"
    return start_bin(name, *args, env=env, log_path=log), log


@pytest.fixture
def collectors(tmp_path):
    """collectors(name, env, *args) -> (Popen, log path); every process still running at
    teardown (a failed assertion) is stopped, so no collector outlives its test."""
    procs = []

    def start(name: str, env: dict, *args: str):
        p, log = start_collector(name, env, tmp_path, *args)
        procs.append(p)
        return p, log
    yield start
    for p in procs:
        if p.poll() is None:
            stop_proc(p, timeout=5)


def read_log(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def count(db: Path, sql: str, params=()) -> int:
    try:
        return query(db, sql, params)[0][0] or 0
    except sqlite3.Error:
        return 0


def wait_rows(db: Path, table: str, n: int, timeout: float = 20, where: str = "") -> int:
    return wait_for(lambda: count(db, f"SELECT COUNT(*) FROM {table} {where}") >= n and
                    count(db, f"SELECT COUNT(*) FROM {table} {where}"), timeout, what=f"{n} rows in {table}")


def wait_log(path: Path, pattern: str, n: int = 1, timeout: float = 20) -> None:
    rx = re.compile(pattern)
    wait_for(lambda: len(rx.findall(read_log(path))) >= n, timeout, what=f"{n}x /{pattern}/ in {path.name}")


def sent_ranges(sim, key: str) -> list[list[int]]:
    """Ids the sim delivered on the WebSocket for one stream ('binance:btcusdt@aggTrade')."""
    st = sim.stats(ids=True)["streams"].get(key)
    return st["ranges"] if st else []


def range_ids(ranges) -> set[int]:
    out: set[int] = set()
    for a, b in ranges:
        out.update(range(a, b + 1))
    return out


def quiesce(sim, key: str, settle: float = 0.6, timeout: float = 10) -> list[list[int]]:
    """Sent ranges once they stopped changing (all clients gone)."""
    last = None
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        cur = sent_ranges(sim, key)
        if cur == last:
            return cur
        last = cur
        time.sleep(settle)
    return last or []


def agg_ids(db: Path, symbol: str = "BTCUSDT") -> list[int]:
    return [r[0] for r in query(db, "SELECT agg_id FROM binance_agg_trades WHERE symbol = ? ORDER BY agg_id",
                                (symbol,))]


def upbit_rest_trades(sim, code: str) -> dict[int, int]:
    """Every trade the sim's REST has for `code` (today's UTC date): sequential_id -> trade time."""
    base = sim.urls["CQT_UPBIT_REST_URL"]
    out: dict[int, int] = {}
    cursor = None
    for _ in range(2000):
        url = f"{base}/v1/trades/ticks?market={code}&count=500" + (f"&cursor={cursor}" if cursor else "")
        with urllib.request.urlopen(url, timeout=10, context=sim.ssl_context()) as r:
            page = json.loads(r.read())
        for t in page:
            out[int(t["sequential_id"])] = int(t["timestamp"])
        if len(page) < 500:
            return out
        cursor = page[-1]["sequential_id"]
    return out


def stop(p, timeout: float = 8.0) -> tuple[int | None, float]:
    t0 = time.monotonic()
    rc = stop_proc(p, timeout=timeout)
    return rc, time.monotonic() - t0


def no_traceback(log_text: str) -> None:
    assert "Traceback" not in log_text, log_text[-3000:]
