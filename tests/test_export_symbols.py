"""Exports of many assets: every row labelled from its own asset's bars (a differential against a
one-asset database), --symbol, the all-assets file, the nightly files per asset, retention per
asset, and the report's per-symbol table. Databases come from synthetic raw rows through the
real aggregator (the rebuild)."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from cqt.aggregate.rebuilds import rebuild
from cqt.bookkeeping import COLLECTORS
from cqt.config import load_settings
from cqt.export.parquet import read_metadata
from cqt.export.request import ExportRequest
from cqt.export.run import record_export, run_export
from cqt.export.threshold import Threshold
from cqt.features import FeatureParams
from cqt.nightly.retention import retention
from cqt.timeutil import now_ms
from fixtures_raw import make_raw_db
from helpers import ROOT, cqt_env, query, run_bin

S = 1_771_000_000_000
SECONDS = 1800
DAY, HOUR = 86_400_000, 3_600_000
DYNAMIC = Threshold("dynamic", cost=0.0002, k=0.5, vol_window=120)


def derived_db(path: Path, start_ms: int, seconds: int, assets: tuple[str, ...] = ("BTC",), seed: int = 1,
               heartbeats: bool = True) -> Path:
    """Raw rows of `assets` (fixtures_raw) turned into market_1s/predictions by the aggregator's
    rebuild, and collector heartbeats every 10 s (the report's collection start)."""
    make_raw_db(path, start_ms, seconds, seed=seed, assets=assets)
    rebuild(path, start_ms + 1000, start_ms + seconds * 1000 - 1000, params=tuple(FeatureParams(a) for a in assets))
    if heartbeats:
        conn = sqlite3.connect(path)
        conn.executemany("INSERT OR REPLACE INTO heartbeats (service, ts_ms, state, detail) VALUES (?,?,?,?)",
                         [(svc, t, "running", "{}") for svc in COLLECTORS
                          for t in range(start_ms, start_ms + seconds * 1000, 10_000)])
        conn.commit()
        conn.close()
    return path


@pytest.fixture(scope="module")
def two_assets(tmp_path_factory):
    return derived_db(tmp_path_factory.mktemp("two") / "cqt.db", S, SECONDS, ("BTC", "ETH"))


@pytest.fixture(scope="module")
def btc_alone(tmp_path_factory):
    return derived_db(tmp_path_factory.mktemp("one") / "cqt.db", S, SECONDS, ("BTC",))


def export(db, out, **kw):
    kw.setdefault("record", False)
    kw.setdefault("horizon_sec", 60)
    kw.setdefault("allow_missing", ("all",))
    return run_export(db, ExportRequest(output=out, **kw))


def rows_by_key(path: Path) -> dict[tuple[str, int], dict]:
    return {(r["symbol"], int(r["t0"].timestamp() * 1000)): r for r in pq.read_table(path).to_pylist()}


def ms(dt) -> int:
    return int(dt.timestamp() * 1000)


# ------------------------------------------------------------------------------ labels per asset
def test_each_row_labelled_from_its_own_assets_bars(two_assets, btc_alone, tmp_path):
    res = export(two_assets, tmp_path / "all.parquet", symbols=("BTC", "ETH"), threshold=DYNAMIC)
    rows = rows_by_key(tmp_path / "all.parquet")
    assert res.symbols == ("BTC", "ETH") and {k[0] for k in rows} == {"BTC", "ETH"}
    assert pq.read_schema(tmp_path / "all.parquet").names[:2] == ["t0", "symbol"]
    # the two assets' prices are far apart: a label from the other asset's bars could not hide
    price = {a: np.median([r["price_t0"] for k, r in rows.items() if k[0] == a]) for a in ("BTC", "ETH")}
    assert price["BTC"] > 10 * price["ETH"] > 0
    # price_t0 and price_label are the row's own asset's closes at t0 and label_ts, label_ts its own
    # first traded bar at or after t0 + horizon
    market = query(two_assets, "SELECT symbol, ts_ms, close, has_trade FROM market_1s")
    closes = {(s, t): (c, h) for s, t, c, h in market}
    for (sym, t0), r in rows.items():
        lt = ms(r["label_ts"])
        assert r["price_t0"] == closes[(sym, t0)][0]
        assert r["price_label"] == closes[(sym, lt)][0] and closes[(sym, lt)][1] == 1
        assert lt >= t0 + 60_000
        assert not any(closes.get((sym, x), (0, 0))[1] == 1 for x in range(t0 + 60_000, lt, 1000))
    # differential: BTC's rows (labels, r_t, drops, volatility) are those of a database of BTC alone
    alone = export(btc_alone, tmp_path / "btc.parquet", symbols=("BTC",), threshold=DYNAMIC,
                   from_ms=res.from_ms, to_ms=res.to_ms)
    solo = rows_by_key(tmp_path / "btc.parquet")
    assert {k: v for k, v in rows.items() if k[0] == "BTC"} == solo
    assert res.per_symbol["BTC"].drops == alone.drops and res.per_symbol["BTC"].labels == alone.labels
    assert res.per_symbol["BTC"].volatility == alone.volatility
    # totals are the sums of the assets', in the file's metadata as in the result
    meta = read_metadata(tmp_path / "all.parquet")
    assert meta["symbols"] == ["BTC", "ETH"] and set(meta["per_symbol"]) == {"BTC", "ETH"}
    for key in ("UP", "DOWN", "NONE"):
        assert meta["labels"][key] == sum(meta["per_symbol"][a]["labels"][key] for a in ("BTC", "ETH"))
    for key in meta["drops"]:
        assert meta["drops"][key] == sum(meta["per_symbol"][a]["drops"][key] for a in ("BTC", "ETH"))
    assert meta["rows"] == len(rows) == sum(meta["per_symbol"][a]["rows"] for a in ("BTC", "ETH"))


def test_staleness_and_drops_are_per_asset(two_assets, tmp_path):
    db = tmp_path / "cqt.db"
    db.write_bytes(two_assets.read_bytes())
    lo, hi = S + 600_000, S + 659_000                       # ETH's Binance stale for one minute
    conn = sqlite3.connect(db)
    conn.execute("UPDATE market_1s SET binance_age_ms = 99000 WHERE symbol = 'ETH' AND ts_ms BETWEEN ? AND ?",
                 (lo, hi))
    conn.commit()
    conn.close()
    res = export(db, tmp_path / "x.parquet", symbols=("BTC", "ETH"), from_ms=S + 400_000, to_ms=S + 1_400_000)
    assert res.per_symbol["ETH"].drops["stale_source"] == 60
    assert res.per_symbol["ETH"].drop_details["stale_by_source"] == {"binance_trade": 60}
    assert res.per_symbol["BTC"].drops["stale_source"] == 0
    keys = rows_by_key(tmp_path / "x.parquet")
    assert ("BTC", lo) in keys and ("ETH", lo) not in keys and ("ETH", hi + 1000) in keys


# ------------------------------------------------------------------------------ the command
def test_symbol_option_and_the_all_assets_file(two_assets, tmp_path):
    db = tmp_path / "cqt.db"
    db.write_bytes(two_assets.read_bytes())
    env = cqt_env(tmp_path, CQT_DB=str(db), CQT_SYMBOLS="BTC,ETH", CQT_EXPORT_ALLOW_MISSING="all")
    out = tmp_path / "ds" / "eth.parquet"
    r = run_bin("cqt-export", "--output", out, "--symbol", "eth", "--horizon", "60", "--json", env=env)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["symbols"] == ["ETH"] and list(s["per_symbol"]) == ["ETH"]
    assert set(pq.read_table(out, columns=["symbol"]).column("symbol").to_pylist()) == {"ETH"}
    # every configured asset in one file; the range ends at the newest predictions row
    both = tmp_path / "ds" / "all.parquet"
    r = run_bin("cqt-export", "--output", both, "--horizon", "60", env=env)
    assert r.returncode == 0, r.stderr
    assert "symbols: BTC,ETH" in r.stdout and "  BTC: rows=" in r.stdout and "  ETH: rows=" in r.stdout
    t = pq.read_table(both)
    assert t.schema.names[1] == "symbol" and str(t.schema.field("symbol").type).startswith("dictionary")
    assert t.column("symbol").to_pylist() == sorted(t.column("symbol").to_pylist())      # BTC's rows, then ETH's
    assert query(db, "SELECT symbols FROM export_runs ORDER BY id") == [("ETH",), ("BTC,ETH",)]
    newest = query(db, "SELECT MAX(ts_ms) FROM predictions")[0][0]
    assert read_metadata(both)["time_range"]["to_ts_ms"] == newest
    # an asset that is not configured but is in the database can still be exported
    r = run_bin("cqt-export", "--output", tmp_path / "e2.parquet", "--symbol", "ETH", "--no-record",
                env={**env, "CQT_SYMBOLS": "BTC"})
    assert r.returncode == 0, r.stderr
    # neither configured nor in the database: usage, one line, nothing written
    r = run_bin("cqt-export", "--output", tmp_path / "doge.parquet", "--symbol", "DOGE", env=env)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "DOGE" in r.stderr and "not a configured asset" in r.stderr
    assert not (tmp_path / "doge.parquet").exists()
    # configured but without any data: nothing to write
    r = run_bin("cqt-export", "--output", tmp_path / "sol.parquet", "--symbol", "SOL",
                env={**env, "CQT_SYMBOLS": "BTC,ETH,SOL"})
    assert r.returncode == 1 and "SOL" in r.stderr and "is cqt-aggregate running?" in r.stderr


# ------------------------------------------------------------------------------ nightly
def _stub_checks(tmp_path: Path) -> str:
    script = tmp_path / "ok_checks.py"
    script.write_text("print('run_pipeline_checks: PASS')\n", encoding="utf-8")
    return f"{ROOT / '.venv' / 'bin' / 'python'} {script}"


@pytest.fixture(scope="module")
def recent_two_assets(tmp_path_factory):
    end = now_ms() - now_ms() % 1000 - 60_000
    return derived_db(tmp_path_factory.mktemp("recent") / "cqt.db", end - 3_600_000, 3600, ("BTC", "ETH")), end


@pytest.mark.timeout(120)
def test_nightly_one_file_per_asset_and_a_failing_asset_does_not_stop_the_others(recent_two_assets, tmp_path):
    src, _end = recent_two_assets
    db = tmp_path / "cqt.db"
    db.write_bytes(src.read_bytes())
    env = cqt_env(tmp_path, CQT_DB=str(db), CQT_SYMBOLS="BTC,ETH,SOL", CQT_NIGHTLY_CHECKS_CMD=_stub_checks(tmp_path),
                  CQT_REPORT_JOURNAL="events", CQT_EXPORT_ALLOW_MISSING="all")
    r = run_bin("cqt-nightly", "--json", env=env, timeout=110)
    out = json.loads(r.stdout)
    steps = {s["name"]: s for s in out["steps"]}
    assert list(steps) == ["checks", "export_1h.BTC", "export_24h.BTC", "export_1h.ETH", "export_24h.ETH",
                           "export_1h.SOL", "export_24h.SOL", "report", "retention"], list(steps)
    for a in ("BTC", "ETH"):
        assert steps[f"export_1h.{a}"]["exit_code"] == 0 == steps[f"export_24h.{a}"]["exit_code"], steps
    assert steps["export_24h.SOL"]["exit_code"] == 1 and "SOL" in steps["export_24h.SOL"]["detail"]
    assert r.returncode == out["exit_code"] == 1
    ds = tmp_path / "datasets"
    newest = dict(query(db, "SELECT symbol, MAX(ts_ms) FROM predictions GROUP BY symbol"))
    for a in ("btc", "eth"):
        day = datetime.fromtimestamp(newest[a.upper()] / 1000, tz=timezone.utc).strftime("%Y%m%d")
        for name in (f"{a}_1h.parquet", f"{a}_24h.parquet", f"{a}_{day}.parquet"):
            assert (ds / name).stat().st_size > 10_000, name
            assert set(pq.read_table(ds / name, columns=["symbol"]).column("symbol").to_pylist()) == {a.upper()}
    assert not list(ds.glob("sol_*"))
    recorded = query(db, "SELECT output, symbols FROM export_runs ORDER BY id")
    assert [(Path(o).name.split("_")[0], s) for o, s in recorded] == [
        ("btc", "BTC"), ("btc", "BTC"), ("btc", "BTC"), ("eth", "ETH"), ("eth", "ETH"), ("eth", "ETH")]
    # the report's per-symbol table: one row per configured asset
    rep = (tmp_path / "reports" / "step-alt-5.md").read_text(encoding="utf-8")
    table = rep.split("<!-- cqt:begin export-symbols -->")[1].split("<!-- cqt:end export-symbols -->")[0]
    lines = [ln for ln in table.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [ln.split("|")[1].strip() for ln in lines] == ["BTC", "ETH", "SOL"]
    eth = read_metadata(ds / "eth_24h.parquet")
    assert f"| {eth['rows']:,} |" in lines[1] and "⏳" in lines[2] and "⏳" not in lines[0]


# ------------------------------------------------------------------------------ retention per asset
NOW = 1_790_000_000_000


def test_retention_deletes_an_assets_rows_only_where_its_own_export_covers_them(tmp_path):
    keep = 14
    cutoff = NOW - keep * DAY
    span = (cutoff - 3 * DAY, cutoff - 2 * DAY)
    t_in = span[0] + HOUR
    db = tmp_path / "cqt.db"
    derived_db(db, t_in - 60_000, 120, ("BTC", "ETH"), heartbeats=False)
    before = dict(query(db, "SELECT code, COUNT(*) FROM upbit_trades GROUP BY code"))
    assert set(before) == {"KRW-BTC", "KRW-ETH", "KRW-USDT"}
    st = load_settings({"CQT_ENV_FILE": "/dev/null", "CQT_DB": str(db), "CQT_KEEP_DAYS": str(keep),
                        "CQT_SYMBOLS": "BTC,ETH", "CQT_CAPTURE_DIR": str(tmp_path / "caps")})

    def record(asset_list: tuple[str, ...], name: str) -> None:
        f = tmp_path / name
        f.write_bytes(b"x" * 100)
        res = export(db, tmp_path / "probe.parquet", symbols=asset_list)     # a real result, recorded as `f`
        res.output, res.size_bytes, res.from_ms, res.to_ms = f, 100, span[0], span[1]
        record_export(db, res, ts_ms=span[1])

    record(("BTC",), "btc_old.parquet")
    retention(st, now=NOW)
    left = dict(query(db, "SELECT code, COUNT(*) FROM upbit_trades GROUP BY code"))
    assert "KRW-BTC" not in left and left["KRW-ETH"] == before["KRW-ETH"]
    assert left["KRW-USDT"] == before["KRW-USDT"]                # ETH reads it too, and has no export yet
    assert query(db, "SELECT DISTINCT symbol FROM binance_agg_trades") == [("ETHUSDT",)]
    assert query(db, "SELECT DISTINCT symbol FROM market_1s") == [("ETH",)]
    assert query(db, "SELECT DISTINCT symbol FROM predictions") == [("ETH",)]
    record(("ETH",), "eth_old.parquet")
    step = retention(st, now=NOW)
    assert query(db, "SELECT COUNT(*) FROM upbit_trades") == [(0,)]      # now every asset's export covers KRW-USDT
    assert query(db, "SELECT COUNT(*) FROM market_1s") == [(0,)]
    assert set(step.data["covered_by_asset"]) == {"BTC", "ETH"}
