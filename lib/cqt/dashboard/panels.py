"""The six panels of the dashboard. Each `panel_*` opens its own read-only connection, draws its
part of the page and closes it again; the page runs each one inside its own refreshing fragment.

The numbers are the checks' own: metrics come from cqt.checks (altdata_check's fill and lag,
feature_check's null rates), thresholds from the settings registry, stored results from check_runs.
"""
from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from typing import Iterator

import altair as alt
import pandas as pd
import streamlit as st

from .. import bookkeeping, db
from ..checks.result import FAIL, PASS, fmt_num
from ..checks.runner import overall_status
from ..checks.thresholds import Thresholds
from ..config import Settings
from ..schedule import JOBS
from ..symbols import coinglass_coin
from ..timeutil import fmt_ms, now_ms
from ..units import fmt_bytes
from . import longfill, queries
from .render import shortened, state_cell, table, text

HOUR_MS, DAY_MS = 3_600_000, 86_400_000
FILL_WINDOW_S = 600          # the fill computed while drawing (altdata_check's default window)
LONG_FILLS = (("fill 1h", 3600), ("fill 24h", 86400))   # computed beside the page (longfill)
TIMINGS: dict[str, float] = {}    # panel -> seconds of its last render (shown in the page footer)


@contextmanager
def panel(name: str, settings: Settings) -> Iterator[queries.Reader | None]:
    """The panel's connection (None when there is none); a missing or unreadable database, or a
    statement past its deadline, is an error box in the panel, never an exception."""
    t0 = time.perf_counter()
    opened = queries.reader(settings.db)
    try:
        r = opened.__enter__()
    except db.DatabaseMissing:
        st.error(f"database missing: {settings.db}")
        yield None
        return
    try:
        yield r
    except sqlite3.Error as exc:
        if queries.interrupted(exc):
            st.error(f"this panel's queries ran past their {queries.STATEMENT_DEADLINE_S:g} s deadline and were "
                     "stopped (the next redraw tries again)")
        else:
            st.error(f"database unreadable: {settings.db}: {exc}")
    finally:
        opened.__exit__(None, None, None)
        TIMINGS[name] = time.perf_counter() - t0


def _age(as_of_ms: int, t_ms: int | None) -> float | None:
    return None if t_ms is None else round((as_of_ms - t_ms) / 1000, 1)


def check_status(run: bookkeeping.CheckRun | None) -> str:
    return "NONE" if run is None else overall_status(run.exit_code)


# ------------------------------------------------------------------------------ 1 checks and gate
def panel_checks(settings: Settings) -> None:
    st.subheader("Checks and gate")
    with panel("checks", settings) as r:
        if r is None:
            return
        as_of = now_ms()
        runs = queries.latest_checks(r, as_of)
        rows, failing = [], []
        for name, run in runs.items():
            status = check_status(run)
            rows.append(("cqt-check", {"check": name, "status": status,
                                       "exit": None if run is None else run.exit_code,
                                       "ts-ms": None if run is None else run.ts_ms},
                         [name, state_cell(None if run is None else run.exit_code == 0, status),
                          None if run is None else run.exit_code, fmt_ms(run.ts_ms) if run else None,
                          _age(as_of, run.ts_ms if run else None),
                          shortened(run.summary.get("summary")) if run else None]))
            for m in (run.summary.get("failed") or []) if run else []:
                failing.append(("cqt-failing", {"check": name, "metric": m.get("name"), "value": m.get("value"),
                                                "threshold": m.get("threshold")},
                                [name, m.get("name"), fmt_num(m.get("value")),
                                 f"{m.get('op') or ''}{fmt_num(m.get('threshold'))}", m.get("reason")]))
        st.markdown(table("cqt-checks", ["check", "status", "exit", "when", "age_s", "summary"], rows,
                          frozenset({1})), unsafe_allow_html=True)
        if failing:
            st.markdown(f"**Failing metrics**: {len(failing)} (value against threshold, as the checks print them)")
            st.markdown(table("cqt-failing", ["check", "metric", "value", "threshold", "reason"], failing,
                              max_height_px=360), unsafe_allow_html=True)
        hist = [(pd.Timestamp(t, unit="ms"), name, PASS if code == 0 else (FAIL if code == 1 else f"exit {code}"))
                for name in runs for t, code in queries.check_history(r, name, as_of - DAY_MS, as_of)]
        if hist:
            st.markdown("**History (24 h)**")
            st.scatter_chart(pd.DataFrame(hist, columns=["time", "check", "result"]), x="time", y="check",
                             color="result", height=220)
        jobs = [(j.name, fmt_ms(s), fmt_ms(e), code, trig) for j in JOBS
                for s, e, code, trig in queries.job_history(r, j.name, as_of - DAY_MS, 10)]
        if jobs:
            st.markdown("**Scheduled jobs (job_runs, 24 h)**")
            st.dataframe(pd.DataFrame(jobs, columns=["job", "start", "end", "exit", "trigger"]), hide_index=True)


