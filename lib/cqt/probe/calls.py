"""The REST calls of each venue, made once each and parsed by the parser the services use.

The list mirrors what the services send: the market-list check at start, the backfills
(aggTrades, trades/ticks), every poller job (per symbol), every Coinglass endpoint (per coin).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ..poll.outcomes import error_code
from ..rest import RestClient
from ..venues.binance import markets as binance_markets
from ..venues.binance.poll import PERIOD, RATIO_JOBS
from ..venues.coinglass.parse import COINGLASS_ENDPOINTS
from ..venues.coinglass.poll import PLAN_LIMITS_TEXT, PLANS, classify
from ..venues.common import Reject
from ..venues.registry import rest_answer_outcome
from ..venues.upbit import markets as upbit_markets
from ..venues.upbit.backfill import UpbitTradeFill
from .explain import explain_error, explain_status
from .result import Item

#: answers after which the venue's other calls are not sent (they would only make it worse)
STOP_STATUSES = (418, 429, 451)


@dataclass(frozen=True)
class Call:
    source: str                     # 'upbit' | 'binance' | 'coinglass' (the item's source)
    rest_source: str                # the parser's source ('upbit_rest', 'binance_rest', 'coinglass')
    path: str
    params: dict = field(default_factory=dict)
    label: str = ""                 # what the line names besides the path (symbol, coin and interval)
    problems: Callable[[Any], list[str]] | None = None   # market lists: the configured symbols not listed

    @property
    def name(self) -> str:
        return f"rest {self.path}" + (f" {self.label}" if self.label else "")


def upbit_calls(codes: tuple[str, ...]) -> list[Call]:
    out = [Call("upbit", "upbit_rest", upbit_markets.PATH, {}, "",
                lambda listed: upbit_markets.code_problems(listed, codes))]
    out += [Call("upbit", "upbit_rest", UpbitTradeFill.PATH, {"market": code, "count": 5}, code) for code in codes]
    return out


def binance_calls(symbols: tuple[str, ...]) -> list[Call]:
    out = [Call("binance", "binance_rest", binance_markets.PATH, {}, "",
                lambda info: binance_markets.symbol_problems(info, symbols))]
    for sym in symbols:
        out += [Call("binance", "binance_rest", "/fapi/v1/aggTrades", {"symbol": sym, "limit": 5}, sym),
                Call("binance", "binance_rest", "/fapi/v1/openInterest", {"symbol": sym}, sym),
                Call("binance", "binance_rest", "/fapi/v1/premiumIndex", {"symbol": sym}, sym),
                Call("binance", "binance_rest", "/fapi/v1/fundingRate", {"symbol": sym, "limit": 3}, sym)]
        out += [Call("binance", "binance_rest", f"/futures/data/{endpoint}",
                     {"symbol": sym, "period": PERIOD, "limit": 3}, sym) for endpoint, _kind in RATIO_JOBS.values()]
    return out


def coinglass_calls(cfg) -> list[Call]:
    """`cfg`: a CoinglassConfig (its coins, interval and the parameters the poller sends)."""
    return [Call("coinglass", "coinglass", ep.path, {**cfg.params(key, coin), "limit": 3}, f"{coin} {cfg.interval}")
            for coin in cfg.coins for key, ep in COINGLASS_ENDPOINTS.items()]


def usage_note(headers) -> str:
    """The budget headers of an answer, as the operator reads them."""
    h = {k.lower(): v for k, v in (headers or {}).items()}
    notes = []
    if "x-mbx-used-weight-1m" in h:
        notes.append(f"weight used {h['x-mbx-used-weight-1m']}/min")
    if "remaining-req" in h:
        notes.append(f"Remaining-Req {h['remaining-req']}")
    if "api-key-use-limit" in h or "api-key-max-limit" in h:
        notes.append(f"key used {h.get('api-key-use-limit', '?')} of {h.get('api-key-max-limit', '?')}/min")
    return ", ".join(notes)


def probe_call(client: RestClient, call: Call, settings, *, interval: str = "", plan: str | None = None) -> Item:
    """One GET, judged: transport, status, the parser's verdict (and Coinglass's body code)."""
    r = client.get(call.path, call.params, wait=False)
    item = Item(call.source, call.name, False, frames=1 if r.status is not None else 0,
                latency_ms=float(r.elapsed_ms) if r.status is not None else None, note=usage_note(r.headers))
    if r.status is None:
        item.cause, item.fix = explain_error(call.source, r.error or "no answer")
        return item
    parsed = None
    if r.ok:
        parsed = rest_answer_outcome(call.rest_source, call.path, call.params, r.text, r.recv_ts_ms, None,
                                     settings, r.status)
    if call.source == "coinglass":
        ok, error, fail = classify(r, parsed, interval, plan)
        if not ok and error and "key rejected" in error:
            item.cause = f"{error} ({_first_words(r.text)})" if r.text else error
            item.fix = "check COINGLASS_API_KEY in .env (the key of your Coinglass account's API page)"
            return item
        if not ok and fail is not None and "plan" in fail.reason:
            said = error.split(": ", 1)[1] if error and ": " in error else ""
            item.cause = f"{interval} refused by the plan" + (f" ({said})" if said else "")
            item.fix = plan_fix(plan)
            return item
    if not r.ok:
        body = error_code(r.text)
        item.cause, item.fix = explain_status(call.source, r.status, (r.headers or {}).get("Retry-After"),
                                              body[1] if body else "")
        return item
    if isinstance(parsed, Reject):
        item.rejects = 1
        item.reject_reasons = {parsed.reason: 1}
        item.cause = f"answer not understood: {parsed.reason}" + (f" ({parsed.detail})" if parsed.detail else "")
        item.fix = "the venue's format may have changed: record a capture (--capture) and report it"
        return item
    if parsed is None and call.problems is not None:
        try:
            problems = call.problems(r.json())
        except ValueError as exc:
            item.cause, item.fix = f"market list unreadable: {exc}", "probe again; report it if it stays"
            return item
        if problems:
            item.cause = "; ".join(problems[:5])
            item.fix = "correct CQT_SYMBOLS (or the per-venue override)"
            return item
    item.ok = True
    item.rows = len(parsed.rows) if parsed is not None else 0
    return item


def plan_fix(plan: str | None) -> str:
    """What to set after a plan refusal: the plan's shortest interval when the plan is known."""
    if plan in PLANS:
        shortest = PLANS[plan][1]
        return f"plan {plan} allows >= {shortest}: set CQT_COINGLASS_INTERVAL={shortest}"
    return f"set CQT_COINGLASS_INTERVAL to an interval your plan allows ({PLAN_LIMITS_TEXT}; 4h works on every plan)"


def _first_words(text: str) -> str:
    body = error_code(text)
    return (body[1] if body else text.strip())[:100]


def stops_venue(item: Item) -> bool:
    """After a ban, a rate limit or a refused location, the venue's other calls are not sent."""
    return not item.ok and any(item.cause.startswith(f"http {s}") for s in STOP_STATUSES)
