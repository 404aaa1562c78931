"""Shared pieces of the pure parsers: result types, table layout, SQL, validation helpers.

Style: a parser *returns* a :class:`Parsed` and *raises* :class:`Reject` for bad input.
Nothing else escapes a parser for any payload (a ``ValueError`` only means the
caller passed bad arguments, e.g. an unknown interval or endpoint key).

    try:
        p = parse_binance_frame(raw, recv_ts_ms)
    except Reject as r:
        svc.rejects.record(r.source, r.reason, raw)
    else:
        if p.rows:
            writer.put_many(p.sql, p.rows)

Parsers never read the clock and never consult storage: ``now_ms`` (default: the
frame's ``recv_ts_ms``) is the only notion of "now", so a replay of an old capture
parses exactly as it did live, and a bad frame carrying an already stored id is
still a reject (validation precedes dedupe).

Reject reasons are short, stable and groupable (``kind`` or ``kind:key``):

    not_json                 payload is not valid JSON (orjson; NaN/Infinity literals,
                             bad UTF-8, trailing garbage, numbers overflowing a double)
    not_object / not_array   top level has the wrong JSON type
    missing_key:<k>          required key absent (nested keys: ``o.p``, ``obu.ap``)
    bad_type:<k>             wrong JSON type (e.g. number where Binance sends a string,
                             float or bool where an integer id/time is required)
    bad_number:<k>           a numeric string that does not parse ("abc", "")
    non_finite:<k>           NaN / Infinity (e.g. ``"p":"NaN"``)
    non_positive:<k>         price / size that must be > 0 is <= 0
    negative:<k>             value that must be >= 0 is < 0
    out_of_range:<k>         integer id outside [0, 2**63) (SQLite INTEGER range)
    bad_value:<k>            enum or text value not allowed (ask_bid "XYZ", empty symbol)
    inconsistent:<k>         fields contradict each other (aggTrade first id > last id)
    time_out_of_range:<k>    event time farther than the bounds from ``now_ms``
    unknown_event:<e>        a frame type/event this parser does not handle
    api_error:<code>         an error envelope (Binance ``{"code":-1121,…}``, Upbit
                             ``{"error":{"name":…}}``, Coinglass ``code != "0"``);
                             the server's message is in ``Reject.detail``

Values coming from input inside a reason (event names, codes) are sanitised and cut
to 32 characters so a hostile frame cannot create unbounded reason groups.
"""
from __future__ import annotations

import math
import re
from functools import lru_cache

import orjson

__all__ = [
    "Parsed", "Reject", "TABLE_COLUMNS", "TABLE_PK", "UPSERT_TABLES", "insert_sql", "store_sql",
    "interval_ms", "INTERVALS", "MAX_PAST_MS", "MAX_FUTURE_MS", "HISTORY_MAX_PAST_MS",
    "SOURCES",
]

# ------------------------------------------------------------------ time bounds (defaults)
#: live frames / "current value" REST answers: event time at most this far before now ...
MAX_PAST_MS = 24 * 3600 * 1000
#: ... and at most this far after now (clock skew between us and the exchange)
MAX_FUTURE_MS = 5 * 60 * 1000
#: REST history answers (aggTrades backfill, trade ticks, ratios, funding, Coinglass bars)
HISTORY_MAX_PAST_MS = 10 * 365 * 24 * 3600 * 1000

INT64_LIMIT = 1 << 63
INF = math.inf

#: values of Reject.source / Parsed.source (same words as gaps.source and captures)
SOURCES = ("upbit", "upbit_rest", "binance_ws", "binance_rest", "coinglass")

