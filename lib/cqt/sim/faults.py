"""Fault specifications for cqt-sim (control endpoint `POST /_sim/fault` and `--fault`).

A fault is a JSON object whose "kind" names it; the other keys are its
parameters.  `validate()` normalises one and raises FaultError with a readable
message; the server applies it.  Every fault may carry "at": seconds from now
(it is then scheduled instead of applied at once).

WebSocket faults (optional "source": "upbit" | "binance", default both):
  drop            {"close_code": int?}         every connection: abort (1006) or close with the code
  stall           {"seconds": N}               connections stay open, nothing is sent for N s
  gap             {"ids": N, "stream": s?}     the next N trades are not sent on the WebSocket
                                               (REST still has them); default streams
                                               btcusdt@aggTrade and KRW-BTC@trade
  malformed       {"count": N, "kinds": [...]?, "per_frame": 4}
                                               N bad frames interleaved with normal traffic
  refuse          {"seconds": N, "rest": false} new connections are refused for N s
  server_shutdown {"delay": 1.0}               Binance: {"e":"serverShutdown"} then close
REST faults (the next "count" requests of "path"; "path" exact, "prefix*" or "*"):
  http_error      {"path", "status": 429|418|500|502|503|…, "count": 1,
                   "body": "default"|"truncated"|"non_json"|"empty", "retry_after": 1}
  truncated       {"path", "count": 1}         HTTP 200 with the real body cut in half
  non_json        {"path", "count": 1}         HTTP 200 with an HTML body
  slow            {"path", "seconds": 3, "count": 1}
  coinglass_auth  {"count": 1}                 the Coinglass key is rejected (401)
Other:
  clear           {}                           cancel every pending fault
"""
from __future__ import annotations

MALFORMED_KINDS = ("not_json", "missing_keys", "wrong_types", "nan", "negative_price",
                   "zero_price", "absurd_ts")
SOURCES = ("upbit", "binance")
KINDS = ("drop", "stall", "gap", "malformed", "refuse", "server_shutdown", "http_error",
         "truncated", "non_json", "slow", "coinglass_auth", "clear")
_BODIES = ("default", "truncated", "non_json", "empty")


class FaultError(ValueError):
    pass


def _num(spec: dict, key: str, default=None, lo: float = 0, integer: bool = False):
    v = spec.get(key, default)
    if v is None:
        raise FaultError(f"{spec.get('kind')}: '{key}' is required")
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise FaultError(f"{spec.get('kind')}: '{key}' must be a number") from None
    if v < lo:
        raise FaultError(f"{spec.get('kind')}: '{key}' must be >= {lo}")
    return int(v) if integer else float(v)


