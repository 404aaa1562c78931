"""feature_leak_check: could any stored value have been unknown at its row's time?

Structural part (time rule of cqt.timerule):
- leak.market_1s.negative_ages   every *_age_ms in market_1s in the window is >= 0
                                  (a negative age means a value from after the row's time);
- leak.market_1s.provenance       for each sampled t0, every carried value (close, book,
                                  Binance last, mark, KRW-USDT) is found in its raw table at
                                  t0 - age with the same value and availability <= t0;
- leak.predictions.sources        a feature that is not NULL at t0 must have at least one
                                  row of its source tables (cqt.catalogue.FEATURE_SOURCES)
                                  available at t0 within the longest look-back;
- leak.labels.violations          the newest export whose file exists: every label_ts >=
                                  t0 + horizon (SKIP, saying so, when there is no export).

Recomputation part (the strong one, in the spirit of freqtrade's lookahead analysis):
for every second of the window when that fits the time budget (CQT_CHECK_LEAK_BUDGET_S,
default 30 s), else for K sampled t0 (CQT_CHECK_LEAK_SAMPLES, default 50; reproducible:
seeded by --as-of; the K samples are always done first and time the rest), the ONE feature
function (cqt.features.compute_range) is run on a
view of the database truncated at t0 — temporary views that shadow every raw and
derived table with only the rows whose availability (cqt.timerule) is <= t0, so future
rows do not exist for it, whatever the function does — with a warm-up of x1 and x3 the
features' longest look-back. Any stored value (predictions and market_1s) that differs
from the recomputation beyond CQT_CHECK_LEAK_TOLERANCE is a leak, named with the
column, t0 and both values; x1 and x3 disagreeing means a value depends on where the
computation started.

Late data is not a leak: a row that reached the database after its second was written
live (a backfill after a reconnect) makes the live row differ from a recomputation that
sees it. Before calling a mismatch a leak, the row is recomputed once more on the view
of what was in the database when it was written (availability <= t0 and recv_ts_ms <=
t0 + CQT_AGGREGATE_GRACE_S); a stored row that matches THAT view is reported as a note
(`cqt-aggregate --rebuild` corrects it), never as a FAIL. A real leak uses rows with
availability > t0, which neither view contains, so it cannot hide there.
"""
from __future__ import annotations

import math
import random
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .. import db, timerule
from ..catalogue import FEATURE_SOURCES
from ..featureparams import max_lookback_ms, params_for
from ..rawread import SecondCache
from ..timeutil import fmt_ms
from .base import CannotEvaluate, CheckContext, check_command
from .exports import Export, file_rows, newest_exports
from .rawkeys import key_filter
from .result import Metric, fmt_num

DERIVED_TABLES = ("market_1s", "predictions")
KEY_COLUMNS = ("symbol", "ts_ms")

# market_1s carried value -> (age column, raw table, key column, params attribute, raw value column);
# all stream tables (timerule kind "stream"): a row's availability is its time column.
PROVENANCE = {
    "close": ("close_age_ms", "upbit_trades", "code", "upbit_code", "price"),
    "best_bid": ("book_age_ms", "upbit_orderbook", "code", "upbit_code", "best_bid"),
    "binance_last": ("binance_age_ms", "binance_agg_trades", "symbol", "binance_symbol", "price"),
    "mark_price": ("mark_age_ms", "binance_mark_price", "symbol", "binance_symbol", "mark_price"),
    "usdt_krw": ("usdt_krw_age_ms", "upbit_trades", "code", "usdt_code", "price"),
}


def _features():
    try:
        from .. import features
    except ImportError as exc:
        raise CannotEvaluate(f"the feature function cqt.features cannot be imported: {exc}") from None
    return features


