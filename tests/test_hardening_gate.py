"""The gate on bad input: bounded --window and memory, a stuck order book, a useless label
distribution, every second of the leak window, and a damaged database file.

Every check runs as the real program (checks/<name>, run_pipeline_checks.sh) on a real
SQLite file; the databases come from tests/fixtures_checks.py.
"""
from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import tracemalloc

import pytest

from cqt.checks import CHECKS, altdata, leak
from cqt.checks.base import CheckContext, open_for_check
from cqt.checks.thresholds import Thresholds
from cqt.options import MAX_WINDOW_S
from fixtures_checks import (
    AS_OF,
    COINGLASS_OK_ENV,
    LEAK_ENV,
    copy_db,
    execute,
    make_healthy_db,
    make_pipeline_db,
    metric,
    run,
    settings_for,
)
from helpers import CHECKS as CHECKS_DIR, ROOT, cqt_env, query, run_bin

pytestmark = pytest.mark.timeout(240)
NAMES = [name for name, _ in CHECKS]
PIPELINE_ENV = {**LEAK_ENV, **COINGLASS_OK_ENV}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    return make_healthy_db(tmp_path_factory.mktemp("gate") / "healthy.db")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return make_pipeline_db(tmp_path_factory.mktemp("gate") / "pipeline.db")


def gate(tmp_path, *args, timeout=180, **env):
    """bash checks/run_pipeline_checks.sh ...; the exit code."""
    return subprocess.run(["bash", str(CHECKS_DIR / "run_pipeline_checks.sh"), *map(str, args)],
                          env=cqt_env(tmp_path, **env), capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))


def check(tmp_path, name, db, *args, timeout=180, **env):
    return run_bin(name, "--db", db, "--as-of", AS_OF, *args, env=cqt_env(tmp_path, **env), timeout=timeout)


# ------------------------------------------------------------------------------ --window bounds, memory
@pytest.mark.parametrize("window", ["999999999999", str(MAX_WINDOW_S + 1), "0", "-5"])
def test_window_out_of_bounds_is_a_usage_error(tmp_path, window):
    for name in NAMES:
        p = run_bin(name, "--window", window, env=cqt_env(tmp_path), timeout=60)
        assert p.returncode == 2, (name, p.stdout, p.stderr)
        assert "--window" in p.stderr and "range" in p.stderr
    p = gate(tmp_path, "--window", window, timeout=60)
    assert p.returncode == 2 and "--window" in p.stderr, p.stderr


def test_largest_window_is_accepted(tmp_path, healthy):
    p = check(tmp_path, "coinglass_check", healthy, "--window", str(MAX_WINDOW_S), **COINGLASS_OK_ENV)
    assert p.returncode in (0, 1), p.stdout + p.stderr
    assert f"window={MAX_WINDOW_S}s" in p.stdout


def test_altdata_memory_does_not_grow_with_the_window(healthy):
    """A window of 31 years used to list every expected period stamp (hundreds of MB)."""
    tracemalloc.start()
    try:
        res = run("altdata_check", healthy, window_s=10**9)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.error is None, res.error
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.0f} MB"
    m = metric(res, "binance.BTCUSDT.ratios.global_long_short.fill")
    assert m.status == "FAIL" and " periods present; missing " in m.reason


def test_slot_fill_counts_and_names_the_first_missing(tmp_path, healthy):
    db = copy_db(healthy, tmp_path / "cqt.db")
    gone = execute(db, "DELETE FROM binance_ratios WHERE kind = 'taker_buy_sell' AND ts_ms IN "
                       "(SELECT ts_ms FROM binance_ratios WHERE kind = 'taker_buy_sell' AND ts_ms <= ? "
                       "ORDER BY ts_ms DESC LIMIT 2 OFFSET 1)", (AS_OF - 300_000 - 120_000,))
    assert gone == 2
    res = run("altdata_check", db, window_s=1800)
    m = metric(res, "binance.BTCUSDT.ratios.taker_buy_sell.fill")
    assert m.status == "FAIL" and m.reason.startswith("4 of 6 periods present; missing 2026-01-10T11:")
    assert m.reason.count("2026-01-10T") == 2


# ------------------------------------------------------------------------------ a stuck order book
def _ramp_upbit_trades(db, seconds=300, move=0.012):
    """KRW-BTC trades drift up by `move` over the last `seconds` before as-of."""
    start = AS_OF - seconds * 1000
    execute(db, "UPDATE upbit_trades SET price = price * (1 + ? * (trade_ts_ms - ?) / ?) "
                "WHERE code = 'KRW-BTC' AND trade_ts_ms > ?", (move, start, seconds * 1000, start))
    return start


