"""The time rule, written down once: the moment each raw row became available.

A derived value stamped t0 may use a raw row only if that row's availability time
is <= t0. Every feature query (cqt.features), the leak check and the export use the
expressions below; nothing else in cqt decides when a row was known.

    table                     availability (ms)                          kind
    upbit_trades              trade_ts_ms                                stream
    upbit_orderbook           ts_ms                                      stream
    upbit_ticker              ts_ms                                      stream
    binance_agg_trades        trade_ts_ms                                stream
    binance_mark_price        event_ts_ms                                stream
    binance_book_ticker       event_ts_ms                                stream
    binance_liquidations      event_ts_ms                                stream
    binance_open_interest     max(ts_ms, recv_ts_ms)                     polled
    binance_ratios            max(ts_ms + period, recv_ts_ms)            polled
    binance_premium_index     max(ts_ms, recv_ts_ms)                     polled
    binance_funding_rate      max(funding_ts_ms, recv_ts_ms)             polled
    coinglass_open_interest   avail_ts_ms + CQT_COINGLASS_DELAY_S*1000   coinglass
    coinglass_funding         avail_ts_ms + CQT_COINGLASS_DELAY_S*1000   coinglass
    coinglass_liquidations    avail_ts_ms + CQT_COINGLASS_DELAY_S*1000   coinglass
    coinglass_long_short      avail_ts_ms + CQT_COINGLASS_DELAY_S*1000   coinglass

Choices, and why:

- Stream rows (WebSocket): the exchange's event time. For trades that is the trade
  time (Upbit ``trade_timestamp``, Binance ``T``): REST-backfilled aggTrades have no
  ``E``, and the trade time is what both live and backfilled rows share.
- Polled rows: the later of the period end and ``recv_ts_ms`` (we cannot have known a
  value before we received it). Binance ``/futures/data/*`` ``timestamp`` is aligned
  to the period and the documentation is ambiguous about start vs end, so it is taken
  as the period START: period end = ``ts_ms + period``. If it is really the end, this
  is one period too conservative, never a leak. A row for a still-open period (fetched
  before its end, value still moving) is therefore available only from its period
  end, and if the poller later upserts it, from that later ``recv_ts_ms``. An
  unknown period string makes the availability NULL: such a row is never used.
- Coinglass bars: ``avail_ts_ms`` (the bar's close, = open + interval) plus the
  publication delay ``CQT_COINGLASS_DELAY_S`` (default 60 s). Never ``open_ts_ms``
  (the bar is still forming then). ``recv_ts_ms`` is deliberately not part of the
  rule, so a historical backfill is usable; a bar that actually arrives after
  ``avail + delay`` is "late": cqt-aggregate counts it (``aggregate_late``) and
  ``--rebuild`` recomputes the range with it.

Every availability is >= the table's ``time_col`` (an indexed time column), so
``time_col <= t0`` is a safe, index-friendly pre-filter for "available at t0".
"""
from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

DEFAULT_COINGLASS_DELAY_S = 60

#: Binance ratio periods and Coinglass intervals -> milliseconds.
PERIOD_MS: dict[str, int] = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000,
    "8h": 28_800_000, "12h": 43_200_000, "1d": 86_400_000, "1w": 604_800_000,
}

_PERIOD_CASE = "CASE {p}period " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in PERIOD_MS.items()) + " END"


@dataclass(frozen=True)
class Rule:
    table: str
    kind: str          # stream | polled | coinglass
    time_col: str      # indexed time column; availability >= time_col always
    sql: str           # template: {p} = column prefix ("" or "alias."), {delay_ms}
    py: Callable[[Mapping[str, Any], int], int | None]   # (row, delay_ms) -> availability
    doc: str


def _col(name: str) -> Callable[[Mapping[str, Any], int], int | None]:
    return lambda r, _d: r[name]


def _later(a: str, b: str) -> Callable[[Mapping[str, Any], int], int | None]:
    return lambda r, _d: max(r[a], r[b])


def _ratio(r: Mapping[str, Any], _d: int) -> int | None:
    period = PERIOD_MS.get(r["period"])
    return None if period is None else max(r["ts_ms"] + period, r["recv_ts_ms"])


def _coinglass(r: Mapping[str, Any], delay_ms: int) -> int | None:
    return r["avail_ts_ms"] + delay_ms


def _stream(table: str, col: str, what: str) -> Rule:
    return Rule(table, "stream", col, "{p}" + col, _col(col), f"{what}: event time {col}")