# ------------------------------------------------------------------------------ truncated view
class TruncatedView:
    """A read-only connection on the database in which every raw and derived table is
    shadowed by a TEMP VIEW holding only the rows available at t0 (cqt.timerule; derived
    rows: ts_ms <= t0). Unqualified table names resolve to temp objects first, so any code
    given this connection sees the database "as it could be known at t0"."""

    def __init__(self, path: Path, coinglass_delay_s: int):
        self.conn = db.connect(path, readonly=True)
        self.delay_s = coinglass_delay_s
        self.tables = [t for t in (*timerule.RAW_TABLES, *DERIVED_TABLES) if self._exists(t)]

    def _exists(self, table: str) -> bool:
        return self.conn.execute("SELECT 1 FROM main.sqlite_master WHERE type = 'table' AND name = ?",
                                 (table,)).fetchone() is not None

    def truncate(self, t0: int, recv_cap: int | None = None) -> None:
        """Shadow every table with the rows available at t0 (and, with recv_cap, also
        received by then: what the database held at that moment)."""
        t0 = int(t0)
        for t in self.tables:
            if t in DERIVED_TABLES:
                cond = f"ts_ms <= {t0}"
            else:
                r = timerule.rule(t)
                cond = f"{r.time_col} <= {t0} AND {timerule.availability_sql(t, self.delay_s)} <= {t0}"
                if recv_cap is not None:
                    cond += f" AND recv_ts_ms <= {int(recv_cap)}"
            self.conn.execute(f"DROP VIEW IF EXISTS temp.{t}")
            self.conn.execute(f"CREATE TEMP VIEW {t} AS SELECT * FROM main.{t} WHERE {cond}")

    def untruncate(self) -> None:
        """Drop the views: the whole database, future included."""
        for t in self.tables:
            self.conn.execute(f"DROP VIEW IF EXISTS temp.{t}")

    def close(self) -> None:
        self.conn.close()


# ------------------------------------------------------------------------------ comparing
def values_differ(a: Any, b: Any, tol: float) -> bool:
    if a is None or b is None:
        return (a is None) != (b is None)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        fa, fb = float(a), float(b)
        if math.isnan(fa) or math.isnan(fb):
            return math.isnan(fa) != math.isnan(fb)
        return abs(fa - fb) > tol * max(1.0, abs(fa), abs(fb))
    return a != b


def diff_rows(stored: dict[str, Any], computed: dict[str, Any], columns, tol: float) -> list[str]:
    return [c for c in columns if values_differ(stored.get(c), computed.get(c), tol)]


LOOKAHEAD = "look-ahead: a recomputation that sees data after t0 reproduces the stored value"
UNEXPLAINED = ("not reproducible from the data at t0 nor with later data: written from stale or missing input "
               "(rebuild the range with cqt-aggregate --rebuild) or non-deterministic feature code")


@dataclass
class Mismatch:
    table: str
    column: str
    t0: int
    stored: Any
    recomputed: Any
    why: str = ""

    def text(self, with_why: bool = True) -> str:
        why = f" ({self.why})" if self.why and with_why else ""
        return (f"{self.table}.{self.column} at t0={fmt_ms(self.t0)}: stored {fmt_num(self.stored)}, "
                f"recomputed {fmt_num(self.recomputed)}{why}")


@dataclass
class RecomputeOutcome:
    samples: int = 0
    leaks: list[Mismatch] = field(default_factory=list)
    warmup: list[Mismatch] = field(default_factory=list)
    late: list[int] = field(default_factory=list)
    missing_market: int = 0
    elapsed_s: float = 0.0
    sampled: int = 0           # of `samples`, the seeded K (the rest: the every-second sweep)
    estimate_s: float = 0.0    # what every second of the window would take, at the samples' pace
    stopped: bool = False      # the deadline ended it before every t0 was done

    def merge(self, other: "RecomputeOutcome") -> None:
        self.samples += other.samples
        self.leaks += other.leaks
        self.warmup += other.warmup
        self.late = sorted(self.late + other.late)
        self.missing_market += other.missing_market
        self.elapsed_s += other.elapsed_s
        self.stopped = self.stopped or other.stopped