def test_book_frozen_while_trades_move_fails(tmp_path, healthy):
    db = copy_db(healthy, tmp_path / "cqt.db")
    _ramp_upbit_trades(db)               # the book's rows keep arriving, with the same quotes
    p = check(tmp_path, "altdata_check", db, "--json")
    assert p.returncode == 1, p.stdout + p.stderr
    d = json.loads(p.stdout)
    assert d["failed"] == ["upbit.KRW-BTC.orderbook.frozen_s"]
    m = next(x for x in d["metrics"] if x["name"] == "upbit.KRW-BTC.orderbook.frozen_s")
    assert 200 < m["value"] <= 300 and m["threshold"] == 120
    assert "unchanged from" in m["reason"] and "still unchanged at its newest row" in m["reason"]
    assert "trades printed outside it" in m["reason"] and "1.2 % away" in m["reason"]
    # lag and fill cannot see it: the rows are fresh
    assert {x["name"]: x["status"] for x in d["metrics"]}["upbit.KRW-BTC.orderbook.fill"] == "PASS"
    text = check(tmp_path, "altdata_check", db).stdout
    assert "upbit.KRW-BTC.orderbook.frozen_s " in text and "<=120 FAIL  (best bid/ask " in text
    # a longer limit passes it
    assert check(tmp_path, "altdata_check", db, CQT_CHECK_BOOK_FROZEN_S="400").returncode == 0


def test_book_that_moves_with_its_trades_passes(tmp_path, healthy):
    db = copy_db(healthy, tmp_path / "cqt.db")
    start = _ramp_upbit_trades(db)
    execute(db, "UPDATE upbit_orderbook SET best_bid = best_bid * (1 + 0.012 * (ts_ms - ?) / 300000), "
                "best_ask = best_ask * (1 + 0.012 * (ts_ms - ?) / 300000) WHERE ts_ms > ?", (start, start, start))
    res = run("altdata_check", db)
    assert res.exit_code == 0, res.text()
    assert metric(res, "upbit.KRW-BTC.orderbook.frozen_s").value == 0


def test_book_frozen_then_moving_again_counts_until_the_change(healthy, tmp_path):
    db = copy_db(healthy, tmp_path / "cqt.db")
    start = _ramp_upbit_trades(db)
    # the book catches up 60 s before as-of: the stuck span ends there
    execute(db, "UPDATE upbit_orderbook SET best_bid = best_bid * 1.01, best_ask = best_ask * 1.01 WHERE ts_ms > ?",
            (AS_OF - 60_000,))
    m = metric(run("altdata_check", db), "upbit.KRW-BTC.orderbook.frozen_s")
    assert m.status == "FAIL" and 140 < m.value <= 240 and "until 2026-01-10T11:59:00" in m.reason
    assert start  # ramp applied


def test_binance_book_ticker_frozen_while_agg_trades_move_fails(tmp_path, healthy):
    db = copy_db(healthy, tmp_path / "cqt.db")
    start = AS_OF - 300_000
    execute(db, "UPDATE binance_agg_trades SET price = price * (1 + 0.012 * (trade_ts_ms - ?) / 300000) "
                "WHERE trade_ts_ms > ?", (start, start))
    # the bookTicker rows keep arriving, all quoting the price of the ramp's start
    conn = sqlite3.connect(db)
    bid, ask = conn.execute("SELECT bid_price, ask_price FROM binance_book_ticker WHERE event_ts_ms <= ? "
                            "ORDER BY event_ts_ms DESC LIMIT 1", (start,)).fetchone()
    conn.close()
    execute(db, "UPDATE binance_book_ticker SET bid_price = ?, ask_price = ? WHERE event_ts_ms > ?", (bid, ask, start))
    res = run("altdata_check", db)
    m = metric(res, "binance.BTCUSDT.bookTicker.frozen_s")
    assert res.exit_code == 1 and m.status == "FAIL" and 200 < m.value <= 300, res.text()
    assert "restart cqt-collect-binance" in m.reason
    assert metric(run("altdata_check", healthy), "binance.BTCUSDT.bookTicker.frozen_s").value == 0


