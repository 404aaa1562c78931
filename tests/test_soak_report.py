"""The soak script's pure accounting: ids missing/duplicate/extra, report rows, start-limit rule."""
import importlib.util
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parent / "bench" / "soak.py"
spec = importlib.util.spec_from_file_location("soak_bench", SOAK)
soak = importlib.util.module_from_spec(spec)
sys.modules["soak_bench"] = soak          # dataclasses look their module up there
spec.loader.exec_module(soak)


def test_account_counts_missing_duplicate_extra_within_the_window():
    produced = {i: 1_000 * i for i in range(100, 121)}          # id -> trade time
    stored = [i for i in range(100, 121) if i not in (105, 106)] + [110, 130]
    acc = soak.account("binance:btcusdt@aggTrade", produced, 101, 119, sent=[[101, 104], [107, 119]],
                       skipped=[[105, 105]], stored=[i for i in stored if 101 <= i <= 119])
    assert (acc.expected, acc.missing, acc.duplicate, acc.extra) == (19, 2, 1, 0)
    assert acc.sent_ws == 17 and acc.skipped == 1
    assert acc.missing_ts == [105_000, 106_000]
    assert acc.missing_sample[0].startswith("105 (held back") and acc.missing_sample[1].startswith("106 (not sent")


def test_account_sparse_ids_and_an_id_the_model_never_made():
    produced = {10_000: 1, 10_003: 2, 10_010: 3}
    acc = soak.account("upbit:KRW-BTC@trade", produced, 10_000, 10_010, [[10_000, 10_000], [10_010, 10_010]], [],
                       [10_000, 10_003, 10_010, 10_005])
    assert (acc.expected, acc.missing, acc.duplicate, acc.extra) == (3, 0, 0, 1)


def test_buckets_clamp_and_gaps_per_bucket():
    assert [soak.bucket_of(x, 3600, 2) for x in (-50, 0, 3599, 3600, 99_999)] == [0, 0, 0, 1, 1]
    t0 = 1_000_000
    gaps = [("upbit", "KRW-BTC@trade", "filled", None, t0 + 10_000, t0 + 3_700_000, 5),
            ("binance_ws", "BTCUSDT@aggTrade", "open", None, t0 + 3_650_000, None, None),
            ("upbit", "KRW-BTC@trade", "unfillable", None, t0 - 5_000, t0 + 1_000, 0)]
    assert soak.gaps_per_bucket(gaps, t0, 3600, 2) == [(2, 0), (1, 1)]


def test_start_limit_needs_more_than_burst_starts_within_the_interval():
    assert not soak.would_hit_start_limit([0, 10, 20, 30, 40])
    assert soak.would_hit_start_limit([0, 5, 10, 15, 20, 25])
    assert not soak.would_hit_start_limit([0, 100, 200, 300, 400, 500, 600])


def test_markdown_table_escapes_pipes():
    t = soak.markdown_table(["a", "b"], [["1", "x|y"]])
    assert t.splitlines() == ["| a | b |", "| --- | --- |", "| 1 | x/y |"]


def test_fault_plan_is_seeded_and_has_a_disk_full_each_hour():
    import random
    p1 = soak.fault_plan(random.Random(5), 7200, 3600, 40, ("a", "b"))
    p2 = soak.fault_plan(random.Random(5), 7200, 3600, 40, ("a", "b"))
    assert p1 == p2 and sum(1 for _, k, _ in p1 if k == "disk_full") == 2
    assert all(p1[i][0] <= p1[i + 1][0] for i in range(len(p1) - 1))
    assert all(k == "disk_full" or 90 <= t < 7200 - 30 for t, k, _ in p1)
