"""altdata_check: is every raw stream arriving, complete, on time and parseable?

For every judged asset (CQT_SYMBOLS, or the one --symbol names), per stream of its venue
symbols — metric names carry venue, symbol and stream, e.g. `binance.BTCUSDT.aggTrade.lag_s`,
`upbit.KRW-ETH.trade.fill`; KRW-USDT (every asset's FX rate) is judged once:

- lag_s  = as-of minus the newest event time at or before as-of;
- fill   = how much of the window has data. Three models, by the nature of the series:
    seconds   event streams (trades, book updates): share of the window's whole
              seconds with at least one event;
    coverage  periodic samples (markPrice@1s, REST snapshots polled every P s): share of
              the window during which a sample no older than 1.5 x P existed — jitter in
              the sampling instant never costs fill, a stalled poller does;
    slots     period-aligned REST series (5 m ratios, 8 h funding): expected aligned
              timestamps present, in a window moved back by one period plus two polls
              (the newest period is not published yet); the ratios' lag counts from
              the newest period's END (cqt.timerule reads their stamp as the start);
  sparse streams (liquidations, KRW-USDT trades) are judged on lag only, counted from
  the collector's current start when there has been no event since;
- skew_s = median(recv_ts_ms - event time) per WebSocket stream (clock problems);
- frozen_s (the Upbit KRW-<asset> book the features read, and the Binance bookTicker): the longest time its best bid/ask
  stood unchanged while trades printed more than CQT_CHECK_BOOK_MOVE_BPS outside it — a
  stuck book whose rows keep arriving passes lag and fill, not this;
plus open `gaps` rows per venue symbol and the reject ratio (rejects / frames) per source and,
where the collectors count per symbol, per venue symbol (cqt.checks.ingest).

The fill window ends CQT_CHECK_FILL_LATENCY_S before as-of (rows still in flight).
All queries are bounded index range scans; rows are read in chunks or aggregated in
SQL, so memory does not grow with --window.
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Iterable, Iterator

from .. import db
from ..timeutil import fmt_ms
from .base import CheckContext, check_command
from .ingest import gap_metrics, reject_metrics
from .result import Metric

POLLER = "cqt-poll-binance"
SKEW_SAMPLE = 20_000   # newest rows per stream used for the skew median


@dataclass(frozen=True)
class Stream:
    """One WebSocket stream kind; `metric(symbol)` names it for one venue symbol."""

    venue: str           # binance | upbit: the metric's first part
    name: str            # aggTrade, trade, orderbook, ...: the metric's part after the symbol
    key: str             # threshold stem: CQT_CHECK_<key>_LAG_MAX_S / _FILL_MIN
    table: str
    time_col: str
    filter_col: str      # symbol / code column (leads the table's time index)
    fill: str | None     # seconds | coverage | None (sparse: lag only)
    period_s: float = 1.0
    skew_col: str | None = None   # event time column recv_ts_ms is compared with
    service: str = ""             # the collector writing it (sparse-stream fallback)

    def metric(self, symbol: str) -> str:
        return f"{self.venue}.{symbol}.{self.name}"


# Per Binance symbol (<asset>USDT).
BINANCE_STREAMS: tuple[Stream, ...] = (
    Stream("binance", "aggTrade", "BINANCE_AGGTRADE", "binance_agg_trades", "trade_ts_ms", "symbol", "seconds",
           skew_col="event_ts_ms", service="cqt-collect-binance"),
    Stream("binance", "markPrice", "BINANCE_MARKPRICE", "binance_mark_price", "event_ts_ms", "symbol", "coverage",
           1.0, skew_col="event_ts_ms", service="cqt-collect-binance"),
    Stream("binance", "bookTicker", "BINANCE_BOOKTICKER", "binance_book_ticker", "event_ts_ms", "symbol", "seconds",
           skew_col="event_ts_ms", service="cqt-collect-binance"),
    Stream("binance", "forceOrder", "BINANCE_FORCEORDER", "binance_liquidations", "event_ts_ms", "symbol", None,
           service="cqt-collect-binance"),
)
# Per Upbit KRW-<asset> market: every asset is held to the KRW-BTC thresholds (their names predate
# the other assets).
UPBIT_STREAMS: tuple[Stream, ...] = (
    Stream("upbit", "trade", "UPBIT_KRWBTC_TRADE", "upbit_trades", "trade_ts_ms", "code", "seconds",
           skew_col="trade_ts_ms", service="cqt-collect-upbit"),
    Stream("upbit", "orderbook", "UPBIT_KRWBTC_ORDERBOOK", "upbit_orderbook", "ts_ms", "code", "seconds",
           skew_col="ts_ms", service="cqt-collect-upbit"),
)
# KRW-USDT: the FX rate of every asset's kimchi premium, judged once whatever --symbol says.
USDT_STREAM = Stream("upbit", "trade", "UPBIT_KRWUSDT_TRADE", "upbit_trades", "trade_ts_ms", "code", None,
                     service="cqt-collect-upbit")


@dataclass(frozen=True)
class Book:
    """A top-of-book stream and the trades that must stay inside its quotes (same key column)."""

    table: str
    time_col: str
    order: str                   # full row order (time, then a tie-breaker)
    key_col: str
    bid_col: str
    ask_col: str
    trades_table: str            # same key column; trade_ts_ms, price
    service: str                 # the collector to restart when it is stuck


# The Upbit KRW-<asset> book is the one the features read (spread, imbalance, best bid/ask); the
# Binance bookTicker is the futures venue's top of book.
BOOKS: dict[tuple[str, str], Book] = {
    ("upbit", "orderbook"): Book("upbit_orderbook", "ts_ms", "ts_ms", "code", "best_bid", "best_ask", "upbit_trades",
                                 "cqt-collect-upbit"),
    ("binance", "bookTicker"): Book("binance_book_ticker", "event_ts_ms", "event_ts_ms, update_id", "symbol",
                                    "bid_price", "ask_price", "binance_agg_trades", "cqt-collect-binance"),
}


@dataclass(frozen=True)
class RestSeries:
    name: str                  # the metric's part after the symbol: openInterest, ratios.<kind>, ...
    table: str
    time_col: str
    where: str                 # extra SQL condition (bound to `params`)
    params: tuple
    model: str                 # coverage (snapshot every poll) | slots (period-aligned)
    poll_env: str              # the poller's interval variable (its default: the registry's)
    period_s: float | None = None   # slots: data period (None = from the data)
    stamped_at_start: bool = False  # slots: the time is the period's START (cqt.timerule's reading of
                                    # Binance /futures/data timestamps): lag counts from the period end


RATIO_KINDS = ("open_interest_hist", "global_long_short", "top_long_short_position", "taker_buy_sell")


def rest_series() -> tuple[RestSeries, ...]:
    out = [RestSeries("openInterest", "binance_open_interest", "ts_ms", "", (), "coverage",
                      "CQT_POLL_OI_S")]
    for kind in RATIO_KINDS:
        out.append(RestSeries(f"ratios.{kind}", "binance_ratios", "ts_ms", "kind = ?", (kind,), "slots",
                              "CQT_POLL_RATIOS_S", stamped_at_start=True))
    out.append(RestSeries("premiumIndex", "binance_premium_index", "ts_ms", "", (), "coverage",
                          "CQT_POLL_PREMIUM_S"))
    out.append(RestSeries("fundingRate", "binance_funding_rate", "funding_ts_ms", "", (), "slots",
                          "CQT_POLL_FUNDING_S"))
    return tuple(out)


_PERIOD_UNITS = {"m": 60, "h": 3600, "d": 86400}


def period_seconds(text: str | None, default: float) -> float:
    if text and text[:-1].isdigit() and text[-1] in _PERIOD_UNITS:
        return int(text[:-1]) * _PERIOD_UNITS[text[-1]]
    return default


# ------------------------------------------------------------------------------ fill models
def coverage(times_ms: Iterable[int], prev_ms: int | None, start_ms: int, end_ms: int, hold_ms: float) -> float:
    """Share of (start, end] within `hold_ms` after some sample. `times_ms` sorted, in the window;
    consumed once (a generator reading the rows in chunks is fine)."""
    span = end_ms - start_ms
    if span <= 0:
        return 1.0
    covered = 0.0
    cur_lo = cur_hi = None

    def points() -> Iterator[int]:
        if prev_ms is not None:
            yield prev_ms
        yield from times_ms

    for t in points():
        lo, hi = max(t, start_ms), min(t + hold_ms, end_ms)
        if hi <= lo:
            continue
        if cur_hi is None or lo > cur_hi:
            if cur_hi is not None:
                covered += cur_hi - cur_lo
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    if cur_hi is not None:
        covered += cur_hi - cur_lo
    return covered / span


class Counted:
    """Iterates the times of a series in (lo, hi], in chunks, counting them as it goes."""

    def __init__(self, ctx: CheckContext, table: str, time_col: str, where: str, params: tuple, lo: int, hi: int):
        self.args = (ctx.conn, table, time_col, time_col, lo + 1, hi, where, params)
        self.n = 0

    def __iter__(self) -> Iterator[int]:
        for rows in db.iter_keyset(*self.args):
            self.n += len(rows)
            for (t,) in rows:
                yield t


def fill_window(ctx: CheckContext) -> tuple[int, int]:
    """(start, end] of the fill window: the check window moved back by the commit latency,
    aligned to whole seconds so 'seconds with data' counts exactly window_s seconds."""
    latency_ms = int(ctx.thresholds("CQT_CHECK_FILL_LATENCY_S") * 1000)
    end = (ctx.as_of_ms - latency_ms) // 1000 * 1000
    return end - ctx.window_s * 1000, end


# ------------------------------------------------------------------------------ the check
def evaluate(ctx: CheckContext) -> list[Metric]:
    """Every stream and REST series of each judged asset (its Binance symbol, its Upbit market),
    then KRW-USDT (every asset's FX rate), then gaps and rejects."""
    metrics: list[Metric] = []
    series = rest_series()
    for asset in ctx.assets:
        binance, upbit = ctx.settings.binance_symbol_of(asset), ctx.settings.upbit_code_of(asset)
        for streams, symbol in ((BINANCE_STREAMS, binance), (UPBIT_STREAMS, upbit)):
            for s in streams:
                metrics += ws_stream_metrics(ctx, s, symbol)
                book = BOOKS.get((s.venue, s.name))
                if book is not None:
                    metrics.append(frozen_book_metric(ctx, book, s.metric(symbol), symbol))
        for r in series:
            metrics += rest_metrics(ctx, r, binance)
    metrics += ws_stream_metrics(ctx, USDT_STREAM, ctx.settings.usdt_code)
    metrics += gap_metrics(ctx)
    metrics += reject_metrics(ctx)
    return metrics


def _newest(ctx: CheckContext, table: str, time_col: str, where: str, params: tuple) -> int | None:
    row = ctx.conn.execute(f"SELECT MAX({time_col}) FROM {table} WHERE {where} AND {time_col} <= ?",
                           (*params, ctx.as_of_ms)).fetchone()
    return row[0]


def _lag_metric(name: str, newest: int | None, as_of_ms: int, limit_s: float, what: str, hint: str = "") -> Metric:
    hint = f" ({hint})" if hint else ""
    if newest is None:
        return Metric.judge(name, None, "<=", limit_s, none_reason=f"no {what} at or before as-of{hint}")
    lag = (as_of_ms - newest) / 1000
    return Metric.judge(name, round(lag, 3), "<=", limit_s, f"newest {what} at {fmt_ms(newest)}{hint}")


def ws_stream_metrics(ctx: CheckContext, s: Stream, symbol: str) -> list[Metric]:
    conn, th = ctx.conn, ctx.thresholds
    where, params = f"{s.filter_col} = ?", (symbol,)
    metric = s.metric(symbol)
    out: list[Metric] = []
    lag_limit = th(f"CQT_CHECK_{s.key}_LAG_MAX_S")
    newest = _newest(ctx, s.table, s.time_col, where, params)
    what = f"{s.name} event" if s.venue == "binance" else f"{symbol}.{s.name} event"
    if s.fill is None:
        # Sparse: silence is normal for a while; count from the collector's start if later.
        run_start = conn.execute("SELECT MAX(start_ts_ms) FROM service_runs WHERE service = ? AND start_ts_ms <= ?",
                                 (s.service, ctx.as_of_ms)).fetchone()[0]
        if run_start is not None and (newest is None or run_start > newest):
            lag = (ctx.as_of_ms - run_start) / 1000
            out.append(Metric.judge(f"{metric}.lag_s", round(lag, 3), "<=", lag_limit,
                                    f"no {what} since {s.service} started at {fmt_ms(run_start)}"))
        else:
            out.append(_lag_metric(f"{metric}.lag_s", newest, ctx.as_of_ms, lag_limit, what,
                                   f"sparse stream; is {s.service} running?"))
        return out
    out.append(_lag_metric(f"{metric}.lag_s", newest, ctx.as_of_ms, lag_limit, what, f"is {s.service} running?"))

    fs, fe = fill_window(ctx)
    fill_min = th(f"CQT_CHECK_{s.key}_FILL_MIN")
    if s.fill == "seconds":
        n = conn.execute(
            f"SELECT COUNT(DISTINCT ({s.time_col} - 1) / 1000) FROM {s.table} "
            f"WHERE {where} AND {s.time_col} > ? AND {s.time_col} <= ?", (*params, fs, fe)).fetchone()[0]
        fill = n / ctx.window_s
        reason = f"{n} of {ctx.window_s} seconds have data"
    else:
        times = Counted(ctx, s.table, s.time_col, where, params, fs, fe)
        prev = conn.execute(f"SELECT MAX({s.time_col}) FROM {s.table} WHERE {where} AND {s.time_col} <= ?",
                            (*params, fs)).fetchone()[0]
        fill = coverage(times, prev, fs, fe, 1.5 * s.period_s * 1000)
        reason = f"{times.n} updates in {ctx.window_s} s"
    out.append(Metric.judge(f"{metric}.fill", round(fill, 4), ">=", fill_min, reason))

    if s.skew_col:
        skews = [r[0] for r in conn.execute(
            f"SELECT recv_ts_ms - {s.skew_col} FROM {s.table} WHERE {where} AND {s.time_col} > ? "
            f"AND {s.time_col} <= ? AND {s.skew_col} IS NOT NULL ORDER BY {s.time_col} DESC LIMIT ?",
            (*params, ctx.start_ms, ctx.as_of_ms, SKEW_SAMPLE))]
        limit = th("CQT_CHECK_SKEW_MAX_S")
        if not skews:
            out.append(Metric.judge(f"{metric}.skew_s", None, "<=", limit, none_reason="no rows in the window"))
        else:
            med = statistics.median(skews) / 1000
            reason = ("receive time before event time: local clock behind the exchange?" if med < 0 else
                      "receive time far after event time: clock ahead, or data arriving late")
            out.append(Metric.judge(f"{metric}.skew_s", round(abs(med), 3), "<=", limit,
                                    f"median recv-event {med:+.3f} s over {len(skews)} rows; {reason}"))
    return out


def frozen_book_metric(ctx: CheckContext, b: Book, metric: str, key: str) -> Metric:
    """Longest time in the window the best bid/ask stood still while trades printed more than
    CQT_CHECK_BOOK_MOVE_BPS outside it: counted from the first such trade to the book's next
    change (or its newest row). A live book moves with its trades; one that does not is stuck
    even when its rows keep arriving (same quotes, fresh timestamps)."""
    th = ctx.thresholds
    limit = th("CQT_CHECK_BOOK_FROZEN_S")
    move = th("CQT_CHECK_BOOK_MOVE_BPS") / 1e4
    name = f"{metric}.frozen_s"
    lo, hi = ctx.start_ms, ctx.as_of_ms
    # Runs of unchanged quotes, in SQL (window functions spill to disk, not to RAM): each change
    # point starts a run that lasts to the next one; only runs long enough to matter come back.
    min_run_ms = int(limit * 500)
    runs = ctx.conn.execute(
        f"""WITH rows AS (
                SELECT {b.time_col} AS t, {b.bid_col} AS bid, {b.ask_col} AS ask,
                       LAG({b.bid_col}) OVER w AS pbid, LAG({b.ask_col}) OVER w AS pask
                FROM {b.table} WHERE {b.key_col} = ? AND {b.time_col} > ? AND {b.time_col} <= ?
                WINDOW w AS (ORDER BY {b.order})),
            changes AS (SELECT t, bid, ask FROM rows WHERE pbid IS NULL OR bid != pbid OR ask != pask),
            spans AS (SELECT t, bid, ask, LEAD(t) OVER (ORDER BY t) AS next_t FROM changes)
            SELECT t, bid, ask, next_t FROM spans
            WHERE COALESCE(next_t, (SELECT MAX({b.time_col}) FROM {b.table} WHERE {b.key_col} = ?
                                    AND {b.time_col} > ? AND {b.time_col} <= ?)) - t >= ?
            ORDER BY t""", (key, lo, hi, key, lo, hi, min_run_ms)).fetchall()
    newest = None
    worst = (0.0, "")
    for t, bid, ask, next_t in runs:
        if next_t is None:
            newest = newest or ctx.conn.execute(
                f"SELECT MAX({b.time_col}), COUNT(*) FROM {b.table} WHERE {b.key_col} = ? AND {b.time_col} >= ? "
                f"AND {b.time_col} <= ?", (key, t, hi)).fetchone()
        end = next_t if next_t is not None else newest[0]
        first_out, low, high = ctx.conn.execute(
            f"SELECT MIN(trade_ts_ms), MIN(price), MAX(price) FROM {b.trades_table} WHERE {b.key_col} = ? "
            "AND trade_ts_ms > ? AND trade_ts_ms <= ? AND (price < ? OR price > ?)",
            (key, t, end, bid * (1 - move), ask * (1 + move))).fetchone()
        if first_out is None:
            continue
        stale_s = (end - first_out) / 1000
        if stale_s > worst[0]:
            away = max((bid - low) / bid if low < bid else 0.0, (high - ask) / ask if high > ask else 0.0)
            still = ("still unchanged at its newest row" if next_t is None else f"until {fmt_ms(end)}")
            worst = (stale_s, f"best bid/ask {bid:.10g}/{ask:.10g} unchanged from {fmt_ms(t)} {still} while trades "
                              f"printed outside it from {fmt_ms(first_out)} (prices {low:.10g} .. {high:.10g}, up to "
                              f"{away * 100:.2g} % away): the book stream is stuck; restart {b.service}")
    if not worst[1]:
        return Metric.judge(name, 0.0, "<=", limit, "")
    return Metric.judge(name, round(worst[0], 3), "<=", limit, worst[1])


def rest_metrics(ctx: CheckContext, r: RestSeries, sym: str) -> list[Metric]:
    conn, th = ctx.conn, ctx.thresholds
    metric = f"binance.{sym}.{r.name}"
    where = "symbol = ?" + (f" AND {r.where}" if r.where else "")
    params = (sym, *r.params)
    poll_s = th.poll_interval_s(r.poll_env)
    factor = th("CQT_CHECK_REST_LAG_FACTOR")
    fill_min = th("CQT_CHECK_REST_FILL_MIN")
    newest = _newest(ctx, r.table, r.time_col, where, params)
    out: list[Metric] = []
    if r.model == "coverage":
        interval = poll_s
        out.append(_lag_metric(f"{metric}.lag_s", newest, ctx.as_of_ms, factor * interval,
                               f"{r.name} sample", f"polled every {interval:g} s, {r.poll_env}"))
        fs, fe = fill_window(ctx)
        span_ms = max(ctx.window_s, interval) * 1000
        fs = fe - span_ms
        times = Counted(ctx, r.table, r.time_col, where, params, fs, fe)
        prev = conn.execute(f"SELECT MAX({r.time_col}) FROM {r.table} WHERE {where} AND {r.time_col} <= ?",
                            (*params, fs)).fetchone()[0]
        fill = coverage(times, prev, fs, fe, 1.5 * interval * 1000)
        out.append(Metric.judge(f"{metric}.fill", round(fill, 4), ">=", fill_min,
                                f"{times.n} samples, expected about {span_ms / 1000 / interval:.0f}"))
        return out

    # Period-aligned series: the period comes from the data (ratios: the `period` column;
    # funding: the spacing of funding times), the poll interval from the poller's setting.
    period_s = _series_period_s(ctx, r, where, params)
    p_ms = int(period_s * 1000)
    name = r.name
    if r.stamped_at_start and newest is not None:
        end = newest + p_ms   # the period's end; clamped: if the stamp really is the end, lag reads 0 early
        lag = max(0.0, (ctx.as_of_ms - end) / 1000)
        out.append(Metric.judge(f"{metric}.lag_s", round(lag, 3), "<=", factor * period_s,
                                f"newest {name} period ended at {fmt_ms(end)} ({period_s:g} s periods; "
                                f"is {POLLER} running?)"))
    else:
        out.append(_lag_metric(f"{metric}.lag_s", newest, ctx.as_of_ms, factor * period_s,
                               f"{name} row", f"{period_s:g} s periods; is {POLLER} running?"))
    delay_ms = p_ms + int(2 * poll_s * 1000)
    hi = ctx.as_of_ms - delay_ms
    lo = hi - max(ctx.window_s * 1000, p_ms)
    # The expected stamps are the multiples of the period in (lo, hi]: counted, never listed.
    first = (lo // p_ms + 1) * p_ms
    expected = 0 if hi < first else (hi - first) // p_ms + 1
    if not expected:
        out.append(Metric.skip(f"{metric}.fill", "no complete period in the window"))
        return out
    have = conn.execute(
        f"SELECT COUNT(DISTINCT {r.time_col}) FROM {r.table} WHERE {where} AND {r.time_col} >= ? "
        f"AND {r.time_col} <= ? AND ({r.time_col} - ?) % ? = 0", (*params, first, hi, first, p_ms)).fetchone()[0]
    missing = first_missing(ctx, r, where, params, first, hi, p_ms, 3) if have < expected else []
    reason = f"{have} of {expected} periods present" + (f"; missing {', '.join(missing)}" if missing else "")
    out.append(Metric.judge(f"{metric}.fill", round(have / expected, 4), ">=", fill_min, reason))
    return out


def first_missing(ctx: CheckContext, r: RestSeries, where: str, params: tuple, first: int, hi: int, p_ms: int,
                  k: int) -> list[str]:
    """The first `k` expected period stamps with no row, walking the stored stamps in chunks."""
    missing: list[str] = []
    expect = first
    for rows in db.iter_keyset(ctx.conn, r.table, r.time_col, r.time_col, first, hi,
                               f"{where} AND ({r.time_col} - ?) % ? = 0", (*params, first, p_ms)):
        for (t,) in rows:
            while expect < t and len(missing) < k:
                missing.append(fmt_ms(expect))
                expect += p_ms
            if len(missing) >= k:
                return missing
            expect = max(expect, t + p_ms)
    while expect <= hi and len(missing) < k:
        missing.append(fmt_ms(expect))
        expect += p_ms
    return missing


def _series_period_s(ctx: CheckContext, r: RestSeries, where: str, params: tuple) -> float:
    if r.period_s:
        return r.period_s
    if r.table == "binance_ratios":
        row = ctx.conn.execute(f"SELECT period FROM binance_ratios WHERE {where} AND ts_ms <= ? "
                               "ORDER BY ts_ms DESC LIMIT 1", (*params, ctx.as_of_ms)).fetchone()
        return period_seconds(row[0] if row else None, 300.0)
    rows = ctx.conn.execute(f"SELECT {r.time_col} FROM {r.table} WHERE {where} AND {r.time_col} <= ? "
                            f"ORDER BY {r.time_col} DESC LIMIT 2", (*params, ctx.as_of_ms)).fetchall()
    if len(rows) == 2 and rows[0][0] > rows[1][0]:
        return (rows[0][0] - rows[1][0]) / 1000
    return 8 * 3600.0


main = check_command("altdata_check", evaluate, """Raw data health: per stream lag and fill rate, clock skew,
open gaps and reject ratio over the window ending at --as-of.

Exit 0 PASS, 1 FAIL, 2 usage error, 3 could not evaluate, 78 misconfigured.""")