def _row(conn: sqlite3.Connection, table: str, asset: str, t0: int) -> dict[str, Any] | None:
    cur = conn.execute(f"SELECT * FROM main.{table} WHERE symbol = ? AND ts_ms = ?", (asset, t0))
    row = cur.fetchone()
    if row is None:
        return None
    return dict(zip([d[0] for d in cur.description], row))


def _computed(features, res) -> tuple[dict[str, Any], dict[str, Any]]:
    p = dict(zip(features.PREDICTION_COLUMNS, res.prediction_rows()[0]))
    m = dict(zip(features.MARKET_COLUMNS, res.market_rows()[0]))
    return p, m


def recompute(ctx: CheckContext, features, params, t0s: Iterable[int],
              deadline: float | None = None, warmup_check: bool = True) -> RecomputeOutcome:
    """Recompute every t0 of `t0s` (a list, or an ascending iterable) of one asset
    (`params.asset`) on the truncated view; stop early (outcome.stopped) once the monotonic
    clock passes `deadline` (never before the first t0). Without
    `warmup_check` only the short warm-up runs (the every-second sweep: the samples already
    compare x1 with x3, and the sweep's job is the look-ahead; half the cost)."""
    started = time.monotonic()
    th = ctx.thresholds
    tol = th("CQT_CHECK_LEAK_TOLERANCE")
    w_short, w_long = th("CQT_CHECK_LEAK_WARMUP_SHORT"), th("CQT_CHECK_LEAK_WARMUP_LONG")
    # the aggregate's grace (default and bounds declared once, in the settings registry)
    grace_ms = int(round(ctx.settings.get_float("CQT_AGGREGATE_GRACE_S") * 1000))
    p_cols = [c for c in features.PREDICTION_COLUMNS if c not in KEY_COLUMNS]
    m_cols = [c for c in features.MARKET_COLUMNS if c not in KEY_COLUMNS]
    out = RecomputeOutcome()
    view = TruncatedView(ctx.settings.db, params.cg_delay_s)
    # Per-second summaries of stream tables, one cache per warm-up, kept across the sampled
    # t0 (ascending): every row in them was read through a view truncated at or before the
    # current t0, so reusing them never shows the function the future, and each raw row is
    # read once instead of once per sample.
    warmups = (max(1.0, w_short), max(1.0, w_long)) if warmup_check else (max(1.0, w_short),)
    caches = {w: SecondCache() for w in warmups}
    try:
        for t0 in (sorted(t0s) if isinstance(t0s, list) else t0s):
            if deadline is not None and out.samples and time.monotonic() > deadline:
                out.stopped = True
                break
            stored_p = _row(ctx.conn, "predictions", params.asset, t0)
            if stored_p is None:
                continue
            stored_m = _row(ctx.conn, "market_1s", params.asset, t0)
            out.samples += 1
            if stored_m is None:
                out.missing_market += 1
            view.truncate(t0)
            runs = [_computed(features, features.compute_range(view.conn, t0, t0, params, warmup=w, cache=c))
                    for w, c in caches.items()]
            if len(runs) == 1:  # short and long warm-up configured equal, or no warm-up comparison
                runs.append(runs[0])
            (p1, m1), (p3, m3) = runs
            for table, a, b, cols in (("predictions", p1, p3, p_cols), ("market_1s", m1, m3, m_cols)):
                for c in diff_rows(a, b, cols, tol):
                    out.warmup.append(Mismatch(table, c, t0, a.get(c), b.get(c)))
            found = [Mismatch("predictions", c, t0, stored_p.get(c), p1.get(c))
                     for c in diff_rows(stored_p, p1, p_cols, tol)]
            if stored_m is not None:
                found += [Mismatch("market_1s", c, t0, stored_m.get(c), m1.get(c))
                          for c in diff_rows(stored_m, m1, m_cols, tol)]
            if not found:
                continue
            # What the database held when the row was written live: late rows excluded.
            view.truncate(t0, recv_cap=t0 + grace_ms)
            pl, ml = _computed(features, features.compute_range(view.conn, t0, t0, params, warmup=max(1.0, w_short)))
            live_ok = not diff_rows(stored_p, pl, p_cols, tol) and (
                stored_m is None or not diff_rows(stored_m, ml, m_cols, tol))
            if live_ok:
                out.late.append(t0)
                continue
            # Not late data. Does the future explain it? (a leaky function on the whole
            # database reproduces what it stored; stale input reproduces under no view)
            view.untruncate()
            pf, mf = _computed(features, features.compute_range(view.conn, t0, t0, params, warmup=max(1.0, w_short)))
            for mm in found:
                seen = (pf if mm.table == "predictions" else mf).get(mm.column)
                mm.why = LOOKAHEAD if not values_differ(mm.stored, seen, tol) else UNEXPLAINED
            out.leaks += found
    finally:
        view.close()
        out.elapsed_s = time.monotonic() - started
    return out