# ------------------------------------------------------------------------------ 2 streams
def panel_streams(settings: Settings) -> None:
    st.subheader("Streams")
    with panel("streams", settings) as r:
        if r is None:
            return
        as_of = now_ms()
        th = Thresholds(settings)
        background = longfill.long_fills(settings)
        rows, computed = [], {}
        for ref in queries.stream_refs(settings):
            newest, age = queries.stream_age_s(r, ref, as_of)
            limit = th(ref.lag_env)
            ok = age is not None and age <= limit
            per_min = queries.rows_between(r, ref, as_of - 60_000, as_of)
            fills: list[float | None | str] = [None] * (1 + len(LONG_FILLS))
            if ref.stream.fill:
                m = queries.stream_metrics(r, settings, ref, as_of, FILL_WINDOW_S).get("fill")
                fills[0] = None if m is None else m.value
                for i, (label, window_s) in enumerate(LONG_FILLS, 1):
                    value, computed[label] = background.get(ref.name, window_s)
                    fills[i] = "…" if computed[label] is None else value
            rows.append(("cqt-stream", {"stream": ref.name, "venue": ref.stream.venue, "kind": ref.stream.name,
                                        "symbol": ref.symbol, "newest-ms": newest,
                                        "age-s": None if age is None else round(age, 1), "limit-s": fmt_num(limit),
                                        "ok": int(ok)},
                         [ref.stream.venue, ref.stream.name, ref.symbol,
                          None if age is None else round(age, 1), fmt_num(limit),
                          state_cell(ok, "OK" if ok else "STALE"), per_min,
                          *[f if f is None or isinstance(f, str) else f"{f:.1%}" for f in fills]]))
        st.markdown(table("cqt-streams", ["venue", "stream", "symbol", "age_s", "limit_s", "state", "rows/min",
                                          "fill 10m", *[label for label, _ in LONG_FILLS]], rows, frozenset({5})),
                    unsafe_allow_html=True)
        st.caption("fill: altdata_check's fill rate of the window ending now; "
                   + "; ".join(f"{label} computed at {fmt_ms(t)}" if t else f"{label}: being computed"
                               for label, t in computed.items()))
        symbols = sorted({s for a in settings.assets for s in (settings.binance_symbol_of(a),
                                                                settings.upbit_code_of(a), coinglass_coin(a))}
                         | {settings.usdt_code})
        gaps = [(sym, src, stream, status, fmt_ms(det), fmt_ms(lo), fmt_ms(hi), filled, reason)
                for sym in symbols
                for src, stream, status, det, lo, hi, filled, reason in queries.gaps_of(r, sym, as_of - DAY_MS)]
        st.markdown(f"**Gaps** (open, or detected in the last 24 h): {len(gaps)}")
        if gaps:
            st.dataframe(pd.DataFrame(gaps, columns=["symbol", "source", "stream", "status", "detected", "from",
                                                     "to", "filled rows", "reason"]), hide_index=True)