# ------------------------------------------------------------------ tables (0001_base.sql)
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "upbit_trades": ("code", "sequential_id", "trade_ts_ms", "price", "volume", "side",
                     "recv_ts_ms"),
    "upbit_orderbook": ("code", "ts_ms", "best_bid", "best_ask", "best_bid_size",
                        "best_ask_size", "total_bid_size", "total_ask_size", "levels",
                        "recv_ts_ms"),
    "upbit_ticker": ("code", "ts_ms", "trade_ts_ms", "trade_price", "prev_closing_price",
                     "acc_trade_volume_24h", "acc_trade_price_24h", "recv_ts_ms"),
    "binance_agg_trades": ("symbol", "agg_id", "trade_ts_ms", "price", "qty", "side",
                           "first_trade_id", "last_trade_id", "event_ts_ms", "recv_ts_ms"),
    "binance_mark_price": ("symbol", "event_ts_ms", "mark_price", "index_price",
                           "funding_rate", "next_funding_ts_ms", "recv_ts_ms"),
    "binance_book_ticker": ("symbol", "update_id", "event_ts_ms", "bid_price", "bid_qty",
                            "ask_price", "ask_qty", "recv_ts_ms"),
    "binance_liquidations": ("symbol", "event_ts_ms", "trade_ts_ms", "side", "price",
                             "avg_price", "qty", "filled_qty", "status", "recv_ts_ms"),
    "binance_open_interest": ("symbol", "ts_ms", "open_interest", "recv_ts_ms"),
    "binance_ratios": ("symbol", "kind", "period", "ts_ms", "value", "value2", "value3",
                       "recv_ts_ms"),
    "binance_premium_index": ("symbol", "ts_ms", "mark_price", "index_price",
                              "last_funding_rate", "interest_rate", "next_funding_ts_ms",
                              "recv_ts_ms"),
    "binance_funding_rate": ("symbol", "funding_ts_ms", "funding_rate", "mark_price",
                             "recv_ts_ms"),
    "coinglass_open_interest": ("symbol", "interval", "open_ts_ms", "avail_ts_ms", "open",
                                "high", "low", "close", "recv_ts_ms"),
    "coinglass_funding": ("exchange", "symbol", "interval", "open_ts_ms", "avail_ts_ms",
                          "open", "high", "low", "close", "recv_ts_ms"),
    "coinglass_liquidations": ("symbol", "exchanges", "interval", "open_ts_ms", "avail_ts_ms",
                               "long_liq_usd", "short_liq_usd", "recv_ts_ms"),
    "coinglass_long_short": ("exchange", "symbol", "interval", "open_ts_ms", "avail_ts_ms",
                             "long_percent", "short_percent", "long_short_ratio",
                             "recv_ts_ms"),
}

TABLE_PK: dict[str, tuple[str, ...]] = {
    "upbit_trades": ("code", "sequential_id"),
    "upbit_orderbook": ("code", "ts_ms"),
    "upbit_ticker": ("code", "ts_ms"),
    "binance_agg_trades": ("symbol", "agg_id"),
    "binance_mark_price": ("symbol", "event_ts_ms"),
    "binance_book_ticker": ("symbol", "update_id"),
    "binance_liquidations": ("symbol", "event_ts_ms", "side"),
    "binance_open_interest": ("symbol", "ts_ms"),
    "binance_ratios": ("symbol", "kind", "period", "ts_ms"),
    "binance_premium_index": ("symbol", "ts_ms"),
    "binance_funding_rate": ("symbol", "funding_ts_ms"),
    "coinglass_open_interest": ("symbol", "interval", "open_ts_ms"),
    "coinglass_funding": ("exchange", "symbol", "interval", "open_ts_ms"),
    "coinglass_liquidations": ("symbol", "exchanges", "interval", "open_ts_ms"),
    "coinglass_long_short": ("exchange", "symbol", "interval", "open_ts_ms"),
}

#: tables whose rows can be revised by a later answer: written with an upsert
UPSERT_TABLES = frozenset({
    "binance_ratios", "coinglass_open_interest", "coinglass_funding",
    "coinglass_liquidations", "coinglass_long_short",
})


@lru_cache(maxsize=None)
def insert_sql(table: str, upsert: bool = False) -> str:
    """``INSERT OR IGNORE INTO t (cols) VALUES (?,…)``; with ``upsert`` the revise-only
    upsert every writer of revisable rows uses (live pollers, synth, replay):
    ``INSERT … ON CONFLICT(pk) DO UPDATE SET col=excluded.col, … WHERE <a value differs>``.
    A stored row changes only when a non-key value differs, and then its ``recv_ts_ms``
    moves to the revision's receive time; an identical re-fetch leaves the row — and so
    the time it first became known, which features use — exactly as it was."""
    try:
        cols = TABLE_COLUMNS[table]
    except KeyError:
        raise ValueError(f"unknown table {table!r}") from None
    col_list = ", ".join(cols)
    marks = ", ".join("?" * len(cols))
    if not upsert:
        return f"INSERT OR IGNORE INTO {table} ({col_list}) VALUES ({marks})"
    pk = TABLE_PK[table]
    values = [c for c in cols if c not in pk and c != "recv_ts_ms"]
    sets = ", ".join(f"{c}=excluded.{c}" for c in values + ["recv_ts_ms"] if c in cols)
    changed = " OR ".join(f"{c} IS NOT excluded.{c}" for c in values)
    return (f"INSERT INTO {table} ({col_list}) VALUES ({marks}) "
            f"ON CONFLICT({', '.join(pk)}) DO UPDATE SET {sets} WHERE {changed}")


def store_sql(table: str) -> str:
    """The statement pollers, synth and replay store a parsed REST answer with:
    INSERT OR IGNORE for append-only tables; for tables whose rows a later answer can
    revise (`binance_ratios`, Coinglass bars — re-fetched on every poll) the revise-only
    upsert of `insert_sql(table, upsert=True)` (= `Parsed.sql`): a stored row changes
    only when a value differs, and then its `recv_ts_ms` moves to the revision's receive
    time; an unchanged re-fetch leaves the row exactly as it was."""
    return insert_sql(table, table in UPSERT_TABLES)


