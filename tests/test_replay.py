"""`bin/cqt replay`: real sample frames and REST answers through the live parsers and writer."""
from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest

from helpers import cqt_env, query, run_bin

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
if not SAMPLES.exists():
    SAMPLES = Path(__file__).resolve().parents[1].parent / "shared" / "samples"


def _messages(name: str) -> list[dict]:
    return json.loads((SAMPLES / name).read_text())["messages"]


def _capture_records() -> list[dict]:
    """A 2021-2024 capture made of the real samples: WS frames, REST answers, errors."""
    recs = []
    for m in _messages("binance_futures_ws_aggTrade.json") + _messages("binance_futures_ws_bookTicker.json"):
        recs.append({"recv_ts_ms": int(m["recv_ts"] * 1000), "source": "binance_ws", "raw": m["raw"]})
    for m in _messages("binance_futures_ws_markPrice_forceOrder.json"):
        e = json.loads(m["raw"])
        data = e.get("data", e)
        recs.append({"recv_ts_ms": int(data["E"]) + 30, "source": "binance_ws", "raw": m["raw"]})
    for m in _messages("upbit_ws_trade_simple.json"):
        recs.append({"recv_ts_ms": int(m["recv_ts"] * 1000), "source": "upbit", "raw": m["raw"]})
    rest = json.loads((SAMPLES / "binance_futures_rest_examples.json").read_text())["responses"]
    agg = rest["GET /fapi/v1/aggTrades"]
    recs.append({"recv_ts_ms": agg[-1]["T"] + 100, "source": "binance_rest", "path": "/fapi/v1/aggTrades",
                 "params": {"symbol": "BTCUSDT", "fromId": agg[0]["a"], "limit": 1000}, "status": 200,
                 "raw": json.dumps(agg)})
    up = json.loads((SAMPLES / "upbit_rest_examples.json").read_text())["responses"]
    ticks = up["GET /v1/trades/ticks?market=USDT-BTC&count=1"]
    recs.append({"recv_ts_ms": int(ticks[0]["timestamp"]) + 100, "source": "upbit_rest", "path": "/v1/trades/ticks",
                 "params": {"market": "USDT-BTC", "count": 1}, "status": 200, "raw": json.dumps(ticks)})
    recs.append({"recv_ts_ms": 1626992760000, "source": "binance_rest", "path": "/fapi/v1/aggTrades",
                 "params": {"symbol": "BTCUSDT", "fromId": 1}, "status": 429, "raw": '{"code":-1003,"msg":"x"}'})
    # malformed frames: each must be a counted reject
    recs.append({"recv_ts_ms": 1626992760000, "source": "binance_ws", "raw": "{not json"})
    recs.append({"recv_ts_ms": 1626992760000, "source": "binance_ws",
                 "raw": '{"e":"aggTrade","E":1626992760000,"a":1,"s":"BTCUSDT","p":"NaN","q":"1","f":1,"l":1,'
                        '"T":1626992760000,"m":true}'})
    recs.append({"recv_ts_ms": 1626992760000, "source": "upbit", "raw": '{"ty":"trade","cd":"KRW-BTC"}'})
    return recs


def _write(path: Path, recs: list[dict], extra_lines: list[str] = ()) -> None:
    lines = [json.dumps(r) for r in recs] + list(extra_lines)
    data = ("\n".join(lines) + "\n").encode()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def _expected(recs: list[dict]) -> tuple[dict[str, set], int]:
    from cqt.sources import Reject, parse_rest_answer, parse_ws_frame
    out: dict[str, set] = {}
    rejects = 0
    for r in recs:
        try:
            if r["source"] in ("binance_ws", "upbit"):
                p = parse_ws_frame(r["source"], r["raw"], r["recv_ts_ms"])
            elif r["status"] == 200:
                p = parse_rest_answer(r["source"], r["path"], r["params"], r["raw"], r["recv_ts_ms"])
            else:
                continue
        except Reject:
            rejects += 1
            continue
        if p is not None and p.rows:
            out.setdefault(p.table, set()).update(p.rows)
    return out, rejects


def _tables(db: Path, names) -> dict[str, set]:
    return {t: set(query(db, f"SELECT * FROM {t}")) for t in names}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name,processes", [("cap.jsonl", "2"), ("cap.jsonl.gz", "0")])
def test_replay_of_real_samples_stores_what_the_parsers_return(tmp_path, name, processes):
    recs = _capture_records()
    cap = tmp_path / name
    _write(cap, recs, extra_lines=["this line is not json", '{"source":"upbit"}'])
    db = tmp_path / "out.db"
    r = run_bin("cqt", "replay", str(cap), "--db", str(db), "--json", "--processes", processes,
                env=cqt_env(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    expected, n_rejects = _expected(recs)
    assert n_rejects == 3
    assert summary["records"] == len(recs) and summary["bad_lines"] == 2 and summary["rejects"] == 3
    got = _tables(db, expected)
    for table, rows in expected.items():
        assert got[table] == rows, table
    assert {"binance_agg_trades", "binance_book_ticker", "binance_mark_price", "binance_liquidations",
            "upbit_trades"} <= set(expected)
    # rejects: raw kept and counted; bad capture lines too
    counts = dict(query(db, "SELECT source, SUM(count) FROM reject_counts GROUP BY source"))
    assert counts == {"binance_ws": 2, "upbit": 1, "capture": 2}, counts
    assert query(db, "SELECT COUNT(*) FROM rejects WHERE source='binance_ws' AND raw LIKE '%NaN%'")[0][0] == 1
    # idempotent: a second replay adds nothing
    r2 = run_bin("cqt", "replay", str(cap), "--db", str(db), "--processes", processes, env=cqt_env(tmp_path))
    assert r2.returncode == 0, r2.stderr
    assert _tables(db, expected) == got


@pytest.mark.timeout(60)
def test_replay_of_a_capture_cut_by_kill_keeps_every_complete_record(tmp_path):
    recs = _capture_records()[:20]
    whole = tmp_path / "whole.jsonl.gz"
    _write(whole, recs)
    data = whole.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    # a sync-flushed gzip stream without its trailer, as a kill -9 leaves it
    from cqt.capture import CaptureWriter
    w = CaptureWriter(cut, rotate=False)
    for r in recs:
        w.ws(r["source"], r["raw"], r["recv_ts_ms"]) if "path" not in r else \
            w.rest(r["source"], r["path"], r["params"], r["status"], r["raw"], r["recv_ts_ms"])
    w.flush()
    raw = cut.read_bytes()
    cut.write_bytes(raw + b"\x00\x01garbage")                   # plus a torn tail
    assert data[:2] == raw[:2] == b"\x1f\x8b"
    db = tmp_path / "out.db"
    r = run_bin("cqt", "replay", str(cut), "--db", str(db), "--json", env=cqt_env(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["records"] == len(recs)


@pytest.mark.timeout(30)
def test_replay_errors_are_plain(tmp_path):
    r = run_bin("cqt", "replay", str(tmp_path / "missing.jsonl"), env=cqt_env(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    bad_db = tmp_path / "notadb.db"
    bad_db.write_bytes(b"this is not sqlite" * 100)
    cap = tmp_path / "c.jsonl"
    _write(cap, _capture_records()[:3])
    r = run_bin("cqt", "replay", str(cap), "--db", str(bad_db), env=cqt_env(tmp_path))
    assert r.returncode == 74 and "Traceback" not in r.stderr, r.stderr
    with pytest.raises(sqlite3.DatabaseError):
        sqlite3.connect(bad_db).execute("SELECT 1 FROM sqlite_master").fetchall()
