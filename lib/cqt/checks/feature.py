"""feature_check: are market_1s and predictions complete, sane and well-formed in the window?

Per judged asset (CQT_SYMBOLS, or the one --symbol names; rows `WHERE symbol = ?`, metric
names `<table>.<asset>.…`, e.g. `predictions.ETH.ret_1s.null_rate`) and table: lag_s (as-of
minus newest row), coverage (rows / seconds, in a window that ends CQT_CHECK_FEATURE_LATENCY_S
before as-of: the aggregate writes a second only after its grace delay), duplicated ts_ms,
ts_ms off the whole-second grid, rows stamped after the wall clock; per column (the key
columns symbol and ts_ms aside): null_rate (with per-column overrides, thresholds.py) and
range (violating rows, by each column's valid range in cqt.catalogue: prices > 0,
spread >= 0, |kimchi premium| < 0.2, |funding| <= 0.03, volatilities >= 0, ratios > 0,
ages >= 0, imbalances in [-1, 1]; every number finite).
Columns the aggregate adds later are covered automatically (null rate + finite).
The label distribution of each asset's newest export (cqt.checks.exports): each of UP/DOWN/NONE
at least CQT_CHECK_LABEL_MIN_SHARE of its rows, and never all NONE.
"""
from __future__ import annotations

from .. import catalogue, timerule
from ..featureparams import params_for
from ..timeutil import fmt_ms, now_ms
from .base import CheckContext, check_command
from .exports import label_metrics
from .rawkeys import key_filter
from .result import Metric
from .thresholds import NULL_BY_DESIGN, Thresholds

TABLES = ("market_1s", "predictions")
_INF = "1e308"

# valid-range kind (cqt.catalogue) -> violation SQL with {c} for the column ({b}: the bound)
_VIOLATION = {
    catalogue.POSITIVE: "{c} <= 0", catalogue.NONNEG: "{c} < 0", catalogue.AGE: "{c} < 0",
    catalogue.UNIT: "({c} < -1 OR {c} > 1)", catalogue.FLAG: "{c} NOT IN (0, 1)",
    catalogue.ABS_BELOW: "ABS({c}) >= {b}", catalogue.ABS_AT_MOST: "ABS({c}) > {b}",
}


def range_rule(table: str, column: str, th: Thresholds) -> tuple[str, str] | None:
    """(violation SQL with {c} for the column, what must hold) of a column the catalogue
    gives a valid range; None for any other (judged finite only). A bound an operator may
    override is read through its CQT_CHECK_* variable."""
    rec = catalogue.column(table, column)
    if rec is None or rec.valid is None:
        return None
    v = rec.valid
    bound = th(v.env) if v.env else v.bound
    return _VIOLATION[v.kind].replace("{b}", repr(bound)), v.text(bound)


KEY_COLUMNS = ("symbol", "ts_ms")   # the row's key: judged by the ts_ms rules, not as values


def columns(ctx: CheckContext, table: str) -> list[tuple[str, str]]:
    """(name, declared type) of every column but the key (symbol, ts_ms)."""
    return [(r[1], (r[2] or "").upper()) for r in ctx.conn.execute(f"PRAGMA table_info({table})")
            if r[1] not in KEY_COLUMNS]


def evaluate(ctx: CheckContext) -> list[Metric]:
    """Each judged asset's rows (`symbol = ?`), then the label shares of each asset's newest export."""
    out: list[Metric] = []
    for asset in ctx.assets:
        for table in TABLES:
            out += table_metrics(ctx, table, asset)
    out += label_metrics(ctx)
    return out


