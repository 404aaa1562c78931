"""The checks on databases of several assets: every asset judged under its own name, one
stale asset fails alone and is named, --symbol limits every check and the gate (KRW-USDT is
still judged), one coin's Coinglass calls failing, the leak check per asset within the one
budget, and the label shares of each asset's newest export."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from fixtures_checks import (
    AS_OF,
    COINGLASS_OK_ENV,
    LEAK_ENV,
    copy_db,
    execute,
    failed_names,
    make_healthy_db,
    make_pipeline_db,
    metric,
    run,
    symbols_env,
)
from helpers import CHECKS as CHECKS_DIR, cqt_env, query, run_bin

pytestmark = pytest.mark.timeout(240)
ASSETS = ("BTC", "ETH", "SOL")
ENV = {**symbols_env(ASSETS), **COINGLASS_OK_ENV}
CHECK_NAMES = ("altdata_check", "feature_check", "feature_leak_check", "coinglass_check")


@pytest.fixture(scope="module")
def db_template(tmp_path_factory):
    """Three healthy assets; each test gets a copy as `db` (conftest.py)."""
    return make_healthy_db(tmp_path_factory.mktemp("symbols") / "healthy.db", assets=ASSETS)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """Two assets with raw rows from fixtures_raw and features from cqt.features (300 s)."""
    return make_pipeline_db(tmp_path_factory.mktemp("symbols") / "pipeline.db", window_s=300, assets=("BTC", "ETH"))


def names(res) -> list[str]:
    return [m.name for m in res.metrics]


def test_every_asset_is_judged_under_its_own_name(db):
    for check in ("altdata_check", "feature_check", "coinglass_check"):
        res = run(check, db, **ENV)
        assert res.exit_code == 0, res.text()
        assert not [n for n, k in Counter(names(res)).items() if k > 1], check    # no name twice
    alt = set(names(run("altdata_check", db, **ENV)))
    for a in ASSETS:
        assert {f"binance.{a}USDT.aggTrade.lag_s", f"binance.{a}USDT.bookTicker.frozen_s",
                f"binance.{a}USDT.ratios.taker_buy_sell.fill", f"binance.{a}USDT.fundingRate.lag_s",
                f"upbit.KRW-{a}.trade.fill", f"upbit.KRW-{a}.orderbook.frozen_s"} <= alt
    assert "upbit.KRW-USDT.trade.lag_s" in alt and "rejects.binance_ws.ratio" in alt
    feat = run("feature_check", db, **ENV)
    for a in ASSETS:
        assert {f"market_1s.{a}.coverage", f"predictions.{a}.ret_1s.null_rate", f"market_1s.{a}.bar.consistency",
                f"predictions.{a}.spread_bps.range"} <= set(names(feat))
        assert metric(feat, f"export.{a}.labels").status == "SKIP"
    assert not [n for n in names(feat) if ".symbol." in n]        # the key column is not a value
    cg = set(names(run("coinglass_check", db, **ENV)))
    assert {f"coinglass.{a}.{ep}.ok_calls" for a in ASSETS for ep in ("open_interest", "funding")} <= cg
    assert {"coinglass.key", "coinglass.enabled", "coinglass.error_ratio"} <= cg


def test_one_stale_asset_fails_alone_and_is_named(db):
    execute(db, "DELETE FROM binance_agg_trades WHERE symbol = 'ETHUSDT' AND trade_ts_ms > ?", (AS_OF - 60_000,))
    execute(db, "DELETE FROM market_1s WHERE symbol = 'SOL' AND ts_ms > ?", (AS_OF - 30_000,))
    res = run("altdata_check", db, **ENV)
    assert failed_names(res) == ["binance.ETHUSDT.aggTrade.lag_s"], res.text()
    assert 59 < metric(res, "binance.ETHUSDT.aggTrade.lag_s").value < 61
    assert metric(res, "binance.BTCUSDT.aggTrade.lag_s").value < 1
    assert "binance.ETHUSDT.aggTrade.lag_s" in res.summary()
    res = run("feature_check", db, **ENV)
    assert set(failed_names(res)) == {"market_1s.SOL.lag_s", "market_1s.SOL.coverage"}, res.text()


def test_symbol_limits_every_check(db, tmp_path):
    execute(db, "DELETE FROM binance_agg_trades WHERE symbol = 'ETHUSDT' AND trade_ts_ms > ?", (AS_OF - 60_000,))
    env = cqt_env(tmp_path, CQT_DB=str(db), **ENV)
    p = run_bin("altdata_check", "--as-of", str(AS_OF), "--symbol", "eth", "--json", env=env)
    d = json.loads(p.stdout)
    assert p.returncode == 1 and d["failed"] == ["binance.ETHUSDT.aggTrade.lag_s"]
    judged = [m["name"] for m in d["metrics"]]
    assert "upbit.KRW-USDT.trade.lag_s" in judged                 # every asset's FX rate
    assert not [n for n in judged if "BTC" in n or "SOL" in n]
    p = run_bin("altdata_check", "--as-of", str(AS_OF), "--symbol", "BTC", env=env)
    assert p.returncode == 0, p.stdout
    for check, prefix in (("feature_check", ".SOL."), ("coinglass_check", ".SOL.")):
        p = run_bin(check, "--as-of", str(AS_OF), "--symbol", "SOL", "--json", env=env)
        judged = [m["name"] for m in json.loads(p.stdout)["metrics"]]
        assert p.returncode == 0 and judged and all(prefix in n or n.startswith("coinglass.") and n.count(".") == 1
                                                    for n in judged), judged
    # not configured: a usage error in one line, for every check and the gate
    for check in CHECK_NAMES:
        p = run_bin(check, "--as-of", str(AS_OF), "--symbol", "DOGE", env=env)
        assert p.returncode == 2 and p.stderr.strip().count("\n") == 0, (check, p.stderr)
        assert "--symbol DOGE: not one of CQT_SYMBOLS (BTC,ETH,SOL)" in p.stderr
    gate = CHECKS_DIR / "run_pipeline_checks.sh"
    p = run_bin(str(gate), "--as-of", str(AS_OF), "--symbol", "DOGE", env=env)
    assert p.returncode == 2 and "not one of CQT_SYMBOLS" in p.stderr
    # the gate limited to SOL passes although ETH is stale, and records which asset it judged
    p = run_bin(str(gate), "--window", "600", "--as-of", str(AS_OF), "--symbol", "SOL", "--json", env=env,
                timeout=120)
    d = json.loads(p.stdout)
    assert d["assets"] == ["SOL"]
    assert {c["check"]: c["exit_code"] for c in d["checks"]}["altdata_check"] == 0
    summary = json.loads(query(db, "SELECT summary_json FROM check_runs WHERE check_name = 'run_pipeline_checks' "
                                   "ORDER BY id DESC LIMIT 1")[0][0])
    assert summary["assets"] == ["SOL"] and summary["checks"]["altdata_check"] == 0
    p = run_bin(str(gate), "--window", "600", "--as-of", str(AS_OF), env=env, timeout=120)
    assert p.returncode == 1 and "altdata_check: binance.ETHUSDT.aggTrade.lag_s" in p.stdout, p.stdout


def test_one_coins_coinglass_calls_failing(db):
    execute(db, "UPDATE coinglass_call_status SET ok = 0, http_status = 403, rows = 0, error = 'plan' "
                "WHERE endpoint LIKE '%?coin=SOL' AND ts_ms > ?", (AS_OF - 600_000,))
    res = run("coinglass_check", db, **ENV)
    failed = set(failed_names(res))
    assert {f"coinglass.SOL.{ep}.ok_calls" for ep in ("open_interest", "funding", "liquidations", "long_short")} \
        <= failed
    assert failed - {"coinglass.error_ratio"} == {n for n in failed if n.startswith("coinglass.SOL.")}
    ok = metric(res, "coinglass.SOL.funding.ok_calls")
    assert ok.value == 0 and "403 from Coinglass: the plan does not allow" in ok.reason
    assert metric(res, "coinglass.ETH.funding.ok_calls").status == "PASS"
    assert run("coinglass_check", db, CQT_CHECK_COINGLASS_ERROR_RATIO_MAX="1", **ENV).exit_code == 1
    limited = run("coinglass_check", db, assets=("ETH",), CQT_CHECK_COINGLASS_ERROR_RATIO_MAX="1", **ENV)
    assert limited.exit_code == 0, limited.text()


def test_gaps_and_rejects_per_venue_symbol(db):
    gap = ("INSERT INTO gaps (source, stream, symbol, detected_ts_ms, from_id, to_id, status) "
           "VALUES (?, ?, ?, ?, 100, 150, 'open')")
    execute(db, gap, ("binance_ws", "ETHUSDT@aggTrade", "ETHUSDT", AS_OF - 300_000))
    execute(db, gap, ("binance_ws", "DOGEUSDT@aggTrade", "DOGEUSDT", AS_OF - 300_000))   # no longer configured
    res = run("altdata_check", db, **ENV)
    assert failed_names(res) == ["gaps.binance.ETHUSDT.aggTrade.open"]
    assert run("altdata_check", db, assets=("BTC",), **ENV).exit_code == 0
    # 30 of KRW-ETH's 100 frames rejected: the whole service's ratio hides it, the symbol's does not
    execute(db, "INSERT INTO ingest_stats (service, source, symbol, ts_ms, frames, rows, rejects) "
                "VALUES ('cqt-collect-upbit', 'upbit', 'KRW-ETH', ?, 100, 70, 30)", (AS_OF - 50_000,))
    execute(db, "INSERT INTO rejects (ts_ms, source, reason, raw, symbol) VALUES (?, 'upbit', 'bad_price', '{}', "
                "'KRW-ETH')", (AS_OF - 50_000,))
    execute(db, "DELETE FROM gaps")
    res = run("altdata_check", db, **ENV)
    assert failed_names(res) == ["rejects.upbit.KRW-ETH.ratio"]
    m = metric(res, "rejects.upbit.KRW-ETH.ratio")
    assert m.value == 0.3 and "bad_price x1" in m.reason
    assert metric(res, "rejects.upbit.ratio").status == "PASS"


def _export(tmp_path, db, name, *args):
    out = tmp_path / name
    p = run_bin("cqt-export", "--db", db, "-o", out, "--horizon", "30", *args,
                env=cqt_env(tmp_path, **LEAK_ENV, **symbols_env(("BTC", "ETH"))), timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return out


def test_leak_and_labels_per_asset(tmp_path, pipeline):
    db = copy_db(pipeline, tmp_path / "cqt.db")
    env = {**LEAK_ENV, **COINGLASS_OK_ENV, **symbols_env(("BTC", "ETH")), "CQT_CHECK_LEAK_SAMPLES": "8"}
    _export(tmp_path, db, "both.parquet", "--threshold", "fixed:0.0002")      # one file, a symbol column
    res = run("feature_leak_check", db, window_s=300, **env)
    assert res.exit_code == 0, res.text()
    for a in ("BTC", "ETH"):
        assert metric(res, f"leak.{a}.recompute.samples").value == 8
        seconds = metric(res, f"leak.{a}.recompute.seconds")
        assert seconds.value == 300 and "of 2 assets" in seconds.reason
        labels = metric(res, f"leak.{a}.labels.violations")
        assert labels.status == "PASS" and "both.parquet" in labels.reason
    feat = run("feature_check", db, window_s=300, **env)
    shares = {a: metric(feat, f"export.{a}.labels.UP.share") for a in ("BTC", "ETH")}
    assert all("both.parquet" in m.reason and " of " in m.reason for m in shares.values())
    # a newer one-asset file (the nightly's eth_24h.parquet) is ETH's newest export; BTC keeps the shared one
    _export(tmp_path, db, "eth_24h.parquet", "--symbol", "ETH", "--threshold", "fixed:0.5")
    feat = run("feature_check", db, window_s=300, **env)
    assert set(failed_names(feat)) == {"export.ETH.labels.UP.share", "export.ETH.labels.DOWN.share",
                                       "export.ETH.labels.not_all_none"}
    assert "eth_24h.parquet" in metric(feat, "export.ETH.labels.not_all_none").reason
    assert "both.parquet" in metric(feat, "export.BTC.labels.UP.share").reason
    # a leak planted in ETH's stored rows only: ETH fails, named; BTC passes
    t = AS_OF - 123_000
    execute(db, "UPDATE predictions SET rv_60s = rv_60s * 3 + 1e-3 WHERE symbol = 'ETH' AND ts_ms = ?", (t,))
    res = run("feature_leak_check", db, window_s=300, **env)
    assert "leak.ETH.recompute.predictions.rv_60s" in failed_names(res)
    assert not [n for n in failed_names(res) if ".BTC." in n]
    # a budget of 0: with several assets the samples too are bounded (one each), and it says so
    res = run("feature_leak_check", db, window_s=300, **{**env, "CQT_CHECK_LEAK_BUDGET_S": "0"})
    m = metric(res, "leak.BTC.recompute.samples")
    assert m.value == 1 and "cut at its part of the budget" in m.reason
