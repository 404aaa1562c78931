"""coinglass_check: is Coinglass enabled, keyed and actually answering?

- coinglass.enabled       COINGLASS_ENABLED must be exactly `true` (the run plan's rule);
- coinglass.key           COINGLASS_API_KEY present and not a placeholder (never printed);
- per judged coin (the Coinglass coin of each asset: the asset) and enabled endpoint (the
  paths cqt-poll-coinglass records in coinglass_call_status as `<path>?coin=<COIN>`; with one
  coin configured the bare paths of older rows count too):
  coinglass.<COIN>.<endpoint>.ok_calls (successful calls in the window) and
  coinglass.<COIN>.<endpoint>.last_ok_age_s (as-of minus the newest success);
- coinglass.error_ratio   failed calls / calls in the window (the whole service).
Every FAIL says why in words: the HTTP status explained (`401 from Coinglass: key
rejected`), or `no calls recorded in 600 s: is cqt-poll-coinglass running?`.
"""
from __future__ import annotations

from ..symbols import coinglass_coin
from ..timeutil import fmt_ms
from ..venues.coinglass import call_endpoint
from ..venues.coinglass.parse import COINGLASS_ENDPOINTS
from .base import CheckContext, check_command
from .result import Metric

POLLER = "cqt-poll-coinglass"


def enabled_endpoints() -> list[tuple[str, str]]:
    """(short name, path) of every endpoint the poller calls."""
    return [(e.key, e.path) for e in COINGLASS_ENDPOINTS.values()]


def explain(http_status: int | None, error: str | None) -> str:
    """A failed call in the operator's words. `error` is the poller's short reason (no key)."""
    detail = f" ({error})" if error else ""
    if http_status is None:
        return f"no answer from Coinglass: {error or 'timeout or connection refused'}"
    if (error or "").startswith("interval not allowed by plan"):
        return f"{http_status} from Coinglass: the plan does not allow this interval{detail}"
    if http_status == 401 or (error or "").endswith("key rejected"):
        return f"{http_status} from Coinglass: key rejected{detail}"
    if http_status == 403:
        return f"403 from Coinglass: the plan does not allow this endpoint or interval{detail}"
    if http_status == 429:
        return f"429 from Coinglass: rate limit of the plan exceeded{detail}"
    if http_status >= 500:
        return f"{http_status} from Coinglass: server error{detail}"
    if http_status == 200:
        return f"Coinglass answered with an error{detail}"
    return f"{http_status} from Coinglass{detail}"


def call_endpoints(ctx: CheckContext, path: str, coin: str) -> tuple[str, ...]:
    """coinglass_call_status.endpoint values of `path` for `coin`: `<path>?coin=<COIN>`; with one
    coin configured also the bare path (rows written before the poller named the coin)."""
    if len(ctx.settings.assets) == 1:
        return call_endpoint(path, coin), path
    return (call_endpoint(path, coin),)


