"""A recorded REST answer -> the parser the live poller uses for it.

The pollers (`cqt.collectors.binance_rest`, `cqt.collectors.coinglass`), `bin/cqt synth`
and `bin/cqt replay` all turn a REST answer into rows through `parse_rest_answer`, so
a replayed or synthesised answer yields exactly the rows the live path would have
written. The per-source parsers themselves are the pure functions in `cqt.sources`.

    res = parse_rest_answer("binance_rest", "/fapi/v1/openInterest", {"symbol": "BTCUSDT"},
                            body, recv_ts_ms)
    if isinstance(res, Reject): ...           # bad answer: svc.rejects.record(...)
    elif res is not None and res.rows: writer.put_many(store_sql(res.table), res.rows)

`now_ms` defaults to `recv_ts_ms` (a replay judges every answer by its own receive
time, so an old capture parses cleanly). `settings` fills request context the recorded
`params` may lack (the Binance symbol, the Coinglass interval / exchange list) — the
live pollers always send it, so their answers never need it.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..sources import UPSERT_TABLES, Parsed, Reject, insert_sql
from ..sources import parse_rest_answer as _dispatch

__all__ = ["parse_rest_answer", "rest_context", "store_sql", "Parsed", "Reject", "DATA_PATHS"]

#: paths whose answers carry rows, per capture source
DATA_PATHS: dict[str, tuple[str, ...]] = {
    "binance_rest": ("/fapi/v1/aggTrades", "/fapi/v1/openInterest", "/fapi/v1/premiumIndex",
                     "/fapi/v1/fundingRate", "/futures/data/openInterestHist",
                     "/futures/data/globalLongShortAccountRatio",
                     "/futures/data/topLongShortPositionRatio", "/futures/data/takerlongshortRatio"),
    "upbit_rest": ("/v1/trades/ticks", "/v1/ticker"),
    "coinglass": ("/api/futures/open-interest/aggregated-history", "/api/futures/funding-rate/history",
                  "/api/futures/liquidation/aggregated-history",
                  "/api/futures/global-long-short-account-ratio/history"),
}


def rest_context(source: str, path: str, params: Mapping[str, Any] | None, settings=None) -> dict[str, Any]:
    """`params` completed from settings where the parser needs context the request did not
    name (only for hand-made or old captures; live requests always carry it)."""
    p = dict(params or {})
    if settings is None:
        return p
    if source == "binance_rest":
        if path in ("/fapi/v1/aggTrades",) or path.startswith("/futures/data/"):
            p.setdefault("symbol", settings.binance_symbol)
        if path.startswith("/futures/data/"):
            p.setdefault("period", "5m")
    elif source == "coinglass":
        from .coinglass import coin_of  # local: avoid an import cycle at module load
        p.setdefault("interval", settings.coinglass_interval)
        if path.endswith("/aggregated-history"):
            p.setdefault("symbol", coin_of(settings))
        else:
            p.setdefault("symbol", settings.binance_symbol)
            p.setdefault("exchange", "Binance")
        if "liquidation" in path:
            p.setdefault("exchange_list", settings.get_str("CQT_COINGLASS_EXCHANGES", "Binance,OKX,Bybit"))
    return p


def parse_rest_answer(source: str, path: str, params: Mapping[str, Any] | None, body: Any,
                      recv_ts_ms: int, now_ms: int | None = None, settings=None,
                      status: int | None = 200) -> Parsed | Reject | None:
    """Parse one REST answer. Never raises for any body.

    Returns the parser's `Parsed` (rows may be empty), a `Reject` (bad body, an error
    envelope, a non-2xx answer — reason `http_<status>` when the body carries nothing
    better), or None when the path carries no rows (`/fapi/v1/time`, unknown paths) or
    the request lacked context the parser needs (a caller/capture problem, not bad data).
    """
    path = path.split("?", 1)[0]
    ctx = rest_context(source, path, params, settings)
    try:
        res = _dispatch(source, path, ctx, body, recv_ts_ms, now_ms)
    except Reject as rej:
        if status is not None and not 200 <= status < 300 and not rej.reason.startswith("api_error"):
            return Reject(f"http_{status}", source, rej.detail)
        return rej
    except ValueError:
        # unknown source, missing context (symbol/interval) or an unknown interval
        return None
    if res is not None and status is not None and not 200 <= status < 300:
        # A body that parses as data under an error status is not trusted.
        return Reject(f"http_{status}", source, None)
    return res


def store_sql(table: str) -> str:
    """The statement pollers, synth and replay store a parsed REST answer with:
    INSERT OR IGNORE for append-only tables; for tables whose rows a later answer can
    revise (`binance_ratios`, Coinglass bars — re-fetched on every poll) the revise-only
    upsert of `cqt.sources.insert_sql(table, upsert=True)` (= `Parsed.sql`): a stored row
    changes only when a value differs, and then its `recv_ts_ms` moves to the revision's
    receive time; an unchanged re-fetch leaves the row exactly as it was."""
    return insert_sql(table, table in UPSERT_TABLES)