def request_param(params, name: str) -> str | None:
    """One request parameter of a (recorded) REST call as text; a list value: its first item."""
    v = (params or {}).get(name)
    if isinstance(v, (list, tuple)):
        v = v[0] if v else None
    return None if v is None else str(v)


# ------------------------------------------------------------------ intervals
#: intervals Coinglass v4 documents (2h: "check each endpoint"); Binance ratio periods
#: (5m 15m 30m 1h 2h 4h 6h 12h 1d) are a subset.
INTERVALS: dict[str, int] = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000,
    "8h": 28_800_000, "12h": 43_200_000, "1d": 86_400_000, "1w": 604_800_000,
}


def interval_ms(interval: str) -> int:
    """'1m'|'3m'|…|'1d'|'1w' -> milliseconds; ValueError for anything else."""
    try:
        return INTERVALS[interval]
    except (KeyError, TypeError):
        raise ValueError(f"unknown interval {interval!r}; one of {', '.join(INTERVALS)}") from None


# ------------------------------------------------------------------ result types
class Reject(Exception):
    """A payload that must not be stored. ``reason`` is short and stable
    (see the module docstring), ``source`` one of :data:`SOURCES`, ``detail`` an optional
    human hint (offending value, server message) — never part of the grouping key."""

    __slots__ = ("reason", "source", "detail")

    def __init__(self, reason: str, source: str, detail: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.source = source
        self.detail = detail

    def __reduce__(self):  # picklable across processes despite the custom __init__
        return (Reject, (self.reason, self.source, self.detail))

    def __str__(self) -> str:
        if self.detail:
            return f"{self.source}: {self.reason} ({self.detail})"
        return f"{self.source}: {self.reason}"

    def __repr__(self) -> str:
        return f"Reject({self.reason!r}, {self.source!r}, {self.detail!r})"


class Parsed:
    """What a parser made of one payload.

    table            target table ('' for control frames)
    rows             tuples in TABLE_COLUMNS[table] order (empty for control frames)
    stream           canonical stream name, e.g. 'BTCUSDT@aggTrade', 'KRW-BTC@trade'
    event_ts_ms      newest source event time in the payload (None if it has none)
    ids              (first, last) id for id-sequenced streams (Binance agg ids), else None
    kind             data: 'aggTrade' 'markPrice' 'bookTicker' 'forceOrder' 'trade'
                     'orderbook' 'ticker' 'openInterest' 'premiumIndex' 'fundingRate', the
                     binance_ratios kind, the Coinglass endpoint key;
                     no rows: 'control' 'pong' 'shutdown' 'error', or a known Binance
                     event that is not stored ('kline', 'depthUpdate' …)
    source           one of SOURCES
    detail           text of control/error frames (server message), else None
    skipped_forming  bars left out because not closed yet (Coinglass), else 0
    """

    __slots__ = ("table", "rows", "stream", "event_ts_ms", "ids", "kind", "source",
                 "detail", "skipped_forming")

    def __init__(self, table, rows, stream, event_ts_ms, ids, kind, source,
                 detail=None, skipped_forming=0):
        self.table = table
        self.rows = rows
        self.stream = stream
        self.event_ts_ms = event_ts_ms
        self.ids = ids
        self.kind = kind
        self.source = source
        self.detail = detail
        self.skipped_forming = skipped_forming

    @property
    def is_control(self) -> bool:
        return not self.table

    @property
    def sql(self) -> str | None:
        """The statement for ``rows`` (upsert for UPSERT_TABLES), None for control frames."""
        if not self.table:
            return None
        return insert_sql(self.table, self.table in UPSERT_TABLES)

    def __repr__(self) -> str:
        return (f"Parsed(kind={self.kind!r}, table={self.table!r}, stream={self.stream!r}, "
                f"rows={len(self.rows)}, event_ts_ms={self.event_ts_ms!r}, ids={self.ids!r}"
                + (f", detail={self.detail!r}" if self.detail else "")
                + (f", skipped_forming={self.skipped_forming}" if self.skipped_forming else "")
                + ")")


# ------------------------------------------------------------------ helpers
loads = orjson.loads
JSONDecodeError = orjson.JSONDecodeError
_RAW_TYPES = (str, bytes, bytearray, memoryview)
_TOKEN_RE = re.compile(r"[^A-Za-z0-9_@.!:+-]")
_SECRETISH_RE = re.compile(r"[A-Za-z0-9_-]{24,}")


def token(value) -> str:
    """Input text made safe for use inside a reason: [A-Za-z0-9_@.!:+-], <= 32 chars."""
    s = _TOKEN_RE.sub("_", str(value))[:32]
    return s or "_"


def clip(text, n: int = 200) -> str:
    """Server text for Reject.detail / Parsed.detail: one line, cut, long tokens masked
    (an API key echoed by a server must never reach the database)."""
    s = " ".join(str(text).split())
    s = _SECRETISH_RE.sub("***", s)
    return s if len(s) <= n else s[: n - 1] + "…"


def decode(raw, source: str):
    """Raw payload -> JSON value; dict/list pass through (already decoded)."""
    if type(raw) is dict or type(raw) is list:
        return raw
    if not isinstance(raw, _RAW_TYPES):
        raise Reject("not_json", source, f"payload type {type(raw).__name__}")
    try:
        return loads(raw)
    except JSONDecodeError as exc:
        raise Reject("not_json", source, clip(exc, 120)) from None


def missing(exc: KeyError, source: str, prefix: str = "") -> Reject:
    return Reject(f"missing_key:{prefix}{token(exc.args[0] if exc.args else '?')}", source)


def _show(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:59] + "…"


def bad_type(key: str, v, source: str) -> Reject:
    return Reject(f"bad_type:{key}", source, f"{type(v).__name__} {_show(v)}")


def range_reject(key: str, x: float, source: str, strict: bool = True) -> Reject:
    """Reason for a float that failed ``0 < x < inf`` (strict) or ``0 <= x < inf``."""
    if x != x or x in (INF, -INF):
        return Reject(f"non_finite:{key}", source, _show(x))
    return Reject(f"{'non_positive' if strict else 'negative'}:{key}", source, _show(x))


# number acceptance modes
STR = 1       # Binance: numbers are JSON strings
NUM = 2       # Upbit WS: JSON numbers
ANY = 3       # Upbit REST (ccxt recordings), Coinglass: either


def to_float(v, key: str, source: str, accept: int) -> float:
    """JSON value -> finite float, per ``accept`` (STR / NUM / ANY)."""
    t = type(v)
    if t is str:
        if not accept & STR:
            raise bad_type(key, v, source)
        try:
            x = float(v)
        except ValueError:
            raise Reject(f"bad_number:{key}", source, _show(v)) from None
        if "_" in v:  # float() accepts '1_000'; JSON numbers never contain '_'
            raise Reject(f"bad_number:{key}", source, _show(v))
    elif t is float or t is int:
        if not accept & NUM:
            raise bad_type(key, v, source)
        x = float(v)
    else:
        raise bad_type(key, v, source)
    if x - x != 0.0:  # NaN or +-inf
        raise Reject(f"non_finite:{key}", source, _show(v))
    return x


def pos(v, key, source, accept) -> float:
    x = to_float(v, key, source, accept)
    if x <= 0.0:
        raise Reject(f"non_positive:{key}", source, _show(v))
    return x


def nonneg(v, key, source, accept) -> float:
    x = to_float(v, key, source, accept)
    if x < 0.0:
        raise Reject(f"negative:{key}", source, _show(v))
    return x


def opt_float(d: dict, key: str, source: str, accept: int, check=None, label=None):
    """Optional numeric: absent, null or "" -> None, else validated with ``check``
    (``pos`` / ``nonneg``; default: finite only)."""
    v = d.get(key)
    if v is None or v == "":
        return None
    return (check or to_float)(v, label or key, source, accept)


def to_int(v, key: str, source: str, strings: bool = False) -> int:
    """JSON integer (never bool/float); with ``strings`` also an ASCII digit string."""
    t = type(v)
    if t is int:
        return v
    if strings and t is str and v.isascii() and v.isdigit() and len(v) <= 19:
        return int(v)
    raise bad_type(key, v, source)


def to_id(v, key: str, source: str, strings: bool = False) -> int:
    """Non-negative integer that fits SQLite's INTEGER."""
    i = to_int(v, key, source, strings)
    if not 0 <= i < INT64_LIMIT:
        raise Reject(f"out_of_range:{key}", source, _show(v))
    return i


def check_time(t: int, key: str, source: str, lo: int, hi: int) -> int:
    if not lo <= t <= hi:
        raise Reject(f"time_out_of_range:{key}", source, _show(t))
    return t


def to_time(v, key, source, lo, hi, strings=False) -> int:
    t = to_int(v, key, source, strings)
    if not lo <= t <= hi:
        raise Reject(f"time_out_of_range:{key}", source, _show(v))
    return t


def to_text(v, key: str, source: str) -> str:
    """Non-empty string (symbols, codes, enums)."""
    if type(v) is not str:
        raise bad_type(key, v, source)
    if not v or len(v) > 64:
        raise Reject(f"bad_value:{key}", source, _show(v))
    return v


def bounds(recv_ts_ms: int, now_ms: int | None, max_past_ms: int, max_future_ms: int):
    now = recv_ts_ms if now_ms is None else now_ms
    return now - max_past_ms, now + max_future_ms