# ------------------------------------------------------------------------------ 3 services
def panel_services(settings: Settings) -> None:
    st.subheader("Services")
    with panel("services", settings) as r:
        if r is None:
            return
        as_of = now_ms()
        rows = []
        for s in queries.service_rows(r, as_of, as_of - DAY_MS):
            age = _age(as_of, s["heartbeat_ms"])
            fresh = age is not None and age <= 3 * settings.heartbeat_s + 5
            rows.append(("cqt-service", {"service": s["service"], "heartbeat-ms": s["heartbeat_ms"],
                                         "state": s["state"]},
                         [s["service"], s["state"], state_cell(fresh, "-" if age is None else f"{age:g}"),
                          s["starts"], fmt_ms(s["last_stop_ms"]) if s["last_stop_ms"] else None,
                          s["last_exit"], s["last_reason"]]))
        st.markdown(table("cqt-services", ["service", "state", "heartbeat age_s", "starts (24 h)", "last stop",
                                           "exit", "reason"], rows, frozenset({2})), unsafe_allow_html=True)


# ------------------------------------------------------------------------------ 4 rejects, late rows, Coinglass
def panel_ingest(settings: Settings) -> None:
    st.subheader("Rejects and Coinglass")
    with panel("ingest", settings) as r:
        if r is None:
            return
        as_of = now_ms()
        rejects = queries.rejects_by_reason(r, as_of - DAY_MS)
        st.markdown(f"**Rejects (24 h)**: {sum(n for _, _, n, _ in rejects)}")
        if rejects:
            df = pd.DataFrame([(s, why, n, fmt_ms(t)) for s, why, n, t in rejects],
                              columns=["source", "reason", "count", "last"])
            st.dataframe(df, hide_index=True)
            st.bar_chart(df, x="reason", y="count", color="source", height=220)
        late = queries.late_rows(r, as_of - DAY_MS)
        st.markdown(f"**Late rows (24 h)**: {sum(row[2] or 0 for row in late)}")
        if late:
            st.dataframe(pd.DataFrame(late, columns=["symbol", "source", "late rows", "corrected rows",
                                                     "seconds rebuilt", "seconds"]), hide_index=True)
        calls = queries.coinglass_calls(r, as_of - HOUR_MS)
        st.markdown(f"**Coinglass calls (1 h)**: {sum(c[1] for c in calls)}, errors: {sum(c[2] or 0 for c in calls)}")
        if calls:
            st.dataframe(pd.DataFrame([(e, n, bad, fmt_ms(ok)) for e, n, bad, ok in calls],
                                      columns=["endpoint", "calls", "errors", "last ok"]), hide_index=True)
        errors = queries.coinglass_last_errors(r, as_of - DAY_MS)
        if errors:
            st.dataframe(pd.DataFrame([(fmt_ms(t), e, h, msg) for t, e, h, msg in errors],
                                      columns=["time", "endpoint", "http", "error"]), hide_index=True)