def table_metrics(ctx: CheckContext, table: str, asset: str) -> list[Metric]:
    conn, th = ctx.conn, ctx.thresholds
    out: list[Metric] = []
    lo, hi = ctx.start_ms, ctx.as_of_ms
    name = f"{table}.{asset}"

    newest = conn.execute(f"SELECT MAX(ts_ms) FROM {table} WHERE symbol = ? AND ts_ms <= ?",
                          (asset, hi)).fetchone()[0]
    lag_max = th("CQT_CHECK_FEATURE_LAG_MAX_S")
    if newest is None:
        out.append(Metric.judge(f"{name}.lag_s", None, "<=", lag_max,
                                none_reason=f"no {table} rows of {asset} at or before as-of: "
                                            "is cqt-aggregate running?"))
    else:
        out.append(Metric.judge(f"{name}.lag_s", round((hi - newest) / 1000, 3), "<=", lag_max,
                                f"newest row {fmt_ms(newest)}: is cqt-aggregate running and keeping up?"))

    latency_ms = int(th("CQT_CHECK_FEATURE_LATENCY_S") * 1000)
    ce = (hi - latency_ms) // 1000 * 1000
    cs = ce - ctx.window_s * 1000
    n_cov = conn.execute(f"SELECT COUNT(*) FROM {table} WHERE symbol = ? AND ts_ms > ? AND ts_ms <= ? "
                         "AND ts_ms % 1000 = 0", (asset, cs, ce)).fetchone()[0]
    cov_reason = (f"{n_cov} of {ctx.window_s} seconds have a row ({fmt_ms(cs)} .. {fmt_ms(ce)})" if n_cov else
                  f"no {table} rows of {asset} in the window: is cqt-aggregate running?")
    out.append(Metric.judge(f"{name}.coverage", round(min(1.0, n_cov / ctx.window_s), 4), ">=",
                            th("CQT_CHECK_COVERAGE_MIN"), cov_reason))

    n, n_distinct, misaligned = conn.execute(
        f"SELECT COUNT(*), COUNT(DISTINCT ts_ms), COALESCE(SUM(ts_ms % 1000 != 0), 0) FROM {table} "
        "WHERE symbol = ? AND ts_ms > ? AND ts_ms <= ?", (asset, lo, hi)).fetchone()
    out.append(Metric.judge(f"{name}.ts_ms.duplicates", n - n_distinct, "==", 0,
                            f"{n - n_distinct} duplicated ts_ms among {n} rows"))
    out.append(Metric.judge(f"{name}.ts_ms.misaligned", misaligned, "==", 0,
                            f"{misaligned} rows not on the whole-second grid (ts_ms % 1000 != 0)"))
    wall = now_ms()
    future, first_future = conn.execute(f"SELECT COUNT(*), MIN(ts_ms) FROM {table} WHERE symbol = ? AND ts_ms > ?",
                                        (asset, wall + 1000)).fetchone()
    out.append(Metric.judge(f"{name}.ts_ms.future", future, "==", 0,
                            f"{future} rows stamped after the wall clock (first {fmt_ms(first_future)}): "
                            "clock problem or a row written ahead of its data"))

    cols = columns(ctx, table)
    if n == 0:
        out.append(Metric.skip(f"{name}.columns", "no rows in the window: null rates and ranges not judged"))
        return out
    out += null_metrics(ctx, table, asset, cols, n)
    out += range_metrics(ctx, table, asset, cols)
    if table == "market_1s":
        out += bar_consistency(ctx, asset)
    return out


_OPTIONAL_SOURCES = {"binance_liquidations"}   # sparse: "none yet" is a value (0), not a missing input