# ------------------------------------------------------------------------------ the parts
def window_t0(ctx: CheckContext, asset: str) -> Iterator[int]:
    """Every predictions ts_ms of `asset` in the window, ascending, read in chunks (memory flat in the window)."""
    for rows in db.iter_keyset(ctx.conn, "predictions", "ts_ms", "ts_ms", ctx.start_ms + 1, ctx.as_of_ms,
                               "symbol = ?", (asset,)):
        for (t,) in rows:
            yield t


def sample_t0(ctx: CheckContext, asset: str | None = None) -> tuple[list[int], int]:
    """Up to K predictions ts_ms of `asset` (default: the first judged) in the window, reproducibly
    chosen (seeded by as-of), and how many rows the window has. Positions are drawn from range(n)
    and the rows walked in chunks: the same choice as sampling the list of all of them, without
    holding that list."""
    asset = asset or ctx.assets[0]
    k = int(ctx.thresholds("CQT_CHECK_LEAK_SAMPLES"))
    n = ctx.conn.execute("SELECT COUNT(*) FROM predictions WHERE symbol = ? AND ts_ms > ? AND ts_ms <= ?",
                         (asset, ctx.start_ms, ctx.as_of_ms)).fetchone()[0]
    if n <= k:
        return list(window_t0(ctx, asset)), n
    picks = sorted(random.Random(ctx.as_of_ms).sample(range(n), k))
    out: list[int] = []
    want = iter(picks)
    nxt = next(want)
    for i, t in enumerate(window_t0(ctx, asset)):
        if i == nxt:
            out.append(t)
            nxt = next(want, None)
            if nxt is None:
                break
    return out, n


@dataclass
class AssetRun:
    """One asset's part of the leak check: its parameters, its samples and what was recomputed."""

    asset: str
    params: Any
    sample: list[int]
    n_rows: int
    res: RecomputeOutcome = field(default_factory=RecomputeOutcome)
    share_s: float = 0.0       # the part of the budget its every-second sweep had


def recompute_assets(ctx: CheckContext, features, runs: list[AssetRun]) -> None:
    """The budget (CQT_CHECK_LEAK_BUDGET_S, the total for every asset) shared across assets.

    1. Samples, asset by asset: each asset's K samples (warm-up x1 and x3). With several assets
       asset i's samples stop once the run has used (i + 1) / n of the budget, at least one each,
       so the samples alone never take the whole budget; one asset's samples are never cut.
    2. Every second: what is left of the budget is shared equally among the assets still to
       go (an asset that needs less leaves the rest to the next ones); an asset's other seconds
       are recomputed if, at its samples' pace, they fit its share, with a hard stop at 1.5 x
       the share (a wrong estimate on a busy machine). Beyond its share its samples stand alone.
    """
    budget_s = ctx.thresholds("CQT_CHECK_LEAK_BUDGET_S")
    started = time.monotonic()
    n = len(runs)
    for i, run in enumerate(runs):
        deadline = None if n == 1 else started + budget_s * (i + 1) / n
        run.res = recompute(ctx, features, run.params, run.sample, deadline=deadline)
        run.res.sampled = run.res.samples
        per_s = run.res.elapsed_s / max(1, run.res.samples)
        run.res.estimate_s = run.res.elapsed_s + per_s * (run.n_rows - run.res.samples)
    for i, run in enumerate(runs):
        run.share_s = max(0.0, budget_s - (time.monotonic() - started)) / (n - i)
        rest = run.n_rows - len(run.sample)
        if rest <= 0 or budget_s <= 0 or run.res.stopped:
            continue
        per_s = run.res.elapsed_s / max(1, run.res.samples)
        if per_s * rest > run.share_s:
            continue
        done = set(run.sample)
        others = (t for t in window_t0(ctx, run.asset) if t not in done)
        run.res.merge(recompute(ctx, features, run.params, others, deadline=time.monotonic() + 1.5 * run.share_s,
                                warmup_check=False))