# ------------------------------------------------------------------------------ label distribution
def _export(tmp_path, db, threshold):
    out = tmp_path / f"export-{threshold.replace(':', '_')}.parquet"
    p = run_bin("cqt-export", "--db", db, "-o", out, "--threshold", threshold, "--horizon", "30",
                env=cqt_env(tmp_path, **LEAK_ENV), timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    return out


def test_all_none_export_fails_the_gate(tmp_path, pipeline):
    db = copy_db(pipeline, tmp_path / "cqt.db")
    _export(tmp_path, db, "fixed:0.5")
    p = check(tmp_path, "feature_check", db, **PIPELINE_ENV)
    assert p.returncode == 1, p.stdout + p.stderr
    lines = p.stdout.splitlines()
    none_line = next(ln for ln in lines if ln.startswith("export.BTC.labels.not_all_none "))
    assert none_line.startswith("export.BTC.labels.not_all_none 0 >=1 FAIL  (all 570 rows are NONE: UP 0 (0.0%), "
                                "DOWN 0 (0.0%), NONE 570 (100.0%) of 570 rows in export-fixed_0.5.parquet "
                                "(threshold fixed:0.5"), none_line
    assert "export.BTC.labels.UP.share 0 >=0.05 FAIL" in p.stdout
    assert "export.BTC.labels.NONE.share 1 >=0.05 PASS" in p.stdout
    assert "the label threshold is too wide" in none_line
    # through the operator's gate: exit 1, feature_check names it, the other three pass
    g = gate(tmp_path, "--window", "600", "--as-of", AS_OF, "--db", db, **PIPELINE_ENV)
    assert g.returncode == 1, g.stdout + g.stderr
    assert "feature_check       FAIL              1" in g.stdout
    assert "  feature_check: export.BTC.labels.not_all_none 0 >=1 FAIL" in g.stdout
    for other in ("altdata_check", "feature_leak_check", "coinglass_check"):
        assert f"{other}" in g.stdout and f"{other} FAIL" not in g.stdout
    rows = query(db, "SELECT check_name, exit_code FROM check_runs ORDER BY id")
    assert rows[-1] == ("run_pipeline_checks", 1) and ("feature_check", 1) in rows


def test_balanced_export_passes_and_a_rare_class_fails(tmp_path, pipeline):
    db = copy_db(pipeline, tmp_path / "cqt.db")
    _export(tmp_path, db, "fixed:0.0002")                       # UP 46 %, DOWN 28 %, NONE 26 %
    res = run("feature_check", db, **PIPELINE_ENV)
    assert res.exit_code == 0, res.text()
    assert metric(res, "export.BTC.labels.DOWN.share").value == pytest.approx(157 / 570, abs=1e-4)
    res = run("feature_check", db, CQT_CHECK_LABEL_MIN_SHARE="0.3", **PIPELINE_ENV)
    assert [m.name for m in res.failed] == ["export.BTC.labels.DOWN.share", "export.BTC.labels.NONE.share"]


def test_label_counts_from_the_file_when_not_recorded(tmp_path, pipeline):
    """An export_runs row without counts (an older writer): the file's label column decides."""
    db = copy_db(pipeline, tmp_path / "cqt.db")
    _export(tmp_path, db, "fixed:0.5")
    execute(db, "UPDATE export_runs SET labels_json = '{}', summary_json = NULL")
    res = run("feature_check", db, **PIPELINE_ENV)
    m = metric(res, "export.BTC.labels.not_all_none")
    assert m.status == "FAIL" and m.value == 0 and "NONE 570 (100.0%)" in m.reason and "counted in the file" in m.reason


def test_no_export_is_a_skip(healthy):
    m = metric(run("feature_check", healthy), "export.BTC.labels")
    assert m.status == "SKIP" and "no export of BTC yet" in m.reason


# ------------------------------------------------------------------------------ every second of the leak window
LEAK_WINDOW = 200


def _shift_one_second_in_twenty(db, residue, column="rv_60s"):
    """Store, at one second in 20 of the window, the value the feature has one second LATER."""
    lo = AS_OF - LEAK_WINDOW * 1000
    cond = "ts_ms > ? AND ts_ms <= ? AND (ts_ms / 1000) % 20 = ?"
    changed = query(db, f"SELECT COUNT(*) FROM predictions p WHERE {cond} AND {column} IS NOT "
                        f"(SELECT {column} FROM predictions q WHERE q.ts_ms = p.ts_ms + 1000)",
                        (lo, AS_OF, residue))[0][0]
    execute(db, f"UPDATE predictions SET {column} = (SELECT {column} FROM predictions q "
                f"WHERE q.ts_ms = predictions.ts_ms + 1000) WHERE {cond}", (lo, AS_OF, residue))
    return changed


def _sampled_residues(db, env):
    s = settings_for(db, **env)
    conn = open_for_check(db)
    try:
        sample, n = leak.sample_t0(CheckContext(conn, s, Thresholds(s), AS_OF, LEAK_WINDOW))
    finally:
        conn.close()
    assert n == LEAK_WINDOW
    return {(t // 1000) % 20 for t in sample}


def test_one_shifted_second_in_twenty_is_caught_every_time(tmp_path, pipeline):
    db = copy_db(pipeline, tmp_path / "cqt.db")
    env = {**LEAK_ENV, "CQT_CHECK_LEAK_SAMPLES": "5", "CQT_CHECK_LEAK_BUDGET_S": "600"}
    # plant on seconds the seeded samples do not hit: sampling alone cannot see it
    residue = min(set(range(20)) - _sampled_residues(db, env))
    planted = _shift_one_second_in_twenty(db, residue)
    assert planted >= 5
    sampled_only = check(tmp_path, "feature_leak_check", db, "--window", LEAK_WINDOW,
                         **{**env, "CQT_CHECK_LEAK_BUDGET_S": "0"})
    assert sampled_only.returncode == 0, sampled_only.stdout       # the old behaviour: missed
    p = check(tmp_path, "feature_leak_check", db, "--window", LEAK_WINDOW, "--json", **env)
    assert p.returncode == 1, p.stdout + p.stderr
    d = json.loads(p.stdout)
    ms = {m["name"]: m for m in d["metrics"]}
    assert ms["leak.BTC.recompute.seconds"]["value"] == LEAK_WINDOW
    assert ms["leak.BTC.recompute.seconds"]["reason"].startswith(f"every second: {LEAK_WINDOW} of {LEAK_WINDOW} rows")
    assert ms["leak.BTC.recompute.samples"]["value"] == 5
    leak_m = ms["leak.BTC.recompute.predictions.rv_60s"]
    assert leak_m["status"] == "FAIL" and leak_m["value"] == planted
    assert f"{planted} of {LEAK_WINDOW} t0" in leak_m["reason"]
    assert ms["leak.BTC.warmup.mismatches"]["status"] == "PASS"


def test_beyond_the_budget_it_samples_and_says_so(tmp_path, pipeline):
    db = copy_db(pipeline, tmp_path / "cqt.db")
    res = run("feature_leak_check", db, window_s=LEAK_WINDOW, CQT_CHECK_LEAK_SAMPLES="7",
              CQT_CHECK_LEAK_BUDGET_S="0", **LEAK_ENV)
    assert res.exit_code == 0, res.text()
    m = metric(res, "leak.BTC.recompute.seconds")
    assert m.value == 7 and m.reason.startswith(f"sampled: 7 of {LEAK_WINDOW} rows recomputed")
    assert "every second would take about" in m.reason and "over the budget" in m.reason


def test_sample_is_the_same_as_sampling_the_full_list(tmp_path, pipeline):
    """Positions drawn from range(n) pick exactly what sampling the list of all rows picked."""
    s = settings_for(pipeline, **LEAK_ENV)
    conn = open_for_check(pipeline)
    try:
        ctx = CheckContext(conn, s, Thresholds(s), AS_OF, 600)
        sample, n = leak.sample_t0(ctx)
        all_t = [r[0] for r in conn.execute("SELECT ts_ms FROM predictions WHERE ts_ms > ? AND ts_ms <= ? "
                                            "ORDER BY ts_ms", (ctx.start_ms, AS_OF))]
    finally:
        conn.close()
    assert n == len(all_t) == 600
    assert sample == sorted(random.Random(AS_OF).sample(all_t, 50))


# ------------------------------------------------------------------------------ a damaged file
def _damage(path, pages=6, seed=7):
    """Overwrite random pages (never page 1, the header) with garbage."""
    raw = path.read_bytes()
    page_size = int.from_bytes(raw[16:18], "big") or 65536
    n_pages = len(raw) // page_size
    rnd = random.Random(seed)
    with open(path, "r+b") as f:
        for page in rnd.sample(range(2, n_pages + 1), pages):
            f.seek((page - 1) * page_size)
            f.write(rnd.randbytes(page_size))
    return path


def test_damaged_database_is_exit_3_everywhere(tmp_path, pipeline):
    db = _damage(copy_db(pipeline, tmp_path / "cqt.db"))
    for name in NAMES:
        p = check(tmp_path, name, db, **PIPELINE_ENV)
        assert p.returncode == 3, (name, p.stdout, p.stderr)
        assert "NOT EVALUATED" in p.stdout and ("is damaged" in p.stdout or "malformed" in p.stdout), p.stdout
    g = gate(tmp_path, "--window", "600", "--as-of", AS_OF, "--db", db, **PIPELINE_ENV)
    assert g.returncode == 3, g.stdout + g.stderr
    assert g.stdout.splitlines()[-1].startswith("run_pipeline_checks: NOT EVALUATED exit=3")
    assert all(f"{n}" in g.stdout for n in NAMES) and " PASS " not in g.stdout
    assert "results not recorded" in g.stderr
    g = gate(tmp_path, "--window", "600", "--as-of", AS_OF, "--db", db, "--integrity", "full", **PIPELINE_ENV)
    assert g.returncode == 3, g.stdout + g.stderr
    assert "PRAGMA integrity_check" in g.stdout or "malformed" in g.stdout, g.stdout


def test_damage_message_names_the_pragma_and_problems(tmp_path, pipeline):
    db = copy_db(pipeline, tmp_path / "cqt.db")
    # damage one page of a big table's b-tree: the file opens, the pragma finds it
    page_size = query(db, "PRAGMA page_size")[0][0]
    root = query(db, "SELECT rootpage FROM sqlite_master WHERE name = 'binance_book_ticker'")[0][0]
    pages = query(db, "PRAGMA page_count")[0][0]
    with open(db, "r+b") as f:
        victim = pages - 3 if pages - 3 != root else pages - 4
        f.seek((victim - 1) * page_size)
        f.write(b"\xa5" * page_size)
    p = check(tmp_path, "coinglass_check", db, **COINGLASS_OK_ENV)
    assert p.returncode == 3, p.stdout + p.stderr
    assert "is damaged: PRAGMA quick_check" in p.stdout
    p = check(tmp_path, "coinglass_check", db, "--integrity", "full", **COINGLASS_OK_ENV)
    assert p.returncode == 3 and "is damaged: PRAGMA integrity_check" in p.stdout, p.stdout


def test_healthy_file_full_integrity_passes(tmp_path, healthy):
    p = check(tmp_path, "coinglass_check", healthy, "--integrity", "full", **COINGLASS_OK_ENV)
    assert p.returncode == 0, p.stdout + p.stderr


def test_integrity_budget_is_a_note_not_a_failure(tmp_path, healthy):
    res = run("coinglass_check", healthy, CQT_CHECK_INTEGRITY_BUDGET_S="0.000001", **COINGLASS_OK_ENV)
    assert res.exit_code == 0, res.text()
    assert any("PRAGMA quick_check stopped after CQT_CHECK_INTEGRITY_BUDGET_S" in n for n in res.notes), res.notes


def test_bad_integrity_budget_is_misconfigured(tmp_path, healthy):
    p = gate(tmp_path, "--as-of", AS_OF, "--db", healthy, CQT_CHECK_INTEGRITY_BUDGET_S="abc", timeout=60)
    assert p.returncode == 78, p.stdout + p.stderr
    assert "CQT_CHECK_INTEGRITY_BUDGET_S" in p.stdout + p.stderr


def test_stream_fill_counts_in_chunks(healthy):
    """The coverage model consumes the chunked reader once and counts what it saw."""
    res = run("altdata_check", healthy)
    assert metric(res, "binance.BTCUSDT.markPrice.fill").reason == "600 updates in 600 s"
    assert altdata.coverage(iter([1000, 2000]), None, 0, 3000, 1500) == pytest.approx(2000 / 3000)


def test_nightly_runs_the_full_integrity_check(tmp_path):
    from cqt.config import load_settings
    from cqt.nightly.steps import checks_command
    settings = load_settings({"CQT_ENV_FILE": str(tmp_path / "none.env"), "CQT_DB": str(tmp_path / "cqt.db")})
    assert checks_command(settings)[-2:] == ["--integrity", "full"]
    custom = load_settings({"CQT_ENV_FILE": str(tmp_path / "none.env"), "CQT_NIGHTLY_CHECKS_CMD": "sh my.sh"})
    assert checks_command(custom) == ["sh", "my.sh"]