def warmup_starts(ctx: CheckContext, asset: str) -> tuple[dict[str, int], dict[str, str]]:
    """feature -> first bar time whose look-back is covered by collected data, and the source
    that decides it. Before that a NULL is the aggregate's rule ("a look-back that reaches
    before the data is NULL"), not missing data: e.g. oi_chg_300s in the first 5 minutes of a
    collection (open interest has no history to backfill)."""
    params = params_for(ctx.settings, asset)
    first: dict[str, int | None] = {}

    def first_of(table: str) -> int | None:
        """Availability of the series' first row (the rule applied to its oldest row)."""
        if table not in first:
            rule = timerule.rule(table)
            where, args = key_filter(table, params)
            cur = ctx.conn.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY {rule.time_col} LIMIT 1", args)
            row = cur.fetchone()
            first[table] = None if row is None else timerule.availability_ms(
                table, dict(zip([d[0] for d in cur.description], row)), params.cg_delay_s)
        return first[table]

    starts, why = {}, {}
    for feat, tables in catalogue.FEATURE_SOURCES.items():
        known = [(first_of(t), t) for t in tables if t not in _OPTIONAL_SOURCES]
        known = [(t, name) for t, name in known if t is not None]
        if not known:
            continue            # no data at all: judged on every row (and it fails, rightly)
        t_first, name = max(known)
        starts[feat] = -(-(t_first + catalogue.FEATURE_WINDOW_S.get(feat, 0) * 1000) // 1000) * 1000
        why[feat] = name
    return starts, why


def null_metrics(ctx: CheckContext, table: str, asset: str, cols: list[tuple[str, str]], n: int) -> list[Metric]:
    judged = [c for c, _ in cols if f"{table}.{c}" not in NULL_BY_DESIGN]
    starts, why = warmup_starts(ctx, asset) if table == "predictions" else ({}, {})
    floor = ctx.start_ms + 1
    parts, args = [], []
    for c in judged:
        s = max(floor, starts.get(c, floor))
        parts.append(f"COALESCE(SUM(ts_ms >= ? AND {c} IS NULL), 0), COALESCE(SUM(ts_ms >= ?), 0)")
        args += [s, s]
    row = ctx.conn.execute(f"SELECT {', '.join(parts)} FROM {table} WHERE symbol = ? AND ts_ms > ? AND ts_ms <= ?",
                           (*args, asset, ctx.start_ms, ctx.as_of_ms)).fetchone()
    coinglass_off = not ctx.settings.coinglass_enabled
    out = []
    for i, c in enumerate(judged):
        k, n_c = row[2 * i], row[2 * i + 1]
        name = f"{table}.{asset}.{c}.null_rate"
        if coinglass_off and c.startswith("cg_"):
            out.append(Metric.skip(name, "Coinglass disabled (coinglass_check fails on that)"))
            continue
        warm = starts.get(c, floor) > floor
        if n_c == 0:
            out.append(Metric.skip(name, f"warming up: its look-back reaches before the first {why.get(c)} data "
                                         f"until {fmt_ms(starts[c])}"))
            continue
        reason = f"{k} of {n_c} rows NULL" + (f" (the {n - n_c} rows before {fmt_ms(starts[c])} are warm-up: "
                                              f"look-back before the first {why[c]} data)" if warm else "")
        out.append(Metric.judge(name, round(k / n_c, 4), "<=", ctx.thresholds.null_rate_max(table, c), reason))
    return out


def range_metrics(ctx: CheckContext, table: str, asset: str, cols: list[tuple[str, str]]) -> list[Metric]:
    th = ctx.thresholds
    rules: list[tuple[str, str, str]] = []  # (column, violation sql, description)
    for c, ctype in cols:
        if "CHAR" in ctype or "TEXT" in ctype or "CLOB" in ctype:
            continue
        rule = range_rule(table, c, th)
        finite = f"({c} > {_INF} OR {c} < -{_INF})"
        if rule is None:
            rules.append((c, finite, "finite"))
        else:
            rules.append((c, f"({rule[0].format(c=c)} OR {finite})", f"{rule[1]} and finite"))
    if not rules:
        return []
    sums = ", ".join(f"COALESCE(SUM(CASE WHEN {cond} THEN 1 ELSE 0 END), 0)" for _, cond, _ in rules)
    counts = ctx.conn.execute(f"SELECT {sums} FROM {table} WHERE symbol = ? AND ts_ms > ? AND ts_ms <= ?",
                              (asset, ctx.start_ms, ctx.as_of_ms)).fetchone()
    out = []
    for (c, cond, desc), k in zip(rules, counts):
        reason = f"must be {desc}"
        if k:
            ts, val = ctx.conn.execute(f"SELECT ts_ms, {c} FROM {table} WHERE symbol = ? AND ts_ms > ? AND ts_ms <= ? "
                                       f"AND {cond} ORDER BY ts_ms LIMIT 1",
                                       (asset, ctx.start_ms, ctx.as_of_ms)).fetchone()
            reason = f"{k} rows violate: must be {desc}; first at {fmt_ms(ts)}: {val!r}"
        out.append(Metric.judge(f"{table}.{asset}.{c}.range", k, "==", 0, reason))
    return out


def bar_consistency(ctx: CheckContext, asset: str) -> list[Metric]:
    """OHLC are NULL by design when no trade happened; then the flag and counts must agree."""
    bad = ("(has_trade = 1 AND (open IS NULL OR high IS NULL OR low IS NULL OR close IS NULL OR vwap IS NULL "
           "OR trade_count = 0 OR high < low OR close > high OR close < low)) "
           "OR (has_trade = 0 AND (trade_count != 0 OR open IS NOT NULL))")
    k, first = ctx.conn.execute("SELECT COUNT(*), MIN(ts_ms) FROM market_1s "
                                f"WHERE symbol = ? AND ts_ms > ? AND ts_ms <= ? AND ({bad})",
                                (asset, ctx.start_ms, ctx.as_of_ms)).fetchone()
    return [Metric.judge(f"market_1s.{asset}.bar.consistency", k, "==", 0,
                         f"{k} bars where has_trade, trade_count and OHLC disagree (first {fmt_ms(first)})")]


main = check_command("feature_check", evaluate, """Derived tables: market_1s and predictions coverage,
null rate per column, value ranges and ts_ms sanity over the window ending at --as-of;
the label distribution of the newest export.

Exit 0 PASS, 1 FAIL, 2 usage error, 3 could not evaluate, 78 misconfigured.""")