def negative_ages(ctx: CheckContext, asset: str) -> Metric:
    name = f"leak.{asset}.market_1s.negative_ages"
    cols = [r[1] for r in ctx.conn.execute("PRAGMA table_info(market_1s)") if r[1].endswith("_age_ms")]
    if not cols:
        return Metric.skip(name, "market_1s has no *_age_ms columns")
    cond = " OR ".join(f"{c} < 0" for c in cols)
    n, first = ctx.conn.execute(f"SELECT COUNT(*), MIN(ts_ms) FROM market_1s WHERE symbol = ? AND ts_ms > ? "
                                f"AND ts_ms <= ? AND ({cond})", (asset, ctx.start_ms, ctx.as_of_ms)).fetchone()
    reason = (f"{n} rows use a value from after their own time (first {fmt_ms(first)})" if n
              else f"columns: {', '.join(cols)}")
    return Metric.judge(name, n, "==", 0, reason)


def provenance(ctx: CheckContext, params, sample: list[int]) -> Metric:
    bad: list[str] = []
    checked = 0
    for t0 in sample:
        m = _row(ctx.conn, "market_1s", params.asset, t0)
        if m is None:
            continue
        for col, (age_col, table, key_col, key_attr, raw_col) in PROVENANCE.items():
            value, age = m.get(col), m.get(age_col)
            if value is None or age is None:
                continue
            checked += 1
            src_t = t0 - int(age)
            rule = timerule.rule(table)
            # Stream tables: availability IS the time column (cqt.timerule), so the source row is
            # available at t0 iff src_t <= t0. BETWEEN, not `=`: with `time_col = ?` SQLite's
            # planner prefers scanning the (code, id) primary key of these WITHOUT ROWID tables.
            assert rule.kind == "stream", table
            hit = src_t <= t0 and ctx.conn.execute(
                f"SELECT 1 FROM main.{table} WHERE {key_col} = ? AND {rule.time_col} BETWEEN ? AND ? "
                f"AND {raw_col} = ? LIMIT 1", (getattr(params, key_attr), src_t, src_t, value)).fetchone() is not None
            if not hit:
                bad.append(f"market_1s.{col} at {fmt_ms(t0)} = {fmt_num(value)} (age {age} ms): no {table} row "
                           f"available at t0 with that time and value")
    reason = "; ".join(bad[:3]) + (f"; +{len(bad) - 3} more" if len(bad) > 3 else "") if bad else \
        f"{checked} carried values traced to their raw rows"
    return Metric.judge(f"leak.{params.asset}.market_1s.provenance", len(bad), "==", 0, reason)


