"""The shared result type, exit-code rules and the thresholds table."""
from __future__ import annotations

import json
import re

import pytest

from cqt import exitcodes
from cqt.checks.base import run_check
from cqt.checks.result import FAIL, PASS, SKIP, CheckResult, Metric, combine_exit_codes, fmt_num
from cqt.checks.thresholds import NULL_RATE_DEFAULTS, THRESHOLDS, Thresholds, null_rate_env
from cqt.config import ROOT, ConfigError
from fixtures_checks import AS_OF, make_healthy_db, settings_for


def test_metric_judge_and_line():
    m = Metric.judge("binance.BTCUSDT.aggTrade.lag_s", 42.0, "<=", 10, "newest aggTrade event at X")
    assert m.status == FAIL
    assert m.line() == "binance.BTCUSDT.aggTrade.lag_s 42 <=10 FAIL  (newest aggTrade event at X)"
    ok = Metric.judge("binance.BTCUSDT.aggTrade.fill", 0.95, ">=", 0.9, "detail only shown on failure")
    assert ok.status == PASS and ok.line() == "binance.BTCUSDT.aggTrade.fill 0.95 >=0.9 PASS"
    none = Metric.judge("x.lag_s", None, "<=", 10, none_reason="no data at all")
    assert none.status == FAIL and "no data at all" in none.line()
    assert Metric.skip("x", "why").line() == "x - - SKIP  (why)"
    assert fmt_num(0.000123456) == "0.0001235" and fmt_num(3) == "3" and fmt_num(2.0) == "2"


def test_exit_codes_and_summary():
    r = CheckResult("altdata_check", 600, AS_OF, [Metric.judge("a", 1, "<=", 2), Metric.skip("b", "no export")])
    assert r.exit_code == exitcodes.OK and r.status == PASS
    assert r.summary().startswith("altdata_check: PASS (2 metrics, 1 skipped) window=600s as_of=2026-01-10T12:00:00")
    r.metrics.append(Metric.judge("c.fill", 0.5, ">=", 0.9))
    assert r.exit_code == exitcodes.FAIL
    assert "c.fill=0.5 (limit >=0.9)" in r.summary()
    d = json.loads(r.to_json())
    assert d["exit_code"] == 1 and d["failed"] == ["c.fill"] and d["metrics"][1]["status"] == SKIP
    r.error, r.error_code = "config error: X: bad", exitcodes.CONFIG
    assert r.exit_code == 78 and r.status == "MISCONFIGURED"
    r.error_code = None
    assert r.exit_code == exitcodes.NOEVAL and "NOT EVALUATED (exit 3)" in r.summary()
    assert combine_exit_codes([0, 1, 0]) == 1 and combine_exit_codes([1, 3, 0]) == 3
    assert combine_exit_codes([0, 78, 3]) == 78 and combine_exit_codes([0, 0]) == 0


def test_unexpected_exception_is_exit_3_with_one_line(tmp_path, caplog):
    db = make_healthy_db(tmp_path / "cqt.db", span_s=60)

    def boom(ctx):
        raise ZeroDivisionError("division by zero\nsecond line")

    res = run_check("altdata_check", boom, settings_for(db), AS_OF, 600)
    assert res.exit_code == 3
    assert "\n" not in res.error and "ZeroDivisionError" in res.error
    assert "Traceback" not in res.text()


def test_no_metrics_is_never_a_silent_pass(tmp_path):
    db = make_healthy_db(tmp_path / "cqt.db", span_s=60)
    assert run_check("x", lambda ctx: [], settings_for(db), AS_OF, 600).exit_code == 3


def test_thresholds_env_override_and_bad_value(tmp_path):
    th = Thresholds(settings_for(tmp_path / "x.db", CQT_CHECK_BINANCE_AGGTRADE_LAG_MAX_S="25"))
    assert th("CQT_CHECK_BINANCE_AGGTRADE_LAG_MAX_S") == 25.0
    assert th("CQT_CHECK_BINANCE_MARKPRICE_FILL_MIN") == 0.98
    with pytest.raises(ConfigError, match="CQT_CHECK_REJECT_RATIO_MAX"):
        Thresholds(settings_for(tmp_path / "x.db", CQT_CHECK_REJECT_RATIO_MAX="lots"))("CQT_CHECK_REJECT_RATIO_MAX")
    with pytest.raises(ConfigError):
        Thresholds(settings_for(tmp_path / "x.db", CQT_CHECK_COVERAGE_MIN="-1"))("CQT_CHECK_COVERAGE_MIN")
    # per-column null-rate limits: default, built-in override, env override
    th = Thresholds(settings_for(tmp_path / "x.db", **{null_rate_env("predictions", "rv_300s"): "0.5"}))
    assert th.null_rate_max("predictions", "ret_1s") == 0.01
    assert th.null_rate_max("predictions", "liq_notional_60s") == NULL_RATE_DEFAULTS["predictions.liq_notional_60s"]
    assert th.null_rate_max("predictions", "rv_300s") == 0.5


def test_docs_list_every_threshold():
    text = (ROOT / "docs" / "checks.md").read_text(encoding="utf-8")
    for t in THRESHOLDS:
        row = re.search(rf"^\| `{t.env}` \| ([^|]+) \|", text, re.M)
        assert row, f"{t.env} missing from docs/checks.md"
        assert fmt_num(float(row.group(1).strip().strip('`'))) == fmt_num(float(t.default)), t.env
    for key in NULL_RATE_DEFAULTS:
        assert null_rate_env(*key.split(".")) in text
