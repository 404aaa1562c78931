"""PNG plots next to the run report (matplotlib, Agg backend, no display needed).

    <stem>-price.png    Upbit KRW-BTC vs Binance BTCUSDT x KRW/USDT, and the kimchi premium
    <stem>-fill.png     fill rate per source per hour (share of seconds with data), last 24 h
    <stem>-labels.png   label distribution of the latest 24 h export
    <stem>-checks.png   check results over time

Titles and axis labels are English unless a CJK font is installed (matplotlib's default
font draws Hangul as empty boxes). Times are UTC. A plot without data is not drawn and
an old file of that name is removed, so the report never links a stale picture. Files are
written atomically with a `Software=cqt` text chunk; a file of one of these names that cqt
did not write is never replaced or removed (the output guard refuses the report).
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import font_manager  # noqa: E402

from .bookkeeping import EXPORT_24H, MODULES, RUNNER, check_codes_between, latest_export  # noqa: E402
from .export.request import nightly_export_name  # noqa: E402
from .outputs import PNG_SOFTWARE, guard_output, write_atomic  # noqa: E402

HOUR, DAY = 3_600_000, 86_400_000
PLOT_NAMES = ("price", "fill", "labels", "checks")         # <stem>-<name>.png, in report order
CJK_HINTS = ("CJK", "Nanum", "Noto Sans KR", "Noto Serif KR", "Malgun", "AppleGothic", "Apple SD Gothic",
             "UnDotum", "Baekmuk", "Gulim", "Dotum", "Batang", "Source Han")

TEXT = {
    "en": {
        "price": "Upbit KRW-BTC vs Binance BTCUSDT x KRW/USDT (1-min samples, UTC)",
        "price_y": "price (KRW)", "upbit": "Upbit KRW-BTC close", "binance": "Binance last x Upbit KRW-USDT",
        "premium_y": "kimchi premium (%)",
        "fill": "Fill rate per source per hour, last 24 h (share of seconds with data)",
        "fill_x": "hour (UTC)", "labels": "Label distribution of the latest 24 h export", "labels_y": "rows",
        "checks": "Check results over time (UTC)", "time": "time (UTC)",
        "pass": "PASS (0)", "fail": "FAIL (1)", "other": "not evaluated / error (2, 3, 78)",
    },
    "ko": {
        "price": "Upbit KRW-BTC vs Binance BTCUSDT × KRW/USDT (1분 샘플, UTC)",
        "price_y": "가격 (KRW)", "upbit": "Upbit KRW-BTC 종가", "binance": "Binance 가격 × Upbit KRW-USDT",
        "premium_y": "김치 프리미엄 (%)", "fill": "소스별 시간당 수집률, 최근 24시간 (데이터가 있는 초의 비율)",
        "fill_x": "시각 (UTC)", "labels": "최근 24시간 Export 라벨 분포", "labels_y": "행 수",
        "checks": "점검 결과 추이 (UTC)", "time": "시각 (UTC)",
        "pass": "PASS (0)", "fail": "FAIL (1)", "other": "평가 불가/오류 (2, 3, 78)",
    },
}


@dataclass(frozen=True)
class Plot:
    name: str
    title: str
    path: Path


def cjk_font() -> str | None:
    for f in font_manager.fontManager.ttflist:
        if any(h.lower() in f.name.lower() for h in CJK_HINTS):
            return f.name
    return None


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def _save(fig, path: Path) -> None:
    """Atomically (temp file removed on any failure, a full disk included). Software=cqt marks the
    file as ours for the output guard; it is fixed text, so the same data gives the same bytes."""
    try:
        write_atomic(path, write=lambda tmp: fig.savefig(tmp, format="png", dpi=100,
                                                         metadata={"Software": PNG_SOFTWARE}))
    finally:
        plt.close(fig)


def plot_price(conn: sqlite3.Connection, path: Path, lo: int, hi: int, t: dict[str, str], asset: str = "BTC") -> bool:
    rows = conn.execute("SELECT ts_ms, close, binance_last * usdt_krw, kimchi_premium FROM market_1s "
                        "WHERE symbol = ? AND ts_ms > ? AND ts_ms <= ? AND ts_ms % 60000 = 0 ORDER BY ts_ms",
                        (asset, lo, hi)).fetchall()
    rows = [r for r in rows if r[1] is not None]
    if len(rows) < 2:
        return False
    x = [_dt(r[0]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(11, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    ax1.plot(x, [r[1] for r in rows], lw=1.0, label=t["upbit"])
    ax1.plot(x, [r[2] if r[2] is not None else float("nan") for r in rows], lw=1.0, label=t["binance"])
    ax1.set_ylabel(t["price_y"])
    ax1.set_title(t["price"])
    ax1.legend(loc="best", fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(x, [r[3] * 100 if r[3] is not None else float("nan") for r in rows], lw=1.0, color="tab:red")
    ax2.set_ylabel(t["premium_y"])
    ax2.set_xlabel(t["time"])
    ax2.grid(alpha=0.3)
    ax2.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=timezone.utc))
    fig.autofmt_xdate()
    fig.tight_layout()
    _save(fig, path)
    return True


def fill_sources(upbit_code: str, symbol: str, asset: str = "BTC") -> list[tuple[str, str, str, str, tuple]]:
    """(label, table, time column, extra where, params): one asset's per-second streams and derived rows."""
    return [
        (f"Upbit {upbit_code} trades", "upbit_trades", "trade_ts_ms", "code = ?", (upbit_code,)),
        (f"Upbit {upbit_code} orderbook", "upbit_orderbook", "ts_ms", "code = ?", (upbit_code,)),
        (f"Binance {symbol} aggTrade", "binance_agg_trades", "trade_ts_ms", "symbol = ?", (symbol,)),
        (f"Binance {symbol} markPrice", "binance_mark_price", "event_ts_ms", "symbol = ?", (symbol,)),
        (f"Binance {symbol} bookTicker", "binance_book_ticker", "event_ts_ms", "symbol = ?", (symbol,)),
        (f"market_1s {asset}", "market_1s", "ts_ms", "symbol = ?", (asset,)),
        (f"predictions {asset}", "predictions", "ts_ms", "symbol = ?", (asset,)),
    ]