AVAILABILITY: dict[str, Rule] = {r.table: r for r in (
    _stream("upbit_trades", "trade_ts_ms", "Upbit trade"),
    _stream("upbit_orderbook", "ts_ms", "Upbit order book"),
    _stream("upbit_ticker", "ts_ms", "Upbit ticker"),
    _stream("binance_agg_trades", "trade_ts_ms", "Binance aggTrade"),
    _stream("binance_mark_price", "event_ts_ms", "Binance markPrice"),
    _stream("binance_book_ticker", "event_ts_ms", "Binance bookTicker"),
    _stream("binance_liquidations", "event_ts_ms", "Binance forceOrder"),
    Rule("binance_open_interest", "polled", "ts_ms", "MAX({p}ts_ms, {p}recv_ts_ms)",
         _later("ts_ms", "recv_ts_ms"), "polled: max(ts_ms, recv_ts_ms)"),
    Rule("binance_ratios", "polled", "ts_ms", "MAX({p}ts_ms + " + _PERIOD_CASE + ", {p}recv_ts_ms)",
         _ratio, "polled: max(ts_ms + period, recv_ts_ms); ts_ms taken as the period start"),
    Rule("binance_premium_index", "polled", "ts_ms", "MAX({p}ts_ms, {p}recv_ts_ms)",
         _later("ts_ms", "recv_ts_ms"), "polled: max(ts_ms, recv_ts_ms)"),
    Rule("binance_funding_rate", "polled", "funding_ts_ms", "MAX({p}funding_ts_ms, {p}recv_ts_ms)",
         _later("funding_ts_ms", "recv_ts_ms"), "polled: max(funding_ts_ms, recv_ts_ms)"),
    *(Rule(t, "coinglass", "avail_ts_ms", "({p}avail_ts_ms + {delay_ms})", _coinglass,
           "Coinglass bar: avail_ts_ms (close) + CQT_COINGLASS_DELAY_S, never open_ts_ms")
      for t in ("coinglass_open_interest", "coinglass_funding", "coinglass_liquidations",
                "coinglass_long_short")),
)}

#: Every raw table the rule covers (the market-data tables of migration 0001).
RAW_TABLES: tuple[str, ...] = tuple(AVAILABILITY)


def rule(table: str) -> Rule:
    try:
        return AVAILABILITY[table]
    except KeyError:
        raise KeyError(f"no time rule for table {table!r}; known: {', '.join(RAW_TABLES)}") from None


def availability_sql(table: str, delay_s: int = DEFAULT_COINGLASS_DELAY_S, alias: str = "") -> str:
    """SQL expression (INTEGER ms) of a row's availability time in `table`.

    `alias` qualifies the columns (``availability_sql("upbit_trades", alias="t")`` ->
    ``t.trade_ts_ms``); `delay_s` is CQT_COINGLASS_DELAY_S and matters only for Coinglass.
    """
    p = f"{alias}." if alias else ""
    return "(" + rule(table).sql.format(p=p, delay_ms=int(delay_s) * 1000) + ")"


def availability_ms(table: str, row: Mapping[str, Any], delay_s: int = DEFAULT_COINGLASS_DELAY_S) -> int | None:
    """The same rule in Python for one row (a mapping of column -> value).
    None = never available (e.g. an unknown ratio period)."""
    return rule(table).py(row, int(delay_s) * 1000)


def available_where(table: str, delay_s: int = DEFAULT_COINGLASS_DELAY_S, alias: str = "") -> str:
    """SQL condition 'available at the bound parameter ?': uses the indexed time column
    as a pre-filter, then the exact rule. Binds ONE parameter twice: pass (t0, t0)."""
    p = f"{alias}." if alias else ""
    return f"({p}{rule(table).time_col} <= ? AND {availability_sql(table, delay_s, alias)} <= ?)"


def rows_available_at(conn: sqlite3.Connection, table: str, t0: int, delay_s: int = DEFAULT_COINGLASS_DELAY_S,
                      *, columns: str = "*", lookback_ms: int | None = None, where: str = "",
                      params: Sequence[Any] = ()) -> list[tuple]:
    """Rows of `table` available at t0 (availability <= t0), optionally only those whose
    time column is within `lookback_ms` before t0, plus an extra `where` clause.
    One bounded statement: keep `lookback_ms` small on big tables."""
    r = rule(table)
    sql = f"SELECT {columns} FROM {table} WHERE {available_where(table, delay_s)}"
    args: list[Any] = [t0, t0]
    if lookback_ms is not None:
        sql += f" AND {r.time_col} > ?"
        args.append(t0 - lookback_ms)
    if where:
        sql += f" AND ({where})"
        args.extend(params)
    return conn.execute(sql, args).fetchall()


def delete_unavailable(conn: sqlite3.Connection, t0: int, delay_s: int = DEFAULT_COINGLASS_DELAY_S,
                       tables: Sequence[str] = RAW_TABLES) -> dict[str, int]:
    """Delete every raw row whose availability is > t0 (or NULL): turns a COPY of a
    database into "what could be known at t0". Used by the causality tests and the leak
    check. Runs in the caller's transaction state; returns rows deleted per table."""
    out = {}
    for t in tables:
        expr = availability_sql(t, delay_s)
        cur = conn.execute(f"DELETE FROM {t} WHERE {expr} > ? OR {expr} IS NULL", (t0,))
        out[t] = cur.rowcount
    return out