def validate(spec) -> dict:
    """Normalise one fault spec; raise FaultError when it is not valid."""
    if not isinstance(spec, dict):
        raise FaultError("a fault is a JSON object with a 'kind'")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise FaultError(f"unknown fault kind {kind!r}; known: {', '.join(KINDS)}")
    out: dict = {"kind": kind}
    if "at" in spec:
        out["at"] = _num(spec, "at")
    src = spec.get("source")
    if src is not None:
        if src not in SOURCES:
            raise FaultError(f"source must be one of {SOURCES}, not {src!r}")
        out["source"] = src
    if kind == "drop":
        if spec.get("close_code") is not None:
            out["close_code"] = _num(spec, "close_code", integer=True, lo=1000)
    elif kind == "stall":
        out["seconds"] = _num(spec, "seconds", 10)
    elif kind == "gap":
        out["ids"] = _num(spec, "ids", 50, lo=1, integer=True)
        if spec.get("stream"):
            out["stream"] = str(spec["stream"])
    elif kind == "malformed":
        out["count"] = _num(spec, "count", 10, lo=1, integer=True)
        kinds = spec.get("kinds") or list(MALFORMED_KINDS)
        if isinstance(kinds, str):
            kinds = [kinds]
        bad = [k for k in kinds if k not in MALFORMED_KINDS]
        if bad or not kinds:
            raise FaultError(f"malformed: unknown kinds {bad}; known: {', '.join(MALFORMED_KINDS)}")
        out["kinds"] = list(kinds)
        out["per_frame"] = _num(spec, "per_frame", 4, lo=1, integer=True)
    elif kind == "refuse":
        out["seconds"] = _num(spec, "seconds", 10)
        out["rest"] = bool(spec.get("rest", False))
    elif kind == "server_shutdown":
        out["delay"] = _num(spec, "delay", 1.0)
        out["source"] = "binance"
    elif kind in ("http_error", "truncated", "non_json", "slow"):
        path = spec.get("path")
        if not isinstance(path, str) or not path:
            raise FaultError(f"{kind}: 'path' is required (exact, 'prefix*' or '*')")
        out["path"] = path
        out["count"] = _num(spec, "count", 1, lo=1, integer=True)
        if kind == "http_error":
            out["status"] = _num(spec, "status", 500, lo=100, integer=True)
            body = spec.get("body", "default")
            if body not in _BODIES:
                raise FaultError(f"http_error: body must be one of {_BODIES}")
            out["body"] = body
            out["retry_after"] = _num(spec, "retry_after", 1, integer=True)
        elif kind == "truncated":
            out.update(kind="http_error", status=200, body="truncated", retry_after=0)
        elif kind == "non_json":
            out.update(kind="http_error", status=200, body="non_json", retry_after=0)
        else:
            out["seconds"] = _num(spec, "seconds", 3)
    elif kind == "coinglass_auth":
        out["count"] = _num(spec, "count", 1, lo=1, integer=True)
    return out


def path_matches(pattern: str, path: str) -> bool:
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern


# ------------------------------------------------------------------ malformed frames
def malformed_frame(venue: str, kind: str, template: dict, seq: int) -> str:
    """One bad frame built from the last real trade of the venue (same ids, so a
    collector that stores it creates no gap; it must reject it by content)."""
    import json
    d = dict(template)
    if venue == "binance":
        if kind == "not_json":
            return '{"e":"aggTrade","E":' + str(d.get("E", 0)) + ',"a":' + str(d.get("a", 0)) + ',"p":"1'
        if kind == "missing_keys":
            d.pop("p", None)
            d.pop("q", None)
        elif kind == "wrong_types":
            d["p"] = float(d.get("p", "0") or 0)
            d["a"] = str(d.get("a"))
            d["m"] = "maybe"
        elif kind == "nan":
            d["p"] = "NaN"
            d["q"] = "NaN"
        elif kind == "negative_price":
            d["p"] = "-" + str(d.get("p", "1"))
        elif kind == "zero_price":
            d["p"] = "0.00"
        elif kind == "absurd_ts":
            d["T"] = 0 if seq % 2 else 99_999_999_999_999
            d["E"] = d["T"]
        return json.dumps(d, separators=(",", ":"))
    # upbit
    if kind == "not_json":
        return '{"type":"trade","code":"' + str(d.get("code", "KRW-BTC")) + '","trade_price":'
    if kind == "missing_keys":
        d.pop("trade_price", None)
        d.pop("trade_volume", None)
    elif kind == "wrong_types":
        d["trade_price"] = str(d.get("trade_price"))
        d["sequential_id"] = "sid-" + str(d.get("sequential_id"))
        d["ask_bid"] = 1
    elif kind == "nan":
        s = json.dumps(d, separators=(",", ":"), ensure_ascii=False)
        return s.replace('"trade_price":' + json.dumps(d.get("trade_price")), '"trade_price":NaN', 1)
    elif kind == "negative_price":
        d["trade_price"] = -abs(float(d.get("trade_price", 1) or 1))
    elif kind == "zero_price":
        d["trade_price"] = 0.0
    elif kind == "absurd_ts":
        d["trade_timestamp"] = 0 if seq % 2 else 99_999_999_999_999
        d["timestamp"] = d["trade_timestamp"]
    return json.dumps(d, separators=(",", ":"), ensure_ascii=False)
