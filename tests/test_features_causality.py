"""Causality: a stored row equals the recomputation on a copy of the database from which
every row not yet available at t0 was deleted — for 100 random t0 of BTC and 30 of each
other asset of a three-asset database (BTC, ETH, SOL: each asset's rows from its own raw
rows). Planting a leak (a centered window; Coinglass joined on open time) must make this
test fail: that is tested too. Also: results do not depend on the warm-up or on how the
range is chunked.
"""
from __future__ import annotations

import math
import random
import sqlite3

import numpy as np
import pytest

from cqt import features, timerule
from cqt.aggregate.rebuilds import rebuild
from cqt.db import connect
from cqt.features import FEATURE_COLUMNS, MARKET_COLUMNS, PREDICTION_COLUMNS, FeatureParams, SecondCache, compute_range
from fixtures_raw import make_raw_db

START = 1_700_000_000_000
SECONDS = 1800
END = START + (SECONDS - 1) * 1000
ASSETS = ("BTC", "ETH", "SOL")
PARAMS = FeatureParams(cg_interval="1m")       # Coinglass 1m bars: a bar closes every minute
PARAMS_OF = {a: FeatureParams(asset=a, cg_interval="1m") for a in ASSETS}
# the deletion uses the TRUE rule, captured before any test plants a leak in it
DELETES = [(t, timerule.availability_sql(t, PARAMS.cg_delay_s)) for t in timerule.RAW_TABLES]
T0S = sorted(random.Random(20241124).sample(range(START // 1000 + 1, END // 1000 + 1), 100))
T0S = [s * 1000 for s in T0S]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("causal") / "raw.db"
    make_raw_db(path, START, SECONDS, seed=7, coinglass_interval="1m", assets=ASSETS)
    rebuild(path, START, END, params=tuple(PARAMS_OF.values()))   # the stored rows, through the real write path
    conn = connect(path)
    yield conn
    conn.close()


def truncated_copy(conn: sqlite3.Connection, t0: int) -> sqlite3.Connection:
    """An in-memory copy of the database holding only rows available at t0."""
    mem = sqlite3.connect(":memory:", isolation_level=None)
    conn.backup(mem)
    for table, expr in DELETES:
        mem.execute(f"DELETE FROM {table} WHERE {expr} > ? OR {expr} IS NULL", (t0,))
    return mem


def _same(a, b) -> bool:
    if a is None or b is None or (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
        return (a is None or (isinstance(a, float) and math.isnan(a))) and \
               (b is None or (isinstance(b, float) and math.isnan(b)))
    return a == b


def stored_rows(conn: sqlite3.Connection, t0s, asset: str = "BTC") -> dict[int, tuple[tuple, tuple]]:
    q = ",".join("?" * len(t0s))
    m = {r[1]: r for r in conn.execute(f"SELECT {', '.join(MARKET_COLUMNS)} FROM market_1s "
                                       f"WHERE symbol = ? AND ts_ms IN ({q})", (asset, *t0s))}
    p = {r[1]: r for r in conn.execute(f"SELECT {', '.join(PREDICTION_COLUMNS)} FROM predictions "
                                       f"WHERE symbol = ? AND ts_ms IN ({q})", (asset, *t0s))}
    return {t: (m[t], p[t]) for t in t0s}


def causality_mismatches(conn: sqlite3.Connection, stored: dict[int, tuple[tuple, tuple]],
                         warmups=(1.0,), params: FeatureParams = PARAMS) -> list[str]:
    """Recompute every stored t0 on a truncated copy; list the values that differ."""
    out = []
    for t0, (m_row, p_row) in stored.items():
        mem = truncated_copy(conn, t0)
        try:
            for w in warmups:
                res = compute_range(mem, t0, t0, params, warmup=w)
                for cols, got, want in ((MARKET_COLUMNS, res.market_rows()[0], m_row),
                                        (PREDICTION_COLUMNS, res.prediction_rows()[0], p_row)):
                    for c, g, s in zip(cols, got, want):
                        if not _same(g, s):
                            out.append(f"t0={t0} warmup={w} {c}: stored={s!r} recomputed={g!r}")
        finally:
            mem.close()
    return out


@pytest.mark.parametrize("asset", ASSETS)
def test_causality_random_t0_of_each_asset(db, asset):
    t0s = T0S if asset == "BTC" else T0S[asset == "SOL"::3]      # 100 of BTC, 30-odd of ETH and SOL
    stored = stored_rows(db, t0s, asset)
    assert len(stored) == len(t0s) >= 33
    assert {m[0] for m, _ in stored.values()} == {p[0] for _, p in stored.values()} == {asset}
    bad = causality_mismatches(db, stored, warmups=(1.0, 3.0), params=PARAMS_OF[asset])
    assert not bad, f"{len(bad)} differences, first: {bad[:5]}"
    # not vacuous: every feature has values at the sampled t0
    for i, c in enumerate(PREDICTION_COLUMNS):
        if c in FEATURE_COLUMNS or c == "score":
            assert sum(p[i] is not None for _, p in stored.values()) >= len(t0s) // 2, c
    # the as-of view without a copy (what the leak check can use) gives the same rows
    for t0 in t0s[::10]:
        res = compute_range(db, t0, t0, PARAMS_OF[asset], truncate_ms=t0)
        assert all(_same(a, b) for a, b in zip(res.prediction_rows()[0], stored[t0][1]))


def test_the_assets_rows_differ(db):
    """Not vacuous: each asset has its own prices and features (no asset reads another's rows)."""
    closes = {a: db.execute("SELECT AVG(close), AVG(ret_60s), AVG(bn_ret_60s) FROM market_1s JOIN predictions "
                            "USING (symbol, ts_ms) WHERE symbol = ?", (a,)).fetchone() for a in ASSETS}
    assert closes["BTC"][0] > 10 * closes["ETH"][0] > 100 * closes["SOL"][0] > 0
    assert len({c[1] for c in closes.values()}) == len({c[2] for c in closes.values()}) == 3


def _stored_in_memory(conn) -> dict[int, tuple[tuple, tuple]]:
    res = compute_range(conn, START, END, PARAMS)
    m = {r[1]: r for r in res.market_rows()}
    p = {r[1]: r for r in res.prediction_rows()}
    return {t: (m[t], p[t]) for t in T0S}


def test_planted_centered_window_is_caught(db, monkeypatch):
    def centered_sum(x, idx, k):     # the classic leak: a window centred on t
        hi = len(x) - 1
        s = x[np.minimum(idx + k // 2, hi)].copy()
        for j in range(1, k):
            s += x[np.minimum(idx + k // 2 - j, hi)]
        return s

    monkeypatch.setattr(features, "_trail_sum", centered_sum)
    leaky = _stored_in_memory(db)
    bad = causality_mismatches(db, dict(list(leaky.items())[:20]))
    assert bad, "the causality test did not notice a centered window"
    assert any("flow_imb_60s" in b for b in bad) and any("rv_60s" in b for b in bad)


def test_planted_coinglass_by_open_time_is_caught(db, monkeypatch):
    for table in ("coinglass_open_interest", "coinglass_funding"):
        r = timerule.AVAILABILITY[table]
        monkeypatch.setitem(timerule.AVAILABILITY, table,
                            timerule.Rule(table, r.kind, "open_ts_ms", "{p}open_ts_ms",
                                          lambda row, d: row["open_ts_ms"],
                                          "LEAK: open time"))
    leaky = _stored_in_memory(db)
    bad = causality_mismatches(db, dict(list(leaky.items())[:20]))
    assert bad, "the causality test did not notice Coinglass joined on open time"
    assert any("cg_oi_chg" in b for b in bad) and any("cg_funding" in b for b in bad)


def test_same_rows_whatever_the_chunking_and_warmup(db):
    a, b = START + 600_000, START + 900_000
    whole = compute_range(db, a, b, PARAMS)
    warm3 = compute_range(db, a, b, PARAMS, warmup=3)
    cache = SecondCache()
    stepped_m, stepped_p = [], []
    t = a
    while t <= b:                                    # like the live service: a few seconds at a time
        e = min(b, t + 6_000)
        r = compute_range(db, t, e, PARAMS, cache=cache)
        stepped_m += r.market_rows()
        stepped_p += r.prediction_rows()
        t = e + 1000
    for other_m, other_p in ((warm3.market_rows(), warm3.prediction_rows()), (stepped_m, stepped_p)):
        assert len(other_m) == len(whole.market_rows()) == 301
        for x, y in zip(whole.market_rows() + whole.prediction_rows(), other_m + other_p):
            assert all(_same(u, v) for u, v in zip(x, y)), (x, y)