def source_presence(ctx: CheckContext, features, params, sample: list[int]) -> Metric:
    """A non-NULL feature needs a source row available at t0 within the longest look-back."""
    lookback = int(max_lookback_ms(params) * max(1.0, ctx.thresholds("CQT_CHECK_LEAK_WARMUP_LONG")))
    delay = params.cg_delay_s
    cache: dict[tuple[str, int], bool] = {}
    bad: list[str] = []

    def available(table: str, t0: int) -> bool:
        key = (table, t0)
        if key not in cache:
            r = timerule.rule(table)
            where, args = key_filter(table, params)
            cache[key] = ctx.conn.execute(
                f"SELECT 1 FROM main.{table} WHERE {where} AND {r.time_col} <= ? AND {r.time_col} > ? "
                f"AND {timerule.availability_sql(table, delay)} <= ? LIMIT 1",
                (*args, t0, t0 - lookback, t0)).fetchone() is not None
        return cache[key]

    for t0 in sample:
        p = _row(ctx.conn, "predictions", params.asset, t0)
        if p is None:
            continue
        for feat, tables in FEATURE_SOURCES.items():
            if p.get(feat) is not None and not any(available(t, t0) for t in tables):
                bad.append(f"predictions.{feat} at {fmt_ms(t0)} = {fmt_num(p.get(feat))} but no "
                           f"{'/'.join(tables)} row was available then")
    reason = "; ".join(bad[:3]) + (f"; +{len(bad) - 3} more" if len(bad) > 3 else "") if bad else \
        f"{len(sample)} sampled rows x {len(FEATURE_SOURCES)} features"
    return Metric.judge(f"leak.{params.asset}.predictions.sources", len(bad), "==", 0, reason)


def label_metric(ctx: CheckContext, asset: str, found: Export | None) -> Metric:
    name = f"leak.{asset}.labels.violations"
    if found is None:
        return Metric.skip(name, f"no export of {asset} yet (no export_runs entry whose file exists and holds it): "
                                 "label part skipped")
    path, horizon = found.path, found.horizon_sec
    try:
        import pyarrow as pa
        import pyarrow.compute as pc

        table = file_rows(found, ["t0", "label_ts"])

        def ms(col):  # epoch ms as float64, NaN where NULL
            arr = pc.cast(pc.cast(table.column(col), pa.timestamp("ms", tz="UTC")), pa.int64())
            return arr.to_numpy(zero_copy_only=False).astype("float64")

        t0, lab = ms("t0"), ms("label_ts")
    except Exception as exc:  # noqa: BLE001 - an unreadable export is a failed check, said plainly
        return Metric.judge(name, None, "==", 0,
                            none_reason=f"cannot read t0/label_ts from {path}: {type(exc).__name__}: {exc}")
    import numpy as np

    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(lab < t0 + horizon * 1000)   # NaN (no label) compares False
    if len(bad):
        i = int(bad[0])
        reason = (f"{len(bad)} of {len(t0)} rows in {path.name} have label_ts < t0 + {horizon} s "
                  f"(first t0={fmt_ms(int(t0[i]))} label_ts={fmt_ms(int(lab[i]))})")
    else:
        reason = f"{len(t0)} rows in {path.name}, horizon {horizon} s"
    return Metric.judge(name, int(len(bad)), "==", 0, reason)


def mismatch_metrics(prefix: str, items: list[Mismatch], samples: int, what: str) -> list[Metric]:
    by_col: dict[str, list[Mismatch]] = {}
    for mm in items:
        by_col.setdefault(f"{mm.table}.{mm.column}", []).append(mm)
    kinds = {LOOKAHEAD: "look-ahead", UNEXPLAINED: "not reproducible"}
    counts = {}
    for mm in items:
        if mm.why in kinds:
            counts[kinds[mm.why]] = counts.get(kinds[mm.why], 0) + 1
    split = f" [{', '.join(f'{n} {k}' for k, n in counts.items())}]" if counts else ""
    total = Metric.judge(f"{prefix}.mismatches", len(items), "==", 0,
                         f"{len(by_col)} columns {what}{split}: " +
                         "; ".join(v[0].text(with_why=False) for v in list(by_col.values())[:3])
                         if items else f"{samples} t0 recomputed")
    out = [total]
    for col, v in by_col.items():
        out.append(Metric.judge(f"{prefix}.{col}", len(v), "==", 0,
                                f"{len(v)} of {samples} t0; e.g. {v[0].text()}"))
    return out