def coin_metrics(ctx: CheckContext, coin: str, total_calls: int) -> list[Metric]:
    """coinglass.<COIN>.<endpoint>.ok_calls and .last_ok_age_s for every endpoint the poller calls."""
    th, conn = ctx.thresholds, ctx.conn
    min_ok = th("CQT_CHECK_COINGLASS_MIN_OK_CALLS")
    age_max = th("CQT_CHECK_COINGLASS_OK_AGE_MAX_S")
    lo, hi = ctx.start_ms, ctx.as_of_ms
    no_calls = f"no calls recorded in {ctx.window_s} s: is {POLLER} running?"
    out: list[Metric] = []
    for name, path in enabled_endpoints():
        eps = call_endpoints(ctx, path, coin)
        ep_in = f"endpoint IN ({','.join('?' * len(eps))})"
        calls, oks = conn.execute(
            f"SELECT COUNT(*), COALESCE(SUM(ok), 0) FROM coinglass_call_status WHERE {ep_in} AND ts_ms > ? "
            "AND ts_ms <= ?", (*eps, lo, hi)).fetchone()
        if calls == 0:
            why = (no_calls if total_calls == 0
                   else f"no calls to {path} for {coin} in {ctx.window_s} s (other calls were made)")
        elif oks < min_ok:
            st, err, ts = conn.execute(
                f"SELECT http_status, error, ts_ms FROM coinglass_call_status WHERE {ep_in} AND ok = 0 "
                "AND ts_ms > ? AND ts_ms <= ? ORDER BY ts_ms DESC LIMIT 1", (*eps, lo, hi)).fetchone()
            why = f"{calls} calls, none ok; last: {explain(st, err)} at {fmt_ms(ts)}"
        else:
            why = f"{oks} of {calls} calls ok"
        metric = f"coinglass.{coin}.{name}"
        out.append(Metric.judge(f"{metric}.ok_calls", oks, ">=", min_ok, why))

        last_ok = conn.execute(f"SELECT MAX(ts_ms) FROM coinglass_call_status WHERE {ep_in} AND ok = 1 "
                               "AND ts_ms <= ?", (*eps, hi)).fetchone()[0]
        if last_ok is None:
            out.append(Metric.judge(f"{metric}.last_ok_age_s", None, "<=", age_max,
                                    none_reason=f"no successful call to {path} for {coin} ever recorded"))
        else:
            out.append(Metric.judge(f"{metric}.last_ok_age_s", round((hi - last_ok) / 1000, 1), "<=",
                                    age_max, f"last success {fmt_ms(last_ok)}"))
    return out


def evaluate(ctx: CheckContext) -> list[Metric]:
    s, th, conn = ctx.settings, ctx.thresholds, ctx.conn
    out: list[Metric] = []

    raw_enabled = s.raw.get("COINGLASS_ENABLED", "")
    where = s.source.get("COINGLASS_ENABLED", "default")
    enabled_ok = raw_enabled == "true"
    reason = ("" if enabled_ok else
              f"COINGLASS_ENABLED is {raw_enabled!r} (from {where}); it must be exactly 'true'" if raw_enabled else
              "COINGLASS_ENABLED is not set (default false); set COINGLASS_ENABLED=true in .env")
    out.append(Metric.judge("coinglass.enabled", int(enabled_ok), "==", 1, reason))

    state = s.coinglass_key_state
    key_reason = {"present": "",
                  "missing": "COINGLASS_API_KEY is missing: put your key in .env",
                  "placeholder": "COINGLASS_API_KEY is a placeholder, not a real key: put your key in .env"}[state]
    out.append(Metric.judge("coinglass.key", int(state == "present"), "==", 1, key_reason))

    lo, hi = ctx.start_ms, ctx.as_of_ms
    total_calls = conn.execute("SELECT COUNT(*) FROM coinglass_call_status WHERE ts_ms > ? AND ts_ms <= ?",
                               (lo, hi)).fetchone()[0]
    for asset in ctx.assets:
        out += coin_metrics(ctx, coinglass_coin(asset), total_calls)

    ratio_max = th("CQT_CHECK_COINGLASS_ERROR_RATIO_MAX")
    no_calls = f"no calls recorded in {ctx.window_s} s: is {POLLER} running?"
    if total_calls == 0:
        out.append(Metric.judge("coinglass.error_ratio", None, "<=", ratio_max, none_reason=no_calls))
    else:
        failures = conn.execute(
            "SELECT http_status, error, COUNT(*) FROM coinglass_call_status WHERE ok = 0 AND ts_ms > ? AND ts_ms <= ? "
            "GROUP BY http_status, error ORDER BY COUNT(*) DESC", (lo, hi)).fetchall()
        failed = sum(r[2] for r in failures)
        top = "; ".join(f"{explain(st, err)} x{n}" for st, err, n in failures[:3])
        out.append(Metric.judge("coinglass.error_ratio", round(failed / total_calls, 4), "<=", ratio_max,
                                f"{failed} of {total_calls} calls failed" + (f": {top}" if top else "")))
    return out


main = check_command("coinglass_check", evaluate, """Coinglass: enabled, key present (never printed),
successful calls per endpoint in the window, age of the last success, error ratio.

Exit 0 PASS, 1 FAIL, 2 usage error, 3 could not evaluate, 78 misconfigured.""")
