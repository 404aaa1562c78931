"""coinglass_check: is Coinglass enabled, keyed and actually answering?

- coinglass.enabled       COINGLASS_ENABLED must be exactly `true` (the run plan's rule);
- coinglass.key           COINGLASS_API_KEY present and not a placeholder (never printed);
- per enabled endpoint (the paths cqt-poll-coinglass records in coinglass_call_status):
  coinglass.<endpoint>.ok_calls (successful calls in the window) and
  coinglass.<endpoint>.last_ok_age_s (as-of minus the newest success);
- coinglass.error_ratio   failed calls / calls in the window.
Every FAIL says why in words: the HTTP status explained (`401 from Coinglass: key
rejected`), or `no calls recorded in 600 s: is cqt-poll-coinglass running?`.
"""
from __future__ import annotations

from ..timeutil import fmt_ms
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
    if http_status == 401:
        return f"401 from Coinglass: key rejected{detail}"
    if http_status == 403:
        return f"403 from Coinglass: the plan does not allow this endpoint or interval{detail}"
    if http_status == 429:
        return f"429 from Coinglass: rate limit of the plan exceeded{detail}"
    if http_status >= 500:
        return f"{http_status} from Coinglass: server error{detail}"
    if http_status == 200:
        return f"Coinglass answered with an error{detail}"
    return f"{http_status} from Coinglass{detail}"


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

    min_ok = th("CQT_CHECK_COINGLASS_MIN_OK_CALLS")
    age_max = th("CQT_CHECK_COINGLASS_OK_AGE_MAX_S")
    lo, hi = ctx.start_ms, ctx.as_of_ms
    total_calls = conn.execute("SELECT COUNT(*) FROM coinglass_call_status WHERE ts_ms > ? AND ts_ms <= ?",
                               (lo, hi)).fetchone()[0]
    no_calls = f"no calls recorded in {ctx.window_s} s: is {POLLER} running?"
    for name, path in enabled_endpoints():
        calls, oks = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(ok), 0) FROM coinglass_call_status "
            "WHERE endpoint = ? AND ts_ms > ? AND ts_ms <= ?", (path, lo, hi)).fetchone()
        if calls == 0:
            why = (no_calls if total_calls == 0
                   else f"no calls to {path} in {ctx.window_s} s (other endpoints were called)")
        elif oks < min_ok:
            st, err, ts = conn.execute(
                "SELECT http_status, error, ts_ms FROM coinglass_call_status WHERE endpoint = ? AND ok = 0 "
                "AND ts_ms > ? AND ts_ms <= ? ORDER BY ts_ms DESC LIMIT 1", (path, lo, hi)).fetchone()
            why = f"{calls} calls, none ok; last: {explain(st, err)} at {fmt_ms(ts)}"
        else:
            why = f"{oks} of {calls} calls ok"
        out.append(Metric.judge(f"coinglass.{name}.ok_calls", oks, ">=", min_ok, why))

        last_ok = conn.execute("SELECT MAX(ts_ms) FROM coinglass_call_status WHERE endpoint = ? AND ok = 1 "
                               "AND ts_ms <= ?", (path, hi)).fetchone()[0]
        if last_ok is None:
            out.append(Metric.judge(f"coinglass.{name}.last_ok_age_s", None, "<=", age_max,
                                    none_reason=f"no successful call to {path} ever recorded"))
        else:
            out.append(Metric.judge(f"coinglass.{name}.last_ok_age_s", round((hi - last_ok) / 1000, 1), "<=",
                                    age_max, f"last success {fmt_ms(last_ok)}"))

    ratio_max = th("CQT_CHECK_COINGLASS_ERROR_RATIO_MAX")
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