def evaluate(ctx: CheckContext) -> list[Metric]:
    """Per judged asset (its rows `WHERE symbol = ?`, metric names `leak.<asset>.…`), the
    budget shared across them (recompute_assets)."""
    features = _features()
    exports = newest_exports(ctx)
    runs: list[AssetRun] = []
    out: list[Metric] = []
    for asset in ctx.assets:
        sample, n_rows = sample_t0(ctx, asset)
        runs.append(AssetRun(asset, params_for(ctx.settings, asset), sample, n_rows))
    recompute_assets(ctx, features, [r for r in runs if r.sample])
    for run in runs:
        out += asset_metrics(ctx, features, run, exports.get(run.asset), len(runs))
    return out


def asset_metrics(ctx: CheckContext, features, run: AssetRun, found: Export | None, n_assets: int) -> list[Metric]:
    asset, res, sample, n_rows = run.asset, run.res, run.sample, run.n_rows
    out = [negative_ages(ctx, asset)]
    if not sample:
        out.append(Metric.judge(f"leak.{asset}.recompute.samples", 0, ">=", 1,
                                f"no {asset} predictions rows in the {ctx.window_s} s window: "
                                "nothing to check (is cqt-aggregate running?)"))
        out.append(label_metric(ctx, asset, found))
        return out
    out.append(provenance(ctx, run.params, sample))
    out.append(source_presence(ctx, features, run.params, sample))
    out.append(label_metric(ctx, asset, found))
    cut = f" (cut at its part of the budget: {len(sample)} drawn)" if res.sampled < len(sample) else ""
    out.append(Metric.judge(f"leak.{asset}.recompute.samples", res.sampled, ">=", 1,
                            f"{res.sampled} of {n_rows} rows sampled and recomputed on the database truncated at t0"
                            + cut))
    out.append(coverage_metric(ctx, run, n_assets))
    out += mismatch_metrics(f"leak.{asset}.recompute", res.leaks, res.samples,
                            "differ from a recomputation that cannot see the future")
    out += mismatch_metrics(f"leak.{asset}.warmup", res.warmup, res.sampled,
                            "depend on the warm-up (x1 vs x3 the longest look-back)")
    if res.missing_market:
        ctx.note(f"{res.missing_market} sampled {asset} predictions rows have no market_1s row")
    if res.late:
        ctx.note(f"{len(res.late)} sampled second(s) of {asset} differ only by data that arrived after they were "
                 f"written (late data, not a leak; first {fmt_ms(res.late[0])}): bin/cqt-aggregate --rebuild "
                 f"--symbol {asset} --from {res.late[0]} --to {res.late[-1]} corrects them")
    return out


def coverage_metric(ctx: CheckContext, run: AssetRun, n_assets: int) -> Metric:
    """How much of the asset's window was recomputed, and why not all of it."""
    res, n_rows = run.res, run.n_rows
    budget_s = ctx.thresholds("CQT_CHECK_LEAK_BUDGET_S")
    share = f"; its share {run.share_s:.1f} s of {n_assets} assets" if n_assets > 1 else ""
    took = f"in {res.elapsed_s:.1f} s (CQT_CHECK_LEAK_BUDGET_S={budget_s:g} s{share})"
    if res.samples >= n_rows:
        why = f"every second: {res.samples} of {n_rows} rows recomputed {took}"
    elif res.stopped:
        why = (f"{res.samples} of {n_rows} rows recomputed {took}: stopped at its part of the budget "
               "(slower than the samples' pace; a busy machine?)")
    else:
        why = (f"sampled: {res.samples} of {n_rows} rows recomputed {took}; every second would take about "
               f"{res.estimate_s:.0f} s, over the budget (raise it or shorten --window to check every second)")
    return Metric.judge(f"leak.{run.asset}.recompute.seconds", res.samples, ">=", 1, why)


main = check_command("feature_leak_check", evaluate, """Look-ahead leaks: the time rule on market_1s and
predictions, label_ts >= t0 + horizon in the newest export, and a recomputation of
every second of the window (sampled rows beyond CQT_CHECK_LEAK_BUDGET_S) on the
database truncated at t0 (warm-up x1 and x3).

Exit 0 PASS, 1 FAIL, 2 usage error, 3 could not evaluate, 78 misconfigured.""")