def fill_matrix(conn: sqlite3.Connection, hours: list[int], sources, end_ms: int) -> list[list[float]]:
    """Share of seconds with at least one row, per source per hour (the hour in progress: of the
    seconds up to end_ms); one short query each."""
    out = []
    for _label, table, col, where, params in sources:
        row = []
        for h in hours:
            extra = f" AND {where}" if where else ""
            top = min(h + HOUR, end_ms)
            n = conn.execute(f"SELECT COUNT(DISTINCT ({col} - 1) / 1000) FROM {table} WHERE {col} > ? AND {col} <= ?"
                             f"{extra}", (h, top, *params)).fetchone()[0]
            row.append(min(1.0, n / max(1.0, (top - h) / 1000.0)))
        out.append(row)
    return out


def plot_fill(conn: sqlite3.Connection, path: Path, hi: int, start_ms: int | None, upbit_code: str, symbol: str,
              t: dict[str, str], asset: str = "BTC") -> bool:
    last_hour = hi - hi % HOUR
    first = last_hour - 23 * HOUR
    if start_ms is not None:            # no columns for hours before collection started
        first = max(first, start_ms - start_ms % HOUR)
    hours = list(range(first, last_hour + 1, HOUR))
    sources = fill_sources(upbit_code, symbol, asset)
    m = fill_matrix(conn, hours, sources, hi)
    if not any(v > 0 for row in m for v in row):
        return False
    fig, ax = plt.subplots(figsize=(12, 4.5))
    im = ax.imshow([[v * 100 for v in row] for row in m], aspect="auto", cmap="RdYlGn", vmin=0, vmax=100)
    ax.set_yticks(range(len(sources)), [s[0] for s in sources], fontsize=8)
    ax.set_xticks(range(len(hours)), [_dt(h).strftime("%d %Hh") for h in hours], rotation=60, fontsize=7)
    fig.set_size_inches(max(6.0, 3.0 + 0.4 * len(hours)), 4.5)
    for i, row in enumerate(m):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v * 100:.0f}", ha="center", va="center", fontsize=6)
    ax.set_xlabel(t["fill_x"] + f" — the last column counts up to {_dt(hi):%H:%M:%S}")
    ax.set_title(t["fill"])
    fig.colorbar(im, ax=ax, label="%")
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_labels(export: dict[str, Any] | None, path: Path, t: dict[str, str]) -> bool:
    if export is None or not export.get("rows"):
        return False
    labels = export["labels"]
    names = ["UP", "DOWN", "NONE"]
    counts = [labels.get(k, 0) for k in names]
    total = max(sum(counts), 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(names, counts, color=["tab:green", "tab:red", "tab:gray"])
    for b, c in zip(bars, counts):
        ax.annotate(f"{c:,}\n{100 * c / total:.1f}%", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(t["labels_y"])
    ax.set_ylim(0, max(counts) * 1.25 + 1)
    span = f"{_dt(export['from_ts_ms']):%Y-%m-%d %H:%M} → {_dt(export['to_ts_ms']):%Y-%m-%d %H:%M}"
    ax.set_title(f"{t['labels']}\n{span} "
                 f"UTC, horizon {export['horizon_sec']} s, {export['threshold']}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_checks(conn: sqlite3.Connection, path: Path, lo: int, hi: int, names: list[str], t: dict[str, str]) -> bool:
    rows = check_codes_between(conn, lo, hi)
    if not rows:
        return False
    order = names + sorted({r[1] for r in rows} - set(names))
    order = [n for n in order if any(r[1] == n for r in rows)]
    y = {n: i for i, n in enumerate(order)}
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.5 * len(order)))
    kinds = (({0}, "tab:green", t["pass"]), ({1}, "tab:red", t["fail"]), (None, "tab:orange", t["other"]))
    for code_set, color, label in kinds:
        pts = [r for r in rows if (r[2] in code_set if code_set is not None else r[2] not in (0, 1))]
        if pts:
            ax.scatter([_dt(r[0]) for r in pts], [y[r[1]] for r in pts], c=color, s=14, marker="s", label=label)
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.set_ylim(-0.7, len(order) - 0.3)
    span = max(hi - lo, HOUR)                 # a fixed window, so one run is not a meaningless axis
    ax.set_xlim(_dt(hi - span - span // 50), _dt(hi + span // 50))
    ax.set_xlabel(t["time"])
    ax.set_title(t["checks"])
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M", tz=timezone.utc))
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    _save(fig, path)
    return True


def make_plots(conn: sqlite3.Connection, settings: Any, out_dir: Path, stem: str, ctx: Any) -> list[Plot]:
    """Draw every plot that has data; return the ones drawn (in report order). Every target
    passes the output guard before the first is drawn (OutputRefused otherwise)."""
    paths = {name: guard_output(out_dir / f"{stem}-{name}.png", "png", db_path=settings.db) for name in PLOT_NAMES}
    font = cjk_font()
    lang = "ko" if font else "en"
    t = TEXT[lang]
    hi = ctx.data_end_ms if ctx.data_end_ms is not None else ctx.as_of_ms
    with plt.rc_context({"font.family": [font, "DejaVu Sans"]} if font else {}):
        # the plan's plots are of BTC (the first asset when BTC is not collected)
        asset = "BTC" if "BTC" in settings.assets else settings.assets[0]
        upbit, binance = settings.upbit_code_of(asset), settings.binance_symbol_of(asset)
        t = {k: v.replace("KRW-BTC", upbit).replace("BTCUSDT", binance) for k, v in t.items()}
        name24 = EXPORT_24H if asset == "BTC" else nightly_export_name(asset, "24h")
        jobs: list[tuple[str, str, Callable[[Path], bool]]] = [
            ("price", t["price"], lambda p: plot_price(conn, p, hi - DAY, hi, t, asset)),
            ("fill", t["fill"], lambda p: plot_fill(conn, p, hi, ctx.start_ms, upbit, binance, t, asset)),
            ("labels", t["labels"], lambda p: plot_labels(latest_export(conn, name24, ctx.as_of_ms), p, t)),
            ("checks", t["checks"], lambda p: plot_checks(conn, p, max(ctx.start_ms or 0, hi - 7 * DAY), ctx.as_of_ms,
                                                          [RUNNER, *MODULES], t)),
        ]
        made = []
        for name, title, fn in jobs:
            path = paths[name]
            if fn(path):
                made.append(Plot(name, title, path))
            elif path.exists():
                path.unlink()
    return made