# ------------------------------------------------------------------------------ 5 prices and features
def panel_prices(settings: Settings) -> None:
    st.subheader("Prices")
    asset = st.selectbox("asset", settings.assets, key="asset") if len(settings.assets) > 1 else settings.assets[0]
    with panel("prices", settings) as r:
        if r is None:
            return
        as_of = now_ms()
        bar = queries.latest_row(r, "market_1s", asset, as_of)
        if bar is None:
            st.info(f"no market_1s rows of {asset} yet")
        else:
            last, fx = bar["binance_last"], bar["usdt_krw"]
            krw = None if last is None or fx is None else last * fx
            st.markdown(table("cqt-prices", ["asset", "at", f"Upbit {settings.upbit_code_of(asset)} KRW",
                                             f"Binance {settings.binance_symbol_of(asset)} USDT", "KRW/USDT",
                                             "Binance x KRW/USDT", "kimchi premium"],
                              [("cqt-price", {"asset": asset, "ts-ms": bar["ts_ms"], "upbit-krw": bar["close"],
                                              "binance-usdt": bar["binance_last"], "usdt-krw": bar["usdt_krw"],
                                              "kimchi-premium": bar["kimchi_premium"]},
                                [asset, fmt_ms(bar["ts_ms"]), krw_text(bar["close"]), usd_text(bar["binance_last"]),
                                 usd_text(bar["usdt_krw"]), krw_text(krw), pct_text(bar["kimchi_premium"])])]),
                        unsafe_allow_html=True)
        rows = queries.prices(r, asset, as_of - HOUR_MS, as_of, 10)
        if rows:
            df = pd.DataFrame(rows, columns=["ts_ms", "upbit_krw", "binance_usdt", "usdt_krw", "kimchi_premium"])
            df["time"] = pd.to_datetime(df["ts_ms"], unit="ms")
            df["binance_x_krw_usdt"] = df["binance_usdt"] * df["usdt_krw"]
            both = df.melt(id_vars="time", value_vars=["upbit_krw", "binance_x_krw_usdt"], var_name="price",
                           value_name="KRW")
            st.altair_chart(line(both, "KRW", color="price", height=220), width="stretch")
            st.altair_chart(line(df, "kimchi_premium", height=160), width="stretch")
        latest = queries.latest_row(r, "predictions", asset, as_of)
        nulls = {m.name.split(".")[-2]: m for m in queries.null_rates(r, settings, asset, as_of, 600)}
        if latest:
            st.markdown(f"**Latest feature vector** of {asset} at {fmt_ms(latest['ts_ms'])}; null rates over 10 min "
                        "(feature_check's limits)")
            feats = [(c, text(v), nulls[c].value if c in nulls else None,
                      nulls[c].limit_text if c in nulls else None, nulls[c].status if c in nulls else None)
                     for c, v in latest.items() if c not in ("symbol", "ts_ms")]
            st.dataframe(pd.DataFrame(feats, columns=["feature", "value", "null rate", "limit", "status"]),
                         hide_index=True, height=320)


def krw_text(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def usd_text(v: float | None) -> str:
    return "-" if v is None else f"{v:,.2f}"


def line(df: pd.DataFrame, y: str, color: str | None = None, height: int = 200) -> alt.Chart:
    """A line chart whose y axis fits the data (st.line_chart starts at 0: two KRW prices near
    100 million would be one flat line)."""
    enc = {"x": alt.X("time:T", title=None), "y": alt.Y(f"{y}:Q", scale=alt.Scale(zero=False))}
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=None)
    return alt.Chart(df).mark_line().encode(**enc).properties(height=height)


def pct_text(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.3f} %"


# ------------------------------------------------------------------------------ 6 exports and database
def panel_exports(settings: Settings) -> None:
    st.subheader("Exports and database")
    sizes = queries.file_sizes(settings.db)
    cols = st.columns(2)
    cols[0].metric("database", fmt_bytes(sizes["db_bytes"]) if sizes["db_bytes"] is not None else "missing")
    cols[1].metric("WAL", fmt_bytes(sizes["wal_bytes"]) if sizes["wal_bytes"] is not None else "-")
    with panel("exports", settings) as r:
        if r is None:
            return
        exports = queries.latest_exports(r)
        if not exports:
            st.info("no export recorded yet")
            return
        st.dataframe(pd.DataFrame(
            [(fmt_ms(e["ts_ms"]), e["output"], e["symbols"], e["rows"], fmt_bytes(e["size_bytes"] or 0),
              ", ".join(f"{k} {v}" for k, v in sorted(e["drops"].items())),
              ", ".join(f"{k} {v}" for k, v in sorted(e["labels"].items()))) for e in exports],
            columns=["when", "file", "assets", "rows", "size", "drops", "labels"]), hide_index=True)
